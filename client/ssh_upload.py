"""The SFTP side of a push: the store checks and the pipelined upload to a ``.part`` file.

* Never a half model under the final name: bytes go to ``.<sha256>.<random>.part`` (the
  name the agent's store removes after a crash) and are renamed with
  ``posix-rename@openssh.com`` (atomic) only when every write was acknowledged. A failure
  or Ctrl-C removes the ``.part`` file (best effort: after a cut connection it stays until
  the agent's next start removes it).
* Fast: the file goes out as pipelined SFTP writes as large as the server allows
  (``limits@openssh.com``), sized so each request fills whole SSH channel packets and
  built in one reused buffer that the file is read straight into. paramiko's own ``put``
  sends 32 KiB requests and notices a failed write only as a size mismatch at the end,
  which is why the write loop is here; it uses SFTPClient's request bookkeeping
  (``_request``, ``_read_response``, ``_expecting``, ``request_number``), unchanged since
  paramiko 2, and the tests run it end to end.
"""
from __future__ import annotations

import errno
import posixpath
import secrets
import socket
import stat
import struct
from pathlib import Path
from typing import BinaryIO, Callable

import paramiko
from paramiko.sftp import (
    CMD_CLOSE, CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_HANDLE, CMD_OPEN, CMD_STATUS, CMD_WRITE, SFTP_EOF,
    SFTP_FAILURE, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_WRITE, SFTP_NO_SUCH_FILE, SFTP_OK,
    SFTP_PERMISSION_DENIED,
)
from paramiko.sftp_attr import SFTPAttributes

from qverify.client.ssh_errors import SshTransferFailed
from qverify.client.ssh_target import Target

__all__ = ["STALL_TIMEOUT", "check_store_dir", "link_up", "stat_or_none", "transfer_error", "upload_model"]

_SFTP_SAFE_WRITE = 32768          # every SFTP server accepts writes this large
_SFTP_MAX_WRITE = 256 * 1024      # never ask for more, whatever the server advertises
_IN_FLIGHT_BYTES = 2 << 20        # unacknowledged write bytes (about sshd's channel window)
STALL_TIMEOUT = 60.0              # seconds without progress on the SFTP channel before giving up
_CLEANUP_TIMEOUT = 10.0           # seconds the removal of a .part file may take after a failure


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


def stat_or_none(sftp: paramiko.SFTPClient, path: str) -> SFTPAttributes | None:
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


def check_store_dir(sftp: paramiko.SFTPClient, target: Target, store_dir: str, total: int) -> None:
    """The store directory exists and has room: fail before sending anything if not."""
    try:
        st = stat_or_none(sftp, store_dir)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise transfer_error(exc, target, store_dir, "looking into", 0, total, link_up(sftp)) from None
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


def link_up(sftp: paramiko.SFTPClient) -> bool:
    """Whether the SFTP channel and its connection still stand (paramiko reports a dead one as a bare OSError)."""
    channel = sftp.get_channel()
    transport = channel.get_transport() if channel is not None else None
    return channel is not None and not channel.closed and transport is not None and transport.is_active()


def transfer_error(exc: BaseException, target: Target, store_dir: str, doing: str, sent: int,
                    total: int, link_up: bool = True) -> SshTransferFailed:
    """An actionable sentence for an SFTP failure while ``doing`` something in ``store_dir``.

    ``link_up=False`` says the connection itself failed, whatever the exception looks like.
    """
    if isinstance(exc, SshTransferFailed):
        return exc
    progress = f" after {sent} of {total} bytes" if sent else ""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return SshTransferFailed(f"the push to {target.label} stalled for {STALL_TIMEOUT:g} s{progress}; check the "
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


def _write_error(code: int, text: str, target: Target, store_dir: str, sent: int, total: int) -> SshTransferFailed:
    if code == SFTP_PERMISSION_DENIED:
        return transfer_error(PermissionError(errno.EACCES, text), target, store_dir, "writing into", sent, total)
    if code == SFTP_NO_SUCH_FILE:
        return transfer_error(FileNotFoundError(errno.ENOENT, text), target, store_dir, "writing into", sent, total)
    detail = _status_text(code, text)
    if code in (SFTP_FAILURE, SFTP_EOF):
        return SshTransferFailed(f"writing into {store_dir} on {target.label} failed after {sent} of {total} bytes "
                                 f"({detail}), usually because the board's disk is full; free space on the board "
                                 "and push again")
    return SshTransferFailed(f"writing into {store_dir} on {target.label} failed after {sent} of {total} bytes "
                             f"({detail}); check the board's disk and the store's permissions, then push again")


def upload_model(client: paramiko.SSHClient, sftp: paramiko.SFTPClient, target: Target, path: Path, store_dir: str,
            final: str, sha256: str, total: int, progress: Callable[[int, int], None] | None) -> None:
    """Send to a .part name, then rename it into place; on any failure (or Ctrl-C) remove the .part file."""
    part = posixpath.join(store_dir, f".{sha256}.{secrets.token_hex(8)}.part")
    upload = _Upload(sftp, part)
    created = False
    try:
        try:
            upload.open()
        except (OSError, paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
            raise transfer_error(exc, target, store_dir, "creating a file in", 0, total,
                                  link_up(sftp)) from None
        created = True
        with open(path, "rb", buffering=0) as src:
            try:
                upload.send(src, total, progress)
            except (OSError, paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
                if upload.local_error:
                    raise  # reading the local file failed: the caller's OSError
                raise transfer_error(exc, target, store_dir, "writing into", upload.sent, total,
                                      link_up=False) from None
        if upload.acks.error is not None:
            code, text = upload.acks.error
            raise _write_error(code, text, target, store_dir, upload.acks.acked, total)
        try:
            upload.close()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise transfer_error(exc, target, store_dir, "closing the file in", total, total,
                                  link_up(sftp)) from None
        try:
            _rename(sftp, part, final)
            done = sftp.stat(final)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise transfer_error(exc, target, store_dir, "renaming the finished file in", total, total,
                                  link_up(sftp)) from None
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
        if stat_or_none(sftp, final) is not None:  # a wrong-size leftover: plain rename cannot replace it
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
