"""``qverify-agent``: the board daemon's command line (argparse: boards have no typer).

    qverify-agent --version
    qverify-agent serve [--listen 127.0.0.1:7060] [--model-dir DIR] [--backend sim|openvino] [--device CPU]
                        [--target sim-a16] [--token-file F] [--tls-cert C --tls-key K]
                        [--tls-client-ca CA] [--insecure] [--max-queue N] [--fault KIND:TARGET]

Exit codes: 0 stopped cleanly, 2 bad options, 3 could not start (port, files).
Every foreseeable failure is one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import stat
import sys
from pathlib import Path

from qverify._version import __version__
from qverify.agent import DEFAULT_PORT


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().rstrip("ib").rstrip("b") if text.lower().endswith(("ib", "b")) else text.strip().lower()
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (e.g. 512M, 4G)") from None


# (option, environment variable) pairs: --help lists them, so a unit file's Environment= is discoverable.
ENVIRONMENT = (
    ("--listen", "QVERIFY_AGENT_LISTEN"), ("--model-dir", "QVERIFY_AGENT_MODEL_DIR"),
    ("--backend", "QVERIFY_AGENT_BACKEND"), ("--device", "QVERIFY_AGENT_DEVICE"),
    ("--target", "QVERIFY_AGENT_TARGET"), ("--board-id", "QVERIFY_AGENT_BOARD_ID"),
    ("--token-file", "QVERIFY_AGENT_TOKEN_FILE"), ("--store-capacity", "QVERIFY_AGENT_STORE_CAPACITY"),
    ("--log-level", "QVERIFY_AGENT_LOG_LEVEL"),
)


def _version_text() -> str:
    from qverify.agent import PROTOCOL_VERSION

    return f"qverify-agent {__version__} (protocol {PROTOCOL_VERSION})"


def build_parser() -> argparse.ArgumentParser:
    """The ``qverify-agent`` parser; every option's help names its default and, where one
    exists, its environment variable (which replaces the built-in default)."""
    env = os.environ.get
    variables = dict(ENVIRONMENT)

    def shown(option: str, default: str | None) -> str:
        parts = [f"default: {default}"] if default is not None else []
        if option in variables:
            parts.append(f"env {variables[option]}")
        return f" ({'; '.join(parts)})" if parts else ""

    def add(parser: argparse.ArgumentParser, option: str, help: str = "", default_text: str | None = None,
            **kwargs) -> None:
        parser.add_argument(option, help=(help + shown(option, default_text)).strip(), **kwargs)

    epilog = "environment variables (an option given on the command line wins):\n" + "\n".join(
        f"  {name:<30} {option}" for option, name in ENVIRONMENT)
    parser = argparse.ArgumentParser(prog="qverify-agent", description="qverify board agent (gRPC daemon)",
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version_text())
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the agent until SIGTERM", epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    listen = f"127.0.0.1:{DEFAULT_PORT}"
    add(s, "--listen", "HOST:PORT to listen on; a network address needs a token or TLS", listen,
        default=env("QVERIFY_AGENT_LISTEN", listen))
    add(s, "--model-dir", "model store folder (content-addressed <sha256>.bin files)", "/var/lib/qverify/models",
        type=Path, default=Path(env("QVERIFY_AGENT_MODEL_DIR", "/var/lib/qverify/models")))
    add(s, "--backend", "sim (emulated board), openvino, or a vendor backend registered under the entry-point "
        "group qverify.backends", "sim", default=env("QVERIFY_AGENT_BACKEND", "sim"))
    add(s, "--device", "device of a runtime backend (openvino: CPU, GPU, ...)", "CPU",
        default=env("QVERIFY_AGENT_DEVICE") or None)
    add(s, "--target", "target profile of this board", "sim-a16", default=env("QVERIFY_AGENT_TARGET", "sim-a16"))
    add(s, "--npu-cores", "NPU cores (one run at a time per core)", "1", type=int, default=1)
    add(s, "--board-id", "name the board reports", "the host name",
        default=env("QVERIFY_AGENT_BOARD_ID", socket.gethostname()))
    add(s, "--token-file", "file holding the token clients must send (authorization: Bearer <token>)", "none",
        type=Path, default=env("QVERIFY_AGENT_TOKEN_FILE") or None)
    add(s, "--tls-cert", "server certificate (PEM); serve TLS", "none", type=Path)
    add(s, "--tls-key", "private key of --tls-cert", "none", type=Path)
    add(s, "--tls-client-ca", "require client certificates signed by this CA (mTLS)", "none", type=Path)
    add(s, "--insecure", "allow a network listen address without token or TLS", None, action="store_true")
    add(s, "--max-queue", "runs that may wait per board before RESOURCE_EXHAUSTED", "8", type=int, default=8)
    add(s, "--max-model-size", "largest model.bin accepted", "512M", type=_size, default=_size("512M"))
    add(s, "--max-input-size", "largest inputs of one run, sent or declared by a model (Perf's random inputs)",
        "64M", type=_size, default=_size("64M"))
    add(s, "--max-tensor-size", "largest tensor a model may declare; checked at load, before anything is "
        "allocated", "256M", type=_size, default=_size("256M"))
    add(s, "--max-message-size", "largest gRPC message", "64M", type=_size, default=_size("64M"))
    add(s, "--store-capacity", "model store size; least recently used models are evicted", "4G", type=_size,
        default=_size(env("QVERIFY_AGENT_STORE_CAPACITY", "4G")))
    add(s, "--workers", "gRPC worker threads", "16", type=int, default=16)
    add(s, "--grace", "seconds running calls get to finish on SIGTERM", "30", type=float, default=30.0)
    add(s, "--fault", "TEST TOOLING for the emulated board: bitflip:LAYER, lsb:LAYER, padding:LAYER|all, "
        "delay:MS, crash:LAYER, stale:outputs, dumponly:LAYER, nondeterministic:LAYER; repeatable", "none",
        action="append", default=[], metavar="KIND:TARGET")
    add(s, "--log-level", "DEBUG, INFO, WARNING or ERROR", "INFO", default=env("QVERIFY_AGENT_LOG_LEVEL", "INFO"))
    sub.add_parser("version", help="print the agent and protocol versions (same as --version)")
    return parser


class _FileError(Exception):
    """An option names a file the agent cannot use (exit 3: could not start)."""


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise _FileError(f"--token-file {path}: {exc.strerror}; give a readable file holding the token") from None
    except UnicodeDecodeError:
        raise _FileError(f"--token-file {path} is not text; put the token in it as one line") from None
    if not token:
        raise _FileError(f"--token-file {path} is empty; put the token in it as one line")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logging.getLogger("qverify.agent").warning("token file %s is readable by others; chmod 600 it", path)
    return token


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(_version_text())
        return 0
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # gRPC's C core would print its own log line for a port clash before our sentence.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from qverify.agent.backends import BackendError
    from qverify.agent.faults import parse_fault
    from qverify.agent.server import ConfigError, ServerOptions, StartError, parse_listen, serve
    from qverify.agent.service import AgentConfig
    from qverify.agent.store import StoreError
    from qverify.simulator.errors import SimulatorError
    from qverify.simulator.targets import get_target

    try:
        faults = [parse_fault(text) for text in args.fault]
        target = get_target(args.target)
        host, port = parse_listen(args.listen, DEFAULT_PORT)
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        options = ServerOptions(
            listen=listen, model_dir=args.model_dir, backend=args.backend, target=target,
            npu_cores=args.npu_cores, token=_read_token(args.token_file) if args.token_file else None,
            tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, insecure=args.insecure,
            store_capacity=args.store_capacity, workers=args.workers, grace_s=args.grace,
            config=AgentConfig(board_id=args.board_id, max_queue=args.max_queue, max_model_bytes=args.max_model_size,
                               max_message_bytes=args.max_message_size,
                               max_input_bytes=args.max_input_size, max_tensor_bytes=args.max_tensor_size),
            backend_options={"device": args.device} if args.device else {})
        if args.device and args.backend == "sim":
            raise ConfigError("--device is for a runtime backend (e.g. --backend openvino); the sim backend has none")
        if faults:
            logging.getLogger("qverify.agent").warning("FAULT INJECTION active (test tooling): %s",
                                                       ", ".join(map(str, faults)))
        return serve(options, faults)
    except (ValueError, ConfigError, SimulatorError, BackendError) as exc:
        print(f"qverify-agent: error: {exc}", file=sys.stderr)
        return 2
    except (_FileError, StartError, StoreError) as exc:
        print(f"qverify-agent: error: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"qverify-agent: error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
