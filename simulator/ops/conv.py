"""Conv on the integer path: exact int32 accumulation, bias, per-channel requantization.

Constants: weight int8 (OC, IC/group, KH, KW), bias int32 (OC), m0 int32 (OC), shift int32 (OC).
Attrs: x_zp, y_zp, qmin, qmax, group, strides (2), pads (t, l, b, r), dilations (2),
w_zp (weight zero point, 0 for symmetric weights; a list of OC values for ConvInteger with
per-channel zero points), output_int32 (1: return the raw int32
accumulator, ConvInteger).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qverify.simulator.gemm import exact_matmul
from qverify.simulator.ops._common import as_2d_spatial, centered, requant_channels, saturate_int32, weight_bound
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


def conv_accumulate(xc: np.ndarray, w: np.ndarray, group: int, strides, dilations,
                    max_abs_x: int = 255, w_zp: int | list[int] = 0, acc_dtype: type = np.float64,
                    spare_rows: int = 0) -> np.ndarray:
    """Exact conv of centered float32 input (N,C,H,W, already padded) with int8 weights.

    Returns ``acc_dtype`` holding the exact integer accumulators: float64 always is
    (|values| < 2^53 here); float32 is when the caller knows every |value| < 2^24.
    """
    full = xc
    if spare_rows:  # zero rows past the padded image, for the depthwise flat slices
        xc = xc[:, :, :xc.shape[2] - spare_rows]
    n, c, h, wd = xc.shape
    oc, icg, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    eff_h, eff_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    oh, ow = (h - eff_h) // sh + 1, (wd - eff_w) // sw + 1
    if np.ndim(w_zp):  # one zero point per output channel (ConvInteger)
        w_zp = np.asarray(w_zp, dtype=np.int64)
        wf = w.astype(np.float32) - w_zp.astype(np.float32).reshape(-1, 1, 1, 1)
        max_abs_w = 128 + int(np.abs(w_zp).max())
    else:
        wf = centered(w, w_zp)
        max_abs_w = 128 + abs(w_zp)
    if (group == c and icg == 1 and oc == c and kh * kw * max_abs_x * max_abs_w < (1 << 24)
            and spare_rows >= sh + 1):
        # Depthwise: one multiply-add per tap; every partial sum stays exact in float32.
        return _depthwise(full, wf[:, 0], strides, dilations, oh, ow).astype(acc_dtype, copy=False)
    out = np.empty((n, oc, oh * ow), dtype=acc_dtype)
    ocg = oc // group
    for g in range(group):
        xg = xc[:, g * icg:(g + 1) * icg]
        if kh == kw == 1 and sh == sw == 1:
            cols = xg.reshape(n, icg, h * wd)
        else:
            win = sliding_window_view(xg, (eff_h, eff_w), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
            cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, icg * kh * kw, oh * ow)
        wg = wf[g * ocg:(g + 1) * ocg].reshape(ocg, icg * kh * kw)
        out[:, g * ocg:(g + 1) * ocg] = exact_matmul(wg, cols, max_abs_a=max_abs_w, max_abs_b=max_abs_x,
                                                     out_dtype=acc_dtype)
    return out.reshape(n, oc, oh, ow)


def _depthwise(xc: np.ndarray, wf: np.ndarray, strides, dilations, oh: int, ow: int) -> np.ndarray:
    """Depthwise taps over the flattened image, so every multiply runs along one long axis.

    Stride 1: output (r, col) of tap (i, j) reads flat input index r * W + col + i * dh * W
    + j * dw, so each tap is one contiguous slice of the flattened rows. Outputs are computed
    on a grid W wide and the columns past ``ow`` dropped; ``xc`` carries spare zero rows at
    the bottom so the last slice stays in bounds. Stride s: the same on s x s phase planes.
    """
    n, c, h, wd = xc.shape
    kh, kw = wf.shape[1:]
    sh, sw = strides
    dh, dw = dilations
    if sh != sw or (sh > 1 and (dh, dw) != (1, 1)):
        acc = np.zeros((n, c, oh, ow), dtype=np.float32)
        for i in range(kh):
            for j in range(kw):
                tap = xc[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                acc += tap * wf[None, :, i, j, None, None]
        return acc
    if sh > 1 and dh == dw == 1:
        # Strided: split the image into sh x sh phase planes once, so every tap is again a
        # contiguous slice (of one plane) and the output grid is not sh times too wide.
        hq, wq = -(-h // sh), -(-wd // sh)
        planes = np.zeros((sh, sh, n, c, hq + 2, wq), dtype=np.float32)
        for a in range(sh):
            for b in range(sh):
                part = xc[:, :, a::sh, b::sh]
                planes[a, b, :, :, :part.shape[2], :part.shape[3]] = part
        flat_planes = planes.reshape(sh, sh, n, c, (hq + 2) * wq)
        length = oh * wq
        acc = np.zeros((n, c, length), dtype=np.float32)
        product = np.empty_like(acc)
        for i in range(kh):
            for j in range(kw):
                start = (i // sh) * wq + (j // sh)
                tap = flat_planes[i % sh, j % sh, :, :, start: start + length]
                np.multiply(tap, wf[None, :, i, j, None], out=product)
                acc += product
        return acc.reshape(n, c, oh, wq)[:, :, :, :ow]
    flat = xc.reshape(n, c, h * wd)  # includes the spare rows
    length = oh * wd
    acc = np.zeros((n, c, length), dtype=np.float32)
    product = np.empty_like(acc)
    for i in range(kh):
        for j in range(kw):
            start = i * dh * wd + j * dw
            tap = flat[:, :, start: start + length]
            np.multiply(tap, wf[None, :, i, j, None], out=product)
            acc += product
    return acc.reshape(n, c, oh, wd)[:, :, :, :ow]


def padded_centered(x: np.ndarray, zero_point: int, pads, spare_rows: int = 0) -> np.ndarray:
    """``x - zero_point`` as float32, zero-padded (t, l, b, r) plus ``spare_rows`` zero rows, in one pass."""
    n, c, h, w = x.shape
    pt, pl, pb, pr = pads
    out = np.zeros((n, c, h + pt + pb + spare_rows, w + pl + pr), dtype=np.float32)
    np.subtract(x, np.float32(zero_point), out=out[:, :, pt:pt + h, pl:pl + w], dtype=np.float32)
    return out


@register("Conv")
def conv(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    x, squeeze = as_2d_spatial(inputs[0])
    w, bias, m0, shift = node.consts
    if w.ndim == 3:
        w = w[:, :, None, :]
    depthwise = a["group"] == x.shape[1] == w.shape[0] and w.shape[1] == 1
    spare = a["strides"][0] + 1 if depthwise else 0
    xc = padded_centered(x, a["x_zp"], a["pads"], spare)
    bound = weight_bound(node, w, bias)
    # Below 2^21 every partial and final sum is an integer float32 holds exactly.
    acc_dtype = np.float32 if bound < (1 << 21) else np.float64
    acc = conv_accumulate(xc, w, a["group"], a["strides"], a["dilations"], w_zp=a.get("w_zp", 0),
                          acc_dtype=acc_dtype, spare_rows=spare)
    if a.get("output_int32"):
        acc = acc.astype(np.int64) + bias.astype(np.int64)[None, :, None, None]
        y = saturate_int32(acc, stats).astype(np.int32)
    else:
        # Weights in the first axis of w: the bound is over (IC/group, KH, KW) per output channel.
        y = requant_channels(acc, node, bound, stats, bias)
    return [y[:, :, 0, :] if squeeze else y]
