"""The backend interface: what the agent needs from a board's runtime, in the agent's own terms.

A backend is a context manager (``with backend: ...``) that loads compiled models and
runs them. The emulated board (``sim``) is one backend; a vendor runtime is another,
registered under the entry-point group ``qverify.backends``: one module and an entry point.

Nothing here is a simulator type. A loaded model describes itself
(:class:`ModelDescription`: its tensors, their names, dtypes, shapes, feed layout and
quantization, and its layers), hands dumps to the agent as :class:`TensorDump` and
returns :class:`RunOutput`. The agent builds every wire message from these, so what a
client sees of a board comes from its backend.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model as the board holds it."""
    name: str  # the ONNX tensor it corresponds to
    dtype: np.dtype
    shape: tuple[int, ...]  # logical (ONNX order)
    feed_shape: tuple[int, ...]  # as the model takes it when it is an input (the board feed layout)
    scale: float = 0.0  # quantized tensors: real value = scale * (code - zero_point)
    zero_point: int = 0
    onnx_float_name: str = ""  # the float ONNX tensor it quantizes, when there is one

    @property
    def quantized(self) -> bool:
        return np.dtype(self.dtype) == np.int8


@dataclass(frozen=True)
class LayerSpec:
    name: str
    op: str
    placement: str  # "npu", or "cpu" for ops the board runs on its CPU


@dataclass
class ModelDescription:
    """What the agent tells clients about a loaded model; it comes from the backend."""
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    tensors: dict[str, TensorSpec]
    layers: list[LayerSpec]


@dataclass
class TensorDump:
    """One tensor of a run as the board holds it: the valid (logical) and/or aligned buffer."""
    tensor: TensorSpec
    producer: str  # layer that wrote it ("" for inputs)
    valid: np.ndarray | None
    aligned: np.ndarray | None
    aligned_shape: tuple[int, ...]
    aligned_strides: tuple[int, ...]  # in elements
    aligned_layout: str


@dataclass
class LayerTime:
    node: str
    op: str
    placement: str
    seconds: float = 0.0
    acc_overflow: int = 0  # accumulator values beyond int32
    saturated: int = 0  # outputs clamped to the int8 range


@dataclass
class RunOutput:
    outputs: dict[str, np.ndarray]  # output name -> valid-layout array
    layers: list[LayerTime] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class BackendInfo:
    name: str
    runtime_version: str
    driver_version: str = ""
    firmware_version: str = ""
    npu_cores: int = 1
    capabilities: list[str] = field(default_factory=list)


class LoadedModel(abc.ABC):
    """A model ready to run on one backend. ``description`` tells the agent its tensors and layers."""

    description: ModelDescription

    @abc.abstractmethod
    def run(self, inputs: dict[str, np.ndarray], dump: object = None, dump_layout: str = "valid",
            sink: Callable[[TensorDump], None] | None = None, core: int = 0,
            should_stop: Callable[[], bool] | None = None) -> RunOutput:
        """Run once on NPU core ``core``; inputs in the board feed layout (``TensorSpec.feed_shape``).

        ``dump``: None, "all", "outputs" or tensor names, handed to ``sink`` as they are made
        (``dump_layout``: "valid", "aligned" or "both"). ``should_stop`` says when the caller
        gave up (deadline, cancel): a backend asks it at every point where it can stop
        (between layers) and then raises :class:`RunCancelled`, so the core is free for the
        next run.
        """

    def run_isolated(self, inputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                     groups: list[tuple[str, str]], dump: object = "all", dump_layout: str = "valid",
                     sink: Callable[[TensorDump], None] | None = None, core: int = 0,
                     should_stop: Callable[[], bool] | None = None) -> RunOutput:
        """Run each node group alone on fed tensors (capability "isolate"); see RunRequest.isolate.

        A backend that cannot leaves this out and does not list "isolate": the client then
        cuts the model into pieces it can run whole.
        """
        raise BackendError("this backend cannot run layers in isolation")


class Backend(abc.ABC):
    """Loads and runs compiled models. Use as a context manager."""

    @abc.abstractmethod
    def info(self) -> BackendInfo: ...

    @abc.abstractmethod
    def load(self, path: Path, sha256: str) -> LoadedModel:
        """Load model.bin at ``path``; raise BackendError with a sentence on failure."""

    def close(self) -> None:
        """Release the runtime."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BackendError(Exception):
    """A backend could not load or run a model; the message says what and why."""


class ModelMismatch(BackendError):
    """The model was compiled for another target than this board's."""


class ModelInvalid(BackendError):
    """The model file is not a model this backend can load (corrupt, malformed, over a limit)."""


class ModelInvalidInput(BackendError):
    """Inputs, feeds or groups that do not fit the model; the message names the tensor."""


class RunCancelled(BackendError):
    """A run stopped at a layer boundary because its caller gave up (deadline, cancel)."""

    def __init__(self, message: str, layers_done: int = 0) -> None:
        super().__init__(message)
        self.layers_done = layers_done
