"""Helpers shared by the integer kernels: accumulator checks and requantization."""
from __future__ import annotations

import numpy as np

from qverify.simulator import fixedpoint

INT32_MIN, INT32_MAX = fixedpoint.INT32_MIN, fixedpoint.INT32_MAX


def saturate_int32(acc: np.ndarray, stats) -> np.ndarray:
    """Saturate an int64 accumulator to int32 as the hardware does, counting overflows."""
    over = (acc > INT32_MAX) | (acc < INT32_MIN)
    count = int(np.count_nonzero(over))
    if count:
        stats.acc_overflow += count
        acc = np.clip(acc, INT32_MIN, INT32_MAX)
    return acc


def requant(acc: np.ndarray, m0, shift, zero_point: int, stats, qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """int32 accumulator -> int8 with the fixed-point multiplier, counting saturations."""
    y, saturated = fixedpoint.requantize(saturate_int32(acc, stats), m0, shift, zero_point, qmin, qmax)
    stats.saturated += saturated
    return y


def clamp_int8(values: np.ndarray, stats, qmin: int = -128, qmax: int = 127) -> np.ndarray:
    saturated = int(np.count_nonzero((values < qmin) | (values > qmax)))
    stats.saturated += saturated
    return np.clip(values, qmin, qmax).astype(np.int8)


def centered(x: np.ndarray, zero_point: int) -> np.ndarray:
    """``x - zero_point`` as float32 holding exact small integers (input of exact_matmul)."""
    return x.astype(np.float32) - np.float32(zero_point)


def as_2d_spatial(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """View an N,C,L tensor as N,C,1,L so 1-D ops share the 2-D code."""
    if x.ndim == 3:
        return x[:, :, None, :], True
    return x, False
