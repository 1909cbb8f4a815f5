"""Push a model.bin into a board's model store over SSH (SFTP), with paramiko.

    result = push_sftp(Path("model.bin"), "board", "/var/lib/qverify/models", sha256)

Why it works the way it does:

* Content-addressed: the store holds ``<store_dir>/<sha256>.bin``. When that file is
  already there with the right size nothing is sent (``sent=False``); the agent checks
  the sha256 itself the first time a run uses the file, so a damaged copy is never run.
* Never a half model under the final name: bytes go to ``.<sha256>.<random>.part`` (the
  name the agent's store removes after a crash) and are renamed with
  ``posix-rename@openssh.com`` (atomic) only when every write was acknowledged. A failure
  or Ctrl-C removes the ``.part`` file (best effort: after a cut connection it stays until
  the agent's next start removes it).
* Host keys the way OpenSSH's ``StrictHostKeyChecking=accept-new`` treats them: a host
  not in known_hosts is accepted and appended to it; a host whose key changed is refused
  (HostKeyChanged names the file, the line and the ``ssh-keygen -R`` fix).
* ``~/.ssh/config`` (HostName, User, Port, IdentityFile) and the SSH agent are honoured,
  so ``qverify -b board`` works with the same settings as ``ssh board``.
* Fast: AES-GCM is preferred (paramiko 3.5+; no separate MAC, AES-NI), and the file goes
  out as pipelined SFTP writes as large as the server allows (``limits@openssh.com``),
  sized so each request fills whole SSH channel packets and built in one reused buffer
  that the file is read straight into. paramiko's own ``put`` sends 32 KiB requests and
  notices a failed write only as a size mismatch at the end, which is why the write loop
  is here; it uses SFTPClient's request bookkeeping (``_request``, ``_read_response``,
  ``_expecting``, ``request_number``), unchanged since paramiko 2, and the tests run it
  end to end.

Every foreseeable failure is an ``SshError`` subclass whose message is one sentence that
says what to do. Nothing here configures logging.
"""
from __future__ import annotations

import base64
import errno
import getpass
import hashlib
import logging
import os
import posixpath
import re
import secrets
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import paramiko
from paramiko.auth_strategy import AuthStrategy
from paramiko.sftp import (
    CMD_CLOSE, CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_HANDLE, CMD_OPEN, CMD_STATUS, CMD_WRITE, SFTP_EOF,
    SFTP_FAILURE, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_WRITE, SFTP_NO_SUCH_FILE, SFTP_OK,
    SFTP_PERMISSION_DENIED,
)
from paramiko.sftp_attr import SFTPAttributes

try:  # POSIX: serialize appends to known_hosts across processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SshOptions", "SshError", "HostKeyChanged", "SshAuthFailed", "SshUnreachable", "SshTransferFailed",
    "PushResult", "push_sftp", "connect", "RecordNewHostKeys", "agent_host",
]

_SHA_RE = re.compile(r"[0-9a-f]{64}")
_GCM_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
_DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
_SFTP_SAFE_WRITE = 32768          # every SFTP server accepts writes this large
_SFTP_MAX_WRITE = 256 * 1024      # never ask for more, whatever the server advertises
_IN_FLIGHT_BYTES = 2 << 20        # unacknowledged write bytes (about sshd's channel window)
_WINDOW_SIZE = 16 << 20           # what we let the server send us before it must wait
_MAX_PACKET_SIZE = 32768
_AUTH_TIMEOUT = 30.0              # at least this long for an answer to a key (agents may ask the user first)
_STALL_TIMEOUT = 60.0             # seconds without progress on the SFTP channel before giving up
_CLEANUP_TIMEOUT = 10.0           # seconds the removal of a .part file may take after a failure
_GREETING_PEEK = 256              # bytes of the server's first words kept to name what answered

