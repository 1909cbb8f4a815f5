"""Test harness for ``qverify-agent``: real agent subprocesses on loopback and a small gRPC client.

* ``AgentProcess`` starts ``python -m qverify.agent.cli serve --listen 127.0.0.1:PORT
  --model-dir DIR ...`` (a free port, a temp model dir, an optional token file, any extra
  flags such as ``--fault delay:300``), waits (bounded) until the standard health service
  answers SERVING, and stops it by PID: SIGTERM, then SIGKILL if it has not exited in time.
  ``record_modules=PATH`` starts it through ``python -c`` instead, writing the sorted names
  of ``sys.modules`` to PATH when the process exits (what the agent imported).
* ``AgentPool`` remembers every process it started and kills the survivors on ``close()``;
  the ``agent_pool`` (per test) and ``module_agent_pool`` (per module) fixtures wrap it.
* ``AgentClient`` talks to an agent: ``push`` sends a model.bin through PushModel in 1 MiB
  chunks, ``run`` sends a RunRequest and reassembles the streamed dump chunks into numpy
  arrays with the client's own strict reader (``qverify.client.agent_client.RunStreamReader``,
  which checks indices, offsets and sizes before decoding), ``reference_run`` gives the
  in-process simulator's answer for the same request.

Every wait here is bounded: gRPC calls carry deadlines, process waits have timeouts.
"""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qverify.agent import PROTOCOL_VERSION
from qverify.agent.tensors import to_wire
from qverify.client.agent_client import ProtocolViolation, RunStreamReader, read_run_stream
from qverify.simulator import Simulator
from qverify.v1 import board_agent_pb2 as pb
from qverify.v1 import board_agent_pb2_grpc as rpc

