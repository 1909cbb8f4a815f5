"""Resize on int8 values.

nearest: a gather with per-axis index tables (constants idx0..idxR-1), values unchanged.
linear: bilinear over H, W with Q10 fixed-point weights (constants h_lo, h_hi, h_frac,
w_lo, w_hi, w_frac); the Q20 sum of (x - zp) * weights is requantized with the
multiplier s_in / (s_out * 2^20). Attrs: mode, x_zp, y_zp, m0, shift.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.fixedpoint import multiply_by_quantized_multiplier
from qverify.simulator.ops._common import clamp_int8
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView

FRAC_BITS = 10


@register("Resize")
def resize(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    x = inputs[0]
    if a["mode"] == "nearest":
        return [x[np.ix_(*node.consts)]]
    h_lo, h_hi, h_frac, w_lo, w_hi, w_frac = (c.astype(np.int64) for c in node.consts)
    one = np.int64(1 << FRAC_BITS)
    xc = x.astype(np.int64) - a["x_zp"]
    top = xc[:, :, h_lo, :] * (one - h_frac)[None, None, :, None] + xc[:, :, h_hi, :] * h_frac[None, None, :, None]
    acc = top[:, :, :, w_lo] * (one - w_frac) + top[:, :, :, w_hi] * w_frac
    y = multiply_by_quantized_multiplier(acc, a["m0"], a["shift"]) + a["y_zp"]
    return [clamp_int8(y, stats)]
