"""Per-op rules of the integer (NPU) kernels: what each one indexes, checked at load.

Each rule reads the node's inputs, attributes and constants exactly as its kernel in
``simulator/ops/`` does, refuses what the kernel cannot take, and states the output
shape and dtype the kernel will produce (``NodeCheck.outputs``), which must match the
program's declaration so the next node gets what it was validated for.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from qverify.simulator.gemm import chunk_size
from qverify.simulator.validate_base import M0, SHIFT, ZP8, NodeCheck

INT8, INT32, UINT8 = np.dtype(np.int8), np.dtype(np.int32), np.dtype(np.uint8)
BIG = 1 << 20  # strides, dilations, pads: far beyond any real model, small enough for exact int math


def _out_dtype(c: NodeCheck) -> np.dtype:
    return INT32 if c.int_attr("output_int32", 0, 1, 0) else INT8


def _spatial(c: NodeCheck, x: tuple[int, ...]) -> tuple[int, int, int, int, bool]:
    """N, C, H, W of a rank-3 (N, C, L: H = 1) or rank-4 input, and whether it was rank 3."""
    if len(x) == 3:
        return x[0], x[1], 1, x[2], True
    return (*x, False)


def _window_out(c: NodeCheck, size: int, pad: int, k: int, stride: int, dilation: int, axis: str) -> int:
    span = (k - 1) * dilation + 1
    if size + pad < span:
        c.fail(f"its window spans {span} along {axis} but the padded input has only {size + pad}")
    return (size + pad - span) // stride + 1


def _squeeze(c: NodeCheck, n: int, ch: int, oh: int, ow: int, was_1d: bool) -> tuple[int, ...]:
    if was_1d:
        if oh != 1:
            c.fail(f"a 1-D input would give {oh} rows; its pads or kernel along H must keep one row")
        return (n, ch, ow)
    return (n, ch, oh, ow)


def _geometry(c: NodeCheck, dilations_default=None) -> tuple[list[int], list[int], list[int]]:
    strides = c.ints_attr("strides", 2, 1, BIG)
    dilations = c.ints_attr("dilations", 2, 1, BIG, *([] if dilations_default is None else [dilations_default]))
    pads = c.ints_attr("pads", 4, 0, BIG)
    return strides, dilations, pads


def _weight_zp(c: NodeCheck, channels: int) -> None:
    value = c.attr("w_zp", 0)
    if isinstance(value, list):
        c.ints_attr("w_zp", channels, *ZP8)
    else:
        c.int_attr("w_zp", *ZP8, 0)


def conv(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(3, 4))
    w, bias, m0, shift = c.consts(4)
    c.const(w, "weight", ranks=(3, 4), dtype=INT8)
    oc, icg, kh, kw = w.shape if w.ndim == 4 else (w.shape[0], w.shape[1], 1, w.shape[2])
    n, ch, h, wd, was_1d = _spatial(c, x)
    if min(oc, icg, kh, kw) < 1:
        c.fail(f"weight shape {list(w.shape)} has an empty dimension")
    group = c.int_attr("group", 1, ch)
    if ch != icg * group or oc % group:
        c.fail(f"weight {list(w.shape)} with group {group} does not fit {ch} input channels")
    c.const(bias, "bias", shape=(oc,), dtype=INT32)
    c.requant_consts(m0, shift, oc)
    _weight_zp(c, oc)
    c.quant_attrs("x_zp", "y_zp")
    c.clamp_attrs()
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = _geometry(c)
    oh = _window_out(c, h, pt + pb, kh, sh, dh, "H")
    ow = _window_out(c, wd, pl + pr, kw, sw, dw, "W")
    c.work((n, ch, h + pt + pb + sh + 1, wd + pl + pr), 4, "padded input")
    c.work((n, icg * kh * kw, oh * ow), 8, "window matrix")
    c.work((n, oc, oh, ow), 8, "accumulator")
    c.outputs([_squeeze(c, n, oc, oh, ow, was_1d)], _out_dtype(c))


def conv_transpose(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(3, 4))
    w, bias, m0, shift = c.consts(4)
    c.const(w, "weight", ranks=(3, 4), dtype=INT8)
    ic_w, ocg, kh, kw = w.shape if w.ndim == 4 else (w.shape[0], w.shape[1], 1, w.shape[2])
    n, ic, h, wd, was_1d = _spatial(c, x)
    if min(ocg, kh, kw) < 1 or ic_w != ic:
        c.fail(f"weight shape {list(w.shape)} does not fit {ic} input channels")
    group = c.int_attr("group", 1, ic)
    if ic % group:
        c.fail(f"group {group} does not divide {ic} input channels")
    oc = ocg * group
    c.const(bias, "bias", shape=(oc,), dtype=INT32)
    c.requant_consts(m0, shift, oc)
    c.quant_attrs("x_zp", "y_zp")
    c.clamp_attrs()
    sh, sw = c.ints_attr("strides", 2, 1, BIG)
    dh, dw = c.ints_attr("dilations", 2, 1, BIG)
    pt, pl, pb, pr = c.ints_attr("pads", 4, -BIG, BIG)
    if min(pt, pl) < 0:
        c.fail(f"begin pads ({pt}, {pl}) must be >= 0")
    oph, opw = c.ints_attr("output_padding", 2, 0, BIG)
    full_h = (h - 1) * sh + (kh - 1) * dh + 1 + oph
    full_w = (wd - 1) * sw + (kw - 1) * dw + 1 + opw
    oh, ow = full_h - pt - pb, full_w - pl - pr
    if oh < 1 or ow < 1:
        c.fail(f"its pads leave an output of {oh} x {ow}")
    c.work((n, oc, full_h + max(0, -pb), full_w + max(0, -pr)), 8, "full output")
    c.work((n, ocg * kh * kw, h * wd), 8, "column matrix")
    c.outputs([_squeeze(c, n, oc, oh, ow, was_1d)])


def matmul_shape(c: NodeCheck, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """numpy matmul's result shape for a @ b, both of rank >= 1 (a 1-D operand is a vector)."""
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        c.fail(f"cannot multiply {list(a)} by {list(b)}: inner dimensions differ")
    try:
        batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    except ValueError:
        c.fail(f"batch dimensions of {list(a)} and {list(b)} do not broadcast")
    return batch + ((a2[-2],) if len(a) > 1 else ()) + ((b2[-1],) if len(b) > 1 else ())


