"""ConvTranspose on the integer path: exact GEMM, then col2im summed in int64.

Constants: weight int8 (IC, OC/group, KH, KW), bias int32 (OC), m0 int32 (OC), shift int32 (OC).
Attrs: x_zp, y_zp, qmin, qmax, group, strides (2), pads (t, l, b, r; a negative b or r extends the
output at the end with rows/columns holding only the bias), dilations (2), output_padding (2).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.gemm import exact_matmul
from qverify.simulator.ops._common import as_2d_spatial, centered, requant
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("ConvTranspose")
def conv_transpose(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    x, squeeze = as_2d_spatial(inputs[0])
    w, bias, m0, shift = node.consts
    if w.ndim == 3:
        w = w[:, :, None, :]
    n, ic, h, wd = x.shape
    _, ocg, kh, kw = w.shape
    group = a["group"]
    icg, oc = ic // group, ocg * group
    sh, sw = a["strides"]
    dh, dw = a["dilations"]
    pt, pl, pb, pr = a["pads"]
    oph, opw = a["output_padding"]
    full_h = (h - 1) * sh + (kh - 1) * dh + 1 + oph
    full_w = (wd - 1) * sw + (kw - 1) * dw + 1 + opw
    full = np.zeros((n, oc, full_h, full_w), dtype=np.int64)
    xc = centered(x, a["x_zp"]).reshape(n, ic, h * wd)
    for g in range(group):
        wg = w[g * icg:(g + 1) * icg].astype(np.float32).reshape(icg, ocg * kh * kw).T
        cols = exact_matmul(wg, xc[:, g * icg:(g + 1) * icg], max_abs_a=128, max_abs_b=255)
        cols = cols.reshape(n, ocg, kh, kw, h, wd)
        for i in range(kh):
            for j in range(kw):
                full[:, g * ocg:(g + 1) * ocg, i * dh: i * dh + sh * (h - 1) + 1: sh,
                     j * dw: j * dw + sw * (wd - 1) + 1: sw] += cols[:, :, i, j]
    if min(pb, pr) < 0:  # output_shape beyond the full result: extended at the end with zeros
        full = np.pad(full, ((0, 0), (0, 0), (0, max(0, -pb)), (0, max(0, -pr))))
    acc = full[:, :, pt: full_h - pb, pl: full_w - pr] + bias.astype(np.int64)[None, :, None, None]
    y = requant(acc, m0[None, :, None, None], shift[None, :, None, None], a["y_zp"], stats, a["qmin"], a["qmax"])
    return [y[:, :, 0, :] if squeeze else y]
