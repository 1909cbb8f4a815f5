"""The conv accumulation paths (im2col GEMM, depthwise on flattened rows and phase planes)
against a plain int64 reference, over strides, dilations, kernel sizes, groups and pads."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qverify.simulator.ops.conv import conv_accumulate, padded_centered


def reference_conv(xc: np.ndarray, w: np.ndarray, group: int, stride: tuple[int, int],
                   dilation: tuple[int, int]) -> np.ndarray:
    n, c, h, wd = xc.shape
    oc, icg, kh, kw = w.shape
    oh = (h - ((kh - 1) * dilation[0] + 1)) // stride[0] + 1
    ow = (wd - ((kw - 1) * dilation[1] + 1)) // stride[1] + 1
    out = np.zeros((n, oc, oh, ow), dtype=np.int64)
    x64, w64 = xc.astype(np.int64), w.astype(np.int64)
    ocg = oc // group
    for o in range(oc):
        g = o // ocg
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (oh - 1) + 1, stride[0])
                cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (ow - 1) + 1, stride[1])
                patch = x64[:, g * icg:(g + 1) * icg, rows, cols]
                out[:, o] += np.einsum("nchw,c->nhw", patch, w64[o, :, i, j])
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_conv_accumulate_equals_the_int64_reference(data):
    kind = data.draw(st.sampled_from(["dense", "depthwise", "grouped"]))
    c = data.draw(st.integers(1, 6)) * (2 if kind == "grouped" else 1)
    group = {"dense": 1, "depthwise": c, "grouped": 2}[kind]
    oc = c if kind == "depthwise" else data.draw(st.integers(1, 5)) * group
    kh, kw = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    s = data.draw(st.integers(1, 3))
    d = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    pads = tuple(data.draw(st.integers(0, 2)) for _ in range(4))
    h = data.draw(st.integers(max(1, (kh - 1) * d[0] + 1 - pads[0] - pads[2]), 12))
    wd = data.draw(st.integers(max(1, (kw - 1) * d[1] + 1 - pads[1] - pads[3]), 12))
    zp = data.draw(st.integers(-128, 127))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(-128, 128, (1, c, h, wd), dtype=np.int8)
    w = rng.integers(-128, 128, (oc, c // group, kh, kw), dtype=np.int8)
    spare = s + 1 if data.draw(st.booleans()) else 0  # without spare rows: the generic path
    xc = padded_centered(x, zp, pads, spare)
    got = conv_accumulate(xc, w, group, (s, s), d, acc_dtype=np.float64, spare_rows=spare)
    want = reference_conv(xc[:, :, :xc.shape[2] - spare], w, group, (s, s), d)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.astype(np.int64), want)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_depthwise_worst_case_magnitudes_stay_exact(stride):
    """Every input at -255 (centred) and every weight at -128: the largest sums a 5x5 tap can make."""
    c, h = 4, 11
    x = np.full((1, c, h, h), -128, dtype=np.int8)
    w = np.full((c, 1, 5, 5), -128, dtype=np.int8)
    xc = padded_centered(x, 127, (2, 2, 2, 2), stride + 1)
    got = conv_accumulate(xc, w, c, (stride, stride), (1, 1), acc_dtype=np.float32, spare_rows=stride + 1)
    want = reference_conv(xc[:, :, :-(stride + 1)], w, c, (stride, stride), (1, 1))
    np.testing.assert_array_equal(got.astype(np.int64), want)
    assert want.max() == 25 * 255 * 128
