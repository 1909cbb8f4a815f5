"""The board agent as a client sees it: a real ``qverify-agent serve`` subprocess on loopback, real gRPC.

Covers the standard services (health, reflection), GetInfo, the content-addressed store,
runs whose dumps are bit-identical to the in-process simulator, timing, the agent's import
footprint, concurrency and memory under load, the queue limit, deadlines, cancellation,
crash and restart, cut and corrupt pushes, tokens, message limits, malformed inputs, the
emulated board's fault injection, the network-listen safety check and a graceful SIGTERM.

Agents that tests can share (no faults, or faults that only touch their own models) are
module-scoped and started together; agents a test kills or stops are per test.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import qverify
import synthetic
from agent_harness import (  # noqa: F401  (fixtures are used by name)
    NOT_SERVING,
    SERVING,
    AgentClient,
    RunOutput,
    agent_pool,
    collect,
    model_id,
    module_agent_pool,
    reference_run,
)
from qverify.agent.tensors import to_wire
from qverify.simulator import dequantize, feed_shape, load, quantize, save
from qverify.simulator import layout as layout_mod
from qverify.simulator.compiler import compile_model
from qverify.v1 import board_agent_pb2 as pb
from qverify.v1 import model_pb2

MiB = 1 << 20
TOKEN = "s3cret-board-token"
FORBIDDEN_IMPORTS = ("onnx", "onnxruntime", "paramiko", "typer", "rich")


# --------------------------------------------------------------------------- models


@dataclass
class Model:
    name: str
    path: Path
    data: bytes
    sha: str
    program: object

    @property
    def input(self):
        return self.program.inputs[0]

    def feed(self, seed: int = 0) -> dict[str, np.ndarray]:
        """A random int8 input in the board feed layout (NHWC)."""
        rng = np.random.default_rng(seed)
        return {self.input.name: rng.integers(-128, 128, feed_shape(self.input), dtype=np.int8)}

    def node_output(self, node_name: str) -> str:
        return next(n for n in self.program.nodes if n.name == node_name).outputs[0]


def _build(root: Path, name: str, seed: int, node_prefix: str = "", size: int = 16) -> Model:
    graph = synthetic.small_cnn(seed)
    for node in graph.graph.node:
        node.name = node_prefix + node.name
    if size != 16:  # the convolutions and the global pool work at any spatial size
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_value = dims[3].dim_value = size
    quant = synthetic.quantize(graph, root / f"{name}.onnx", feeds=synthetic.calibration(shape=(1, 3, size, size)))
    path = root / f"{name}.model.bin"
    save(compile_model(quant), path)
    data = path.read_bytes()
    return Model(name, path, data, model_id(data), load(path))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Model]:
    root = tmp_path_factory.mktemp("agent-models")
    return {
        "m0": _build(root, "m0", seed=0),
        "m1": _build(root, "m1", seed=1),
        "fb": _build(root, "fb", seed=0, node_prefix="fb_"),  # target of the bitflip fault
        "fl": _build(root, "fl", seed=0, node_prefix="fl_"),  # target of the lsb fault
        "wide": _build(root, "wide", seed=2, size=320),        # dumps of 1.6 MB: many 64 KiB chunks
    }


@pytest.fixture(scope="module")
def real_model(quantized, tmp_path_factory) -> Model:
    """PP-OCR's text direction classifier, quantized (QDQ, uint8, per channel) and compiled."""
    path = quantized("ppocr_cls", "QDQ", "QUInt8", True)
    out = tmp_path_factory.mktemp("real") / "ppocr_cls.model.bin"
    save(compile_model(path, input_shapes={"x": [1, 3, 48, 192]}), out)
    data = out.read_bytes()
    return Model("ppocr_cls", out, data, model_id(data), load(out))


# --------------------------------------------------------------------------- shared agents


@pytest.fixture(scope="module")
def fleet(module_agent_pool):
    """The module's shared agents, started at once (their startups overlap)."""
    main, token, busy, faulty = module_agent_pool.start_many([
        dict(name="main"),
        dict(name="token", token=TOKEN),
        dict(name="busy", args=("--fault", "delay:300", "--max-queue", "2", "--max-message-size", "1M")),
        dict(name="faulty", args=("--fault", "bitflip:fb_dwconv", "--fault", "lsb:fl_dwconv",
                                  "--fault", "padding:all")),
    ])
    return {"main": main, "token": token, "busy": busy, "faulty": faulty}


@pytest.fixture(scope="module")
def main_agent(fleet):
    return fleet["main"]


@pytest.fixture(scope="module")
def client(main_agent, module_agent_pool) -> AgentClient:
    return module_agent_pool.track(main_agent.client())


def _code(exc_info) -> grpc.StatusCode:
    return exc_info.value.code()


def _details(exc_info) -> str:
    return exc_info.value.details() or ""


def _wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _assert_matches_reference(got: RunOutput, model: Model, inputs, layouts=("valid", "aligned")) -> None:
    """Outputs and every dump bit-identical to the in-process simulator's, metadata included."""
    ref = reference_run(model.program, inputs, dump="all", layout="both")
    placements = {n.name: "cpu" if n.on_cpu else "npu" for n in model.program.nodes}
    assert got.outputs.keys() == ref.outputs.keys()
    for name, value in ref.outputs.items():
        assert got.outputs[name].dtype == value.dtype and np.array_equal(got.outputs[name], value), name
    dumped = {(h.name, h.layout) for h in got.headers}
    assert dumped == {(name, lay) for name in ref.order for lay in layouts}
    # One index per tensor, 0-based and in execution order; the layouts share it.
    indices = {}
    for h in got.headers:
        indices.setdefault(h.name, h.index)
        assert indices[h.name] == h.index
    assert [indices[name] for name in ref.order] == list(range(len(ref.order)))
    for h in got.headers:
        d = ref.meta[h.name]
        expected = ref.valid[h.name] if h.layout == "valid" else ref.aligned[h.name]
        array = got.dumps[(h.name, h.layout)]
        assert array.dtype == expected.dtype and array.shape == expected.shape, (h.name, h.layout)
        assert np.array_equal(array, expected), f"dump '{h.name}' ({h.layout}) differs from the simulator's"
        assert h.producer == d.producer
        assert tuple(h.shape) == tuple(d.tensor.shape)
        assert tuple(h.aligned_shape) == tuple(d.aligned_shape)
        assert tuple(h.aligned_strides) == tuple(d.aligned_strides)
        assert h.aligned_layout == d.aligned_layout
        assert h.scale == np.float32(d.tensor.scale) and h.zero_point == d.tensor.zero_point
        assert h.total_bytes == expected.nbytes
        assert h.placement == placements.get(d.producer, ""), (h.name, h.placement)
        assert h.onnx_float_name == d.tensor.info.onnx_float_name
    if "aligned" in layouts and "valid" in layouts:
        for name in ref.order:
            h = got.header(name, "aligned")
            assert tuple(h.aligned_strides) == layout_mod.element_strides(tuple(h.aligned_shape))
            valid = layout_mod.to_valid(got.dumps[(name, "aligned")], tuple(h.shape))
            assert np.array_equal(valid, got.dumps[(name, "valid")]), f"aligned -> valid of '{name}' is inconsistent"


# --------------------------------------------------------------------------- standard services, info


def test_health_and_reflection(main_agent, client):
    assert client.health() == SERVING
    assert client.health_stub.Check(health_pb2.HealthCheckRequest(service="qverify.v1.BoardAgent"),
                                    timeout=5).status == SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=5))
    services = {s.name for s in replies[0].list_services_response.service}
    assert {"qverify.v1.BoardAgent", "grpc.health.v1.Health"} <= services


def test_get_info(main_agent, client):
    info = client.info()
    assert info.protocol_version == "1.1"
    assert info.agent_version == qverify.__version__
    assert info.backend == "sim" and info.runtime_version.startswith("qverify-sim")
    assert info.target.name == "sim-a16" and info.target.c_align == 16
    assert info.cpu_count > 0 and info.memory_bytes > 0 and info.npu_cores == 1
    assert info.hostname and info.board_id
    assert Path(info.model_store_path) == main_agent.model_dir
    assert info.model_store_free_bytes > 0
    assert info.limits.max_model_bytes == 512 * MiB
    assert info.limits.max_message_bytes == 64 * MiB
    assert info.limits.store_capacity_bytes == 4 << 30
    assert info.limits.max_queue == 8
    assert info.limits.max_input_bytes > 0
    assert {"dump", "aligned_dump", "push", "perf"} <= set(info.capabilities)
    assert list(info.faults) == [] and "faults" not in info.capabilities


# --------------------------------------------------------------------------- store


