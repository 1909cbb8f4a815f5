"""``qverify farm run``: every (board, model) pair of an inventory, boards in parallel.

* Each board runs one job at a time; ``jobs`` boards are worked on at once.
* Health first: a board whose agent does not answer (or speaks another protocol major
  version) is reported offline; its pairs are skipped as infrastructure errors, and the
  other boards carry on.
* Infrastructure failures (board unreachable, transfer cut, SSH refused, reservation
  failed) are retried with exponential backoff; an inconsistent result is never retried:
  it is the answer.
* A board named by its labgrid place is reserved through the coordinator for the whole of
  its jobs and released afterwards, also when a job fails or the run is interrupted.
"""
from __future__ import annotations

import contextlib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable, Iterator

from qverify.client.boards import BoardSettings, client_cert
from qverify.client.farm.inventory import BoardEntry, Inventory, ModelEntry
from qverify.client.farm.outcomes import (
    CONSISTENT, INCONSISTENT, INFRA, BoardStatus, FarmResult, JobResult, Latency,
)

Listener = Callable[[str, str, str], None]  # (event, board, detail): "state" / "done"

_INFRA_ERRORS: tuple[type[BaseException], ...] = ()


def _infra_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the lab, not the board's arithmetic, is at fault."""
    global _INFRA_ERRORS
    if not _INFRA_ERRORS:
        from qverify.client.agent_client import AgentError
        from qverify.client.sides import SideError
        from qverify.client.ssh import SshError

        errors: list[type[BaseException]] = [AgentError, SshError, SideError, OSError]
        try:
            from qverify.client.farm.labgrid_places import LabgridError

            errors.append(LabgridError)
        except ImportError:  # pragma: no cover - the module ships with qverify
            pass
        _INFRA_ERRORS = tuple(errors)
    return _INFRA_ERRORS


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def board_settings(board: BoardEntry, ssh_user: str | None, ssh_port: int | None, timeout: float) -> BoardSettings:
    """How ``verify`` reaches the board: the SSH user and port are those the entry or its labgrid
    place gives, the timeout the job's."""
    from qverify.client.ssh import SshOptions

    return BoardSettings(port=board.agent_port, token=board.token(), tls_ca=board.tls_ca, tls_cert=board.tls_cert,
                         tls_key=board.tls_key, transport=board.transport,
                         ssh=SshOptions(user=ssh_user, key=board.ssh_key, port=ssh_port, known_hosts=board.known_hosts,
                                        connect_timeout=board.connect_timeout_s),
                         connect_timeout=board.connect_timeout_s, timeout=timeout)


def agent_client(board: BoardEntry, host: str, timeout: float):
    """A client of the board's agent, at the HostName ~/.ssh/config gives an alias (as verify does)."""
    from qverify.client.agent_client import BoardClient
    from qverify.client.ssh import SshOptions, agent_host

    address = agent_host(host, SshOptions(key=board.ssh_key, known_hosts=board.known_hosts))
    return BoardClient(f"{address}:{board.agent_port}", token=board.token(), tls_ca=board.tls_ca,
                       client_cert=client_cert(board.tls_cert, board.tls_key),
                       connect_timeout=board.connect_timeout_s, timeout=timeout)


@contextlib.contextmanager
def board_address(board: BoardEntry, wait_s: float) -> Iterator[tuple[str, str | None, int | None]]:
    """(host, SSH user, SSH port) of the board; for a labgrid place (its NetworkService), reserved
    for the duration."""
    if board.place is None:
        yield board.host, board.ssh_user, board.ssh_port
        return
    from qverify.client.farm.labgrid_places import reserved_place

    with reserved_place(board.place, board.coordinator, wait_s=wait_s) as target:
        yield target.address, board.ssh_user or target.username, board.ssh_port or target.port


