"""ONNX's float node tests of the integer-path ops, quantized, on the simulator vs onnxruntime.

Each case (float32 activation, static non-empty shapes; Resize: nearest and linear) is
quantized with ``onnxruntime.quantization.quantize_static`` (QDQ, QUInt8 activations, QInt8
weights, MinMax calibration on the case's own inputs, ``op_types_to_quantize=[op]``,
``ForceQuantizeNoInputCheck``; every input but the activation(s) is made an initializer
first so weights are quantized as weights), compiled, run on the simulator and compared
with onnxruntime (CPU provider) running the same quantized model: every output element
must be within 1 LSB (in units of the output scale). Variants: per_tensor weights for
every case, per_channel for Conv/ConvTranspose/Gemm/2-D MatMul, two_activations for MatMul.
A few Conv/ConvTranspose geometries the onnx suite lacks are added (``qv_*``).

onnxruntime's default session fuses QDQ into QLinear*/QGemm kernels. When that session
cannot load the model, its unoptimized run (the QDQ graph as written) is the reference.
When the simulator is off by more than 1 LSB from the optimized session but within 1 LSB
of the unoptimized one, and the two onnxruntime runs differ by more than 1 LSB, the case
is an xfail (an onnxruntime fusion bug, named in the reason). The terminal summary gives,
per op, the outcomes and the exact fraction against both runs.

A case onnxruntime cannot quantize, or that compiles to a node placed on the board's CPU,
is skipped with the reason; ``test_skip_budget`` fails for an op when more than a third of
its cases skip.
"""
from __future__ import annotations

import dataclasses
import itertools
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization import registry as ort_registry
from onnxruntime.quantization.operators.qdq_base_operator import QDQOperatorBase

import conformance_support as support
from qverify.simulator import Program
from qverify.simulator.compiler import compile_model

MAX_OPSET = 22  # the compiler reads opsets <= 22; Reshape/Flatten/Transpose 23-25 only added types
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}  # ops with a per_channel variant
ALL_FLOAT_INPUTS_ACTIVE = {"Add", "Mul", "Concat"}  # every float input is an activation


# ---- which cases, and how each is set up ------------------------------------------

def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    per_channel: bool = False
    matmul_b_active: bool = False  # MatMul with both operands activations (MatMulAct)


def _activations(case: support.NodeCase, variant: Variant) -> list[str]:
    node = case.model.graph.node[0]
    present = [n for n in node.input if n]
    if case.op_type in ALL_FLOAT_INPUTS_ACTIVE or (case.op_type == "MatMul" and variant.matmul_b_active):
        return [n for n in present if case.inputs[n].dtype == np.float32]
    return present[:1]


def _eligible(case) -> str | None:
    """Why an onnx case is out of scope (None: in scope)."""
    node = case.model.graph.node[0]
    inputs = case.data_sets[0][0]
    x = np.asarray(inputs[0])
    if x.dtype != np.float32:
        return "not a float32 case"
    if any(np.asarray(a).size == 0 for a in inputs):
        return "empty tensor"
    if node.op_type == "Resize" and _attr(node, "mode", "nearest") not in ("nearest", "linear"):
        return "cubic resize"
    return None


def _variants(case) -> list[Variant]:
    """per_tensor always; per_channel for weight ops (MatMul: 2-D weights only, onnxruntime puts the
    scales of a batched MatMul weight on axis 1, its reduction axis); two_activations for MatMul."""
    node = case.model.graph.node[0]
    variants = [Variant("per_tensor")]
    if node.op_type in WEIGHT_OPS:
        weight = case.inputs[node.input[1]] if isinstance(case, support.NodeCase) else case.data_sets[0][0][1]
        if node.op_type != "MatMul" or np.ndim(weight) == 2:
            variants.append(Variant("per_channel", per_channel=True))
    if node.op_type == "MatMul":
        variants.append(Variant("two_activations", matmul_b_active=True))
    return variants


ONNX_CASES = [c for c in support.node_testcases(support.FLOAT_OPS) if _eligible(c) is None]


