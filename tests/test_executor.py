"""The executor: input checks, dump sinks and layouts, per-layer counters."""
from __future__ import annotations

import numpy as np
import pytest

import synthetic
from qverify.simulator import InputError, Program, Simulator, layout, quantize
from qverify.simulator.compiler import compile_model
from qverify.simulator.program import make_attr, make_constant
from qverify.v1 import model_pb2


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Program:
    path = synthetic.quantize(synthetic.small_cnn(seed=2), tmp_path_factory.mktemp("exec") / "q.onnx")
    return Program(compile_model(path, target="sim-a32"))


def _feed(program: Program, seed: int = 4) -> dict[str, np.ndarray]:
    inp = program.inputs[0]
    q, _ = quantize(synthetic.calibration(seed=seed, count=1)[0]["x"], inp.scale, inp.zero_point)
    return {inp.name: q.transpose(0, 2, 3, 1)}


def test_inputs_are_checked_with_actionable_messages(program):
    sim = Simulator(program)
    name = program.inputs[0].name
    good = _feed(program)[name]
    with pytest.raises(InputError, match=rf"input '{name}' expects int8\[1, 16, 16, 3\], got float32\[1, 3, 16, 16\]"):
        sim.run({name: good.transpose(0, 3, 1, 2).astype(np.float32)})
    with pytest.raises(InputError, match="missing input"):
        sim.run({})
    with pytest.raises(InputError, match="unknown input 'images'"):
        sim.run({name: good, "images": good})


def test_dump_all_streams_every_tensor_once_in_both_layouts(program):
    sim = Simulator(program)
    seen = []

    def sink(dump):
        seen.append(dump.tensor.name)
        info = dump.tensor.info
        assert dump.valid.shape == tuple(info.shape)
        assert dump.aligned.shape == tuple(info.aligned_shape) == dump.aligned_shape
        assert dump.aligned_strides == tuple(info.aligned_strides)
        # The aligned buffer holds the valid tensor plus padding equal to the zero point.
        np.testing.assert_array_equal(layout.to_valid(dump.aligned, dump.valid.shape), dump.valid)
        if dump.valid.ndim == 4:
            assert dump.aligned_layout == "NHWC" and dump.aligned.shape[-1] % 32 == 0
            pad = dump.aligned[..., dump.valid.shape[1]:]
            assert pad.size == 0 or np.all(pad == dump.tensor.zero_point)

    result = sim.run(_feed(program), dump="all", dump_layout="both", sink=sink)
    assert sorted(seen) == sorted(program.tensors)
    assert len(seen) == len(set(seen))
    assert [layer.node for layer in result.layers] == [n.name for n in program.nodes]
    assert all(layer.seconds >= 0 and layer.placement in ("npu", "cpu") for layer in result.layers)


def test_dump_selection_by_name_and_unknown_names(program):
    sim = Simulator(program)
    wanted = [program.nodes[0].outputs[0]]
    got = []
    sim.run(_feed(program), dump=wanted, dump_layout="valid", sink=lambda d: got.append((d.tensor.name, d.aligned)))
    assert got == [(wanted[0], None)]
    with pytest.raises(InputError, match="no tensor named 'nope'"):
        sim.run(_feed(program), dump=["nope"], sink=lambda d: None)


def test_outputs_do_not_depend_on_dumping(program):
    sim = Simulator(program)
    plain = sim.run(_feed(program)).outputs
    dumped = sim.run(_feed(program), dump="all", dump_layout="both", sink=lambda d: None).outputs
    for name in plain:
        np.testing.assert_array_equal(plain[name], dumped[name])


def _matmul_program(k: int, x_zp: int, weight: int) -> Program:
    """One MatMul node, K inputs, one output: big enough K overflows an int32 accumulator."""
    proto = model_pb2.Program(target=model_pb2.Target(name="sim-a16", c_align=16, w_align=1))
    x = proto.tensors.add(name="x", onnx_name="x", dtype=model_pb2.INT8, shape=[1, k])
    x.quant.scale, x.quant.zero_point = 1.0, x_zp
    y = proto.tensors.add(name="y", onnx_name="y", dtype=model_pb2.INT8, shape=[1, 1], producer="mm")
    y.quant.scale, y.quant.zero_point = 1.0, 0
    proto.constants.extend([make_constant("w", np.full((k, 1), weight, np.int8)),
                            make_constant("b", np.zeros(1, np.int32)),
                            make_constant("m0", np.array([1 << 30], np.int32)),
                            make_constant("shift", np.array([-20], np.int32))])
    node = proto.nodes.add(name="mm", op="MatMul", inputs=["x"], outputs=["y"], constants=["w", "b", "m0", "shift"],
                           placement=model_pb2.NPU)
    for key, value in {"x_zp": x_zp, "y_zp": 0, "qmin": -128, "qmax": 127}.items():
        node.attrs[key].CopyFrom(make_attr(value))
    proto.inputs.append("x")
    proto.outputs.append("y")
    return Program(proto)


def test_accumulator_overflow_is_counted_and_saturated_never_wrapped():
    k = 70_000  # 70000 * 255 * 128 > 2^31
    program = _matmul_program(k, x_zp=127, weight=-128)
    result = Simulator(program).run({"x": np.full((1, k), -128, np.int8)})
    layer = result.layers[0]
    assert layer.acc_overflow == 1
    # Saturated at INT32_MAX, then scaled by 2^-21: 1023.99... -> clamps to 127 (not a wrapped negative).
    assert int(result.outputs["y"][0, 0]) == 127
    assert layer.saturated == 1


def test_no_overflow_reported_when_there_is_none():
    program = _matmul_program(1000, x_zp=0, weight=1)
    result = Simulator(program).run({"x": np.ones((1, 1000), np.int8)})
    assert result.layers[0].acc_overflow == 0 and result.layers[0].saturated == 0
    assert int(result.outputs["y"][0, 0]) == 0  # 1000 * 2^-21 rounds to 0
