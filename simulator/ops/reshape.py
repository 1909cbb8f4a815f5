"""Reshape (also Flatten, Squeeze, Unsqueeze, Identity): shapes are static after compile.

Attr: shape.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Reshape")
def reshape(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    return [inputs[0].reshape(node.attrs["shape"])]
