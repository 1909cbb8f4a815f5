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
    from qverify.client.sides import Observed
    from qverify.client.verdict import measure

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size != b.size:
        raise ValueError(f"{name}: shapes differ ({a.size} vs {b.size} elements)")
    m = measure(name, Observed(a), Observed(b), scale, digits)
    return TensorComparison(name, m["elements"], m["max_abs_diff"], digits, m["within_digits"], m["exact"],
                            m["off_by_one"], m["beyond_one"], m["cosine"])
