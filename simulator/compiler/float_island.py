"""Float islands: run_on_cpu nodes computed as the float model computes them.

Given the float model quant.onnx was quantized from, a node forced onto the board's CPU
runs with its QuantizeLinear/DequantizeLinear pairs taken out, as the accuracy debugger's
sensitivity analysis measures it:

* its quantized constants (weights, bias, quantized scalars) are the float model's
  constants of the node of the same name, at the same input position;
* an input written by another island node is read in float32, with no quantize and
  dequantize in between (onnxruntime's quantizer folds a Relu/Clip into the output's
  quantization range; the float model's Relu/Clip is then applied on the CPU instead);
* an input written by another node (its *producer*) is read in float32 too: the producer
  runs on the CPU as quant.onnx computes it (its quantized weights, its own input
  quantization, what ``--run-on-cpu`` does without a float model) but hands its output
  over unquantized. That removes the QDQ pair on the edge, which the sensitivity analysis
  counts as the island node's (a node in float reads float inputs). With
  ``float_producers=False`` the producer stays integer and its output quantization stays;
  a quantized graph input always stays int8 (it is the board's input);
* its outputs are float32; where an integer node reads one, it is quantized with
  quant.onnx's scale and zero point (a CPU quantize node, as without islands), and a
  graph output it writes through a QDQ pair is given in float32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qverify.simulator.compiler.context import FValue, Lowering, QConst
from qverify.simulator.compiler.graph import attrs_of, load_model
from qverify.simulator.errors import CompileError
from qverify.v1 import model_pb2

FOLDED_ACTIVATIONS = ("Relu", "Clip")
MISMATCH_HINT = "pass the float model this quant.onnx was quantized from"


class FloatSource:
    """The float model's nodes by name and its constants by tensor name."""

    def __init__(self, source: str | Path | bytes | onnx.ModelProto) -> None:
        model, _ = load_model(source)
        self.name = Path(source).name if isinstance(source, (str, Path)) else "the float model"
        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant":
                value = attrs_of(node).get("value")
                if value is not None:
                    self.consts[node.output[0]] = np.asarray(value)
        self.nodes = {n.name: n for n in model.graph.node if n.name}
        self.producer = {o: n for n in model.graph.node for o in n.output}

    def node(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """The float model's node of ``node``'s name and op; CompileError when there is none."""
        f_node = self.nodes.get(node.name)
        if f_node is None or f_node.op_type != node.op_type:
            found = f"a {f_node.op_type}" if f_node is not None else "no node"
            raise CompileError(f"the float model {self.name} has {found} of this name, so its float weights "
                               "are unknown", node=node.name, op=node.op_type, hint=MISMATCH_HINT)
        return f_node

    def weight(self, node: onnx.NodeProto, f_node: onnx.NodeProto, index: int, want: tuple[int, ...]) -> np.ndarray:
        """The float constant at input ``index`` of ``f_node``, of shape ``want``."""
        name = f_node.input[index] if index < len(f_node.input) else ""
        value = self.consts.get(name)
        if value is None or tuple(value.shape) != tuple(want):
            got = "no constant" if value is None else f"a constant of shape {list(value.shape)}"
            raise CompileError(f"input {index} is a quantized constant of shape {list(want)}, the float model "
                               f"{self.name} has {got} there", node=node.name, op=node.op_type, hint=MISMATCH_HINT)
        return value.astype(np.float32) if value.dtype.kind == "f" else value


def _q_source(graph, name: str) -> str | None:
    """``t`` when ``name`` = DequantizeLinear(QuantizeLinear(t)) of a computed tensor."""
    dq = graph.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in graph.consts:
        return None
    q = graph.producer.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None


def producers(graph, island: set[str]) -> set[str]:
    """Nodes outside ``island`` whose output an island node reads through a QDQ pair (with a CPU kernel)."""
    from qverify.simulator.ops import registry

    found = set()
    for node in graph.nodes:
        if node.name not in island:
            continue
        for name in node.input:
            source = _q_source(graph, name) if name else None
            producer = graph.producer.get(source) if source else None
            if (producer is not None and producer.name and producer.name not in island
                    and producer.op_type not in ("QuantizeLinear", "DequantizeLinear")
                    and producer.domain in ("", "ai.onnx") and registry.has_cpu_kernel(producer.op_type)):
                found.add(producer.name)
    return found


def emit_producer(ctx: Lowering, node: onnx.NodeProto) -> None:
    """An island node's producer: on the CPU as quant.onnx computes it, its outputs float32."""
    ctx.emit_cpu(node, float_outputs=True)
    ctx.island_outputs.update(o for o in node.output if o)


def _island_source(ctx: Lowering, name: str) -> str | None:
    """The island output behind ``name`` = DequantizeLinear(QuantizeLinear(island output)), if it is one."""
    source = _q_source(ctx.graph, name)
    return source if source in ctx.island_outputs else None


def _float_value(ctx: Lowering, tensor: str, reader: onnx.NodeProto) -> str:
    """Island output ``tensor`` as its float readers see it: after the float model's folded Relu/Clip."""
    if tensor in ctx.island_floats:
        return ctx.island_floats[tensor]
    path = tensor
    f_node = ctx.float_source.producer.get(tensor)
    q_node = ctx.graph.producer.get(tensor)
    if f_node is not None and f_node.op_type in FOLDED_ACTIVATIONS and (q_node is None
                                                                       or q_node.op_type != f_node.op_type):
        inputs = [tensor]
        for extra in f_node.input[1:]:  # Clip's bounds: constants of the float model
            if extra and extra not in ctx.float_source.consts:
                raise CompileError(f"the float model's {f_node.op_type} '{f_node.name}' after it has a computed "
                                   "bound; only constant bounds can be applied", node=reader.name,
                                   op=reader.op_type)
            inputs.append(ctx.add_const(f"{f_node.name}/{extra}", ctx.float_source.consts[extra]) if extra else "")
        path = ctx.fresh_tensor_name(f"{tensor}/{f_node.op_type.lower()}")
        ctx.add_tensor(path, np.float32, ctx.shape(tensor))
        attrs = {k: v for k, v in attrs_of(f_node).items() if not isinstance(v, np.ndarray)}
        attrs.update({"_opset": ctx.graph.opset, "_num_outputs": 1})
        ctx.emit(f_node.op_type, f_node, inputs, [path], attrs=attrs, placement=model_pb2.CPU,
                 name=f"{f_node.name or path}/float")
    ctx.island_floats[tensor] = path
    return path


def emit(ctx: Lowering, node: onnx.NodeProto) -> None:
    """Emit run_on_cpu ``node`` as a float island node (float weights, float32 between islands)."""
    source = ctx.float_source
    f_node = source.node(node)
    read: list[str | None] = []
    for index, name in enumerate(node.input):
        island = _island_source(ctx, name) if name else None
        value = ctx.values.get(name) if name else None
        if island is not None:
            read.append(_float_value(ctx, island, node))
        elif isinstance(value, QConst):
            weight = source.weight(node, f_node, index, value.values.shape)
            read.append(ctx.add_const(f_node.input[index], weight))
        else:
            read.append(None)  # an int8 activation (dequantized), a float one, or a plain constant
    ctx.emit_cpu(node, read=read, float_outputs=True)
    ctx.island_outputs.update(o for o in node.output if o)


def graph_output(ctx: Lowering, name: str) -> FValue | None:
    """A graph output an island node writes through a QDQ pair: its float value."""
    island = _island_source(ctx, name)
    if island is None:
        return None
    path = _float_value(ctx, island, ctx.graph.producer[name])
    return FValue(path)


def prune_quantizers(ctx: Lowering) -> None:
    """Drop quantize nodes of island outputs that only island nodes (reading the float) would have read."""
    program = ctx.program
    dead = set(ctx.island_quantizers)
    while True:
        read = {i for n in program.nodes for i in n.inputs} | set(program.outputs)
        drop = [n for n in program.nodes if n.name in dead and not any(o in read for o in n.outputs)]
        if not drop:
            return
        gone = {o for n in drop for o in n.outputs}
        names = {n.name for n in drop}
        keep = [n for n in program.nodes if n.name not in names]
        del program.nodes[:]
        program.nodes.extend(keep)
        tensors = [t for t in program.tensors if t.name not in gone]
        del program.tensors[:]
        program.tensors.extend(tensors)
        dead -= names
