"""Activations with attributes or extra inputs: Clip, LeakyRelu, Elu, Gelu, PRelu and kin."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.cpu._util import optional
from qverify.simulator.ops.cpu.erf import erf64
from qverify.simulator.ops.registry import register_cpu

_F = np.float32


def _x(inputs: list) -> np.ndarray:
    return np.asarray(inputs[0], dtype=np.float32)


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow for large x."""
    return (np.maximum(x, _F(0)) + np.log1p(np.exp(-np.abs(x)))).astype(np.float32)


@register_cpu("Clip")
def clip(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Clip: bounds from inputs 1, 2 (opset 11+) or attributes min, max (older)."""
    x = np.asarray(inputs[0])
    lo, hi = optional(inputs, 1), optional(inputs, 2)
    lo = attrs.get("min") if lo is None else lo
    hi = attrs.get("max") if hi is None else hi
    if lo is not None:
        x = np.maximum(x, np.asarray(lo, dtype=x.dtype))
    if hi is not None:
        x = np.minimum(x, np.asarray(hi, dtype=x.dtype))
    return [np.array(x)]


@register_cpu("LeakyRelu")
def leaky_relu(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """x if x >= 0 else alpha * x (alpha 0.01)."""
    x = _x(inputs)
    return [np.where(x >= 0, x, _F(attrs.get("alpha", 0.01)) * x)]


@register_cpu("PRelu")
def prelu(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """x if x >= 0 else slope * x, slope broadcast to x."""
    x = _x(inputs)
    return [np.where(x >= 0, x, np.asarray(inputs[1], dtype=np.float32) * x)]


@register_cpu("Elu")
def elu(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """x if x >= 0 else alpha * (exp(x) - 1) (alpha 1)."""
    x = _x(inputs)
    neg = _F(attrs.get("alpha", 1.0)) * (np.exp(np.minimum(x, _F(0))) - _F(1))
    return [np.where(x >= 0, x, neg)]


@register_cpu("Celu")
def celu(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) (alpha 1)."""
    x, alpha = _x(inputs), _F(attrs.get("alpha", 1.0))
    neg = alpha * (np.exp(np.minimum(x, _F(0)) / alpha) - _F(1))
    return [np.where(x >= 0, x, neg)]


@register_cpu("Selu")
def selu(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """gamma * (x if x > 0 else alpha * exp(x) - alpha)."""
    x = _x(inputs)
    alpha = _F(attrs.get("alpha", 1.67326319217681884765625))
    gamma = _F(attrs.get("gamma", 1.05070102214813232421875))
    neg = alpha * np.exp(np.minimum(x, _F(0))) - alpha
    return [gamma * np.where(x > 0, x, neg)]


@register_cpu("ThresholdedRelu")
def thresholded_relu(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """x if x > alpha else 0 (alpha 1)."""
    x = _x(inputs)
    return [np.where(x > _F(attrs.get("alpha", 1.0)), x, _F(0))]


@register_cpu("HardSigmoid")
def hard_sigmoid(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """clip(alpha * x + beta, 0, 1) (alpha 0.2, beta 0.5)."""
    x = _x(inputs)
    y = _F(attrs.get("alpha", 0.2)) * x + _F(attrs.get("beta", 0.5))
    return [np.clip(y, _F(0), _F(1))]


@register_cpu("HardSwish")
def hard_swish(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """x * clip(x / 6 + 1 / 2, 0, 1)."""
    x = _x(inputs)
    return [x * np.clip(x * _F(1 / 6) + _F(0.5), _F(0), _F(1))]


@register_cpu("Softplus")
def softplus(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """log(1 + exp(x))."""
    return [_softplus(_x(inputs))]


@register_cpu("Softsign")
def softsign(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """x / (1 + |x|)."""
    x = _x(inputs)
    return [x / (_F(1) + np.abs(x))]


@register_cpu("Mish")
def mish(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """x * tanh(softplus(x))."""
    x = _x(inputs)
    return [x * np.tanh(_softplus(x))]


@register_cpu("Gelu")
def gelu(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation when approximate="tanh"."""
    x = _x(inputs)
    if attrs.get("approximate", "none") == "tanh":
        inner = _F(np.sqrt(2 / np.pi)) * (x + _F(0.044715) * x * x * x)
        return [_F(0.5) * x * (_F(1) + np.tanh(inner))]
    e = erf64(x.astype(np.float64) / np.sqrt(2.0))
    return [(0.5 * x * (1.0 + e)).astype(np.float32)]
