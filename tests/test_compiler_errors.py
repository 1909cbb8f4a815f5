"""Bad ONNX input to the compiler: one clear CompileError naming the node, op and what to do."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import synthetic
from qverify.simulator.compiler import compile_model
from qverify.simulator.errors import CompileError


@pytest.fixture(scope="module")
def quant_model(tmp_path_factory) -> onnx.ModelProto:
    path = synthetic.quantize(synthetic.small_cnn(), tmp_path_factory.mktemp("err") / "q.onnx")
    return onnx.load(str(path))


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def test_a_float_model_is_refused():
    with pytest.raises(CompileError, match="not quantized.*quantize_static"):
        compile_model(synthetic.small_cnn())


def test_inconsistent_quant_params_name_the_node(quant_model):
    model = _copy(quant_model)
    # Make one activation DequantizeLinear read a scale different from its QuantizeLinear's.
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
              and not any(i.name == n.input[0] for i in model.graph.initializer))
    scale = numpy_helper.from_array(np.array(0.123, dtype=np.float32), "wrong_scale")
    model.graph.initializer.append(scale)
    dq.input[1] = "wrong_scale"
    with pytest.raises(CompileError) as err:
        compile_model(model)
    assert dq.name in str(err.value) and "inconsistent quant params" in str(err.value)


def test_an_op_without_any_kernel_is_named_with_a_hint(quant_model):
    model = _copy(quant_model)
    # Insert an op neither the integer path nor the CPU knows: a custom-domain op.
    node = next(n for n in model.graph.node if n.op_type == "GlobalAveragePool")
    node.op_type, node.domain = "FancyPool", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(CompileError) as err:
        compile_model(model)
    message = str(err.value)
    assert node.name in message and "FancyPool" in message


def test_an_unreadable_opset_is_refused(quant_model):
    model = _copy(quant_model)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = 99
    with pytest.raises(CompileError, match="opset 99"):
        compile_model(model)


def test_a_dynamic_spatial_dimension_asks_for_input_shape(quant_model):
    model = _copy(quant_model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_param = "H"
    with pytest.raises(CompileError, match=r"--input-shape x:"):
        compile_model(model)
    program = compile_model(model, input_shapes={"x": [1, 3, 16, 16]})
    first_input = next(t for t in program.tensors if t.name == program.inputs[0])
    assert list(first_input.shape) == [1, 3, 16, 16]


def test_input_shape_for_an_unknown_input(quant_model):
    with pytest.raises(CompileError, match="not a model input"):
        compile_model(quant_model, input_shapes={"nope": [1, 3, 16, 16]})


def test_int16_activations_are_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int16), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    with pytest.raises(CompileError, match="int16 quantization is not supported"):
        compile_model(model)


def test_run_on_cpu_gives_the_same_answer_in_float(quant_model):
    """Forcing a node onto the CPU changes the arithmetic, not the model: results stay within 1 LSB."""
    from qverify.simulator import Program, Simulator, quantize

    npu = Program(compile_model(quant_model))
    cpu = Program(compile_model(quant_model, run_on_cpu=["conv1", "dwconv"]))
    assert {n.name for n in cpu.nodes if n.on_cpu} >= {"conv1", "dwconv"}
    inp = npu.inputs[0]
    q, _ = quantize(synthetic.calibration(seed=3, count=1)[0]["x"], inp.scale, inp.zero_point)
    feed = {inp.name: q.transpose(0, 2, 3, 1)}
    a = Simulator(npu).run(feed).outputs
    b = Simulator(cpu).run(feed).outputs
    for name in a:
        assert np.abs(a[name].astype(int) - b[name].astype(int)).max() <= 2