def test_push_is_content_addressed_and_store_calls(client, models):
    m = models["m0"]
    client.delete(m.sha)
    assert client.has(m.sha).present is False
    reply = client.push(m.data)
    assert (reply.sha256, reply.size_bytes, reply.already_present) == (m.sha, len(m.data), False)
    again = client.push(m.data)
    assert (again.sha256, again.size_bytes, again.already_present) == (m.sha, len(m.data), True)
    has = client.has(m.sha)
    assert has.present and has.size_bytes == len(m.data)
    listed = {s.sha256: s for s in client.list().models}
    assert listed[m.sha].size_bytes == len(m.data)
    assert listed[m.sha].target == "sim-a16" and listed[m.sha].name == m.program.name
    assert (Path(client.info().model_store_path) / f"{m.sha}.bin").read_bytes() == m.data

    assert client.delete(m.sha).deleted is True
    assert client.has(m.sha).present is False
    assert client.delete(m.sha).deleted is False
    assert m.sha not in {s.sha256 for s in client.list().models}
    with pytest.raises(grpc.RpcError) as err:
        client.run(m.sha, m.feed())
    assert _code(err) == grpc.StatusCode.NOT_FOUND and m.sha[:12] in _details(err)
    assert client.push(m.data).already_present is False


def test_model_ids_are_validated(client):
    for bad in ("../etc/passwd", "A" * 64, ""):
        with pytest.raises(grpc.RpcError) as err:
            client.has(bad)
        assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- runs


def test_dump_all_both_layouts_bit_identical(client, models):
    m = models["m0"]
    client.push(m.data)
    inputs = m.feed(1)
    got = client.run(m.sha, inputs, dump=pb.DUMP_ALL, layout=pb.LAYOUT_BOTH)
    _assert_matches_reference(got, m, inputs)


@pytest.mark.slow
def test_dump_all_real_model_bit_identical(client, real_model, model_feeds):
    m = real_model
    client.push(m.data)
    x = model_feeds("ppocr_cls", 1)[0]
    q, _ = quantize(x, m.input.scale, m.input.zero_point)
    inputs = {m.input.name: np.ascontiguousarray(q.transpose(0, 2, 3, 1))}
    got = client.run(m.sha, inputs, dump=pb.DUMP_ALL, layout=pb.LAYOUT_BOTH, chunk_bytes=64 << 10)
    assert any(h.total_bytes > (64 << 10) for h in got.headers)  # multi-chunk dumps were reassembled
    _assert_matches_reference(got, m, inputs)


def test_dump_named_dequantized(client, models):
    m = models["m0"]
    client.push(m.data)
    inputs = m.feed(2)
    names = [m.node_output("dwconv"), m.program.outputs[0].name]
    got = client.run(m.sha, inputs, dump=pb.DUMP_NAMED, names=names, layout=pb.LAYOUT_VALID,
                     values=pb.VALUES_DEQUANTIZED)
    ref = reference_run(m.program, inputs, dump=names, layout="valid")
    assert [h.name for h in got.headers] == ref.order and {h.layout for h in got.headers} == {"valid"}
    for h in got.headers:
        t = ref.meta[h.name].tensor
        assert h.dtype == model_pb2.FLOAT32
        want = dequantize(ref.valid[h.name], t.scale, t.zero_point)
        assert np.array_equal(got.dumps[(h.name, "valid")], want)
    # Outputs stay raw integers whatever the dump values.
    assert np.array_equal(got.outputs[names[1]], ref.outputs[names[1]])

    aligned = client.run(m.sha, inputs, dump=pb.DUMP_NAMED, names=names[:1], layout=pb.LAYOUT_ALIGNED)
    assert [(h.name, h.layout) for h in aligned.headers] == [(names[0], "aligned")]
    assert np.array_equal(aligned.dumps[(names[0], "aligned")],
                          reference_run(m.program, inputs, dump=names[:1], layout="aligned").aligned[names[0]])

    with pytest.raises(grpc.RpcError) as err:
        client.run(m.sha, inputs, dump=pb.DUMP_NAMED, names=["no_such_tensor"])
    assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT and "no_such_tensor" in _details(err)


@pytest.mark.parametrize("dump, frames, warmup", [(pb.DUMP_NONE, 5, 2), (pb.DUMP_ALL, 3, 1)])
def test_timing_fields(client, models, dump, frames, warmup):
    m = models["m1"]
    client.push(m.data)
    got = client.run(m.sha, m.feed(3), dump=dump, frames=frames, warmup=warmup)
    t = got.timing
    assert len(t.frame_us) == frames and all(v > 0 for v in t.frame_us)
    d = t.model
    assert 0 < d.min_us <= d.median_us <= d.p99_us <= d.max_us
    assert d.min_us == min(t.frame_us) and d.max_us == max(t.frame_us)
    assert d.min_us <= d.mean_us <= d.max_us
    assert t.queue_wait_us >= 0 and t.core == 0
    assert [layer.node for layer in t.layers] == [n.name for n in m.program.nodes]
    for layer in t.layers:
        assert len(layer.frame_us) == frames, layer.node
        assert layer.op and layer.placement in ("npu", "cpu")
    assert np.array_equal(got.outputs[m.program.outputs[0].name],
                          reference_run(m.program, m.feed(3), dump=None).outputs[m.program.outputs[0].name])