# paramiko's transport thread logs every failed handshake as an ERROR with a traceback; with no
# logging configured Python's last-resort handler prints that on stderr beside our one-line
# error. Transports log under this module's logger instead (``_transport_factory``), which has
# the NullHandler a library gives its own logger: silent by default, visible to an application
# that configures logging.
_log = logging.getLogger(__name__)
_log.addHandler(logging.NullHandler())
_PARAMIKO_LOG = f"{__name__}.paramiko"


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class SshOptions:
    """How to reach a board over SSH; every None falls back to ~/.ssh/config, then OpenSSH's default."""

    user: str | None = None          # --ssh-user; default from ~/.ssh/config, else the local user
    key: Path | None = None          # --ssh-key (private key file); else config IdentityFile, SSH agent, default keys
    port: int | None = None          # --ssh-port; default from ~/.ssh/config, else 22
    config_file: Path | None = None  # default ~/.ssh/config (honoured when it exists)
    known_hosts: Path | None = None  # default ~/.ssh/known_hosts
    connect_timeout: float = 10.0


class SshError(Exception):
    """An SSH push failed; the message is one sentence saying what to do."""


class HostKeyChanged(SshError):
    """The server's host key differs from the one known_hosts records: refused."""


class SshAuthFailed(SshError):
    """The server refused every key offered (or there was none to offer)."""


class SshUnreachable(SshError):
    """No SSH server answered: DNS, connection refused, timeout, or not an SSH port."""


class SshTransferFailed(SshError):
    """The upload did not complete: missing or read-only store, full disk, cut connection."""


@dataclass
class PushResult:
    """What a push did. ``bytes`` were sent over the wire (0 when skipped); ``seconds`` is the whole call."""

    sha256: str
    sent: bool
    bytes: int
    seconds: float
    remote_path: str


# --------------------------------------------------------------------------- target resolution


@dataclass(frozen=True)
class _Target:
    host: str                          # as the caller named it (may be a config alias)
    hostname: str
    port: int
    user: str
    identity_files: tuple[Path, ...]   # from --ssh-key or the config's IdentityFile
    explicit_key: bool                 # --ssh-key given: offer that key only
    known_hosts: Path

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name known_hosts uses: ``host``, or ``[host]:port`` off port 22."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def _resolve(host: str, options: SshOptions) -> _Target:
    """Apply the options, then ~/.ssh/config, then the defaults, as ``ssh`` does."""
    explicit_config = options.config_file is not None
    config_path = Path(options.config_file or "~/.ssh/config").expanduser()
    conf: dict = {}
    if explicit_config and not config_path.is_file():
        raise SshError(f"SSH config file {config_path} does not exist; fix the path or leave it out")
    if config_path.is_file():
        try:
            conf = paramiko.SSHConfig.from_path(str(config_path)).lookup(host)
        except Exception as exc:  # paramiko raises several types for unsupported or broken configs
            raise SshError(f"cannot read the SSH config {config_path} for host {host!r} ({exc}); fix the file, "
                           "or pass the user, port and key explicitly") from None
    for keyword in ("proxyjump", "proxycommand"):
        value = conf.get(keyword)
        if value and str(value).lower() != "none":
            raise SshError(f"{config_path} sets {keyword} for host {host!r}, which the SFTP push does not support; "
                           "push through the agent instead with --transport grpc, or push to an address reachable "
                           "directly (a host without that setting)")
    hostname = conf.get("hostname") or host
    port = options.port
    if port is None:
        try:
            port = int(conf.get("port", 22))
        except ValueError:
            raise SshError(f"{config_path} sets Port {conf.get('port')!r} for host {host!r}; "
                           "make it a number or pass the port explicitly") from None
    if not 0 < port < 65536:
        raise SshError(f"SSH port {port} is out of range; pass a port between 1 and 65535")
    user = options.user or conf.get("user") or getpass.getuser()
    if options.key is not None:
        identity_files: tuple[Path, ...] = (Path(options.key).expanduser(),)
    else:
        identity_files = tuple(Path(p).expanduser() for p in conf.get("identityfile", ()))
    known_hosts = Path(options.known_hosts or "~/.ssh/known_hosts").expanduser()
    return _Target(host, hostname, port, user, identity_files, options.key is not None, known_hosts)


