"""A QDQ quant.onnx rewritten so that each node's quantization can be switched off by a feed.

Every activation QuantizeLinear/DequantizeLinear pair a node reads through becomes a
switchable fake-quant ``Where(on, DQ(Q(x)), x_float)``, and a node with quantized weights
becomes an ``If`` on its weight switch whose branches hold the dequantized and the float
weights as constants: with a switch on the node computes what quant.onnx computes in
float (fake quantization), with it off it reads the float value. Every variant of the
sensitivity analysis and the curve is then this graph with a different bool vector as an
extra input (``qverify_quantized``), so nothing is rebuilt per variant
(:mod:`.segments` cuts it into sessions that rerun only downstream of a variant's nodes).

A node owns the QDQ pairs on its *inputs* (as Horizon's calibration nodes sit on an op's
inputs): its **weight** switch covers the pairs on constant inputs (weights, biases,
quantized scalars), whose float values come from the float model's node of the same name
and input position; its **activation** switch covers the pairs on computed inputs, and a
node producing a graph output through a QDQ pair also owns that pair. onnxruntime's
quantizer folds a Relu/Clip after a Conv/Add into the output's quantization range; when
that pair is switched off the float model's Relu/Clip is applied instead, so with every
switch off the graph computes the float model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SWITCH_INPUT = "qverify_quantized"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Ops a QOperator-format model has instead of QDQ pairs.
QOPERATOR_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
                           "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
                           "QLinearSoftmax", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})
FOLDED_ACTIVATIONS = ("Relu", "Clip")


class QdqEditError(Exception):
    """quant.onnx cannot be rewritten (not QDQ, or the float model does not match it)."""


@dataclass
class QuantNode:
    """A compute node of quant.onnx that reads (or, for a graph output, writes) through QDQ pairs."""
    index: int  # position among the quantized nodes (graph order)
    name: str
    op: str
    weight_switch: int | None = None  # index into the switch vector; None: no quantized constant input
    activation_switch: int | None = None
    weights: list[str] = field(default_factory=list)  # the quantized constants it reads
    activations: list[str] = field(default_factory=list)  # the quantized tensors it reads (or writes: outputs)

    def switches(self, kind: str) -> list[int]:
        """Switch indices that ``kind`` ("node", "weight", "activation") turns off."""
        chosen = {"node": (self.weight_switch, self.activation_switch), "weight": (self.weight_switch,),
                  "activation": (self.activation_switch,)}[kind]
        return [s for s in chosen if s is not None]


@dataclass
class SwitchedModel:
    """The rewritten graph (serialized) and its quantized nodes."""
    model_bytes: bytes
    nodes: list[QuantNode]
    switch_count: int
    input_names: list[str]
    output_names: list[str]

    def feed(self, float_switches: set[int] | frozenset[int] = frozenset()) -> np.ndarray:
        """The switch vector: every pair quantized except the switches in ``float_switches``."""
        on = np.ones(self.switch_count, dtype=bool)
        if float_switches:
            on[list(float_switches)] = False
        return on


def check_qdq(model, path: Path) -> None:
    """QdqEditError unless ``model`` is a QDQ-format quantized model."""
    qop = sorted({n.op_type for n in model.graph.node if n.op_type in QOPERATOR_OPS})
    if qop:
        raise QdqEditError(f"{path.name} is a QOperator-format model ({', '.join(qop[:3])}); sensitivity needs QDQ "
                           "pairs it can take out: quantize with quantize_static(..., quant_format=QuantFormat.QDQ)")
    if not any(n.op_type == "DequantizeLinear" for n in model.graph.node):
        raise QdqEditError(f"{path.name} has no QuantizeLinear/DequantizeLinear pairs: it is not a quantized model")


def _constant_values(model) -> dict[str, np.ndarray]:
    """Initializers and Constant node outputs of ``model`` by tensor name."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


