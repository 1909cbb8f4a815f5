"""Concat: inputs whose quantization differs from the output's are rescaled first.

Attrs: axis, y_zp, and per input (lists): in_zp, m0, shift, same (1 = copy unchanged).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops._common import requant
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Concat")
def concat(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    parts = []
    for x, zp, m0, shift, same in zip(inputs, a["in_zp"], a["m0"], a["shift"], a["same"]):
        if same:
            parts.append(x)
        else:
            parts.append(requant(x.astype(np.int64) - zp, m0, shift, a["y_zp"], stats))
    return [np.concatenate(parts, axis=a["axis"])]