def agent_host(host: str, options: SshOptions | None = None) -> str:
    """Where the board's agent is reached: the ``HostName`` ~/.ssh/config gives ``host`` (an alias
    such as ``board1``), else ``host`` itself. The push resolves the alias the same way, so
    ``-b board1`` reaches the agent and the SSH server of the same machine. A config that cannot be
    read leaves ``host`` as it is: the push names the problem, the agent need not.

    An IP address is kept as given: it already names the machine, and a HostName for it in the
    config is a detour for SSH (a forwarded port, a tunnel), not the agent's address."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    options = options or SshOptions()
    path = Path(options.config_file or "~/.ssh/config").expanduser()
    try:
        if not path.is_file():
            return host
        hostname = paramiko.SSHConfig.from_path(str(path)).lookup(host).get("hostname")
    except Exception:  # paramiko raises several types for unsupported or broken configs
        return host
    return str(hostname) if hostname else host


# --------------------------------------------------------------------------- host keys


def _fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, so the message matches what ``ssh-keygen -l`` prints."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _entry_lines(path: Path, name: str) -> list[int]:
    """Line numbers of ``path`` that record a key for ``name`` (plain or hashed host names)."""
    found = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("@"):
            continue
        for pattern in line.split(None, 1)[0].split(","):
            if pattern == name or (pattern.startswith("|1|") and _hashed_match(name, pattern)):
                found.append(lineno)
                break
    return found


def _hashed_match(name: str, entry: str) -> bool:
    try:
        return paramiko.HostKeys.hash_host(name, entry) == entry
    except Exception:  # a malformed hashed entry matches nothing
        return False


def _append_known_host(path: Path, name: str, key: paramiko.PKey) -> None:
    """Append one ``name type base64`` line (file created 0600); appends from other processes are serialized."""
    line = f"{name} {key.get_name()} {key.get_base64()}\n".encode()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, size - 1, os.SEEK_SET)  # O_APPEND writes still go to the end
            if os.read(fd, 1) != b"\n":
                line = b"\n" + line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock


class RecordNewHostKeys(paramiko.MissingHostKeyPolicy):
    """Accept a host seen for the first time and record its key in known_hosts (OpenSSH's accept-new).

    paramiko calls this only for hosts with no recorded key at all; a host whose key
    changed raises BadHostKeyException before any policy runs, and is refused.
    """

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        try:
            _append_known_host(self.known_hosts, hostname, key)
        except OSError as exc:
            raise SshError(f"cannot record the host key of {hostname} in {self.known_hosts} "
                           f"({exc.strerror or exc}); make that file writable, then connect again") from None
        client.get_host_keys().add(hostname, key.get_name(), key)


def _host_key_changed(target: _Target, exc: paramiko.BadHostKeyException) -> HostKeyChanged:
    name = target.known_hosts_name
    where = ""
    fix_file = target.known_hosts
    for path in (target.known_hosts, _SYSTEM_KNOWN_HOSTS):
        lines = _entry_lines(path, name)
        if lines:
            where = f"{path} line {', '.join(map(str, lines))}"
            fix_file = path
            break
    where = where or str(target.known_hosts)
    return HostKeyChanged(
        f"the SSH host key of {name} has changed: it now presents {exc.key.get_name()} {_fingerprint(exc.key)}, "
        f"but {where} records {exc.expected_key.get_name()} {_fingerprint(exc.expected_key)}; if the board was "
        f"reinstalled or its keys regenerated, remove the old key with "
        f"`ssh-keygen -f {fix_file} -R '{name}'` and push again, otherwise do not push (the connection may be "
        "intercepted)")


# --------------------------------------------------------------------------- authentication


class _KeyAuth(AuthStrategy):
    """Offer keys in OpenSSH's order: --ssh-key alone; else config IdentityFile, agent keys, default keys."""

    def __init__(self, target: _Target) -> None:
        super().__init__(ssh_config=None)
        self.target = target
        self.tried: list[str] = []
        self.unusable: list[str] = []

    def _load(self, path: Path) -> paramiko.PKey | None:
        try:
            return paramiko.PKey.from_path(path)
        except paramiko.PasswordRequiredException:
            self.unusable.append(f"{path} (passphrase-protected: add it to the agent with ssh-add)")
        except (OSError, paramiko.SSHException, ValueError) as exc:
            reason = str(exc).split(". ")[0][:100] or type(exc).__name__
            self.unusable.append(f"{path} (not a private key file paramiko can read: {reason})")
        return None

    def get_sources(self):  # the keys to offer, loaded lazily
        seen: set[bytes] = set()

        def fresh(key: paramiko.PKey) -> bool:
            blob = key.asbytes()
            if blob in seen:
                return False
            seen.add(blob)
            return True

        for path in self.target.identity_files:
            if not path.is_file():
                if self.target.explicit_key:
                    raise SshAuthFailed(f"SSH key file {path} does not exist; pass the private key file "
                                        "(the one without .pub)")
                continue
            key = self._load(path)
            if key is not None and fresh(key):
                yield str(path), key
        if self.target.explicit_key:
            if self.unusable:
                raise SshAuthFailed(f"SSH key {self.unusable[0]} cannot be used for {self.target.label}; pass a "
                                    "usable private key, or leave the key out to use the SSH agent")
            return
        agent = None
        try:
            agent = paramiko.Agent()
            for key in agent.get_keys():
                if fresh(key):
                    yield f"agent key {_fingerprint(key)}", key
        except paramiko.SSHException:
            pass  # no usable agent: not an error, other keys may do
        finally:
            if agent is not None:
                agent.close()
        if not self.target.identity_files:
            for name in _DEFAULT_KEYS:
                path = Path("~/.ssh").expanduser() / name
                if path.is_file():
                    key = self._load(path)
                    if key is not None and fresh(key):
                        yield str(path), key

    def authenticate(self, transport: paramiko.Transport) -> list:
        user = self.target.user
        for label, key in self.get_sources():
            self.tried.append(label)
            try:
                remaining = transport.auth_publickey(user, key)
            except paramiko.BadAuthenticationType as exc:
                raise SshAuthFailed(f"{self.target.label} does not accept SSH key logins (it allows "
                                    f"{', '.join(exc.allowed_types) or 'nothing'}); enable PubkeyAuthentication "
                                    "in the board's sshd_config") from None
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, EOFError, OSError):
                break  # the server hung up (e.g. too many attempts): report what was tried
            if not remaining:
                return []
            raise SshAuthFailed(f"{self.target.label} accepted key {label} but also wants "
                                f"{', '.join(remaining)}; allow key-only logins for {user} on the board")
        if not self.tried:
            extra = f" ({'; '.join(self.unusable)})" if self.unusable else ""
            raise SshAuthFailed(f"no SSH key to log in to {self.target.label} with{extra}; pass a private key file, "
                                "set IdentityFile in ~/.ssh/config, or add a key to the SSH agent (ssh-add)")
        raise SshAuthFailed(f"{self.target.label} refused the SSH key{'s' if len(self.tried) > 1 else ''} "
                            f"{', '.join(self.tried)}; add the matching public key to ~{user}/.ssh/authorized_keys "
                            "on the board, pass the right key and user, or push through the agent instead: "
                            "--transport grpc")


