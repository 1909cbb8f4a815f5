"""Pad: constant, reflect, edge, wrap; negative pads crop."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.cpu._util import axis_of, ints_of, optional
from qverify.simulator.ops.registry import register_cpu

_NUMPY_MODE = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


@register_cpu("Pad")
def pad(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Pad: pads, constant_value, axes as inputs (opset 11+/18) or attributes (opset 2)."""
    x = np.asarray(inputs[0])
    mode = attrs.get("mode", "constant")
    if len(inputs) > 1:
        pads = ints_of(inputs[1])
        value = optional(inputs, 2)
        axes = ints_of(optional(inputs, 3))
    else:
        pads, value, axes = list(attrs["pads"]), attrs.get("value", 0.0), None
    axes = list(range(x.ndim)) if axes is None else [axis_of(a, x.ndim) for a in axes]
    begin, end = [0] * x.ndim, [0] * x.ndim
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[len(axes) + i]
    # Negative pads remove elements; crop first so numpy.pad only sees non-negative widths.
    crop = tuple(slice(-b if b < 0 else 0, x.shape[a] + e if e < 0 else None)
                 for a, (b, e) in enumerate(zip(begin, end)))
    x = x[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    if mode == "constant":
        fill = np.asarray(0 if value is None else value).reshape(-1)
        fill = fill[0] if fill.size else 0
        return [np.pad(x, widths, mode="constant", constant_values=np.asarray(fill, dtype=x.dtype))]
    return [np.pad(x, widths, mode=_NUMPY_MODE[mode])]
