"""Embedded preprocessing: uint8 NHWC image -> int8 NCHW model input, per-channel tables.

For model channel c the board reads image channel ``channel_map[c]`` and looks it up in
``tables[c]`` = quantize((p - mean[c]) / std[c]) for every pixel value p (built at compile
time in float32 exactly as the host computes the ONNX input). Constant: tables int8 (C, 256).
Attr: channel_map.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("Preprocess")
def preprocess(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    tables = node.consts[0]
    image = inputs[0]
    planes = [tables[c][image[..., src]] for c, src in enumerate(node.attrs["channel_map"])]
    return [np.ascontiguousarray(np.stack(planes, axis=1))]
