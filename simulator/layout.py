"""Valid (logical) vs aligned (native) layouts of activation tensors.

* valid: the logical tensor in ONNX order (N,C,H,W for 4-D), no padding.
* aligned: the buffer as the NPU holds it. 4-D tensors are NHWC with C padded to the
  target's ``c_align`` and W to ``w_align``; other ranks keep the logical order and pad
  the last dimension to ``c_align``.

Padding content is deterministic: every padding element holds the tensor's zero point
(so it dequantizes to exactly 0.0), or 0.0 for float tensors.
"""
from __future__ import annotations

import numpy as np

from qverify.simulator.targets import TargetProfile


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def aligned_layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 4:
        return "NHWC"
    return "".join("NCDEFGH"[i] if len(shape) > 1 else "C" for i in range(len(shape))) or "SCALAR"


def aligned_shape(shape: tuple[int, ...], target: TargetProfile) -> tuple[int, ...]:
    if len(shape) == 4:
        n, c, h, w = shape
        return (n, h, _round_up(w, target.w_align), _round_up(c, target.c_align))
    if len(shape) == 0:
        return ()
    return (*shape[:-1], _round_up(shape[-1], target.c_align))


def element_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for dim in reversed(shape):
        strides.append(acc)
        acc *= dim
    return tuple(reversed(strides))


def to_aligned(valid: np.ndarray, target: TargetProfile, pad_value: float | int) -> np.ndarray:
    """Logical tensor -> native buffer (a new C-contiguous array)."""
    shape = valid.shape
    out = np.full(aligned_shape(shape, target), pad_value, dtype=valid.dtype)
    if valid.ndim == 4:
        n, c, h, w = shape
        out[:, :, :w, :c] = valid.transpose(0, 2, 3, 1)
    elif valid.ndim == 0:
        out[...] = valid
    else:
        out[..., : shape[-1]] = valid
    return out


def to_valid(aligned: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Native buffer -> logical tensor of ``shape`` (padding dropped)."""
    if len(shape) == 4:
        n, c, h, w = shape
        return np.ascontiguousarray(aligned[:, :, :w, :c].transpose(0, 3, 1, 2))
    if len(shape) == 0:
        return aligned.copy()
    return np.ascontiguousarray(aligned[..., : shape[-1]])


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x
