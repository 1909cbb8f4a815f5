"""Aligned (native) vs valid (logical) layouts, for every target profile."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qverify.simulator import targets
from qverify.simulator.errors import SimulatorError
from qverify.simulator.layout import (
    aligned_layout,
    aligned_shape,
    element_strides,
    nchw_to_nhwc,
    nhwc_to_nchw,
    to_aligned,
    to_valid,
)
from qverify.simulator.targets import TARGETS, TargetProfile

ALL_TARGETS = sorted(TARGETS)
# an extra odd profile, so nothing silently depends on powers of two or w_align == 1
ODD = TargetProfile("odd-c3w5", 3, 5)
PROFILES = [TARGETS[n] for n in ALL_TARGETS] + [ODD]

DTYPES = [np.int8, np.uint8, np.int32, np.float32]
LAYOUT = settings(max_examples=40, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _round_up(v: int, m: int) -> int:
    return math.ceil(v / m) * m


def _expected_aligned_shape(shape, t: TargetProfile):
    if len(shape) == 4:
        n, c, h, w = shape
        return (n, h, _round_up(w, t.w_align), _round_up(c, t.c_align))
    if len(shape) == 0:
        return ()
    return (*shape[:-1], _round_up(shape[-1], t.c_align))


def _pad_for(dtype, draw):
    if np.dtype(dtype).kind == "f":
        return draw(st.sampled_from([0.0, -1.5, 7.25]))
    info = np.iinfo(dtype)
    return draw(st.sampled_from([0, int(info.min), int(info.max), 5]))


@st.composite
def tensors(draw, rank):
    dtype = draw(st.sampled_from(DTYPES))
    # small dims, including 1 and dims around the alignments (15, 16, 17, 31, 33)
    dim = st.one_of(st.integers(1, 5), st.sampled_from([7, 8, 9, 15, 16, 17, 31, 32, 33]))
    if rank == 4:
        shape = (draw(st.integers(1, 2)), draw(dim), draw(st.integers(1, 4)), draw(dim))
    else:
        shape = tuple(draw(st.integers(1, 3)) for _ in range(rank - 1)) + ((draw(dim),) if rank else ())
    valid = draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False,
                                                                     allow_infinity=False)))
    return valid, _pad_for(dtype, draw)


def _check_round_trip(valid: np.ndarray, target: TargetProfile, pad) -> np.ndarray:
    shape = valid.shape
    out = to_aligned(valid, target, pad)

    # shape, dtype, contiguity and strides agree with aligned_shape / element_strides
    assert out.shape == aligned_shape(shape, target) == _expected_aligned_shape(shape, target)
    assert out.dtype == valid.dtype
    assert out.flags.c_contiguous
    strides = element_strides(out.shape)
    assert strides == tuple(int(np.prod(out.shape[i + 1:], dtype=np.int64)) for i in range(out.ndim))
    assert out.strides == tuple(s * out.itemsize for s in strides)
    assert not np.shares_memory(out, valid)

    # every element is either the valid value it maps to, or padding holding ``pad``
    pad_cast = np.array(pad, dtype=valid.dtype)
    if valid.ndim == 0:
        assert out == valid
    else:
        ids = np.indices(out.shape)
        if valid.ndim == 4:  # aligned (n, h, w, c) <- valid (n, c, h, w)
            n_i, h_i, w_i, c_i = ids
            inside = (w_i < shape[3]) & (c_i < shape[1])
            src = (n_i[inside], c_i[inside], h_i[inside], w_i[inside])
        else:
            inside = ids[-1] < shape[-1]
            src = tuple(i[inside] for i in ids)
        assert int(inside.sum()) == valid.size
        np.testing.assert_array_equal(out[inside], valid[src])
        assert (out[~inside] == pad_cast).all()
        assert int((~inside).sum()) == out.size - valid.size

    back = to_valid(out, shape)
    assert back.shape == shape and back.dtype == valid.dtype
    assert back.flags.c_contiguous
    np.testing.assert_array_equal(back, valid)
    # and the other way: re-aligning the recovered tensor gives the same buffer, bit for bit
    assert to_aligned(back, target, pad).tobytes() == out.tobytes()
    return out


@pytest.mark.parametrize("rank", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("target", PROFILES, ids=lambda t: t.name)
def test_round_trip_and_padding(target, rank):
    @LAYOUT
    @given(tensors(rank))
    def run(case):
        valid, pad = case
        _check_round_trip(valid, target, pad)

    run()


@pytest.mark.parametrize("target", PROFILES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 16, 2, 8), (1, 17, 3, 9), (1, 1, 1, 1), (1, 32, 4, 33)])
def test_4d_is_nhwc_with_c_and_w_padded(target, shape):
    n, c, h, w = shape
    valid = np.arange(np.prod(shape), dtype=np.int32).reshape(shape) - 50
    zp = -7
    out = _check_round_trip(valid, target, zp)
    assert aligned_layout(shape) == "NHWC"
    c_pad, w_pad = _round_up(c, target.c_align), _round_up(w, target.w_align)
    assert out.shape == (n, h, w_pad, c_pad)
    assert c_pad % target.c_align == 0 and c_pad - c < target.c_align
    assert w_pad % target.w_align == 0 and w_pad - w < target.w_align
    np.testing.assert_array_equal(out[:, :, :w, :c], valid.transpose(0, 2, 3, 1))
    assert (out[..., c:] == zp).all()
    assert (out[:, :, w:, :] == zp).all()
    np.testing.assert_array_equal(nchw_to_nhwc(valid), valid.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(nhwc_to_nchw(nchw_to_nhwc(valid)), valid)


def test_w_align_only_affects_4d():
    t = TARGETS["sim-a16w8"]
    assert t.w_align == 8
    assert aligned_shape((1, 3, 2, 5), t) == (1, 2, 8, 16)
    assert aligned_shape((3, 5), t) == (3, 16)  # rank 2: only the last dim, to c_align
    assert aligned_shape((2, 3, 5), t) == (2, 3, 16)
    assert aligned_shape((5,), t) == (16,)
    assert aligned_shape((), t) == ()


@pytest.mark.parametrize("name", ALL_TARGETS)
def test_already_aligned_shapes_have_no_padding(name):
    t = TARGETS[name]
    shape = (1, t.c_align, 2, t.w_align * 2)
    out = to_aligned(np.ones(shape, dtype=np.int8), t, 0)
    assert out.size == np.prod(shape)
    assert (out == 1).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 9), max_size=5))
@example([])
@example([0, 3])
def test_element_strides_are_c_order(shape):
    strides = element_strides(tuple(shape))
    assert len(strides) == len(shape)
    arr = np.empty(shape, dtype=np.int64)
    if arr.size:  # numpy reports arbitrary strides for empty arrays
        assert tuple(s * 8 for s in strides) == arr.strides
    for i in range(len(shape)):
        assert strides[i] == int(np.prod(shape[i + 1:], dtype=np.int64))


def test_aligned_layout_names():
    assert aligned_layout((1, 2, 3, 4)) == "NHWC"
    assert aligned_layout((5,)) == "C"
    assert aligned_layout(()) == "SCALAR"
    assert len(aligned_layout((2, 3))) == 2
    assert len(aligned_layout((2, 3, 4))) == 3


@pytest.mark.parametrize("name", ALL_TARGETS)
def test_target_proto_round_trip(name):
    t = TARGETS[name]
    assert targets.from_proto(t.to_proto()) == t
    assert targets.get_target(name) is t
    assert t.c_align >= 1 and t.w_align >= 1


def test_unknown_target_lists_known_ones():
    with pytest.raises((ValueError, SimulatorError), match="unknown target 'nope'.*sim-a16"):
        targets.get_target("nope")
