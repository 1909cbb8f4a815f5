"""Embedded preprocessing: uint8 camera frame -> int8 NCHW model input, per-channel tables.

For model channel c the board reads image channel ``channel_map[c]`` and looks it up in
``tables[c]`` = quantize((p - mean[c]) / std[c]) for every pixel value p (built at compile
time in float32 exactly as the host computes the ONNX input). Constant: tables int8 (C, 256).
Attrs: channel_map; ``format`` ("NV12" or "YUV444") when the board receives YUV frames,
which are first converted to an RGB image by :func:`yuv_to_rgb` (the integer contract).

YUV frames (BT.601, full range as in JFIF: Y, U and V all span 0..255, U = V = 128 is grey):

* NV12, uint8 (N, H*3/2, W, 1): the Y plane (H rows of W), then the interleaved UV plane
  (H/2 rows of W bytes: U, V, U, V, ...), one U/V pair per 2x2 block of pixels; H and W even.
* YUV444, uint8 (N, H, W, 3): packed Y, U, V per pixel.

Conversion, in int32 with Q16 coefficients (round(c * 2**16) of the BT.601 matrix)::

    d = U - 128, e = V - 128, Y32 = Y << 16
    R = clamp((Y32 + 91881 * e + 32768) >> 16, 0, 255)            # 1.402
    G = clamp((Y32 - 22553 * d - 46802 * e + 32768) >> 16, 0, 255)  # 0.344136, 0.714136
    B = clamp((Y32 + 116130 * d + 32768) >> 16, 0, 255)            # 1.772

``>>`` is an arithmetic shift (floor), so each result is rounded half up; NV12 chroma is
taken as is for the 2x2 block it covers (nearest neighbour, no interpolation).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView

YUV_FORMATS = ("NV12", "YUV444")
YUV_SHIFT = 16
# BT.601 full range, Q16: R = Y + 1.402 e, G = Y - 0.344136 d - 0.714136 e, B = Y + 1.772 d
CR_R, CB_G, CR_G, CB_B = 91881, 22553, 46802, 116130


def yuv_planes(frame: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y, U, V) full-resolution uint8 planes (N, H, W) of an NV12 or YUV444 frame."""
    if fmt == "YUV444":
        return frame[..., 0], frame[..., 1], frame[..., 2]
    n, rows, w, _ = frame.shape
    h = rows * 2 // 3
    y = frame[:, :h, :, 0]
    uv = frame[:, h:, :, 0].reshape(n, h // 2, w // 2, 2)
    up = [np.repeat(np.repeat(uv[..., k], 2, axis=1), 2, axis=2) for k in (0, 1)]
    return y, up[0], up[1]


def yuv_to_rgb(frame: np.ndarray, fmt: str) -> np.ndarray:
    """uint8 NV12/YUV444 frame -> uint8 RGB image (N, H, W, 3), bit-exact (module docstring)."""
    y, u, v = (p.astype(np.int32) for p in yuv_planes(frame, fmt))
    d, e, y = u - 128, v - 128, y << YUV_SHIFT
    half = 1 << (YUV_SHIFT - 1)
    r = (y + CR_R * e + half) >> YUV_SHIFT
    g = (y - CB_G * d - CR_G * e + half) >> YUV_SHIFT
    b = (y + CB_B * d + half) >> YUV_SHIFT
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


@register("Preprocess")
def preprocess(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    tables = node.consts[0]
    image = inputs[0]
    fmt = node.attrs.get("format", "")
    if fmt:
        image = yuv_to_rgb(image, fmt)
    planes = [tables[c][image[..., src]] for c, src in enumerate(node.attrs["channel_map"])]
    return [np.ascontiguousarray(np.stack(planes, axis=1))]
