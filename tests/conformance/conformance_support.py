"""Shared machinery of the conformance tests: ONNX node-test data, feeding and reading the simulator.

The onnx wheel does not ship its backend node-test data, so it is regenerated offline:
the node-test modules of the ops under test are imported (each import runs that op's
``export*`` functions, which fill ``onnx.backend.test.case.node._NodeTestCases``) and
``onnx.backend.test.cmd_tools.generate_data`` writes them in the usual layout
(``node/<case>/model.onnx`` + ``test_data_set_0/{input,output}_<i>.pb``). Importing only
the modules needed (instead of ``collect_testcases()``, which imports all ~200 and takes
~12 s) keeps this fast; the cases are the same objects either way.
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import types
import warnings
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import onnx
from onnx import numpy_helper

from qverify.simulator import Program, Simulator, feed_shape, quantize
from qverify.simulator.program import TensorView
from qverify.v1 import model_pb2

NODE_PACKAGE = "onnx.backend.test.case.node"

# Per-op outcome counts of the quantized float node tests, printed by conftest's terminal summary.
STATS: dict[str, dict[str, int]] = {}

# Op type -> module of onnx.backend.test.case.node holding its cases.
MODULES = {
    "QLinearConv": "qlinearconv", "QLinearMatMul": "qlinearmatmul", "MatMulInteger": "matmulinteger",
    "ConvInteger": "convinteger", "Conv": "conv", "ConvTranspose": "convtranspose", "Gemm": "gemm",
    "MatMul": "matmul", "Add": "add", "Mul": "mul", "Concat": "concat", "Relu": "relu", "Clip": "clip",
    "LeakyRelu": "leakyrelu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSigmoid": "hardsigmoid",
    "HardSwish": "hardswish", "MaxPool": "maxpool", "AveragePool": "averagepool",
    "GlobalAveragePool": "globalaveragepool", "Resize": "resize", "Reshape": "reshape", "Flatten": "flatten",
    "Transpose": "transpose", "Slice": "slice", "Split": "split", "Softmax": "softmax",
}
INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger")
FLOAT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "Relu", "Clip", "LeakyRelu",
             "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "MaxPool", "AveragePool", "GlobalAveragePool",
             "Resize", "Reshape", "Flatten", "Transpose", "Slice", "Split", "Softmax")


def _node_module():
    return importlib.import_module(NODE_PACKAGE)


def node_testcases(op_types) -> list:
    """The onnx node-test cases of ``op_types``: one node of that op, no function expansions."""
    node = _node_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference implementations warn on inf/nan cases
        for op in op_types:
            importlib.import_module(f"{NODE_PACKAGE}.{MODULES[op]}")
    wanted = set(op_types)
    cases, seen = [], set()
    for case in node._NodeTestCases:
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in wanted and case.name not in seen:
            seen.add(case.name)
            cases.append(case)
    return cases


def generate_node_data(cases, output: pathlib.Path) -> pathlib.Path:
    """Write ``cases`` with onnx's own ``generate_data`` (it iterates ``model_test.collect_testcases()``)."""
    from onnx.backend.test import cmd_tools

    fake_collector = types.SimpleNamespace(collect_testcases=lambda: list(cases))
    with mock.patch.object(cmd_tools, "model_test", fake_collector):
        cmd_tools.generate_data(argparse.Namespace(output=str(output)))
    return output / "node"


@dataclass
class NodeCase:
    """One generated case read back from disk."""
    name: str
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]  # graph input name -> value
    outputs: dict[str, np.ndarray]  # graph output name -> expected value
    op_type: str = field(init=False)

    def __post_init__(self) -> None:
        self.op_type = self.model.graph.node[0].op_type


def load_case(root: pathlib.Path, name: str) -> NodeCase:
    case_dir = root / name
    model = onnx.load(str(case_dir / "model.onnx"))
    data_dir = case_dir / "test_data_set_0"

    def read(kind: str, count: int) -> list[np.ndarray]:
        arrays = []
        for i in range(count):
            tensor = onnx.TensorProto()
            tensor.ParseFromString((data_dir / f"{kind}_{i}.pb").read_bytes())
            arrays.append(numpy_helper.to_array(tensor))
        return arrays

    ins = read("input", len(model.graph.input))
    outs = read("output", len(model.graph.output))
    return NodeCase(name, model,
                    {vi.name: a for vi, a in zip(model.graph.input, ins)},
                    {vi.name: a for vi, a in zip(model.graph.output, outs)})


def with_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray], keep: set[str],
                      max_opset: int | None = None) -> onnx.ModelProto:
    """Copy of ``model`` where every graph input not in ``keep`` is an initializer holding its value."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept = [vi for vi in graph.input if vi.name in keep]
    for vi in graph.input:
        if vi.name not in keep:
            graph.initializer.append(numpy_helper.from_array(np.asarray(values[vi.name]), vi.name))
    del graph.input[:]
    graph.input.extend(kept)
    out.ir_version = min(out.ir_version, 10)
    if max_opset is not None:
        for imp in out.opset_import:
            if imp.domain in ("", "ai.onnx") and imp.version > max_opset:
                # Only types were added to these ops after max_opset: same semantics.
                imp.version = max_opset
    return out


# ---- feeding and reading the simulator in its conventions -------------------------

def to_program_int8(value: np.ndarray) -> np.ndarray:
    """A raw uint8/int8 ONNX tensor as the simulator's int8 (uint8 shifted by -128)."""
    value = np.asarray(value)
    if value.dtype == np.uint8:
        return (value.astype(np.int16) - 128).astype(np.int8)
    if value.dtype == np.int8:
        return value
    raise TypeError(f"not an 8-bit integer tensor: {value.dtype}")


def board_feed(tensor: TensorView, logical: np.ndarray) -> np.ndarray:
    """Logical (NCHW) int8 array -> the layout the board takes (NHWC for 4-D)."""
    if feed_shape(tensor) != tensor.shape:
        return np.ascontiguousarray(logical.transpose(0, 2, 3, 1))
    return logical


def feeds_for(program: Program, onnx_values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Program feeds from ONNX input values (raw integers, or floats to quantize like QuantizeLinear)."""
    feeds = {}
    for tensor, onnx_name in zip(program.inputs, program.proto.onnx_inputs):
        value = np.asarray(onnx_values[onnx_name])
        if value.dtype in (np.uint8, np.int8):
            logical = to_program_int8(value)
        elif tensor.quantized:
            logical, _ = quantize(value, tensor.scale, tensor.zero_point)
        else:
            logical = value.astype(tensor.dtype)
        feeds[tensor.name] = board_feed(tensor, logical)
    return feeds


def onnx_view(tensor: TensorView, value: np.ndarray) -> np.ndarray:
    """A program output as the ONNX tensor it stands for (uint8 = int8 + 128)."""
    if tensor.info.onnx_dtype == onnx.TensorProto.UINT8:
        return (value.astype(np.int16) + 128).astype(np.uint8)
    return value


def run_program(program: Program, onnx_values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run and return outputs keyed by ONNX output name, in the program's own int domain."""
    result = Simulator(program).run(feeds_for(program, onnx_values))
    return {onnx_name: result.outputs[t.name] for t, onnx_name in zip(program.outputs, program.proto.onnx_outputs)}


def cpu_nodes(program: Program) -> list[str]:
    return [f"{n.name} ({n.onnx_op})" for n in program.nodes if n.placement == model_pb2.CPU]
