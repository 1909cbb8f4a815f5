"""Lut: int8 -> int8 through a 256-entry table built at compile time.

Every elementwise op with one int8 input (Sigmoid, Tanh, HardSwish, LeakyRelu, Exp,
Relu, Clip, requantization, fused x * HardSigmoid(x), ...) runs this way. Constant:
table int8 (256,), indexed by ``x + 128``.
"""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.registry import register


@register("Lut")
def lut(node, inputs, stats):
    if "by_byte" not in node.cache:
        # Re-index the table by the int8 bit pattern read as uint8 (x + 128 mod 256).
        node.cache["by_byte"] = np.roll(node.consts[0], 128)
    return [np.take(node.cache["by_byte"], inputs[0].view(np.uint8))]
