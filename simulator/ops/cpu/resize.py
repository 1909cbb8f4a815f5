"""Resize (opset 10-19) and Upsample: separable nearest/linear/cubic, onnxruntime's float32 coordinates."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.cpu._util import axis_of, optional
from qverify.simulator.ops.registry import register_cpu

_F = np.float32


def _original(mode: str, x: np.ndarray, scale: np.float32, out_len: int, in_len: int,
              roi: tuple[float, float]) -> np.ndarray:
    """Input coordinate of every output index ``x`` (float32, in the order onnxruntime computes)."""
    half = _F(0.5)
    if mode == "half_pixel":
        return (x + half) / scale - half
    if mode == "half_pixel_symmetric":
        adjustment = _F(out_len) / (scale * _F(in_len))
        offset = _F(in_len) / _F(2) * (_F(1) - adjustment)
        return offset + (x + half) / scale - half
    if mode == "asymmetric":
        return x / scale
    if mode == "pytorch_half_pixel":
        return (x + half) / scale - half if out_len > 1 else np.zeros_like(x)
    if mode in ("tf_half_pixel_for_nn", "tf_half_pixel_for_nearest"):  # the spec's name, and a common alias
        return (x + half) / scale
    if mode == "align_corners":
        return x * _F(in_len - 1) / _F(out_len - 1) if out_len > 1 else np.zeros_like(x)
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out_len > 1:
            return (start * (in_len - 1) + x.astype(np.float64) * (end - start) * (in_len - 1)
                    / (out_len - 1)).astype(np.float32)
        return np.full_like(x, 0.5 * (start + end) * (in_len - 1))
    raise ValueError(f"unsupported coordinate_transformation_mode {mode!r}")


def _nearest(coords: np.ndarray, how: str, downsample: bool) -> np.ndarray:
    """Nearest input index per onnxruntime's nearest_mode (``simple`` for opset < 11)."""
    away = np.trunc(coords + np.copysign(_F(0.5), coords))  # C++ std::round: ties away from 0
    if how == "round_prefer_floor":
        tie = coords == np.trunc(coords) + _F(0.5)
        return np.where(tie, np.floor(coords), away)
    if how == "round_prefer_ceil":
        return away
    if how == "floor":
        return np.floor(coords)
    if how == "ceil":
        return np.ceil(coords)
    if how == "simple":
        return np.ceil(coords) if downsample else np.trunc(coords)
    raise ValueError(f"unsupported nearest_mode {how!r}")


def _cubic_weights(s: np.ndarray, a: float) -> np.ndarray:
    """Keys cubic weights (len(s), 4) for taps -1, 0, 1, 2 around floor(coordinate)."""
    d = np.stack([s + 1, s, 1 - s, 2 - s], axis=1).astype(np.float64)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far).astype(np.float32)


def _resample(x: np.ndarray, axis: int, coords: np.ndarray, attrs: dict, scale: np.float32) -> np.ndarray:
    """Interpolate ``x`` along ``axis`` at the float32 input coordinates ``coords``."""
    n = x.shape[axis]
    mode = attrs.get("mode", "nearest")
    shape = [1] * x.ndim
    shape[axis] = len(coords)
    if mode == "nearest":
        how = attrs.get("nearest_mode", "round_prefer_floor")
        index = np.clip(_nearest(coords, how, scale < 1), 0, n - 1).astype(np.intp)
        return np.take(x, index, axis=axis)
    if mode == "linear":
        c = np.clip(coords, _F(0), _F(n - 1))
        lo = np.minimum(c.astype(np.intp), n - 1)
        hi = np.minimum(lo + 1, n - 1)
        w_hi = np.abs(c - lo.astype(np.float32))
        w_lo = np.abs(c - hi.astype(np.float32))
        same = lo == hi  # onnxruntime splits 50/50 when both taps are the edge pixel
        w_lo, w_hi = np.where(same, _F(0.5), w_lo), np.where(same, _F(0.5), w_hi)
        return (np.take(x, lo, axis=axis) * w_lo.reshape(shape)
                + np.take(x, hi, axis=axis) * w_hi.reshape(shape))
    if mode == "cubic":
        base = np.floor(coords)
        weights = _cubic_weights(coords - base, float(attrs.get("cubic_coeff_a", -0.75)))
        taps = base.astype(np.intp)[:, None] + np.arange(-1, 3)
        if attrs.get("exclude_outside", 0):
            weights = np.where((taps >= 0) & (taps < n), weights, _F(0))
            weights = weights / weights.sum(axis=1, keepdims=True)
        taps = np.clip(taps, 0, n - 1)
        y = sum(np.take(x, taps[:, k], axis=axis) * weights[:, k].reshape(shape) for k in range(4))
        return y.astype(np.float32)
    raise ValueError(f"unsupported Resize mode {mode!r}")


