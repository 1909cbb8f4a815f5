"""Fault injection for the emulated board (test tooling, never for production boards).

A verifier is only as good as its ability to catch a broken board. ``--fault`` makes
the emulated board misbehave in the ways real boards do:

* ``bitflip:LAYER``  flip bit 6 of every 97th element of LAYER's output (a memory fault)
* ``lsb:LAYER``      add one LSB to every 5th element of LAYER's output (a rounding bug)
* ``padding:LAYER``  aligned dumps of LAYER (or ``all``) get wrong padding bytes (0x55)
* ``delay:MS``       every run takes MS milliseconds longer
* ``crash:LAYER``    the agent process dies when LAYER runs (an NPU hang/crash)
* ``stale:outputs``  from a loaded model's second run on, every run returns the output arrays
  of its first run, while dumps stay fresh (an output buffer that is never refreshed)
* ``dumponly:LAYER`` LAYER's output is one LSB off at every 5th element unless the run
  dumps (a board that is right only while dumping, as marking every tensor as an output
  can change a runtime's results)
* ``nondeterministic:LAYER`` every other run of a loaded model adds one LSB to every 7th
  element of LAYER's output (a race, an uninitialised buffer)

LAYER is a node name or the name of the tensor it writes (see ``qverify info``).
"""
from __future__ import annotations

import os
import signal
import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np

from qverify.simulator.executor import Dump, RunResult, Simulator

KINDS = ("bitflip", "lsb", "padding", "delay", "crash", "stale", "dumponly", "nondeterministic")
LAYER_KINDS = ("bitflip", "lsb", "crash", "dumponly", "nondeterministic")  # installed as kernel interceptors


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str  # layer/tensor name, "all", or milliseconds for delay

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_fault(text: str) -> Fault:
    kind, sep, target = text.partition(":")
    if kind not in KINDS or not sep or not target:
        raise ValueError(f"--fault '{text}' must be KIND:TARGET with KIND one of {', '.join(KINDS)}")
    if kind == "delay":
        try:
            if float(target) < 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"--fault delay:{target}: give milliseconds, e.g. delay:50") from None
    if kind == "stale" and target != "outputs":
        raise ValueError(f"--fault stale:{target}: the only target is outputs (stale:outputs)")
    return Fault(kind, target)


def _flip_bits(kernel: Callable) -> Callable:
    def broken(node, inputs, stats):
        outputs = kernel(node, inputs, stats)
        out = outputs[0].copy()
        flat = out.reshape(-1).view(np.uint8) if out.dtype.itemsize == 1 else out.reshape(-1)
        if out.dtype.itemsize == 1:
            flat[::97] ^= np.uint8(0x40)
        else:
            flat[::97] = -flat[::97]
        return [out, *outputs[1:]]
    return broken


def _add_one_lsb(out: np.ndarray, step: int) -> np.ndarray:
    """A copy of ``out`` with one LSB added to every ``step``-th element."""
    out = out.copy()
    flat = out.reshape(-1)
    if out.dtype == np.int8:
        changed = flat[::step].astype(np.int16) + 1
        # Where +1 saturates, go the other way so the element still changes.
        changed[changed > 127] = 126
        flat[::step] = changed.astype(np.int8)
    else:
        flat[::step] += 1
    return out


def _one_lsb(kernel: Callable) -> Callable:
    def broken(node, inputs, stats):
        outputs = kernel(node, inputs, stats)
        return [_add_one_lsb(outputs[0], 5), *outputs[1:]]
    return broken


# The run in progress on this thread: (number of the run for its model, whether it dumps).
# Kernels see only (node, inputs, stats), so the run-dependent faults read it from here.
_RUN = threading.local()


def _current_run() -> tuple[int, bool] | None:
    return getattr(_RUN, "run", None)


def _dump_only(kernel: Callable) -> Callable:
    def broken(node, inputs, stats):
        outputs = kernel(node, inputs, stats)
        run = _current_run()
        if run is not None and run[1]:  # a dumping run: right
            return outputs
        return [_add_one_lsb(outputs[0], 5), *outputs[1:]]
    return broken


