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


def requant_channels(acc: np.ndarray, node, bound: float, stats, bias: np.ndarray | None = None,
                     axis: int = 1) -> np.ndarray:
    """Per-output-channel requantization of ``acc + bias`` where |acc + bias| <= ``bound``.

    Uses the exact float64 path when the bound (or, failing that, the values actually
    present) allows it, else the int64 path with int32 saturation. ``node.consts[2:4]`` are
    m0 and shift per channel. On the float path the bias, the rounding half and (with single
    rounding) the zero point are folded into one per-channel offset: ``acc * m`` and
    ``bias * m + 0.5 + zp`` are exact, and so is their sum, the exact value being representable.
    """
    a = node.attrs
    key = ("requant", axis, acc.ndim, fixedpoint.rounding_mode())
    if key not in node.cache:
        m0, shift = node.consts[2], node.consts[3]
        shape = [1] * acc.ndim
        shape[axis] = -1
        mult, post = fixedpoint.float_factors(m0, shift)
        single_step = bool(np.all(post == 1.0))
        offset = (0.0 if bias is None else bias.astype(np.float64) * mult) + 0.5 + (a["y_zp"] if single_step else 0)
        node.cache[key] = (fixedpoint.fast_path_ok(bound, shift), single_step, mult.reshape(shape),
                           post.reshape(shape), np.broadcast_to(offset, mult.shape).reshape(shape),
                           m0.reshape(shape), shift.reshape(shape),
                           None if bias is None else bias.astype(np.int64).reshape(shape))
    fast, single_step, mult, post, offset, m0, shift, bias64 = node.cache[key]
    if not fast and acc.size:
        # The worst case is rarely reached: decide on the values actually present.
        extra = 0.0 if bias64 is None else float(np.abs(bias64).max())
        fast = fixedpoint.fast_path_ok(max(abs(float(acc.max())), abs(float(acc.min()))) + extra, node.consts[3])
    if not fast:
        total = np.asarray(acc, dtype=np.int64) if bias64 is None else np.asarray(acc, dtype=np.int64) + bias64
        return requant(total, m0, shift, a["y_zp"], stats, a["qmin"], a["qmax"])
    t = fixedpoint.multiply_float_exact(acc, mult, post, offset)
    if not single_step:  # the zero point could not be folded into the offset
        t += a["y_zp"]
    y, saturated = fixedpoint.clamp_to_int8(t, a["qmin"], a["qmax"])
    stats.saturated += saturated
    return y


def weight_bound(node, w: np.ndarray, bias: np.ndarray, max_abs_x: int = 255) -> float:
    """Largest |accumulator| any input can produce: max_c sum|w_c| * max|x - zp| + |bias_c|."""
    if "acc_bound" not in node.cache:
        w_zp = np.asarray(node.attrs.get("w_zp", 0), dtype=np.int64)
        if w_zp.ndim:  # one zero point per output channel
            w_zp = w_zp.reshape((-1,) + (1,) * (w.ndim - 1))
        per_channel = np.abs(w.astype(np.int64) - w_zp).reshape(w.shape[0], -1).sum(axis=1)
        node.cache["acc_bound"] = float((per_channel * max_abs_x + np.abs(bias.astype(np.int64))).max(initial=0))
    return node.cache["acc_bound"]