def resize_nd(x: np.ndarray, scales: list[float] | None, sizes: list[int] | None,
              roi: list[float] | None, attrs: dict) -> np.ndarray:
    """Resize ``x`` to ``sizes`` or by ``scales`` (full-rank lists); see the ONNX Resize spec."""
    rank = x.ndim
    if attrs.get("antialias", 0):
        raise NotImplementedError("Resize antialias=1 is not supported on the CPU path")
    if sizes is not None:
        ratios = [_F(o) / _F(i) for o, i in zip(sizes, x.shape)]
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            axes = [a for a in range(rank) if sizes[a] != x.shape[a] or ratios[a] != 1]
            pick = min if policy == "not_larger" else max
            common = pick(ratios[a] for a in axes) if axes else _F(1)
            ratios = [common if a in axes else _F(1) for a in range(rank)]
            sizes = [int(np.floor(r * _F(i) + _F(0.5))) for r, i in zip(ratios, x.shape)]
        out_shape, scales32 = list(sizes), ratios
    else:
        scales32 = [_F(s) for s in scales]
        out_shape = [int(np.floor(s * _F(i))) for s, i in zip(scales32, x.shape)]
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    roi = list(roi) if roi is not None and len(roi) else [0.0] * rank + [1.0] * rank
    extrapolate = ctm == "tf_crop_and_resize"
    y = np.asarray(x, dtype=np.float32) if attrs.get("mode", "nearest") != "nearest" else x
    outside = np.zeros(out_shape, dtype=bool)
    for axis in range(rank):
        if scales32[axis] == 1:
            continue  # onnxruntime copies scale-1 axes as they are, ignoring roi (tf_crop_and_resize)
        index = np.arange(out_shape[axis], dtype=np.float32)
        coords = _original(ctm, index, scales32[axis], out_shape[axis], x.shape[axis],
                           (roi[axis], roi[rank + axis])).astype(np.float32)
        if extrapolate:
            shape = [1] * rank
            shape[axis] = out_shape[axis]
            bad = (coords < 0) | (coords > x.shape[axis] - 1)
            outside = outside | bad.reshape(shape)
        y = _resample(y, axis, coords, attrs, scales32[axis])
    if extrapolate and outside.any():
        y = np.where(outside, np.asarray(attrs.get("extrapolation_value", 0.0), dtype=y.dtype), y)
    return np.ascontiguousarray(y)


def _full_rank(values: list, attrs: dict, fill: list) -> list:
    """Expand per-``axes`` scales/sizes/roi halves (opset 18) to every axis, else ``fill``."""
    axes = attrs.get("axes")
    rank = len(fill)
    if not axes or len(values) == rank:
        return values
    full = list(fill)
    for a, v in zip(axes, values):
        full[axis_of(a, rank)] = v
    return full


@register_cpu("Resize")
def resize(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Resize: X, roi, scales, sizes (opset 11+) or X, scales (opset 10)."""
    x = np.asarray(inputs[0])
    if len(inputs) == 2 or int(attrs.get("_opset", 11)) < 11:
        legacy = dict(attrs, coordinate_transformation_mode="asymmetric", nearest_mode="simple")
        return [resize_nd(x, [float(s) for s in inputs[-1]], None, None, legacy)]
    roi, scales, sizes = optional(inputs, 1), optional(inputs, 2), optional(inputs, 3)
    rank = x.ndim
    roi_list = None
    if roi is not None and roi.size:
        half = roi.size // 2
        roi_list = (_full_rank([float(v) for v in roi[:half]], attrs, [0.0] * rank)
                    + _full_rank([float(v) for v in roi[half:]], attrs, [1.0] * rank))
    if sizes is not None and sizes.size:
        full = _full_rank([int(v) for v in sizes], attrs, list(x.shape))
        return [resize_nd(x, None, full, roi_list, attrs)]
    full = _full_rank([float(v) for v in scales], attrs, [1.0] * rank)
    return [resize_nd(x, full, None, roi_list, attrs)]


@register_cpu("Upsample")
def upsample(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Upsample (deprecated): scales as input 1 (opset 9) or attribute (opset 7)."""
    scales = optional(inputs, 1)
    scales = [float(s) for s in (attrs["scales"] if scales is None else scales)]
    legacy = dict(attrs, coordinate_transformation_mode="asymmetric", nearest_mode="simple")
    return [resize_nd(np.asarray(inputs[0]), scales, None, None, legacy)]
