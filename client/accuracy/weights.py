"""The weights' distributions of a quant.onnx (QDQ or QOperator) or a float model.

:func:`weight_distributions` summarises every Conv, ConvTranspose, Gemm and MatMul weight per
output channel with the same :class:`~qverify.client.accuracy.distributions.LayerDistribution`
as the activations, under the float node's name, and points out a per-tensor-quantized weight
whose channels span very different ranges and int8 codes that use little of their range
(see docs/distributions.md). Re-exported by :mod:`qverify.client.accuracy.distributions`.
"""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from qverify.client.accuracy.distributions import (
    CODE_USE_FLAG, DistributionCollector, LayerDistribution, _summarise,
)
from qverify.client.errors import EXIT_BAD_INPUT, Failure

__all__ = ["weight_distributions"]

# The weight input of each op, and the axis of its output channels (Gemm: by transB).
_WEIGHT_OPS = {"Conv": 0, "ConvTranspose": 1, "Gemm": None, "MatMul": -1,
               "QLinearConv": 0, "QLinearMatMul": -1, "QGemm": None}  # QOperator: weight, scale, zp at 3, 4, 5
_QOPERATOR = ("QLinearConv", "QLinearMatMul", "QGemm")


def _out_axis(node, op: str) -> int:
    if op in ("Gemm", "QGemm"):
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return _WEIGHT_OPS[op]


def _load(onnx_path: Path):
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise Failure(f"model '{path}' not found; give the path of a float or quantized ONNX model", EXIT_BAD_INPUT)
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse error is the same bad input
        raise Failure(f"'{path}' is not an ONNX model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                      "; give a float or quantized ONNX model", EXIT_BAD_INPUT) from None


def _weights(model) -> list[tuple[str, str, np.ndarray, np.ndarray | None, np.ndarray | None, int, int]]:
    """(layer, initializer, values, scale, zero point, scale axis, output-channel axis) per weight:
    float values with no scale, or int8 codes with their per-tensor or per-axis scale."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    array = {}

    def get(name: str) -> np.ndarray | None:
        if name not in inits:
            return None
        if name not in array:
            array[name] = numpy_helper.to_array(inits[name])
        return array[name]

    dequant = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    found, seen = [], set()
    for node in model.graph.node:
        op = node.op_type
        index = 3 if op in _QOPERATOR else 1
        if op not in _WEIGHT_OPS or len(node.input) <= index:
            continue
        source = node.input[index]
        # onnxruntime names a QOperator node after its float node plus "_quant": keep the float node's name.
        layer = (node.name[:-len("_quant")] if op in _QOPERATOR and node.name.endswith("_quant") else node.name) or source
        if op in _QOPERATOR:  # QOperator: codes, scale, zero point are the op's own inputs
            name, codes, scale, zp, axis = source, get(source), get(node.input[4]), get(node.input[5]), _out_axis(node, op)
        elif source in dequant:  # QDQ: the DequantizeLinear of an int8 initializer
            dq = dequant[source]
            name, codes, scale = dq.input[0], get(dq.input[0]), get(dq.input[1])
            zp = get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        else:  # a float model's weight
            name, codes, scale, zp, axis = source, get(source), None, None, 0
            if codes is None or codes.dtype.kind != "f":
                continue
        if codes is None or name in seen or codes.ndim < 1 or (scale is not None and codes.dtype.kind not in "iu"):
            continue
        seen.add(name)
        found.append((layer, name, codes, scale, zp, axis, _out_axis(node, op)))
    return found


_CACHE: OrderedDict[tuple[str, int, int], list[LayerDistribution]] = OrderedDict()
_CACHE_SIZE = 8
_GUARD = threading.Lock()
_KEY_LOCKS: dict[tuple[str, int, int], threading.Lock] = {}


def _fresh(dists: list[LayerDistribution]) -> list[LayerDistribution]:
    """Copies a caller may change without touching the cache (every list field copied; its items are immutable)."""
    return [dataclasses.replace(d, **{f.name: list(getattr(d, f.name)) for f in dataclasses.fields(d)
                                      if isinstance(getattr(d, f.name), list)}) for d in dists]


def weight_distributions(onnx_path: Path) -> list[LayerDistribution]:
    """Per-output-channel ranges of every weight of ``onnx_path`` (see :func:`_weight_distributions`).

    A function of the file's content, so computed once per file (keyed by path, size and
    modification time; a farm verifies the same model on many boards) and copied per call."""
    path = Path(onnx_path)
    try:
        st = path.stat()
    except OSError:
        return _weight_distributions(path)  # its one-line error
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _GUARD:
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:  # concurrent callers of one file wait for the first instead of computing it again
        with _GUARD:
            cached = _CACHE.get(key)
            if cached is not None:
                _CACHE.move_to_end(key)
        if cached is None:
            cached = _weight_distributions(path)
            with _GUARD:
                _CACHE[key] = cached
                while len(_CACHE) > _CACHE_SIZE:
                    old, _ = _CACHE.popitem(last=False)
                    _KEY_LOCKS.pop(old, None)
    return _fresh(cached)


def _weight_distributions(onnx_path: Path) -> list[LayerDistribution]:
    """Per-output-channel ranges of every Conv/ConvTranspose/Gemm/MatMul weight of a quant.onnx (QDQ or
    QOperator) or a float model, in graph order. Flags: a per-tensor-quantized (or float) weight whose
    channels span very different ranges (the per-channel candidate), and int8 codes using little of
    their range. Raises Failure (exit 2) for a file that is missing or not ONNX."""
    model = _load(onnx_path)
    out = []
    for layer, name, values, scale, zp, axis, out_axis in _weights(model):
        collector = DistributionCollector()
        per_channel = scale is not None and np.size(scale) > 1
        zp_arr = np.zeros_like(scale, dtype=np.int64) if scale is not None and zp is None else zp
        if scale is None:
            collector.add(layer, values, kind="weight", channel_axis=out_axis)
        elif not per_channel:
            collector.add(layer, values, scale=float(np.ravel(scale)[0]), zero_point=int(np.ravel(zp_arr)[0]),
                          kind="weight", channel_axis=out_axis)
        else:  # per-axis scales: dequantize along the scale axis, summarise as real values
            shape = [1] * values.ndim
            shape[axis] = -1
            real = (values.astype(np.float64) - np.reshape(zp_arr, shape)) * np.reshape(scale, shape)
            collector.add(layer, real, kind="weight", channel_axis=out_axis)
        quantized = "quantized per tensor" if scale is not None else "float"
        t = collector._tensors[layer]
        d = _summarise(t, remedy=f"{quantized}, a per-channel quantization candidate")
        d.tensor = name
        if per_channel:  # each channel has its own scale: spread costs nothing there
            d.flags = [f for f in d.flags if not f.startswith("channel ranges span")]
        if scale is not None:
            d.scale = float(np.ravel(scale)[0]) if not per_channel else None
            d.zero_point = int(np.ravel(zp_arr)[0]) if not per_channel else None
            shape = [1] * values.ndim
            shape[axis if per_channel else 0] = -1
            used = float(np.abs(values.astype(np.int64) - np.reshape(zp_arr, shape if per_channel else [1])).max())
            top = 127.0 if values.dtype.itemsize == 1 else float(np.iinfo(values.dtype).max)
            if used < CODE_USE_FLAG * top:
                d.flags.append(f"its int8 codes use only {used / top:.0%} of the range (largest |code| {used:.0f} of "
                               f"{top:.0f}): its scale is too coarse; recalibrate it or quantize it per channel")
        out.append(d)
    return out
