"""The switchable graph cut into segments, so that a variant reruns only downstream of its nodes.

A variant (a set of switches off) changes nothing upstream of the first node its switches
reach. The switchable graph of :mod:`.qdq_edit` is cut, in graph order, into a few
segments, each its own onnxruntime session whose inputs are the tensors crossing the cut.
The all-quantized run of every frame is kept once (every crossing tensor); a variant then
runs from the first segment its switches touch:

* the segments that read its switches as **switchable** segments (Where/If nodes fed the switch vector), and
* every later segment as its **quantized** copy: the same nodes with the switches folded to
  "on" (each ``Where`` reads its fake-quantized input, each weight ``If`` is its quantized
  branch inlined), which computes the same values without the cost of the switches (about
  half of a switchable run).

Both copies compute fake quantization in float with the same weights, so the values are
those of the single switchable session to within float rounding of fused kernels.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from qverify.client.accuracy.qdq_edit import SWITCH_INPUT

DEFAULT_SEGMENTS = 8


def _consumed(node) -> list[str]:
    """Tensors ``node`` reads, including the outer-scope names its subgraphs (If branches) read."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        if attr.g is not None and attr.g.node:
            inner_made = {o for n in attr.g.node for o in n.output} | {i.name for i in attr.g.initializer}
            names += [i for n in attr.g.node for i in n.input if i and i not in inner_made]
    return names


def _quantized_copy(nodes: list, gathers: set[str], helper) -> tuple[list, list]:
    """``nodes`` with every switch on: Where -> Identity of its quantized input, If -> its then-branch node."""
    out, inits = [], []
    for node in nodes:
        if node.op_type == "Where" and node.input[0] in gathers:
            out.append(helper.make_node("Identity", [node.input[1]], list(node.output), name=node.name))
        elif node.op_type == "If" and node.input[0] in gathers:
            branch = next(a.g for a in node.attribute if a.name == "then_branch")
            inner = branch.node[0]
            rename = dict(zip([o.name for o in branch.output], node.output))
            copy = helper.make_node(inner.op_type, list(inner.input), [rename[o] for o in inner.output],
                                    name=node.name, domain=inner.domain or None)
            copy.attribute.extend(inner.attribute)
            out.append(copy)
            inits.extend(branch.initializer)
        elif node.op_type == "Gather" and node.input[0] == SWITCH_INPUT:
            continue
        else:
            out.append(node)
    return out, inits


# Ops whose output has the element type of their first input.
_SAME_TYPE_OPS = frozenset({"Relu", "Clip", "Identity", "Softmax", "Sigmoid", "HardSigmoid", "HardSwish", "Add", "Sub",
                            "Mul", "Div", "Conv", "MatMul", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool",
                            "Flatten", "Reshape", "Transpose", "Concat", "LeakyRelu", "Tanh"})


