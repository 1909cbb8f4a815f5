"""What every validation rule shares: limits, value ranges, and the per-node check that names the node.

``validate`` runs the rules; ``validate_ops`` (integer NPU ops) and ``validate_cpu`` (ops on the
board's CPU) hold them. They all build on this module, which imports none of them.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from qverify.simulator.errors import ProgramError

if TYPE_CHECKING:
    from qverify.simulator.program import NodeView, Program

DEFAULT_MAX_TENSOR_BYTES = 1 << 30  # 1 GiB: far above any edge model's tensor, far below a host's RAM
MAX_RANK = 8
MAX_ALIGN = 1024
ZP8 = (-128, 127)
M0 = (0, (1 << 31) - 1)
SHIFT = (-31, 30)  # what quantize_multiplier produces; both rounding modes shift within int64
FIX = "recompile the model with 'qverify compile'"
_MISSING = object()


def _prefix(source: str) -> str:
    return f"{source}: " if source else ""


def shape_bytes(shape: tuple[int, ...] | list[int], itemsize: int) -> int:
    """Bytes of a dense tensor of ``shape``, in Python ints (a huge shape cannot wrap around)."""
    return math.prod(int(d) for d in shape) * int(itemsize)


class NodeCheck:
    """Checks of one node, each failing with one sentence that names it."""

    def __init__(self, program: Program, node: NodeView, env: dict[str, tuple[tuple[int, ...], np.dtype]],
                 max_bytes: int, source: str) -> None:
        self.program, self.node, self.env, self.max_bytes, self.source = program, node, env, max_bytes, source
        self.kind = f"CPU {node.onnx_op}" if node.on_cpu else node.op

    def fail(self, problem: str, fix: str = FIX) -> NoReturn:
        raise ProgramError(f"{_prefix(self.source)}node '{self.node.name}' ({self.kind}): {problem}; {fix}",
                           node=self.node.name, op=self.node.op)

    # ---- attributes ----------------------------------------------------------
    def attr(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.node.attrs:
            return self.node.attrs[key]
        if default is _MISSING:
            self.fail(f"lacks attribute '{key}'")
        return default

    def int_attr(self, key: str, lo: int, hi: int, default: Any = _MISSING) -> int:
        value = self.attr(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(f"attribute '{key}' must be an integer, got {_show(value)}")
        if not lo <= value <= hi:
            self.fail(f"attribute '{key}' is {value}, outside [{lo}, {hi}]")
        return value

    def ints_attr(self, key: str, count: int | None, lo: int, hi: int, default: Any = _MISSING) -> list[int]:
        value = self.attr(key, default)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
            self.fail(f"attribute '{key}' must be a list of integers, got {_show(value)}")
        if count is not None and len(value) != count:
            self.fail(f"attribute '{key}' must hold {count} integers, got {len(value)}")
        bad = [v for v in value if not lo <= v <= hi]
        if bad:
            self.fail(f"attribute '{key}' holds {bad[0]}, outside [{lo}, {hi}]")
        return list(value)

    def str_attr(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.attr(key)
        if value not in choices:
            self.fail(f"attribute '{key}' is {_show(value)}, expected one of {', '.join(choices)}")
        return value

    def quant_attrs(self, *keys: str) -> None:
        for key in keys:
            self.int_attr(key, *ZP8)

    def clamp_attrs(self) -> None:
        qmin, qmax = self.int_attr("qmin", *ZP8), self.int_attr("qmax", *ZP8)
        if qmin > qmax:
            self.fail(f"output range qmin {qmin} > qmax {qmax}")

    def multiplier_attrs(self, m0: str = "m0", shift: str = "shift") -> None:
        self.int_attr(m0, *M0)
        self.int_attr(shift, *SHIFT)

    # ---- inputs, constants, outputs -----------------------------------------
    def inputs(self, count: int | None = None, dtype: np.dtype | None = np.dtype(np.int8),
               ranks: tuple[int, int] = (0, MAX_RANK), empty_ok: bool = False) -> list[tuple[int, ...]]:
        names = self.node.inputs
        if count is not None and len(names) != count:
            self.fail(f"has {len(names)} inputs, its kernel takes {count}")
        if not names:
            self.fail("has no inputs")
        shapes = []
        for name in names:
            shape, have = self.env[name]
            if dtype is not None and have != dtype:
                self.fail(f"input '{name}' is {have}, its kernel takes {np.dtype(dtype)}")
            if not ranks[0] <= len(shape) <= ranks[1]:
                self.fail(f"input '{name}' has rank {len(shape)}, its kernel takes rank {ranks[0]} to {ranks[1]}")
            if not empty_ok and 0 in shape:
                self.fail(f"input '{name}' is empty ({list(shape)}), which its kernel cannot reduce or window")
            shapes.append(shape)
        return shapes

    def consts(self, count: int) -> list[np.ndarray]:
        if len(self.node.consts) != count:
            self.fail(f"has {len(self.node.consts)} constants, its kernel takes {count}")
        return self.node.consts

    def const(self, array: np.ndarray, label: str, kinds: str = "i", shape: tuple[int, ...] | None = None,
              ranks: tuple[int, ...] | None = None, lo: int | None = None, hi: int | None = None,
              dtype: np.dtype | None = None) -> np.ndarray:
        """A constant of dtype kind ``kinds`` ('i' signed int, 'u' unsigned) with the given shape/values."""
        if (dtype is not None and array.dtype != dtype) or array.dtype.kind not in kinds:
            want = np.dtype(dtype).name if dtype is not None else "an integer type"
            self.fail(f"constant {label} is {array.dtype}, expected {want}")
        if shape is not None and tuple(array.shape) != tuple(shape):
            self.fail(f"constant {label} has shape {list(array.shape)}, expected {list(shape)}")
        if ranks is not None and array.ndim not in ranks:
            self.fail(f"constant {label} has rank {array.ndim}, expected {' or '.join(map(str, ranks))}")
        if array.size and lo is not None and int(array.min()) < lo:
            self.fail(f"constant {label} holds {int(array.min())}, below {lo}")
        if array.size and hi is not None and int(array.max()) > hi:
            self.fail(f"constant {label} holds {int(array.max())}, above {hi}")
        return array

    def requant_consts(self, m0: np.ndarray, shift: np.ndarray, channels: int) -> None:
        self.const(m0, "m0", shape=(channels,), lo=M0[0], hi=M0[1], dtype=np.dtype(np.int32))
        self.const(shift, "shift", shape=(channels,), lo=SHIFT[0], hi=SHIFT[1], dtype=np.dtype(np.int32))

    def outputs(self, shapes: list[tuple[int, ...]], dtype: np.dtype = np.dtype(np.int8)) -> None:
        """The kernel produces ``shapes`` of ``dtype``: they must be what the program declares."""
        if len(self.node.outputs) != len(shapes):
            self.fail(f"has {len(self.node.outputs)} outputs, its kernel writes {len(shapes)}")
        for name, shape in zip(self.node.outputs, shapes):
            tensor = self.program.tensors[name]
            if tensor.shape != tuple(shape) or tensor.dtype != dtype:
                self.fail(f"output '{name}' is declared {tensor.dtype}{list(tensor.shape)}, "
                          f"the kernel computes {np.dtype(dtype)}{list(shape)}")

    def work(self, shape: tuple[int, ...] | list[int], itemsize: int, what: str) -> None:
        """A working array the kernel allocates must respect the same limit as a tensor."""
        size = shape_bytes(shape, itemsize)
        if size > self.max_bytes:
            self.fail(f"needs a {what} of {size} bytes, over the limit of {self.max_bytes} bytes per tensor",
                      "recompile the model with smaller tensors, or raise the limit")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
