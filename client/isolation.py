"""Isolated per-layer verification: each layer of the board fed the reference's own tensors.

An entire run accumulates rounding drift: a deep layer of a healthy board can be many LSB
from quant.onnx, and a fault shows downstream of the layer that made it. In an isolated run
(Rockchip's ``per_layer`` mode, done on the board) every layer reads quant.onnx's int8
codes as onnxruntime computed them, so its output measures that layer alone and can be held
to its op's bound (docs/verdict.md):

* requantizing layers (Conv, Gemm, Add, Mul, pooling with rescale, ...): within 1 LSB, and
  at most a measured fraction of elements at 1 LSB;
* lookup tables: within 1 LSB of the table at the fed input;
* data movement (Reshape, Transpose, MaxPool, Slice, ...): exact;
* layers the board runs on its CPU in float: within 2 LSB.

How the board is asked (protocol 1.1): a board whose agent lists the capability
``isolate`` runs node groups on fed tensors itself (``RunRequest.isolate``). A layer whose
input the reference does not have (a tensor only the compiled program holds) is grouped
with the layer that writes it, so every group reads only what the reference computed.
Feeds go in several requests when they would exceed the agent's message limit.

This module plans the groups, builds the feeds and judges each layer; the board call is
made through :class:`~qverify.client.sides.BoardSide`.
"""
from __future__ import annotations

import math

import numpy as np

from qverify.client.results import IsolatedLayer
from qverify.simulator.program import Program

# Program ops that only move or select int8 codes: a correct board reproduces them exactly.
DATA_MOVEMENT = frozenset({"Reshape", "Transpose", "MaxPool", "Slice", "Split", "Pad", "Gather", "Flatten",
                           "Squeeze", "Unsqueeze", "Identity", "DepthToSpace", "SpaceToDepth"})
LOOKUP = frozenset({"Lut"})

# Fractions of a layer's elements a healthy board may have 1 LSB off, per op kind and
# rounding family, measured in isolation on the zoo's models (docs/verdict.md, "Isolation").
ONE_LSB_FRACTION = {
    "single": {"requantizing": 0.02, "add": 0.30, "lookup": 0.02, "cpu": 0.35},
    "double": {"requantizing": 0.25, "add": 0.30, "lookup": 0.15, "cpu": 0.35},
}
MAX_LSB = {"requantizing": 1, "add": 1, "lookup": 1, "cpu": 2, "exact": 0}


def op_kind(op: str, on_cpu: bool) -> str:
    """The bound family of a program node: exact, lookup, add, requantizing or cpu."""
    if on_cpu:
        return "cpu"
    if op in DATA_MOVEMENT:
        return "exact"
    if op in LOOKUP:
        return "lookup"
    if op in ("Add", "Sum"):
        return "add"  # rescales both inputs before adding: two roundings of its own
    return "requantizing"


def rounding_family(program: Program | None) -> str:
    """"single" or "double" requantization rounding; a board whose rounding is unknown gets the looser."""
    rounding = getattr(getattr(program, "target", None), "rounding", "") or ""
    return "single" if "single" in str(rounding) else "double"


def plan_groups(program: Program, available: set[str]) -> list[tuple[int, int]]:
    """Contiguous node ranges such that every tensor a range reads is fed, an input, a constant,
    or written inside the range. ``available``: program tensors the reference has."""
    have = set(available) | set(program.constants) | {t.name for t in program.inputs}
    writer = {name: index for index, node in enumerate(program.nodes) for name in node.outputs}
    groups: list[tuple[int, int]] = []
    for index, node in enumerate(program.nodes):
        start = index
        for name in node.inputs:
            if name and name not in have and name in writer:
                start = min(start, writer[name])
        while groups and groups[-1][1] >= start:  # merge every range the new one reaches back into
            start = min(start, groups.pop()[0])
        groups.append((start, index))
    return groups


def feeds_from(program: Program, reference: dict) -> dict[str, np.ndarray]:
    """The reference's tensors as the board holds them: int8 codes (logical layout), or float32."""
    feeds: dict[str, np.ndarray] = {}
    for name, observed in reference.items():
        tensor = program.tensors.get(name)
        if tensor is None:
            continue
        if tensor.quantized:
            if observed.codes is None:
                continue  # onnxruntime gave float values for an int8 tensor: not the codes to feed
            value = observed.codes
        else:
            value = observed.values.astype(tensor.dtype)
        if value.size != int(np.prod(tensor.shape, dtype=np.int64)):
            continue
        feeds[name] = np.ascontiguousarray(value.reshape(tensor.shape))
    return feeds


