"""The ``sim`` backend: the emulated board, running the shared integer simulator."""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from qverify._version import __version__
from qverify.agent import faults as fault_tools
from qverify.agent.backends.base import Backend, BackendInfo, ModelMismatch
from qverify.agent.backends.program_backed import ModelCache, ProgramBackedModel, load_program
from qverify.simulator import Simulator
from qverify.simulator.executor import Dump, RunCancelled, RunResult
from qverify.simulator.targets import TargetProfile


class SimModel(ProgramBackedModel):
    """A program on the emulated board; faults (test tooling) wrap its kernels, sink and results."""

    def __init__(self, simulator: Simulator, faults: list[fault_tools.Fault]) -> None:
        self.simulator = simulator
        self.program = simulator.program
        self.faults = faults
        self.delay = fault_tools.delay_seconds(faults)

    def _run(self, inputs: dict[str, np.ndarray], dump: object, dump_layout: str,
             sink: Callable[[Dump], None] | None, core: int, should_stop: Callable[[], bool] | None) -> RunResult:
        if self.delay:
            _busy(self.delay, should_stop)
        return fault_tools.faulty_run(self.simulator, self.faults, dump is not None, lambda: self.simulator.run(
            inputs, dump=dump, dump_layout=dump_layout, sink=fault_tools.wrap_sink(sink, self.faults),
            should_stop=should_stop))

    def _run_isolated(self, inputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                      groups: list[tuple[str, str]], dump: object, dump_layout: str,
                      sink: Callable[[Dump], None] | None, core: int,
                      should_stop: Callable[[], bool] | None) -> RunResult:
        if self.delay:
            _busy(self.delay, should_stop)
        return self.simulator.run_isolated(inputs, feeds, groups, dump=dump, dump_layout=dump_layout,
                                           sink=fault_tools.wrap_sink(sink, self.faults), should_stop=should_stop)


def _busy(seconds: float, should_stop: Callable[[], bool] | None) -> None:
    """The injected delay, as a slow NPU that still stops between its (10 ms) layers when asked."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if should_stop is not None and should_stop():
            raise RunCancelled(f"run stopped during its injected {seconds * 1000:g} ms delay: its caller gave up", 0)
        time.sleep(min(left, 0.01))


class SimBackend(Backend):
    """Emulated board: an x86 (or ARM) machine executing programs bit-exactly.

    ``npu_cores`` emulated cores run concurrently (one run per core at a time, enforced by
    the agent's scheduler). Loaded programs are cached by sha256 (``cache_size`` entries).
    """

    def __init__(self, target: TargetProfile, npu_cores: int = 1, faults: list[fault_tools.Fault] = (),
                 cache_size: int = 8, max_tensor_bytes: int | None = None) -> None:
        self.target = target
        self.max_tensor_bytes = max_tensor_bytes  # every declared tensor is checked at load, before any allocation
        self.npu_cores = max(1, npu_cores)
        self.faults = list(faults)
        self._cache = ModelCache(cache_size)

    def info(self) -> BackendInfo:
        return BackendInfo(name="sim", runtime_version=f"qverify-sim {__version__} "
                           f"(numpy {np.__version__}, {platform.machine()})", npu_cores=self.npu_cores,
                           capabilities=["dump", "aligned_dump", "perf", "push", "layer_timing", "isolate"]
                           + (["faults"] if self.faults else []))

    def load(self, path: Path, sha256: str) -> SimModel:
        cached = self._cache.get(sha256)
        if cached is not None:
            return cached
        label = f"model {sha256[:12]}…"  # never the store's path: a client has no business with it
        program = load_program(path, label, self.max_tensor_bytes)
        mine = (program.target.c_align, program.target.w_align, program.target.rounding)
        board = (self.target.c_align, self.target.w_align, self.target.rounding)
        if mine != board:
            differ = "; ".join(f"{what} {a!r} here, {b!r} on this board" for what, a, b in
                               zip(("c_align", "w_align", "rounding"), mine, board) if a != b)
            raise ModelMismatch(f"{label} was compiled for target '{program.target.name}' ({differ}), this board is "
                                f"'{self.target.name}'; recompile with 'qverify compile --target {self.target.name}'")
        simulator = Simulator(program)
        fault_tools.apply_to_simulator(simulator, self.faults)
        model = SimModel(simulator, self.faults)
        return self._cache.put(sha256, model)

    def forget(self, sha256: str) -> None:
        self._cache.forget(sha256)

    def close(self) -> None:
        self._cache.clear()
