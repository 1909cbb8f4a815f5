"""Host-side client of ``qverify-agent``: status codes mapped back to exceptions.

    with BoardClient("127.0.0.1:7060", token=...) as board:
        info = board.info()                 # refuses an incompatible protocol version
        sha = board.push(Path("model.bin"))  # content-addressed: skipped if present
        result = board.run(sha, {"x": feed}, dump="all", layout="both")
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np

from qverify.agent import PROTOCOL_VERSION
from qverify.agent.tensors import from_wire, to_wire
from qverify.v1 import board_agent_pb2 as pb
from qverify.v1 import board_agent_pb2_grpc

CHUNK = 1 << 20


class AgentError(Exception):
    """A call to the agent failed; ``code`` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.received: list[str] = []  # Run: tensors fully received before the failure
        self.outputs_received: list[str] = []


class BoardUnreachable(AgentError):
    """The board does not answer (down, wrong address or port, network): exit code 3."""


class AuthenticationError(AgentError):
    """The agent refused the token or certificate."""


class ProtocolMismatch(AgentError):
    """The agent speaks an incompatible protocol version."""


class ModelMissing(AgentError):
    """The model is not in the board's store."""


class BoardBusy(AgentError):
    """The board's run queue is full; retry later."""


class BadRequest(AgentError):
    """The agent refused the request as malformed (inputs, options); the message says why."""


_EXCEPTIONS = {
    grpc.StatusCode.UNAVAILABLE: BoardUnreachable,
    grpc.StatusCode.DEADLINE_EXCEEDED: BoardUnreachable,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.NOT_FOUND: ModelMissing,
    grpc.StatusCode.RESOURCE_EXHAUSTED: BoardBusy,
    grpc.StatusCode.INVALID_ARGUMENT: BadRequest,
    grpc.StatusCode.FAILED_PRECONDITION: BadRequest,
}


def map_error(error: grpc.RpcError, address: str) -> AgentError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    cls = _EXCEPTIONS.get(code, AgentError)
    if cls is BoardUnreachable:
        details = f"board {address} unreachable ({code.name.lower() if code else 'error'}): {details}"
    return cls(details, code)


@dataclass
class DumpedTensor:
    header: pb.DumpHeader
    array: np.ndarray


@dataclass
class RunOutcome:
    outputs: dict[str, np.ndarray]
    dumps: dict[tuple[str, str], DumpedTensor] = field(default_factory=dict)  # (name, "valid"|"aligned")
    timing: pb.Timing | None = None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class BoardClient:
    """One agent connection. Use as a context manager; every call has a deadline."""

    def __init__(self, address: str, token: str | None = None, tls_ca: Path | None = None,
                 client_cert: tuple[Path, Path] | None = None, timeout: float = 60.0,
                 connect_timeout: float = 5.0) -> None:
        self.address = address
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        if tls_ca or client_cert:
            key, cert = (client_cert[1].read_bytes(), client_cert[0].read_bytes()) if client_cert else (None, None)
            creds = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes() if tls_ca else None,
                                                 private_key=key, certificate_chain=cert)
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.stub = board_agent_pb2_grpc.BoardAgentStub(self.channel)

    def __enter__(self) -> "BoardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise map_error(error, self.address) from None

    def info(self) -> pb.AgentInfo:
        """GetInfo, refusing an agent whose protocol major version differs from ours."""
        # wait_for_ready rather than channel_ready_future: the latter leaves a polling thread
        # behind that makes closing the channel block for a fraction of a second.
        try:
            info = self.stub.GetInfo(pb.GetInfoRequest(client_protocol_version=PROTOCOL_VERSION),
                                     timeout=self.connect_timeout, metadata=self.metadata, wait_for_ready=True)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise BoardUnreachable(f"board {self.address} unreachable: no connection within "
                                       f"{self.connect_timeout:g} s; check the address, port and that qverify-agent "
                                       "runs", error.code()) from None
            raise map_error(error, self.address) from None
        check_protocol(info.protocol_version, self.address)
        return info

    def has(self, sha256: str) -> bool:
        return self._call(self.stub.HasModel, pb.ModelRef(sha256=sha256)).present

    def push(self, path: Path) -> str:
        """Upload model.bin through PushModel unless the board has it; returns its sha256."""
        sha = file_sha256(path)
        if self.has(sha):
            return sha
        size = path.stat().st_size

        def chunks() -> Iterator[pb.PushChunk]:
            with open(path, "rb") as fh:
                first = True
                for block in iter(lambda: fh.read(CHUNK), b""):
                    yield pb.PushChunk(sha256=sha if first else "", total_bytes=size if first else 0, data=block)
                    first = False

        self._call(self.stub.PushModel, chunks())
        return sha

    def run(self, sha256: str, inputs: dict[str, np.ndarray], dump: str | list[str] | None = None,
            layout: str = "valid", dequantized: bool = False, frames: int = 1, warmup: int = 0,
            chunk_bytes: int = 0, isolate: bool = False, feeds: dict[str, np.ndarray] | None = None,
            groups: list[tuple[str, str]] | None = None) -> RunOutcome:
        """Run once (``frames`` measured); with ``isolate`` (protocol 1.1, capability "isolate") the node
        ``groups`` run alone, reading ``feeds`` (program tensors, logical layout) for what they do not compute."""
        mode = {None: pb.DUMP_NONE, "outputs": pb.DUMP_OUTPUTS, "all": pb.DUMP_ALL}.get(
            dump if isinstance(dump, (str, type(None))) else "named", pb.DUMP_NAMED)
        request = pb.RunRequest(
            model_sha256=sha256, inputs=[to_wire(n, a) for n, a in inputs.items()], dump=mode,
            dump_names=list(dump) if mode == pb.DUMP_NAMED else [],
            dump_layout={"valid": pb.LAYOUT_VALID, "aligned": pb.LAYOUT_ALIGNED, "both": pb.LAYOUT_BOTH}[layout],
            dump_values=pb.VALUES_DEQUANTIZED if dequantized else pb.VALUES_RAW, frames=frames, warmup=warmup,
            chunk_bytes=chunk_bytes, isolate=isolate, feeds=[to_wire(n, a) for n, a in (feeds or {}).items()],
            groups=[pb.NodeGroup(first=a, last=b) for a, b in (groups or [])])
        outcome = RunOutcome(outputs={})
        headers: dict[tuple[int, str], pb.DumpHeader] = {}
        buffers: dict[tuple[int, str], bytearray] = {}
        try:
            for reply in self.stub.Run(request, timeout=self.timeout, metadata=self.metadata):
                kind = reply.WhichOneof("item")
                if kind == "output":
                    outcome.outputs[reply.output.name] = from_wire(reply.output)
                elif kind == "dump_batch":
                    for header in reply.dump_batch.dumps:  # small dumps, data inline
                        key = (header.index, header.layout)
                        headers[key] = header
                        buffers[key] = bytearray(header.data)
                elif kind == "dump_header":
                    key = (reply.dump_header.index, reply.dump_header.layout)
                    headers[key] = reply.dump_header
                    buffers[key] = bytearray(reply.dump_header.data)
                elif kind == "dump_chunk":
                    key = next(k for k in headers if k[0] == reply.dump_chunk.index
                               and len(buffers[k]) < headers[k].total_bytes)
                    buffers[key] += reply.dump_chunk.data
                elif kind == "timing":
                    outcome.timing = reply.timing
        except grpc.RpcError as error:
            failure = map_error(error, self.address)
            # What arrived before the stream broke: which tensors the board had finished.
            failure.received = [h.name for k, h in sorted(headers.items()) if len(buffers[k]) >= h.total_bytes]
            failure.outputs_received = list(outcome.outputs)
            raise failure from None
        from qverify.simulator.program import dtype_of

        for key, header in headers.items():
            shape = header.shape if header.layout == "valid" else header.aligned_shape
            array = np.frombuffer(bytes(buffers[key]), dtype=dtype_of(header.dtype)).reshape(tuple(shape))
            outcome.dumps[(header.name, header.layout)] = DumpedTensor(header, array)
        return outcome

    def perf(self, sha256: str, inputs: dict[str, np.ndarray] | None = None, frames: int = 100, threads: int = 1,
             warmup: int = 0) -> pb.PerfReply:
        """Perf: latency distribution and throughput over ``frames`` on ``threads`` concurrent runners.

        Without ``inputs`` the agent runs seeded random inputs.
        """
        request = pb.PerfRequest(model_sha256=sha256, inputs=[to_wire(n, a) for n, a in (inputs or {}).items()],
                                 frames=frames, threads=threads, warmup=warmup)
        return self._call(self.stub.Perf, request)


def check_protocol(agent_version: str, address: str) -> None:
    ours, theirs = PROTOCOL_VERSION.split(".")[0], (agent_version or "0").split(".")[0]
    if ours != theirs:
        raise ProtocolMismatch(f"board {address} speaks agent protocol {agent_version or 'unknown'}, this qverify "
                               f"speaks {PROTOCOL_VERSION}; install the same qverify major version on both sides",
                               grpc.StatusCode.FAILED_PRECONDITION)