def batches(program: Program, groups: list[tuple[int, int]], feeds: dict[str, np.ndarray],
            max_bytes: int) -> list[tuple[list[tuple[int, int]], dict[str, np.ndarray]]]:
    """Split the groups into requests whose feeds stay under ``max_bytes`` (each group whole)."""
    out: list[tuple[list[tuple[int, int]], dict[str, np.ndarray]]] = []
    current: list[tuple[int, int]] = []
    current_feeds: dict[str, np.ndarray] = {}
    size = 0
    for start, end in groups:
        inside = {name for node in program.nodes[start:end + 1] for name in node.outputs}
        needed = {name for node in program.nodes[start:end + 1] for name in node.inputs
                  if name and name not in inside and name in feeds}
        extra = {name: feeds[name] for name in needed if name not in current_feeds}
        extra_bytes = sum(v.nbytes for v in extra.values())
        if current and size + extra_bytes > max_bytes:
            out.append((current, current_feeds))
            current, current_feeds, size = [], {}, 0
            extra = {name: feeds[name] for name in needed}
            extra_bytes = sum(v.nbytes for v in extra.values())
        current.append((start, end))
        current_feeds.update(extra)
        size += extra_bytes
    if current:
        out.append((current, current_feeds))
    return out


def allowed_one_lsb(elements: int, fraction: float) -> int:
    """Elements a healthy layer may have at 1 LSB: the measured fraction, plus three standard
    deviations of a binomial count and one element, so a 4-element tensor is not judged by 25 % steps."""
    mean = fraction * elements
    return int(mean + 3.0 * math.sqrt(mean * (1.0 - fraction)) + 1.0)


def judge_layer(layer: IsolatedLayer, family: str, layout_problem: str = "") -> None:
    """Hold a layer's isolated figures to its op kind's bound; sets passed, reason and bound."""
    limit = MAX_LSB[layer.kind]
    fraction = 0.0 if layer.kind == "exact" else ONE_LSB_FRACTION[family][layer.kind]
    allowed = allowed_one_lsb(layer.elements, fraction) if limit else 0
    layer.bound = ("exact" if limit == 0 else
                   f"<= {limit} LSB, at most {allowed} of {layer.elements} elements (~{fraction:.0%}) at 1 LSB")
    share = layer.off_by_one / layer.elements if layer.elements else 0.0
    figures = (f"max {layer.max_lsb} LSB, {layer.off_by_one} of {layer.elements} at 1 LSB ({share:.1%}), "
               f"{layer.beyond_one} beyond")
    if layout_problem:
        layer.passed, layer.reason = False, f"aligned buffer inconsistent: {layout_problem}"
    elif layer.max_lsb > limit:
        layer.passed, layer.reason = False, f"wrong in isolation ({figures}; bound {layer.bound})"
    elif limit and layer.off_by_one > allowed:
        layer.passed, layer.reason = False, f"wrong in isolation: too many elements 1 LSB off ({figures}; " \
                                            f"bound {layer.bound})"
    else:
        layer.passed, layer.reason = True, f"within its bound in isolation ({figures})"


def compare_codes(a: np.ndarray, b: np.ndarray, scale: float, zero_point: int) -> tuple[int, int, int, float, float]:
    """(off_by_one, beyond_one, max_lsb, bias, cosine) of board codes ``a`` vs reference codes ``b``."""
    d = np.subtract(a.ravel(), b.ravel(), dtype=np.int32)
    ad = np.abs(d)
    fa, fb = a.ravel().astype(np.float64) - zero_point, b.ravel().astype(np.float64) - zero_point
    na, nb = float(np.sqrt(fa @ fa)), float(np.sqrt(fb @ fb))
    cosine = float(np.clip(fa @ fb / (na * nb), -1, 1)) if na and nb else (1.0 if na == nb else 0.0)
    return (int(np.count_nonzero(ad == 1)), int(np.count_nonzero(ad > 1)), int(ad.max(initial=0)),
            float(d.mean()) if d.size else 0.0, cosine)


# A float tensor (between a CPU layer's dequantize and quantize) has no LSB: it agrees when
# within float32 rounding of the reference; anything else counts as beyond every bound.
FLOAT_RTOL, FLOAT_BEYOND = 1e-5, 3


def compare_values(a: np.ndarray, b: np.ndarray, scale: float) -> tuple[int, int, int, float, float]:
    """The same figures for float tensors (CPU layers), in units of ``scale`` when it is known."""
    unit = scale or 1.0
    d = (a.ravel().astype(np.float64) - b.ravel().astype(np.float64)) / unit
    if scale:
        lsb = np.rint(np.abs(d))
    else:
        tolerance = FLOAT_RTOL * (float(np.abs(b).max(initial=0.0)) + 1.0)
        lsb = np.where(np.abs(d) <= tolerance, 0, FLOAT_BEYOND)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = (float(np.clip(np.dot(a.ravel(), b.ravel()) / (na * nb), -1, 1)) if na and nb
              else (1.0 if na == nb else 0.0))
    return (int(np.count_nonzero(lsb == 1)), int(np.count_nonzero(lsb > 1)), int(lsb.max(initial=0)),
            float(d.mean()) if d.size else 0.0, cosine)


