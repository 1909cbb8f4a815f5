"""The model store's directory as an index, and the room in it.

Why it looks the way it does:

* Files may also arrive out of band (the client's SFTP push writes ``<sha>.bin`` directly),
  so presence is always read from the directory, not from an in-memory list; the index
  only caches what the last look at the directory saw.
* The store has a size cap: least recently used models are evicted to make room. The last
  use is persisted as the file's mtime, so the order survives a restart; models pinned by a
  run that is loading them are never evicted.
* Several gRPC threads use one store at once: the index is guarded by one lock (the
  ``_locked`` methods expect it held), and slow work happens outside it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
import threading
import time
from pathlib import Path

from qverify.agent.store_errors import StoreFull, short

# The store's logger: these records are the store's, whichever module holds the code.
log = logging.getLogger("qverify.agent.store")

_BIN_RE = re.compile(r"([0-9a-f]{64})\.bin")
# tempfile.mkstemp's random part is made of [a-z0-9_].
_PART_RE = re.compile(r"\.[0-9a-f]{64}\.[A-Za-z0-9_]+\.part")


@dataclasses.dataclass
class _Entry:
    size: int
    mtime_ns: int  # = last use
    ino: int
    verified: tuple[int, int, int] | None = None  # (ino, size, mtime_ns) when the hash was checked

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.ino, self.size, self.mtime_ns)



class StoreDirectory:
    """The ``<sha>.bin`` files under ``root``: their index, pins, LRU stamps and eviction within ``capacity_bytes``.

    The base of ``ModelStore``, which adds the public calls and validates every id first.
    """

    def __init__(self, root: Path, capacity_bytes: int, board_id: str) -> None:
        self.root = root
        self.capacity_bytes = capacity_bytes
        self.board_id = board_id
        self._lock = threading.RLock()
        self._index: dict[str, _Entry] = {}
        self._pins: dict[str, int] = {}
        self._meta: dict[str, tuple[str, str]] = {}
        self._clock_ns = 0

    def free_bytes(self) -> int:
        """Free space of the file system holding the store; ``ModelStore`` measures it."""
        raise NotImplementedError

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