def _nondeterministic(kernel: Callable) -> Callable:
    def broken(node, inputs, stats):
        outputs = kernel(node, inputs, stats)
        run = _current_run()
        if run is None or run[0] % 2:  # the 1st, 3rd, ... run of the model: right
            return outputs
        return [_add_one_lsb(outputs[0], 7), *outputs[1:]]
    return broken


def _crash(kernel: Callable) -> Callable:
    def broken(node, inputs, stats):
        os.kill(os.getpid(), signal.SIGKILL)
        return kernel(node, inputs, stats)  # not reached
    return broken


def apply_to_simulator(sim: Simulator, faults: list[Fault]) -> None:
    """Install the layer faults into a simulator instance."""
    wrappers = {"bitflip": _flip_bits, "lsb": _one_lsb, "crash": _crash, "dumponly": _dump_only,
                "nondeterministic": _nondeterministic}
    for fault in faults:
        if fault.kind in LAYER_KINDS:
            wrapper = wrappers[fault.kind]
            try:
                node = sim.node_for_tensor(fault.target)
            except Exception:
                continue  # the fault names a layer of another model
            sim.intercept(node, wrapper)


def _padding_mask(dump: Dump) -> np.ndarray:
    """True where the aligned buffer holds padding rather than tensor values."""
    mask = np.ones(dump.aligned.shape, dtype=bool)
    shape = dump.tensor.shape
    if len(shape) == 4:
        n, c, h, w = shape
        mask[:, :, :w, :c] = False
    elif len(shape) >= 1:
        mask[..., : shape[-1]] = False
    else:
        mask[...] = False
    return mask


def wrap_sink(sink: Callable[[Dump], None] | None, faults: list[Fault]) -> Callable[[Dump], None] | None:
    """Corrupt the padding of aligned dumps for ``padding`` faults (0x55 bytes, 1.0 floats)."""
    targets = {f.target for f in faults if f.kind == "padding"}
    if sink is None or not targets:
        return sink

    def corrupting(dump: Dump) -> None:
        hit = "all" in targets or dump.tensor.name in targets or dump.producer in targets
        if hit and dump.aligned is not None:
            aligned = dump.aligned.copy()
            aligned[_padding_mask(dump)] = 0x55 if aligned.dtype.itemsize == 1 else 1
            dump = Dump(dump.tensor, dump.producer, dump.valid, aligned, dump.aligned_shape,
                        dump.aligned_strides, dump.aligned_layout)
        sink(dump)
    return corrupting


def delay_seconds(faults: list[Fault]) -> float:
    return sum(float(f.target) for f in faults if f.kind == "delay") / 1000.0


class _ModelRuns:
    """What the run-dependent faults remember about one loaded model."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.first_outputs: dict[str, np.ndarray] | None = None


_MODELS: "weakref.WeakKeyDictionary[Simulator, _ModelRuns]" = weakref.WeakKeyDictionary()
_MODELS_LOCK = threading.Lock()


def faulty_run(sim: Simulator, faults: list[Fault], dumping: bool, run: Callable[[], RunResult]) -> RunResult:
    """``run()`` (one run of ``sim``'s model) under the run-dependent faults: numbers the run
    for ``nondeterministic``, tells ``dumponly`` whether it dumps, and for ``stale`` hands
    back the first run's outputs from the second run on (the dumps went out fresh)."""
    if not any(f.kind in ("stale", "dumponly", "nondeterministic") for f in faults):
        return run()
    with _MODELS_LOCK:
        runs = _MODELS.setdefault(sim, _ModelRuns())
    with runs.lock:
        runs.count += 1
        number = runs.count
    previous = _current_run()
    _RUN.run = (number, dumping)
    try:
        result = run()
    finally:
        _RUN.run = previous
    if any(f.kind == "stale" for f in faults):
        with runs.lock:
            if runs.first_outputs is None:
                runs.first_outputs = {name: np.array(value, copy=True) for name, value in result.outputs.items()}
            else:
                result.outputs = {name: np.array(value, copy=True) for name, value in runs.first_outputs.items()}
    return result