class _Rewriter:
    def __init__(self, quant, float_model) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.quant, self.float = quant, float_model
        self.q_consts = _constant_values(quant)
        self.f_consts = _constant_values(float_model)
        self.f_nodes = {n.name: n for n in float_model.graph.node if n.name}
        self.f_producer = {o: n for n in float_model.graph.node for o in n.output}
        self.producer = {o: n for n in quant.graph.node for o in n.output}
        self.new_inits: list = []
        self.float_paths: dict[str, str] = {}  # quantized tensor -> its float value's tensor
        self.gathers: dict[int, str] = {}
        self.pre_nodes: list = []
        self.count = 0

    def _fresh(self, base: str) -> str:
        self.count += 1
        return f"qv{self.count}_{base}"[:200]

    def switch(self, index: int) -> str:
        """A scalar bool tensor: element ``index`` of the switch vector."""
        if index not in self.gathers:
            idx = self._fresh("switch_index")
            self.new_inits.append(self.numpy_helper.from_array(np.array(index, dtype=np.int64), idx))
            out = self._fresh(f"switch{index}")
            self.pre_nodes.append(self.helper.make_node("Gather", [SWITCH_INPUT, idx], [out], axis=0,
                                                        name=self._fresh("gather")))
            self.gathers[index] = out
        return self.gathers[index]

    def float_activation(self, tensor: str, emit: list) -> str:
        """The float value of quantized tensor ``tensor``: itself, or the float model's folded Relu/Clip of it."""
        if tensor in self.float_paths:
            return self.float_paths[tensor]
        path = tensor
        f_node = self.f_producer.get(tensor)
        q_node = self.producer.get(tensor)
        if f_node is not None and f_node.op_type in FOLDED_ACTIVATIONS and (q_node is None or
                                                                             q_node.op_type != f_node.op_type):
            inputs = [tensor]
            for extra in f_node.input[1:]:  # Clip's min/max: constants of the float model
                if not extra:
                    inputs.append("")
                    continue
                if extra not in self.f_consts:
                    raise QdqEditError(f"the float model's {f_node.op_type} '{f_node.name}' has a computed bound "
                                       f"'{extra}'; only constant bounds can be applied")
                name = self._fresh("bound")
                self.new_inits.append(self.numpy_helper.from_array(self.f_consts[extra], name))
                inputs.append(name)
            path = self._fresh(f"{tensor}_float")
            emit.append(self.helper.make_node(f_node.op_type, inputs, [path], name=self._fresh(f_node.op_type),
                                              **{a.name: self.helper.get_attribute_value(a) for a in f_node.attribute}))
        self.float_paths[tensor] = path
        return path

    def weight_if(self, node, switch: int, weight_float: dict[int, str]):
        """``node`` as an If on its weight switch: the quantized weights, or the float ones."""
        from onnx import TensorProto

        branches = []
        quantized = {j: self._fresh("weight_q") for j in weight_float}
        float_ = {j: self._fresh("weight_f") for j in weight_float}
        for tag, names in (("quantized", quantized), ("float", float_)):
            inputs = [names.get(j, n) for j, n in enumerate(node.input)]
            inits = [self.numpy_helper.from_array(self.dequantized(node.input[j]) if tag == "quantized"
                                                  else weight_float[j], names[j]) for j in names]
            outs = [self._fresh(f"{o}_{tag}") for o in node.output]
            inner = self.helper.make_node(node.op_type, inputs, outs, name=self._fresh(node.name or node.op_type),
                                          domain=node.domain or None,
                                          **{a.name: self.helper.get_attribute_value(a) for a in node.attribute})
            branches.append(self.helper.make_graph(
                [inner], self._fresh(tag), [], [self.helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                for o in outs], initializer=inits))
        return self.helper.make_node("If", [self.switch(switch)], list(node.output), name=node.name,
                                     then_branch=branches[0], else_branch=branches[1])

    def dequantized(self, name: str) -> np.ndarray:
        """The value of the DequantizeLinear output ``name`` (of a constant), as onnxruntime computes it."""
        dq = self.producer[name]
        codes = self.q_consts[dq.input[0]].astype(np.int32)
        scale = self.q_consts[dq.input[1]].astype(np.float32)
        zero = self.q_consts[dq.input[2]].astype(np.int32) if len(dq.input) > 2 and dq.input[2] else np.int32(0)
        if scale.ndim == 1 and scale.size > 1:  # per channel along the node's axis (default 1)
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * codes.ndim
            shape[axis] = scale.size
            scale, zero = scale.reshape(shape), np.reshape(zero, shape)
        return (codes - zero).astype(np.float32) * scale

    def edge_kind(self, dq) -> tuple[str, str | None]:
        """("weight", constant) or ("activation", float tensor) for the DequantizeLinear ``dq``."""
        source = dq.input[0]
        if source in self.q_consts:
            return "weight", source
        q = self.producer.get(source)
        if q is not None and q.op_type == "QuantizeLinear":
            return "activation", q.input[0]
        return "", None