def _extra_cases() -> list[support.NodeCase]:
    """Conv / ConvTranspose geometries onnx's node tests lack: groups, depthwise, dilations, 1-D,
    asymmetric pads, bias, wide reductions, output_shape with odd total padding, SAME_UPPER."""
    rng = np.random.default_rng(7)
    specs = [
        ("Conv", "qv_conv_group2_bias", (1, 4, 6, 6), (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1]), True),
        ("Conv", "qv_conv_depthwise_stride2", (1, 8, 9, 9), (8, 1, 3, 3),
         dict(group=8, strides=[2, 2], pads=[1, 1, 1, 1]), True),
        ("Conv", "qv_conv_dilations2", (1, 3, 9, 8), (4, 3, 3, 3), dict(dilations=[2, 2], pads=[2, 1, 2, 1]), False),
        ("Conv", "qv_conv_dilated_strided_asym", (2, 3, 10, 11), (5, 3, 3, 2),
         dict(dilations=[2, 3], strides=[2, 1], pads=[0, 2, 1, 0]), True),
        ("Conv", "qv_conv_1d", (1, 3, 16), (4, 3, 5), dict(pads=[2, 2], strides=[2]), True),
        ("Conv", "qv_conv_1x1_256ch", (1, 256, 4, 4), (16, 256, 1, 1), {}, True),
        ("ConvTranspose", "qv_convtranspose_group2_bias", (1, 4, 4, 4), (4, 3, 3, 3),
         dict(group=2, strides=[2, 2], pads=[1, 1, 1, 1]), True),
        ("ConvTranspose", "qv_convtranspose_output_shape_odd", (1, 2, 3, 3), (2, 3, 3, 3),
         dict(strides=[2, 2], output_shape=[6, 6]), True),
        ("ConvTranspose", "qv_convtranspose_same_upper", (1, 2, 3, 4), (2, 2, 3, 3),
         dict(strides=[2, 2], auto_pad="SAME_UPPER"), False),
        ("ConvTranspose", "qv_convtranspose_output_padding_dilated", (1, 3, 4, 4), (3, 2, 3, 2),
         dict(strides=[3, 2], dilations=[1, 2], output_padding=[1, 1]), True),
    ]
    cases = []
    for op, name, x_shape, w_shape, attrs, bias in specs:
        inputs = {"x": rng.standard_normal(x_shape).astype(np.float32),
                  "w": (rng.standard_normal(w_shape) * 0.3).astype(np.float32)}
        if bias:
            channels = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
            inputs["b"] = rng.standard_normal(channels).astype(np.float32)
        node = helper.make_node(op, list(inputs), ["y"], **attrs)
        graph = helper.make_graph([node], name, [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape)
                                                 for k, v in inputs.items()],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        cases.append(support.NodeCase(name, model, inputs, {}))
    return cases


EXTRA_CASES = {c.name: c for c in _extra_cases()}
PARAMS = [pytest.param(c.name, v, id=f"{c.model.graph.node[0].op_type}-{c.name}[{v.name}]")
          for c in itertools.chain(ONNX_CASES, EXTRA_CASES.values())
          for v in _variants(c)]
CASES_PER_OP: dict[str, int] = {}
for _p in PARAMS:
    _op = _p.id.split("-", 1)[0]
    CASES_PER_OP[_op] = CASES_PER_OP.get(_op, 0) + 1


# ---- quantization with onnxruntime ----------------------------------------------------

class _OneBatch(CalibrationDataReader):
    def __init__(self, feeds: dict[str, np.ndarray]) -> None:
        self._feeds = [feeds]

    def get_next(self):
        return self._feeds.pop() if self._feeds else None


class _KeepActivation(QDQOperatorBase):
    """Relu/Clip as onnxruntime quantizes them with QDQKeepRemovableActivations, minus its
    'input already quantized' precondition (a one-node model's input never is)."""

    def quantize(self):
        self.quantizer.quantize_activation_tensor(self.node.input[0])
        if not self.disable_qdq_for_node_output:
            self.quantizer.quantize_activation_tensor(self.node.output[0])


