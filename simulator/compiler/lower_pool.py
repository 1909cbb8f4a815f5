"""Lowering of MaxPool, AveragePool and GlobalAveragePool."""
from __future__ import annotations

import numpy as np
import onnx

from qverify.simulator.compiler.context import Lowering, QValue
from qverify.simulator.compiler.graph import attrs_of
from qverify.simulator.compiler.lower_movement import emit_movement
from qverify.simulator.ops.cpu._util import spatial_pads
from qverify.simulator.fixedpoint import quantize_multiplier, quantize_multipliers


def _pool_geometry(ctx: Lowering, node: onnx.NodeProto) -> dict | None:
    attrs = attrs_of(node)
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if nd not in (1, 2) or auto_pad not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        return None
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    x_shape = ctx.shape(node.input[0])[2:]
    y_shape = ctx.shape(node.output[0])[2:]
    begin, end = spatial_pads(attrs, x_shape, kernel, strides, dilations)
    pads = list(begin) + list(end)
    extra = []
    for i in range(nd):
        span = (kernel[i] - 1) * dilations[i] + 1
        floor_out = (x_shape[i] + pads[i] + pads[i + nd] - span) // strides[i] + 1
        if attrs.get("ceil_mode", 0):
            # onnxruntime drops a last window that would start in the end padding; onnx's shape
            # inference only does so from opset 22. Refuse rather than compute a wrong shape.
            ceil_out = -(-(x_shape[i] + pads[i] + pads[i + nd] - span) // strides[i]) + 1
            if (ceil_out - 1) * strides[i] >= x_shape[i] + pads[i]:
                ceil_out -= 1
            if ceil_out != y_shape[i]:
                from qverify.simulator.errors import CompileError

                raise CompileError(f"ceil_mode output size {y_shape[i]} from ONNX shape inference differs from the "
                                   f"{ceil_out} onnxruntime computes", node=node.name, op=node.op_type,
                                   hint="convert the model to opset 22, or use ceil_mode=0 with explicit pads")
        # ceil_mode: pad the end so the floor formula yields the inferred output size.
        extra.append(max(0, (y_shape[i] - floor_out) * strides[i]))
    if nd == 1:
        kernel, strides, dilations = [1] + kernel, [1] + strides, [1] + dilations
        pads, extra = [0, pads[0], 0, pads[1]], [0] + extra
    return {"kernel": kernel, "strides": strides, "dilations": dilations, "pads": pads, "extra_end": extra,
            "count_include_pad": int(attrs.get("count_include_pad", 0))}


def lower_maxpool(ctx: Lowering, node: onnx.NodeProto) -> bool:
    x = ctx.value(node.input[0], node)
    if not isinstance(x, QValue) or len([o for o in node.output if o]) != 1:
        return False
    geo = _pool_geometry(ctx, node)
    if geo is None:
        return False
    pads = [geo["pads"][0], geo["pads"][1], geo["pads"][2] + geo["extra_end"][0], geo["pads"][3] + geo["extra_end"][1]]
    emit_movement(ctx, node, x, "MaxPool", {"kernel": geo["kernel"], "strides": geo["strides"],
                                            "dilations": geo["dilations"], "pads": pads})
    return True


def lower_avgpool(ctx: Lowering, node: onnx.NodeProto) -> bool:
    x = ctx.value(node.input[0], node)
    out = ctx.out_q(node.output[0])
    if not isinstance(x, QValue) or out is None:
        return False
    geo = _pool_geometry(ctx, node)
    if geo is None:
        return False
    y = ctx.define_q_output(node.output[0], "")
    exact = int(np.float32(x.scale) == np.float32(y.scale))
    window = geo["kernel"][0] * geo["kernel"][1]
    counts = np.arange(window + 1, dtype=np.float64)
    counts[0] = 1
    m0, shift = quantize_multipliers(x.scale / (y.scale * counts))
    ctx.emit("AvgPool", node, [x.name], [y.name],
             [ctx.add_const(f"{y.name}/m0", m0), ctx.add_const(f"{y.name}/shift", shift)],
             {"kernel": geo["kernel"], "strides": geo["strides"], "dilations": geo["dilations"], "pads": geo["pads"],
              "extra_end": geo["extra_end"], "count_include_pad": geo["count_include_pad"],
              "x_zp": x.zp, "y_zp": y.zp, "exact_div": exact})
    return True


def lower_global_avgpool(ctx: Lowering, node: onnx.NodeProto) -> bool:
    x = ctx.value(node.input[0], node)
    out = ctx.out_q(node.output[0])
    if not isinstance(x, QValue) or out is None:
        return False
    count = int(np.prod(ctx.shape(node.input[0])[2:]))
    y = ctx.define_q_output(node.output[0], "")
    m0, shift = quantize_multiplier(x.scale / (y.scale * count))
    ctx.emit("GlobalAvgPool", node, [x.name], [y.name], [],
             {"x_zp": x.zp, "y_zp": y.zp, "exact_div": int(np.float32(x.scale) == np.float32(y.scale)),
              "m0": m0, "shift": shift})
    return True
