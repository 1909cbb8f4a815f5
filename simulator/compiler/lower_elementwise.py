"""Lowering of Add, Mul, Concat and of every elementwise op as a 256-entry lookup table."""
from __future__ import annotations

import numpy as np
import onnx

from qverify.simulator.compiler.context import Lowering, QConst, QValue
from qverify.simulator.compiler.graph import attrs_of
from qverify.simulator.executor import quantize
from qverify.simulator.fixedpoint import quantize_multiplier
from qverify.simulator.ops import registry

# Elementwise ONNX ops a Lut can implement when exactly one operand is an int8 activation
# and every other operand is a constant scalar.
LUT_OPS = {
    "Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Exp", "Log", "Sqrt", "Neg",
    "Abs", "Erf", "Elu", "Selu", "Softplus", "Softsign", "Mish", "Gelu", "Reciprocal", "Floor", "Ceil",
    "Identity", "Add", "Sub", "Mul", "Div", "Pow", "Min", "Max", "PRelu",
}
LEFT_SHIFT = 20


def _as_value(ctx: Lowering, node: onnx.NodeProto, name: str):
    return ctx.value(name, node) if name else None


def lower_lut(ctx: Lowering, node: onnx.NodeProto) -> bool:
    """One int8 activation operand + constant scalars -> table of f over the 256 codes."""
    if node.op_type not in LUT_OPS or len(node.output) != 1 or not registry.has_cpu_kernel(node.op_type):
        return False
    operands = [_as_value(ctx, node, n) for n in node.input]
    acts = [i for i, v in enumerate(operands) if isinstance(v, QValue)]
    if len(acts) != 1:
        return False
    out = ctx.out_q(node.output[0])
    if out is None:
        return False
    x = operands[acts[0]]
    if any(v is not None and i != acts[0] and not isinstance(v, (QConst, np.ndarray, np.generic, float, int))
           for i, v in enumerate(operands)):
        return False  # another activation (float) operand: not a function of x alone
    if ctx.shape(node.output[0]) != ctx.shape(node.input[acts[0]]):
        return False  # a constant that broadcasts to a higher rank changes the shape
    codes = np.arange(-128, 128, dtype=np.int32)
    feeds = []
    for i, v in enumerate(operands):
        if i == acts[0]:
            feeds.append((codes - x.zp).astype(np.float32) * np.float32(x.scale))
        elif v is None:
            feeds.append(None)
        else:
            real = v.real() if isinstance(v, QConst) else np.asarray(v)
            if real.size != 1:
                return False  # a non-scalar constant operand changes per element
            feeds.append(real.reshape(()).astype(np.float32) if real.dtype.kind == "f" else real.reshape(()))
    attrs = attrs_of(node)
    attrs["_opset"] = ctx.graph.opset
    real_out = np.asarray(registry.cpu_kernel(node.op_type)(feeds, attrs)[0], dtype=np.float32).reshape(-1)
    if real_out.size != 256:
        return False
    y = ctx.define_q_output(node.output[0], "")
    table, _ = quantize(real_out, y.scale, y.zp)
    ctx.emit("Lut", node, [x.name], [y.name], [ctx.add_const(f"{y.name}/table", table)])
    return True


def _materialize(ctx: Lowering, node: onnx.NodeProto, value) -> QValue | None:
    """A quantized constant operand as an int8 constant the kernel reads like an activation."""
    if isinstance(value, QValue):
        return value
    if isinstance(value, QConst) and not value.wide and value.scale.size == 1 and np.unique(value.zp).size == 1:
        name = ctx.add_const(f"{node.name or node.output[0]}/operand", value.values.astype(np.int8))
        return QValue(name, float(value.scale.reshape(-1)[0]), int(value.zp.reshape(-1)[0]))
    return None


def lower_add(ctx: Lowering, node: onnx.NodeProto) -> bool:
    a, b = (_materialize(ctx, node, ctx.value(n, node)) for n in node.input[:2])
    out = ctx.out_q(node.output[0])
    if a is None or b is None or out is None:
        return False
    y = ctx.define_q_output(node.output[0], "")
    twice_max = 2.0 * max(a.scale, b.scale)
    a_m0, a_shift = quantize_multiplier(a.scale / twice_max)
    b_m0, b_shift = quantize_multiplier(b.scale / twice_max)
    y_m0, y_shift = quantize_multiplier(twice_max / ((1 << LEFT_SHIFT) * y.scale))
    ctx.emit("Add", node, [a.name, b.name], [y.name], [],
             {"a_zp": a.zp, "b_zp": b.zp, "a_m0": a_m0, "a_shift": a_shift, "b_m0": b_m0, "b_shift": b_shift,
              "left_shift": LEFT_SHIFT, "y_m0": y_m0, "y_shift": y_shift, "y_zp": y.zp, "qmin": -128, "qmax": 127})
    return True


def lower_mul(ctx: Lowering, node: onnx.NodeProto) -> bool:
    a, b = (_materialize(ctx, node, ctx.value(n, node)) for n in node.input[:2])
    out = ctx.out_q(node.output[0])
    if a is None or b is None or out is None:
        return False
    y = ctx.define_q_output(node.output[0], "")
    m0, shift = quantize_multiplier(a.scale * b.scale / y.scale)
    ctx.emit("Mul", node, [a.name, b.name], [y.name], [],
             {"a_zp": a.zp, "b_zp": b.zp, "m0": m0, "shift": shift, "y_zp": y.zp, "qmin": -128, "qmax": 127})
    return True


def lower_binary(ctx: Lowering, node: onnx.NodeProto) -> bool:
    """Add/Mul: a scalar constant operand is best as a Lut (exact float semantics)."""
    if lower_lut(ctx, node):
        return True
    return lower_add(ctx, node) if node.op_type == "Add" else lower_mul(ctx, node)


def lower_concat(ctx: Lowering, node: onnx.NodeProto) -> bool:
    parts = [_materialize(ctx, node, ctx.value(n, node)) for n in node.input]
    out = ctx.out_q(node.output[0])
    if any(p is None for p in parts) or out is None:
        return False
    y = ctx.define_q_output(node.output[0], "")
    in_zp, m0s, shifts, same = [], [], [], []
    for p in parts:
        identical = np.float32(p.scale) == np.float32(y.scale) and p.zp == y.zp
        m0, shift = quantize_multiplier(p.scale / y.scale)
        in_zp.append(p.zp)
        m0s.append(m0)
        shifts.append(shift)
        same.append(int(identical))
    rank = len(ctx.shape(node.output[0]))
    axis = attrs_of(node)["axis"] % rank
    ctx.emit("Concat", node, [p.name for p in parts], [y.name], [],
             {"axis": axis, "y_zp": y.zp, "in_zp": in_zp, "m0": m0s, "shift": shifts, "same": same})
    return True