def _types(model) -> dict[str, int]:
    """Element type of every tensor of ``model``: from its value_info (quant.onnx carries the
    shapes quant_pre_process inferred) and the rewrite's own nodes, else from shape inference
    (a whole-graph pass is 20-30 ms, a tenth of a sensitivity run of a small model)."""
    from onnx import TensorProto, shape_inference

    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input)
             + list(graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    for node in graph.node:
        if any(not types.get(o) for o in node.output):
            if node.op_type == "QuantizeLinear":  # the zero point's type; uint8 without one
                types[node.output[0]] = types.get(node.input[2], 0) if len(node.input) > 2 else TensorProto.UINT8
            elif node.op_type == "DequantizeLinear" and types.get(node.input[1]):  # the scale's type
                types[node.output[0]] = types[node.input[1]]
            elif node.op_type == "Where" and types.get(node.input[1]):
                types[node.output[0]] = types[node.input[1]]
            elif node.op_type == "Gather" and node.input[0] == SWITCH_INPUT:
                types[node.output[0]] = TensorProto.BOOL
            elif node.op_type in _SAME_TYPE_OPS and types.get(node.input[0]):
                types[node.output[0]] = types[node.input[0]]
    if all(types.get(o) for n in graph.node for o in n.output if o):
        return types
    inferred = shape_inference.infer_shapes(model)
    return {**{v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}, **types}


def _session(model_bytes: bytes, fake_quant: bool = False):
    """A one-thread onnxruntime CPU session with every graph optimisation (as DebugModels.session).

    ``fake_quant``: QDQ groups stay Q/DQ ops in float. Without the switches' Where between a
    DequantizeLinear and its consumer, onnxruntime would fuse e.g. DQ->Mul->Q into an
    integer QLinearMul, which is quant.onnx's arithmetic, not the switchable graph's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if fake_quant:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


@dataclass
class Segment:
    switched: object  # onnxruntime session of the switchable nodes
    quantized: object | None  # the same nodes with every switch on (None for segment 0: never run)
    switched_inputs: list[str]
    quantized_inputs: list[str]
    outputs: list[str]  # tensors later segments (or the graph's outputs) read


class SegmentedModel:
    """Sessions of the switchable graph's segments; see the module docstring."""

    def __init__(self, model_bytes: bytes, segments: int = DEFAULT_SEGMENTS, workers: int = 2) -> None:
        import onnx
        from onnx import helper

        model = onnx.load_from_string(model_bytes)
        graph = model.graph
        types = _types(model)
        inits = {i.name: i for i in graph.initializer}
        gather_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Gather" and n.input[0] == SWITCH_INPUT}
        body = [n for n in graph.node if n.output[0] not in gather_nodes]
        # Cut into segments of about equal numbers of compute nodes (Q/DQ/Where are cheap).
        heavy = [i for i, n in enumerate(body) if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Where",
                                                                   "Identity")]
        count = max(1, min(segments, len(heavy)))
        starts = sorted({0} | {heavy[len(heavy) * s // count] for s in range(1, count)})
        bounds = list(zip(starts, starts[1:] + [len(body)]))
        parts = [body[a:b] for a, b in bounds]
        self.output_names = [o.name for o in graph.output]
        later: set[str] = set(self.output_names)
        needs: list[list[str]] = []
        for part in reversed(parts):  # what each segment must hand on: what any later one reads
            needs.append(sorted(later))
            later |= {i for n in part for i in _consumed(n)}
        needs.reverse()
        self.switch_segments: dict[int, set[int]] = {}  # switch index -> the segments that read it
        gather_index = {out: int(np.asarray(onnx.numpy_helper.to_array(inits[n.input[1]]))) for out, n in
                        gather_nodes.items()}
        built = []  # per segment: (switchable model, its inputs, quantized model or None, its inputs, outputs)
        for s, part in enumerate(parts):
            read = {i for n in part for i in _consumed(n)}
            for g in read & gather_nodes.keys():
                self.switch_segments.setdefault(gather_index[g], set()).add(s)
            switched_nodes = [gather_nodes[g] for g in sorted(read & gather_nodes.keys())] + part
            made = {o for n in part for o in n.output}
            outputs = [t for t in needs[s] if t in made]
            sw = self._model(model, switched_nodes, [], outputs, inits, types, helper)
            # A variant starts in the switchable copy of its first segment: the quantized copy of
            # segment 0 would never run.
            qu = (None, [])
            if s:
                quantized_nodes, branch_inits = _quantized_copy(part, set(gather_nodes), helper)
                qu = self._model(model, quantized_nodes, branch_inits, outputs, inits, types, helper)
            built.append((sw, qu, outputs))
        # Session creation is most of the setup and onnxruntime releases the GIL while it optimises.
        jobs = [(m, fake) for sw, qu, _ in built for m, fake in ((sw[0], False), (qu[0], True)) if m is not None]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            sessions = iter(list(pool.map(lambda job: _session(*job), jobs)))
        self.segments: list[Segment] = []
        for sw, qu, outputs in built:
            switched = next(sessions)
            quantized = next(sessions) if qu[0] is not None else None
            self.segments.append(Segment(switched, quantized, sw[1], qu[1], outputs))

    @staticmethod
    def _model(model, nodes, extra_inits, outputs, inits, types, helper) -> tuple[bytes, list[str]]:
        made = {o for n in nodes for o in n.output} | {i.name for i in extra_inits}
        read = list(dict.fromkeys(i for n in nodes for i in _consumed(n) if i not in made))
        inputs = [i for i in read if i not in inits]
        graph = helper.make_graph(
            nodes, "segment", [helper.make_tensor_value_info(i, types.get(i, 1), None) for i in inputs],
            [helper.make_tensor_value_info(o, types.get(o, 1), None) for o in outputs],
            [inits[i] for i in read if i in inits] + list(extra_inits))
        seg = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        return seg.SerializeToString(), inputs

    def touched(self, switches) -> set[int]:
        """The segments that read any of ``switches`` (a variant with them off differs from the first on)."""
        return set().union(*(self.switch_segments[s] for s in switches)) if switches else set()

    def cache(self, frame: dict[str, np.ndarray], switch_on: np.ndarray) -> dict[str, np.ndarray]:
        """Every crossing tensor of the all-quantized run of ``frame`` (run through the switchable segments)."""
        values = dict(frame)
        values[SWITCH_INPUT] = switch_on
        for seg in self.segments:
            values.update(zip(seg.outputs, seg.switched.run(seg.outputs, {i: values[i] for i in seg.switched_inputs})))
        return values

    def run(self, cached: dict[str, np.ndarray], feed: np.ndarray, touched: set[int]) -> list[np.ndarray]:
        """The graph outputs of a variant (switch vector ``feed``) whose switches are read in ``touched``."""
        values = dict(cached)
        values[SWITCH_INPUT] = feed
        for s in range(min(touched, default=len(self.segments)), len(self.segments)):
            seg = self.segments[s]
            session, names = (seg.switched, seg.switched_inputs) if s in touched else (seg.quantized,
                                                                                       seg.quantized_inputs)
            values.update(zip(seg.outputs, session.run(seg.outputs, {i: values[i] for i in names})))
        return [values[o] for o in self.output_names]
