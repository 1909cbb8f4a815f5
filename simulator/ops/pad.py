"""Pad an int8 tensor. Attrs: pads (begin..., end...), mode, value (the int8 of the pad value)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Pad")
def pad(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    x = inputs[0]
    rank = x.ndim
    widths = list(zip(a["pads"][:rank], a["pads"][rank:]))
    if a["mode"] == "constant":
        return [np.pad(x, widths, constant_values=np.int8(a["value"]))]
    return [np.pad(x, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[a["mode"]])]
