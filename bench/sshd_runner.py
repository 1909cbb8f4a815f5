"""A private OpenSSH ``sshd`` on loopback with throw-away keys, for SFTP push tests and benchmarks.

It needs no test framework: ``bench/push.py`` runs it in a venv without the test extras,
and the pytest fixtures in ``tests/sshd_harness.py`` wrap it.

* ``SshServer`` is one private sshd: its own host key (ed25519), a user key authorized for
  the current user, an ``sshd_config`` in its work directory (PidFile, HostKey,
  AuthorizedKeysFile there; StrictModes off, password logins off, no PAM,
  ``ListenAddress 127.0.0.1``, ``Subsystem sftp internal-sftp``), run as
  ``sshd -D -e -f sshd_config`` with its log in ``sshd.log``. It also writes what a client
  needs: ``ssh_config`` (an alias ``Host <alias>`` with HostName, Port, User,
  IdentityFile) and the path ``known_hosts`` (not created: the client under test fills it).
  ``regenerate_host_key()`` gives the server a new host key and restarts it on the same
  port (what a reinstalled board looks like to a client); ``drop_connections()`` kills the
  sshd processes serving open connections (a cut network, as a client sees it);
  ``known_hosts_line()`` / ``trust()`` give the known_hosts entry for the current host key.
* ``SshdFactory`` starts servers (``factory(sftp_options="-R")`` gives one whose SFTP
  server refuses every write) and stops all of them by PID on ``close()``.

Start-up waits (bounded) until the port accepts and the ``SSH-2.0`` banner arrives; stop
sends SIGTERM, then SIGKILL after a bounded wait. Only 127.0.0.1 is ever listened on.
Without ``/usr/sbin/sshd`` or ``ssh-keygen``, ``openssh_tools()`` raises SshdUnavailable
naming the install command. Works as root (sshd's privilege separation directory is
created if missing) and as an ordinary user (who can only log in as themselves, which is
what the runner does; with ``UsePAM no`` sshd refuses accounts whose password is locked,
such as ``nobody``).
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd (Debian's build) refuses to start as root without it
INSTALL_HINT = "apt-get install openssh-server openssh-client"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0      # seconds sshd gets to answer with its banner
STOP_TIMEOUT = 10.0       # seconds sshd gets to exit after SIGTERM before SIGKILL
START_ATTEMPTS = 3        # a free port can be taken between choosing it and sshd binding it


class SshdUnavailable(RuntimeError):
    """sshd or ssh-keygen is not installed (the message says what to install)."""


class SshdStartError(RuntimeError):
    """sshd did not come up; the message holds the end of its log."""


def openssh_tools() -> tuple[Path, str]:
    """(sshd, ssh-keygen) paths, or SshdUnavailable naming the package to install."""
    keygen = shutil.which("ssh-keygen")
    if not SSHD.exists() or keygen is None:
        missing = " and ".join(n for n, ok in (("sshd", SSHD.exists()), ("ssh-keygen", keygen)) if not ok)
        raise SshdUnavailable(f"{missing} not installed: {INSTALL_HINT}")
    return SSHD, keygen


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def keygen(path: Path, comment: str) -> Path:
    """A new passphrase-less ed25519 key pair at ``path`` / ``path.pub`` (old files replaced)."""
    _, tool = openssh_tools()
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    subprocess.run([tool, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return path


def sshd_version() -> tuple[int, int]:
    """sshd's (major, minor) version, e.g. (9, 2); (0, 0) when it cannot be read."""
    result = subprocess.run([str(SSHD), "-V"], capture_output=True, text=True, timeout=10)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", result.stdout + result.stderr)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first), read from /proc; [] where /proc has no children files."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 10_000:
        parent = todo.pop()
        try:  # the process may exit while we look
            tasks = list(Path(f"/proc/{parent}/task").glob("*/children"))
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(p) for p in task.read_text().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


