"""Mul of two int8 tensors (numpy broadcasting): (a - za)(b - zb) in int32, requantized.

Attrs: a_zp, b_zp, m0, shift (for s_a * s_b / s_y), y_zp, qmin, qmax.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops._common import requant
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Mul")
def mul(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    acc = (inputs[0].astype(np.int32) - a["a_zp"]) * (inputs[1].astype(np.int32) - a["b_zp"])
    return [requant(acc, a["m0"], a["shift"], a["y_zp"], stats, a["qmin"], a["qmax"])]
