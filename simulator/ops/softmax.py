"""Softmax on int8: exp table over (max - x), integer sum, integer division.

Constant: exp_table int64 (256,) = round(2^16 * exp(-s_in * d)), d = max - x in [0, 255].
Attrs: axis, y_zp, inv_scale_q8 (round(256 / s_out)). Output
``q = y_zp + round_half_away(table[d] * inv_scale_q8 / (sum * 256))``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.fixedpoint import round_half_away_div
from qverify.simulator.ops._common import clamp_int8
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Softmax")
def softmax(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    table = node.consts[0]
    x = inputs[0].astype(np.int32)
    axis = a["axis"]
    d = x.max(axis=axis, keepdims=True) - x
    e = table[d]
    total = e.sum(axis=axis, keepdims=True)
    y = round_half_away_div(e * a["inv_scale_q8"], total * 256) + a["y_zp"]
    return [clamp_int8(y, stats)]
