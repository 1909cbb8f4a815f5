"""Transpose. Attr: perm."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Transpose")
def transpose(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    return [np.ascontiguousarray(inputs[0].transpose(node.attrs["perm"]))]
