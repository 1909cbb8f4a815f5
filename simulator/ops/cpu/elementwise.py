"""One-liner elementwise ops (unary, binary, comparisons, logic, Where) from small tables."""
from __future__ import annotations

from typing import Callable

import numpy as np

from qverify.simulator.ops.registry import register_cpu


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow: exp is only taken of non-positive values."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0) in the input dtype."""
    return np.maximum(x, np.zeros((), dtype=x.dtype))


def _reciprocal(x: np.ndarray) -> np.ndarray:
    """1 / x in the input dtype."""
    return (np.ones((), dtype=x.dtype) / x).astype(x.dtype, copy=False)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Division; integers truncate toward zero like C++ (numpy's // floors)."""
    if a.dtype.kind in "iu":
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) != (b < 0), -q, q).astype(a.dtype, copy=False)
    return a / b


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Power with the base's dtype (the exponent may be of another type)."""
    if a.dtype.kind == "f":
        return np.power(a, b.astype(a.dtype, copy=False))
    return np.power(a.astype(np.float64), b).astype(a.dtype)


UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Abs": np.abs, "Ceil": np.ceil, "Cos": np.cos, "Exp": np.exp, "Floor": np.floor,
    "Log": np.log, "Neg": np.negative, "Not": np.logical_not, "Reciprocal": _reciprocal,
    "Relu": _relu, "Round": np.round, "Sigmoid": _sigmoid, "Sign": np.sign, "Sin": np.sin,
    "Sqrt": np.sqrt, "Tan": np.tan, "Tanh": np.tanh, "Atan": np.arctan,
    "IsNaN": np.isnan,
}

BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div, "Pow": _pow,
    "Equal": np.equal, "Greater": np.greater, "GreaterOrEqual": np.greater_equal,
    "Less": np.less, "LessOrEqual": np.less_equal,
    "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
}


def _unary(name: str, fn: Callable) -> Callable:
    def kernel(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
        x = np.asarray(inputs[0])
        # Out-of-domain values give nan/inf silently, as in onnxruntime.
        with np.errstate(all="ignore"):
            return [np.asarray(fn(x))]
    kernel.__doc__ = f"ONNX {name}, elementwise."
    kernel.__name__ = name.lower()
    return kernel


def _binary(name: str, fn: Callable) -> Callable:
    def kernel(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
        a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
        with np.errstate(all="ignore"):
            return [np.asarray(fn(a, b))]
    kernel.__doc__ = f"ONNX {name}, elementwise with numpy (multidirectional) broadcasting."
    kernel.__name__ = name.lower()
    return kernel


for _name, _fn in UNARY.items():
    register_cpu(_name)(_unary(_name, _fn))
for _name, _fn in BINARY.items():
    register_cpu(_name)(_binary(_name, _fn))


@register_cpu("Mod")
def mod(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Mod: fmod=1 keeps the dividend's sign (C fmod), fmod=0 the divisor's (Python %)."""
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    with np.errstate(all="ignore"):
        return [np.fmod(a, b) if attrs.get("fmod", 0) else np.mod(a, b)]


@register_cpu("Where")
def where(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Where: pick X where the condition holds, else Y (broadcasting all three)."""
    cond, x, y = (np.asarray(v) for v in inputs[:3])
    return [np.where(cond.astype(bool), x, y).astype(np.result_type(x, y), copy=False)]
