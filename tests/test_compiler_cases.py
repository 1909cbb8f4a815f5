"""Hand-built QDQ graphs for constructs the real models do not exercise: each compiles,
runs, and agrees with onnxruntime within 1 LSB."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qverify.simulator import Program, Simulator, dequantize, quantize
from qverify.simulator.compiler import compile_model


def _q(name: str, out: str, scale: float, zp: int) -> list:
    return [helper.make_node("QuantizeLinear", [name, f"{out}_s", f"{out}_z"], [out], name=f"Q_{out}")], [
        numpy_helper.from_array(np.array(scale, np.float32), f"{out}_s"),
        numpy_helper.from_array(np.array(zp, np.uint8), f"{out}_z")]


def _dq(q: str, out: str) -> onnx.NodeProto:
    return helper.make_node("DequantizeLinear", [q, f"{q}_s", f"{q}_z"], [out], name=f"DQ_{out}")


def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "case", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _compare(model: onnx.ModelProto, x: np.ndarray, lsb: float = 1.0) -> Program:
    program = Program(compile_model(model))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})
    inp = program.inputs[0]
    if inp.quantized:
        q, _ = quantize(x, inp.scale, inp.zero_point)
        feed = q.transpose(0, 2, 3, 1) if q.ndim == 4 else q
    else:
        feed = x
    got = Simulator(program).run({inp.name: feed}).outputs
    for tensor, reference in zip(program.outputs, want):
        value = got[tensor.name]
        value = dequantize(value, tensor.scale, tensor.zero_point) if tensor.quantized else value
        step = tensor.scale if tensor.quantized else 1e-5
        assert np.abs(value - reference).max() <= lsb * step + 1e-6, tensor.name
    return program


def test_split_outputs_requantized_differently_read_their_own_part():
    nodes, inits = _q("x", "xq", 0.05, 128)
    nodes += [_dq("xq", "xf"), helper.make_node("Split", ["xf", "sizes"], ["a", "b"], name="split", axis=1)]
    inits.append(numpy_helper.from_array(np.array([2, 2], np.int64), "sizes"))
    for name, scale in (("a", 0.1), ("b", 0.02)):
        qn, qi = _q(name, f"{name}q", scale, 128)
        nodes += qn + [_dq(f"{name}q", f"{name}_out")]
        inits += qi
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3])],
                   [helper.make_tensor_value_info(f"{n}_out", TensorProto.FLOAT, [1, 2, 3]) for n in "ab"])
    x = np.linspace(-2.5, 2.5, 12, dtype=np.float32).reshape(1, 4, 3)
    _compare(model, x)


def test_a_float_input_quantized_on_the_cpu_runs():
    """x feeds a float op and a QuantizeLinear: x stays a float input, quantized on the CPU."""
    nodes, inits = _q("x", "xq", 0.05, 128)
    nodes += [_dq("xq", "xf"), helper.make_node("Abs", ["x"], ["ax"], name="abs"),
              helper.make_node("Add", ["xf", "ax"], ["y"], name="add")]
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])])
    program = _compare(model, np.linspace(-3, 3, 6, dtype=np.float32).reshape(1, 6))
    assert program.inputs[0].dtype == np.float32
    assert any(n.on_cpu and n.onnx_op == "Identity" for n in program.nodes)


def test_negative_pads_crop_on_the_cpu():
    nodes, inits = _q("x", "xq", 0.05, 128)
    nodes += [_dq("xq", "xf"), helper.make_node("Pad", ["xf", "pads"], ["p"], name="crop")]
    inits.append(numpy_helper.from_array(np.array([0, -1, 0, -1], np.int64), "pads"))
    qn, qi = _q("p", "pq", 0.05, 128)
    nodes += qn + [_dq("pq", "y")]
    inits += qi
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    program = _compare(model, np.linspace(-3, 3, 6, dtype=np.float32).reshape(1, 6))
    assert any(n.on_cpu and n.onnx_op == "Pad" for n in program.nodes)


def test_model_bin_permissions_follow_the_umask(tmp_path):
    import os
    import stat

    from qverify.simulator.modelfile import save
    from qverify.v1 import model_pb2

    old = os.umask(0o022)
    try:
        save(model_pb2.Program(name="m"), tmp_path / "m.bin")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.bin").stat().st_mode) == 0o644
