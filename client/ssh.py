"""Push a model.bin into a board's model store over SSH (SFTP), with paramiko.

    result = push_sftp(Path("model.bin"), "board", "/var/lib/qverify/models", sha256)

Why it works the way it does:

* Content-addressed: the store holds ``<store_dir>/<sha256>.bin``. When that file is
  already there with the right size nothing is sent (``sent=False``); the agent checks
  the sha256 itself the first time a run uses the file, so a damaged copy is never run.
* Never a half model under the final name, and fast: :mod:`qverify.client.ssh_upload`.
* Host keys the way OpenSSH's ``StrictHostKeyChecking=accept-new`` treats them:
  :mod:`qverify.client.ssh_hostkeys`.
* ``~/.ssh/config`` (HostName, User, Port, IdentityFile) and the SSH agent are honoured,
  so ``qverify -b board`` works with the same settings as ``ssh board``
  (:mod:`qverify.client.ssh_target`, :mod:`qverify.client.ssh_auth`).

This module is the public face of the push: the names below are importable from here
whichever module defines them. Every foreseeable failure is an ``SshError`` subclass
(:mod:`qverify.client.ssh_errors`) whose message is one sentence that says what to do.
Nothing here configures logging.
"""
from __future__ import annotations

import posixpath
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko

from qverify.client.ssh_connect import connect, connect_target
from qverify.client.ssh_errors import HostKeyChanged, SshAuthFailed, SshError, SshTransferFailed, SshUnreachable
from qverify.client.ssh_hostkeys import RecordNewHostKeys
from qverify.client.ssh_target import SshOptions, agent_host, resolve_target
from qverify.client.ssh_upload import (
    STALL_TIMEOUT, check_store_dir, link_up, stat_or_none, transfer_error, upload_model,
)

__all__ = [
    "SshOptions", "SshError", "HostKeyChanged", "SshAuthFailed", "SshUnreachable", "SshTransferFailed",
    "PushResult", "push_sftp", "connect", "RecordNewHostKeys", "agent_host",
]

_SHA_RE = re.compile(r"[0-9a-f]{64}")


@dataclass
class PushResult:
    """What a push did. ``bytes`` were sent over the wire (0 when skipped); ``seconds`` is the whole call."""

    sha256: str
    sent: bool
    bytes: int
    seconds: float
    remote_path: str


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
    target = resolve_target(host, options)
    store_dir = store_dir.rstrip("/") or "/"
    final = posixpath.join(store_dir, f"{sha256}.bin")
    client = connect_target(target, options)
    try:
        try:
            sftp = client.open_sftp()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshTransferFailed(f"{target.label} offers no SFTP ({exc or 'channel refused'}); enable it in the "
                                    "board's sshd_config with 'Subsystem sftp internal-sftp'") from None
        sftp.get_channel().settimeout(STALL_TIMEOUT)
        try:
            present = stat_or_none(sftp, final)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise transfer_error(exc, target, store_dir, "looking into", 0, total, link_up(sftp)) from None
        if present is not None:
            regular = present.st_mode is None or stat.S_ISREG(present.st_mode)  # None: the server did not say
            if regular and present.st_size == total:
                return PushResult(sha256, False, 0, time.perf_counter() - started, final)
            if not regular:
                raise SshTransferFailed(f"{final} on {target.label} exists but is not a regular file; remove it "
                                        "from the board's model store and push again")
        check_store_dir(sftp, target, store_dir, total)
        upload_model(client, sftp, target, path, store_dir, final, sha256, total, progress)
        return PushResult(sha256, True, total, time.perf_counter() - started, final)
    finally:
        client.close()
