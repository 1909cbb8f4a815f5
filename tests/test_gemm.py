"""exact_matmul is the exact int64 product, for every shape, magnitude and thread count."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qverify.simulator.gemm import _FLOAT32_EXACT, chunk_size, exact_matmul

RNG = np.random.default_rng(20240611)
DEFAULT_STEP = chunk_size(255, 128)


def _ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


def _check(a, b, **bounds):
    got = exact_matmul(a, b, **bounds)
    assert got.dtype == np.int64
    expected = _ref(a, b)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    return got


# ----------------------------------------------------------------------------- chunk_size
@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1 << 13), st.integers(0, 1 << 13))
@example(255, 128)
@example(128, 128)
@example(255, 255)
@example(1, 1)
@example(0, 0)
@example(1 << 13, 1 << 13)  # product above 2^24: one product per chunk
def test_chunk_size_keeps_partial_sums_exact_in_float32(max_a, max_b):
    step = chunk_size(max_a, max_b)
    assert isinstance(step, int) and step >= 1
    worst = step * max_a * max_b
    if max_a * max_b <= _FLOAT32_EXACT:
        # every partial sum of a chunk is an integer of magnitude <= 2^24: exact in float32
        assert worst <= _FLOAT32_EXACT
        # and the chunk is as large as it can be (one more term could exceed 2^24)
        assert (step + 1) * max(1, max_a * max_b) > _FLOAT32_EXACT
    assert float(np.float32(_FLOAT32_EXACT)) == _FLOAT32_EXACT
    assert float(np.float32(_FLOAT32_EXACT + 1)) != _FLOAT32_EXACT + 1  # the bound is tight


def test_default_chunk_is_below_two_to_the_24():
    assert DEFAULT_STEP * 255 * 128 < 2 ** 24
    assert DEFAULT_STEP == 514


# ----------------------------------------------------------------------------- worst cases
WORST = [
    (-255, -128, {}),        # defaults: |a| <= 255 (uint8 shifted / sums), |b| <= 128
    (255, -128, {}),
    (-255, 127, {}),
    (255, 127, {}),
    (-128, -128, dict(max_abs_a=128, max_abs_b=128)),
    (127, 127, dict(max_abs_a=128, max_abs_b=128)),
    (-128, -128, {}),
    (255, 255, dict(max_abs_a=255, max_abs_b=255)),
    (-255, 255, dict(max_abs_a=255, max_abs_b=255)),
]


@pytest.mark.parametrize("k", [1, DEFAULT_STEP, DEFAULT_STEP + 1, 4096, 9 * 1024 + 7])
@pytest.mark.parametrize("va,vb,bounds", WORST)
def test_worst_case_constant_matrices(va, vb, bounds, k):
    a = np.full((3, k), va, dtype=np.int16)
    b = np.full((k, 5), vb, dtype=np.int16)
    got = _check(a, b, **bounds)
    assert (got == va * vb * k).all()
    # such a sum is far beyond float32's exact range: a plain float32 matmul would not do
    if k >= 4096:
        assert abs(va * vb * k) > 2 ** 24


@pytest.mark.parametrize("k", [4096, 5000])
def test_worst_case_random_signs(k):
    """Extreme values with random signs: every chunk's partial sums hit both signs."""
    a = RNG.choice(np.array([-255, 255], dtype=np.int16), size=(16, k))
    b = RNG.choice(np.array([-128, 127], dtype=np.int16), size=(k, 24))
    _check(a, b)
    a8 = RNG.choice(np.array([-128, 127], dtype=np.int8), size=(16, k))
    b8 = RNG.choice(np.array([-128, 127], dtype=np.int8), size=(k, 24))
    _check(a8, b8, max_abs_a=128, max_abs_b=128)


def test_large_k_random_int8_and_uint8_values():
    k = 4096
    a = RNG.integers(-255, 256, size=(33, k), dtype=np.int16)  # e.g. uint8 input minus zp
    b = RNG.integers(-128, 128, size=(k, 17), dtype=np.int8)
    _check(a, b)


def test_float32_inputs_holding_integers():
    k = 3000
    a = RNG.integers(-255, 256, size=(4, k)).astype(np.float32)
    b = RNG.integers(-128, 129, size=(k, 6)).astype(np.float32)
    got = exact_matmul(a, b)
    np.testing.assert_array_equal(got, _ref(a.astype(np.int64), b.astype(np.int64)))


# ----------------------------------------------------------------------------- batched shapes
@pytest.mark.parametrize("k", [7, 4096])
def test_batched_a_with_shared_b(k):
    a = RNG.integers(-255, 256, size=(3, 5, k), dtype=np.int16)
    b = RNG.integers(-128, 128, size=(k, 4), dtype=np.int8)
    got = _check(a, b)
    assert got.shape == (3, 5, 4)
    for i in range(3):
        np.testing.assert_array_equal(got[i], _ref(a[i], b))


