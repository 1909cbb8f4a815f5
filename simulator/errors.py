"""Errors of the simulator and compiler: each carries a sentence a user can act on."""
from __future__ import annotations


class SimulatorError(Exception):
    """Base class of every foreseeable simulator failure."""


class CompileError(SimulatorError):
    """The ONNX model cannot be compiled; names the node and op when there is one."""

    def __init__(self, message: str, node: str | None = None, op: str | None = None,
                 hint: str | None = None) -> None:
        self.node, self.op, self.hint = node, op, hint
        where = ""
        if node is not None:
            where = f"node '{node}' ({op}): " if op else f"node '{node}': "
        text = where + message
        if hint:
            text += f"; {hint}"
        super().__init__(text)


class ModelFormatError(SimulatorError):
    """model.bin is corrupt, truncated, of another format version, or not a model."""


class InputError(SimulatorError):
    """Inputs given to a run do not match the program (name, dtype, shape)."""


class ProgramError(ModelFormatError):
    """A well-formed model.bin whose program cannot run: names the node (and op) at fault."""

    def __init__(self, message: str, node: str | None = None, op: str | None = None) -> None:
        self.node, self.op = node, op
        super().__init__(message)