# --------------------------------------------------------------------------- malformed inputs


_EXPECTED = r"int8\[1,\s*16,\s*16,\s*3\]"


def _bad_inputs(m: Model) -> dict[str, list[pb.Tensor]]:
    good = m.feed(0)[m.input.name]
    byte_count = to_wire(m.input.name, good)
    byte_count.data = byte_count.data[:-68]
    return {
        "wrong name": [to_wire("images", good)],
        "wrong dtype": [to_wire(m.input.name, good.astype(np.float32))],
        "wrong shape": [to_wire(m.input.name, np.ascontiguousarray(good.transpose(0, 3, 1, 2)))],
        "byte count": [byte_count],
        "missing": [],
    }


@pytest.mark.parametrize("case", ["wrong name", "wrong dtype", "wrong shape", "byte count", "missing"])
def test_malformed_inputs_are_invalid_argument(client, models, case):
    m = models["m0"]
    client.push(m.data)
    tensors = _bad_inputs(m)[case]
    with pytest.raises(grpc.RpcError) as err:
        client.run(m.sha, tensors, timeout=10)
    message = _details(err)
    assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT, message
    named = tensors[0].name if tensors else m.input.name
    assert f"'{named}'" in message, message
    assert re.search(_EXPECTED, message), f"the message does not give the expected int8[1,16,16,3]: {message}"
    assert client.run(m.sha, m.feed(0), timeout=10).outputs  # the agent is fine afterwards


# --------------------------------------------------------------------------- import footprint


def test_agent_never_imports_host_packages(agent_pool, models, tmp_path):
    record = tmp_path / "agent-modules.txt"
    agent = agent_pool.start(name="imports", record_modules=record)
    m = models["m0"]
    with agent.client() as c:
        c.info()
        c.push(m.data)
        c.list()
        got = c.run(m.sha, m.feed(0), dump=pb.DUMP_ALL, layout=pb.LAYOUT_BOTH, values=pb.VALUES_DEQUANTIZED)
        assert got.headers and got.timing is not None
        c.run(m.sha, m.feed(0), dump=pb.DUMP_NAMED, names=[m.program.outputs[0].name], frames=2, warmup=1)
        c.stub.Perf(pb.PerfRequest(model_sha256=m.sha, frames=3), timeout=10)
        with pytest.raises(grpc.RpcError):
            c.run(m.sha, [to_wire("nope", np.zeros(3, np.int8))])
    assert agent.stop() == 0
    modules = set(record.read_text().split())
    assert "qverify.agent.service" in modules and "grpc" in modules  # the record is real
    bad = sorted(name for name in modules if name.split(".")[0] in FORBIDDEN_IMPORTS)
    assert not bad, f"the agent imported host-only packages: {bad}"
    assert not [name for name in modules if name.startswith(("qverify.client", "qverify.simulator.compiler"))]


# --------------------------------------------------------------------------- load


def test_concurrent_runs_no_crosstalk_and_bounded_memory(main_agent, models):
    pair = [models["m0"], models["m1"]]
    with main_agent.client() as c:
        for m in pair:
            c.push(m.data)
    feeds = [(m, m.feed(seed)) for m in pair for seed in range(4)]
    refs = [reference_run(m.program, inputs, dump="all", layout="valid") for m, inputs in feeds]
    threads, rounds = 8, 20
    rss: list[int] = []
    barrier = threading.Barrier(threads, action=lambda: rss.append(main_agent.rss_bytes()), timeout=60)
    errors: list[str] = []

    def worker(number: int) -> None:
        with main_agent.client() as c:
            try:
                for i in range(rounds):
                    pick = (number + i) % len(feeds)  # each round: 8 different requests, both models
                    m, inputs = feeds[pick]
                    got = c.run(m.sha, inputs, dump=pb.DUMP_ALL, layout=pb.LAYOUT_VALID, timeout=30)
                    ref = refs[pick]
                    for name, value in ref.outputs.items():
                        if not np.array_equal(got.outputs[name], value):
                            errors.append(f"thread {number} run {i}: output {name} differs")
                    if {n for n, _ in got.dumps} != set(ref.valid):
                        errors.append(f"thread {number} run {i}: dumped {sorted(got.dumps)}")
                    for name, value in ref.valid.items():
                        if not np.array_equal(got.dumps.get((name, "valid")), value):
                            errors.append(f"thread {number} run {i}: dump {name} differs")
                    barrier.wait()
            except BaseException as exc:
                errors.append(f"thread {number}: {type(exc).__name__}: {exc}")
                barrier.abort()

    pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in pool), "client threads did not finish in time"
    assert not errors, "\n".join(errors[:10])
    assert len(rss) == rounds
    print(f"agent RSS per round (MiB): {[round(r / MiB) for r in rss]}")
    assert max(rss) < 600 * MiB, f"agent RSS {max(rss) / MiB:.0f} MiB"
    assert rss[-1] - rss[1] < 100 * MiB, f"agent RSS grew from {rss[1] / MiB:.0f} to {rss[-1] / MiB:.0f} MiB"
    assert main_agent.health() == SERVING


