"""Normalise QOperator models (QLinearConv, QGemm, ...) to the QDQ form.

Each QLinear node becomes DequantizeLinear -> float op -> QuantizeLinear with the same
quantization parameters, keeping its output tensor name, so one lowering serves both
formats and layer names stay those of the model. MatMulInteger and ConvInteger
(int32 outputs) are kept and lowered directly.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qverify.simulator.errors import CompileError


class _Rewriter:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {i.name: i for i in model.graph.initializer}
        self.new_nodes: list[onnx.NodeProto] = []
        self.counter = 0

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}__qdq{self.counter}"

    def dq(self, x: str, scale: str, zp: str, tag: str, axis: int | None = None) -> str:
        out = self.fresh(f"{x}_dq")
        inputs = [x, scale] + ([zp] if zp else [])
        node = helper.make_node("DequantizeLinear", inputs, [out], name=self.fresh(f"{tag}_DequantizeLinear"))
        if axis is not None:
            node.attribute.append(helper.make_attribute("axis", axis))
        self.new_nodes.append(node)
        return out

    def q(self, x: str, scale: str, zp: str, out: str, tag: str) -> None:
        inputs = [x, scale] + ([zp] if zp else [])
        self.new_nodes.append(helper.make_node("QuantizeLinear", inputs, [out], name=self.fresh(f"{tag}_QuantizeLinear")))

    def op(self, op_type: str, inputs: list[str], node: onnx.NodeProto, keep_attrs=(), extra=None,
           domain: str = "") -> str:
        out = self.fresh(f"{node.output[0]}_float")
        new = helper.make_node(op_type, inputs, [out], name=node.name or out, domain=domain)
        for attr in node.attribute:
            if attr.name in keep_attrs:
                new.attribute.append(attr)
        for key, value in (extra or {}).items():
            new.attribute.append(helper.make_attribute(key, value))
        self.new_nodes.append(new)
        return out

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def array(self, name: str) -> np.ndarray:
        if name not in self.inits:
            raise CompileError(f"quantization parameter '{name}' must be a constant initializer")
        return numpy_helper.to_array(self.inits[name])

    def weight_axis(self, scale: str, axis: int) -> int | None:
        return axis if self.array(scale).size > 1 else None

    def bias(self, bias: str, x_scale: str, w_scale: str, tag: str) -> str:
        """int32 bias at scale x_scale * w_scale -> float bias tensor."""
        scale = (self.array(x_scale).astype(np.float32) * self.array(w_scale).astype(np.float32)).reshape(-1)
        zp = np.zeros(scale.shape, dtype=np.int32)
        axis = 0 if scale.size > 1 else None
        scale_name = self.const(f"{bias}_scale", scale if scale.size > 1 else scale.reshape(()))
        zp_name = self.const(f"{bias}_zero_point", zp if scale.size > 1 else zp.reshape(()))
        return self.dq(bias, scale_name, zp_name, tag, axis=axis)


def _arg(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def rewrite_to_qdq(model: onnx.ModelProto) -> None:
    """Rewrite in place; a model without QOperator nodes is left unchanged."""
    rw = _Rewriter(model)
    out_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        rw.new_nodes = []
        t, tag, a = node.op_type, node.name or node.output[0], _arg
        if t == "QLinearConv":
            x = rw.dq(a(node, 0), a(node, 1), a(node, 2), tag)
            w = rw.dq(a(node, 3), a(node, 4), a(node, 5), tag, axis=rw.weight_axis(a(node, 4), 0))
            ins = [x, w] + ([rw.bias(a(node, 8), a(node, 1), a(node, 4), tag)] if a(node, 8) else [])
            y = rw.op("Conv", ins, node, keep_attrs=("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"))
            rw.q(y, a(node, 6), a(node, 7), node.output[0], tag)
        elif t == "QLinearMatMul":
            x = rw.dq(a(node, 0), a(node, 1), a(node, 2), tag)
            w_axis = None
            if a(node, 4) in rw.inits and a(node, 3) in rw.inits:  # per column of a (…, K, N) weight
                w_axis = rw.weight_axis(a(node, 4), rw.array(a(node, 3)).ndim - 1)
            w = rw.dq(a(node, 3), a(node, 4), a(node, 5), tag, axis=w_axis)
            rw.q(rw.op("MatMul", [x, w], node), a(node, 6), a(node, 7), node.output[0], tag)
        elif t in ("QLinearAdd", "QLinearMul"):
            x = rw.dq(a(node, 0), a(node, 1), a(node, 2), tag)
            y = rw.dq(a(node, 3), a(node, 4), a(node, 5), tag)
            rw.q(rw.op(t[len("QLinear"):], [x, y], node), a(node, 6), a(node, 7), node.output[0], tag)
        elif t in ("QLinearSigmoid", "QLinearLeakyRelu"):
            x = rw.dq(a(node, 0), a(node, 1), a(node, 2), tag)
            rw.q(rw.op(t[len("QLinear"):], [x], node, keep_attrs=("alpha",)), a(node, 3), a(node, 4),
                 node.output[0], tag)
        elif t == "QLinearSoftmax":
            x = rw.dq(a(node, 0), a(node, 1), a(node, 2), tag)
            opset = next((at.i for at in node.attribute if at.name == "opset"), 13)
            axis = next((at.i for at in node.attribute if at.name == "axis"), -1 if opset >= 13 else 1)
            rw.q(rw.op("Softmax", [x], node, extra={"axis": axis, "_qv_softmax_opset": opset}),
                 a(node, 3), a(node, 4), node.output[0], tag)
        elif t == "QLinearConcat":
            parts = [rw.dq(node.input[i], node.input[i + 1], node.input[i + 2], tag)
                     for i in range(2, len(node.input), 3)]
            rw.q(rw.op("Concat", parts, node, keep_attrs=("axis",)), a(node, 0), a(node, 1), node.output[0], tag)
        elif t in ("QLinearGlobalAveragePool", "QLinearAveragePool"):
            if any(at.name == "channels_last" and at.i for at in node.attribute):
                raise CompileError("channels_last pooling is not supported; quantize with the default NCHW layout",
                                   node=node.name, op=t)
            x = rw.dq(a(node, 0), a(node, 1), a(node, 2), tag)
            float_op = "GlobalAveragePool" if t == "QLinearGlobalAveragePool" else "AveragePool"
            y = rw.op(float_op, [x], node, keep_attrs=("auto_pad", "ceil_mode", "count_include_pad",
                                                        "kernel_shape", "pads", "strides"))
            rw.q(y, a(node, 3), a(node, 4), node.output[0], tag)
        elif t == "QGemm":
            x = rw.dq(a(node, 0), a(node, 1), a(node, 2), tag)
            trans_b = next((at.i for at in node.attribute if at.name == "transB"), 0)
            w = rw.dq(a(node, 3), a(node, 4), a(node, 5), tag,
                      axis=rw.weight_axis(a(node, 4), 0 if trans_b else 1))
            ins = [x, w] + ([rw.bias(a(node, 6), a(node, 1), a(node, 4), tag)] if a(node, 6) else [])
            y = rw.op("Gemm", ins, node, keep_attrs=("alpha", "transA", "transB"))
            if a(node, 7):
                rw.q(y, a(node, 7), a(node, 8), node.output[0], tag)
            else:  # float output
                rw.new_nodes[-1].output[0] = node.output[0]
        else:
            out_nodes.append(node)
            continue
        out_nodes.extend(rw.new_nodes)
    del model.graph.node[:]
    model.graph.node.extend(out_nodes)
    # Drop the com.microsoft-only attributes left on rewritten Softmax nodes.
    for node in model.graph.node:
        if node.op_type == "Softmax":
            opset_attr = [at for at in node.attribute if at.name == "_qv_softmax_opset"]
            for at in opset_attr:
                node.attribute.remove(at)
