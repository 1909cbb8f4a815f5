"""ONNX's own backend node tests of the integer ops, bit-exact on the simulator.

Every case of QLinearConv, QLinearMatMul, MatMulInteger and ConvInteger in onnx's test
suite. In those tests weights, scales and zero points are graph inputs; the simulator
needs them constant, so every input but the activation(s) becomes an initializer. The
matmul ops also run a second time with both operands as activations (the MatMulAct
kernel). Inputs are fed in the simulator's conventions (uint8 -> int8 - 128, NHWC for
4-D) and outputs converted back (uint8 = int8 + 128); the expected outputs of the
node tests must be reproduced exactly, on the integer path (no node on the CPU).
"""
from __future__ import annotations

import numpy as np
import pytest

import conformance_support as support
from qverify.simulator import Program
from qverify.simulator.compiler import compile_model

# Indices of the activation inputs of each op (the rest become initializers).
ACTIVATIONS = {
    "QLinearConv": {"weights": (0,)},
    "ConvInteger": {"weights": (0,)},
    "QLinearMatMul": {"weights": (0,), "two_activations": (0, 3)},
    "MatMulInteger": {"weights": (0,), "two_activations": (0, 1)},
}

CASES = support.node_testcases(support.INTEGER_OPS)
PARAMS = [pytest.param(case.name, variant, id=f"{case.name}[{variant}]")
          for case in CASES for variant in ACTIVATIONS[case.model.graph.node[0].op_type]]


def test_all_integer_ops_have_cases():
    ops = {case.model.graph.node[0].op_type for case in CASES}
    assert ops == set(support.INTEGER_OPS)
    # onnx 1.23: 1 QLinearConv, 8 QLinearMatMul, 1 MatMulInteger, 2 ConvInteger.
    assert len(CASES) >= 12


@pytest.mark.parametrize("name, variant", PARAMS)
def test_integer_node_bit_exact(integer_node_data, name, variant):
    case = support.load_case(integer_node_data, name)
    acts = ACTIVATIONS[case.op_type][variant]
    node = case.model.graph.node[0]
    keep = {node.input[i] for i in acts}
    model = support.with_initializers(case.model, case.inputs, keep)
    program = Program(compile_model(model))
    assert not support.cpu_nodes(program), f"not on the integer path: {support.cpu_nodes(program)}"
    assert sorted(program.proto.onnx_inputs) == sorted(keep)
    outputs = support.run_program(program, {k: case.inputs[k] for k in keep})
    assert list(outputs) == list(case.outputs)
    for tensor, (name_out, expected) in zip(program.outputs, case.outputs.items()):
        got = support.onnx_view(tensor, outputs[name_out])
        assert got.dtype == expected.dtype, f"{name_out}: dtype {got.dtype}, expected {expected.dtype}"
        assert got.shape == expected.shape, f"{name_out}: shape {got.shape}, expected {expected.shape}"
        wrong = np.argwhere(got != expected)
        assert wrong.size == 0, (
            f"{name_out}: {len(wrong)} of {expected.size} elements differ, first at {tuple(wrong[0])}: "
            f"got {got[tuple(wrong[0])]}, expected {expected[tuple(wrong[0])]}")