CHUNK = 1 << 20           # push chunk size (the protocol's recommendation)
START_TIMEOUT = 30.0      # seconds an agent gets to answer SERVING
STOP_TIMEOUT = 15.0       # seconds an agent gets to exit after SIGTERM before SIGKILL
CALL_TIMEOUT = 30.0       # default deadline of every gRPC call
MAX_RECEIVE = 64 << 20

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Started through ``python -c``: argv[1] is where sys.modules goes at exit, the rest is the CLI's.
_RECORD_MODULES = (
    "import atexit, sys\n"
    "out = sys.argv.pop(1)\n"
    "def _dump():\n"
    "    with open(out, 'w') as fh:\n"
    "        fh.write('\\n'.join(sorted(sys.modules)))\n"
    "atexit.register(_dump)\n"
    "from qverify.agent.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


class AgentStartError(RuntimeError):
    """The agent did not come up; the message carries its log."""


# The agent's reply stream broke the protocol (chunk order, offsets, sizes): the client's own error.
ProtocolError = ProtocolViolation


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_token(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- processes


class AgentProcess:
    """One ``qverify-agent serve`` subprocess."""

    def __init__(self, model_dir: Path, args: Iterable[str] = (), *, log_path: Path, host: str = "127.0.0.1",
                 port: int | None = None, token: str | None = None, token_file: Path | None = None,
                 record_modules: Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.args = list(args)
        self.log_path = Path(log_path)
        self.host = host
        self.port = port or free_port()
        self.token = token
        if token is not None and token_file is None:
            token_file = write_token(self.log_path.with_suffix(".token"), token)
        self.token_file = token_file
        self.record_modules = record_modules
        self.proc: subprocess.Popen | None = None
        self._log = None

    # ---- life cycle
    @property
    def command(self) -> list[str]:
        cli = ["serve", "--listen", f"{self.host}:{self.port}", "--model-dir", str(self.model_dir), *self.args]
        if self.token_file is not None:
            cli += ["--token-file", str(self.token_file)]
        if self.record_modules is not None:
            return [sys.executable, "-c", _RECORD_MODULES, str(self.record_modules), *cli]
        return [sys.executable, "-m", "qverify.agent.cli", *cli]

    def spawn(self) -> "AgentProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.model_dir.parent)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> "AgentProcess":
        """Bounded wait until health says SERVING; AgentStartError (with the log) if it exits or times out."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AgentStartError(f"agent exited with {self.proc.returncode} while starting:\n{self.log()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        self.kill()
        raise AgentStartError(f"agent did not answer SERVING within {timeout} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}" if self.host in ("0.0.0.0", "127.0.0.1") else f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, signum)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL by PID and reap (bounded)."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                pass
        self._close_log()

    def wait(self, timeout: float) -> int:
        """Exit code (raises subprocess.TimeoutExpired after ``timeout`` s)."""
        code = self.proc.wait(timeout=timeout)
        self._close_log()
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.alive():
            self.terminate()
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # ---- observation
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        """Resident set size from /proc/PID/status (VmRSS)."""
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for agent pid {self.pid}")

    def part_files(self) -> list[str]:
        return sorted(p.name for p in self.model_dir.iterdir() if p.name.endswith(".part"))

    def client(self, token: str | None = "default", **kwargs) -> "AgentClient":
        return AgentClient(self.address, token=self.token if token == "default" else token, **kwargs)

    def health(self, timeout: float = 2.0) -> int:
        with grpc.insecure_channel(self.address) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


class AgentPool:
    """Starts agents in one temp folder and kills every survivor (by PID) on close()."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.agents: list[AgentProcess] = []
        self._clients: list[AgentClient] = []
        self._count = 0

    def new(self, *args: str, model_dir: Path | None = None, name: str = "agent", **kwargs) -> AgentProcess:
        """An agent, not yet started (``spawn()`` then ``wait_ready()``; or use ``start``)."""
        self._count += 1
        tag = f"{name}-{self._count}"
        if model_dir is None:
            model_dir = self.root / f"{tag}-models"
        agent = AgentProcess(model_dir, args, log_path=self.root / f"{tag}.log", **kwargs)
        self.agents.append(agent)
        return agent

    def start(self, *args: str, **kwargs) -> AgentProcess:
        """A started agent answering SERVING; a port taken meanwhile is retried on another port."""
        for attempt in range(3):
            agent = self.new(*args, **kwargs).spawn()
            try:
                return agent.wait_ready()
            except AgentStartError as exc:
                if attempt == 2 or "cannot listen" not in str(exc):
                    raise
                kwargs.pop("port", None)
        raise AssertionError("not reached")

    def start_many(self, specs: list[dict]) -> list[AgentProcess]:
        """Start several agents at once (spawn all, then wait for each): startups overlap."""
        def options(spec: dict) -> dict:
            return {k: v for k, v in spec.items() if k != "args"}

        agents = [self.new(*spec.get("args", ()), **options(spec)).spawn() for spec in specs]
        ready = []
        for spec, agent in zip(specs, agents):
            try:
                ready.append(agent.wait_ready())
            except AgentStartError as exc:
                if "cannot listen" not in str(exc):
                    raise
                ready.append(self.start(*spec.get("args", ()), **options(spec)))  # its port was taken: retry
        return ready

    def track(self, client: "AgentClient") -> "AgentClient":
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for agent in self.agents:
            if agent.alive():
                agent.kill()
            agent._close_log()


@pytest.fixture
def agent_pool(tmp_path) -> Iterator[AgentPool]:
    """Agents for one test; every one still running at the end is killed."""
    pool = AgentPool(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def module_agent_pool(tmp_path_factory) -> Iterator[AgentPool]:
    """Agents shared by the tests of a module; every one still running at the end is killed."""
    pool = AgentPool(tmp_path_factory.mktemp("agents"))
    try:
        yield pool
    finally:
        pool.close()


# --------------------------------------------------------------------------- client


@dataclass
class RunOutput:
    """A reassembled Run reply stream."""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    headers: list[pb.DumpHeader] = field(default_factory=list)            # in stream order
    dumps: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (name, "valid"/"aligned") -> array
    timing: pb.Timing | None = None
    messages: int = 0

    def header(self, name: str, layout: str) -> pb.DumpHeader:
        for h in self.headers:
            if h.name == name and h.layout == layout:
                return h
        raise KeyError((name, layout))


def decode_dump(header: pb.DumpHeader, data: bytes) -> np.ndarray:
    """One dump's bytes as the client decodes them (the production reader's checks included)."""
    reader = RunStreamReader("the agent")
    reader.feed(pb.RunReply(dump_batch=pb.DumpBatch(dumps=[pb.DumpHeader(**_header_fields(header), data=data)])))
    return reader.outcome.dumps[(header.name, header.layout)].array


def _header_fields(header: pb.DumpHeader) -> dict:
    return {f.name: v for f, v in header.ListFields() if f.name != "data"}


def collect(replies: Iterable[pb.RunReply]) -> RunOutput:
    """Reassemble a Run stream with the client's own strict reader (qverify.client.agent_client):
    batches of small dumps (data inline), or a header then its chunks in order for a big one;
    outputs; timing last. A broken stream raises ProtocolError."""
    outcome = read_run_stream(replies, "the agent")
    return RunOutput(outputs=outcome.outputs, headers=outcome.headers,
                     dumps={key: dumped.array for key, dumped in outcome.dumps.items()}, timing=outcome.timing,
                     messages=outcome.messages)


class AgentClient:
    """A BoardAgent client with deadlines on every call and the token as metadata."""

    def __init__(self, address: str, token: str | None = None, max_receive: int = MAX_RECEIVE) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", max_receive)])
        self.stub = rpc.BoardAgentStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- unary calls
    def info(self, timeout: float = CALL_TIMEOUT) -> pb.AgentInfo:
        return self.stub.GetInfo(pb.GetInfoRequest(client_protocol_version=PROTOCOL_VERSION), timeout=timeout,
                                 metadata=self.metadata)

    def has(self, sha: str, timeout: float = CALL_TIMEOUT) -> pb.HasModelReply:
        return self.stub.HasModel(pb.ModelRef(sha256=sha), timeout=timeout, metadata=self.metadata)

    def list(self, timeout: float = CALL_TIMEOUT) -> pb.ModelList:
        return self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout, metadata=self.metadata)

    def delete(self, sha: str, timeout: float = CALL_TIMEOUT) -> pb.DeleteModelReply:
        return self.stub.DeleteModel(pb.ModelRef(sha256=sha), timeout=timeout, metadata=self.metadata)

    def health(self, timeout: float = 5.0) -> int:
        return self.health_stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout).status

    # ---- push
    @staticmethod
    def chunks(data: bytes, sha: str, chunk: int = CHUNK, total_bytes: int | None = None,
               limit: int | None = None) -> Iterator[pb.PushChunk]:
        """PushChunks of ``data``: the first names sha256 and total_bytes; stop after ``limit`` chunks."""
        total = len(data) if total_bytes is None else total_bytes
        for number, offset in enumerate(range(0, max(len(data), 1), chunk)):
            if limit is not None and number >= limit:
                return
            piece = data[offset:offset + chunk]
            yield pb.PushChunk(sha256=sha, total_bytes=total, data=piece) if number == 0 else pb.PushChunk(data=piece)

    def push(self, data: bytes, sha: str | None = None, chunk: int = CHUNK, timeout: float = CALL_TIMEOUT,
             **kwargs) -> pb.PushModelReply:
        return self.stub.PushModel(self.chunks(data, sha or model_id(data), chunk, **kwargs), timeout=timeout,
                                   metadata=self.metadata)

    def push_future(self, request_iterator, timeout: float = CALL_TIMEOUT):
        return self.stub.PushModel.future(request_iterator, timeout=timeout, metadata=self.metadata)

    # ---- run
    @staticmethod
    def request(sha: str, inputs: dict[str, np.ndarray] | list[pb.Tensor], dump: int = pb.DUMP_NONE,
                names: Iterable[str] = (), layout: int = pb.LAYOUT_VALID, values: int = pb.VALUES_RAW,
                frames: int = 0, warmup: int = 0, chunk_bytes: int = 0) -> pb.RunRequest:
        tensors = [to_wire(n, a) for n, a in inputs.items()] if isinstance(inputs, dict) else list(inputs)
        return pb.RunRequest(model_sha256=sha, inputs=tensors, dump=dump, dump_names=list(names),
                             dump_layout=layout, dump_values=values, frames=frames, warmup=warmup,
                             chunk_bytes=chunk_bytes)

    def run_stream(self, request: pb.RunRequest, timeout: float = CALL_TIMEOUT):
        """The raw reply stream (a grpc call object: iterate it, ``cancel()`` it)."""
        return self.stub.Run(request, timeout=timeout, metadata=self.metadata)

    def run(self, sha: str, inputs, timeout: float = CALL_TIMEOUT, **kwargs) -> RunOutput:
        return collect(self.run_stream(self.request(sha, inputs, **kwargs), timeout=timeout))


# --------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """The in-process simulator's answer: outputs and dumps (name -> valid / aligned arrays, metadata)."""
    outputs: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    aligned: dict[str, np.ndarray]
    meta: dict[str, object]  # name -> the simulator's Dump (arrays copied into valid/aligned)
    order: list[str]


def reference_run(program, inputs: dict[str, np.ndarray], dump: object = "all", layout: str = "both") -> Reference:
    valid, aligned, meta, order = {}, {}, {}, []

    def sink(d) -> None:
        order.append(d.tensor.name)
        meta[d.tensor.name] = d
        if d.valid is not None:
            valid[d.tensor.name] = np.array(d.valid, copy=True)
        if d.aligned is not None:
            aligned[d.tensor.name] = np.array(d.aligned, copy=True)

    result = Simulator(program).run(inputs, dump=dump, dump_layout=layout, sink=sink if dump else None)
    return Reference({k: np.array(v, copy=True) for k, v in result.outputs.items()}, valid, aligned, meta, order)


def status_of(call) -> tuple[grpc.StatusCode, str]:
    """(code, details) of a finished call or of the RpcError it raised."""
    return call.code(), call.details() or ""
