"""Lowering context: what every ONNX tensor is on the board, and how nodes are emitted.

Each ONNX tensor name maps to one of:
* ``QValue``  an int8 activation of the program (a QuantizeLinear output, a QOperator
  output, or a DequantizeLinear output reading one: they are the same values);
* ``FValue``  a float32 activation (only on the board's CPU);
* ``QConst``  a constant behind DequantizeLinear (weights, bias, quantized scalars);
* plain constants, in ``graph.consts``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from qverify.simulator import program as prog
from qverify.simulator.compiler.graph import Graph, attrs_of
from qverify.simulator.errors import CompileError
from qverify.simulator.executor import quantize
from qverify.simulator.ops import registry
from qverify.simulator.targets import TargetProfile
from qverify.simulator import layout
from qverify.v1 import model_pb2

CPU_HINT = "use --run-on-cpu {node} to run it in float32 on the board's CPU"
# Ops through which quantization parameters can be propagated backwards unchanged.
QUANT_TRANSPARENT = {"MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose"}


@dataclass(frozen=True)
class QValue:
    name: str  # program tensor
    scale: float
    zp: int  # int8 domain


@dataclass(frozen=True)
class FValue:
    name: str


@dataclass(frozen=True)
class QConst:
    values: np.ndarray  # integers, int8 domain for 8-bit, raw for int32
    scale: np.ndarray  # float32, scalar or per channel
    zp: np.ndarray  # int8 domain
    axis: int | None
    wide: bool  # int32 (bias) rather than 8-bit

    def real(self) -> np.ndarray:
        if self.axis is None or self.scale.size == 1:
            return ((self.values.astype(np.int64) - self.zp.reshape(-1)[0]).astype(np.float32)
                    * np.float32(self.scale.reshape(-1)[0]))
        shape = [1] * self.values.ndim
        shape[self.axis] = -1
        return ((self.values.astype(np.int64) - self.zp.reshape(shape)).astype(np.float32)
                * self.scale.reshape(shape).astype(np.float32))


def q_params_from(graph: Graph, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, int]:
    """(scale, zero point in the int8 domain, ONNX elem type) of a Q/DQ node."""
    scale_name = node.input[1]
    if scale_name not in graph.consts:
        raise CompileError("quantization scale is not a constant", node=node.name, op=node.op_type)
    scale = np.asarray(graph.consts[scale_name], dtype=np.float32)
    if len(node.input) > 2 and node.input[2]:
        zp_raw = np.asarray(graph.consts[node.input[2]])
        elem = onnx.helper.np_dtype_to_tensor_dtype(zp_raw.dtype)
    else:  # no zero point: 0 of the quantized tensor's type (uint8 unless known otherwise)
        elem = graph.elem_types.get(node.output[0] if node.op_type == "QuantizeLinear" else node.input[0],
                                    onnx.TensorProto.UINT8)
        if elem not in (onnx.TensorProto.INT8, onnx.TensorProto.INT32):
            elem = onnx.TensorProto.UINT8
        zp_raw = np.zeros(scale.shape, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem))
    if node.op_type == "DequantizeLinear" and node.input[0] in graph.consts:
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(graph.consts[node.input[0]]).dtype)
    if elem == onnx.TensorProto.UINT8:
        zp = zp_raw.astype(np.int32) - 128
    elif elem in (onnx.TensorProto.INT8, onnx.TensorProto.INT32):
        zp = zp_raw.astype(np.int32)
    else:
        raise CompileError(f"{onnx.TensorProto.DataType.Name(elem).lower()} quantization is not supported "
                           "(8-bit activations and weights only); quantize with QUInt8 or QInt8",
                           node=node.name, op=node.op_type)
    if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        raise CompileError(f"quantization scale must be finite and > 0, got {scale.reshape(-1)[:4]}",
                           node=node.name, op=node.op_type)
    return scale, zp, elem


class Lowering:
    """Builds the program while walking the ONNX graph in topological order."""

    def __init__(self, graph: Graph, target: TargetProfile, run_on_cpu: set[str], float_source=None) -> None:
        self.graph = graph
        self.target = target
        self.run_on_cpu = run_on_cpu
        # Float island mode (a float model given): run_on_cpu nodes read its weights and pass
        # float32 between them; see float_island.py.
        self.float_source = float_source
        self.island_producers: set[str] = set()  # nodes run on the CPU to hand float32 to island nodes
        self.island_outputs: set[str] = set()  # float32 tensors written by island nodes and their producers
        self.island_floats: dict[str, str] = {}  # island output -> its float value (after a folded Relu/Clip)
        self.island_quantizers: list[str] = []  # program nodes quantizing island outputs (pruned when unread)
        self.values: dict[str, QValue | FValue | QConst] = {}
        self.program = model_pb2.Program(target=target.to_proto())
        self.tensor_infos: dict[str, model_pb2.TensorInfo] = {}
        self.const_names: set[str] = set()
        self.node_names: set[str] = set()

    # ---- tensors and constants -------------------------------------------------
    def shape(self, onnx_name: str) -> tuple[int, ...]:
        shape = self.graph.shapes.get(onnx_name)
        if shape is None:
            raise CompileError(f"the shape of tensor '{onnx_name}' is unknown after shape inference; "
                               "run onnxruntime.quantization.quant_pre_process on the float model first")
        return shape

    def add_tensor(self, name: str, dtype: np.dtype, shape: tuple[int, ...], scale: float = 0.0, zp: int = 0,
                   onnx_float_name: str = "", onnx_dtype: int = 0) -> str:
        if name in self.tensor_infos:
            raise CompileError(f"tensor '{name}' is written twice")
        info = self.program.tensors.add(name=name, onnx_name=name, dtype=prog.proto_dtype(dtype),
                                        shape=list(shape))
        info.onnx_float_name = onnx_float_name
        info.onnx_dtype = onnx_dtype
        if np.dtype(dtype) == np.int8:
            info.quant.scale = float(scale)
            info.quant.zero_point = int(zp)
        info.aligned_layout = layout.aligned_layout(shape)
        a_shape = layout.aligned_shape(shape, self.target)
        info.aligned_shape.extend(a_shape)
        info.aligned_strides.extend(layout.element_strides(a_shape))
        self.tensor_infos[name] = info
        return name

    def add_const(self, base: str, array: np.ndarray) -> str:
        name, i = base, 1
        while name in self.const_names:
            i += 1
            name = f"{base}#{i}"
        self.const_names.add(name)
        self.program.constants.append(prog.make_constant(name, np.asarray(array)))
        return name

    def fresh_tensor_name(self, base: str) -> str:
        name, i = base, 1
        while name in self.tensor_infos or name in self.graph.shapes:
            i += 1
            name = f"{base}#{i}"
        return name

    # ---- what ONNX tensors are -------------------------------------------------
    def value(self, onnx_name: str, node: onnx.NodeProto):
        if onnx_name in self.values:
            return self.values[onnx_name]
        if onnx_name in self.graph.consts:
            return self.graph.consts[onnx_name]
        raise CompileError(f"input '{onnx_name}' is not produced by any supported node", node=node.name,
                           op=node.op_type)

    def out_q(self, onnx_name: str) -> tuple[str, float, int, int] | None:
        """If float ``onnx_name`` is quantized: (program tensor name, scale, zp, elem).

        Either a QuantizeLinear reads it, or its only reader is an op that commutes with
        quantization (MaxPool and pure data movement: quantization is monotonic and
        elementwise) whose output is quantized; the tensor then takes those parameters,
        which changes no value: Q(maxpool(f)) == maxpool(Q(f)).
        """
        consumers = self.graph.consumers.get(onnx_name, [])
        qs = [c for c in consumers if c.op_type == "QuantizeLinear"]
        if not qs:
            if (len(consumers) == 1 and consumers[0].op_type in QUANT_TRANSPARENT
                    and onnx_name not in self.graph.outputs and len(consumers[0].output) == 1
                    and consumers[0].input[0] == onnx_name):
                downstream = self.out_q(consumers[0].output[0])
                if downstream is not None:
                    return onnx_name, downstream[1], downstream[2], downstream[3]
            return None
        scale, zp, elem = q_params_from(self.graph, qs[0])
        if scale.size != 1:
            raise CompileError("per-channel quantization of activations is not supported", node=qs[0].name,
                               op="QuantizeLinear")
        return qs[0].output[0], float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]), elem

    def define_q_output(self, onnx_name: str, producer: str) -> QValue | None:
        """Declare the int8 program tensor for float output ``onnx_name`` if it is quantized."""
        oq = self.out_q(onnx_name)
        if oq is None:
            return None
        q_name, scale, zp, elem = oq
        # A tensor quantized by propagation is float in the ONNX model (onnx_dtype 0).
        self.add_tensor(q_name, np.int8, self.shape(onnx_name), scale, zp, onnx_float_name=onnx_name,
                        onnx_dtype=elem if q_name != onnx_name else 0)
        self.tensor_infos[q_name].producer = producer
        value = QValue(q_name, scale, zp)
        self.values[onnx_name] = value
        self.values[q_name] = value
        return value

    # ---- node emission ---------------------------------------------------------
    def emit(self, op: str, source: onnx.NodeProto, inputs: list[str], outputs: list[str],
             consts: list[str] = (), attrs: dict | None = None, placement: int = model_pb2.NPU,
             onnx_op: str | None = None, name: str | None = None) -> model_pb2.Node:
        base = name or source.name or outputs[0]
        node_name, i = base, 1
        while node_name in self.node_names:
            i += 1
            node_name = f"{base}#{i}"
        self.node_names.add(node_name)
        node = self.program.nodes.add(name=node_name, op=op, inputs=inputs, outputs=outputs,
                                      constants=list(consts), placement=placement,
                                      onnx_op=onnx_op or source.op_type, onnx_nodes=[source.name])
        for key, value in (attrs or {}).items():
            node.attrs[key].CopyFrom(prog.make_attr(value))
        for out in outputs:
            self.tensor_infos[out].producer = node_name
        return node

    def emit_requant(self, source: onnx.NodeProto, x: QValue, out_name: str, scale: float, zp: int) -> None:
        """int8 -> int8 with new quantization parameters, as a Lut."""
        codes = np.arange(-128, 128, dtype=np.int32)
        real = (codes - x.zp).astype(np.float32) * np.float32(x.scale)
        table, _ = quantize(real, scale, zp)
        const = self.add_const(f"{out_name}/requant_table", table)
        self.emit("Lut", source, [x.name], [out_name], [const], onnx_op="Requantize",
                  name=f"{source.name or out_name}/requant")

    def emit_cpu(self, node: onnx.NodeProto, reason: str = "", read: list[str | None] | None = None,
                 float_outputs: bool = False) -> None:
        """Run ``node`` in float32 on the board's CPU between dequantize and quantize.

        ``read`` overrides the program tensor or constant read at an input position (None:
        the usual one); ``float_outputs`` keeps every output float32 instead of quantizing it.
        """
        if not registry.has_cpu_kernel(node.op_type) or node.domain not in ("", "ai.onnx"):
            raise CompileError(f"op is not supported on the integer path{reason} and has no CPU kernel; "
                               "remove or replace it before quantizing", node=node.name, op=node.op_type)
        inputs = []
        for index, name in enumerate(node.input):
            if read is not None and read[index] is not None:
                inputs.append(read[index])
                continue
            if not name:
                inputs.append("")
                continue
            value = self.value(name, node)
            if isinstance(value, (QValue, FValue)):
                inputs.append(value.name)
            elif isinstance(value, QConst):
                inputs.append(self.add_const(f"{name}/dequantized", value.real()))
            else:
                array = np.asarray(value)
                if array.dtype == np.float64:
                    array = array.astype(np.float32)
                elif array.dtype == np.int32 and array.ndim > 0:
                    array = array.astype(np.int64)
                inputs.append(self.add_const(name, array))
        outputs = []
        for out in node.output:
            q = None if float_outputs else self.define_q_output(out, "")
            if q is not None:
                outputs.append(q.name)
            else:
                self.add_tensor(out, np.float32, self.shape(out))
                self.values[out] = FValue(out)
                outputs.append(out)
        attrs = attrs_of(node)
        attrs = {k: v for k, v in attrs.items() if not isinstance(v, np.ndarray)}
        attrs["_opset"] = self.graph.opset
        attrs["_num_outputs"] = len(node.output)
        self.emit(node.op_type, node, inputs, outputs, attrs=attrs, placement=model_pb2.CPU)