# --------------------------------------------------------------------------- connection


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


def _open_socket(target: _Target, timeout: float) -> tuple[socket.socket, bytes]:
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


def _connect_error(exc: BaseException, target: _Target, timeout: float, greeting: bytes = b"") -> SshError:
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
        return _host_key_changed(target, exc)
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
    return _connect(_resolve(host, options), options)


def _connect(target: _Target, options: SshOptions) -> paramiko.SSHClient:
    timeout = float(options.connect_timeout)
    client = paramiko.SSHClient()
    greeting = b""
    try:
        try:  # read-only, like OpenSSH's GlobalKnownHostsFile; an unreadable one is skipped
            if _SYSTEM_KNOWN_HOSTS.is_file():
                client.load_system_host_keys(str(_SYSTEM_KNOWN_HOSTS))
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
                       auth_strategy=_KeyAuth(target))
        return client
    except BaseException as exc:
        client.close()
        if isinstance(exc, Exception):
            raise _connect_error(exc, target, timeout, greeting) from None
        raise


# --------------------------------------------------------------------------- SFTP helpers


def _status_text(code: int, text: str) -> str:
    return text or {SFTP_FAILURE: "failure", SFTP_PERMISSION_DENIED: "permission denied",
                    SFTP_NO_SUCH_FILE: "no such file"}.get(code, f"SFTP status {code}")


