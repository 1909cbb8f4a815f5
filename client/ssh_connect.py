"""An authenticated SSH connection to a board, and one sentence for each way it can fail.

The transport prefers AES-GCM (paramiko 3.5+; no separate MAC, AES-NI) with large
windows, which is most of what makes the push fast. Before paramiko speaks, the
server's first bytes are peeked at, so a port that is not sshd is named as such.
"""
from __future__ import annotations

import errno
import logging
import socket
import time

import paramiko

from qverify.client.ssh_auth import KeyAuth
from qverify.client.ssh_errors import SshAuthFailed, SshError, SshUnreachable
from qverify.client.ssh_hostkeys import SYSTEM_KNOWN_HOSTS, RecordNewHostKeys, host_key_changed
from qverify.client.ssh_target import SshOptions, Target, resolve_target

__all__ = ["connect", "connect_target"]

_GCM_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_WINDOW_SIZE = 16 << 20           # what we let the server send us before it must wait
_MAX_PACKET_SIZE = 32768
_AUTH_TIMEOUT = 30.0              # at least this long for an answer to a key (agents may ask the user first)
_GREETING_PEEK = 256              # bytes of the server's first words kept to name what answered

# paramiko's transport thread logs every failed handshake as an ERROR with a traceback; with no
# logging configured Python's last-resort handler prints that on stderr beside our one-line
# error. Transports log under the push's logger instead (``_transport_factory``), which has
# the NullHandler a library gives its own logger: silent by default, visible to an application
# that configures logging. It is named after qverify.client.ssh, the module applications
# import the push from, so their logging set-up names the push by that name.
_SSH_LOGGER = __name__.rpartition(".")[0] + ".ssh"
_log = logging.getLogger(_SSH_LOGGER)
_log.addHandler(logging.NullHandler())
_PARAMIKO_LOG = f"{_SSH_LOGGER}.paramiko"


def _transport_factory(sock, **kwargs) -> paramiko.Transport:
    """A Transport that prefers AES-GCM (fastest cipher paramiko has) with large windows."""
    transport = paramiko.Transport(sock, default_window_size=_WINDOW_SIZE,
                                   default_max_packet_size=_MAX_PACKET_SIZE, **kwargs)
    security = transport.get_security_options()
    ciphers = tuple(security.ciphers)
    preferred = tuple(c for c in _GCM_CIPHERS if c in ciphers)
    security.ciphers = preferred + tuple(c for c in ciphers if c not in preferred)
    transport.set_log_channel(_PARAMIKO_LOG)  # channels and SFTP log under it too
    return transport


def _greeting_text(greeting: bytes) -> str:
    """The first line a server sent, printable and short, for a message."""
    line = greeting.split(b"\n", 1)[0].rstrip(b"\r")
    text = "".join(c if c.isprintable() else "?" for c in line.decode("latin-1"))
    return text[:60] + ("..." if len(text) > 60 else "")


def _open_socket(target: Target, timeout: float) -> tuple[socket.socket, bytes]:
    """A TCP connection to the SSH port, and the first bytes the server sent (peeked: paramiko reads
    them again). Waiting for them here lets a port that is not sshd be named as such, with what it
    said, instead of paramiko's generic banner error."""
    where = f"port {target.port} on {target.hostname}"
    started = time.monotonic()
    try:
        sock = socket.create_connection((target.hostname, target.port), timeout=timeout)
    except socket.gaierror as exc:
        raise SshUnreachable(f"cannot resolve the SSH host name {target.hostname!r} ({exc.strerror}); check the "
                             "board's name or use its IP address") from None
    except ConnectionRefusedError:
        raise SshUnreachable(f"nothing accepts SSH connections on {target.hostname}:{target.port} (connection "
                             "refused); check the address and port and that sshd runs on the board, or push "
                             "through the agent instead: --transport grpc") from None
    except (socket.timeout, TimeoutError):
        raise SshUnreachable(f"no TCP connection to {target.hostname}:{target.port} within {timeout:g} s; check the "
                             "address, the network and that the board is powered and booted") from None
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            raise SshUnreachable(f"no route to {target.hostname}:{target.port} (host unreachable); check the address, "
                                 "the network and that the board is powered and booted") from None
        raise SshUnreachable(f"cannot connect to {target.hostname}:{target.port} ({exc.strerror or exc}); check the "
                             "address and the network") from None
    try:
        remaining = max(0.1, timeout - (time.monotonic() - started))
        sock.settimeout(remaining)
        try:
            greeting = sock.recv(_GREETING_PEEK, socket.MSG_PEEK)
        except (socket.timeout, TimeoutError):
            raise SshUnreachable(f"{target.hostname}:{target.port} accepted the connection but sent no SSH greeting "
                                 f"within {timeout:g} s; "
                                 "check the SSH port (--ssh-port) and that the board is not overloaded") from None
        except OSError as exc:
            raise SshUnreachable(f"{where} dropped the connection before any SSH greeting ({exc.strerror or exc}); "
                                 "check the SSH port (--ssh-port)") from None
        if not greeting:
            raise SshUnreachable(f"{where} did not answer as an SSH server (connection closed during the handshake, "
                                 "nothing sent); check the SSH port (--ssh-port) and that sshd there accepts this "
                                 "host")
        sock.settimeout(timeout)
        return sock, greeting
    except BaseException:
        sock.close()
        raise


