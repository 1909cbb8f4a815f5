"""Reaching a board: ``-b HOST[:PORT]`` or, without ``-b``, an embedded emulated board.

:func:`open_board` yields a connected :class:`BoardClient` whose protocol version was
checked. Without a host it starts a real agent in this process on loopback (real gRPC,
temporary model store, the model's own target), so a newcomer needs no hardware; it is
stopped when the ``with`` block ends.

:func:`ensure_model` puts model.bin into the board's store, content-addressed: SFTP
(default; the file lands in the store directory the agent reports) or the agent's
PushModel (``--transport grpc``); a model the board already has is not sent again.

A host that is a ``~/.ssh/config`` alias (``Host board1`` with ``HostName``) is reached at
that HostName by both: the SFTP push and the agent's gRPC connection.
"""
from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

from qverify.client.agent_client import BoardClient, file_sha256

DEFAULT_AGENT_PORT = 7060
TRANSPORTS = ("sftp", "grpc")  # how model.bin reaches the board
DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds to wait for the board
DEFAULT_TIMEOUT = 300.0  # seconds a call may take on the board


def client_cert(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    """(certificate, key) for mTLS, or None; they go together."""
    if bool(cert) != bool(key):
        raise BoardSpecError("--tls-cert and --tls-key go together: the client certificate and its private key")
    return (Path(cert), Path(key)) if cert else None


def check_tls_files(ca: Path | None, cert: Path | None, key: Path | None) -> None:
    """The command line's TLS files exist, and a client certificate comes with its key (BoardSpecError)."""
    for flag, path in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)):
        if path is not None and not Path(path).is_file():
            raise BoardSpecError(f"{flag} {path}: no such file")
    client_cert(cert, key)


class BoardSpecError(ValueError):
    """``-b`` cannot be parsed."""


@dataclass
class BoardSettings:
    """How to reach a board besides its address: the options ``verify``, ``run``, ``perf``,
    ``board info`` and the farm share, declared once (the command-line flags are in
    :mod:`qverify.client.board_options`)."""
    port: int | None = None  # None: the one in -b HOST:PORT, else DEFAULT_AGENT_PORT
    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None  # client certificate and key for an mTLS agent
    tls_key: Path | None = None
    transport: str = "sftp"  # one of TRANSPORTS
    ssh: object | None = None  # qverify.client.ssh.SshOptions
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT

    def check(self) -> None:
        """The settings make sense and the TLS files exist (BoardSpecError otherwise)."""
        if self.transport not in TRANSPORTS:
            raise BoardSpecError(f"--transport {self.transport}: choose sftp or grpc")
        check_tls_files(self.tls_ca, self.tls_cert, self.tls_key)
        if self.connect_timeout <= 0 or self.timeout <= 0:
            raise BoardSpecError("--connect-timeout and --timeout must be positive numbers of seconds")

    def board_options(self, board: str | None, faults: Sequence[str] = ()) -> BoardOptions:
        """The :class:`BoardOptions` of board ``-b board`` (None: the embedded emulated board)."""
        host, port = parse_board(board, self.port)
        return BoardOptions(**{**self.as_kwargs(), "port": port}, host=host, faults=list(faults))

    def as_kwargs(self) -> dict[str, object]:
        """The settings as keyword arguments of :func:`qverify.verify` (the SSH options kept as they are)."""
        return {f.name: getattr(self, f.name) for f in fields(BoardSettings)}


@dataclass
class BoardOptions(BoardSettings):
    """How to reach a board's agent (and its SSH for pushes): the settings, and where the board is."""
    host: str | None = None  # None: embedded emulated board
    port: int = DEFAULT_AGENT_PORT  # resolved from -b HOST:PORT and --port
    faults: list[str] = field(default_factory=list)  # embedded board only (tests, demos)

    @property
    def embedded(self) -> bool:
        return self.host is None

    @property
    def label(self) -> str:
        return "board" if self.host is None else f"board {self.host}"


