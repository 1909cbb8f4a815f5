"""Lut: int8 -> int8 through a 256-entry table built at compile time.

Every elementwise op with one int8 input (Sigmoid, Tanh, HardSwish, LeakyRelu, Exp,
Relu, Clip, requantization, fused x * HardSigmoid(x), ...) runs this way. Constant:
table int8 (256,), indexed by ``x + 128``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Lut")
def lut(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    if "by_byte" not in node.cache:
        # Re-index the table by the int8 bit pattern read as uint8 (x + 128 mod 256).
        node.cache["by_byte"] = np.roll(node.consts[0], 128)
    return [np.take(node.cache["by_byte"], inputs[0].view(np.uint8))]
