"""Host-side client of ``qverify-agent``: status codes mapped back to exceptions
(:mod:`qverify.client.agent_errors`), Run replies read strictly (:mod:`qverify.client.run_stream`).

    with BoardClient("127.0.0.1:7060", token=...) as board:
        info = board.info()                 # refuses an incompatible protocol version
        sha = board.push(Path("model.bin"))  # content-addressed: skipped if present
        result = board.run(sha, {"x": feed}, dump="all", layout="both")
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np

from qverify.agent import PROTOCOL_VERSION
from qverify.agent.tensors import to_wire
# The exceptions and the Run stream reader have modules of their own; they are imported
# here too so that every name this module has always offered is still importable from it.
from qverify.client.agent_errors import (
    AgentError, AuthenticationError, BadRequest, BoardBusy, BoardUnreachable, ModelMissing, ProtocolMismatch,
    ProtocolViolation, map_error,
)
from qverify.client.run_stream import DumpedTensor, RunOutcome, RunStreamReader, read_run_stream
from qverify.v1 import board_agent_pb2 as pb
from qverify.v1 import board_agent_pb2_grpc

__all__ = [
    "CHUNK", "AgentError", "BoardUnreachable", "AuthenticationError", "ProtocolMismatch", "ModelMissing", "BoardBusy",
    "BadRequest", "ProtocolViolation", "map_error", "DumpedTensor", "RunOutcome", "RunStreamReader",
    "read_run_stream", "file_sha256", "BoardClient", "check_protocol",
]

CHUNK = 1 << 20


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
