"""Comparison of two tensors: N-decimal-digit agreement and the integer (LSB) view."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TensorComparison:
    name: str
    elements: int
    max_abs_diff: float
    digits: int  # requested decimal digits
    within_digits: int  # elements with |a - b| <= 10^-digits
    exact: int  # integer view, in units of the tensor's scale
    off_by_one: int
    beyond_one: int
    cosine: float

    @property
    def consistent(self) -> bool:
        return self.within_digits == self.elements

    @property
    def exact_fraction(self) -> float:
        return self.exact / self.elements if self.elements else 1.0


def compare(name: str, a: np.ndarray, b: np.ndarray, scale: float | None, digits: int = 5) -> TensorComparison:
    """Compare float tensors ``a`` and ``b`` (same shape); ``scale`` gives the LSB for the integer view."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ ({a.size} vs {b.size} elements)")
    diff = np.abs(a - b)
    tol = 10.0 ** (-digits)
    if scale:
        lsb = np.rint(diff / scale)
    else:
        lsb = np.where(diff == 0, 0, 2)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(a @ b / denom) if denom else float(np.array_equal(a, b))
    return TensorComparison(name, a.size, float(diff.max(initial=0.0)), digits,
                            int(np.count_nonzero(diff <= tol + 1e-12)), int(np.count_nonzero(lsb == 0)),
                            int(np.count_nonzero(lsb == 1)), int(np.count_nonzero(lsb > 1)), cosine)