def matmul(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(1, 8))
    w, bias, m0, shift = c.consts(4)
    c.const(w, "weight", ranks=tuple(range(2, 9)), dtype=INT8)
    out = matmul_shape(c, x, w.shape)
    cols = w.shape[-1]
    c.const(bias, "bias", dtype=INT32)
    try:
        ok = np.broadcast_shapes(out, bias.shape) == out
    except ValueError:
        ok = False
    if not ok:
        c.fail(f"bias {list(bias.shape)} does not broadcast to the output {list(out)}")
    c.requant_consts(m0, shift, cols)
    _weight_zp(c, cols)
    c.quant_attrs("x_zp", "y_zp")
    c.clamp_attrs()
    c.work(out, 8, "accumulator")
    c.outputs([out], _out_dtype(c))


def matmul_act(c: NodeCheck) -> None:
    a, b = c.inputs(2, ranks=(1, 8))
    if len(b) < 2 and b[0] > chunk_size(255, 255):  # exact_matmul splits K along a matrix's rows only
        c.fail(f"its second input is a vector of {b[0]} > {chunk_size(255, 255)} elements, expected a matrix")
    out = matmul_shape(c, a, b)
    c.quant_attrs("a_zp", "b_zp", "y_zp")
    c.multiplier_attrs()
    c.clamp_attrs()
    c.work(out, 8, "accumulator")
    c.outputs([out], _out_dtype(c))


