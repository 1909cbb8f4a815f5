"""One model being pushed into the store (``ModelStore.begin_push``).

Why it looks the way it does:

* A model becomes visible only complete and verified: pushes write to a temporary
  ``.<sha>.<random>.part`` file in the same directory, hash it while writing, check size
  and hash, fsync, and ``os.replace`` it into place (atomic on POSIX). A cut transfer, a
  wrong hash or a crash (SIGKILL, power loss) leaves at worst a ``.part`` file, which the
  next start removes.
* A push must be a model container (magic, format version, payload length and payload
  sha256 of ``qverify.simulator.modelfile``'s header): other bytes are refused as they
  arrive, so nothing that is not a model ever becomes loadable.
* Nothing is evicted for a push that has not proven it can complete: eviction happens only
  at commit, after size, container and sha256 were checked, and only when evicting the
  least recently used unpinned models actually makes enough room (otherwise the push
  fails and every stored model stays). When the disk cannot hold a push as it arrives,
  the bytes that do not fit are held in memory until that proof (at most one model,
  which is bounded by the per-model size limit), then disk room is made and they are
  written.
"""
from __future__ import annotations

import errno
import hashlib
import os
from typing import TYPE_CHECKING, Callable

from qverify.agent.store_errors import HashMismatch, NotAModel, TransferIncomplete, TransferSizeError, short
from qverify.simulator import modelfile

if TYPE_CHECKING:
    from qverify.agent.store import ModelStore

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class PushSession:
    """One model being received: bytes go to a temp file and are hashed as they arrive.

    Nothing is visible until ``commit`` checked size and sha256. As a context manager it
    aborts on an exception and when left without ``commit`` (a cut stream).
    """

    def __init__(self, store: ModelStore, sha256: str, total_bytes: int, fd: int, temp_path: str,
                 disk_budget: int | None = None, *,
                 write: Callable[[int, bytes | memoryview], None] = write_all,
                 fsync: Callable[[int], None] = os.fsync) -> None:
        self.store = store
        # The store hands in its own write and fsync: they are where a full disk is faked.
        self._write_all = write
        self._fsync = fsync
        self.sha256 = sha256
        self.total_bytes = total_bytes
        self.temp_path = temp_path
        self.received = 0
        self.state = "open"  # "open", "committed" or "aborted"
        self._fd: int | None = fd
        self._digest = hashlib.sha256()
        self._payload_digest = hashlib.sha256()  # what the container header promises
        self._header = b""
        # Bytes the disk could take when the push began; the rest waits in memory until proven.
        self._disk_budget = total_bytes if disk_budget is None else disk_budget
        self._on_disk = 0
        self._held = bytearray()

    @property
    def held_bytes(self) -> int:
        """Bytes received but held in memory because the disk had no room for them yet."""
        return len(self._held)

    def __enter__(self) -> PushSession:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.state == "open":
            self.abort()

    def _check_open(self) -> None:
        if self.state != "open":
            raise RuntimeError(f"push of model {short(self.sha256)} is already {self.state}")

    def write(self, chunk: bytes) -> None:
        """Append a chunk; more data than declared aborts the push (nothing past total_bytes is written)."""
        self._check_open()
        if self.received + len(chunk) > self.total_bytes:
            got = self.received + len(chunk)
            self.abort()
            raise TransferSizeError(f"push of model {short(self.sha256)} sent at least {got} bytes but declared "
                                    f"{self.total_bytes}; declare the size of the whole model.bin and push again",
                                    self.sha256)
        self._check_container(chunk)
        self._store_chunk(chunk)
        self._digest.update(chunk)
        self.received += len(chunk)

    def _check_container(self, chunk: bytes) -> None:
        """Refuse bytes that are not a model container as soon as its header has arrived."""
        size = modelfile.HEADER.size
        before = self.received
        if before < size:
            self._header += bytes(chunk[:size - before])
            if len(self._header) == size:
                magic, version, _, length, _, _ = modelfile.HEADER.unpack(self._header)
                problem = None
                if magic != modelfile.MAGIC:
                    problem = "is not a qverify model (bad magic)"
                elif version != modelfile.FORMAT_VERSION:
                    problem = f"is model format version {version}, this board reads {modelfile.FORMAT_VERSION}"
                elif length != self.total_bytes - size:
                    problem = f"has a header that promises {length} payload bytes, but {self.total_bytes - size} were declared"
                if problem:
                    self.abort()
                    raise NotAModel(f"the bytes pushed as model {short(self.sha256)} {problem}; push a model.bin "
                                    "written by 'qverify compile' with the same qverify version", self.sha256)
        self._payload_digest.update(memoryview(chunk)[max(0, size - before):])

    def _store_chunk(self, chunk: bytes) -> None:
        """Write what the disk can take; hold the rest in memory (never evict before commit)."""
        if self._held or self._on_disk + len(chunk) > self._disk_budget:
            self._held += chunk
            return
        try:
            self._write_all(self._fd, chunk)
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                self.abort()
                raise
            # Filled by someone else meanwhile: drop the partial write and hold the chunk instead.
            try:
                os.ftruncate(self._fd, self._on_disk)
                os.lseek(self._fd, self._on_disk, os.SEEK_SET)
            except OSError:
                self.abort()
                raise self.store._disk_full(self.sha256, self.total_bytes) from None
            self._held += chunk
            return
        self._on_disk += len(chunk)

    def write_held(self) -> None:
        """Write the bytes held in memory and fsync (the store made disk room for them)."""
        try:
            self._write_all(self._fd, self._held)
            self._fsync(self._fd)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise self.store._disk_full(self.sha256, self.total_bytes) from None
            raise
        self._on_disk += len(self._held)
        self._held = bytearray()

    def commit(self) -> int:
        """Verify size and sha256, fsync, and atomically make the model visible; returns its size."""
        self._check_open()
        sha = self.sha256
        if self.received != self.total_bytes:
            self.abort()
            raise TransferIncomplete(f"push of model {short(sha)} ended after {self.received} of "
                                     f"{self.total_bytes} bytes; push it again", sha)
        actual = self._digest.hexdigest()
        if actual != sha:
            self.abort()
            raise HashMismatch(f"the bytes pushed as model {short(sha)} hash to {short(actual)}: the transfer was "
                               "corrupted or the id is not the sha256 of the whole model.bin; push it again", sha)
        if self._payload_digest.digest() != modelfile.HEADER.unpack(self._header)[4]:
            self.abort()
            raise NotAModel(f"model {short(sha)} is a corrupt model container (its payload does not match the sha256 "
                            "in its header); recompile it with 'qverify compile' and push it again", sha)
        try:
            self._fsync(self._fd)
        except OSError as exc:
            self.abort()
            if exc.errno in _DISK_FULL:
                raise self.store._disk_full(sha, self.total_bytes) from None
            raise
        try:
            self.store._install(self)
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._fd = None
        self.state = "committed"
        return self.total_bytes

    def abort(self) -> None:
        """Drop the push: close and delete the temp file. Safe to call more than once."""
        if self.state == "committed":
            return
        self.state = "aborted"
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass
