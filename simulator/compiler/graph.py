"""Read a quantized ONNX model into an indexed, statically shaped, constant-folded graph."""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from qverify.simulator.errors import CompileError

QUANT_OPS = {"QuantizeLinear", "DequantizeLinear"}
QOPERATOR_OPS = {
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool", "QGemm", "QLinearSoftmax",
    "MatMulInteger", "ConvInteger",
}
MAX_OPSET = 22
MIN_OPSET = 10


@dataclass
class Graph:
    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    elem_types: dict[str, int]
    inputs: list[str]
    outputs: list[str]
    opset: int
    source_sha256: str
    source_format: str = "QDQ"
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=lambda: defaultdict(list))

    def index(self) -> None:
        self.producer = {}
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[attr.name] = value
    return out


def load_model(source: str | Path | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        data = source.SerializeToString()
        return source, hashlib.sha256(data).hexdigest()
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        name = "model"
    else:
        path = Path(source)
        name = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CompileError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise CompileError(f"{path}: is a directory, expected a .onnx file") from None
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises several types for garbage input
        raise CompileError(f"{name}: not a readable ONNX model ({type(exc).__name__}); "
                           "pass the .onnx file written by onnxruntime.quantization") from None
    if not model.graph.node:
        raise CompileError(f"{name}: not a readable ONNX model (empty graph)")
    return model, hashlib.sha256(data).hexdigest()


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise CompileError("the model imports no default ONNX opset; re-export it with opset 13 or newer")


def check_quantized(model: onnx.ModelProto) -> None:
    ops = {n.op_type for n in model.graph.node}
    if not ops & (QUANT_OPS | QOPERATOR_OPS):
        raise CompileError("the model is not quantized (no QuantizeLinear/DequantizeLinear or QLinear* nodes); "
                           "quantize it first with onnxruntime.quantization.quantize_static")


def fix_input_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None) -> None:
    """Make every graph input static: batch 1 unless ``input_shapes`` says otherwise."""
    initializers = {i.name for i in model.graph.initializer}
    input_shapes = dict(input_shapes or {})
    real_inputs = [i for i in model.graph.input if i.name not in initializers]
    for name in input_shapes:
        if name not in {i.name for i in real_inputs}:
            known = ", ".join(i.name for i in real_inputs)
            raise CompileError(f"--input-shape names '{name}', which is not a model input; inputs: {known}")
    for inp in real_inputs:
        dims = inp.type.tensor_type.shape.dim
        if inp.name in input_shapes:
            wanted = input_shapes[inp.name]
            if len(wanted) != len(dims):
                raise CompileError(f"--input-shape {inp.name}: rank {len(wanted)} given, the model's input has "
                                   f"rank {len(dims)}")
            for dim, value in zip(dims, wanted):
                if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != value:
                    raise CompileError(f"--input-shape {inp.name}: dimension {dim.dim_value} is fixed in the model, "
                                       f"got {value}")
                dim.Clear()
                dim.dim_value = int(value)
            continue
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if axis == 0:
                dim.Clear()
                dim.dim_value = 1
                continue
            label = dim.dim_param or "?"
            raise CompileError(f"input '{inp.name}' has a dynamic dimension {axis} ('{label}'); give its shape with "
                               f"--input-shape {inp.name}:" + ",".join(
                                   str(d.dim_value) if d.HasField('dim_value') and d.dim_value > 0 else "N"
                                   for d in dims))