def _connect_error(exc: BaseException, target: Target, timeout: float, greeting: bytes = b"") -> SshError:
    """One actionable sentence for each way a connection can fail before the SFTP session.

    ``greeting``: the first bytes the server sent, when it sent any.
    """
    where = f"{target.hostname}:{target.port}"
    if isinstance(exc, SshError):
        return exc
    if greeting and not greeting.startswith(b"SSH-") and isinstance(exc, (paramiko.SSHException, EOFError)) and (
            isinstance(exc, EOFError) or any(m in str(exc) for m in ("banner", "protocol version"))):
        return SshUnreachable(f"port {target.port} on {target.hostname} did not answer as an SSH server (got "
                              f"{_greeting_text(greeting)!r}); check the SSH port (--ssh-port)")
    if isinstance(exc, paramiko.BadHostKeyException):
        return host_key_changed(target, exc)
    if isinstance(exc, paramiko.AuthenticationException):
        return SshAuthFailed(f"{target.label} refused the login ({exc}); pass the right key and user")
    if isinstance(exc, socket.gaierror):
        return SshUnreachable(f"cannot resolve the SSH host name {target.hostname!r} ({exc.strerror}); check the "
                              "board's name or use its IP address")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) and any(
            getattr(e, "errno", None) != errno.ECONNREFUSED for e in exc.errors.values()):
        return SshUnreachable(f"no route to {where} (host unreachable); check the address, the network and that the "
                              "board is powered and booted")
    if isinstance(exc, (paramiko.ssh_exception.NoValidConnectionsError, ConnectionRefusedError)):
        return SshUnreachable(f"nothing accepts SSH connections on {where} (connection refused); check the address "
                              "and port and that sshd runs on the board, or push through the agent instead: "
                              "--transport grpc")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return SshUnreachable(f"no SSH answer from {where} within {timeout:g} s; check the address, the network and "
                              "that the board is powered and booted")
    if isinstance(exc, OSError):
        return SshUnreachable(f"cannot connect to {where} ({exc.strerror or exc}); check the address and the network")
    text = str(exc)
    # paramiko: no banner in time, or start_client's own timeout passed mid-handshake ("No existing session").
    if isinstance(exc, EOFError) or any(m in text for m in ("banner", "timed out", "No existing session",
                                                              "Negotiation failed")):
        detail = f" ({text})" if text and "No existing session" not in text else ""
        return SshUnreachable(f"{where} did not complete the SSH greeting within {timeout:g} s{detail}; check that "
                              "this port is the board's sshd and that the board is not overloaded")
    if "ncompatible" in text or "no acceptable" in text.lower():
        return SshError(f"cannot agree on SSH algorithms with {where} ({text}); update the board's OpenSSH or "
                        "enable curve25519/ecdh key exchange and AES ciphers in its sshd_config")
    return SshUnreachable(f"the SSH connection to {where} failed ({type(exc).__name__}: {text}); check that this "
                          "is the board's SSH port and try again")


def connect(host: str, options: SshOptions = SshOptions()) -> paramiko.SSHClient:
    """An authenticated SSHClient for ``host`` (a name, an address or a ~/.ssh/config alias).

    Host keys are checked against known_hosts (new hosts recorded, changed keys refused);
    the caller closes the client. Failures raise SshError subclasses.
    """
    return connect_target(resolve_target(host, options), options)


def connect_target(target: Target, options: SshOptions) -> paramiko.SSHClient:
    timeout = float(options.connect_timeout)
    client = paramiko.SSHClient()
    greeting = b""
    try:
        try:  # read-only, like OpenSSH's GlobalKnownHostsFile; an unreadable one is skipped
            if SYSTEM_KNOWN_HOSTS.is_file():
                client.load_system_host_keys(str(SYSTEM_KNOWN_HOSTS))
        except (OSError, UnicodeDecodeError):
            pass
        if target.known_hosts.is_file():
            try:
                client.load_host_keys(str(target.known_hosts))
            except (OSError, UnicodeDecodeError) as exc:
                raise SshError(f"cannot read the known hosts file {target.known_hosts} ({exc}); fix its permissions "
                               "or content, then connect again") from None
        client.set_missing_host_key_policy(RecordNewHostKeys(target.known_hosts))
        sock, greeting = _open_socket(target, timeout)
        client.connect(target.hostname, target.port, username=target.user, timeout=timeout, sock=sock,
                       banner_timeout=timeout, auth_timeout=max(timeout, _AUTH_TIMEOUT), channel_timeout=timeout,
                       allow_agent=False, look_for_keys=False, transport_factory=_transport_factory,
                       auth_strategy=KeyAuth(target))
        return client
    except BaseException as exc:
        client.close()
        if isinstance(exc, Exception):
            raise _connect_error(exc, target, timeout, greeting) from None
        raise
