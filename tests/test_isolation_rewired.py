"""Isolation on a board whose agent cannot isolate: the client rewires the program so every layer
reads the reference's tensors as program inputs, pushes it, and runs it whole. It must give what
the agent's own isolated run gives, bit for bit, and catch the same faults at the same layers."""
from __future__ import annotations

import numpy as np
import pytest

from agent_harness import agent_pool  # noqa: F401  (fixture)
from qverify.client.agent_client import BoardClient
from qverify.client.inputs import build_frames, ports_from_program
from qverify.client.isolation import IsolationJudge, batches, feeds_from, plan_groups, rewire
from qverify.client.sides import BoardSide, OnnxSide
from qverify.simulator import Program, load, save
from qverify.simulator.compiler import compile_model
from qverify.simulator.validate import validate

INPUT_SHAPES = {"ppocr_cls": {"x": [1, 3, 48, 192]}}


@pytest.fixture(scope="module")
def ppocr_cls(quantized, model_feeds, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rewired")
    onnx_path = quantized("ppocr_cls")
    model_bin = folder / "model.bin"
    save(compile_model(onnx_path, input_shapes=INPUT_SHAPES["ppocr_cls"]), model_bin)
    np.save(folder / "page.npy", model_feeds("ppocr_cls", 1)[0])
    return onnx_path, model_bin, str(folder / "page.npy")


def _isolated(agent, onnx_path, model_bin, image, native: bool):
    program = load(model_bin)
    frame = build_frames(ports_from_program(program), [image], 0)[0]
    with OnnxSide(onnx_path, program) as onnx_side, BoardClient(agent.address, connect_timeout=20) as client:
        client.agent_info = client.info()
        sha = client.push(model_bin)
        board = BoardSide(client, sha, program, native_isolation=native)
        reference = onnx_side.run(frame, True, consistent=True).tensors
        feeds = feeds_from(program, reference)
        groups = plan_groups(program, set(feeds))
        got = board.run_isolated(frame, batches(program, groups, feeds, 4 << 20))
    judge = IsolationJudge(program)
    judge.add_frame(got.tensors, reference, groups)
    return got, judge


def test_the_rewired_program_is_a_valid_program_whose_groups_read_only_fed_tensors(ppocr_cls):
    _, model_bin, _ = ppocr_cls
    program = load(model_bin)
    fed = {name for name in program.tensors if name not in {t.name for t in program.inputs}}
    groups = plan_groups(program, fed)
    proto, added = rewire(program.proto, groups, fed)
    validate(Program(proto))
    assert added and all(name.endswith("@fed") for name in added)
    rewired = Program(proto)
    for start, end in groups:
        inside = {n for node in rewired.nodes[start:end + 1] for n in node.outputs}
        for node in rewired.nodes[start:end + 1]:
            for name in node.inputs:
                assert not name or name in inside or name in rewired.constants or name in proto.inputs, name


@pytest.mark.slow
@pytest.mark.parametrize("fault", [None, "bitflip", "lsb"])
def test_rewired_isolation_equals_the_agents_own(agent_pool, ppocr_cls, fault):
    onnx_path, model_bin, image = ppocr_cls
    program = load(model_bin)
    convs = [node.name for node in program.nodes if node.op == "Conv"]
    layer = convs[len(convs) // 2]
    agent = agent_pool.start(*(("--fault", f"{fault}:{layer}") if fault else ()), name=f"rewired-{fault}")
    native, native_judge = _isolated(agent, onnx_path, model_bin, image, native=True)
    rewired, rewired_judge = _isolated(agent, onnx_path, model_bin, image, native=False)
    assert set(native.tensors) == set(rewired.tensors) and native.tensors
    for name, observed in native.tensors.items():
        assert np.array_equal(observed.codes if observed.codes is not None else observed.values,
                              rewired.tensors[name].codes if rewired.tensors[name].codes is not None
                              else rewired.tensors[name].values), name
    wrong = [layer.node for layer in rewired_judge.ordered if not layer.passed]
    assert wrong == [w.node for w in native_judge.ordered if not w.passed]
    assert wrong == ([layer] if fault else [])
    assert agent.stop() == 0


def test_float_tensors_agree_only_within_float32_rounding():
    """A CPU layer's float tensor has no LSB: a real difference must not hide in a '2 LSB' bucket."""
    from qverify.client.isolation import compare_values

    reference = np.linspace(-4, 4, 64).astype(np.float32)
    assert compare_values(reference + np.float32(1e-6), reference, 0.0)[2] == 0
    wrong = reference.copy()
    wrong[5] += 0.5
    off, beyond, max_lsb, _, _ = compare_values(wrong, reference, 0.0)
    assert beyond == 1 and max_lsb > 2  # beyond the cpu bound of 2 LSB
