"""One run at a time per NPU core, with a bounded queue of waiting runs."""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator


class QueueFull(Exception):
    """Too many runs are waiting; the message gives the queue length."""


class WaitAborted(Exception):
    """The caller's deadline passed or it cancelled while waiting for a core."""


class CoreScheduler:
    """Hands out NPU cores. ``acquire`` waits at most until the caller's deadline."""

    def __init__(self, cores: int, max_queue: int) -> None:
        self.cores = max(1, cores)
        self.max_queue = max(0, max_queue)
        self._free = list(range(self.cores))
        self._waiting = 0
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        with self._cond:
            return self._waiting

    @contextlib.contextmanager
    def acquire(self, core: int = -1, timeout: float | None = None,
                still_wanted: Callable[[], bool] = lambda: True) -> Iterator[tuple[int, float]]:
        """Yield (core, seconds waited). ``core`` -1 means any."""
        if core >= self.cores:
            raise ValueError(f"core {core} does not exist; this board has {self.cores} NPU core(s) (0..{self.cores - 1})")
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        with self._cond:
            if not self._available(core) and self._waiting >= self.max_queue:
                raise QueueFull(f"the board is busy: {self._waiting} run(s) already queued (--max-queue "
                                f"{self.max_queue}); retry later or raise --max-queue")
            self._waiting += 1
            try:
                while not self._available(core):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise WaitAborted("deadline passed while waiting for an NPU core")
                    if not still_wanted():
                        raise WaitAborted("the client cancelled while waiting for an NPU core")
                    self._cond.wait(timeout=0.05 if remaining is None else min(0.05, remaining))
                chosen = core if core >= 0 else self._free[0]
                self._free.remove(chosen)
            finally:
                self._waiting -= 1
        try:
            yield chosen, time.monotonic() - started
        finally:
            with self._cond:
                self._free.append(chosen)
                self._free.sort()
                self._cond.notify_all()

    def _available(self, core: int) -> bool:
        return core in self._free if core >= 0 else bool(self._free)