class FarmRun:
    def __init__(self, inventory: Inventory, jobs: int | None = None, listener: Listener | None = None) -> None:
        self.inv = inventory
        self.settings = inventory.settings
        self.jobs = jobs or self.settings.jobs
        self.listen = listener or (lambda event, board, detail: None)
        self.stop = threading.Event()
        self.result = FarmResult(run_id=f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
                                 inventory=str(inventory.path), started=now_iso())
        self._lock = threading.Lock()
        from qverify.client.sides import HostCache

        self.host_cache = HostCache()  # onnxruntime and the simulator run once per model, not once per board

    def run(self) -> FarmResult:
        by_board: dict[str, list[ModelEntry]] = {}
        for board, model in self.inv.pairs():
            by_board.setdefault(board.name, []).append(model)
        boards = [b for b in self.inv.boards if b.name in by_board]
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.jobs, len(boards))), thread_name_prefix="qverify-farm")
        try:
            futures = [pool.submit(self._board_task, board, by_board[board.name]) for board in boards]
            for future in futures:
                future.result()
        except BaseException:  # Ctrl-C: no new jobs; running ones finish, places are released
            self.stop.set()
            for future in futures:
                future.cancel()
            raise
        finally:
            pool.shutdown(wait=True)
            self.result.finished = now_iso()
        order = {(b.name, m.name): i for i, (b, m) in enumerate(self.inv.pairs())}
        self.result.jobs.sort(key=lambda j: order.get((j.board, j.model), 0))
        order_b = {b.name: i for i, b in enumerate(self.inv.boards)}
        self.result.boards.sort(key=lambda s: order_b.get(s.name, 0))
        return self.result

    # ------------------------------------------------------------------ one board
    def _board_task(self, board: BoardEntry, models: list[ModelEntry]) -> None:
        status = BoardStatus(board.name, place=board.place or "")
        try:
            self.listen("state", board.name, "reserving" if board.place else "health check")
            with board_address(board, self.settings.place_wait_s) as (host, user, ssh_port):
                status.address = f"{host}:{board.agent_port}"
                error, attempts = self._health(board, host, status)
                if error:
                    self._offline(board, models, status, error, attempts)
                    return
                for model in models:
                    if self.stop.is_set():
                        self._record(JobResult(board.name, model.name, INFRA, "run interrupted before this job",
                                               attempts=0, skipped=True))
                        continue
                    self.listen("state", board.name, f"running {model.name}")
                    self._record(self._job(board, host, user, ssh_port, model))
        except _infra_errors() as exc:  # the reservation itself failed
            self._offline(board, models, status, f"{type(exc).__name__}: {exc}", 1)
        finally:
            with self._lock:
                self.result.boards.append(status)
            self.listen("state", board.name, "done" if status.online else "offline")

    def _offline(self, board: BoardEntry, models: list[ModelEntry], status: BoardStatus, error: str,
                 attempts: int = 0) -> None:
        status.online, status.error = False, error
        for model in models:  # attempts: the health checks (or reservations) tried for this board
            self._record(JobResult(board.name, model.name, INFRA, f"board offline: {error}", attempts=attempts,
                                   skipped=True))

    def _record(self, job: JobResult) -> None:
        with self._lock:
            self.result.jobs.append(job)
        self.listen("done", job.board, f"{job.model}: {job.outcome}")

    def _retrying(self, what: Callable[[], object]) -> tuple[object | None, BaseException | None, int]:
        """Call ``what``, retrying infrastructure failures with exponential backoff."""
        delay = self.settings.backoff_s
        attempts = 0
        for attempt in range(self.settings.retries + 1):
            attempts += 1
            try:
                return what(), None, attempts
            except _infra_errors() as exc:
                error: BaseException = exc
                if attempt == self.settings.retries or self.stop.is_set() or _permanent(exc):
                    break
                self.stop.wait(delay)
                delay *= 2
        return None, error, attempts

    def _health(self, board: BoardEntry, host: str, status: BoardStatus) -> tuple[str, int]:
        """('', attempts) when the agent answers (health and protocol handshake); else why it is offline."""
        def check():
            with agent_client(board, host, timeout=30) as client:
                return client.info()

        info, error, attempts = self._retrying(check)
        if error is not None:
            return f"{error} (after {attempts} attempt{'s' if attempts != 1 else ''})", attempts
        status.versions = {"agent": info.agent_version, "protocol": info.protocol_version, "backend": info.backend,
                           "runtime": info.runtime_version, "driver": info.driver_version,
                           "firmware": info.firmware_version, "board_id": info.board_id}
        return "", attempts

    # ------------------------------------------------------------------ one pair
    def _job(self, board: BoardEntry, host: str, user: str | None, ssh_port: int | None,
             model: ModelEntry) -> JobResult:
        import qverify
        from qverify.client.results import MISMATCHED, Tolerances

        start = time.perf_counter()
        timeout = model.timeout_s or self.settings.timeout_s
        files = [model.onnx, model.bin] if model.onnx else [model.bin]
        if model.float_model is not None:  # the golden reference: quantization loss in the history
            files.insert(0, model.float_model)
        options = dict(**board_settings(board, user, ssh_port, timeout).as_kwargs(),
                       inputs=model.input_files(), seed=model.seed, dump_all=model.dump_all, ort_opt=model.ort_opt,
                       tolerances=Tolerances(digits=model.digits, max_lsb=model.max_lsb, min_cosine=model.min_cosine,
                                             min_layer_cosine=model.min_layer_cosine),
                       host_cache=self.host_cache, min_float_cosine=model.min_float_cosine,
                       distributions=model.distributions)
        result, error, attempts = self._retrying(lambda: qverify.verify(files, host, **options))
        # A board that stops answering in the middle of a run may have crashed (its fault) or
        # lost the network (the lab's): run again; dying every time is the board's answer.
        died = False
        while error is None and _died_mid_run(result) and attempts <= self.settings.retries and not self.stop.is_set():
            died = True
            self.stop.wait(self.settings.backoff_s)
            result, error, more = self._retrying(lambda: qverify.verify(files, host, **options))
            attempts += more
        job = JobResult(board.name, model.name, INFRA, attempts=attempts)
        if error is not None:
            since = "the board stopped answering during a run and has not answered since: " if died else ""
            job.message = f"{since}{type(error).__name__}: {error}"
        elif any(p.status == MISMATCHED for p in result.pairs):
            job.message = "; ".join(p.verdict_line() for p in result.pairs)  # the inventory pairs wrong files
        else:
            self._fill(job, result)
            job.latency = self._latency(board, host, model, job)
        job.seconds = time.perf_counter() - start
        return job

    @staticmethod
    def _fill(job: JobResult, result) -> None:
        job.outcome = CONSISTENT if result.passed else INCONSISTENT
        job.message = "; ".join(p.verdict_line() for p in result.pairs + [q for q in result.plain_pairs
                                                                            if not q.passed])
        if result.board_runs_line():  # the board against itself (-r, --repeat): why a board failed
            job.message += f"; {result.board_runs_line()}"
        if result.latency_failure:
            job.message += f"; {result.latency_failure}"
        ref = result.float_reference
        if ref is not None:  # quantization loss: a warning in the message, the cosine in the history
            job.message += f"; {ref.verdict_line()}"
            job.float_cosine = ref.output_cosine if not ref.message else None
        tensors = [t for p in result.pairs for t in p.outputs]
        if tensors:
            job.min_exact_fraction = min(t.exact_fraction for t in tensors)
            job.min_cosine = min(t.cosine for t in tensors)
            job.max_lsb = max(t.max_lsb for t in tensors)
        fd = result.first_divergent
        if fd is not None:
            job.first_divergent, job.first_divergent_tensor = fd.producer or fd.name, fd.name
        for side in result.sides:
            job.model_sha256[side.kind if side.kind != "board" else "bin"] = side.sha256
            if side.kind == "board":
                detail = side.detail
                job.versions = {name: str(detail.get(key, "")) for name, key in (
                    ("agent", "agent_version"), ("protocol", "protocol_version"), ("backend", "backend"),
                    ("runtime", "runtime_version"), ("driver", "driver_version"), ("firmware", "firmware_version"),
                    ("target", "target"), ("board_id", "board_id"))}
        job.versions["qverify"] = result.qverify_version
        job.report = result.to_dict()

    def _latency(self, board: BoardEntry, host: str, model: ModelEntry, job: JobResult) -> Latency | None:
        """Board latency over ``perf_frames`` frames: medians over frames are what regressions compare."""
        sha = job.model_sha256.get("bin")
        if model.perf_frames <= 0 or not sha or job.outcome == INFRA:
            return None
        def perf():
            with agent_client(board, host, timeout=model.timeout_s or self.settings.timeout_s) as client:
                return client.perf(sha, frames=model.perf_frames, threads=1, warmup=2)

        reply, error, _ = self._retrying(perf)
        if error is not None:
            job.message += f"; latency not measured ({error})"
            return None
        d = reply.latency
        return Latency(reply.frames, d.min_us / 1e3, d.median_us / 1e3, d.p99_us / 1e3, d.max_us / 1e3,
                       d.mean_us / 1e3)


def _died_mid_run(result) -> bool:
    from qverify.client.verify import DIED_MID_RUN

    return any(p.message.startswith(DIED_MID_RUN) for p in result.pairs)


def _permanent(exc: BaseException) -> bool:
    """Failures a retry cannot fix: refused credentials, a changed host key, another protocol."""
    name = type(exc).__name__
    return name in ("AuthenticationError", "ProtocolMismatch", "HostKeyChanged", "SshAuthFailed", "BadRequest")


def run_farm(inventory: Inventory, jobs: int | None = None, listener: Listener | None = None) -> FarmResult:
    """Run every pair of ``inventory``; see the module docstring."""
    return FarmRun(inventory, jobs, listener).run()
