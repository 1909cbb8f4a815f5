"""GlobalAveragePool and GlobalMaxPool: reduce every spatial axis, keeping it as size 1."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.registry import register_cpu


@register_cpu("GlobalAveragePool")
def global_average_pool(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """Mean over axes 2.. of (N, C, *spatial)."""
    x = np.asarray(inputs[0], dtype=np.float32)
    return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float32)]


@register_cpu("GlobalMaxPool")
def global_max_pool(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """Max over axes 2.. of (N, C, *spatial)."""
    x = np.asarray(inputs[0])
    return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]
