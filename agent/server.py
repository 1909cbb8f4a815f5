"""Build and run the agent's gRPC server: BoardAgent + health + reflection, auth, TLS, limits."""
from __future__ import annotations

import ipaddress
import logging
import signal
import ssl
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from qverify.agent import backends, store as store_mod
from qverify.agent.auth import TokenInterceptor
from qverify.agent.faults import Fault
from qverify.agent.service import AgentConfig, BoardAgentService
from qverify.simulator.targets import TargetProfile
from qverify.v1 import board_agent_pb2, board_agent_pb2_grpc

log = logging.getLogger("qverify.agent")
SERVICE_NAME = board_agent_pb2.DESCRIPTOR.services_by_name["BoardAgent"].full_name


class ConfigError(Exception):
    """The agent's options are unsafe or inconsistent; the message says what to change."""


class StartError(Exception):
    """The agent could not start with valid options: its port or its files (the message says which)."""


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[v6]:PORT`` -> (host, port); a missing port is ``default_port``.

    Raises ConfigError for anything else, so a typo never ends up on an unexpected port.
    """
    raw = text.strip()
    if raw.startswith("["):
        host, bracket, rest = raw[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"--listen {text!r}: an IPv6 address goes in brackets, e.g. [::1]:{default_port}")
        port_text = rest[1:] if rest else ""
    elif raw.count(":") > 1:
        raise ConfigError(f"--listen {text!r}: write an IPv6 address in brackets, e.g. [::1]:{default_port}")
    else:
        host, _, port_text = raw.partition(":")
        if ":" in raw and not port_text:
            raise ConfigError(f"--listen {text!r}: the port after ':' is missing; give HOST:PORT, e.g. "
                              f"0.0.0.0:{default_port}")
    if not host:
        raise ConfigError(f"--listen {text!r}: the host is missing; give HOST:PORT, e.g. 127.0.0.1:{default_port}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen {text!r}: port {port_text!r} is not a port number (1-65535)")
    return host, int(port_text)


@dataclass
class ServerOptions:
    listen: str = "127.0.0.1:7060"
    model_dir: Path = Path("/var/lib/qverify/models")
    backend: str = "sim"
    target: TargetProfile | None = None
    npu_cores: int = 1
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    store_capacity: int = 4 << 30
    workers: int = 16
    grace_s: float = 30.0
    config: AgentConfig = field(default_factory=AgentConfig)
    backend_options: dict = field(default_factory=dict)  # keyword arguments of a non-sim backend (device=...)


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_security(options: ServerOptions) -> None:
    """Off loopback, every caller must authenticate: a token, or a client certificate (mTLS).

    Server-only TLS encrypts but lets anyone holding the CA certificate call every RPC, so it
    does not count; nor does anything without --insecure.
    """
    if bool(options.tls_cert) != bool(options.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if options.tls_client_ca and not options.tls_cert:
        raise ConfigError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
    authenticated = bool(options.token or (options.tls_cert and options.tls_client_ca))
    if not is_loopback(options.listen) and not authenticated:
        if options.tls_cert:
            unsafe = "with TLS but no client authentication: anyone holding the CA certificate can run models"
            fix = ("give --token-file, or --tls-client-ca to require client certificates (mTLS), or --insecure to "
                   "accept an encrypted but unauthenticated agent")
        else:
            unsafe = "without a token or TLS: anyone on the network can run models"
            fix = "give --token-file or --tls-cert/--tls-key with --tls-client-ca, or --insecure to accept an open agent"
        if not options.insecure:
            raise ConfigError(f"--listen {options.listen} is reachable from the network: {fix}")
        log.warning("listening on %s %s (--insecure)", options.listen, unsafe)


def _read_tls(options: ServerOptions) -> tuple[bytes, bytes, bytes | None]:
    """(key, certificate chain, client CA) read and checked, so a bad file is named instead of 'Failed to bind'."""
    files = {"--tls-key": options.tls_key, "--tls-cert": options.tls_cert, "--tls-client-ca": options.tls_client_ca}
    data: dict[str, bytes | None] = {}
    for flag, path in files.items():
        if path is None:
            data[flag] = None
            continue
        try:
            data[flag] = Path(path).read_bytes()
        except OSError as exc:
            raise StartError(f"{flag} {path}: {exc.strerror}; give a readable PEM file") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(options.tls_cert, options.tls_key)
    except ssl.SSLError as exc:
        raise ConfigError(f"--tls-cert {options.tls_cert} / --tls-key {options.tls_key}: not a PEM certificate and "
                          f"the private key that belongs to it ({exc.reason or exc}); give a matching pair") from None
    if data["--tls-client-ca"] is not None:
        try:
            context.load_verify_locations(cafile=options.tls_client_ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"--tls-client-ca {options.tls_client_ca}: not a PEM CA certificate "
                              f"({exc.reason or exc}); give the CA that signs the clients' certificates") from None
    return data["--tls-key"], data["--tls-cert"], data["--tls-client-ca"]


class AgentServer:
    """A running agent. ``start()`` binds; ``stop()`` drains (health NOT_SERVING first)."""

    def __init__(self, options: ServerOptions, faults: list[Fault] = ()) -> None:
        check_security(options)
        self.options = options
        target = options.target
        backend_cls = backends.backend_class(options.backend)
        if options.backend == "sim":
            self.backend = backend_cls(target, npu_cores=options.npu_cores, faults=list(faults),
                                       max_tensor_bytes=options.config.max_tensor_bytes)
        else:  # a runtime backend: its own options (--device), and it knows its own target profile
            self.backend = backend_cls(target, **dict(options.backend_options))
            target = options.target = getattr(self.backend, "target", None) or target
        options.config.faults = list(faults)
        self.store = store_mod.ModelStore(options.model_dir, options.store_capacity, options.config.max_model_bytes)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.service = BoardAgentService(self.backend, self.store, options.config, target.to_proto())
        message_limit = options.config.max_message_bytes
        interceptors = [TokenInterceptor(options.token)] if options.token else []
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="qverify-agent"),
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", message_limit),
                     ("grpc.max_send_message_length", message_limit),
                     ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=options.workers + options.config.max_queue)
        board_agent_pb2_grpc.add_BoardAgentServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = self._bind()
        self._stopped = threading.Event()

    def _bind(self) -> int:
        o = self.options
        try:
            if o.tls_cert:
                key, cert, ca = _read_tls(o)
                creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                    require_client_auth=ca is not None)
                port = self.server.add_secure_port(o.listen, creds)
            else:
                port = self.server.add_insecure_port(o.listen)
        except RuntimeError:  # gRPC says only "Failed to bind"; the cause is the same as port 0 below
            port = 0
        if port == 0:
            raise StartError(f"cannot listen on {o.listen}: the port is in use, or the host is not an address of "
                             "this machine; stop the other process or choose another --listen")
        return port

    def start(self) -> None:
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info("qverify-agent serving on %s (port %d), backend %s, target %s, store %s", self.options.listen,
                 self.port, self.options.backend, self.options.target.name, self.options.model_dir)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting work, let running calls finish within the grace period, then stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.options.grace_s if grace is None else grace
        self.health.enter_graceful_shutdown()
        self.service.draining = True  # new calls get UNAVAILABLE from here on
        log.info("draining: health NOT_SERVING, waiting up to %.0f s for running calls", grace)
        if not self.service.wait_idle(grace):
            log.warning("grace period over with calls still running; stopping anyway")
        self.server.stop(1.0).wait()
        self.backend.close()
        log.info("stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve(options: ServerOptions, faults: list[Fault] = ()) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    agent = AgentServer(options, faults)
    agent.start()
    stopping = threading.Event()

    def on_signal(signum, frame) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=agent.stop, name="qverify-drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.wait()
    return 0
