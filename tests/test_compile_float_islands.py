"""Float islands: ``compile_model(..., run_on_cpu=[...], float_model=...)``.

The damaged chain of test_debug_sensitivity (conv_b reads a 16x coarser activation,
conv_c has 16x coarser weights) is compiled with its damaged nodes on the CPU. With the
float model they run as the sensitivity analysis measured them (float weights, float32
between island nodes and from their producers), so the board moves towards the float
model; without it they keep quant.onnx's damaged int8 values and nothing improves.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from qverify.simulator import Program, Simulator, dequantize, quantize
from qverify.simulator.compiler import compile_model
from qverify.simulator.errors import CompileError
from test_debug_sensitivity import chain, run_cli  # noqa: F401 (chain is a fixture)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.uniform(-1, 1, (1, 4, 12, 12)).astype(np.float32) for _ in range(4)]


def _board(program: Program, x: np.ndarray) -> np.ndarray:
    """The program's output for float input ``x`` (quantized as the board's input), in real values."""
    inp, out = program.inputs[0], program.outputs[0]
    q, _ = quantize(x, inp.scale, inp.zero_point)
    value = Simulator(program).run({inp.name: q.transpose(0, 2, 3, 1)}).outputs[out.name]
    return dequantize(value, out.scale, out.zero_point) if out.quantized else value


def _cosine_to_float(paths, frames, **options) -> float:
    program = Program(compile_model(paths["bad"], **options))
    session = ort.InferenceSession(str(paths["float"]), providers=["CPUExecutionProvider"])
    cos = []
    for x in frames:
        ref = session.run(None, {"x": x})[0].ravel()
        got = _board(program, x).ravel()
        cos.append(float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got))))
    return float(np.mean(cos))


def test_the_damaged_node_in_float_brings_the_board_closer_to_the_float_model(chain, frames):  # noqa: F811
    before = _cosine_to_float(chain, frames)
    int8_cpu = _cosine_to_float(chain, frames, run_on_cpu=["conv_c"])
    island = _cosine_to_float(chain, frames, run_on_cpu=["conv_c"], float_model=chain["float"])
    both = _cosine_to_float(chain, frames, run_on_cpu=["conv_b", "conv_c"], float_model=chain["float"])
    assert abs(int8_cpu - before) < 1e-3  # the CPU with quant.onnx's damaged weights: no gain
    assert island - before > 0.3 * (1 - before)  # conv_c's float weights undo the weight damage
    assert both > 0.999 > island  # conv_b reading float too undoes the activation damage


def test_consecutive_island_nodes_pass_float32_and_read_the_float_weights(chain):  # noqa: F811
    program = Program(compile_model(chain["bad"], run_on_cpu=["conv_b", "conv_c"], float_model=chain["float"]))
    nodes = {n.name: n for n in program.nodes}
    conv_b, conv_c = nodes["conv_b"], nodes["conv_c"]
    assert conv_b.on_cpu and conv_c.on_cpu
    # conv_b -> (the float model's Relu, folded into quant.onnx's output range) -> conv_c, all float32.
    relu = next(n for n in program.nodes if n.inputs == [conv_b.outputs[0]])
    assert relu.onnx_op == "Relu" and relu.on_cpu and conv_c.inputs[0] == relu.outputs[0]
    for name in (conv_b.outputs[0], relu.outputs[0], conv_c.inputs[0]):
        assert not program.tensors[name].quantized and program.tensors[name].dtype == np.float32
    floats = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(chain["float"])).graph.initializer}
    for node in (conv_b, conv_c):
        np.testing.assert_array_equal(program.constants[node.inputs[1]], floats[f"{node.name}_w"])
        np.testing.assert_array_equal(program.constants[node.inputs[2]], floats[f"{node.name}_b"])
    # conv_c's output feeds the integer conv_d: quantized there with quant.onnx's parameters.
    conv_d = nodes["conv_d"]
    assert not conv_d.on_cpu and program.tensors[conv_d.inputs[0]].quantized
    # conv_b's producer conv_a hands its output over in float32 (its own quantization stays).
    relu_a = next(n for n in program.nodes if conv_b.inputs[0] in n.outputs)
    assert nodes["conv_a"].on_cpu and relu_a.onnx_op == "Relu" and relu_a.inputs == nodes["conv_a"].outputs
    assert not program.tensors[conv_b.inputs[0]].quantized


def test_every_node_in_float_computes_the_float_model_on_the_quantized_input(chain, frames):  # noqa: F811
    program = Program(compile_model(chain["bad"], run_on_cpu=["conv_a", "conv_b", "conv_c", "conv_d"],
                                    float_model=chain["float"]))
    session = ort.InferenceSession(str(chain["float"]), providers=["CPUExecutionProvider"])
    inp, out = program.inputs[0], program.outputs[0]
    for x in frames:
        seen = dequantize(quantize(x, inp.scale, inp.zero_point)[0], inp.scale, inp.zero_point)
        ref = session.run(None, {"x": seen})[0]
        got = _board(program, x).reshape(ref.shape)
        # Only the output's own quantization is left (y is quantized in quant.onnx): within 1 LSB.
        assert np.abs(got - ref).max() <= 1.01 * out.scale


def test_without_island_nodes_the_float_model_changes_nothing(chain):  # noqa: F811
    plain = compile_model(chain["bad"]).SerializeToString()
    assert compile_model(chain["bad"], float_model=chain["float"]).SerializeToString() == plain
    old = Program(compile_model(chain["bad"], run_on_cpu=["conv_c"]))
    conv_c = next(n for n in old.nodes if n.name == "conv_c")
    assert old.tensors[conv_c.inputs[0]].quantized  # no float model: the old int8 CPU node


def _edited(chain, tmp_path, edit) -> str:  # noqa: F811
    model = onnx.load(str(chain["float"]))
    edit(model)
    path = tmp_path / "other_float.onnx"
    onnx.save(model, str(path))
    return str(path)


def _shrink_conv_c_weights(model) -> None:
    init = next(i for i in model.graph.initializer if i.name == "conv_c_w")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:2], "conv_c_w"))


def _rename_conv_c(model) -> None:
    next(n for n in model.graph.node if n.name == "conv_c").name = "renamed"


@pytest.mark.parametrize("edit, words", [(_shrink_conv_c_weights, "shape [2, 4, 3, 3]"),
                                         (_rename_conv_c, "has no node of this name")])
def test_a_mismatched_float_model_is_a_one_line_error_naming_the_node(chain, tmp_path, edit, words):  # noqa: F811
    other = _edited(chain, tmp_path, edit)
    with pytest.raises(CompileError) as err:
        compile_model(chain["bad"], run_on_cpu=["conv_b", "conv_c"], float_model=other)
    text = str(err.value)
    assert "\n" not in text and "node 'conv_c' (Conv)" in text and words in text and "quantized from" in text


def test_quant_onnx_given_as_the_float_model_is_refused(chain):  # noqa: F811
    with pytest.raises(CompileError, match="node 'conv_c'.*input 1 is a quantized constant.*no constant"):
        compile_model(chain["bad"], run_on_cpu=["conv_c"], float_model=chain["bad"])


def test_verify_of_an_island_model_runs_and_the_board_matches_the_simulator(chain, tmp_path, capsys):  # noqa: F811
    from qverify.simulator.modelfile import save

    path = tmp_path / "island.bin"
    save(compile_model(chain["bad"], run_on_cpu=["conv_b", "conv_c"], float_model=chain["float"]), path)
    code, out, err = run_cli(capsys, "verify", "-m", f"{chain['float']},{chain['bad']},{path}", "-r")
    flat = " ".join(out.split())
    # The island layers differ from quant.onnx on purpose (float weights): inconsistent, not a crash.
    assert code == 1, err
    assert "board vs simulator: 1 output, 8 layers, bit-exact: PASSED" in flat
    assert "plain and dumping runs identical" in flat and "Traceback" not in err
    assert "board 0.9999" in flat  # the float verdict line: the board is close to the float model