def parse_board(text: str | None, port: int | None = None) -> tuple[str | None, int]:
    """``HOST``, ``HOST:PORT``, ``[v6]:PORT`` -> (host, port); ``--port`` fills a missing port."""
    if port is not None and not 0 < port < 65536:
        raise BoardSpecError(f"--port {port}: not a port number; give 1-65535 (the agent's default is "
                             f"{DEFAULT_AGENT_PORT})")
    default = DEFAULT_AGENT_PORT if port is None else port
    if text is None:
        return None, default
    text = text.strip()
    if not text:
        raise BoardSpecError("-b: empty board address; give HOST or HOST:PORT")
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed:
            raise BoardSpecError(f"-b {text}: missing ']' after the IPv6 address; write [ADDRESS] or [ADDRESS]:PORT")
        if rest and not rest.startswith(":"):
            raise BoardSpecError(f"-b {text}: unexpected '{rest}' after ']'; write [ADDRESS] or [ADDRESS]:PORT")
        if rest == ":":
            raise BoardSpecError(f"-b {text}: no port after ':'; write [ADDRESS]:PORT or leave the ':' out")
        port_text = rest[1:]
        if not host or "]" in host or "[" in host:
            raise BoardSpecError(f"-b {text}: '{host}' is not an address; write [ADDRESS] or [ADDRESS]:PORT")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text:
            raise BoardSpecError(f"-b {text}: no port after ':'; write HOST:PORT or leave the ':' out")
    else:
        host, port_text = text, ""
    if not host:
        raise BoardSpecError(f"-b {text}: no host; give HOST or HOST:PORT")
    if any(c in host for c in "[]/@") or any(c.isspace() for c in host):
        raise BoardSpecError(f"-b {text}: '{host}' is not a host name or address; give HOST, HOST:PORT or "
                             "[IPv6]:PORT")
    if port_text:
        try:
            value = int(port_text)
        except ValueError:
            value = -1
        if not 0 < value < 65536:
            raise BoardSpecError(f"-b {text}: port '{port_text}' must be a number from 1 to 65535")
        return host, value
    return host, default


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.contextmanager
def embedded_board(target: str | None = None, faults: list[str] = ()) -> Iterator[str]:
    """A real agent in this process on 127.0.0.1 (a free port), temporary store; yields its address."""
    from qverify.agent.faults import parse_fault
    from qverify.agent.server import AgentServer, ServerOptions
    from qverify.simulator import get_target

    if any(f.startswith("crash") for f in faults):
        raise BoardSpecError("--fault crash kills the agent's process, which for the embedded board is this one; "
                             "start qverify-agent with --fault crash:LAYER and point -b at it")
    with tempfile.TemporaryDirectory(prefix="qverify-board-") as store:
        options = ServerOptions(listen="127.0.0.1:0", model_dir=Path(store), target=get_target(target or "sim-a16"),
                                grace_s=2.0)
        server = AgentServer(options, [parse_fault(f) for f in faults])
        server.start()
        try:
            yield f"127.0.0.1:{server.port}"
        finally:
            server.stop(grace=2.0)


@contextlib.contextmanager
def open_board(options: BoardOptions, target: str | None = None) -> Iterator[BoardClient]:
    """A connected client (protocol checked); the embedded board lives as long as the block."""
    with contextlib.ExitStack() as stack:
        if options.embedded:
            address = stack.enter_context(embedded_board(target, options.faults))
        else:
            from qverify.client.ssh import agent_host

            # An ~/.ssh/config alias (-b board1) names its HostName for the agent too, as for the push.
            address = _address(agent_host(options.host, options.ssh), options.port)
        client = stack.enter_context(BoardClient(address, token=options.token, tls_ca=options.tls_ca,
                                                 client_cert=client_cert(options.tls_cert, options.tls_key),
                                                 timeout=options.timeout, connect_timeout=options.connect_timeout))
        client.agent_info = client.info()
        yield client


@dataclass
class PushReport:
    sha256: str
    sent: bool
    bytes: int
    seconds: float
    transport: str


def ensure_model(client: BoardClient, path: Path, options: BoardOptions,
                 progress: Callable[[int, int], None] | None = None) -> PushReport:
    """Make model.bin present in the board's store; returns its sha256 and whether bytes moved."""
    import time

    sha = file_sha256(path)
    size = path.stat().st_size
    start = time.perf_counter()
    if client.has(sha):
        return PushReport(sha, False, size, 0.0, "none")
    if options.transport == "grpc" or options.embedded:
        client.push(path)
        return PushReport(sha, True, size, time.perf_counter() - start, "grpc")
    from qverify.client.ssh import SshOptions, push_sftp

    store_dir = client.agent_info.model_store_path
    result = push_sftp(path, options.host, store_dir, sha, options.ssh or SshOptions(), progress=progress)
    return PushReport(sha, result.sent, size, result.seconds, "sftp")
