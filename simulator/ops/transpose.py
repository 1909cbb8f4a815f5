"""Transpose. Attr: perm."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.registry import register


@register("Transpose")
def transpose(node, inputs, stats):
    return [np.ascontiguousarray(inputs[0].transpose(node.attrs["perm"]))]