@pytest.mark.parametrize("k", [7, 4096])
def test_shared_a_with_batched_b(k):
    a = RNG.integers(-255, 256, size=(5, k), dtype=np.int16)
    b = RNG.integers(-128, 128, size=(2, k, 4), dtype=np.int8)
    got = _check(a, b)
    assert got.shape == (2, 5, 4)
    for i in range(2):
        np.testing.assert_array_equal(got[i], _ref(a, b[i]))


@pytest.mark.parametrize("k", [7, 4096])
def test_both_batched_with_broadcast(k):
    a = RNG.integers(-255, 256, size=(2, 1, 3, k), dtype=np.int16)
    b = RNG.integers(-128, 128, size=(1, 3, k, 2), dtype=np.int8)
    got = _check(a, b)
    assert got.shape == (2, 3, 3, 2)


def test_worst_case_batched_large_k():
    k = 4096
    a = np.full((2, 3, k), -255, dtype=np.int16)
    b = np.full((k, 2), -128, dtype=np.int16)
    assert (_check(a, b) == 255 * 128 * k).all()
    a2 = np.full((3, k), 255, dtype=np.int16)
    b2 = np.full((2, k, 2), -128, dtype=np.int16)
    assert (_check(a2, b2) == -255 * 128 * k).all()


# ----------------------------------------------------------------------------- random shapes
int8_a = st.integers(-255, 255)
int8_b = st.integers(-128, 128)


@st.composite
def operand_pairs(draw):
    batch_a = draw(st.sampled_from([(), (1,), (2,), (3,)]))
    batch_b = draw(st.sampled_from([(), (), batch_a] if batch_a else [(), (2,)]))
    m, n = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    # K around the chunk boundaries, or small; small chunk bounds force many chunks.
    k = draw(st.one_of(st.integers(0, 40), st.integers(DEFAULT_STEP - 2, DEFAULT_STEP + 2),
                       st.integers(1000, 1600)))
    fill = st.sampled_from([-255, 255, 0])
    a = draw(hnp.arrays(np.int16, (*batch_a, m, k), elements=int8_a, fill=fill))
    b = draw(hnp.arrays(np.int16, (*batch_b, k, n), elements=int8_b, fill=st.sampled_from([-128, 128, 0])))
    return a, b


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(operand_pairs())
def test_random_shapes_match_int64_matmul(pair):
    a, b = pair
    _check(a, b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 300), st.integers(1, 1 << 12), st.data())
def test_random_bounds_and_values(m, n, k, bound, data):
    """Any (max_abs_a, max_abs_b) bound: values up to the bound, many chunks."""
    bound_b = data.draw(st.integers(1, 1 << 12))
    a = data.draw(hnp.arrays(np.int32, (m, k), elements=st.integers(-bound, bound),
                             fill=st.sampled_from([-bound, bound])))
    b = data.draw(hnp.arrays(np.int32, (k, n), elements=st.integers(-bound_b, bound_b),
                             fill=st.sampled_from([-bound_b, bound_b])))
    _check(a, b, max_abs_a=bound, max_abs_b=bound_b)


# ----------------------------------------------------------------------------- threads
SHAPES = [(128, 4096, 96), (64, 513, 300), (200, 3000, 40)]

_THREAD_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    from qverify.simulator.gemm import exact_matmul
    try:  # report the BLAS thread count actually in effect, when threadpoolctl is there
        from threadpoolctl import threadpool_info
        threads = sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
    except ImportError:
        threads = []
    rng = np.random.default_rng(7)
    digest = hashlib.sha256()
    for m, k, n in %r:
        a = rng.integers(-255, 256, size=(m, k), dtype=np.int16)
        b = rng.integers(-128, 129, size=(k, n), dtype=np.int16)
        out = exact_matmul(a, b)
        assert out.dtype == np.int64 and out.shape == (m, n)
        digest.update(np.ascontiguousarray(out).tobytes())
    print(digest.hexdigest(), ",".join(map(str, threads)))
""" % (SHAPES,))


def _hash_with_threads(threads: int) -> tuple[str, str]:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    proc = subprocess.run([sys.executable, "-c", _THREAD_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    digest, _, seen = proc.stdout.strip().partition(" ")
    return digest, seen


def test_result_does_not_depend_on_blas_threads():
    (one, seen1), (two, seen2) = _hash_with_threads(1), _hash_with_threads(2)
    if seen1 and seen2:  # threadpoolctl present: the env var really changed the BLAS pool
        assert seen1 == "1" and seen2 == "2", (seen1, seen2)
    assert len(one) == 64
    assert one == two
    # and both equal the exact int64 product, computed here
    rng = np.random.default_rng(7)
    digest = hashlib.sha256()
    for m, k, n in SHAPES:
        a = rng.integers(-255, 256, size=(m, k), dtype=np.int16)
        b = rng.integers(-128, 129, size=(k, n), dtype=np.int16)
        digest.update(np.matmul(a.astype(np.int64), b.astype(np.int64)).tobytes())
    assert one == digest.hexdigest()