def ssh_banner(port: int, host: str = HOST, timeout: float = 2.0) -> bytes | None:
    """The first bytes the server sends (an SSH banner starts with b'SSH-'), or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64)
    except OSError:
        return None


@dataclass
class SshServer:
    """One private sshd on 127.0.0.1 and the client-side files that go with it."""

    workdir: Path
    port: int
    user: str
    user_key: Path          # private key authorized for ``user``
    host_key: Path          # the server's private host key
    host_key_pub: Path
    known_hosts: Path       # where the client under test records host keys (not created here)
    ssh_config: Path        # ``Host <alias>`` -> HostName, Port, User, IdentityFile
    alias: str
    sshd_config: Path
    log_path: Path
    sftp_options: str = ""  # appended to ``Subsystem sftp internal-sftp`` (e.g. "-R": read-only)
    host: str = HOST
    process: subprocess.Popen | None = field(default=None, repr=False)

    # ----------------------------------------------------------------- set-up

    @classmethod
    def create(cls, workdir: Path, alias: str = "board", sftp_options: str = "") -> "SshServer":
        """Keys and configuration files in ``workdir``; not started."""
        workdir.mkdir(parents=True, exist_ok=True)
        user = current_user()
        server = cls(workdir=workdir, port=free_port(), user=user, user_key=workdir / "id_ed25519",
                     host_key=workdir / "ssh_host_ed25519_key", host_key_pub=workdir / "ssh_host_ed25519_key.pub",
                     known_hosts=workdir / "known_hosts", ssh_config=workdir / "ssh_config", alias=alias,
                     sshd_config=workdir / "sshd_config", log_path=workdir / "sshd.log", sftp_options=sftp_options)
        keygen(server.user_key, f"qverify-test-user@{alias}")
        keygen(server.host_key, f"qverify-test-host@{alias}")
        (workdir / "authorized_keys").write_text(server.user_key.with_name("id_ed25519.pub").read_text())
        server._write_configs()
        return server

    def _write_configs(self) -> None:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            f"AllowUsers {self.user}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "X11Forwarding no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            f"Subsystem sftp internal-sftp {self.sftp_options}".rstrip(),
        ]
        if sshd_version() >= (9, 8):
            lines.append("PerSourcePenalties no")  # tests fail logins on purpose; never lock the next test out
        self.sshd_config.write_text("\n".join(lines) + "\n")
        self.ssh_config.write_text(
            f"Host {self.alias}\n"
            f"    HostName {self.host}\n"
            f"    Port {self.port}\n"
            f"    User {self.user}\n"
            f"    IdentityFile {self.user_key}\n")

    # ----------------------------------------------------------------- life cycle

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> "SshServer":
        """Start sshd and wait (bounded) for its banner; a port lost to a race is replaced."""
        for attempt in range(START_ATTEMPTS):
            try:
                return self._start_once()
            except SshdStartError:
                self.stop()
                if attempt == START_ATTEMPTS - 1 or "Address already in use" not in self.log():
                    raise
                self.port = free_port()
                self._write_configs()
        raise AssertionError("unreachable")

    def _start_once(self) -> "SshServer":
        sshd, _ = openssh_tools()
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(sshd), "-D", "-e", "-f", str(self.sshd_config)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive():
                raise SshdStartError(f"sshd exited with code {self.process.returncode} at start:\n{self.log()[-2000:]}")
            banner = ssh_banner(self.port, self.host, timeout=1.0)
            if banner and banner.startswith(b"SSH-"):
                return self
            time.sleep(0.05)
        raise SshdStartError(f"sshd did not answer on {self.host}:{self.port} within {START_TIMEOUT:g} s:\n"
                             f"{self.log()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL after STOP_TIMEOUT; connections still open are killed too. Idempotent."""
        proc, self.process = self.process, None
        if proc is None:
            return
        sessions = [] if proc.poll() is not None else descendants(proc.pid)
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=STOP_TIMEOUT)
        for pid in sessions:  # sshd leaves open connections running when it stops listening
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def session_pids(self) -> list[int]:
        """PIDs of the processes sshd forked for client connections, and theirs (Linux /proc)."""
        return descendants(self.pid) if self.alive() else []

    def drop_connections(self) -> int:
        """SIGKILL every connection's sshd process (a cut network, as the client sees it); returns how many."""
        dropped = 0
        for pid in self.session_pids():
            try:
                os.kill(pid, signal.SIGKILL)
                dropped += 1
            except ProcessLookupError:
                pass
        return dropped

    def restart(self) -> "SshServer":
        self.stop()
        return self.start()

    def regenerate_host_key(self) -> None:
        """A new host key, and sshd restarted on the same port: the client must see a changed key."""
        self.stop()
        keygen(self.host_key, f"qverify-test-host@{self.alias}")
        self.start()

    # ----------------------------------------------------------------- helpers

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this server: ``[127.0.0.1]:PORT`` (port 22 would be bare)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def known_hosts_line(self) -> str:
        """The line trusting this server's current host key."""
        kind, blob = self.host_key_pub.read_text().split()[:2]
        return f"{self.known_hosts_name} {kind} {blob}\n"

    def trust(self, path: Path | None = None) -> Path:
        """Write a known_hosts file (default: ``known_hosts``) holding only this server's host key."""
        path = path or self.known_hosts
        path.write_text(self.known_hosts_line())
        path.chmod(0o600)
        return path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class SshdFactory:
    """Starts private sshd servers under ``root``; ``close()`` stops every one by PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[SshServer] = []

    def __call__(self, alias: str = "board", sftp_options: str = "") -> SshServer:
        server = SshServer.create(self.root / f"sshd{len(self.servers)}", alias=alias, sftp_options=sftp_options)
        self.servers.append(server)
        return server.start()

    def close(self) -> None:
        errors = []
        for server in self.servers:
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]
