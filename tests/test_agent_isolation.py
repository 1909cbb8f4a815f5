"""Isolated runs on the board (protocol 1.1, capability "isolate"): each layer, or each group of
layers, reads the reference's tensors instead of its own upstream results, so its output measures
that layer alone and a fault shows at the faulted layer and nowhere else."""
from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

import synthetic
from agent_harness import agent_pool, collect, model_id, reference_run  # noqa: F401  (fixture)
from qverify.agent.tensors import to_wire
from qverify.simulator import Simulator, feed_shape, load, save
from qverify.simulator.compiler import compile_model
from qverify.simulator.errors import InputError
from qverify.v1 import board_agent_pb2 as pb


@pytest.fixture(scope="module")
def model_bin(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("isolation")
    path = folder / "model.bin"
    save(compile_model(synthetic.quantize(synthetic.small_cnn(seed=5), folder / "q.onnx")), path)
    return path


def _inputs(program, seed: int = 0) -> dict[str, np.ndarray]:
    tensor = program.inputs[0]
    return {tensor.name: np.random.default_rng(seed).integers(-128, 128, feed_shape(tensor), dtype=np.int8)}


def _isolated_request(sha: str, feeds: dict[str, np.ndarray], groups=(), inputs=None) -> pb.RunRequest:
    return pb.RunRequest(model_sha256=sha, isolate=True, dump=pb.DUMP_ALL, dump_layout=pb.LAYOUT_BOTH,
                         feeds=[to_wire(n, a) for n, a in feeds.items()],
                         inputs=[to_wire(n, a) for n, a in (inputs or {}).items()],
                         groups=[pb.NodeGroup(first=a, last=b) for a, b in groups])


def _perturbed(reference: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The reference with a few codes moved by one LSB: a reference the board did not compute itself."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in reference.items():
        value = value.copy()
        if value.dtype == np.int8 and value.size:
            flat = value.reshape(-1)
            picks = rng.choice(flat.size, size=max(1, flat.size // 50), replace=False)
            flat[picks] = np.clip(flat[picks].astype(np.int16) + 1, -128, 127).astype(np.int8)
        out[name] = value
    return out


def test_the_simulator_isolates_each_layer_on_the_fed_tensors(model_bin):
    """Every layer reads the fed tensors, not its upstream results: fed a reference the board did not
    compute itself, a layer's output follows the feed, and equals that layer run as its own group."""
    program = load(model_bin)
    reference = reference_run(program, _inputs(program), layout="valid").valid
    feeds = _perturbed(reference, seed=1)
    every = {}
    Simulator(program).run_isolated({}, feeds, sink=lambda d: every.__setitem__(d.tensor.name, d.valid.copy()))
    moved = 0
    for node in program.nodes:
        alone = {}
        Simulator(program).run_isolated({}, feeds, groups=[(node.name, node.name)],
                                        sink=lambda d: alone.__setitem__(d.tensor.name, d.valid.copy()))
        assert set(alone) == set(node.outputs)
        for name in node.outputs:
            assert np.array_equal(alone[name], every[name]), name
            moved += not np.array_equal(every[name], reference[name])
    assert moved > 0, "no layer followed the perturbed feeds: the isolated run read its own tensors"


def test_isolated_outputs_equal_the_entire_run_when_fed_the_boards_own_tensors(agent_pool, model_bin):
    program = load(model_bin)
    data = model_bin.read_bytes()
    inputs = _inputs(program, seed=3)
    reference = reference_run(program, inputs, layout="valid")
    agent = agent_pool.start(name="isolating")
    with agent.client() as client:
        assert "isolate" in client.info().capabilities
        client.push(data)
        got = collect(client.run_stream(_isolated_request(model_id(data), reference.valid, inputs=inputs)))
    produced = [name for node in program.nodes for name in node.outputs]
    for name in produced:
        assert np.array_equal(got.dumps[(name, "valid")], reference.valid[name]), name
        assert got.header(name, "valid").isolated
    for tensor in program.outputs:
        assert np.array_equal(got.outputs[tensor.name], reference.outputs[tensor.name])


def test_a_faulted_layer_differs_in_isolation_and_no_other_layer_does(agent_pool, model_bin):
    """Entire runs carry a fault downstream; isolated runs show it at the faulted layer only."""
    program = load(model_bin)
    data = model_bin.read_bytes()
    target = program.nodes[len(program.nodes) // 2]
    agent = agent_pool.start("--fault", f"bitflip:{target.name}", name="bitflip")
    inputs = _inputs(program, seed=4)
    reference = reference_run(program, inputs, layout="valid")
    with agent.client() as client:
        client.push(data)
        entire = client.run(model_id(data), inputs, dump=pb.DUMP_ALL)
        isolated = collect(client.run_stream(_isolated_request(model_id(data), reference.valid, inputs=inputs)))
    produced = [(node.name, name) for node in program.nodes for name in node.outputs]
    wrong_entire = [node for node, name in produced
                    if not np.array_equal(entire.dumps[(name, "valid")], reference.valid[name])]
    wrong_isolated = [node for node, name in produced
                      if not np.array_equal(isolated.dumps[(name, "valid")], reference.valid[name])]
    assert wrong_isolated == [target.name]
    assert wrong_entire[0] == target.name and len(wrong_entire) > 1  # entire: the fault spreads downstream


def test_a_group_runs_its_layers_together_on_its_fed_inputs(agent_pool, model_bin):
    program = load(model_bin)
    data = model_bin.read_bytes()
    inputs = _inputs(program, seed=5)
    reference = reference_run(program, inputs, layout="valid")
    first, last = program.nodes[1], program.nodes[3]
    inside = {name for node in program.nodes[1:4] for name in node.outputs}
    needed = {name for node in program.nodes[1:4] for name in node.inputs
              if name and name not in inside and name not in program.constants}
    feeds = {name: reference.valid[name] for name in needed}
    agent = agent_pool.start(name="groups")
    with agent.client() as client:
        client.push(data)
        got = collect(client.run_stream(_isolated_request(model_id(data), feeds, groups=[(first.name, last.name)])))
        assert {name for name, _ in got.dumps} == inside
        for name in inside:
            assert np.array_equal(got.dumps[(name, "valid")], reference.valid[name])
        missing = next(iter(needed))
        less = {k: v for k, v in feeds.items() if k != missing}
        with pytest.raises(grpc.RpcError) as err:
            collect(client.run_stream(_isolated_request(model_id(data), less, groups=[(first.name, last.name)])))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"reads '{missing}', which is neither fed nor computed in its group" in err.value.details()
        bad = {missing: np.zeros((1, 2), np.int8)}
        with pytest.raises(grpc.RpcError) as err:
            collect(client.run_stream(_isolated_request(model_id(data), bad, groups=[(first.name, last.name)])))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"feed '{missing}' expects" in err.value.details()


@pytest.mark.parametrize("groups, words", [
    ([("nope", "nope")], "no node named 'nope'"),
    ("reversed", "is reversed"),
    ("overlap", "overlap"),
])
def test_bad_node_groups_are_input_errors(model_bin, groups, words):
    program = load(model_bin)
    names = [n.name for n in program.nodes]
    if groups == "reversed":
        groups = [(names[2], names[1])]
    elif groups == "overlap":
        groups = [(names[0], names[2]), (names[2], names[3])]
    with pytest.raises(InputError, match=words):
        Simulator(program).node_groups(groups)
