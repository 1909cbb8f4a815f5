"""Add of two int8 tensors (numpy broadcasting), TFLite reference arithmetic.

Both inputs are shifted left by ``left_shift`` (20), rescaled to twice the larger input
scale with fixed-point multipliers, summed in int32 and requantized to the output.
Attrs: a_zp, b_zp, a_m0, a_shift, b_m0, b_shift, left_shift, y_m0, y_shift, y_zp, qmin, qmax.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.fixedpoint import multiply_by_quantized_multiplier as mbqm
from qverify.simulator.ops._common import requant
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Add")
def add(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    shift_up = np.int64(1) << a["left_shift"]
    left = mbqm((inputs[0].astype(np.int64) - a["a_zp"]) * shift_up, a["a_m0"], a["a_shift"])
    right = mbqm((inputs[1].astype(np.int64) - a["b_zp"]) * shift_up, a["b_m0"], a["b_shift"])
    return [requant(left + right, a["y_m0"], a["y_shift"], a["y_zp"], stats, a["qmin"], a["qmax"])]
