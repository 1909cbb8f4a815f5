"""AveragePool: int32 window sums of (x - zp), divided per window element count.

When input and output scales are equal the division is exact integer division rounding
half away from zero; otherwise a fixed-point multiplier per possible count
(s_in / (s_out * count)) is used. Constants: m0 (kh*kw+1,), shift (kh*kw+1,) indexed by count.
Attrs: kernel, strides, dilations (default 1), pads (t, l, b, r, as in the model), extra_end
(b, r: ceil_mode padding never counted), count_include_pad, x_zp, y_zp, exact_div.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.fixedpoint import multiply_by_quantized_multiplier, round_half_away_div
from qverify.simulator.ops._common import as_2d_spatial, clamp_int8
from qverify.simulator.ops.maxpool import window_reduce
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("AvgPool")
def avgpool(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    x, squeeze = as_2d_spatial(inputs[0])
    pt, pl, pb, pr = a["pads"]
    eb, er = a["extra_end"]
    widths = ((0, 0), (0, 0), (pt, pb + eb), (pl, pr + er))
    xp = np.pad(x.astype(np.int32) - a["x_zp"], widths)
    dil = tuple(a.get("dilations", (1, 1)))
    sums = window_reduce(xp, a["kernel"], a["strides"], dil, np.add)
    counted = np.zeros((1, 1) + x.shape[2:], dtype=np.int32)
    counted = np.pad(counted + 1, ((0, 0), (0, 0), (pt, pb), (pl, pr)),
                     constant_values=1 if a["count_include_pad"] else 0)
    counted = np.pad(counted, ((0, 0), (0, 0), (0, eb), (0, er)))
    counts = window_reduce(counted, a["kernel"], a["strides"], dil, np.add)
    counts = np.maximum(counts, 1)
    if a["exact_div"]:
        y = round_half_away_div(sums, counts) + a["y_zp"]
    else:
        m0, shift = node.consts
        y = multiply_by_quantized_multiplier(sums, m0[counts], shift[counts]) + a["y_zp"]
    y = clamp_int8(y, stats)
    return [y[:, :, 0, :] if squeeze else y]
