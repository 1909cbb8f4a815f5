"""Semantic validation at load: compiled programs pass, each broken kernel assumption is refused by name."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from qverify.simulator import Simulator, modelfile
from qverify.simulator.errors import ModelFormatError, ProgramError
from qverify.simulator.program import make_attr, make_constant
from qverify.v1 import model_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz_corpus"))
from reproducers import tiny_program  # noqa: E402


def _refused(program: model_pb2.Program, *fragments: str) -> str:
    with pytest.raises(ProgramError) as info:
        modelfile.decode_program(modelfile.encode(program), "m.bin")
    message = str(info.value)
    assert message.startswith("m.bin: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.mark.parametrize("fmt,activation,per_channel", [("QDQ", "hardswish", False), ("QDQ", "silu", True),
                                                        ("QOperator", "hardswish", True)])
def test_compiled_programs_pass_and_run(tmp_path, fmt, activation, per_channel):
    from synthetic import quantize, small_cnn

    from qverify.simulator.compiler import compile_model

    onnx_path = quantize(small_cnn(activation=activation), tmp_path / "q.onnx", fmt=fmt, per_channel=per_channel)
    program = modelfile.decode_program(modelfile.encode(compile_model(onnx_path)))
    feeds = {t.name: np.zeros(t.shape[:1] + t.shape[2:] + t.shape[1:2], np.int8) for t in program.inputs}
    assert Simulator(program).run(feeds).outputs


def test_conv_group_must_divide_channels():
    p = tiny_program()
    p.nodes[0].attrs["group"].CopyFrom(make_attr(2))
    _refused(p, "node 'conv' (Conv)", "group 2")


def test_conv_zero_stride_is_refused():
    p = tiny_program()
    p.nodes[0].attrs["strides"].CopyFrom(make_attr([0, 1]))
    _refused(p, "node 'conv' (Conv)", "'strides' holds 0")


def test_conv_output_shape_must_match_declaration():
    p = tiny_program()
    p.nodes[0].attrs["pads"].CopyFrom(make_attr([0, 0, 0, 0]))
    _refused(p, "output 'y' is declared int8[1, 4, 8, 8]", "int8[1, 4, 6, 6]")


def test_weight_shape_must_fit_bias():
    p = tiny_program()
    p.constants[1].CopyFrom(make_constant("b", np.zeros(5, np.int32)))
    _refused(p, "constant bias has shape [5], expected [4]")


def test_zero_point_out_of_int8_range():
    p = tiny_program()
    p.tensors[0].quant.zero_point = 300
    _refused(p, "tensor 'x'", "zero point 300")


def test_unknown_op_is_refused_by_name():
    p = tiny_program()
    p.nodes[1].op = "Frobnicate"
    with pytest.raises(ModelFormatError, match="node 'lut' uses op 'Frobnicate'"):
        modelfile.decode_program(modelfile.encode(p), "m.bin")


def test_node_writing_a_graph_input_is_refused():
    p = tiny_program()
    p.nodes[1].outputs[0] = "x"
    p.nodes[1].inputs[0] = "y"
    _refused(p, "node 'lut' (Lut)", "writes 'x'")


def test_rounding_mode_must_be_known():
    p = tiny_program()
    p.target.rounding = 7
    _refused(p, "unknown rounding mode 7")


def _cpu_node(p: model_pb2.Program, op: str, inputs: list[str], attrs: dict) -> None:
    p.tensors.add(name="c", dtype=model_pb2.FLOAT32, shape=[1, 4, 8, 8])
    p.nodes.add(name="cpu", op=op, onnx_op=op, inputs=inputs, outputs=["c"], placement=model_pb2.CPU,
                attrs={k: make_attr(v) for k, v in attrs.items()})
    p.outputs[:] = ["c"]
    p.onnx_outputs[:] = ["c"]


def test_cpu_node_that_cannot_run_on_its_shapes_is_refused():
    p = tiny_program()
    _cpu_node(p, "Softmax", ["z"], {"axis": 9, "_opset": 17})
    _refused(p, "node 'cpu' (CPU Softmax)", "axis")


def test_cpu_node_with_a_runtime_shape_parameter_is_refused():
    p = tiny_program()
    p.tensors.add(name="s", dtype=model_pb2.INT64, shape=[4])
    p.inputs.append("s")
    p.onnx_inputs.append("s")
    _cpu_node(p, "Reshape", ["z", "s"], {"_opset": 17})
    _refused(p, "node 'cpu' (CPU Reshape)", "computed at run time")


def test_valid_cpu_node_passes_and_runs():
    p = tiny_program()
    _cpu_node(p, "Relu", ["z"], {"_opset": 17})
    program = modelfile.decode_program(modelfile.encode(p))
    out = Simulator(program).run({"x": np.ones((1, 8, 8, 3), np.int8)}).outputs["c"]
    assert out.shape == (1, 4, 8, 8) and out.min() >= 0
