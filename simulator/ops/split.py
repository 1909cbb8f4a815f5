"""Split along an axis. Attrs: axis, sizes."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.registry import register


@register("Split")
def split(node, inputs, stats):
    a = node.attrs
    bounds = np.cumsum(a["sizes"])[:-1]
    return [np.ascontiguousarray(p) for p in np.split(inputs[0], bounds, axis=a["axis"])]
