"""Fixed-point requantization with TFLite reference semantics.

A real multiplier ``M > 0`` is stored as ``(m0, shift)`` with ``m0`` an int32 in
``[2^30, 2^31)`` and ``M ~= m0 * 2^(shift - 31)``. Applying it to an int32 value
(``MultiplyByQuantizedMultiplier``) rounds in one of two ways, a property of the target:

* ``double`` (gemmlowp, TFLite's default build): a saturating rounding doubling high
  multiply (round half up) followed by a rounding right shift (half away from zero);
* ``single`` (TFLite built with TFLITE_SINGLE_ROUNDING, CMSIS-NN's single rounding):
  ``(x * m0 + 2^(30 - shift)) >> (31 - shift)``, one rounding, half up. It differs from
  exact (float) requantization only on exact ties.

The mode in force is ambient (:func:`rounding`), set by the executor from the program's
target, so kernels need not carry it; outside any ``rounding()`` block (bare use of these
helpers) it is ``double``, the gemmlowp reference. Arithmetic is int64, or float64 where it is
provably exact, so results do not depend on the machine.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator

import numpy as np

SINGLE, DOUBLE = "single", "double"
_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("qverify_rounding", default=DOUBLE)


@contextlib.contextmanager
def rounding(mode: str) -> Iterator[None]:
    """Run the enclosed requantizations with rounding ``mode`` ('single' or 'double')."""
    if mode not in (SINGLE, DOUBLE):
        raise ValueError(f"rounding mode must be '{SINGLE}' or '{DOUBLE}', got {mode!r}")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def rounding_mode() -> str:
    return _MODE.get()

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Return ``(m0, shift)`` with ``real ~= m0 * 2**(shift - 31)``; ``(0, 0)`` for zero."""
    if real < 0 or not math.isfinite(real):
        raise ValueError(f"multiplier must be finite and >= 0, got {real}")
    if real == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real)  # real = mantissa * 2**shift, mantissa in [0.5, 1)
    m0 = math.floor(mantissa * (1 << 31) + 0.5)  # half away from zero, as TFLite's QuantizeMultiplier
    if m0 == (1 << 31):  # mantissa rounded up to 1.0
        m0 //= 2
        shift += 1
    if shift < -31:  # too small to represent: flushes to zero like TFLite
        return 0, 0
    if shift > 30:
        raise ValueError(f"multiplier {real} is too large for the fixed-point format")
    return int(m0), int(shift)


def quantize_multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized :func:`quantize_multiplier`: int32 arrays ``m0`` and ``shift``."""
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(reals, dtype=np.float64).ravel()]
    m0 = np.array([p[0] for p in pairs], dtype=np.int32).reshape(np.shape(reals))
    shift = np.array([p[1] for p in pairs], dtype=np.int32).reshape(np.shape(reals))
    return m0, shift


def _trunc_shift31(x: np.ndarray) -> np.ndarray:
    """Integer division by 2**31 truncating toward zero (C semantics)."""
    return np.where(x >= 0, x >> 31, -((-x) >> 31))


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values (returned as int64)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    out = _trunc_shift31(ab + nudge)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, np.int64(INT32_MAX), out)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2**exponent, rounding half away from zero."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


# Below this magnitude x * m0 + 2^30 (< 2^52 + 2^30) is an integer float64 holds exactly,
# so the float64 fast path computes exactly the same bits as the int64 path.
_FLOAT64_EXACT_X = 1 << 21


def float_factors(m0: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The multiplier as two exact float64 factors: ``m0 * 2^(left - 31)`` and ``2^-right``
    (double rounding), or ``m0 * 2^(shift - 31)`` and 1 (single rounding)."""
    shift = np.asarray(shift, dtype=np.int64)
    if _MODE.get() == SINGLE:
        mult = np.asarray(m0, dtype=np.float64) * np.exp2((shift - 31).astype(np.float64))
        return mult, np.ones_like(mult)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return (np.asarray(m0, dtype=np.float64) * np.exp2((left - 31).astype(np.float64)),
            np.exp2(-right.astype(np.float64)))


def fast_path_ok(bound: float, shift: np.ndarray) -> bool:
    """True when |x| <= bound keeps the float64 path exact (x * 2^left < 2^21, so the
    product has at most 52 significant bits and the result cannot leave int32), in
    either rounding mode."""
    left = int(np.max(np.maximum(np.asarray(shift), 0), initial=0))
    return bound * (1 << left) < _FLOAT64_EXACT_X


