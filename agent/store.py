"""The agent's content-addressed model store: ``<root>/<sha256>.bin``.

Why it looks the way it does:

* Models are named by the sha256 of the whole model.bin, so a name can never be a path:
  every public call validates the id (64 lowercase hex characters) before it touches the
  file system.
* A model becomes visible only complete and verified: pushes write to a temporary
  ``.<sha>.<random>.part`` file in the same directory, hash it while writing, check size
  and hash, fsync, and ``os.replace`` it into place (atomic on POSIX). A cut transfer, a
  wrong hash or a crash (SIGKILL, power loss) leaves at worst a ``.part`` file, which the
  next start removes.
* Files may also arrive out of band (the client's SFTP push writes ``<sha>.bin`` directly),
  so presence is always read from the directory, not from an in-memory list; such files,
  and every file found at startup, have their hash verified the first time a run uses
  them, and a corrupt one is deleted instead of being run.
* A push must be a model container (magic, format version, payload length and payload
  sha256 of ``qverify.simulator.modelfile``'s header): other bytes are refused as they
  arrive, so nothing that is not a model ever becomes loadable.
* The store has a size cap: least recently used models are evicted to make room. The last
  use is persisted as the file's mtime, so the order survives a restart; models pinned by a
  run that is loading them are never evicted.
* Nothing is evicted for a push that has not proven it can complete: eviction happens only
  at commit, after size, container and sha256 were checked, and only when evicting the
  least recently used unpinned models actually makes enough room (otherwise the push
  fails and every stored model stays). When the disk cannot hold a push as it arrives,
  the bytes that do not fit are held in memory until that proof (at most one model,
  which is bounded by the per-model size limit), then disk room is made and they are
  written.
* Several gRPC threads use one store at once: the index is guarded by one lock, and slow
  work (hashing, decoding names) happens outside it.

Only the standard library and ``qverify.simulator.modelfile`` are used: boards install no
more than grpcio, protobuf and numpy beside qverify.

Errors are ``StoreError`` subclasses whose ``grpc_code`` names the ``grpc.StatusCode`` the
server answers with, and whose message is one sentence a user can act on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from qverify.simulator import modelfile
from qverify.simulator.errors import ModelFormatError

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"[0-9a-f]{64}")
_BIN_RE = re.compile(r"([0-9a-f]{64})\.bin")
# tempfile.mkstemp's random part is made of [a-z0-9_].
_PART_RE = re.compile(r"\.[0-9a-f]{64}\.[A-Za-z0-9_]+\.part")
_HASH_BLOCK = 1 << 20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """A foreseeable model-store failure; ``grpc_code`` is the grpc.StatusCode name to answer with."""

    grpc_code = "INTERNAL"

    def __init__(self, message: str, sha256: str | None = None) -> None:
        super().__init__(message)
        self.sha256 = sha256


class InvalidModelId(StoreError):
    """The id is not 64 lowercase hex characters (so it can never name a path)."""

    grpc_code = "INVALID_ARGUMENT"


class ModelNotFound(StoreError):
    """The model is not in the store (never pushed, evicted, deleted, or found corrupt)."""

    grpc_code = "NOT_FOUND"


class ModelTooLarge(StoreError):
    """The model is larger than the board's per-model limit or than the whole store."""

    grpc_code = "RESOURCE_EXHAUSTED"


class StoreFull(StoreError):
    """No room: the disk is full, or every model that could be evicted is in use."""

    grpc_code = "RESOURCE_EXHAUSTED"


class HashMismatch(StoreError):
    """The pushed bytes do not hash to the sha256 they were pushed as."""

    grpc_code = "DATA_LOSS"


class TransferIncomplete(StoreError):
    """The push ended before the declared number of bytes arrived."""

    grpc_code = "DATA_LOSS"


class TransferSizeError(StoreError):
    """The declared size is invalid (negative), or more data came than was declared."""

    grpc_code = "INVALID_ARGUMENT"


class NotAModel(StoreError):
    """The pushed bytes are not a model container (magic, version, length, payload hash)."""

    grpc_code = "INVALID_ARGUMENT"


# --------------------------------------------------------------------------- helpers


def short(sha: str) -> str:
    """The first 12 hex digits and an ellipsis: enough to recognize a model in a message."""
    return sha[:12] + "…"


