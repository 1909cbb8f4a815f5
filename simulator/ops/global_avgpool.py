"""GlobalAveragePool: sum of (x - zp) over all spatial positions, then one division.

Attrs: x_zp, y_zp, exact_div, m0, shift (s_in / (s_out * count) when scales differ).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.fixedpoint import multiply_by_quantized_multiplier, round_half_away_div
from qverify.simulator.ops._common import clamp_int8
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("GlobalAvgPool")
def global_avgpool(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    x = inputs[0]
    axes = tuple(range(2, x.ndim))
    count = int(np.prod([x.shape[i] for i in axes]))
    sums = (x.astype(np.int64) - a["x_zp"]).sum(axis=axes, keepdims=True)
    if a["exact_div"]:
        y = round_half_away_div(sums, count) + a["y_zp"]
    else:
        y = multiply_by_quantized_multiplier(sums, a["m0"], a["shift"]) + a["y_zp"]
    return [clamp_int8(y, stats)]