def multiply_float_exact(x: np.ndarray, mult: np.ndarray, post: np.ndarray,
                         offset: np.ndarray | float = 0.5) -> np.ndarray:
    """The float64 path: exact for |x * 2^left| < 2^21 (see :func:`fast_path_ok`).

    ``x * m0 * 2^(left-31)`` has at most 52 significant bits and magnitude < 2^21, so it,
    the +0.5 and the floor (round half up = the nudged high multiply) are exact; so is the
    scaling by ``2^-right`` and the rounding half away from zero that follows. ``offset``
    (default the rounding half) may also carry an exact per-channel term such as a folded
    bias ``bias * mult + 0.5``: the exact sum is representable, so IEEE addition yields it.
    """
    t = np.asarray(np.multiply(x, mult, dtype=np.float64))  # 0-d stays an array for out=
    t += offset
    np.floor(t, out=t)
    if np.any(post != 1.0):
        t *= post
        t += np.copysign(0.5, t)
        np.trunc(t, out=t)
    return t


def multiply_by_quantized_multiplier(x: np.ndarray, m0: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier: ``round(x * m0 * 2**(shift-31))``.

    ``x`` must hold int32 values; ``m0``/``shift`` broadcast against it (per channel).
    Computes the same bits as :func:`saturating_rounding_doubling_high_mul` followed by
    :func:`rounding_divide_by_pot` (see ``multiply_by_quantized_multiplier_reference``),
    with fewer passes: for int32 operands and m0 >= 0 the nudged, truncating high
    multiply equals ``floor((x*m0 + 2^30) / 2^31)`` (round half up), and the only
    saturating case (both INT32_MIN) cannot occur. Returns int64, or float64 holding
    exact integers when the float64 path is exact for these values (about 3x faster).
    """
    x = np.asarray(x)
    shift = np.asarray(shift, dtype=np.int64)
    m0 = np.asarray(m0, dtype=np.int64)
    if x.size and fast_path_ok(max(abs(float(x.max())), abs(float(x.min()))), shift):
        mult, post = float_factors(m0, shift)
        out = multiply_float_exact(x, mult, post)
        return np.broadcast_to(out, np.broadcast_shapes(x.shape, m0.shape, shift.shape)).copy() \
            if out.shape != np.broadcast_shapes(x.shape, m0.shape, shift.shape) else out
    x = x.astype(np.int64)
    if _MODE.get() == SINGLE:
        total = 31 - shift
        y = (x * m0 + (np.int64(1) << (total - 1))) >> total
        return np.clip(y, INT32_MIN, INT32_MAX)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    scaled = x << left
    if np.any(left):
        scaled = np.clip(scaled, INT32_MIN, INT32_MAX)
    high = (scaled * m0 + (1 << 30)) >> 31
    mask = (np.int64(1) << right) - 1
    return (high >> right) + ((high & mask) > ((mask >> 1) + (high < 0)))


def multiply_by_quantized_multiplier_reference(x: np.ndarray, m0: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The definitions, step by step (what the fast paths are tested against): the gemmlowp
    composition for double rounding, TFLite's single-rounding formula with Python ints."""
    if _MODE.get() == SINGLE:
        xs, ms, ss = np.broadcast_arrays(np.asarray(x, dtype=np.int64), np.asarray(m0, dtype=np.int64),
                                         np.asarray(shift, dtype=np.int64))
        out = [max(INT32_MIN, min(INT32_MAX, (int(a) * int(b) + (1 << (30 - int(c)))) >> (31 - int(c))))
               for a, b, c in zip(xs.ravel(), ms.ravel(), ss.ravel())]
        return np.array(out, dtype=np.int64).reshape(xs.shape)
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    scaled = np.clip(x << left, INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(scaled, m0), right)


def round_half_away_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Integer ``num / den`` (den > 0) rounded half away from zero."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    mag = (np.abs(num) * 2 + den) // (2 * den)
    return np.where(num < 0, -mag, mag)


def requantize(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray, zero_point: int,
               qmin: int = -128, qmax: int = 127) -> tuple[np.ndarray, int]:
    """int32 accumulator -> int8 output; returns (values, number of saturated elements)."""
    y = multiply_by_quantized_multiplier(acc, m0, shift) + zero_point
    return clamp_to_int8(y, qmin, qmax)


def clamp_to_int8(y: np.ndarray, qmin: int = -128, qmax: int = 127) -> tuple[np.ndarray, int]:
    """Clamp integer-valued ``y`` to [qmin, qmax] as int8; returns (values, saturated count)."""
    if y.size == 0:
        return y.astype(np.int8), 0
    saturated = 0
    if y.min() < qmin or y.max() > qmax:
        saturated = int(np.count_nonzero(y < qmin)) + int(np.count_nonzero(y > qmax))
        y = np.clip(y, qmin, qmax)
    return y.astype(np.int8), saturated