def _broadcast(c: NodeCheck, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError:
        c.fail(f"its inputs {list(a)} and {list(b)} do not broadcast")


def add(c: NodeCheck) -> None:
    a, b = c.inputs(2, empty_ok=True)
    out = _broadcast(c, a, b)
    c.quant_attrs("a_zp", "b_zp", "y_zp")
    for prefix in ("a_", "b_", "y_"):
        c.multiplier_attrs(prefix + "m0", prefix + "shift")
    c.int_attr("left_shift", 0, 23)  # (x - zp) << left_shift stays within int32
    c.clamp_attrs()
    c.work(out, 8, "accumulator")
    c.outputs([out])


def mul(c: NodeCheck) -> None:
    a, b = c.inputs(2, empty_ok=True)
    out = _broadcast(c, a, b)
    c.quant_attrs("a_zp", "b_zp", "y_zp")
    c.multiplier_attrs()
    c.clamp_attrs()
    c.work(out, 8, "accumulator")
    c.outputs([out])


def concat(c: NodeCheck) -> None:
    shapes = c.inputs(None, ranks=(1, 8), empty_ok=True)
    rank = len(shapes[0])
    axis = c.int_attr("axis", 0, rank - 1)
    count = len(shapes)
    c.ints_attr("in_zp", count, *ZP8)
    c.ints_attr("m0", count, *M0)
    c.ints_attr("shift", count, *SHIFT)
    c.ints_attr("same", count, 0, 1)
    c.int_attr("y_zp", *ZP8)
    for shape in shapes[1:]:
        if len(shape) != rank or any(s != f for i, (s, f) in enumerate(zip(shape, shapes[0])) if i != axis):
            c.fail(f"inputs {list(shapes[0])} and {list(shape)} differ beyond axis {axis}")
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    c.outputs([tuple(out)])


def lut(c: NodeCheck) -> None:
    (x,) = c.inputs(1, empty_ok=True)
    (table,) = c.consts(1)
    c.const(table, "table", shape=(256,), dtype=INT8)
    c.outputs([x])


def _pool_geometry(c: NodeCheck, x: tuple[int, ...], extra: tuple[int, int],
                   dilations_default=None) -> tuple[tuple[int, ...], list[int]]:
    n, ch, h, wd, was_1d = _spatial(c, x)
    kh, kw = c.ints_attr("kernel", 2, 1, BIG)
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = _geometry(c, dilations_default)
    oh = _window_out(c, h, pt + pb + extra[0], kh, sh, dh, "H")
    ow = _window_out(c, wd, pl + pr + extra[1], kw, sw, dw, "W")
    c.work((n, ch, h + pt + pb + extra[0], wd + pl + pr + extra[1]), 4, "padded input")
    return _squeeze(c, n, ch, oh, ow, was_1d), [kh, kw]


def maxpool(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(3, 4))
    c.consts(0)
    out, _ = _pool_geometry(c, x, (0, 0))
    c.outputs([out])


def avgpool(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(3, 4))
    eb, er = c.ints_attr("extra_end", 2, 0, BIG)
    out, (kh, kw) = _pool_geometry(c, x, (eb, er), dilations_default=[1, 1])  # the kernel's default
    c.int_attr("count_include_pad", 0, 1)
    c.quant_attrs("x_zp", "y_zp")
    if not c.int_attr("exact_div", 0, 1):
        m0, shift = c.consts(2)
        window = kh * kw + 1  # indexed by the number of counted elements, 1..kh*kw
        c.const(m0, "m0", ranks=(1,), lo=M0[0], hi=M0[1], dtype=INT32)
        c.const(shift, "shift", ranks=(1,), lo=SHIFT[0], hi=SHIFT[1], dtype=INT32)
        if m0.shape[0] < window or shift.shape[0] < window:
            c.fail(f"needs {window} multipliers (one per window count), has {min(m0.shape[0], shift.shape[0])}")
    c.outputs([out])


def global_avgpool(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(3, 8))
    c.quant_attrs("x_zp", "y_zp")
    if not c.int_attr("exact_div", 0, 1):
        c.multiplier_attrs()
    c.work(x, 8, "sum")
    c.outputs([(*x[:2], *([1] * (len(x) - 2)))])


def resize(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(1, 8))
    mode = c.str_attr("mode", ("nearest", "linear"))
    if mode == "nearest":
        tables = c.consts(len(x))
        for axis, (table, size) in enumerate(zip(tables, x)):
            c.const(table, f"index{axis}", ranks=(1,), lo=0, hi=size - 1)
        c.outputs([tuple(t.shape[0] for t in tables)])
        return
    if len(x) != 4:
        c.fail(f"linear mode takes a 4-D input, got rank {len(x)}")
    consts = c.consts(6)
    out = list(x)
    for axis, (lo, hi, frac) in ((2, consts[0:3]), (3, consts[3:6])):
        length = lo.shape[0] if lo.ndim == 1 else 0
        for label, table, top in (("lo", lo, x[axis] - 1), ("hi", hi, x[axis] - 1), ("frac", frac, 1 << 10)):
            c.const(table, f"{label}{axis}", shape=(length,), lo=0, hi=top)
        if length < 1:
            c.fail(f"its index tables along axis {axis} are empty")
        out[axis] = length
    c.quant_attrs("x_zp", "y_zp")
    c.multiplier_attrs()
    c.work((x[0], x[1], out[2], x[3]), 8, "row blend")
    c.outputs([tuple(out)])


def softmax(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(1, 8))
    (table,) = c.consts(1)
    c.int_attr("axis", 0, len(x) - 1)
    c.int_attr("y_zp", *ZP8)
    c.int_attr("inv_scale_q8", 0, (1 << 31) - 1)
    c.const(table, "exp_table", ranks=(1,), lo=0, hi=1 << 16)
    if table.shape[0] < 256 or int(table[0]) < 1:  # d = max - x spans 0..255; d = 0 keeps the sum > 0
        c.fail("exp_table must hold 256 entries with a positive first one")
    c.work(x, 8, "exponent table lookup")
    c.outputs([x])


def reshape(c: NodeCheck) -> None:
    (x,) = c.inputs(1, empty_ok=True)
    shape = tuple(c.ints_attr("shape", None, 0, 1 << 62))
    if len(shape) > 8 or np.prod(shape, dtype=object) != np.prod(x, dtype=object):
        c.fail(f"cannot reshape {list(x)} to {list(shape)}")
    c.outputs([shape])


def transpose(c: NodeCheck) -> None:
    (x,) = c.inputs(1, empty_ok=True)
    perm = c.ints_attr("perm", len(x), 0, max(len(x) - 1, 0))
    if sorted(perm) != list(range(len(x))):
        c.fail(f"perm {perm} is not a permutation of the {len(x)} axes")
    c.outputs([tuple(x[p] for p in perm)])


def slice_(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(1, 8), empty_ok=True)
    limit = 1 << 62
    starts = c.ints_attr("starts", len(x), -limit, limit)
    ends = c.ints_attr("ends", len(x), -limit, limit)
    steps = c.ints_attr("steps", len(x), -limit, limit)
    if 0 in steps:
        c.fail("a slice step is 0")
    out = tuple(len(range(size)[slice(s, e if e >= 0 else None, st)])
                for size, s, e, st in zip(x, starts, ends, steps))
    c.outputs([out])


def split(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(1, 8), empty_ok=True)
    axis = c.int_attr("axis", 0, len(x) - 1)
    sizes = c.ints_attr("sizes", len(c.node.outputs), 0, x[axis])
    if sum(sizes) != x[axis]:
        c.fail(f"split sizes {sizes} do not add up to {x[axis]}")
    c.outputs([tuple(s if i == axis else d for i, d in enumerate(x)) for s in sizes])


def pad(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(1, 8))
    pads = c.ints_attr("pads", 2 * len(x), 0, BIG)
    c.str_attr("mode", ("constant", "reflect", "edge", "wrap"))
    c.int_attr("value", *ZP8)
    c.outputs([tuple(d + pads[i] + pads[i + len(x)] for i, d in enumerate(x))])


def gather(c: NodeCheck) -> None:
    (x,) = c.inputs(1, ranks=(1, 8))
    (indices,) = c.consts(1)
    axis = c.int_attr("axis", 0, len(x) - 1)
    c.const(indices, "indices", lo=0, hi=x[axis] - 1)
    out = (*x[:axis], *indices.shape, *x[axis + 1:])
    if len(out) > 8:
        c.fail(f"its output would have rank {len(out)}")
    c.outputs([out])


def preprocess(c: NodeCheck) -> None:
    (image,) = c.inputs(1, dtype=UINT8, ranks=(4, 4))
    (tables,) = c.consts(1)
    n, h, w, channels = image
    fmt = c.attr("format", "")
    if fmt:  # a YUV frame becomes a 3-channel RGB image first
        c.str_attr("format", ("NV12", "YUV444"))
        if fmt == "NV12":
            if channels != 1 or h % 3 or (h * 2 // 3) % 2 or w % 2:
                c.fail(f"takes an NV12 frame {list(image)}, expected (N, H*3/2, W, 1) with H and W even")
            h = h * 2 // 3
        elif channels != 3:
            c.fail(f"takes a YUV444 frame {list(image)}, expected (N, H, W, 3)")
        channels = 3
    channel_map = c.ints_attr("channel_map", None, 0, channels - 1)
    c.const(tables, "tables", shape=(len(channel_map), 256), dtype=INT8)
    if not channel_map:
        c.fail("attribute 'channel_map' is empty")
    c.outputs([(n, len(channel_map), h, w)])


RULES: dict[str, Callable[[NodeCheck], None]] = {
    "Conv": conv, "ConvTranspose": conv_transpose, "MatMul": matmul, "MatMulAct": matmul_act, "Add": add,
    "Mul": mul, "Concat": concat, "Lut": lut, "MaxPool": maxpool, "AvgPool": avgpool,
    "GlobalAvgPool": global_avgpool, "Resize": resize, "Softmax": softmax, "Reshape": reshape,
    "Transpose": transpose, "Slice": slice_, "Split": split, "Pad": pad, "Gather": gather,
    "Preprocess": preprocess,
}
