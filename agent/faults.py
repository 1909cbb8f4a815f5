"""Fault injection for the emulated board (test tooling, never for production boards).

A verifier is only as good as its ability to catch a broken board. ``--fault`` makes
the emulated board misbehave in the ways real boards do:

* ``bitflip:LAYER``  flip bit 6 of every 97th element of LAYER's output (a memory fault)
* ``lsb:LAYER``      add one LSB to every 5th element of LAYER's output (a rounding bug)
* ``padding:LAYER``  aligned dumps of LAYER (or ``all``) get wrong padding bytes (0x55)
* ``delay:MS``       every run takes MS milliseconds longer
* ``crash:LAYER``    the agent process dies when LAYER runs (an NPU hang/crash)

LAYER is a node name or the name of the tensor it writes (see ``qverify info``).
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Callable

import numpy as np

from qverify.simulator.executor import Dump, Simulator

KINDS = ("bitflip", "lsb", "padding", "delay", "crash")


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


def _one_lsb(kernel: Callable) -> Callable:
    def broken(node, inputs, stats):
        outputs = kernel(node, inputs, stats)
        out = outputs[0].copy()
        flat = out.reshape(-1)
        if out.dtype == np.int8:
            flat[::5] = np.minimum(flat[::5].astype(np.int16) + 1, 127).astype(np.int8)
            # Where +1 saturates, go the other way so the element still changes.
            top = flat[::5] == 127
            flat[::5][top] = 126
        else:
            flat[::5] += 1
        return [out, *outputs[1:]]
    return broken


def _crash(kernel: Callable) -> Callable:
    def broken(node, inputs, stats):
        os.kill(os.getpid(), signal.SIGKILL)
        return kernel(node, inputs, stats)  # not reached
    return broken


def apply_to_simulator(sim: Simulator, faults: list[Fault]) -> None:
    """Install the layer faults into a simulator instance."""
    for fault in faults:
        if fault.kind in ("bitflip", "lsb", "crash"):
            wrapper = {"bitflip": _flip_bits, "lsb": _one_lsb, "crash": _crash}[fault.kind]
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
