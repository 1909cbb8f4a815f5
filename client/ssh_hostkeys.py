"""Host keys the way OpenSSH's ``StrictHostKeyChecking=accept-new`` treats them.

A host not in known_hosts is accepted and appended to it; a host whose key changed is
refused (HostKeyChanged names the file, the line and the ``ssh-keygen -R`` fix).
"""
from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import paramiko

from qverify.client.ssh_errors import HostKeyChanged, SshError
from qverify.client.ssh_target import Target

try:  # POSIX: serialize appends to known_hosts across processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RecordNewHostKeys", "SYSTEM_KNOWN_HOSTS", "fingerprint", "host_key_changed"]

SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")


def fingerprint(key: paramiko.PKey) -> str:
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


def host_key_changed(target: Target, exc: paramiko.BadHostKeyException) -> HostKeyChanged:
    name = target.known_hosts_name
    where = ""
    fix_file = target.known_hosts
    for path in (target.known_hosts, SYSTEM_KNOWN_HOSTS):
        lines = _entry_lines(path, name)
        if lines:
            where = f"{path} line {', '.join(map(str, lines))}"
            fix_file = path
            break
    where = where or str(target.known_hosts)
    return HostKeyChanged(
        f"the SSH host key of {name} has changed: it now presents {exc.key.get_name()} {fingerprint(exc.key)}, "
        f"but {where} records {exc.expected_key.get_name()} {fingerprint(exc.expected_key)}; if the board was "
        f"reinstalled or its keys regenerated, remove the old key with "
        f"`ssh-keygen -f {fix_file} -R '{name}'` and push again, otherwise do not push (the connection may be "
        "intercepted)")
