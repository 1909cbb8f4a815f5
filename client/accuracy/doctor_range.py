"""What the doctor knows of a model input, and the range check.

The calibrated range of an input is implied by the QuantizeLinear that quantizes it (QDQ:
the one right after the graph input; QOperator: the first one, which also reads it): its
scale and zero point span ``scale * (qmin - zp) .. scale * (qmax - zp)``. Calibration saw
that range, so a pipeline whose values span something else is fed differently from
calibration and, most often, from training. Each common mistake maps the correct range to
a predictable other one; the nearest explanation names the mistake.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ModelInput:
    """One ONNX input as the doctor sees it."""
    name: str
    shape: tuple[int | None, ...]  # None: dynamic
    lo: float | None = None  # calibrated range (None when no QuantizeLinear reads the input)
    hi: float | None = None

    @property
    def image_like(self) -> bool:
        """A 4-D NCHW input with 1 or 3 channels and static H, W."""
        s = self.shape
        return len(s) == 4 and s[1] in (1, 3) and s[2] is not None and s[3] is not None

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.shape[2]), int(self.shape[3])


def _constant(graph, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def model_inputs(model) -> list[ModelInput]:
    """The graph inputs of a (quantized) ONNX model, each with its calibrated range."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    out = []
    for arg in graph.input:
        if arg.name in initializers:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in arg.type.tensor_type.shape.dim)
        port = ModelInput(arg.name, dims)
        q = next((n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == arg.name), None)
        if q is not None and len(q.input) >= 2:
            scale = _constant(graph, q.input[1])
            zp = _constant(graph, q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
            if scale is not None and zp is not None and scale.size == 1 and zp.size == 1:
                info = np.iinfo(zp.dtype)
                s, z = float(scale.reshape(())), int(zp.reshape(()))
                port.lo, port.hi = s * (info.min - z), s * (info.max - z)
        out.append(port)
    return out


@dataclass
class Explanation:
    key: str
    span: tuple[float, float]  # the range the mistake produces
    what: str  # the mistake, in words
    fix: str


def explanations(lo: float, hi: float) -> list[Explanation]:
    """The correct range and the ranges the common mistakes turn it into.

    The correct pipeline is taken as ``(u - m) / s`` on pixels ``u`` in 0..1 with one mean
    and std implied by the range (``s = 1 / (hi - lo)``, ``m = -lo * s``); per-channel means
    and stds move the range by little, which the distance tolerates."""
    s = 1.0 / (hi - lo)
    m = -lo * s
    norm = f"normalize as in training, e.g. (p/255 - {m:.3g})/{s:.3g} (the mean and std the calibrated range implies)"
    return [
        Explanation("ok", (lo, hi), "", ""),
        Explanation("raw", (0.0, 255.0), "raw 0-255 pixels: neither the 0-1 scaling nor mean/std is applied", norm),
        Explanation("unit", (0.0, 1.0), "the 0-255 -> 0-1 scaling is applied, mean/std missing", norm),
        Explanation("offset", (-128.0, 127.0), "pixels shifted by -128 (an int8-style offset) instead of "
                    "normalized", f"drop the -128 offset and {norm}"),
        Explanation("twice", ((lo - m) / s, (hi - m) / s), "mean/std applied twice",
                    "apply (x - mean)/std once"),
        Explanation("tiny", (lo, lo + (hi - lo) / 255.0), "mean/std in 0-255 units applied to 0-1 pixels (or "
                    "mean/std applied twice in 0-255 units)", "use mean/std in the units of the pixels: "
                    f"(p - {m * 255:.4g})/{s * 255:.4g} on 0-255 pixels, or (p/255 - {m:.3g})/{s:.3g}"),
        Explanation("wide", (lo, lo + 255.0 * (hi - lo)), "mean/std in 0-1 units applied to 0-255 pixels "
                    "(the /255 scaling is missing)", f"divide the pixels by 255 first: (p/255 - {m:.3g})/{s:.3g}"),
    ]


def _distance(observed: tuple[float, float], span: tuple[float, float]) -> float:
    width = max(span[1] - span[0], 1e-6)
    return (abs(observed[0] - span[0]) + abs(observed[1] - span[1])) / width


def range_problem(values: np.ndarray, lo: float, hi: float) -> tuple[str, str] | None:
    """(evidence and mistake, fix) when ``values`` do not span the calibrated range, else None.

    A finding needs both: the values are clearly off the calibrated range, and one mistake
    explains them much better, or a sizeable share of them lies outside it (saturation)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    observed = (float(np.percentile(v, 0.1)), float(np.percentile(v, 99.9)))
    cands = explanations(lo, hi)
    scored = sorted(((_distance(observed, c.span), c) for c in cands), key=lambda t: t[0])
    d_ok = _distance(observed, (lo, hi))
    best_d, best = scored[0]
    head = f"values span {observed[0]:.2f}..{observed[1]:.2f} but the model was calibrated for {lo:.2f}..{hi:.2f}"
    if best.key != "ok" and d_ok > 0.25 and best_d < 0.15 and best_d < 0.5 * d_ok:
        return f"{head}: {best.what}", best.fix
    margin = 0.02 * (hi - lo)
    outside = float(np.mean((v < lo - margin) | (v > hi + margin)))
    if outside > 0.01:
        return (f"{head}: {outside:.0%} of the values lie outside it and saturate",
                "feed values normalized as at calibration, or recalibrate with inputs from this pipeline")
    return None
