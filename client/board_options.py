"""The command line's board options, declared once for ``verify``, ``run``, ``perf`` and
``board info``: ``-b``, ``--port``, ``--token``, TLS, SSH, ``--transport`` and the timeouts.

A command decorated with :func:`with_board_settings` has them all (typer reads them from
its signature) and receives them as one checked
:class:`~qverify.client.boards.BoardSettings`; ``-b`` (:data:`BoardArg`) is a parameter
of its own, as it comes early in each command's usage. The farm fills the same
:class:`~qverify.client.boards.BoardSettings` from its inventory
(:func:`qverify.client.farm.runner.board_settings`).
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from qverify.client.boards import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, BoardSettings

__all__ = ["BoardArg", "PortArg", "TokenArg", "TlsCaArg", "TlsCertArg", "TlsKeyArg", "TransportArg", "SshUserArg",
           "SshKeyArg", "SshPortArg", "KnownHostsArg", "ConnectTimeoutArg", "TimeoutArg", "DEFAULT_CONNECT_TIMEOUT",
           "DEFAULT_TIMEOUT", "board_settings", "with_board_settings"]

BoardArg = Annotated[Optional[str], typer.Option(
    "-b", "--board", help="board HOST[:PORT]; without it an embedded emulated board runs here")]
PortArg = Annotated[Optional[int], typer.Option("--port", help="agent port (default 7060, or the one in -b HOST:PORT)")]
TokenArg = Annotated[Optional[str], typer.Option("--token", envvar="QVERIFY_TOKEN", help="agent token")]
TlsCaArg = Annotated[Optional[Path], typer.Option("--tls-ca", help="CA certificate of the agent's TLS")]
TlsCertArg = Annotated[Optional[Path], typer.Option("--tls-cert", help="client certificate for an mTLS agent")]
TlsKeyArg = Annotated[Optional[Path], typer.Option("--tls-key", help="private key of --tls-cert")]
TransportArg = Annotated[str, typer.Option("--transport", help="how model.bin reaches the board: sftp or grpc")]
SshUserArg = Annotated[Optional[str], typer.Option(
    "--ssh-user", help="SSH user (default: ~/.ssh/config, then $USER)")]
SshKeyArg = Annotated[Optional[Path], typer.Option(
    "--ssh-key", help="SSH private key (default: ~/.ssh/config, agent)")]
SshPortArg = Annotated[Optional[int], typer.Option("--ssh-port", help="SSH port (default: ~/.ssh/config, then 22)")]
KnownHostsArg = Annotated[Optional[Path], typer.Option(
    "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)")]
ConnectTimeoutArg = Annotated[float, typer.Option("--connect-timeout", help="seconds to wait for the board")]
TimeoutArg = Annotated[float, typer.Option("--timeout", help="seconds a call may take on the board")]


def board_settings(*, port: int | None = None, token: str | None = None, tls_ca: Path | None = None,
                   tls_cert: Path | None = None, tls_key: Path | None = None, transport: str = "sftp",
                   ssh_user: str | None = None, ssh_key: Path | None = None, ssh_port: int | None = None,
                   known_hosts: Path | None = None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                   timeout: float = DEFAULT_TIMEOUT) -> BoardSettings:
    """The board options of the command line, checked (BoardSpecError, exit 2, before anything runs).

    The SSH connection waits ``--connect-timeout`` like the agent's."""
    from qverify.client.ssh import SshOptions

    settings = BoardSettings(port=port, token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                             transport=transport,
                             ssh=SshOptions(user=ssh_user, key=ssh_key, port=ssh_port, known_hosts=known_hosts,
                                            connect_timeout=connect_timeout),
                             connect_timeout=connect_timeout, timeout=timeout)
    settings.check()
    return settings


# (parameter, its typer option, its default), in the order --help lists them.
_FLAGS: tuple[tuple[str, Any, Any], ...] = (
    ("port", PortArg, None), ("token", TokenArg, None), ("tls_ca", TlsCaArg, None), ("tls_cert", TlsCertArg, None),
    ("tls_key", TlsKeyArg, None), ("transport", TransportArg, "sftp"), ("ssh_user", SshUserArg, None),
    ("ssh_key", SshKeyArg, None), ("ssh_port", SshPortArg, None), ("known_hosts", KnownHostsArg, None),
    ("connect_timeout", ConnectTimeoutArg, DEFAULT_CONNECT_TIMEOUT), ("timeout", TimeoutArg, DEFAULT_TIMEOUT),
)
_PUSH_FLAGS = ("transport", "ssh_user", "ssh_key", "ssh_port", "known_hosts")  # how model.bin reaches the board

Command = TypeVar("Command", bound=Callable[..., Any])


def with_board_settings(*, push: bool = True, timeout: float = DEFAULT_TIMEOUT) -> Callable[[Command], Command]:
    """Give a typer command the board options (after its own) and call it with them as one
    ``settings: BoardSettings`` argument, checked.

    typer reads a command's options from its signature, so the decorated function's signature
    is the command's own parameters (``settings`` left out) followed by these. ``push=False``:
    a command that pushes no model (no --transport and SSH options; it talks gRPC only).
    ``timeout``: the default of --timeout."""
    flags = [(name, option, timeout if name == "timeout" else default) for name, option, default in _FLAGS
             if push or name not in _PUSH_FLAGS]

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "settings"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=option)
                 for name, option, default in flags]

        @functools.wraps(command)
        def with_settings(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name, _, _ in flags}
            if not push:
                values["transport"] = "grpc"
            return command(*args, settings=board_settings(**values), **kwargs)

        with_settings.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
        with_settings.__annotations__ = {p.name: p.annotation for p in own + added}
        return with_settings  # type: ignore[return-value]

    return decorate
