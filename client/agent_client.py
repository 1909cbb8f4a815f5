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
from typing import Iterable, Iterator

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


class ProtocolViolation(AgentError):
    """The board's reply broke the wire protocol (sizes, offsets, order): an infrastructure failure, exit 3."""


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
    headers: list[pb.DumpHeader] = field(default_factory=list)  # in stream order
    messages: int = 0  # RunReply messages read


_LAYOUTS = ("valid", "aligned")


class RunStreamReader:
    """The one reader of a Run reply stream: strict, checking before decoding.

    A board's bytes are not trusted: a header whose dtype, shape and byte count disagree,
    a chunk at the wrong offset or past the end, a dump sent twice, a message after the
    timing or a stream without timing is a :class:`ProtocolViolation` naming the dump and
    what is wrong. Shapes are multiplied in Python integers (no overflow), and nothing is
    allocated from a declared size: buffers grow only with bytes that arrived.

    Stream grammar: batches of small dumps (each header carries its data), or a header
    followed by its chunks in order for a big one; outputs; the timing last.
    """

    def __init__(self, source: str = "the board") -> None:
        self.source = source
        self.outcome = RunOutcome(outputs={})
        self._current: pb.DumpHeader | None = None  # a big dump whose chunks are arriving
        self._current_form: tuple[np.dtype, tuple[int, ...]] = (np.dtype(np.int8), ())
        self._buffer = bytearray()
        self._done: list[tuple[int, str, str]] = []  # (index, layout, name) of complete dumps

    # ---- what arrived so far (for a stream that broke)
    @property
    def received(self) -> list[str]:
        """Names of the dumps fully received, in dump order."""
        return [name for _, _, name in sorted(self._done)]

    @property
    def outputs_received(self) -> list[str]:
        return list(self.outcome.outputs)

    def _fail(self, what: str) -> ProtocolViolation:
        return ProtocolViolation(f"{self.source} sent a malformed Run reply: {what}; the board's qverify-agent is "
                                 "broken or does not match this qverify: reinstall the same qverify version on the "
                                 "board and restart qverify-agent")

    @staticmethod
    def _label(header: pb.DumpHeader) -> str:
        return f"dump {header.index} '{header.name}' ({header.layout or 'no layout'})"

    def _check_header(self, header: pb.DumpHeader) -> tuple[np.dtype, tuple[int, ...]]:
        """dtype, and shape of the buffer this header announces, once they agree with total_bytes."""
        from qverify.simulator.program import DTYPES

        label = self._label(header)
        if header.layout not in _LAYOUTS:
            raise self._fail(f"{label}: layout must be valid or aligned")
        dtype = DTYPES.get(header.dtype)
        if dtype is None:
            raise self._fail(f"{label}: unknown dtype code {header.dtype}")
        dims = [int(d) for d in (header.shape if header.layout == "valid" else header.aligned_shape)]
        if any(d < 0 for d in dims):
            raise self._fail(f"{label}: negative dimension in shape {_dims_text(dims)}")
        count = 1
        for d in dims:
            count *= d
        need = count * dtype.itemsize
        if int(header.total_bytes) != need:
            raise self._fail(f"{label}: shape {_dims_text(dims)} of {dtype} needs {need} bytes, the header declares "
                             f"{header.total_bytes}")
        if (header.name, header.layout) in self.outcome.dumps:
            raise self._fail(f"{label}: sent twice")
        return dtype, tuple(dims)

    def _store(self, header: pb.DumpHeader, data: bytearray, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if len(data) != header.total_bytes:
            raise self._fail(f"{self._label(header)}: got {len(data)} of {header.total_bytes} bytes")
        # Little-endian on the wire; the bytearray becomes the array's (writable) memory.
        array = np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
        self.outcome.dumps[(header.name, header.layout)] = DumpedTensor(header, array)
        self._done.append((header.index, header.layout, header.name))

    def _close_current(self) -> None:
        if self._current is not None:
            header, self._current = self._current, None
            data, self._buffer = self._buffer, bytearray()
            self._store(header, data, *self._current_form)

    def _inline(self, header: pb.DumpHeader) -> None:
        dtype, shape = self._check_header(header)
        if len(header.data) != header.total_bytes:
            raise self._fail(f"{self._label(header)}: {len(header.data)} inline bytes, the header declares "
                             f"{header.total_bytes}")
        self.outcome.headers.append(header)
        self._store(header, bytearray(header.data), dtype, shape)

    def feed(self, reply: pb.RunReply) -> None:
        """Take one message of the stream; raises ProtocolViolation when it breaks the protocol."""
        self.outcome.messages += 1
        if self.outcome.timing is not None:
            raise self._fail("a message came after the timing, which must be last")
        kind = reply.WhichOneof("item")
        if kind == "dump_chunk":
            chunk = reply.dump_chunk
            current = self._current
            if current is None or chunk.index != current.index:
                raise self._fail(f"a chunk of dump {chunk.index} outside its header")
            if chunk.offset != len(self._buffer):
                raise self._fail(f"{self._label(current)}: chunk at offset {chunk.offset}, expected "
                                 f"{len(self._buffer)}")
            if len(self._buffer) + len(chunk.data) > current.total_bytes:
                raise self._fail(f"{self._label(current)}: chunks hold more than the {current.total_bytes} bytes "
                                 "the header declares")
            self._buffer += chunk.data
            return
        self._close_current()
        if kind == "dump_batch":
            for header in reply.dump_batch.dumps:
                self._inline(header)
        elif kind == "dump_header":
            header = reply.dump_header
            if header.data:  # a single dump with its data inline
                self._inline(header)
                return
            self._current_form = self._check_header(header)  # before any chunk is accepted
            self.outcome.headers.append(header)
            self._current = header
        elif kind == "output":
            tensor = reply.output
            if tensor.name in self.outcome.outputs:
                raise self._fail(f"output '{tensor.name}' sent twice")
            try:
                self.outcome.outputs[tensor.name] = from_wire(tensor)
            except ValueError as exc:  # from_wire checks dtype, dims and byte count before decoding
                raise self._fail(f"output {str(exc).removeprefix('input ')}") from None
        elif kind == "timing":
            self.outcome.timing = reply.timing
        else:
            raise self._fail(f"an empty RunReply (item {kind!r})")

    def finish(self) -> RunOutcome:
        """The outcome of a stream that ended normally (it must have ended with the timing)."""
        self._close_current()
        if self.outcome.timing is None:
            raise self._fail("the stream ended without the timing")
        return self.outcome


def read_run_stream(replies: Iterable[pb.RunReply], source: str = "the board") -> RunOutcome:
    """Reassemble a whole Run reply stream with :class:`RunStreamReader` (gRPC errors propagate)."""
    reader = RunStreamReader(source)
    for reply in replies:
        reader.feed(reply)
    return reader.finish()


def _dims_text(dims: list[int]) -> str:
    """A shape for a message: long ones summarised, so a hostile header cannot flood the terminal."""
    if len(dims) <= 8:
        return "[" + ", ".join(map(str, dims)) + "]"
    return "[" + ", ".join(map(str, dims[:3])) + f", ... ({len(dims)} dims)]"


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
        self._tls, self._tls_ca = bool(tls_ca or client_cert), tls_ca
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
                raise BoardUnreachable(self._why_no_connection(), error.code()) from None
            raise map_error(error, self.address) from None
        check_protocol(info.protocol_version, self.address)
        return info

    def _why_no_connection(self) -> str:
        """What failed when no connection came up: one quick attempt that does not wait reports the
        transport's last error (a refused port, a TLS handshake, a connection the agent closed)."""
        try:
            self.stub.GetInfo(pb.GetInfoRequest(client_protocol_version=PROTOCOL_VERSION),
                              timeout=min(2.0, self.connect_timeout), metadata=self.metadata)
            detail = ""
        except grpc.RpcError as error:
            detail = error.details() or ""
        low = detail.lower()
        head = f"board {self.address} unreachable"
        if "certificate_verify_failed" in low or "handshake failed" in low:
            return (f"{head}: the TLS handshake failed, the agent's certificate is not signed by --tls-ca "
                    f"({self._tls_ca or 'no CA given'}) or does not name this address; give the CA that signed it")
        if "socket closed" in low or "connection reset" in low:
            if self._tls:
                return (f"{head}: the agent closed the connection during the TLS handshake; an agent with "
                        "--tls-client-ca (mTLS) needs a client certificate: give --tls-cert and --tls-key "
                        "signed by that CA")
            return (f"{head}: the agent closed the connection; it probably speaks TLS: give --tls-ca (and, for "
                    "mTLS, --tls-cert/--tls-key)")
        if "connection refused" in low:
            return (f"{head}: connection refused (no connection within {self.connect_timeout:g} s); check the "
                    "address and port, and that qverify-agent runs")
        return (f"{head}: no connection within {self.connect_timeout:g} s; check the address, port and that "
                "qverify-agent runs")

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

    def push_bytes(self, data: bytes, sha256: str) -> None:
        """Upload a model held in memory (a rewired program for isolation) through PushModel."""
        def chunks() -> Iterator[pb.PushChunk]:
            for offset in range(0, max(len(data), 1), CHUNK):
                yield pb.PushChunk(sha256=sha256 if offset == 0 else "", total_bytes=len(data) if offset == 0 else 0,
                                   data=data[offset:offset + CHUNK])

        self._call(self.stub.PushModel, chunks())

    def run(self, sha256: str, inputs: dict[str, np.ndarray], dump: str | list[str] | None = None,
            layout: str = "valid", dequantized: bool = False, frames: int = 1, warmup: int = 0,
            chunk_bytes: int = 0, isolate: bool = False, feeds: dict[str, np.ndarray] | None = None,
            groups: list[tuple[str, str]] | None = None, core: int | None = None) -> RunOutcome:
        """Run once (``frames`` measured); with ``isolate`` (protocol 1.1, capability "isolate") the node
        ``groups`` run alone, reading ``feeds`` (program tensors, logical layout) for what they do not compute.
        ``core``: the NPU core to run on (None: any free core)."""
        mode = {None: pb.DUMP_NONE, "outputs": pb.DUMP_OUTPUTS, "all": pb.DUMP_ALL}.get(
            dump if isinstance(dump, (str, type(None))) else "named", pb.DUMP_NAMED)
        request = pb.RunRequest(
            model_sha256=sha256, inputs=[to_wire(n, a) for n, a in inputs.items()], dump=mode,
            dump_names=list(dump) if mode == pb.DUMP_NAMED else [],
            dump_layout={"valid": pb.LAYOUT_VALID, "aligned": pb.LAYOUT_ALIGNED, "both": pb.LAYOUT_BOTH}[layout],
            dump_values=pb.VALUES_DEQUANTIZED if dequantized else pb.VALUES_RAW, frames=frames, warmup=warmup,
            chunk_bytes=chunk_bytes, isolate=isolate, feeds=[to_wire(n, a) for n, a in (feeds or {}).items()],
            groups=[pb.NodeGroup(first=a, last=b) for a, b in (groups or [])])
        if core is not None:
            request.core = core
        reader = RunStreamReader(f"board {self.address}")
        call = None
        try:
            call = self.stub.Run(request, timeout=self.timeout, metadata=self.metadata)
            for reply in call:
                reader.feed(reply)
        except ProtocolViolation:
            call.cancel()  # stop the board streaming a reply nobody reads
            raise
        except grpc.RpcError as error:
            failure = map_error(error, self.address)
            # What arrived before the stream broke: which tensors the board had finished.
            failure.received = reader.received
            failure.outputs_received = reader.outputs_received
            raise failure from None
        return reader.finish()

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
