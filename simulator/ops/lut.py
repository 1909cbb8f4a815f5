"""Lut: int8 -> int8 through a 256-entry table built at compile time.

Every elementwise op with one int8 input (Sigmoid, Tanh, HardSwish, LeakyRelu, Exp,
Relu, Clip, requantization, ...) runs this way. Constant: table int8 (256,), indexed
by ``x + 128``.
"""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.registry import register


@register("Lut")
def lut(node, inputs, stats):
    table = node.consts[0]
    # int8 bit pattern XOR 0x80 == x + 128 as an unsigned index.
    return [table[inputs[0].view(np.uint8) ^ np.uint8(0x80)]]
