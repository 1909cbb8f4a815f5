"""Validation of nodes placed on the board's CPU (float32 ONNX kernels).

Their output shapes follow from the declared input shapes and their constant parameters,
so a trial evaluation at load, on zeros of the declared shapes, is their shape inference:
it must succeed and produce exactly the declared outputs. Before it runs, everything that
sizes an allocation is bounded: the parameters that shape the output must be constants
(a value computed at run time could change the shape), integer parameters must stay
within a few times the node's largest declared dimension, and where the output size is
a direct function of them (ConstantOfShape, Expand, Tile, Range) it must equal the
declared one.
"""
from __future__ import annotations

import math

import numpy as np

from qverify.simulator.validate_base import NodeCheck, shape_bytes

# Ops whose inputs from this position on size or index the output: they must be constants.
PARAM_INPUTS = {
    "Reshape": 1, "Expand": 1, "Tile": 1, "ConstantOfShape": 0, "Range": 0, "Slice": 1, "Split": 1, "Pad": 1,
    "Resize": 1, "Upsample": 1, "Gather": 1, "GatherElements": 1, "Squeeze": 1, "Unsqueeze": 1,
    "ReduceMean": 1, "ReduceSum": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1, "ReduceL1": 1,
    "ReduceL2": 1, "ReduceLogSum": 1, "ReduceLogSumExp": 1, "ReduceSumSquare": 1, "Clip": 1,
}
UNBOUNDED_ATTRS = {"starts", "ends", "start", "end", "value", "_opset", "_num_outputs", "seed"}
# What a kernel may raise on parameters it cannot take (numpy's AxisError is a ValueError).
KERNEL_ERRORS = (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError,
                 NotImplementedError, AttributeError)


def check(c: NodeCheck) -> None:
    node = c.node
    if not node.inputs:
        c.fail("has no inputs")
    declared = [c.program.tensors[name] for name in node.outputs]
    dims = [d for name in node.inputs if name for d in c.env[name][0]] + [d for t in declared for d in t.shape]
    bound = max(64, 4 * max(dims, default=1))
    first_param = PARAM_INPUTS.get(node.onnx_op)
    for index, name in enumerate(node.inputs):
        if first_param is not None and index >= first_param and name and name not in c.program.constants:
            c.fail(f"input {index} ('{name}') sizes its output but is computed at run time, not a constant")
    for key, value in node.attrs.items():
        values = value if isinstance(value, list) else [value]
        if key not in UNBOUNDED_ATTRS and any(isinstance(v, int) and abs(v) > bound for v in values):
            c.fail(f"attribute '{key}' is {value}, beyond what its {bound}-wide tensors allow")
    if first_param is not None and node.onnx_op not in ("Slice", "Clip"):
        for name in node.inputs[first_param:]:
            array = c.program.constants.get(name)
            if array is not None and array.dtype.kind in "iu" and array.size and int(np.abs(array).max()) > bound:
                c.fail(f"constant '{name}' holds {int(np.abs(array).max())}, beyond what its {bound}-wide tensors allow")
    _predicted_size(c, declared)
    outputs = _trial(c)
    if len(outputs) < len(node.outputs):
        c.fail(f"its kernel writes {len(outputs)} outputs, the program declares {len(node.outputs)}")
    for tensor, value in zip(declared, outputs):
        value = np.asarray(value)
        if tuple(value.shape) != tensor.shape or value.dtype.kind not in "biuf":
            c.fail(f"output '{tensor.name}' is declared {tensor.dtype}{list(tensor.shape)}, the kernel computes "
                   f"{value.dtype}{list(value.shape)}")


def _const_ints(c: NodeCheck, index: int) -> list[int] | None:
    if index >= len(c.node.inputs) or not c.node.inputs[index]:
        return None
    array = c.program.constants[c.node.inputs[index]]
    if array.dtype.kind not in "iu":
        c.fail(f"input {index} must be an integer constant, got {array.dtype}")
    return [int(v) for v in array.reshape(-1)]


def _predicted_size(c: NodeCheck, declared: list) -> None:
    """Ops whose output size is a direct function of constants: it must be the declared one."""
    op, env = c.node.onnx_op, c.env
    want = declared[0].shape if declared else ()
    x = env[c.node.inputs[0]][0] if c.node.inputs[0] else ()
    got: tuple[int, ...] | None = None
    if op == "ConstantOfShape":
        got = tuple(_const_ints(c, 0) or ())
    elif op == "Expand" and (shape := _const_ints(c, 1)) is not None:
        try:
            got = tuple(np.broadcast_shapes(x, tuple(shape)))
        except ValueError:
            c.fail(f"cannot expand {list(x)} to {shape}")
    elif op == "Tile" and (repeats := _const_ints(c, 1)) is not None:
        if len(repeats) != len(x):
            c.fail(f"has {len(repeats)} repeats for a rank-{len(x)} input")
        got = tuple(d * r for d, r in zip(x, repeats))
    elif op == "Range":
        arrays = [c.program.constants.get(n) for n in c.node.inputs[:3]]
        if len(arrays) != 3 or any(a is None or a.size != 1 for a in arrays):
            c.fail("needs three scalar constants start, limit, delta")
        start, limit, delta = (float(a.reshape(-1)[0]) for a in arrays)
        if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
            c.fail("has a zero or non-finite delta, start or limit")
        got = (max(math.ceil((limit - start) / delta), 0),)
    if got is not None and (got != want or shape_bytes(got, 8) > c.max_bytes):
        c.fail(f"computes an output of shape {list(got)}, the program declares {list(want)}")


def _trial(c: NodeCheck) -> list:
    """Run the kernel once on zeros of the declared input shapes (and the real constants)."""
    from qverify.simulator.ops import registry

    feeds = []
    for name in c.node.inputs:
        if not name:
            feeds.append(None)
        elif name in c.program.constants:
            feeds.append(c.program.constants[name])
        else:
            tensor = c.program.tensors[name]
            dtype = np.float32 if tensor.quantized else tensor.dtype  # int8 is dequantized for the CPU
            feeds.append(np.zeros(tensor.shape, dtype=dtype))
    kernel = registry.cpu_kernel(c.node.onnx_op)
    try:
        with np.errstate(all="ignore"):
            outputs = kernel(feeds, c.node.attrs)
    except KERNEL_ERRORS as exc:
        text = str(exc).splitlines()[0][:120] if str(exc) else ""
        c.fail(f"its kernel cannot run on the declared inputs ({type(exc).__name__}: {text})")
    return list(outputs)