class _WriteAcks:
    """Collects the replies to pipelined writes (paramiko's SFTPClient calls ``_async_response``)."""

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}   # request number -> bytes, while unacknowledged
        self.acked = 0
        self.error: tuple[int, str] | None = None

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        size = self.sizes.pop(num, 0)
        if t != CMD_STATUS:
            self.error = self.error or (-1, f"unexpected SFTP reply type {t}")
            return
        code = msg.get_int()
        if code == SFTP_OK:
            self.acked += size
        elif self.error is None:
            self.error = (code, msg.get_text())


def _sftp_extended(sftp: paramiko.SFTPClient, name: str, *args) -> paramiko.Message | None:
    """An OpenSSH extension request; None when the server lacks it."""
    try:
        t, msg = sftp._request(CMD_EXTENDED, name, *args)
    except (OSError, EOFError, paramiko.SFTPError):
        return None
    return msg if t == CMD_EXTENDED_REPLY else None


def _max_write(sftp: paramiko.SFTPClient) -> int:
    """Largest write request the server takes: ``limits@openssh.com``, else the 32 KiB every server takes."""
    msg = _sftp_extended(sftp, "limits@openssh.com")
    if msg is None:
        return _SFTP_SAFE_WRITE
    msg.get_int64()  # max packet length
    msg.get_int64()  # max read length
    max_write = msg.get_int64()
    return min(max_write, _SFTP_MAX_WRITE) if max_write else _SFTP_SAFE_WRITE  # 0: the server did not say


def _free_bytes(sftp: paramiko.SFTPClient, path: str) -> int | None:
    """Free bytes for unprivileged users under ``path`` (``statvfs@openssh.com``); None when unknown."""
    msg = _sftp_extended(sftp, "statvfs@openssh.com", path)
    if msg is None:
        return None
    msg.get_int64()  # f_bsize
    frsize = msg.get_int64()
    for _ in range(2):  # f_blocks, f_bfree
        msg.get_int64()
    return msg.get_int64() * frsize  # f_bavail