def infer(model: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise CompileError(f"ONNX shape inference failed: {str(exc).splitlines()[0]}; "
                           "run onnxruntime.quantization.quant_pre_process on the float model before quantizing") from None
    shapes, types = {}, {}
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    for vi in values:
        tt = vi.type.tensor_type
        types[vi.name] = tt.elem_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
        types[init.name] = init.data_type
    return shapes, types


def topo_sort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    ready = set(available)
    pending = list(nodes)
    ordered = []
    while pending:
        progressed = []
        rest = []
        for node in pending:
            if all((not n) or n in ready for n in node.input):
                progressed.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if not progressed:
            missing = sorted({n for node in rest for n in node.input if n and n not in ready})
            raise CompileError(f"the graph has a cycle or reads undefined tensors: {', '.join(missing[:3])}",
                               node=rest[0].name, op=rest[0].op_type)
        ordered.extend(progressed)
        pending = rest
    return ordered


# Ops never folded: quantization must stay visible to the lowering.
_NO_FOLD = QUANT_OPS | QOPERATOR_OPS


def _initial_consts(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return consts


def fold_constants(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], opset: int
                   ) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Evaluate every node whose inputs are all constant (and Shape of statically shaped tensors)."""
    from onnx.reference import ReferenceEvaluator

    consts = _initial_consts(model)
    kept = []
    graph_inputs = {i.name for i in model.graph.input}
    nodes = topo_sort(list(model.graph.node), set(consts) | graph_inputs)
    for node in nodes:
        if node.op_type == "Constant":
            value = attrs_of(node)
            tensor = value.get("value")
            if tensor is None:
                for key in ("value_float", "value_int", "value_floats", "value_ints"):
                    if key in value:
                        tensor = np.array(value[key], dtype=np.float32 if "float" in key else np.int64)
            if tensor is None:
                raise CompileError("unsupported Constant form", node=node.name, op=node.op_type)
            consts[node.output[0]] = np.asarray(tensor)
            continue
        if node.op_type == "Shape" and node.input[0] in shapes and node.domain in ("", "ai.onnx"):
            full = np.array(shapes[node.input[0]], dtype=np.int64)
            a = attrs_of(node)
            start, end = a.get("start", 0), a.get("end", None)
            consts[node.output[0]] = full[start:end]
            continue
        if (node.op_type not in _NO_FOLD and node.domain in ("", "ai.onnx")
                and all((not n) or n in consts for n in node.input) and any(node.input)):
            feeds = {n: consts[n] for n in node.input if n}
            try:
                single = helper.make_node(node.op_type, list(node.input), list(node.output), domain=node.domain)
                single.attribute.extend(node.attribute)
                evaluator = ReferenceEvaluator(
                    helper.make_model(helper.make_graph([single], "fold", [
                        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(consts[n].dtype), consts[n].shape)
                        for n in dict.fromkeys(x for x in node.input if x)], [
                        helper.make_tensor_value_info(o, 0, None) for o in node.output]),
                        opset_imports=[helper.make_opsetid("", opset)], ir_version=10))
                results = evaluator.run(None, feeds)
            except Exception:
                kept.append(node)  # cannot fold here: it stays a node (and may run on the CPU)
                continue
            for name, value in zip(node.output, results):
                consts[name] = np.asarray(value)
            continue
        kept.append(node)
    return kept, consts


def build_graph(source, input_shapes: dict[str, list[int]] | None = None) -> Graph:
    """Load, check, normalise QOperator to QDQ, make shapes static and fold constants."""
    from qverify.simulator.compiler import qoperator

    model, digest = load_model(source)
    opset = default_opset(model)
    if opset < MIN_OPSET or opset > MAX_OPSET:
        raise CompileError(f"ONNX opset {opset} is not supported (this compiler reads opsets {MIN_OPSET} to "
                           f"{MAX_OPSET}); convert the model with onnx.version_converter")
    check_quantized(model)
    model = onnx.ModelProto.FromString(model.SerializeToString())  # never modify the caller's model
    fix_input_shapes(model, input_shapes)
    source_format = "QOperator" if any(n.op_type in QOPERATOR_OPS for n in model.graph.node) else "QDQ"
    qoperator.rewrite_to_qdq(model)
    shapes, _ = infer(model)
    nodes, consts = fold_constants(model, shapes, opset)
    # Re-infer on the folded graph: Reshape targets and friends are now constants.
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept_inits = {i.name for i in model.graph.initializer}
    for name, value in consts.items():
        if name not in kept_inits and any(name in n.input for n in nodes):
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    shapes, types = infer(model)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    graph = Graph(model, nodes, consts, shapes, types, inputs, [o.name for o in model.graph.output],
                  opset, digest, source_format)
    graph.index()
    return graph