class IsolationJudge:
    """Accumulates isolated layers over frames (worst frame per layer) and names the first wrong one."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.family = rounding_family(program)
        self.layers: dict[str, IsolatedLayer] = {}
        self._order = {name: i for i, name in enumerate(
            [t.name for t in program.inputs] + [n for node in program.nodes for n in node.outputs])}
        self._writer = {name: node for node in program.nodes for name in node.outputs}

    def add_frame(self, isolated: dict, reference: dict, groups: list[tuple[int, int]]) -> None:
        """``isolated``: program name -> Observed from the board's isolated run; ``reference``: onnxruntime's."""
        group_of = {}
        for start, end in groups:
            label = "" if start == end else f"{self.program.nodes[start].name}..{self.program.nodes[end].name}"
            for node in self.program.nodes[start:end + 1]:
                for name in node.outputs:
                    group_of[name] = label
        for name, got in isolated.items():
            ref = reference.get(name)
            node = self._writer.get(name)
            tensor = self.program.tensors.get(name)
            if ref is None or node is None or tensor is None:
                continue
            layer = self.layers.get(name) or IsolatedLayer(
                name, node.name, node.op, node.onnx_op, op_kind(node.op, node.on_cpu), self._order.get(name, 0),
                group_of.get(name, ""))
            if tensor.quantized and got.codes is not None and ref.codes is not None:
                figures = compare_codes(got.codes, ref.codes, tensor.scale, tensor.zero_point)
            else:
                figures = compare_values(got.values, ref.values, tensor.scale if tensor.quantized else 0.0)
            off, beyond, max_lsb, bias, cosine = figures
            layer.elements = int(got.codes.size if got.codes is not None else got.values.size)
            worse = (max_lsb, off) > (layer.max_lsb, layer.off_by_one)
            if worse or name not in self.layers:
                layer.off_by_one, layer.beyond_one, layer.max_lsb, layer.bias = off, beyond, max_lsb, bias
            layer.cosine = min(layer.cosine, cosine)
            failed_before = None if layer.passed else layer.reason
            judge_layer(layer, self.family, got.layout_problem)
            if failed_before is not None and layer.passed:  # a frame that failed keeps the layer failed
                layer.passed, layer.reason = False, failed_before
            self.layers[name] = layer

    @property
    def ordered(self) -> list[IsolatedLayer]:
        return sorted(self.layers.values(), key=lambda layer: layer.index)

    @property
    def first_wrong(self) -> IsolatedLayer | None:
        return next((layer for layer in self.ordered if not layer.passed), None)


# ----------------------------------------------------------------------------- without the capability

FED_SUFFIX = "@fed"


def rewire(proto, groups: list[tuple[int, int]], fed: set[str]):
    """A copy of the program where every group reads the tensors it does not compute from new
    program inputs ``<name>@fed``: one program, pushed and run whole, that is the isolated run.

    For a board whose agent cannot isolate (no "isolate" capability): it runs any program,
    so it runs this one. ``fed``: the tensors the reference provides. Program inputs the
    reference does not provide stay inputs (fed from the frame, e.g. an image that the
    program preprocesses itself); constants stay constants. Returns (program, names of the
    new inputs in order).
    """
    from qverify.v1 import model_pb2

    out = model_pb2.Program()
    out.CopyFrom(proto)
    constants = {c.name for c in proto.constants}
    infos = {t.name: t for t in proto.tensors}
    original_inputs = list(proto.inputs)
    added: list[str] = []
    for start, end in groups:
        inside: set[str] = set()
        for node in out.nodes[start:end + 1]:
            for i, name in enumerate(node.inputs):
                if not name or name in inside or name in constants:
                    continue
                if name in original_inputs and name not in fed:
                    continue  # the frame's own input (an image the program preprocesses)
                node.inputs[i] = name + FED_SUFFIX
                if name + FED_SUFFIX not in added:
                    added.append(name + FED_SUFFIX)
            inside.update(node.outputs)
    used = {name for node in out.nodes for name in node.inputs}
    kept = [name for name in original_inputs if name in used]
    del out.inputs[:]
    out.inputs.extend(kept + added)
    keep_onnx = [onnx for name, onnx in zip(original_inputs, proto.onnx_inputs) if name in used]
    del out.onnx_inputs[:]
    out.onnx_inputs.extend(keep_onnx + [""] * len(added))
    kept_pre = [p for p in proto.preprocess if p.input in kept]
    del out.preprocess[:]
    out.preprocess.extend(kept_pre)
    for name in added:
        info = out.tensors.add()
        info.CopyFrom(infos[name[:-len(FED_SUFFIX)]])
        info.name = name
    return out, added


def feed_layout(array: np.ndarray, quantized: bool) -> np.ndarray:
    """A logical tensor as a program input takes it: 4-D int8 tensors are NHWC (``feed_shape``)."""
    if quantized and array.ndim == 4:
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1))
    return array
