"""Slice with resolved, clamped starts/ends/steps for every axis. Attrs: starts, ends, steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Slice")
def slice_(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    index = tuple(slice(s, e if e >= 0 else None, st) for s, e, st in zip(a["starts"], a["ends"], a["steps"]))
    return [np.ascontiguousarray(inputs[0][index])]
