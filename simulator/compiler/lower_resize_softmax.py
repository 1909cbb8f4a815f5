"""Lowering of Resize (nearest, linear over H/W) and Softmax to integer kernels."""
from __future__ import annotations

import numpy as np
import onnx

from qverify.simulator.compiler.context import Lowering, QValue
from qverify.simulator.compiler.graph import attrs_of
from qverify.simulator.compiler.lower_movement import emit_movement
from qverify.simulator.fixedpoint import quantize_multiplier
from qverify.simulator.ops.resize import FRAC_BITS


def _source_coords(mode: str, out_len: int, in_len: int, scale: float) -> np.ndarray:
    i = np.arange(out_len, dtype=np.float64)
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        offset = in_len / 2 * (1 - adjustment)
        return offset + (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out_len > 1 else np.zeros(out_len)
    if mode == "align_corners":
        return i * (in_len - 1) / (out_len - 1) if out_len > 1 else np.zeros(out_len)
    if mode == "asymmetric":
        return i / scale
    if mode in ("tf_half_pixel_for_nearest", "tf_half_pixel_for_nn"):
        return (i + 0.5) / scale
    raise ValueError(mode)


def _nearest(coords: np.ndarray, rule: str, in_len: int) -> np.ndarray:
    if rule == "round_prefer_ceil":
        idx = np.floor(coords + 0.5)
    elif rule == "floor":
        idx = np.floor(coords)
    elif rule == "ceil":
        idx = np.ceil(coords)
    else:  # round_prefer_floor
        idx = np.ceil(coords - 0.5)
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


def _scales(ctx: Lowering, node: onnx.NodeProto, attrs: dict, in_shape, out_shape) -> np.ndarray | None:
    """The per-axis scale of the coordinate transformation: the ``scales`` input (on ``axes``), else
    the ``sizes`` ratio after ``keep_aspect_ratio_policy``; None if they are not constants."""
    rank = len(in_shape)
    axes = [a % rank for a in attrs.get("axes", range(rank))]
    ratio = np.array(out_shape, dtype=np.float64) / np.array(in_shape, dtype=np.float64)
    full = np.ones(rank, dtype=np.float64)
    if node.op_type == "Upsample" or ctx.graph.opset < 11:  # Upsample-9/10 and Resize-10: (X, scales)
        scales_name = node.input[1] if len(node.input) > 1 else ""
    else:  # Resize-11+: (X, roi, scales, sizes)
        scales_name = node.input[2] if len(node.input) > 2 else ""
    sizes_name = node.input[3] if len(node.input) > 3 and node.op_type == "Resize" else ""
    if scales_name:
        if scales_name not in ctx.graph.consts:
            return None
        scales = np.asarray(ctx.graph.consts[scales_name], dtype=np.float64).reshape(-1)
        if scales.size:
            if scales.size != len(axes):
                return None
            full[axes] = scales
            return full
    if sizes_name:
        if sizes_name not in ctx.graph.consts:
            return None
        sizes = np.asarray(ctx.graph.consts[sizes_name], dtype=np.float64).reshape(-1)
        if sizes.size != len(axes):
            return None
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        picked = sizes / np.array(in_shape, dtype=np.float64)[axes]  # requested, before rounding
        if policy == "not_larger":
            picked = np.full(len(axes), picked.min())
        elif policy == "not_smaller":
            picked = np.full(len(axes), picked.max())
        full[axes] = picked
        return full
    return ratio


def lower_resize(ctx: Lowering, node: onnx.NodeProto) -> bool:
    x = ctx.value(node.input[0], node)
    if not isinstance(x, QValue):
        return False
    attrs = attrs_of(node)
    mode = attrs.get("mode", "nearest")
    ct_mode = attrs.get("coordinate_transformation_mode", "half_pixel" if ctx.graph.opset >= 11 else "asymmetric")
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    scales = _scales(ctx, node, attrs, in_shape, out_shape)
    if scales is None:
        return False
    if ct_mode == "tf_crop_and_resize" or attrs.get("antialias", 0) or attrs.get("exclude_outside", 0):
        return False
    try:
        coords = [_source_coords(ct_mode, o, i, s) for o, i, s in zip(out_shape, in_shape, scales)]
    except ValueError:
        return False  # a coordinate mode the integer path does not know: the CPU kernel runs it
    if mode == "nearest":
        if ctx.graph.opset >= 11:
            rules = [attrs.get("nearest_mode", "round_prefer_floor")] * len(in_shape)
        else:  # Upsample / Resize-10 (onnxruntime's "simple" mode): floor upsampling, ceil downsampling
            rules = ["floor" if s >= 1 else "ceil" for s in scales]
        tables = [ctx.add_const(f"{node.output[0]}/index{axis}", _nearest(c, rule, n))
                  for axis, (c, n, rule) in enumerate(zip(coords, in_shape, rules))]
        emit_movement(ctx, node, x, "Resize", {"mode": "nearest"}, tables)
        return True
    out = ctx.out_q(node.output[0])
    if mode != "linear" or len(in_shape) != 4 or out is None or in_shape[:2] != out_shape[:2]:
        return False
    consts = []
    for axis in (2, 3):
        c = np.clip(coords[axis], 0, in_shape[axis] - 1)
        lo = np.floor(c).astype(np.int64)
        hi = np.minimum(lo + 1, in_shape[axis] - 1)
        frac = np.rint((c - lo) * (1 << FRAC_BITS)).astype(np.int64)
        consts += [ctx.add_const(f"{node.output[0]}/{name}{axis}", arr)
                   for name, arr in (("lo", lo), ("hi", hi), ("frac", frac))]
    y = ctx.define_q_output(node.output[0], "")
    m0, shift = quantize_multiplier(x.scale / (y.scale * (1 << (2 * FRAC_BITS))))
    ctx.emit("Resize", node, [x.name], [y.name], consts,
             {"mode": "linear", "x_zp": x.zp, "y_zp": y.zp, "m0": m0, "shift": shift})
    return True


def lower_softmax(ctx: Lowering, node: onnx.NodeProto) -> bool:
    x = ctx.value(node.input[0], node)
    out = ctx.out_q(node.output[0])
    if not isinstance(x, QValue) or out is None:
        return False
    rank = len(ctx.shape(node.input[0]))
    attrs = attrs_of(node)
    axis = attrs.get("axis", -1 if ctx.graph.opset >= 13 else 1) % rank
    if ctx.graph.opset < 13 and axis != rank - 1:
        return False  # old semantics flatten from axis on; only the last-axis case matches
    y = ctx.define_q_output(node.output[0], "")
    d = np.arange(256, dtype=np.float64)
    table = np.rint(np.exp(-np.float64(x.scale) * d) * (1 << 16)).astype(np.int64)
    ctx.emit("Softmax", node, [x.name], [y.name], [ctx.add_const(f"{y.name}/exp_table", table)],
             {"axis": axis, "y_zp": y.zp, "inv_scale_q8": int(round(256.0 / y.scale))})
    return True