def quantize_with_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], op: str, per_channel: bool,
                      tmp_path) -> onnx.ModelProto:
    src, dst = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(model, str(src))
    with mock.patch.dict(ort_registry.QDQRegistry, {"Relu": _KeepActivation, "Clip": _KeepActivation}):
        quantize_static(str(src), str(dst), _OneBatch(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=[op], per_channel=per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        extra_options={"ForceQuantizeNoInputCheck": True})
    return onnx.load(str(dst))


def _per_channel_friendly(model: onnx.ModelProto) -> onnx.ModelProto:
    """A Gemm bias of shape (1, N), (1,) or () as the equivalent (N,) vector: onnxruntime's per-channel
    quantizer fails on the other shapes (ValueError in _adjust_weight_scale_for_int32_bias)."""
    node = model.graph.node[0]
    if node.op_type != "Gemm" or len(node.input) < 3 or not node.input[2]:
        return model
    inits = {i.name: i for i in model.graph.initializer}
    bias, weight = inits.get(node.input[2]), inits.get(node.input[1])
    if bias is None or weight is None:
        return model
    n = weight.dims[0] if _attr(node, "transB", 0) else weight.dims[1]
    value = numpy_helper.to_array(bias)
    if value.size not in (1, n) or value.ndim > 2 or (value.ndim == 2 and value.shape[0] != 1):
        return model
    bias.CopyFrom(numpy_helper.from_array(np.broadcast_to(value.reshape(-1), (n,)).astype(value.dtype).copy(),
                                          bias.name))
    return model


def _quantized_node(model: onnx.ModelProto, op: str, positions: list[int]) -> str | None:
    """None if the ``op`` node reads dequantized activations at input ``positions`` and every output
    is quantized, else why not."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nodes = [n for n in model.graph.node if n.op_type == op]
    if len(nodes) != 1:
        return f"{len(nodes)} {op} nodes after quantization"
    node = nodes[0]
    for i in positions:
        name = node.input[i]
        if name not in producers or producers[name].op_type != "DequantizeLinear":
            return f"input {name} is not dequantized"
    for name in filter(None, node.output):
        readers = consumers.get(name, [])
        if not readers or any(r.op_type != "QuantizeLinear" for r in readers):
            return f"output {name} is not quantized"
    return None


def _record(op: str, outcome: str, agreement=None, versus_plain=None) -> None:
    s = support.STATS.setdefault(op, {"cases": 0, "passed": 0, "skipped": 0, "failed": 0, "xfailed": 0, "exact": 0,
                                      "elements": 0, "exact_plain": 0, "elements_plain": 0, "max_diff": 0,
                                      "total": CASES_PER_OP.get(op, 0)})
    s["cases"] += 1
    s[outcome] += 1
    if agreement is not None and outcome != "xfailed":  # an xfail's gap is onnxruntime's own
        s["exact"] += agreement.exact
        s["elements"] += agreement.elements
        s["max_diff"] = max(s["max_diff"], agreement.max_diff)
    if versus_plain is not None:
        s["exact_plain"] += versus_plain.exact
        s["elements_plain"] += versus_plain.elements


def _skip(op: str, reason: str):
    _record(op, "skipped")
    pytest.skip(reason)


# ---- the tests --------------------------------------------------------------------

def test_every_op_has_cases():
    assert set(CASES_PER_OP) == set(support.FLOAT_OPS)


def ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimized: bool = True) -> dict[str, np.ndarray]:
    """onnxruntime (CPU provider) on ``model``; ``optimized=False`` turns off graph optimizations
    (no QDQ fusion into QLinear* kernels: the QDQ graph evaluated as written)."""
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@dataclasses.dataclass
class Agreement:
    exact: int = 0
    elements: int = 0
    max_diff: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


def compare_lsb(program: Program, outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> Agreement:
    """Simulator outputs vs float onnxruntime outputs, in units of each output's scale."""
    agreement = Agreement()
    assert set(outputs) == set(reference)
    for tensor, onnx_name in zip(program.outputs, program.proto.onnx_outputs):
        assert tensor.quantized, f"output {onnx_name} is not quantized in the program"
        got = outputs[onnx_name].astype(np.int64) - tensor.zero_point
        ref = reference[onnx_name]
        assert got.shape == ref.shape, f"{onnx_name}: shape {got.shape}, onnxruntime {ref.shape}"
        want = np.rint(ref.astype(np.float64) / np.float32(tensor.scale)).astype(np.int64)
        diff = np.abs(got - want)
        agreement.exact += int(np.count_nonzero(diff == 0))
        agreement.elements += diff.size
        agreement.max_diff = max(agreement.max_diff, int(diff.max(initial=0)))
        if diff.max(initial=0) > 1:
            at = np.unravel_index(int(diff.argmax()), diff.shape)
            agreement.problems.append(
                f"{onnx_name}: {int(np.count_nonzero(diff > 1))} of {diff.size} elements off by more than 1 LSB "
                f"(max {int(diff.max())} at {tuple(int(i) for i in at)}: simulator {int(got[at])}, "
                f"onnxruntime {int(want[at])}, in units of scale {tensor.scale:.6g})")
    return agreement


@pytest.mark.parametrize("name, variant", PARAMS)
def test_quantized_node(float_node_data, tmp_path, name, variant):
    case = EXTRA_CASES.get(name) or support.load_case(float_node_data, name)
    op = case.op_type
    acts = _activations(case, variant)
    model = support.with_initializers(case.model, case.inputs, set(acts), max_opset=MAX_OPSET)
    if variant.per_channel:
        model = _per_channel_friendly(model)
    feeds = {k: case.inputs[k] for k in acts}
    try:
        qmodel = quantize_with_ort(model, feeds, op, variant.per_channel, tmp_path)
    except Exception as exc:  # noqa: BLE001 - any refusal of onnxruntime.quantization
        _skip(op, f"onnxruntime cannot quantize this case: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    why_not = _quantized_node(qmodel, op, [i for i, n in enumerate(case.model.graph.node[0].input) if n in acts])
    if why_not:
        _skip(op, f"onnxruntime does not quantize this case ({why_not})")
    outcome, agreement, versus_plain = "failed", Agreement(), Agreement()
    try:
        program = Program(compile_model(qmodel))
        on_cpu = support.cpu_nodes(program)
        if on_cpu:
            outcome = "skipped"
            pytest.skip(f"compiles to CPU-placed nodes: {', '.join(on_cpu)}")
        outputs = support.run_program(program, feeds)
        plain = ort_outputs(qmodel, feeds, optimized=False)
        versus_plain = compare_lsb(program, outputs, plain)
        try:
            reference = ort_outputs(qmodel, feeds)
        except Exception:  # noqa: BLE001 - onnxruntime's QDQ fusion rejects some valid models
            reference = plain
        agreement = compare_lsb(program, outputs, reference)
        if agreement.problems and reference is not plain:
            ort_gap = max(int(np.abs(np.rint(reference[t_name] / t.scale) - np.rint(plain[t_name] / t.scale)).max())
                          for t, t_name in zip(program.outputs, program.proto.onnx_outputs))
            if not versus_plain.problems and ort_gap > 1:
                outcome = "xfailed"
                pytest.xfail(f"onnxruntime's optimized session (QDQ fused into QLinear*/QGemm kernels) differs by "
                             f"up to {ort_gap} LSB from its own unoptimized run of this quantized model; the "
                             f"simulator agrees with the unoptimized run within 1 LSB "
                             f"(vs optimized: {agreement.problems[0]})")
        assert not agreement.problems, "; ".join(agreement.problems)
        outcome = "passed"
    finally:
        _record(op, outcome, agreement, versus_plain)


@pytest.mark.parametrize("op", support.FLOAT_OPS)
def test_skip_budget(op):
    """At most a third of an op's quantized node cases may skip (unquantizable or CPU-placed)."""
    s = support.STATS.get(op)
    if not s or s["cases"] < s["total"]:
        pytest.skip(f"not all {op} cases ran in this session")
    assert s["skipped"] * 3 <= s["cases"], f"{s['skipped']} of {s['cases']} {op} cases skipped"
    assert s["elements"] > 0


@pytest.mark.parametrize("mode, scales", [("nearest", [1, 1, 2, 1.5]), ("nearest", [1, 1, 0.5, 0.7]),
                                          ("linear", [1, 1, 1.5, 2.5])])
def test_resize_opset10(mode, scales):
    """Resize-10 (inputs X, scales; nearest: floor when upsampling, ceil when downsampling, as
    onnxruntime does): onnxruntime.quantization does not quantize Resize below opset 11, so the
    QDQ model is written by hand."""
    x = np.random.default_rng(3).standard_normal((1, 2, 6, 5)).astype(np.float32)
    inits = [numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.uint8(128), "z"),
             numpy_helper.from_array(np.array(scales, np.float32), "scales")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Resize", ["xd", "scales"], ["y"], mode=mode),
             helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["out"])]
    graph = helper.make_graph(nodes, "resize10", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)], ir_version=6)
    program = Program(compile_model(model))
    assert not support.cpu_nodes(program)
    agreement = compare_lsb(program, support.run_program(program, {"x": x}), ort_outputs(model, {"x": x}))
    assert not agreement.problems, "; ".join(agreement.problems)
