"""Gather with constant indices (resolved to non-negative). Attr: axis; constant: indices int64."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.registry import register


@register("Gather")
def gather(node, inputs, stats):
    return [np.take(inputs[0], node.consts[0], axis=node.attrs["axis"])]
