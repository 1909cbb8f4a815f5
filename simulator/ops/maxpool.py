"""MaxPool directly on int8 values (max commutes with the monotonic quantization).

Attrs: kernel (2), strides (2), pads (t, l, b, r; ceil_mode already folded in), dilations (2).
Padding holds -128 so it never wins.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops._common import as_2d_spatial
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


def window_reduce(xp: np.ndarray, kernel, strides, dilations, reduce) -> np.ndarray:
    """Reduce every pooling window of padded N,C,H,W ``xp`` with the binary ufunc ``reduce``."""
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    oh = (xp.shape[2] - ((kh - 1) * dh + 1)) // sh + 1
    ow = (xp.shape[3] - ((kw - 1) * dw + 1)) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            out = tap.copy() if out is None else reduce(out, tap)
    return out


@register("MaxPool")
def maxpool(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    x, squeeze = as_2d_spatial(inputs[0])
    pt, pl, pb, pr = a["pads"]
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=-128)
    y = window_reduce(xp, a["kernel"], a["strides"], a["dilations"], np.maximum)
    return [y[:, :, 0, :] if squeeze else y]