# --------------------------------------------------------------------------- limits on the busy agent


@pytest.fixture(scope="module")
def busy(fleet, models, module_agent_pool):
    agent = fleet["busy"]
    c = module_agent_pool.track(agent.client())
    c.push(models["m0"].data, chunk=256 << 10)  # the agent takes messages up to 1 MiB
    c.run(models["m0"].sha, models["m0"].feed(0))  # loaded (and cached) before the timed tests
    return agent, c


def test_queue_full_is_resource_exhausted(busy, models):
    agent, _ = busy
    m = models["m0"]
    inputs = m.feed(4)
    expected = reference_run(m.program, inputs, dump=None).outputs
    n = 8
    start = threading.Barrier(n, timeout=30)
    results: list[tuple] = [None] * n

    def one(i: int) -> None:
        with agent.client() as c:
            request = c.request(m.sha, inputs)
            try:
                start.wait()
                results[i] = ("ok", collect(c.run_stream(request, timeout=30)))
            except grpc.RpcError as exc:
                results[i] = (exc.code(), exc.details())

    pool = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert all(r is not None for r in results)
    ok = [r[1] for r in results if r[0] == "ok"]
    rejected = [r for r in results if r[0] != "ok"]
    assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, _ in rejected), rejected
    # One core running and two queued are served; the rest are turned away at once. (A client
    # thread delayed past a whole 300 ms run by a loaded machine may find room: at least 3.)
    assert len(ok) >= 3 and len(rejected) >= 1, f"{len(ok)} runs served, {len(rejected)} rejected"
    for _, message in rejected:
        assert "2 run(s) already queued" in message and "--max-queue 2" in message, message
    for got in ok:
        for name, value in expected.items():
            assert np.array_equal(got.outputs[name], value)
    waits = sorted(got.timing.queue_wait_us for got in ok)
    assert waits[-1] > 250_000  # the last one waited for the two before it


def test_deadline_shorter_than_run(busy, models):
    agent, c = busy
    m = models["m0"]
    with pytest.raises(grpc.RpcError) as err:
        c.run(m.sha, m.feed(0), timeout=0.1)
    assert _code(err) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert c.run(m.sha, m.feed(0), timeout=10).timing is not None  # still serving


def test_oversize_message_is_resource_exhausted(busy, models):
    agent, c = busy
    m = models["m0"]
    big = [to_wire(m.input.name, np.zeros(2 * MiB, np.int8))]
    with pytest.raises(grpc.RpcError) as err:
        c.run(m.sha, big, timeout=10)
    assert _code(err) == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as err:
        c.push(models["m1"].data + bytes(2 * MiB), chunk=2 * MiB, timeout=10)
    assert _code(err) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert c.info().limits.max_message_bytes == MiB
    assert c.run(m.sha, m.feed(0), timeout=10).timing is not None


def test_dumps_larger_than_the_message_limit_still_arrive(busy, models):
    """The agent chunks dumps itself: a 1.6 MB dump must reach a client of a --max-message-size 1M agent."""
    agent, c = busy
    m = models["wide"]
    c.push(m.data, chunk=256 << 10)
    inputs = m.feed(10)
    got = c.run(m.sha, inputs, dump=pb.DUMP_ALL, layout=pb.LAYOUT_BOTH, timeout=20)  # default chunk_bytes
    assert max(h.total_bytes for h in got.headers) > MiB
    _assert_matches_reference(got, m, inputs)


# --------------------------------------------------------------------------- pushes that go wrong


