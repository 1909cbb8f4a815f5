"""The agent's content-addressed model store: ``<root>/<sha256>.bin``.

Why it looks the way it does (a push, the directory index and the errors have their own
modules and reasons: ``push``, ``store_directory``, ``store_errors``):

* Models are named by the sha256 of the whole model.bin, so a name can never be a path:
  every public call validates the id (64 lowercase hex characters) before it touches the
  file system.
* Files may also arrive out of band (the client's SFTP push writes ``<sha>.bin`` directly);
  such files, and every file found at startup, have their hash verified the first time a
  run uses them, and a corrupt one is deleted instead of being run.
* Slow work (hashing, decoding names) happens outside the store's lock.

Only the standard library and ``qverify.simulator.modelfile`` are used: boards install no
more than grpcio, protobuf and numpy beside qverify.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from qverify.agent.push import PushSession, write_all
from qverify.agent.store_directory import _PART_RE, StoreDirectory  # noqa: F401  (_PART_RE: the .part names)
from qverify.agent.store_errors import (  # noqa: F401  (every store error is importable from here)
    HashMismatch,
    InvalidModelId,
    ModelNotFound,
    ModelTooLarge,
    NotAModel,
    StoreError,
    StoreFull,
    TransferIncomplete,
    TransferSizeError,
    short,
    validate_id,
)
from qverify.simulator import modelfile
from qverify.simulator.errors import ModelFormatError

log = logging.getLogger(__name__)

_HASH_BLOCK = 1 << 20


# Hooks the tests replace to fake a disk that fills up while a push writes or flushes.
_write_all = write_all


def _fsync(fd: int) -> None:
    """fsync, as a hook the tests replace to fake a disk that fills up at flush time."""
    os.fsync(fd)


def _hash_file(path: str) -> tuple[str, int]:
    """sha256 hex and size of a file, read in blocks (models can be hundreds of MB)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while True:
            block = fh.read(_HASH_BLOCK)
            if not block:
                break
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _fsync_dir(path: str) -> None:
    """Make a rename durable; some file systems refuse directory fsync, which is harmless."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- store


@dataclasses.dataclass(frozen=True)
class StoredModelInfo:
    """One stored model, with the field names of the wire message ``StoredModel``."""

    sha256: str
    size_bytes: int
    last_used_unix_ms: int
    name: str    # program name recorded in the model ("" when unreadable)
    target: str  # target profile it was compiled for ("" when unreadable)


class ModelStore(StoreDirectory):
    """Content-addressed store of model.bin files under ``root``, capped at ``capacity_bytes``.

    One agent owns a root: construction removes the ``.part`` files of interrupted pushes.
    """

    def __init__(self, root: str | os.PathLike, capacity_bytes: int, max_model_bytes: int,
                 board_id: str | None = None) -> None:
        if capacity_bytes <= 0 or max_model_bytes <= 0:
            raise ValueError(f"store capacity ({capacity_bytes}) and maximum model size ({max_model_bytes}) "
                             "must be positive numbers of bytes")
        super().__init__(Path(root), int(capacity_bytes), board_id or socket.gethostname())
        self.max_model_bytes = int(max_model_bytes)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"the model store {self.root} is a file, not a folder; point the agent's --model-dir "
                             "at a folder (it is created if missing)")
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the model store folder {self.root}: {exc.strerror}; point the agent's "
                             "--model-dir at a writable folder") from None
        self._remove_stale_parts()
        with self._lock:
            self._scan_locked()
            self._clock_ns = max((e.mtime_ns for e in self._index.values()), default=0)

    # ----------------------------------------------------------------- queries

    validate_id = staticmethod(validate_id)

    def path_of(self, sha: str) -> Path:
        """Where model ``sha`` lives (whether or not it is there); validates the id."""
        return self.root / f"{validate_id(sha)}.bin"

    def has(self, sha: str) -> int | None:
        """Size of model ``sha`` if it is stored, else None. Does not count as a use."""
        validate_id(sha)
        with self._lock:
            entry = self._stat_locked(sha)
            return None if entry is None else entry.size

    def list(self) -> list[StoredModelInfo]:
        """Every stored model, most recently used first, with the name and target it records."""
        with self._lock:
            self._scan_locked()
            entries = sorted(self._index.items(), key=lambda kv: (-kv[1].mtime_ns, kv[0]))
            entries = [(sha, e.size, e.mtime_ns) for sha, e in entries]
        result = []
        for sha, size, mtime_ns in entries:
            name, target = self._metadata(sha, size)
            result.append(StoredModelInfo(sha, size, mtime_ns // 1_000_000, name, target))
        return result

    def used_bytes(self) -> int:
        """Bytes of all stored models (what the capacity caps)."""
        with self._lock:
            self._scan_locked()
            return sum(e.size for e in self._index.values())

    def free_bytes(self) -> int:
        """Free space of the file system holding the store (what GetInfo reports)."""
        return shutil.disk_usage(self.root).free

    # ----------------------------------------------------------------- use

    def path_for_run(self, sha: str) -> Path:
        """Path of model ``sha`` for a backend to load; marks it used.

        The first use of a file this process did not write itself (found at startup, or put
        there over SFTP) checks its sha256; a corrupt file is deleted and ModelNotFound
        raised, so a damaged model is never run. The check is remembered per
        (inode, size, mtime), so later runs cost one stat.
        """
        path = self.path_of(sha)
        spath = os.fspath(path)
        for _ in range(5):
            with self._lock:
                entry = self._stat_locked(sha)
                if entry is None:
                    raise self._not_found(sha)
                if entry.verified == entry.key:
                    self._touch_locked(sha, entry)
                    return path
                key = entry.key
            try:
                digest, size = _hash_file(spath)
            except FileNotFoundError:
                continue
            with self._lock:
                entry = self._stat_locked(sha)
                if entry is None or entry.key != key or size != entry.size:
                    continue  # replaced or removed while hashing: look again
                if digest != sha:
                    self._remove_locked(sha)
                    log.warning("model %s in the store was corrupt (content hashes to %s); deleted it", sha, digest)
                    raise ModelNotFound(
                        f"model {short(sha)} in the store of board {self.board_id} was corrupt (its content no "
                        "longer matches its sha256) and has been deleted; push it again", sha)
                entry.verified = key
                self._touch_locked(sha, entry)
                return path
        raise self._not_found(sha)

    def touch(self, sha: str) -> None:
        """Mark model ``sha`` as used now (its file mtime, so LRU order survives a restart)."""
        validate_id(sha)
        with self._lock:
            entry = self._stat_locked(sha)
            if entry is None:
                raise self._not_found(sha)
            self._touch_locked(sha, entry)

    @contextlib.contextmanager
    def pin(self, sha: str) -> Iterator[Path]:
        """Keep model ``sha`` from eviction while a run loads it; yields its verified path.

        Use: ``with store.pin(sha) as path: backend.load(path)``. Eviction skips pinned
        models; an explicit ``delete`` does not (on POSIX an already opened file stays
        readable).
        """
        validate_id(sha)
        with self._lock:
            self._pins[sha] = self._pins.get(sha, 0) + 1
        try:
            yield self.path_for_run(sha)
        finally:
            with self._lock:
                left = self._pins[sha] - 1
                if left:
                    self._pins[sha] = left
                else:
                    del self._pins[sha]

    def is_pinned(self, sha: str) -> bool:
        """Whether a run currently holds model ``sha``."""
        validate_id(sha)
        with self._lock:
            return sha in self._pins

    def delete(self, sha: str) -> bool:
        """Remove model ``sha``; False when it was not there."""
        validate_id(sha)
        with self._lock:
            if self._stat_locked(sha) is None:
                return False
            return self._remove_locked(sha)

    def trim(self) -> list[str]:
        """Evict least recently used models until the store is within its capacity again.

        Only needed after files arrived out of band (SFTP); pushes through the store make
        room themselves. Returns the evicted ids.
        """
        with self._lock:
            self._scan_locked()
            return self._evict_locked(0, exclude=None, strict=False)

    # ----------------------------------------------------------------- writes

    def begin_push(self, sha: str, total_bytes: int) -> PushSession:
        """Start receiving model ``sha`` of ``total_bytes`` bytes; limits are checked before any byte is written."""
        validate_id(sha)
        if not isinstance(total_bytes, int) or isinstance(total_bytes, bool) or total_bytes < 0:
            raise TransferSizeError(f"push of model {short(sha)} declared total_bytes={total_bytes!r}; "
                                    "send the size of the whole model.bin in bytes (0 or more) with the first chunk",
                                    sha)
        if total_bytes < modelfile.HEADER.size:
            raise NotAModel(f"push of model {short(sha)} declared {total_bytes} bytes, less than a model container's "
                            f"{modelfile.HEADER.size}-byte header; push a model.bin written by 'qverify compile'", sha)
        if total_bytes > self.max_model_bytes:
            raise ModelTooLarge(f"model {short(sha)} is {total_bytes} bytes, more than the {self.max_model_bytes} "
                                f"bytes board {self.board_id} accepts (--max-model-size); raise the agent's limit "
                                "or use a smaller model", sha)
        if total_bytes > self.capacity_bytes:
            raise ModelTooLarge(f"model {short(sha)} is {total_bytes} bytes, more than the whole model store of "
                                f"board {self.board_id} holds ({self.capacity_bytes} bytes); raise the agent's "
                                "store capacity or use a smaller model", sha)
        disk_budget = self._check_disk_room(sha, total_bytes)
        fd, tmp = tempfile.mkstemp(prefix=f".{sha}.", suffix=".part", dir=os.fspath(self.root))
        # Looked up at each push, so a test that replaces them fakes a disk that fills up.
        return PushSession(self, sha, total_bytes, fd, tmp, disk_budget, write=_write_all, fsync=_fsync)

    def put_bytes(self, sha: str, data: bytes) -> int:
        """Store ``data`` as model ``sha`` in one go (verified like a push); returns its size."""
        with self.begin_push(sha, len(data)) as session:
            session.write(data)
            return session.commit()

    # ----------------------------------------------------------------- internals

    def _not_found(self, sha: str) -> ModelNotFound:
        return ModelNotFound(f"model {short(sha)} is not in the store of board {self.board_id}; push it first "
                             "(it may have been evicted to make room, or deleted)", sha)

    def _install(self, session: PushSession) -> None:
        """Make a verified push visible as ``<sha>.bin``, evicting LRU models only as far as needed.

        Bytes held in memory (the disk was short while they arrived) are written first,
        after making disk room; the capacity is then made, and the file renamed into place.
        """
        sha = session.sha256
        final = os.path.join(self.root, f"{sha}.bin")
        with self._lock:
            self._scan_locked()
            needed = 0 if sha in self._index else session.total_bytes
            used = sum(e.size for e in self._index.values())
            evictable = sum(self._index[s].size for s in self._eviction_order(sha))
            if used - evictable + needed > self.capacity_bytes:
                raise self._pinned_full(used, needed, sha)  # checked before evicting for the disk, too
            if session.held_bytes:
                self._make_disk_room_locked(sha, session.held_bytes)
                session.write_held()
            self._evict_locked(needed, exclude=sha, strict=True)
            stamp = self._stamp_locked()
            os.utime(session.temp_path, ns=(stamp, stamp))
            os.replace(session.temp_path, final)
            _fsync_dir(os.fspath(self.root))
            st = os.lstat(final)
            entry = self._entry_from_stat(sha, st)
            entry.verified = entry.key
            self._meta.pop(sha, None)

    def _metadata(self, sha: str, size: int) -> tuple[str, str]:
        """(program name, target name) of a stored model, cached; ("", "") when unreadable."""
        with self._lock:
            cached = self._meta.get(sha)
        if cached is not None:
            return cached
        if size > self.max_model_bytes:
            return ("", "")
        try:
            with open(os.path.join(self.root, f"{sha}.bin"), "rb") as fh:
                data = fh.read()
        except OSError:
            return ("", "")  # removed meanwhile: not cached
        try:
            program = modelfile.decode(data, source=f"model {short(sha)}")
            meta = (program.name, program.target.name)
        except ModelFormatError:
            meta = ("", "")
        with self._lock:
            if sha in self._index:
                self._meta[sha] = meta
        return meta
