"""Lowering of data-movement ops on int8 tensors (values unchanged, quantization kept).

Reshape, Flatten, Squeeze, Unsqueeze and Identity become one static Reshape; Transpose,
Slice, Split, Gather (constant indices) and Pad keep their own kernels. When the model
requantizes the result (a QuantizeLinear with other parameters), a Lut follows.
"""
from __future__ import annotations

import numpy as np
import onnx

from qverify.simulator.compiler.context import Lowering, QValue
from qverify.simulator.compiler.graph import attrs_of

RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def emit_movement(ctx: Lowering, node: onnx.NodeProto, x: QValue, op: str, attrs: dict,
                  consts: list[str] = ()) -> None:
    """Emit ``op`` producing every output of ``node`` with x's quantization (+ requant if asked)."""
    outputs, requants = [], []
    for out in node.output:
        if not out:
            continue
        oq = ctx.out_q(out)
        same = oq is not None and np.float32(oq[1]) == np.float32(x.scale) and oq[2] == x.zp
        if same:
            name = oq[0]
            ctx.add_tensor(name, np.int8, ctx.shape(out), x.scale, x.zp, onnx_float_name=out, onnx_dtype=oq[3])
        else:
            # The raw tensor (QOperator) or a float tensor that is exactly dequant(int8).
            name = ctx.fresh_tensor_name(out) if out in ctx.tensor_infos else out
            elem = ctx.graph.elem_types.get(out, 0)
            ctx.add_tensor(name, np.int8, ctx.shape(out), x.scale, x.zp,
                           onnx_dtype=elem if elem in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8) else 0)
            if oq is not None:
                requants.append((name, oq))
        value = QValue(name, x.scale, x.zp)
        ctx.values[out] = value
        if oq is not None and same:
            ctx.values[oq[0]] = value
        outputs.append(name)
    ctx.emit(op, node, [x.name], outputs, list(consts), attrs)
    for name, (q_name, scale, zp, elem) in requants:
        ctx.add_tensor(q_name, np.int8, ctx.tensor_infos[name].shape, scale, zp, onnx_dtype=elem)
        ctx.emit_requant(node, QValue(name, x.scale, x.zp), q_name, scale, zp)
        ctx.values[q_name] = QValue(q_name, scale, zp)


def lower_movement(ctx: Lowering, node: onnx.NodeProto) -> bool:
    x = ctx.value(node.input[0], node)
    if not isinstance(x, QValue):
        return False
    op = node.op_type
    attrs = attrs_of(node)
    in_shape = ctx.shape(node.input[0])
    rank = len(in_shape)
    if op in RESHAPES:
        emit_movement(ctx, node, x, "Reshape", {"shape": list(ctx.shape(node.output[0]))})
    elif op == "Transpose":
        perm = attrs.get("perm", list(reversed(range(rank))))
        emit_movement(ctx, node, x, "Transpose", {"perm": perm})
    elif op == "Slice":
        starts, ends, steps = _slice_bounds(ctx, node, attrs, in_shape)
        emit_movement(ctx, node, x, "Slice", {"starts": starts, "ends": ends, "steps": steps})
    elif op == "Split":
        axis = attrs.get("axis", 0) % rank
        sizes = [ctx.shape(o)[axis] for o in node.output]
        emit_movement(ctx, node, x, "Split", {"axis": axis, "sizes": sizes})
    elif op == "Gather":
        indices = ctx.graph.consts.get(node.input[1])
        if indices is None:
            return False
        axis = attrs.get("axis", 0) % rank
        indices = np.where(indices < 0, indices + in_shape[axis], indices).astype(np.int64)
        emit_movement(ctx, node, x, "Gather", {"axis": axis},
                      [ctx.add_const(f"{node.output[0]}/indices", indices)])
    elif op == "Pad":
        return _lower_pad(ctx, node, x, attrs, rank)
    else:
        return False
    return True


def _slice_bounds(ctx, node, attrs, shape):
    rank = len(shape)
    if len(node.input) > 1:
        get = lambda i, default: (np.asarray(ctx.graph.consts[node.input[i]]).tolist()  # noqa: E731
                                  if len(node.input) > i and node.input[i] else default)
        starts, ends = get(1, None), get(2, None)
        axes = get(3, list(range(len(starts))))
        steps = get(4, [1] * len(starts))
    else:  # opset < 10
        starts, ends = attrs["starts"], attrs["ends"]
        axes = attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    full_s, full_e, full_st = [0] * rank, list(shape), [1] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= rank
        # Python slicing clamps like ONNX; resolve to concrete indices.
        rng = range(*slice(s, e, st).indices(shape[a]))
        full_s[a], full_st[a] = rng.start, rng.step
        full_e[a] = rng.stop if rng.stop >= 0 else -1
    return full_s, full_e, full_st


def _lower_pad(ctx, node, x, attrs, rank) -> bool:
    if len(node.input) > 1:
        pads = np.asarray(ctx.graph.consts.get(node.input[1], [])).tolist()
        value_name = node.input[2] if len(node.input) > 2 else ""
        axes_name = node.input[3] if len(node.input) > 3 else ""
        if axes_name or len(pads) != 2 * rank:
            return False
        value = ctx.value(value_name, node) if value_name else 0.0
        value = float(np.asarray(value.real() if hasattr(value, "real") and callable(value.real) else value))
    else:
        pads, value = attrs["pads"], float(attrs.get("value", 0.0))
    if any(int(p) < 0 for p in pads):
        return False  # cropping pads: left to the CPU kernel
    mode = attrs.get("mode", "constant")
    q = int(np.clip(np.rint(value / x.scale) + x.zp, -128, 127))
    emit_movement(ctx, node, x, "Pad", {"pads": pads, "mode": mode, "value": q})
    return True
