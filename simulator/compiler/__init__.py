"""Compiler: quantized ONNX (QDQ or QOperator) -> qverify program (model.bin).

``compile_model(source, target=..., input_shapes=..., run_on_cpu=..., preprocess=...,
float_model=...)`` returns the Program protobuf; ``qverify.simulator.modelfile.save`` writes model.bin.
This is the only part of the simulator that imports onnx.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from qverify._version import __version__
from qverify.simulator import fixedpoint, targets
from qverify.simulator.compiler import (
    float_island,
    lower_elementwise,
    lower_linear,
    lower_movement,
    lower_pool,
    lower_resize_softmax,
)
from qverify.simulator.compiler.fuse import fuse_elementwise
from qverify.simulator.compiler.context import CPU_HINT, FValue, Lowering, QConst, QValue, q_params_from
from qverify.simulator.compiler.graph import Graph, build_graph
from qverify.simulator.compiler.preprocess import PreprocessSpec, apply_preprocess
from qverify.simulator.errors import CompileError
from qverify.simulator.ops import registry
from qverify.v1 import model_pb2

__all__ = ["compile_model", "PreprocessSpec", "CompileError", "LOWERINGS"]

Lower = Callable[[Lowering, onnx.NodeProto], bool]

# ONNX op -> integer-path lowering. A lowering returns False when the node does not fit
# the integer path (e.g. its output is not quantized); the node then becomes a Lut if it
# is elementwise, else runs on the CPU.
LOWERINGS: dict[str, Lower] = {
    "Conv": lower_linear.lower_conv,
    "ConvTranspose": lower_linear.lower_conv_transpose,
    "MatMul": lower_linear.lower_matmul,
    "Gemm": lower_linear.lower_matmul,
    "ConvInteger": lower_linear.lower_integer,
    "MatMulInteger": lower_linear.lower_integer,
    "Add": lower_elementwise.lower_binary,
    "Mul": lower_elementwise.lower_binary,
    "Concat": lower_elementwise.lower_concat,
    "MaxPool": lower_pool.lower_maxpool,
    "AveragePool": lower_pool.lower_avgpool,
    "GlobalAveragePool": lower_pool.lower_global_avgpool,
    "Resize": lower_resize_softmax.lower_resize,
    "Upsample": lower_resize_softmax.lower_resize,
    "Softmax": lower_resize_softmax.lower_softmax,
    **{op: lower_movement.lower_movement for op in (*lower_movement.RESHAPES, "Transpose", "Slice", "Split",
                                                     "Gather", "Pad")},
}


def _parse_inputs(ctx: Lowering, graph: Graph) -> None:
    for name in graph.inputs:
        shape = ctx.shape(name)
        elem = graph.elem_types.get(name)
        consumers = graph.consumers.get(name, [])
        qs = [c for c in consumers if c.op_type == "QuantizeLinear"]
        if elem in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8):
            # A raw integer input: the quantization its DequantizeLinear readers agree on, else
            # (ConvInteger / MatMulInteger style) scale 1, zero point 0.
            scale, zp = 1.0, 0
            dqs = [c for c in consumers if c.op_type == "DequantizeLinear"]
            if dqs and len(dqs) == len(consumers):
                params = set()
                for dq in dqs:
                    s, z, _ = q_params_from(graph, dq)
                    params.add((float(np.float32(s.reshape(-1)[0])), int(z.reshape(-1)[0]), s.size))
                if len(params) == 1 and next(iter(params))[2] == 1:
                    scale, zp, _ = params.pop()
            ctx.add_tensor(name, np.int8, shape, scale, zp, onnx_dtype=elem)
            ctx.values[name] = QValue(name, scale, zp)
            ctx.program.inputs.append(name)
        elif qs and len(qs) == len(consumers):
            ctx.define_q_output(name, "")
            first = ctx.values[name]
            ctx.program.inputs.append(first.name)
            for other in qs[1:]:  # more QuantizeLinears of the same input
                scale, zp, elem = q_params_from(graph, other)
                s, z = float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])
                if np.float32(s) == np.float32(first.scale) and z == first.zp:
                    ctx.values[other.output[0]] = first
                else:  # other parameters: requantize the int8 input (a Lut)
                    ctx.add_tensor(other.output[0], np.int8, shape, s, z, onnx_float_name=name, onnx_dtype=elem)
                    ctx.emit_requant(other, first, other.output[0], s, z)
                    ctx.values[other.output[0]] = QValue(other.output[0], s, z)
        elif elem == onnx.TensorProto.FLOAT:
            ctx.add_tensor(name, np.float32, shape)
            ctx.values[name] = FValue(name)
            ctx.program.inputs.append(name)
        else:
            raise CompileError(f"input '{name}' has element type "
                               f"{onnx.TensorProto.DataType.Name(elem or 0).lower()}; float32, uint8 and int8 "
                               "inputs are supported")
        ctx.program.onnx_inputs.append(name)


def _lower_dequantize(ctx: Lowering, graph: Graph, node: onnx.NodeProto) -> None:
    scale, zp, elem = q_params_from(graph, node)
    src = node.input[0]
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if src in graph.consts:
        raw = np.asarray(graph.consts[src])
        wide = raw.dtype == np.int32
        values = raw.astype(np.int32) - 128 if raw.dtype == np.uint8 else raw.astype(np.int32)
        ctx.values[node.output[0]] = QConst(values, scale, zp, axis % max(raw.ndim, 1) if scale.size > 1 else None,
                                            wide)
        return
    value = ctx.value(src, node)
    if not isinstance(value, QValue):
        raise CompileError("DequantizeLinear reads a tensor that is not 8-bit quantized", node=node.name,
                           op=node.op_type)
    if scale.size != 1:
        raise CompileError("per-channel quantization of activations is not supported", node=node.name,
                           op=node.op_type)
    if np.float32(scale.reshape(-1)[0]) != np.float32(value.scale) or int(zp.reshape(-1)[0]) != value.zp:
        raise CompileError(f"inconsistent quant params: DequantizeLinear uses scale {float(scale.reshape(-1)[0]):.6g} "
                           f"zero point {int(zp.reshape(-1)[0])}, the tensor was quantized with scale "
                           f"{value.scale:.6g} zero point {value.zp}", node=node.name, op=node.op_type,
                           hint="re-quantize the model")
    ctx.values[node.output[0]] = value


def _lower_quantize(ctx: Lowering, graph: Graph, node: onnx.NodeProto) -> None:
    out = node.output[0]
    if out in ctx.values:
        return  # declared by its producer (the usual case)
    scale, zp, elem = q_params_from(graph, node)
    if scale.size != 1:
        raise CompileError("per-channel quantization of activations is not supported", node=node.name,
                           op=node.op_type)
    value = ctx.value(node.input[0], node)
    s, z = float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])
    if isinstance(value, QValue):  # DequantizeLinear -> QuantizeLinear with new parameters
        ctx.add_tensor(out, np.int8, ctx.shape(out), s, z, onnx_dtype=elem)
        ctx.emit_requant(node, value, out, s, z)
        ctx.values[out] = QValue(out, s, z)
    elif isinstance(value, FValue):  # float activation quantized on the CPU
        ctx.add_tensor(out, np.int8, ctx.shape(out), s, z, onnx_float_name=node.input[0], onnx_dtype=elem)
        # The CPU passes the float through (Identity); the executor quantizes CPU outputs
        # declared int8, which is exactly QuantizeLinear.
        emitted = ctx.emit("Identity", node, [value.name], [out], attrs={"_opset": graph.opset},
                           placement=model_pb2.CPU, onnx_op="Identity")
        ctx.values[out] = QValue(out, s, z)
        if value.name in ctx.island_outputs:
            ctx.island_quantizers.append(emitted.name)
    else:
        raise CompileError("QuantizeLinear of a constant is not supported; fold it into an initializer",
                           node=node.name, op=node.op_type)


def _lower_compute(ctx: Lowering, node: onnx.NodeProto) -> None:
    if node.name in ctx.run_on_cpu:
        if ctx.float_source is not None:
            float_island.emit(ctx, node)
        else:
            ctx.emit_cpu(node)
        return
    if node.name in ctx.island_producers:
        float_island.emit_producer(ctx, node)
        return
    if node.domain not in ("", "ai.onnx"):
        raise CompileError(f"op of domain '{node.domain}' is not supported", node=node.name, op=node.op_type)
    lower = LOWERINGS.get(node.op_type)
    try:
        if lower is not None and lower(ctx, node):
            return
    except ValueError as exc:  # e.g. a negative or huge requantization multiplier
        if not registry.has_cpu_kernel(node.op_type):
            raise CompileError(f"cannot be put on the integer path ({exc})", node=node.name, op=node.op_type,
                               hint=CPU_HINT.format(node=node.name)) from None
        ctx.emit_cpu(node, reason=f" ({exc})")
        return
    if lower_elementwise.lower_lut(ctx, node):
        return
    ctx.emit_cpu(node, reason="" if lower is None else " with these operands")


def _outputs(ctx: Lowering, graph: Graph) -> None:
    for name in graph.outputs:
        value = ctx.values.get(name)
        if ctx.float_source is not None:
            value = float_island.graph_output(ctx, name) or value
        if value is None and name in graph.consts:
            raise CompileError(f"output '{name}' is a constant; nothing to run")
        if not isinstance(value, (QValue, FValue)):
            raise CompileError(f"output '{name}' is not produced by the program")
        ctx.program.outputs.append(value.name)
        ctx.program.onnx_outputs.append(name)


def compile_model(source: str | Path | bytes | onnx.ModelProto, target: str = targets.DEFAULT_TARGET,
                  input_shapes: dict[str, list[int]] | None = None, run_on_cpu: Iterable[str] = (),
                  preprocess: PreprocessSpec | None = None, name: str | None = None,
                  fuse: bool = True, float_model: str | Path | bytes | onnx.ModelProto | None = None,
                  float_producers: bool = True) -> model_pb2.Program:
    """Compile a quantized ONNX model to a program; raises CompileError with a hint on bad input.

    ``fuse`` merges elementwise int8 subgraphs of one tensor into single lookup tables
    (bit-identical results; the fused intermediates are no longer dumped).
    ``float_model`` (the float model ``source`` was quantized from) turns the ``run_on_cpu``
    nodes into float islands (see float_island.py): float weights, float32 between them and
    from their producers (which ``float_producers`` also puts on the CPU, as quant.onnx
    computes them). Without it, or with no ``run_on_cpu`` node, the program is as before.
    """
    profile = targets.get_target(target)
    graph = build_graph(source, input_shapes)
    forced = set(run_on_cpu)
    node_names = {n.name for n in graph.nodes}
    unknown = sorted(forced - node_names)
    if unknown:
        raise CompileError(f"--run-on-cpu names node '{unknown[0]}', which is not in the model "
                           "(see the node names with 'qverify info' or Netron)")
    source_float = float_island.FloatSource(float_model) if float_model is not None else None
    ctx = Lowering(graph, profile, forced, source_float)
    if source_float is not None and float_producers:
        ctx.island_producers = float_island.producers(graph, forced)
    _parse_inputs(ctx, graph)
    for node in graph.nodes:
        if node.op_type == "DequantizeLinear":
            _lower_dequantize(ctx, graph, node)
        elif node.op_type == "QuantizeLinear":
            _lower_quantize(ctx, graph, node)
        else:
            _lower_compute(ctx, node)
    _outputs(ctx, graph)
    if source_float is not None:
        float_island.prune_quantizers(ctx)
    program = ctx.program
    program.name = name or (Path(source).stem if isinstance(source, (str, Path)) else graph.model.graph.name)
    program.source_sha256 = graph.source_sha256
    program.source_format = graph.source_format
    program.compiler_version = __version__
    if preprocess is not None:
        apply_preprocess(ctx, preprocess)
    if fuse:
        with fixedpoint.rounding(profile.rounding):
            fuse_elementwise(program)
    _prune_unused(program)
    return program


def _prune_unused(program: model_pb2.Program) -> None:
    """Drop constants no node reads (e.g. weights of nodes forced onto the CPU)."""
    used = {c for n in program.nodes for c in n.constants} | {i for n in program.nodes for i in n.inputs}
    keep = [c for c in program.constants if c.name in used]
    del program.constants[:]
    program.constants.extend(keep)
