"""Lowering of Conv, ConvTranspose, MatMul, Gemm, ConvInteger and MatMulInteger."""
from __future__ import annotations

import numpy as np
import onnx

from qverify.simulator.compiler.context import CPU_HINT, FValue, Lowering, QConst, QValue
from qverify.simulator.compiler.graph import attrs_of
from qverify.simulator.errors import CompileError
from qverify.simulator.fixedpoint import quantize_multipliers
from qverify.simulator.ops.cpu._util import spatial_pads


def _weights(ctx: Lowering, node: onnx.NodeProto, value, channels: int, axis: int) -> tuple[np.ndarray, np.ndarray, int]:
    """int8 weights, per-channel float scales (length ``channels``) and the scalar weight zero point."""
    if not isinstance(value, QConst) or value.wide:
        raise CompileError("weights must be a constant int8 tensor behind DequantizeLinear",
                           node=node.name, op=node.op_type, hint=CPU_HINT.format(node=node.name))
    scale = value.scale.reshape(-1).astype(np.float64)
    if scale.size == 1:
        scale = np.repeat(scale, channels)
    elif scale.size != channels or (value.axis is not None and value.axis % value.values.ndim != axis):
        raise CompileError(f"per-channel weight scales must run along the output channels (axis {axis}), "
                           f"got {scale.size} scales on axis {value.axis}", node=node.name, op=node.op_type)
    zps = np.unique(value.zp)
    if zps.size != 1:
        raise CompileError("per-channel weight zero points must all be equal (symmetric weights expected)",
                           node=node.name, op=node.op_type,
                           hint="quantize with weight_type=QuantType.QInt8 (symmetric)")
    return value.values.astype(np.int8), scale, int(zps[0])


