"""Gather with constant indices (resolved to non-negative). Attr: axis; constant: indices int64."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Gather")
def gather(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    return [np.take(inputs[0], node.consts[0], axis=node.attrs["axis"])]
