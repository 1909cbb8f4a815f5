"""Normalizations at inference: BatchNormalization, InstanceNormalization, LayerNormalization."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.cpu._util import axis_of, optional
from qverify.simulator.ops.registry import register_cpu

_F = np.float32


def _per_channel(v: np.ndarray, rank: int) -> np.ndarray:
    """Reshape a (C,) vector to broadcast over (N, C, *spatial)."""
    return np.asarray(v, dtype=np.float32).reshape((1, -1) + (1,) * (rank - 2))


@register_cpu("BatchNormalization")
def batch_normalization(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """Inference BatchNormalization, folded to x * a + b as onnxruntime does."""
    x = np.asarray(inputs[0], dtype=np.float32)
    scale, bias, mean, var = (_per_channel(v, max(x.ndim, 2)) for v in inputs[1:5])
    a = scale / np.sqrt(var + _F(attrs.get("epsilon", 1e-5)))
    b = bias - mean * a
    return [(x * a + b).astype(np.float32)]


@register_cpu("InstanceNormalization")
def instance_normalization(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """Normalize each (n, c) plane over its spatial axes, then scale and shift per channel."""
    x = np.asarray(inputs[0], dtype=np.float32)
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float32)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True, dtype=np.float32)
    scale = _per_channel(inputs[1], x.ndim) / np.sqrt(var + _F(attrs.get("epsilon", 1e-5)))
    return [(centered * scale + _per_channel(inputs[2], x.ndim)).astype(np.float32)]


@register_cpu("LayerNormalization")
def layer_normalization(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX LayerNormalization over axes [axis, rank); returns Y, Mean, InvStdDev."""
    x = np.asarray(inputs[0], dtype=np.float32)
    axis = axis_of(int(attrs.get("axis", -1)), x.ndim)
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float32)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True, dtype=np.float32)
    inv_std = _F(1) / np.sqrt(var + _F(attrs.get("epsilon", 1e-5)))
    y = centered * inv_std * np.asarray(inputs[1], dtype=np.float32)
    bias = optional(inputs, 2)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float32)
    return [y.astype(np.float32), mean, inv_std]