def validate_id(sha: object) -> str:
    """Return ``sha`` if it is a model id (64 lowercase hex characters), else raise InvalidModelId.

    Checked before any file-system access, so no id can reach outside the store
    (no '/', no '..', no other file names).
    """
    if isinstance(sha, str) and _ID_RE.fullmatch(sha):
        return sha
    shown = repr(sha) if not isinstance(sha, str) or len(sha) <= 80 else repr(sha[:77] + "...")
    detail = ""
    if isinstance(sha, str):
        if len(sha) != 64:
            detail = f" ({len(sha)} characters)"
        elif sha.lower() != sha and _ID_RE.fullmatch(sha.lower()):
            detail = " (uppercase; use lowercase hex)"
    raise InvalidModelId(f"model id {shown}{detail} is not a sha256: pass the 64 lowercase hex characters "
                         "of the sha256 of the whole model.bin (e.g. the output of 'sha256sum model.bin')")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte (os.write may write less than asked); a hook the tests replace to fake ENOSPC."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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


@dataclasses.dataclass
class _Entry:
    size: int
    mtime_ns: int  # = last use
    ino: int
    verified: tuple[int, int, int] | None = None  # (ino, size, mtime_ns) when the hash was checked

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.ino, self.size, self.mtime_ns)


class ModelStore:
    """Content-addressed store of model.bin files under ``root``, capped at ``capacity_bytes``.

    One agent owns a root: construction removes the ``.part`` files of interrupted pushes.
    """

    def __init__(self, root: str | os.PathLike, capacity_bytes: int, max_model_bytes: int,
                 board_id: str | None = None) -> None:
        if capacity_bytes <= 0 or max_model_bytes <= 0:
            raise ValueError(f"store capacity ({capacity_bytes}) and maximum model size ({max_model_bytes}) "
                             "must be positive numbers of bytes")
        self.root = Path(root)
        self.capacity_bytes = int(capacity_bytes)
        self.max_model_bytes = int(max_model_bytes)
        self.board_id = board_id or socket.gethostname()
        self._lock = threading.RLock()
        self._index: dict[str, _Entry] = {}
        self._pins: dict[str, int] = {}
        self._meta: dict[str, tuple[str, str]] = {}
        self._clock_ns = 0
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
        return PushSession(self, sha, total_bytes, fd, tmp, disk_budget)

    def put_bytes(self, sha: str, data: bytes) -> int:
        """Store ``data`` as model ``sha`` in one go (verified like a push); returns its size."""
        with self.begin_push(sha, len(data)) as session:
            session.write(data)
            return session.commit()

    # ----------------------------------------------------------------- internals

    def _not_found(self, sha: str) -> ModelNotFound:
        return ModelNotFound(f"model {short(sha)} is not in the store of board {self.board_id}; push it first "
                             "(it may have been evicted to make room, or deleted)", sha)

    def _remove_stale_parts(self) -> None:
        """Delete the temporary files of pushes cut by a crash; other files are not ours and stay."""
        with os.scandir(self.root) as it:
            for item in it:
                if _PART_RE.fullmatch(item.name):
                    try:
                        os.unlink(item.path)
                        log.info("removed %s, left by an interrupted push", item.name)
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        log.warning("cannot remove stale push file %s: %s", item.path, exc)

    def _entry_from_stat(self, sha: str, st: os.stat_result) -> _Entry:
        entry = self._index.get(sha)
        if entry is None:
            entry = _Entry(st.st_size, st.st_mtime_ns, st.st_ino)
            self._index[sha] = entry
        else:
            entry.size, entry.mtime_ns, entry.ino = st.st_size, st.st_mtime_ns, st.st_ino
        self._clock_ns = max(self._clock_ns, entry.mtime_ns)
        return entry

    def _stat_locked(self, sha: str) -> _Entry | None:
        """Refresh one index entry from the directory (the truth: files may arrive or vanish out of band)."""
        try:
            st = os.lstat(os.path.join(self.root, f"{sha}.bin"))
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            self._index.pop(sha, None)
            return None
        return self._entry_from_stat(sha, st)

    def _scan_locked(self) -> None:
        """Re-read the whole directory into the index; foreign files are ignored."""
        seen: dict[str, os.stat_result] = {}
        with os.scandir(self.root) as it:
            for item in it:
                match = _BIN_RE.fullmatch(item.name)
                if not match:
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    seen[match.group(1)] = st
        for sha in [s for s in self._index if s not in seen]:
            del self._index[sha]
        for sha, st in seen.items():
            self._entry_from_stat(sha, st)

    def _stamp_locked(self) -> int:
        """Now, in ns, strictly after every stamp handed out before (coarse clocks must not tie)."""
        self._clock_ns = max(time.time_ns(), self._clock_ns + 1)
        return self._clock_ns

    def _touch_locked(self, sha: str, entry: _Entry) -> None:
        stamp = self._stamp_locked()
        was_verified = entry.verified == entry.key
        try:
            os.utime(os.path.join(self.root, f"{sha}.bin"), ns=(stamp, stamp), follow_symlinks=False)
        except OSError as exc:  # read-only store: LRU order is then only kept in memory
            log.warning("cannot record the use of model %s: %s", sha, exc)
        entry.mtime_ns = stamp
        if was_verified:
            entry.verified = entry.key

    def _remove_locked(self, sha: str) -> bool:
        self._index.pop(sha, None)
        self._meta.pop(sha, None)
        try:
            os.unlink(os.path.join(self.root, f"{sha}.bin"))
        except FileNotFoundError:
            return False
        return True

    def _evict_locked(self, needed: int, exclude: str | None, strict: bool) -> list[str]:
        """Evict LRU unpinned models until ``needed`` more bytes fit in the capacity.

        With ``strict``, raise StoreFull when pinned models make that impossible.
        """
        evicted: list[str] = []
        used = sum(e.size for e in self._index.values())
        candidates = self._eviction_order(exclude)
        evictable = sum(self._index[s].size for s in candidates)
        if strict and used - evictable + needed > self.capacity_bytes:
            raise self._pinned_full(used, needed, exclude)  # before any eviction: it could not make room
        for victim in candidates:
            if used + needed <= self.capacity_bytes:
                break
            size = self._index[victim].size
            try:
                self._remove_locked(victim)
            except OSError as exc:
                log.warning("cannot evict model %s: %s", victim, exc)
                continue
            used -= size
            evicted.append(victim)
            log.info("evicted model %s (%d bytes, least recently used) to make room", victim, size)
        if strict and used + needed > self.capacity_bytes:
            raise self._pinned_full(used, needed, exclude)
        return evicted

    def _eviction_order(self, exclude: str | None) -> list[str]:
        """Unpinned models other than ``exclude``, least recently used first."""
        return [s for _, s in sorted((e.mtime_ns, s) for s, e in self._index.items()
                                     if s != exclude and s not in self._pins)]

    def _pinned_full(self, used: int, needed: int, sha: str | None) -> StoreFull:
        pinned = sum(self._index[s].size for s in self._pins if s in self._index)
        return StoreFull(f"the model store of board {self.board_id} is full: {used} of its {self.capacity_bytes} "
                         f"bytes are held, {pinned} of them by models that runs are using, and {needed} more are "
                         "needed; push again when those runs finish, or raise the store capacity", sha)

    def _check_disk_room(self, sha: str, total_bytes: int) -> int:
        """Before a push: the bytes the disk can take now. Evicts nothing.

        StoreFull when even evicting every unpinned model could not make room, so such a
        push fails at once and the store keeps what it has.
        """
        free = self.free_bytes()
        if free >= total_bytes:
            return free
        with self._lock:
            self._scan_locked()
            evictable = sum(self._index[s].size for s in self._eviction_order(sha))
        if free + evictable < total_bytes:
            raise self._disk_full(sha, total_bytes, free)
        return free

    def _make_disk_room_locked(self, sha: str, needed: int) -> None:
        """At commit (the push is proven): evict LRU unpinned models until ``needed`` bytes fit on disk.

        Evicts nothing when that cannot suffice.
        """
        free = self.free_bytes()
        if free >= needed:
            return
        self._scan_locked()
        candidates = self._eviction_order(sha)
        if free + sum(self._index[s].size for s in candidates) < needed:
            raise self._disk_full(sha, needed, free)
        for victim in candidates:
            if free >= needed:
                break
            try:
                self._remove_locked(victim)
            except OSError as exc:
                log.warning("cannot evict model %s: %s", victim, exc)
                continue
            log.info("evicted model %s to free disk space for model %s", victim, sha)
            free = self.free_bytes()
        if free < needed:
            raise self._disk_full(sha, needed, free)

    def _disk_full(self, sha: str, total_bytes: int, free: int | None = None) -> StoreFull:
        if free is None:
            try:
                free = self.free_bytes()
            except OSError:
                free = 0
        return StoreFull(f"the disk of board {self.board_id} is full ({free} bytes free under {self.root}, model "
                         f"{short(sha)} needs {total_bytes}); free disk space or delete models, then push again", sha)

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


class PushSession:
    """One model being received: bytes go to a temp file and are hashed as they arrive.

    Nothing is visible until ``commit`` checked size and sha256. As a context manager it
    aborts on an exception and when left without ``commit`` (a cut stream).
    """

    def __init__(self, store: ModelStore, sha256: str, total_bytes: int, fd: int, temp_path: str,
                 disk_budget: int | None = None) -> None:
        self.store = store
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
            _write_all(self._fd, chunk)
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
            _write_all(self._fd, self._held)
            _fsync(self._fd)
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
            _fsync(self._fd)
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
