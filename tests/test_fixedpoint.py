"""Property tests of the fixed-point helpers against exact rational / Python-int references.

Every reference here is written with Python integers or ``fractions.Fraction`` only, so it
cannot share a numpy overflow or a rounding mistake with the code under test.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qverify.simulator.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_reference,
    quantize_multiplier,
    quantize_multipliers,
    requantize,
    round_half_away_div,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

# Moderate budgets: the whole file runs in a few seconds.
FP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FP_ARRAYS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

M0_MIN, M0_MAX = 1 << 30, (1 << 31) - 1

# int32 values, biased towards the edges of the range and the rounding boundaries.
EDGES = [INT32_MIN, INT32_MIN + 1, -(1 << 30), -2, -1, 0, 1, 2, 1 << 30, INT32_MAX - 1, INT32_MAX]
int32s = st.one_of(st.integers(INT32_MIN, INT32_MAX), st.sampled_from(EDGES),
                   st.integers(-1024, 1024))
m0s = st.one_of(st.integers(M0_MIN, M0_MAX), st.sampled_from([M0_MIN, M0_MIN + 1, M0_MAX - 1, M0_MAX]))
shifts = st.integers(-31, 30)


# ----------------------------------------------------------------------------- references
def exact_ints(values) -> np.ndarray:
    """The fast path returns int64, or float64 holding exact integers (|x| < 2^21): as int64."""
    arr = np.asarray(values)
    assert arr.dtype in (np.int64, np.float64), arr.dtype
    if arr.dtype == np.float64:
        assert np.isfinite(arr).all()
        assert (np.trunc(arr) == arr).all(), "float64 result holds a non-integer"
        assert (np.abs(arr) < 2.0 ** 53).all()
    return arr.astype(np.int64)


def _round_half_away(q: Fraction) -> int:
    """Exact round-half-away-from-zero of a rational."""
    mag = math.floor(abs(q) + Fraction(1, 2))
    return -mag if q < 0 else mag


def _c_div(num: int, den: int) -> int:
    """C integer division (truncation toward zero), den > 0."""
    q = abs(num) // den
    return -q if num < 0 else q


def ref_srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul, with Python ints."""
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return _c_div(ab + nudge, 1 << 31)


def ref_rdbpot(x: int, exponent: int) -> int:
    return _round_half_away(Fraction(x, 1 << exponent))