def _bias(ctx: Lowering, node: onnx.NodeProto, name: str, acc_scale: np.ndarray, channels: int,
          factor: float = 1.0, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """int32 bias at the accumulator scale (s_x * s_w[c]): one value per output channel, or, for a
    Gemm bias that varies along the rows too, the full ``out_shape`` (M, N) array."""
    if not name:
        return np.zeros(channels, dtype=np.int32)
    value = ctx.value(name, node)
    ints = None
    if isinstance(value, QConst) and value.wide and factor == 1.0:
        given = value.scale.reshape(-1).astype(np.float64)
        if given.size in (1, channels) and np.allclose(given, acc_scale, rtol=1e-5):
            ints = value.values.astype(np.int64)
    if ints is None:
        real = value.real() if isinstance(value, QConst) else np.asarray(value, dtype=np.float32)
        if not isinstance(real, np.ndarray) or real.dtype.kind != "f":
            raise CompileError("bias must be a float constant", node=node.name, op=node.op_type)
        ints = np.rint(real.astype(np.float64) * factor / acc_scale)  # broadcasts along the last axis
    if ints.ndim == 0 or (all(d == 1 for d in ints.shape[:-1]) and ints.shape[-1] in (1, channels)):
        ints = np.broadcast_to(ints.reshape(-1), (channels,))
    elif out_shape is not None and np.broadcast_shapes(ints.shape, out_shape) == tuple(out_shape):
        ints = np.broadcast_to(ints, out_shape)
    else:
        raise CompileError(f"bias of shape {list(ints.shape)} must hold one value per output channel",
                           node=node.name, op=node.op_type)
    if np.any(np.abs(ints) > 2**31 - 1):
        raise CompileError("bias does not fit int32 at scale s_x * s_w", node=node.name, op=node.op_type)
    return np.ascontiguousarray(ints).astype(np.int32)


def _requant_consts(ctx: Lowering, base: str, acc_scale: np.ndarray, y_scale: float, factor: float = 1.0):
    m0, shift = quantize_multipliers(acc_scale * factor / y_scale)
    return ctx.add_const(f"{base}/m0", m0), ctx.add_const(f"{base}/shift", shift)


def _spatial(attrs: dict, x_shape, k_shape, node, transpose: bool = False) -> dict:
    """Normalise strides/dilations/pads to 2-D (t, l, b, r), resolving auto_pad."""
    nd = len(k_shape)
    if nd not in (1, 2):
        raise CompileError(f"{nd}-D convolution is not supported on the integer path", node=node.name,
                           op=node.op_type, hint=CPU_HINT.format(node=node.name))
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise CompileError(f"auto_pad {auto_pad} is not supported here", node=node.name, op=node.op_type)
    if transpose and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        attrs = {k: v for k, v in attrs.items() if k != "auto_pad"}  # resolved from the output shape
    begin, end = spatial_pads(attrs, x_shape[2:], list(k_shape), strides, dilations)
    pads = list(begin) + list(end)
    if nd == 1:
        return {"strides": [1, strides[0]], "dilations": [1, dilations[0]], "pads": [0, pads[0], 0, pads[1]]}
    return {"strides": strides, "dilations": dilations, "pads": [pads[0], pads[1], pads[2], pads[3]]}


def lower_conv(ctx: Lowering, node: onnx.NodeProto) -> bool:
    x = ctx.value(node.input[0], node)
    if not isinstance(x, QValue):
        return False
    attrs = attrs_of(node)
    w_value = ctx.value(node.input[1], node)
    if not isinstance(w_value, QConst) or w_value.values.ndim not in (3, 4):
        return False  # 3-D convolutions run on the CPU
    oc = w_value.values.shape[0]
    w, w_scale, w_zp = _weights(ctx, node, w_value, oc, 0)
    out = ctx.out_q(node.output[0])
    if out is None:
        return False
    acc_scale = np.float64(x.scale) * w_scale
    bias = _bias(ctx, node, node.input[2] if len(node.input) > 2 else "", acc_scale, oc)
    y = ctx.define_q_output(node.output[0], "")
    base = y.name
    m0, shift = _requant_consts(ctx, base, acc_scale, y.scale)
    spatial = _spatial(attrs, ctx.shape(node.input[0]), w.shape[2:], node)
    ctx.emit("Conv", node, [x.name], [y.name],
             [ctx.add_const(f"{base}/weight", w), ctx.add_const(f"{base}/bias", bias), m0, shift],
             {"x_zp": x.zp, "w_zp": w_zp, "y_zp": y.zp, "qmin": -128, "qmax": 127, "group": attrs.get("group", 1),
              **spatial})
    return True


def lower_conv_transpose(ctx: Lowering, node: onnx.NodeProto) -> bool:
    x = ctx.value(node.input[0], node)
    w_value = ctx.value(node.input[1], node)
    out = ctx.out_q(node.output[0])
    if not isinstance(x, QValue) or not isinstance(w_value, QConst) or out is None:
        return False
    if w_value.values.ndim not in (3, 4):
        return False  # 3-D transposed convolutions run on the CPU
    attrs = attrs_of(node)
    group = attrs.get("group", 1)
    oc = w_value.values.shape[1] * group
    if w_value.scale.size > 1 and group != 1:
        return False
    w, w_scale, w_zp = _weights(ctx, node, w_value, oc, 1)
    if w_zp != 0:
        return False
    acc_scale = np.float64(x.scale) * w_scale
    bias = _bias(ctx, node, node.input[2] if len(node.input) > 2 else "", acc_scale, oc)
    x_shape, y_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    k = w.shape[2:]
    spatial = _spatial({k2: v for k2, v in attrs.items() if k2 != "auto_pad"}, x_shape, k, node, transpose=True)
    nd = len(k)
    out_pad = list(attrs.get("output_padding", [0] * nd))
    # Derive the pads from the inferred output shape (covers output_shape and auto_pad).
    full = [(x_shape[2 + i] - 1) * spatial["strides"][-nd + i] + (k[i] - 1) * spatial["dilations"][-nd + i] + 1
            + out_pad[i] for i in range(nd)]
    given = [spatial["pads"][1] + spatial["pads"][3]] if nd == 1 else [spatial["pads"][0] + spatial["pads"][2],
                                                                      spatial["pads"][1] + spatial["pads"][3]]
    for i in range(nd):
        if full[i] - given[i] != y_shape[2 + i]:
            # ONNX: SAME_UPPER puts the odd padding at the end; SAME_LOWER and an explicit
            # output_shape at the beginning. An output_shape beyond the full result extends
            # it at the end (negative end pad: those rows hold only the bias), as onnxruntime does.
            total = full[i] - y_shape[2 + i]
            if total < 0:
                begin = 0
            else:
                begin = total // 2 if attrs.get("auto_pad", "NOTSET") == "SAME_UPPER" else total - total // 2
            idx = i if nd == 2 else 1
            spatial["pads"][idx], spatial["pads"][idx + 2] = begin, total - begin
    y = ctx.define_q_output(node.output[0], "")
    m0, shift = _requant_consts(ctx, y.name, acc_scale, y.scale)
    ctx.emit("ConvTranspose", node, [x.name], [y.name],
             [ctx.add_const(f"{y.name}/weight", w), ctx.add_const(f"{y.name}/bias", bias), m0, shift],
             {"x_zp": x.zp, "y_zp": y.zp, "qmin": -128, "qmax": 127, "group": group,
              "output_padding": [0, out_pad[0]] if nd == 1 else out_pad, **spatial})
    return True


def lower_matmul(ctx: Lowering, node: onnx.NodeProto) -> bool:
    """MatMul and Gemm: constant weights -> MatMul; two activations -> MatMulAct."""
    attrs = attrs_of(node) if node.op_type == "Gemm" else {}
    trans_a = attrs.get("transA", 0)
    x = ctx.value(node.input[0], node)
    w_value = ctx.value(node.input[1], node)
    out = ctx.out_q(node.output[0])
    if not isinstance(x, QValue) or out is None:
        return False
    alpha = float(attrs.get("alpha", 1.0))
    if isinstance(w_value, QValue):
        if node.op_type == "Gemm":  # Gemm of two activations: on the CPU
            return False
        y = ctx.define_q_output(node.output[0], "")
        m0, shift = quantize_multipliers(np.array([x.scale * w_value.scale / y.scale]))
        ctx.emit("MatMulAct", node, [x.name, w_value.name], [y.name], [],
                 {"a_zp": x.zp, "b_zp": w_value.zp, "y_zp": y.zp, "m0": int(m0[0]), "shift": int(shift[0]),
                  "qmin": -128, "qmax": 127})
        return True
    # Constant weights: (K, N), or batched (..., K, N) for MatMul.
    if not isinstance(w_value, QConst) or w_value.values.ndim < 2 or (node.op_type == "Gemm"
                                                                       and w_value.values.ndim != 2):
        return False
    trans_b = attrs.get("transB", 0)
    values = w_value.values.T if trans_b else w_value.values
    n = values.shape[-1]
    axis = w_value.axis
    if axis is not None and trans_b:
        axis = 1 - (axis % 2)
    w, w_scale, w_zp = _weights(ctx, node, QConst(values, w_value.scale, w_value.zp, axis, False), n,
                                values.ndim - 1)
    acc_scale = np.float64(x.scale) * w_scale
    bias_name = node.input[2] if len(node.input) > 2 else ""
    beta = float(attrs.get("beta", 1.0))
    out_shape = ctx.shape(node.output[0]) if node.op_type == "Gemm" else None
    bias = _bias(ctx, node, bias_name, acc_scale * alpha, n, factor=beta, out_shape=out_shape) \
        if (alpha != 1 or beta != 1) else _bias(ctx, node, bias_name, acc_scale, n, out_shape=out_shape)
    y = ctx.define_q_output(node.output[0], "")
    m0, shift = _requant_consts(ctx, y.name, acc_scale, y.scale, factor=alpha)
    if trans_a:  # Gemm A is 2-D: transpose the activation first
        rows, cols = ctx.shape(node.input[0])
        xt = ctx.add_tensor(ctx.fresh_tensor_name(f"{node.output[0]}/transA"), np.int8, (cols, rows), x.scale, x.zp)
        ctx.emit("Transpose", node, [x.name], [xt], attrs={"perm": [1, 0]},
                 name=f"{node.name or node.output[0]}/transA")
        x = QValue(xt, x.scale, x.zp)
    ctx.emit("MatMul", node, [x.name], [y.name],
             [ctx.add_const(f"{y.name}/weight", w), ctx.add_const(f"{y.name}/bias", bias), m0, shift],
             {"x_zp": x.zp, "w_zp": w_zp, "y_zp": y.zp, "qmin": -128, "qmax": 127})
    return True


def _int_operand(ctx: Lowering, node: onnx.NodeProto, index: int, channels: int = 1):
    """Raw 8-bit operand of ConvInteger/MatMulInteger: (program tensor or constant array, int8-domain zp).

    The zero point is an int, or a list of ``channels`` ints for a per-output-channel weight
    zero point (``channels`` > 1 only for the constant weight operand).
    """
    name = node.input[index]
    zp_name = node.input[index + 2] if len(node.input) > index + 2 else ""
    if zp_name and zp_name not in ctx.graph.consts:
        raise CompileError("zero points of ConvInteger/MatMulInteger must be constants", node=node.name,
                           op=node.op_type)
    zp_raw = np.asarray(ctx.graph.consts[zp_name]) if zp_name else np.zeros((), np.uint8)
    value = ctx.value(name, node)
    elem = ctx.graph.elem_types.get(name)
    unsigned = (elem == onnx.TensorProto.UINT8) if elem else np.asarray(value).dtype == np.uint8
    zp = zp_raw.astype(np.int32).reshape(-1) - (128 if unsigned else 0)
    if zp.size == 1 or (zp.size > 1 and np.all(zp == zp[0])):
        return value, int(zp[0]), unsigned
    if zp.size != channels or channels == 1:
        raise CompileError("per-channel zero points are supported only on the weights, one per output channel",
                           node=node.name, op=node.op_type)
    return value, [int(z) for z in zp], unsigned


def lower_integer(ctx: Lowering, node: onnx.NodeProto) -> bool:
    """ConvInteger / MatMulInteger: int32 outputs, no requantization."""
    x, x_zp, _ = _int_operand(ctx, node, 0)
    if not isinstance(x, QValue):
        return False
    w_raw = ctx.value(node.input[1], node)
    const_w = not isinstance(w_raw, (QValue, QConst))
    if node.op_type == "MatMulInteger":
        if const_w and np.ndim(w_raw) < 2:
            return False
        channels = np.shape(w_raw)[-1] if const_w else 1
    else:
        if not const_w:
            return False
        channels = np.shape(w_raw)[0]
    w, w_zp, w_unsigned = _int_operand(ctx, node, 1, channels)
    if isinstance(w, QConst):
        return False
    out = node.output[0]
    ctx.add_tensor(out, np.int32, ctx.shape(out))
    ctx.values[out] = FValue(out)
    if isinstance(w, QValue):  # MatMulInteger of two activations
        ctx.emit("MatMulAct", node, [x.name, w.name], [out], [],
                 {"a_zp": x_zp, "b_zp": w_zp, "y_zp": 0, "m0": 0, "shift": 0, "qmin": 0, "qmax": 0,
                  "output_int32": 1})
        return True
    w = (np.asarray(w).astype(np.int32) - (128 if w_unsigned else 0)).astype(np.int8)
    zeros = np.zeros(channels, np.int32)
    consts = [ctx.add_const(f"{out}/weight", w), ctx.add_const(f"{out}/bias", zeros),
              ctx.add_const(f"{out}/m0", zeros), ctx.add_const(f"{out}/shift", zeros)]
    if node.op_type == "MatMulInteger":
        ctx.emit("MatMul", node, [x.name], [out], consts,
                 {"x_zp": x_zp, "w_zp": w_zp, "y_zp": 0, "qmin": 0, "qmax": 0, "output_int32": 1})
        return True
    attrs = attrs_of(node)
    spatial = _spatial(attrs, ctx.shape(node.input[0]), w.shape[2:], node)
    ctx.emit("Conv", node, [x.name], [out], consts,
             {"x_zp": x_zp, "w_zp": w_zp, "y_zp": 0, "qmin": 0, "qmax": 0, "group": attrs.get("group", 1),
              "output_int32": 1, **spatial})
    return True
