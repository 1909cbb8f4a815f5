"""Backends whose models carry a qverify program (``sim``, ``openvino``): the program gives the
model description, and the simulator's dumps and results are turned into the interface's own.

A backend built on another runtime's model description need not use this: it fills a
:class:`~qverify.agent.backends.base.ModelDescription` itself.
"""
from __future__ import annotations

import abc
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from qverify.agent.backends.base import (
    BackendError,
    LayerSpec,
    LayerTime,
    LoadedModel,
    ModelDescription,
    ModelInvalid,
    ModelInvalidInput,
    RunCancelled,
    RunOutput,
    TensorDump,
    TensorSpec,
)
from qverify.simulator import executor, modelfile
from qverify.simulator.errors import InputError, ModelFormatError
from qverify.simulator.program import Program


def load_program(path, label: str, max_tensor_bytes: int | None) -> Program:
    """A stored model's program, validated (sizes under ``max_tensor_bytes``); errors name ``label``,
    never the store's path."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BackendError(f"{label} cannot be read from the board's store ({exc.strerror}); push it again") from None
    try:
        return modelfile.decode_program(data, label, max_tensor_bytes)
    except ModelFormatError as exc:
        raise ModelInvalid(f"{label} cannot be loaded: {exc}") from None


def describe(program: Program) -> ModelDescription:
    """A program's tensors and layers in the interface's terms."""
    specs = {name: TensorSpec(name, t.dtype, tuple(t.shape), tuple(executor.feed_shape(t)), float(t.scale),
                              int(t.zero_point), t.info.onnx_float_name)
             for name, t in program.tensors.items()}
    layers = [LayerSpec(node.name, node.op, "cpu" if node.on_cpu else "npu") for node in program.nodes]
    return ModelDescription(program.name, [specs[t.name] for t in program.inputs],
                            [specs[t.name] for t in program.outputs], specs, layers)


class ProgramBackedModel(LoadedModel):
    """Implements the interface's run / run_isolated over ``_run`` / ``_run_isolated``, which work
    in the simulator's types (Dump, RunResult, RunCancelled, InputError)."""

    program: Program

    @property
    def description(self) -> ModelDescription:
        cached = getattr(self, "_description", None)
        if cached is None:
            cached = self._description = describe(self.program)
        return cached

    @abc.abstractmethod
    def _run(self, inputs, dump, dump_layout, sink, core, should_stop) -> executor.RunResult: ...

    def _run_isolated(self, inputs, feeds, groups, dump, dump_layout, sink, core, should_stop) -> executor.RunResult:
        return LoadedModel.run_isolated(self, inputs, feeds, groups)  # raises: cannot isolate

    def run(self, inputs: dict[str, np.ndarray], dump: object = None, dump_layout: str = "valid",
            sink: Callable[[TensorDump], None] | None = None, core: int = 0,
            should_stop: Callable[[], bool] | None = None) -> RunOutput:
        return self._neutral(lambda own_sink: self._run(inputs, dump, dump_layout, own_sink, core, should_stop), sink)

    def run_isolated(self, inputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                     groups: list[tuple[str, str]], dump: object = "all", dump_layout: str = "valid",
                     sink: Callable[[TensorDump], None] | None = None, core: int = 0,
                     should_stop: Callable[[], bool] | None = None) -> RunOutput:
        return self._neutral(lambda own_sink: self._run_isolated(inputs, feeds, groups, dump, dump_layout, own_sink,
                                                                 core, should_stop), sink)

    def _neutral(self, call, sink) -> RunOutput:
        specs = self.description.tensors

        def own_sink(d: executor.Dump) -> None:
            sink(TensorDump(specs[d.tensor.name], d.producer, d.valid, d.aligned, tuple(d.aligned_shape),
                            tuple(d.aligned_strides), d.aligned_layout))

        try:
            result = call(own_sink if sink is not None else None)
        except executor.RunCancelled as exc:
            raise RunCancelled(str(exc), exc.layers_done) from None
        except InputError as exc:
            raise ModelInvalidInput(str(exc)) from None
        layers = [LayerTime(s.node, s.op, s.placement, s.seconds, s.acc_overflow, s.saturated) for s in result.layers]
        return RunOutput(result.outputs, layers, result.seconds)


class ModelCache:
    """Loaded models by sha256, least recently used dropped past ``size``; thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> LoadedModel | None:
        with self._lock:
            model = self._models.get(sha256)
            if model is not None:
                self._models.move_to_end(sha256)
            return model

    def put(self, sha256: str, model: LoadedModel) -> LoadedModel:
        with self._lock:
            self._models[sha256] = model
            while len(self._models) > self._size:
                self._models.popitem(last=False)
        return model

    def forget(self, sha256: str) -> None:
        with self._lock:
            self._models.pop(sha256, None)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