def ref_mbqm(x: int, m0: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier spelled out with Python ints."""
    left, right = max(shift, 0), max(-shift, 0)
    scaled = min(max(x * (1 << left), INT32_MIN), INT32_MAX)
    return ref_rdbpot(ref_srdhm(scaled, m0), right)


# ----------------------------------------------------------------------------- quantize_multiplier
# (2^31 - 1/2) * 2^(30 - 31): from here on m0 would round to 2^31 at shift 30.
LARGEST_REPRESENTABLE = 2.0 ** 30 - 0.25
positive_reals = st.one_of(
    st.floats(min_value=2.0 ** -32, max_value=2.0 ** 30, exclude_max=True, allow_nan=False),
    # every binade, including the mantissas that round up to 1.0 (0.99999999...).
    st.builds(lambda m, e: math.ldexp(m, e),
              st.floats(min_value=0.5, max_value=1.0, exclude_max=True), st.integers(-31, 30)),
    st.builds(lambda e: math.ldexp(1.0 - 2.0 ** -40, e), st.integers(-31, 29)),
).filter(lambda r: r < LARGEST_REPRESENTABLE)


@FP
@given(positive_reals)
@example(1.0)
@example(0.5)
@example(2.0 ** -31)
@example(2.0 ** -32)
@example(math.ldexp(1.0 - 2.0 ** -40, 0))  # mantissa rounds up to 1.0: m0 halves, shift + 1
@example(math.ldexp(1.0 - 2.0 ** -40, 29))
@example(math.nextafter(2.0 ** 30, 0.0) * 0.999999)
@example(0.0003921568859368563)
def test_quantize_multiplier_is_within_half_an_ulp(real):
    m0, shift = quantize_multiplier(real)
    assert isinstance(m0, int) and isinstance(shift, int)
    assert M0_MIN <= m0 < (1 << 31)
    assert -31 <= shift <= 30
    exact = Fraction(real)
    approx = Fraction(m0) * Fraction(2) ** (shift - 31)
    assert abs(exact - approx) <= Fraction(2) ** (shift - 32)


def test_quantize_multiplier_of_zero():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(-0.0) == (0, 0)


@FP
@given(st.floats(min_value=0.0, max_value=2.0 ** -33, exclude_min=True))
@example(5e-324)
@example(2.0 ** -33)
def test_quantize_multiplier_flushes_tiny_values_to_zero(real):
    # Too small for shift >= -31: flushed like TFLite. (0, 0) is still within half an
    # ulp of a shift-0 format, and applying it gives 0.
    assert quantize_multiplier(real) == (0, 0)


@FP
@given(st.floats(min_value=2.0 ** 30, allow_infinity=False, allow_nan=False))
@example(2.0 ** 30)
@example(math.nextafter(2.0 ** 30, 0.0))  # mantissa rounds up to 1.0 -> shift 31
@example(1e308)
def test_quantize_multiplier_too_large_raises(real):
    with pytest.raises(ValueError, match="too large"):
        quantize_multiplier(real)


@pytest.mark.parametrize("bad", [-1.0, -1e-30, float("inf"), float("-inf"), float("nan")])
def test_quantize_multiplier_rejects_negative_and_non_finite(bad):
    with pytest.raises(ValueError):
        quantize_multiplier(bad)


@FP_ARRAYS
@given(st.lists(st.one_of(st.just(0.0), st.floats(2.0 ** -32, 1000.0)), min_size=0, max_size=8))
def test_quantize_multipliers_matches_scalar(reals):
    arr = np.array(reals, dtype=np.float64)
    m0, shift = quantize_multipliers(arr)
    assert m0.dtype == np.int32 and shift.dtype == np.int32
    assert m0.shape == arr.shape == shift.shape
    for r, a, b in zip(reals, m0.tolist(), shift.tolist()):
        assert (a, b) == quantize_multiplier(r)


# ----------------------------------------------------------------------------- SRDHM
@FP
@given(int32s, int32s)
@example(INT32_MIN, INT32_MIN)  # the one saturating case
@example(INT32_MIN, INT32_MAX)
@example(INT32_MAX, INT32_MAX)
@example(INT32_MIN, 1)
@example(-1, 1 << 30)  # exact -0.5 tie, truncation after nudge
@example(1, 1 << 30)
@example(-3, 1 << 30)
@example(INT32_MIN, -1)
def test_srdhm_matches_gemmlowp(a, b):
    assert int(saturating_rounding_doubling_high_mul(a, b)) == ref_srdhm(a, b)


@FP_ARRAYS
@given(hnp.arrays(np.int32, st.integers(0, 64), elements=int32s),
       st.data())
def test_srdhm_vectorized(a, data):
    b = data.draw(hnp.arrays(np.int32, a.shape, elements=int32s))
    a[: len(a) // 4] = INT32_MIN
    b[: len(b) // 8] = INT32_MIN
    got = saturating_rounding_doubling_high_mul(a, b)
    assert got.dtype == np.int64
    assert got.tolist() == [ref_srdhm(int(x), int(y)) for x, y in zip(a, b)]


# ----------------------------------------------------------------------------- RoundingDivideByPOT
@FP
@given(int32s, st.integers(0, 31))
@example(-1, 1)  # -0.5 -> -1 (away from zero)
@example(1, 1)   # 0.5 -> 1
@example(-3, 1)
@example(3, 1)
@example(INT32_MIN, 31)  # -1 exactly
@example(INT32_MAX, 31)
@example(-(1 << 30), 31)  # -0.5 -> -1
@example(1 << 30, 31)     # 0.5 -> 1
@example(-5, 0)
def test_rounding_divide_by_pot_is_round_half_away(x, exponent):
    assert int(rounding_divide_by_pot(x, exponent)) == ref_rdbpot(x, exponent)


@FP_ARRAYS
@given(hnp.arrays(np.int64, st.integers(0, 32), elements=st.integers(-(2 ** 40), 2 ** 40)), st.data())
def test_rounding_divide_by_pot_per_element_exponent(x, data):
    e = data.draw(hnp.arrays(np.int64, x.shape, elements=st.integers(0, 31)))
    got = rounding_divide_by_pot(x, e)
    assert got.tolist() == [ref_rdbpot(int(a), int(b)) for a, b in zip(x, e)]


# ----------------------------------------------------------------------------- MultiplyByQuantizedMultiplier
@FP
@given(int32s, m0s, shifts)
@example(INT32_MIN, M0_MAX, 30)   # left shift saturates to INT32_MIN
@example(INT32_MAX, M0_MAX, 30)   # ... and to INT32_MAX
@example(INT32_MIN, M0_MAX, 0)
@example(INT32_MIN, M0_MIN, -31)
@example(INT32_MAX, M0_MAX, -31)
@example(-1, M0_MIN, 0)           # -0.5 before the shift: rounds half up in SRDHM
@example(1, M0_MIN, 0)
@example(-3, M0_MIN, -1)          # ties in the second rounding
@example(-1, M0_MIN, 1)
@example(0, M0_MAX, 30)
def test_mbqm_fast_path_equals_reference_scalar(x, m0, shift):
    fast = exact_ints(multiply_by_quantized_multiplier(x, m0, shift))
    ref = multiply_by_quantized_multiplier_reference(x, m0, shift)
    assert ref.dtype == np.int64
    assert int(fast) == int(ref) == ref_mbqm(x, m0, shift)


@FP_ARRAYS
@given(st.integers(1, 8), st.integers(1, 6), st.data())
def test_mbqm_fast_path_equals_reference_per_channel(rows, channels, data):
    """Per-channel m0/shift arrays (broadcast over the last axis), mixed-sign shifts."""
    x = data.draw(hnp.arrays(np.int32, (rows, channels), elements=int32s))
    m0 = data.draw(hnp.arrays(np.int32, (channels,), elements=m0s))
    shift = data.draw(hnp.arrays(np.int32, (channels,), elements=shifts))
    fast = exact_ints(multiply_by_quantized_multiplier(x, m0, shift))
    ref = multiply_by_quantized_multiplier_reference(x, m0, shift)
    assert fast.shape == ref.shape
    np.testing.assert_array_equal(fast, ref)
    expected = [[ref_mbqm(int(x[r, c]), int(m0[c]), int(shift[c])) for c in range(channels)]
                for r in range(rows)]
    assert fast.tolist() == expected


@FP_ARRAYS
@given(st.integers(1, 8), st.integers(1, 6), st.data())
def test_mbqm_fast_path_scalar_shift_array_m0(rows, channels, data):
    """Per-channel m0 with one scalar shift takes the scalar fast path for shift <= 0."""
    x = data.draw(hnp.arrays(np.int32, (rows, channels), elements=int32s))
    m0 = data.draw(hnp.arrays(np.int32, (channels,), elements=m0s))
    shift = data.draw(shifts)
    for s in (shift, np.int32(shift), np.array(shift, dtype=np.int32)):
        fast = exact_ints(multiply_by_quantized_multiplier(x, m0, s))
        np.testing.assert_array_equal(fast, multiply_by_quantized_multiplier_reference(x, m0, s))


@FP_ARRAYS
@given(st.integers(1, 8), st.data())
def test_mbqm_per_channel_on_nhwc_and_nchw_broadcasts(n, data):
    """Shifts shaped (C,1,1) for NCHW accumulators also take the array path bit-exactly."""
    c = data.draw(st.integers(1, 4))
    x = data.draw(hnp.arrays(np.int32, (n, c, 2, 3), elements=int32s))
    m0 = data.draw(hnp.arrays(np.int32, (c, 1, 1), elements=m0s))
    shift = data.draw(hnp.arrays(np.int32, (c, 1, 1), elements=shifts))
    np.testing.assert_array_equal(exact_ints(multiply_by_quantized_multiplier(x, m0, shift)),
                                  multiply_by_quantized_multiplier_reference(x, m0, shift))


@FP
@given(int32s, m0s, st.integers(-31, 0))
@example(INT32_MIN, M0_MAX, 0)
@example(INT32_MAX, M0_MAX, 0)
@example(-1, M0_MIN, 0)
@example(INT32_MIN, M0_MAX, -31)
def test_mbqm_within_one_of_exact_product(x, m0, shift):
    exact = Fraction(x * m0) * Fraction(2) ** (shift - 31)
    got = int(exact_ints(multiply_by_quantized_multiplier(x, m0, shift)))
    assert abs(Fraction(got) - exact) <= 1
    if shift == 0:  # a single rounding: within half an LSB
        assert abs(Fraction(got) - exact) <= Fraction(1, 2)


@FP
@given(int32s, positive_reals.filter(lambda r: r < 1.0))
def test_mbqm_of_quantized_multiplier_is_close_to_real_product(x, real):
    """End to end: quantize M < 1 then apply it; within 1 (+ the m0 rounding error) of x*M.

    M just below 1.0 quantizes to (2^30, 1) = 1.0; then ``x << 1`` saturates to int32 for
    |x| >= 2^30 (the reference semantics, checked bit-exactly above), so those are skipped.
    """
    m0, shift = quantize_multiplier(real)
    assume(not (shift > 0 and not INT32_MIN <= x * (1 << shift) <= INT32_MAX))
    got = int(exact_ints(multiply_by_quantized_multiplier(x, m0, shift)))
    exact = Fraction(x) * Fraction(real)
    m0_err = abs(x) * Fraction(2) ** (shift - 32)  # |x| * half an ulp of M
    assert abs(Fraction(got) - exact) <= 1 + m0_err


# The fast path switches to float64 when every |x| < 2^21 and every shift <= 0.
FLOAT_LIMIT = 1 << 21
near_limit = st.one_of(st.integers(FLOAT_LIMIT - 3, FLOAT_LIMIT + 3),
                       st.integers(-FLOAT_LIMIT - 3, -FLOAT_LIMIT + 3),
                       st.integers(-FLOAT_LIMIT, FLOAT_LIMIT))


@FP_ARRAYS
@given(hnp.arrays(np.int32, st.integers(1, 32), elements=near_limit), st.data())
def test_mbqm_float_and_int_paths_agree(x, data):
    """Same elements, once alone (float64 path when all small) and once beside a large
    element that forces the int64 path: identical values, and equal to the reference."""
    per_channel = data.draw(st.booleans())
    if per_channel:
        m0 = data.draw(hnp.arrays(np.int32, x.shape, elements=m0s))
        shift = data.draw(hnp.arrays(np.int32, x.shape, elements=st.integers(-31, 0)))
        m0_big, shift_big = np.append(m0, M0_MAX), np.append(shift, 0)
    else:
        m0, shift = data.draw(m0s), data.draw(st.integers(-31, 0))
        m0_big, shift_big = m0, shift
    alone = exact_ints(multiply_by_quantized_multiplier(x, m0, shift))
    beside = exact_ints(multiply_by_quantized_multiplier(np.append(x, INT32_MAX).astype(np.int32),
                                                         m0_big, shift_big))
    np.testing.assert_array_equal(alone, beside[:-1])
    np.testing.assert_array_equal(alone, multiply_by_quantized_multiplier_reference(x, m0, shift))


@pytest.mark.parametrize("x", [FLOAT_LIMIT - 1, -(FLOAT_LIMIT - 1), FLOAT_LIMIT, -FLOAT_LIMIT,
                               FLOAT_LIMIT + 1, -(FLOAT_LIMIT + 1)])
@pytest.mark.parametrize("m0", [M0_MIN, M0_MIN + 1, M0_MAX])
@pytest.mark.parametrize("shift", [0, -1, -2, -13, -31])
def test_mbqm_at_the_float64_threshold(x, m0, shift):
    got = exact_ints(multiply_by_quantized_multiplier(np.array([x], dtype=np.int32), m0, shift))
    assert got.tolist() == [ref_mbqm(x, m0, shift)]


@pytest.mark.parametrize("x", [np.array([[5], [7]], dtype=np.int32), np.int32(5)], ids=["col", "0d"])
def test_mbqm_broadcasts_x_against_per_channel_m0(x):
    m0 = np.array([M0_MIN, M0_MIN + 1, M0_MAX], dtype=np.int32)
    shift = np.array([-1, -2, -3], dtype=np.int32)
    ref = multiply_by_quantized_multiplier_reference(x, m0, shift)
    assert ref.shape == np.broadcast_shapes(np.shape(x), m0.shape)
    np.testing.assert_array_equal(exact_ints(multiply_by_quantized_multiplier(x, m0, shift)), ref)


# ----------------------------------------------------------------------------- round_half_away_div
@FP
@given(st.integers(-(2 ** 40), 2 ** 40), st.integers(1, 2 ** 20))
@example(1, 2)
@example(-1, 2)
@example(3, 2)
@example(-3, 2)
@example(-5, 10)
@example(5, 10)
@example(0, 7)
@example(INT32_MIN, 9)
@example(INT32_MAX, 9)
@example(-7, 1)
def test_round_half_away_div(num, den):
    assert int(round_half_away_div(num, den)) == _round_half_away(Fraction(num, den))


@FP_ARRAYS
@given(hnp.arrays(np.int32, st.integers(0, 32), elements=int32s), st.integers(1, 4096))
def test_round_half_away_div_vectorized(nums, den):
    got = round_half_away_div(nums, den)
    assert got.tolist() == [_round_half_away(Fraction(int(n), den)) for n in nums]


# ----------------------------------------------------------------------------- requantize
clamp_ranges = st.tuples(st.integers(-128, 127), st.integers(-128, 127)).map(sorted)


@FP_ARRAYS
@given(hnp.arrays(np.int32, st.integers(0, 64), elements=int32s), m0s, shifts,
       st.integers(-128, 127), clamp_ranges)
@example(np.array([INT32_MIN, INT32_MAX, 0, -1, 1], dtype=np.int32), M0_MIN, 0, 0, (-128, 127))
@example(np.array([0, 1, 2, 3, 1000], dtype=np.int32), M0_MIN, -1, -128, (-128, 127))
@example(np.array([-300, -10, 0, 10, 300], dtype=np.int32), M0_MIN, 1, 0, (0, 127))  # fused Relu
@example(np.array([], dtype=np.int32), M0_MAX, -5, 3, (-128, 127))
def test_requantize_clamps_and_counts(acc, m0, shift, zero_point, qrange):
    qmin, qmax = qrange
    values, saturated = requantize(acc, m0, shift, zero_point, qmin, qmax)
    assert values.dtype == np.int8
    assert values.shape == acc.shape
    assert isinstance(saturated, int)
    unclamped = [ref_mbqm(int(a), m0, shift) + zero_point for a in acc]
    assert values.tolist() == [min(max(y, qmin), qmax) for y in unclamped]
    assert saturated == sum(1 for y in unclamped if y < qmin or y > qmax)


@FP_ARRAYS
@given(st.integers(1, 6), st.data())
def test_requantize_per_channel(channels, data):
    acc = data.draw(hnp.arrays(np.int32, (3, channels), elements=int32s))
    m0 = data.draw(hnp.arrays(np.int32, (channels,), elements=m0s))
    shift = data.draw(hnp.arrays(np.int32, (channels,), elements=shifts))
    zp = data.draw(st.integers(-128, 127))
    values, saturated = requantize(acc, m0, shift, zp)
    unclamped = np.array([[ref_mbqm(int(acc[r, c]), int(m0[c]), int(shift[c])) + zp
                           for c in range(channels)] for r in range(3)], dtype=object)
    assert values.tolist() == [[min(max(int(y), -128), 127) for y in row] for row in unclamped]
    assert saturated == int(sum(1 for y in unclamped.ravel() if y < -128 or y > 127))


@pytest.mark.parametrize("acc", [np.array(1 << 25, dtype=np.int32), np.int32(-(1 << 25)), 1 << 25],
                         ids=["0d-array", "np-scalar", "int"])
def test_requantize_zero_dimensional_large_accumulator(acc):
    small, sat_small = requantize(np.array(5, dtype=np.int32), M0_MIN, -1, 0)
    assert int(small) == ref_mbqm(5, M0_MIN, -1) and sat_small == 0  # the float64 branch copes with 0-d
    values, saturated = requantize(acc, M0_MIN, -1, 0)
    assert saturated == 1 and int(values) in (-128, 127)


def test_requantize_counts_nothing_in_range():
    acc = np.arange(-128, 128, dtype=np.int32)
    values, saturated = requantize(acc, M0_MIN, 1, 0)  # M = 1.0 exactly
    assert saturated == 0
    np.testing.assert_array_equal(values, acc.astype(np.int8))


# ----------------------------------------------------------------------------- single rounding
from fractions import Fraction as _F  # noqa: E402

from qverify.simulator.fixedpoint import rounding as _rounding  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(x=st.integers(-(2**31), 2**31 - 1), m0=st.integers(2**30, 2**31 - 1), shift=st.integers(-31, 30))
@example(x=1, m0=2**30, shift=-1)  # 0.25
@example(x=-2, m0=2**30, shift=-1)  # -0.5 exactly: half up gives 0
@example(x=4, m0=2**30, shift=30)  # 2^31: saturates to INT32_MAX
def test_single_rounding_is_one_round_half_up_of_the_exact_product(x, m0, shift):
    """TFLITE_SINGLE_ROUNDING: floor(x * m0 / 2^(31 - shift) + 1/2), saturated to int32."""
    exact = _F(x * m0, 2 ** (31 - shift))
    want = max(-(2**31), min(2**31 - 1, (exact + _F(1, 2)).numerator // (exact + _F(1, 2)).denominator))
    with _rounding("single"):
        got = multiply_by_quantized_multiplier(np.array([x], dtype=np.int64), m0, shift)
        ref = multiply_by_quantized_multiplier_reference(np.array([x], dtype=np.int64), m0, shift)
    assert int(got[0]) == want == int(ref[0])


@settings(max_examples=100, deadline=None)
@given(xs=st.lists(st.integers(-(2**21) + 1, 2**21 - 1), min_size=1, max_size=40),
       m0=st.integers(2**30, 2**31 - 1), shift=st.integers(-31, 0))
def test_single_rounding_float_path_equals_int_path(xs, m0, shift):
    x = np.array(xs, dtype=np.int64)
    with _rounding("single"):
        fast = multiply_by_quantized_multiplier(x, m0, shift)  # |x| < 2^21: the float64 path
        ref = multiply_by_quantized_multiplier_reference(x, m0, shift)
    np.testing.assert_array_equal(np.asarray(fast, dtype=np.int64), ref)


def test_rounding_mode_is_scoped_and_validated():
    from qverify.simulator.fixedpoint import rounding_mode

    assert rounding_mode() == "double"
    with _rounding("single"):
        assert rounding_mode() == "single"
    assert rounding_mode() == "double"
    with pytest.raises(ValueError):
        with _rounding("banker"):
            pass
