"""A run whose caller gave up (deadline, cancel) stops at the next layer boundary and frees its core;
Perf refuses inputs it would have to allocate beyond the agent's limit."""
from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

import synthetic
from agent_harness import agent_pool, model_id  # noqa: F401  (fixture)
from qverify.simulator import Simulator, feed_shape, load, save
from qverify.simulator.compiler import compile_model
from qverify.simulator.executor import RunCancelled
from qverify.v1 import board_agent_pb2 as pb


@pytest.fixture(scope="module")
def model_bin(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cancel")
    path = folder / "model.bin"
    save(compile_model(synthetic.quantize(synthetic.small_cnn(seed=4), folder / "q.onnx")), path)
    return path


def _feed(program) -> dict[str, np.ndarray]:
    tensor = program.inputs[0]
    return {tensor.name: np.random.default_rng(0).integers(-128, 128, feed_shape(tensor), dtype=np.int8)}


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("stop_after", [0, 1, 3])
def test_the_simulator_stops_at_the_layer_boundary_it_is_asked_to(model_bin, stop_after):
    program = load(model_bin)
    asked = []

    def should_stop() -> bool:
        asked.append(True)
        return len(asked) > stop_after

    with pytest.raises(RunCancelled) as err:
        Simulator(program).run(_feed(program), should_stop=should_stop)
    assert err.value.layers_done == stop_after
    assert len(asked) == stop_after + 1
    node = program.nodes[stop_after].name
    assert f"before layer '{node}' ({stop_after} of {len(program.nodes)} layers done)" in str(err.value)


def test_a_run_that_is_not_asked_to_stop_runs_every_layer(model_bin):
    program = load(model_bin)
    asked = []
    result = Simulator(program).run(_feed(program), should_stop=lambda: asked.append(True) or False)
    assert len(asked) == len(program.nodes) == len(result.layers)


@pytest.mark.parametrize("dump", [pb.DUMP_NONE, pb.DUMP_ALL])
def test_a_run_past_its_deadline_frees_the_core_instead_of_finishing(agent_pool, model_bin, dump):
    """The board is slow (a 60 s run); the client's 1 s deadline ends the run on the board, not only the call."""
    agent = agent_pool.start("--fault", "delay:60000", name="slow")
    data = model_bin.read_bytes()
    with agent.client() as client:
        client.push(data)
        with pytest.raises(grpc.RpcError) as err:
            client.run(model_id(data), _feed(load(model_bin)), timeout=1.0, dump=dump)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _wait_for(lambda: "run stopped during its injected 60000 ms delay" in agent.log(), 20), agent.log()
    assert agent.stop() == 0


def test_perf_refuses_declared_inputs_over_the_limit_before_allocating(agent_pool, model_bin):
    program = load(model_bin)
    declared = int(np.prod(feed_shape(program.inputs[0])))
    agent = agent_pool.start("--max-input-size", str(declared - 1), name="small")
    data = model_bin.read_bytes()
    with agent.client() as client:
        client.push(data)
        with pytest.raises(grpc.RpcError) as err:
            client.stub.Perf(pb.PerfRequest(model_sha256=model_id(data), frames=1), timeout=30,
                             metadata=client.metadata)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"declares {declared} bytes of inputs" in err.value.details()
        assert "--max-input-size" in err.value.details()
    assert agent.stop() == 0


CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"


@pytest.mark.parametrize("stem", ["huge_declared_input", "alignment_zero", "node_without_inputs", "nan_scale"])
def test_malformed_models_pushed_to_an_agent_are_invalid_argument_and_allocate_nothing(agent_pool, stem):
    """A 1 KB model declaring gigabytes is refused at load, naming the tensor; the agent stays small."""
    data = (CORPUS / f"{stem}.bin").read_bytes()
    agent = agent_pool.start(name="malformed")
    before = agent.rss_bytes()
    with agent.client() as client:
        client.push(data)  # a well-hashed model container: the store takes it, the load judges it
        for call in (lambda: client.stub.Perf(pb.PerfRequest(model_sha256=model_id(data), frames=1), timeout=30,
                                              metadata=client.metadata),
                     lambda: client.run(model_id(data), {}, timeout=30)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            details = err.value.details()
            assert details.startswith(f"model {model_id(data)[:12]}… cannot be loaded") and "\n" not in details
            assert str(agent.model_dir) not in details  # the store's path stays on the board
    assert agent.rss_bytes() < before + (200 << 20)
    assert agent.stop() == 0