def _live(nodes: list, outputs: set[str]) -> list:
    """``nodes`` without those whose results nothing reads: the DequantizeLinear of each weight an
    ``If`` now holds as constants would otherwise run on every call (onnxruntime neither folds
    nor drops it; measured 10-20 % of a run of the zoo models)."""
    needed = set(outputs)
    kept = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # names an If branch reads from the outer scope
                if attr.g is not None:
                    needed.update(i for n in attr.g.node for i in n.input if i)
    return kept[::-1]


def rewrite(quant, float_model) -> SwitchedModel:
    """The switchable copy of the QDQ model ``quant`` (an onnx ModelProto); ``float_model`` gives
    the float weights and folded activations."""
    from onnx import ModelProto, TensorProto, helper

    original, quant = quant, ModelProto()
    quant.CopyFrom(original)  # the caller's model stays as it was
    r = _Rewriter(quant, float_model)
    graph = quant.graph
    nodes: list[QuantNode] = []
    by_name: dict[str, QuantNode] = {}
    switches = 0
    out_nodes: list = []
    outputs = {o.name for o in graph.output}

    def owner(node, index: int) -> QuantNode:
        key = node.name or f"#{index}"
        if key not in by_name:
            by_name[key] = QuantNode(len(nodes), node.name or node.output[0], node.op_type)
            nodes.append(by_name[key])
        return by_name[key]

    def ensure(q: QuantNode, kind: str) -> int:
        nonlocal switches
        attr = f"{kind}_switch"
        if getattr(q, attr) is None:
            setattr(q, attr, switches)
            switches += 1
        return getattr(q, attr)

    for index, node in enumerate(graph.node):
        if node.op_type in QDQ_OPS or node.op_type == "Constant":
            out_nodes.append(node)
            continue
        emit: list = []
        weight_float: dict[int, str] = {}
        f_node = r.f_nodes.get(node.name)
        for j, name in enumerate(node.input):
            dq = r.producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            kind, source = r.edge_kind(dq)
            if not kind:
                continue
            q = owner(node, index)
            if kind == "weight":
                f_name = f_node.input[j] if f_node is not None and j < len(f_node.input) else ""
                value = r.f_consts.get(f_name)
                if value is None or value.shape != r.q_consts[source].shape:
                    raise QdqEditError(f"the float model has no float value for input {j} of node '{node.name}' "
                                       f"({source}): it is not the float model this quant.onnx was quantized from")
                # Weights switch through an If around the node, with both weight sets as constants of
                # its branches: a Where on the weights would make them computed values, which
                # onnxruntime cannot pre-pack (measured: 3-5x slower runs).
                q.weights.append(source)
                ensure(q, kind)
                weight_float[j] = value.astype(np.float32)
                continue
            float_name = r.float_activation(source, emit)
            q.activations.append(source)
            switched = r._fresh(f"{name}_switched")
            emit.append(helper.make_node("Where", [r.switch(ensure(q, kind)), name, float_name], [switched],
                                         name=r._fresh("where")))
            node.input[j] = switched
        out_nodes.extend(emit)
        q = by_name.get(node.name or f"#{index}")
        if q is not None and q.weight_switch is not None:
            out_nodes.append(r.weight_if(node, q.weight_switch, weight_float))
        else:
            out_nodes.append(node)

    # A graph output computed through a QDQ pair: the pair belongs to the node producing its input.
    for out in graph.output:
        dq = r.producer.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        kind, source = r.edge_kind(dq)
        producer = r.producer.get(source) if kind == "activation" else None
        if producer is None:
            continue
        q = owner(producer, list(graph.node).index(producer))
        quantized = r._fresh(f"{out.name}_quantized")
        dq.output[0] = quantized
        emit = []
        float_name = r.float_activation(source, emit)
        emit.append(helper.make_node("Where", [r.switch(ensure(q, "activation")), quantized, float_name], [out.name],
                                     name=r._fresh("where")))
        q.activations.append(source)
        out_nodes.extend(emit)

    if not nodes:
        raise QdqEditError("quant.onnx has no node that reads through a QuantizeLinear/DequantizeLinear pair")
    nodes.sort(key=lambda n: n.index)
    del graph.node[:]
    graph.node.extend(_live(r.pre_nodes + out_nodes, {o.name for o in graph.output}))
    graph.initializer.extend(r.new_inits)
    graph.input.append(helper.make_tensor_value_info(SWITCH_INPUT, TensorProto.BOOL, [switches]))
    inits = {i.name for i in graph.initializer}
    return SwitchedModel(quant.SerializeToString(), nodes, switches,
                         [i.name for i in graph.input if i.name not in inits and i.name != SWITCH_INPUT],
                         [o.name for o in graph.output])
