"""MatMul of two activations (attention-style) on the integer path.

Attrs: a_zp, b_zp, y_zp, m0, shift, qmin, qmax, output_int32.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.gemm import exact_matmul
from qverify.simulator.ops._common import centered, requant, saturate_int32
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("MatMulAct")
def matmul_act(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    acc = exact_matmul(centered(inputs[0], a["a_zp"]), centered(inputs[1], a["b_zp"]), 255, 255)
    if a.get("output_int32"):
        return [saturate_int32(acc, stats).astype(np.int32)]
    return [requant(acc, np.int32(a["m0"]), np.int32(a["shift"]), a["y_zp"], stats, a["qmin"], a["qmax"])]