def _stat(sftp: paramiko.SFTPClient, path: str) -> SFTPAttributes | None:
    try:
        return sftp.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def _read_full(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src`` unless the file ends first; returns the bytes read."""
    filled = 0
    while filled < len(view):
        n = src.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


class _Upload:
    """One pipelined upload of a local file to a remote path that must not exist yet (opened O_EXCL)."""

    def __init__(self, sftp: paramiko.SFTPClient, remote: str) -> None:
        self.sftp = sftp
        self.remote = remote
        self.handle: bytes | None = None
        self.acks = _WriteAcks()
        self.stream_clean = True   # False while an SFTP packet is partly sent or read (the channel is then unusable)
        self.sent = 0
        self.local_error = False   # the local file failed to read (the caller's OSError, not the board's)

    def open(self) -> None:
        t, msg = self.sftp._request(CMD_OPEN, self.remote, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL,
                                    SFTPAttributes())
        if t != CMD_HANDLE:
            raise paramiko.SFTPError(f"expected a file handle, got SFTP reply type {t}")
        self.handle = msg.get_binary()

    def _read_one_reply(self) -> None:
        self.stream_clean = False  # a reply cut halfway leaves the stream unreadable too
        self.sftp._read_response()
        self.stream_clean = True

    def send(self, src: BinaryIO, total: int, progress: Callable[[int, int], None] | None) -> None:
        """Write ``total`` bytes of ``src``, keeping about _IN_FLIGHT_BYTES unacknowledged; raise on the first error."""
        sftp, handle, acks = self.sftp, self.handle, self.acks
        channel = sftp.sock
        # Request: uint32 length, byte type, uint32 id, string handle, uint64 offset, string data.
        overhead = 4 + 1 + 4 + 4 + len(handle) + 8 + 4
        max_write = _max_write(sftp)
        unit = max(1024, channel.out_max_packet_size - 64)  # paramiko's largest channel data packet
        packets = (max_write + overhead) // unit
        chunk = packets * unit - overhead if packets else max_write
        depth = max(4, _IN_FLIGHT_BYTES // chunk)
        buf = bytearray(overhead + chunk)
        view = memoryview(buf)
        struct.pack_into(">I", buf, 9, len(handle))
        buf[13:13 + len(handle)] = handle
        offset_at = 13 + len(handle)
        reported = -1
        while self.sent < total and acks.error is None:
            try:
                n = _read_full(src, view[overhead:overhead + min(chunk, total - self.sent)])
            except OSError:
                self.local_error = True
                raise
            if n == 0:
                raise SshTransferFailed(f"the local file shrank while it was being pushed ({self.sent} of {total} "
                                        "bytes read); do not modify a model while pushing it")
            with sftp._lock:
                num = sftp.request_number
                sftp.request_number += 1
                sftp._expecting[num] = acks
            acks.sizes[num] = n
            struct.pack_into(">IBI", buf, 0, overhead - 4 + n, CMD_WRITE, num)
            struct.pack_into(">QI", buf, offset_at, self.sent, n)
            self.stream_clean = False
            channel.sendall(view[:overhead + n])
            self.stream_clean = True
            self.sent += n
            while acks.sizes and (len(acks.sizes) >= depth or channel.recv_ready()):
                self._read_one_reply()
            if progress is not None and acks.acked != reported:
                reported = acks.acked
                progress(reported, total)
        while acks.sizes:
            self._read_one_reply()
        if progress is not None and acks.error is None and acks.acked != reported:
            progress(acks.acked, total)

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            self.sftp._request(CMD_CLOSE, handle)


# --------------------------------------------------------------------------- push


def push_sftp(path: Path, host: str, store_dir: str, sha256: str, options: SshOptions = SshOptions(),
              progress: Callable[[int, int], None] | None = None) -> PushResult:
    """Put ``path`` at ``<store_dir>/<sha256>.bin`` on ``host`` unless it is there already.

    The upload goes to a ``.part`` file renamed into place only when complete, so the
    agent never sees half a model; ``progress(acknowledged_bytes, total)`` is called as
    the board acknowledges writes. ``sha256`` is trusted (the agent verifies it on first
    use). Raises SshError subclasses; local file errors are OSError.
    """
    started = time.perf_counter()
    if not (isinstance(sha256, str) and _SHA_RE.fullmatch(sha256)):
        raise ValueError(f"sha256 must be 64 lowercase hex characters, got {sha256!r}")
    path = Path(path)
    total = path.stat().st_size
    target = _resolve(host, options)
    store_dir = store_dir.rstrip("/") or "/"
    final = posixpath.join(store_dir, f"{sha256}.bin")
    client = _connect(target, options)
    try:
        try:
            sftp = client.open_sftp()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshTransferFailed(f"{target.label} offers no SFTP ({exc or 'channel refused'}); enable it in the "
                                    "board's sshd_config with 'Subsystem sftp internal-sftp'") from None
        sftp.get_channel().settimeout(_STALL_TIMEOUT)
        try:
            present = _stat(sftp, final)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise _transfer_error(exc, target, store_dir, "looking into", 0, total, _link_up(sftp)) from None
        if present is not None:
            regular = present.st_mode is None or stat.S_ISREG(present.st_mode)  # None: the server did not say
            if regular and present.st_size == total:
                return PushResult(sha256, False, 0, time.perf_counter() - started, final)
            if not regular:
                raise SshTransferFailed(f"{final} on {target.label} exists but is not a regular file; remove it "
                                        "from the board's model store and push again")
        _check_store_dir(sftp, target, store_dir, total)
        _upload(client, sftp, target, path, store_dir, final, sha256, total, progress)
        return PushResult(sha256, True, total, time.perf_counter() - started, final)
    finally:
        client.close()


def _check_store_dir(sftp: paramiko.SFTPClient, target: _Target, store_dir: str, total: int) -> None:
    """The store directory exists and has room: fail before sending anything if not."""
    try:
        st = _stat(sftp, store_dir)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise _transfer_error(exc, target, store_dir, "looking into", 0, total, _link_up(sftp)) from None
    if st is None:
        raise SshTransferFailed(f"the model store {store_dir} does not exist on {target.label}; create it (or pass "
                                "the directory qverify-agent uses as --model-dir) and push again")
    if st.st_mode is not None and not stat.S_ISDIR(st.st_mode):
        raise SshTransferFailed(f"the model store {store_dir} on {target.label} is not a directory; pass the "
                                "directory qverify-agent uses as --model-dir")
    free = _free_bytes(sftp, store_dir)
    if free is not None and free < total:
        raise SshTransferFailed(f"the disk holding {store_dir} on {target.label} has {free} bytes free and the model "
                                f"needs {total}; free space on the board (delete unused models) and push again")


def _link_up(sftp: paramiko.SFTPClient) -> bool:
    """Whether the SFTP channel and its connection still stand (paramiko reports a dead one as a bare OSError)."""
    channel = sftp.get_channel()
    transport = channel.get_transport() if channel is not None else None
    return channel is not None and not channel.closed and transport is not None and transport.is_active()


def _transfer_error(exc: BaseException, target: _Target, store_dir: str, doing: str, sent: int,
                    total: int, link_up: bool = True) -> SshTransferFailed:
    """An actionable sentence for an SFTP failure while ``doing`` something in ``store_dir``.

    ``link_up=False`` says the connection itself failed, whatever the exception looks like.
    """
    if isinstance(exc, SshTransferFailed):
        return exc
    progress = f" after {sent} of {total} bytes" if sent else ""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return SshTransferFailed(f"the push to {target.label} stalled for {_STALL_TIMEOUT:g} s{progress}; check the "
                                 "network and the board, then push again")
    if not link_up or isinstance(exc, (EOFError, paramiko.SSHException, ConnectionError)) or (
            isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED)):
        return SshTransferFailed(f"the connection to {target.label} dropped{progress} ({exc or type(exc).__name__}); "
                                 "check the network and push again")
    if isinstance(exc, OSError) and exc.errno == errno.EACCES:
        return SshTransferFailed(f"{target.user} may not write into {store_dir} on {target.hostname} (permission "
                                 "denied); make the model store writable by that user or push as the agent's user")
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
        return SshTransferFailed(f"the model store {store_dir} does not exist on {target.label}; create it (or pass "
                                 "the directory qverify-agent uses as --model-dir) and push again")
    return SshTransferFailed(f"{doing} {store_dir} on {target.label} failed{progress} ({exc or type(exc).__name__}); "
                             "check the board's disk and the store's permissions, then push again")


def _write_error(code: int, text: str, target: _Target, store_dir: str, sent: int, total: int) -> SshTransferFailed:
    if code == SFTP_PERMISSION_DENIED:
        return _transfer_error(PermissionError(errno.EACCES, text), target, store_dir, "writing into", sent, total)
    if code == SFTP_NO_SUCH_FILE:
        return _transfer_error(FileNotFoundError(errno.ENOENT, text), target, store_dir, "writing into", sent, total)
    detail = _status_text(code, text)
    if code in (SFTP_FAILURE, SFTP_EOF):
        return SshTransferFailed(f"writing into {store_dir} on {target.label} failed after {sent} of {total} bytes "
                                 f"({detail}), usually because the board's disk is full; free space on the board "
                                 "and push again")
    return SshTransferFailed(f"writing into {store_dir} on {target.label} failed after {sent} of {total} bytes "
                             f"({detail}); check the board's disk and the store's permissions, then push again")


def _upload(client: paramiko.SSHClient, sftp: paramiko.SFTPClient, target: _Target, path: Path, store_dir: str,
            final: str, sha256: str, total: int, progress: Callable[[int, int], None] | None) -> None:
    """Send to a .part name, then rename it into place; on any failure (or Ctrl-C) remove the .part file."""
    part = posixpath.join(store_dir, f".{sha256}.{secrets.token_hex(8)}.part")
    upload = _Upload(sftp, part)
    created = False
    try:
        try:
            upload.open()
        except (OSError, paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
            raise _transfer_error(exc, target, store_dir, "creating a file in", 0, total,
                                  _link_up(sftp)) from None
        created = True
        with open(path, "rb", buffering=0) as src:
            try:
                upload.send(src, total, progress)
            except (OSError, paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
                if upload.local_error:
                    raise  # reading the local file failed: the caller's OSError
                raise _transfer_error(exc, target, store_dir, "writing into", upload.sent, total,
                                      link_up=False) from None
        if upload.acks.error is not None:
            code, text = upload.acks.error
            raise _write_error(code, text, target, store_dir, upload.acks.acked, total)
        try:
            upload.close()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise _transfer_error(exc, target, store_dir, "closing the file in", total, total,
                                  _link_up(sftp)) from None
        try:
            _rename(sftp, part, final)
            done = sftp.stat(final)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise _transfer_error(exc, target, store_dir, "renaming the finished file in", total, total,
                                  _link_up(sftp)) from None
        if done.st_size != total:
            raise SshTransferFailed(f"{final} on {target.label} has {done.st_size} bytes after the push instead of "
                                    f"{total}; something else writes into the model store, stop it and push again")
        created = False
    finally:
        if created:
            _remove_part(client, sftp, upload)


def _rename(sftp: paramiko.SFTPClient, part: str, final: str) -> None:
    """Atomic replace with posix-rename@openssh.com; plain SFTP rename (no overwrite) where that is missing."""
    try:
        sftp.posix_rename(part, final)
    except OSError as exc:
        if exc.errno is not None:
            raise
        if _stat(sftp, final) is not None:  # a wrong-size leftover: plain rename cannot replace it
            sftp.remove(final)
        sftp.rename(part, final)


def _remove_part(client: paramiko.SSHClient, sftp: paramiko.SFTPClient, upload: _Upload) -> None:
    """Best effort, bounded in time: the agent also removes .part files when it starts."""
    try:
        if upload.stream_clean:
            sftp.get_channel().settimeout(_CLEANUP_TIMEOUT)
            try:
                upload.close()
            except (OSError, paramiko.SSHException, EOFError):
                pass
        else:  # a write was cut mid-packet: this SFTP stream is garbage, use a new channel
            sftp.close()
            transport = client.get_transport()
            if transport is None or not transport.is_active():
                return
            channel = transport.open_session(timeout=_CLEANUP_TIMEOUT)
            channel.settimeout(_CLEANUP_TIMEOUT)
            channel.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(channel)
        sftp.remove(upload.remote)
    except Exception:
        pass
