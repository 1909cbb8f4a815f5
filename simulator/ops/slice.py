"""Slice with resolved, clamped starts/ends/steps for every axis. Attrs: starts, ends, steps."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.registry import register


@register("Slice")
def slice_(node, inputs, stats):
    a = node.attrs
    index = tuple(slice(s, e if e >= 0 else None, st) for s, e, st in zip(a["starts"], a["ends"], a["steps"]))
    return [np.ascontiguousarray(inputs[0][index])]