def _half_push(m: Model, gate: threading.Event, chunk: int = 1024):
    """Half of the model's chunks, then wait (the stream stays open until ``gate``)."""
    count = -(-len(m.data) // chunk)
    yield from AgentClient.chunks(m.data, m.sha, chunk=chunk, limit=count // 2)
    gate.wait(30)


def test_push_cut_by_cancel_leaves_nothing(main_agent, client, models):
    m = models["m1"]
    client.delete(m.sha)
    gate = threading.Event()
    try:
        future = client.push_future(_half_push(m, gate), timeout=30)
        assert _wait_until(lambda: main_agent.part_files(), 10), "the push never started"
        future.cancel()
        assert _wait_until(lambda: not main_agent.part_files(), 10), main_agent.part_files()
    finally:
        gate.set()
    assert client.has(m.sha).present is False
    assert m.sha not in {s.sha256 for s in client.list().models}
    with pytest.raises(grpc.RpcError) as err:
        client.run(m.sha, m.feed(0))
    assert _code(err) == grpc.StatusCode.NOT_FOUND


def test_push_cut_by_killed_client_leaves_nothing(main_agent, client, models, tmp_path):
    m = models["m1"]
    client.delete(m.sha)
    script = tmp_path / "pusher.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, grpc
        from qverify.v1 import board_agent_pb2 as pb, board_agent_pb2_grpc as rpc
        data = open({str(m.path)!r}, "rb").read()
        def chunks():
            yield pb.PushChunk(sha256={m.sha!r}, total_bytes=len(data), data=data[:1024])
            yield pb.PushChunk(data=data[1024:2048])
            time.sleep(60)
        channel = grpc.insecure_channel({main_agent.address!r})
        rpc.BoardAgentStub(channel).PushModel(chunks(), timeout=60)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_until(lambda: main_agent.part_files() or proc.poll() is not None, 20)
        assert main_agent.part_files(), "the pushing client never got half way"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_until(lambda: not main_agent.part_files(), 10), main_agent.part_files()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert client.has(m.sha).present is False
    assert client.health() == SERVING


def test_corrupt_push_is_data_loss_and_not_stored(main_agent, client, models):
    m = models["m1"]
    client.delete(m.sha)
    corrupt = bytearray(m.data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(grpc.RpcError) as err:
        client.push(bytes(corrupt), sha=m.sha, chunk=1024)
    assert _code(err) == grpc.StatusCode.DATA_LOSS and m.sha[:12] in _details(err)
    # Fewer bytes than declared is as bad.
    with pytest.raises(grpc.RpcError) as err:
        client.push(m.data[:-100], sha=m.sha, total_bytes=len(m.data))
    assert _code(err) == grpc.StatusCode.DATA_LOSS
    assert client.has(m.sha).present is False
    assert not (main_agent.model_dir / f"{m.sha}.bin").exists()
    assert main_agent.part_files() == []
    assert client.push(m.data).already_present is False  # a good push of the same id still works


# --------------------------------------------------------------------------- cancellation


def test_cancelled_run_leaves_agent_responsive(client, models):
    m = models["wide"]
    client.push(m.data)
    inputs = m.feed(5)
    request = client.request(m.sha, inputs, dump=pb.DUMP_ALL, layout=pb.LAYOUT_BOTH, chunk_bytes=64 << 10)
    for _ in range(3):
        call = client.run_stream(request, timeout=30)
        kinds = [next(call).WhichOneof("item") for _ in range(4)]
        assert kinds[0] == "dump_header" and "dump_chunk" in kinds  # cut in the middle of a dump
        call.cancel()
        with pytest.raises(grpc.RpcError) as err:
            for _ in call:
                pass
        assert _code(err) == grpc.StatusCode.CANCELLED
    got = client.run(m.sha, inputs, dump=pb.DUMP_ALL, layout=pb.LAYOUT_BOTH, chunk_bytes=64 << 10, timeout=20)
    assert max(h.total_bytes for h in got.headers) > 4 * (64 << 10)
    _assert_matches_reference(got, m, inputs)
    assert client.health() == SERVING


# --------------------------------------------------------------------------- tokens


def test_token_required(fleet, models, module_agent_pool):
    agent = fleet["token"]
    m = models["m0"]
    good = module_agent_pool.track(agent.client())
    for token in (None, "wrong-token"):
        bad = module_agent_pool.track(agent.client(token=token))
        for call in (lambda: bad.push(m.data), lambda: bad.info(), lambda: bad.list(),
                     lambda: bad.run(m.sha, m.feed(0))):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert _code(err) == grpc.StatusCode.UNAUTHENTICATED
            assert ("missing" if token is None else "wrong") in _details(err) and "token" in _details(err)
        assert bad.health() == SERVING  # health needs no token
    assert list(good.list().models) == []  # the refused pushes stored nothing
    assert good.push(m.data).already_present is False
    before = good.list().models[0].last_used_unix_ms
    time.sleep(0.01)
    with agent.client(token="wrong-token") as bad, pytest.raises(grpc.RpcError) as err:
        bad.run(m.sha, m.feed(0))
    assert _code(err) == grpc.StatusCode.UNAUTHENTICATED
    assert good.list().models[0].last_used_unix_ms == before  # the refused run never reached the store
    good.run(m.sha, m.feed(0))
    assert good.list().models[0].last_used_unix_ms > before  # (a run does mark it used)


# --------------------------------------------------------------------------- fault injection


@pytest.fixture(scope="module")
def faulty(fleet, module_agent_pool):
    agent = fleet["faulty"]
    return agent, module_agent_pool.track(agent.client())


def test_faults_are_listed(faulty):
    _, c = faulty
    info = c.info()
    assert sorted(info.faults) == ["bitflip:fb_dwconv", "lsb:fl_dwconv", "padding:all"]
    assert "faults" in info.capabilities


def _diverging(got: RunOutput, ref) -> list[str]:
    return [name for name in ref.order if not np.array_equal(got.dumps[(name, "valid")], ref.valid[name])]


@pytest.mark.parametrize("key, fault", [("fb", "bitflip"), ("fl", "lsb")])
def test_layer_faults_corrupt_from_that_layer_on(faulty, models, key, fault):
    _, c = faulty
    m = models[key]
    c.push(m.data)
    inputs = m.feed(6)
    got = c.run(m.sha, inputs, dump=pb.DUMP_ALL, layout=pb.LAYOUT_VALID)
    ref = reference_run(m.program, inputs, dump="all", layout="valid")
    target = m.node_output(f"{key}_dwconv")
    differ = _diverging(got, ref)
    position = ref.order.index(target)
    assert differ and differ[0] == target, differ  # everything before the faulty layer is exact
    assert set(differ) > {target} and all(ref.order.index(n) > position for n in differ[1:])
    bad, good = got.dumps[(target, "valid")], ref.valid[target]
    changed = np.flatnonzero(bad.reshape(-1) != good.reshape(-1))
    if fault == "bitflip":
        xor = bad.reshape(-1).view(np.uint8) ^ good.reshape(-1).view(np.uint8)
        assert set(xor[changed].tolist()) == {0x40} and np.all(changed % 97 == 0)
    else:
        delta = bad.reshape(-1).astype(int) - good.reshape(-1).astype(int)
        assert set(np.abs(delta[changed]).tolist()) == {1} and np.all(changed % 5 == 0)
    # A model the faults do not name runs exactly.
    clean = models["m0"]
    c.push(clean.data)
    assert not _diverging(c.run(clean.sha, inputs, dump=pb.DUMP_ALL), reference_run(clean.program, inputs))


def _padding_positions(shape: tuple[int, ...], aligned_shape: tuple[int, ...]) -> np.ndarray:
    """True where an aligned buffer holds padding (what layout.to_valid drops)."""
    mask = np.ones(aligned_shape, dtype=bool)
    if len(shape) == 4:
        n, c, h, w = shape
        mask[:, :, :w, :c] = False
    elif shape:
        mask[..., : shape[-1]] = False
    else:
        mask[...] = False
    return mask


def test_padding_fault_corrupts_only_padding(faulty, models):
    _, c = faulty
    m = models["m1"]
    c.push(m.data)
    inputs = m.feed(7)
    got = c.run(m.sha, inputs, dump=pb.DUMP_ALL, layout=pb.LAYOUT_BOTH)
    ref = reference_run(m.program, inputs, dump="all", layout="both")
    assert not _diverging(got, ref)
    padded = 0
    for name in ref.order:
        aligned, expected = got.dumps[(name, "aligned")], ref.aligned[name]
        mask = _padding_positions(tuple(ref.meta[name].tensor.shape), aligned.shape)
        assert np.array_equal(aligned[~mask], expected[~mask]), name
        assert np.all(aligned[mask].view(np.uint8) == 0x55), name
        if mask.any():
            padded += 1
            assert not np.array_equal(aligned, expected)
        assert np.array_equal(layout_mod.to_valid(aligned, ref.meta[name].tensor.shape), ref.valid[name])
    assert padded >= 3


def test_crash_fault_kills_the_agent(agent_pool, models):
    agent = agent_pool.start("--fault", "crash:skip_add", name="crash")
    m = models["m0"]
    with agent.client() as c:
        c.push(m.data)
        with pytest.raises(grpc.RpcError) as err:
            c.run(m.sha, m.feed(0), dump=pb.DUMP_ALL, timeout=10)
        assert _code(err) == grpc.StatusCode.UNAVAILABLE
    assert agent.wait(timeout=10) == -signal.SIGKILL


# --------------------------------------------------------------------------- crash and restart


def test_kill9_mid_run_then_restart_keeps_models(agent_pool, models):
    agent = agent_pool.start("--fault", "delay:2000", name="kill9")
    m, cut = models["m0"], models["m1"]
    c = agent.client()
    gate = threading.Event()
    outcome: dict = {}
    try:
        c.push(m.data)
        push = c.push_future(_half_push(cut, gate), timeout=30)  # a push in flight too
        assert _wait_until(lambda: agent.part_files(), 10)

        def run() -> None:
            try:
                c.run(m.sha, m.feed(0), dump=pb.DUMP_ALL, timeout=30)
                outcome["code"] = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                outcome["code"] = exc.code()
            outcome["done"] = time.monotonic()

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        time.sleep(0.5)
        assert runner.is_alive()  # the run is in its 2 s delay
        killed = time.monotonic()
        agent.kill()
        runner.join(timeout=10)
        assert not runner.is_alive()
        assert outcome["code"] == grpc.StatusCode.UNAVAILABLE
        assert outcome["done"] - killed < 5
        gate.set()
        assert push.exception(timeout=10).code() == grpc.StatusCode.UNAVAILABLE
        assert agent.part_files(), "the cut push should have left its temp file behind the killed agent"
    finally:
        gate.set()
        c.close()

    restarted = agent_pool.start(model_dir=agent.model_dir, name="restarted")
    assert restarted.part_files() == []
    with restarted.client() as c2:
        assert c2.has(m.sha).present is True
        assert c2.has(cut.sha).present is False
        assert [s.sha256 for s in c2.list().models] == [m.sha]
        inputs = m.feed(8)
        got = c2.run(m.sha, inputs, dump=pb.DUMP_ALL, layout=pb.LAYOUT_BOTH)
        _assert_matches_reference(got, m, inputs)


# --------------------------------------------------------------------------- listen address safety


def test_network_listen_needs_token_or_tls(agent_pool):
    agent = agent_pool.new(host="0.0.0.0", name="open").spawn()
    assert agent.wait(timeout=20) == 2
    text = agent.log().strip()
    assert len(text.splitlines()) == 1, text
    assert "0.0.0.0" in text and "--token-file" in text and "--insecure" in text and "Traceback" not in text


def test_network_listen_insecure_starts_with_warning(agent_pool):
    agent = agent_pool.start("--insecure", host="0.0.0.0", name="insecure")
    assert agent.health() == SERVING
    assert re.search(r"WARNING .*without a token or TLS", agent.log()), agent.log()
    assert agent.stop() == 0


# --------------------------------------------------------------------------- graceful stop


def test_sigterm_drains_in_flight_run(agent_pool, models):
    grace = 10.0
    agent = agent_pool.start("--fault", "delay:1500", "--grace", str(grace), name="drain")
    m = models["m0"]
    inputs = m.feed(9)
    c = agent.client()
    outcome: dict = {}
    try:
        c.push(m.data)
        watch = c.health_stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == SERVING

        def run() -> None:
            try:
                outcome["result"] = c.run(m.sha, inputs, dump=pb.DUMP_ALL, layout=pb.LAYOUT_BOTH, timeout=30)
            except grpc.RpcError as exc:
                outcome["error"] = (exc.code(), exc.details())

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        time.sleep(0.4)
        assert runner.is_alive()
        agent.terminate()
        assert next(watch).status == NOT_SERVING
        watch.cancel()
        runner.join(timeout=grace)
        assert not runner.is_alive()
        assert "error" not in outcome, outcome.get("error")
        _assert_matches_reference(outcome["result"], m, inputs)
        assert agent.wait(timeout=grace) == 0
    finally:
        c.close()


def test_calls_while_draining_are_unavailable(agent_pool, models):
    """board_agent.proto: a call refused because the agent is shutting down ends UNAVAILABLE (retryable).

    The call is sent on a connection the client already has, right after health turned
    NOT_SERVING, while a run still drains.
    """
    agent = agent_pool.start("--fault", "delay:1000", "--grace", "10", name="draining")
    m = models["m0"]
    c = agent.client()
    try:
        c.push(m.data)
        watch = c.health_stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == SERVING
        call = c.run_stream(c.request(m.sha, m.feed(0)), timeout=30)
        time.sleep(0.3)  # the run is in its delay
        agent.terminate()
        assert next(watch).status == NOT_SERVING
        watch.cancel()
        with pytest.raises(grpc.RpcError) as err:
            c.run(m.sha, m.feed(0), timeout=5)
        code, details = _code(err), _details(err)
        collect(call)  # the in-flight run still completes
        assert agent.wait(timeout=10) == 0
        assert code == grpc.StatusCode.UNAVAILABLE, f"a Run sent while the agent drains ended {code.name}: {details}"
    finally:
        c.close()
