"""The backend interface: what the agent needs from a board's runtime.

A backend is a context manager (``with backend: ...``) that loads compiled models and
runs them. The emulated board (``sim``) is one backend; a vendor runtime is another,
registered under the entry-point group ``qverify.backends``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from qverify.simulator.executor import Dump, RunResult
from qverify.simulator.program import Program


@dataclass
class BackendInfo:
    name: str
    runtime_version: str
    driver_version: str = ""
    firmware_version: str = ""
    npu_cores: int = 1
    capabilities: list[str] = field(default_factory=list)


class LoadedModel(abc.ABC):
    """A model ready to run on one backend. ``program`` describes its tensors."""

    program: Program

    @abc.abstractmethod
    def run(self, inputs: dict[str, np.ndarray], dump: object = None, dump_layout: str = "valid",
            sink: Callable[[Dump], None] | None = None, core: int = 0,
            should_stop: Callable[[], bool] | None = None) -> RunResult:
        """Run once on NPU core ``core``; inputs in the board feed layout.

        ``should_stop`` says when the caller gave up (deadline, cancel): a backend asks it at
        every point where it can stop (between layers) and then raises
        ``qverify.simulator.executor.RunCancelled``, so the core is free for the next run.
        """

    def run_isolated(self, inputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                     groups: list[tuple[str, str]], dump: object = "all", dump_layout: str = "valid",
                     sink: Callable[[Dump], None] | None = None, core: int = 0,
                     should_stop: Callable[[], bool] | None = None) -> RunResult:
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
