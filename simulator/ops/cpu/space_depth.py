"""DepthToSpace (DCR and CRD modes) and SpaceToDepth on NCHW tensors."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.registry import register_cpu


@register_cpu("DepthToSpace")
def depth_to_space(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """Move channel blocks into b x b spatial blocks; DCR (default) or CRD channel order."""
    x = np.asarray(inputs[0])
    b = int(attrs["blocksize"])
    n, c, h, w = x.shape
    if attrs.get("mode", "DCR") == "CRD":
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return [np.ascontiguousarray(y.reshape(n, c // (b * b), h * b, w * b))]


@register_cpu("SpaceToDepth")
def space_to_depth(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """Move b x b spatial blocks into channels (inverse of DepthToSpace DCR)."""
    x = np.asarray(inputs[0])
    b = int(attrs["blocksize"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return [np.ascontiguousarray(y.reshape(n, c * b * b, h // b, w // b))]
