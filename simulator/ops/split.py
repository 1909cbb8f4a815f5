"""Split along an axis. Attrs: axis, sizes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Split")
def split(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    bounds = np.cumsum(a["sizes"])[:-1]
    return [np.ascontiguousarray(p) for p in np.split(inputs[0], bounds, axis=a["axis"])]
