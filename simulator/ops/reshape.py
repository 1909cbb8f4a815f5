"""Reshape (also Flatten, Squeeze, Unsqueeze, Identity): shapes are static after compile.

Attr: shape.
"""
from __future__ import annotations

from qverify.simulator.ops.registry import register


@register("Reshape")
def reshape(node, inputs, stats):
    return [inputs[0].reshape(node.attrs["shape"])]
