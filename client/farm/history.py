"""The farm's history: every run of ``qverify farm run`` in one SQLite file, and what got worse.

One row per run, one per job ((board, model) pair) and one per board status; the schema is
versioned with ``PRAGMA user_version``. The file is in WAL mode and every write is one
``BEGIN IMMEDIATE`` transaction with a busy timeout, so two processes (two farms, or a run
and a report) can share it. Default place: :func:`default_db_path`.

Regressions (:meth:`History.regressions`) compare each job of a run with the **last good
run** of the same (board, model) pair: the latest earlier run (by start time, this run
excluded) where the pair was ``consistent`` and not skipped. An infrastructure failure in
between never becomes the baseline, so good (10 ms) -> infra -> 30 ms is still caught.

* Jobs that were skipped, or whose outcome is ``infra``, never produce a regression: a
  board that is offline is the lab's fault, not the board's or the compiler's.
* A pair with no good run before it produces none: there is nothing to compare with.
* ``newly_inconsistent``: the job is inconsistent and the pair's previous run that was
  neither skipped nor infra was consistent. A pair that stays inconsistent night after
  night is flagged on the first night only (its outcome says the rest).
* ``agreement_dropped`` (consistent jobs; an inconsistent one is covered above): the worst
  tensor's exact fraction fell by more than ``agreement_drop`` (absolute, default 0.001 =
  0.1 % of the elements), or the worst cosine fell noticeably: its distance to 1 more than
  doubled *and* it fell by more than ``agreement_drop / 10``. Inputs are seeded, so these
  figures are reproducible and any real drop is a change of board, firmware or compiler.
* ``latency_up`` (consistent or inconsistent jobs): medians over the Perf frames are
  compared, and the job is flagged only when ``median > last_good.median * (1 +
  latency_pct / 100)`` *and* the increase is larger than the last good run's own spread
  (its p99 - median), so jitter within what the board already showed does not cry wolf.

Each :class:`Regression` names the run compared against (``previous_run``) and carries a
one-line message with the figures. :meth:`History.record` stores ``result.regressions``
as they are, so call :meth:`History.regressions` first (recording the same run again
replaces it). ``qverify farm report`` (:mod:`qverify.client.farm.history_report`) shows
the stored ones.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from qverify.client.farm.outcomes import CONSISTENT, INCONSISTENT, INFRA, FarmResult, Regression

SCHEMA_VERSION = 2  # 2: jobs.float_cosine (the float model vs quant.onnx)
BUSY_TIMEOUT_S = 60.0
_LATENCY = ("frames", "median_ms", "p99_ms", "min_ms", "max_ms", "mean_ms")
_JOB_COLUMNS = ("run_id", "board", "model", "outcome", "skipped", "message", "attempts", "seconds",
                "min_exact_fraction", "min_cosine", "max_lsb", "first_divergent", "first_divergent_tensor",
                *(f"latency_{k}" for k in _LATENCY), "versions", "model_sha256", "float_cosine")
_SCHEMA = [
    """CREATE TABLE runs (run_id TEXT PRIMARY KEY, inventory TEXT NOT NULL, started TEXT NOT NULL,
       started_ts REAL NOT NULL, finished TEXT NOT NULL, qverify_version TEXT NOT NULL, exit_code INTEGER NOT NULL)""",
    "CREATE INDEX runs_started ON runs(started_ts)",
    """CREATE TABLE jobs (run_id TEXT NOT NULL, board TEXT NOT NULL, model TEXT NOT NULL, outcome TEXT NOT NULL,
       skipped INTEGER NOT NULL, message TEXT NOT NULL, attempts INTEGER NOT NULL, seconds REAL NOT NULL,
       min_exact_fraction REAL, min_cosine REAL, max_lsb INTEGER, first_divergent TEXT NOT NULL,
       first_divergent_tensor TEXT NOT NULL, latency_frames INTEGER, latency_median_ms REAL, latency_p99_ms REAL,
       latency_min_ms REAL, latency_max_ms REAL, latency_mean_ms REAL, versions TEXT NOT NULL,
       model_sha256 TEXT NOT NULL, float_cosine REAL)""",
    "CREATE INDEX jobs_pair ON jobs(board, model)",
    "CREATE INDEX jobs_run ON jobs(run_id)",
    """CREATE TABLE boards (run_id TEXT NOT NULL, name TEXT NOT NULL, address TEXT NOT NULL, place TEXT NOT NULL,
       online INTEGER NOT NULL, error TEXT NOT NULL, versions TEXT NOT NULL)""",
    """CREATE TABLE regressions (run_id TEXT NOT NULL, board TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL,
       message TEXT NOT NULL, previous_run TEXT NOT NULL)""",
]


def default_db_path() -> Path:
    """``history.sqlite3`` in the user's data folder for qverify (platformdirs: ``$XDG_DATA_HOME/qverify``
    or ``~/.local/share/qverify`` on Linux, ``~/Library/Application Support/qverify`` on macOS,
    ``%LOCALAPPDATA%\\qverify`` on Windows)."""
    import platformdirs  # host side only; imported here so that importing this module stays cheap

    return platformdirs.user_data_path("qverify", appauthor=False) / "history.sqlite3"


def _parse_iso(text: str) -> datetime:
    """An ISO 8601 date or date/time (``Z`` allowed) as an aware UTC datetime; naive means UTC."""
    t = text.strip()
    if t[-1:] in ("Z", "z"):
        t = t[:-1] + "+00:00"
    value = datetime.fromisoformat(t)
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _ts(value: datetime | None) -> float:
    if value is None:
        return float("-inf")
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def _short(started: str) -> str:
    """``2026-11-21T02:00Z`` for messages and tables."""
    try:
        return _parse_iso(started).strftime("%Y-%m-%dT%H:%MZ")
    except ValueError:
        return started


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhm])")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w`` before ``now`` (default: now), or an ISO date/time, as aware UTC."""
    t = (text or "").strip()
    match = _DURATION.fullmatch(t.lower())
    if match:
        now = now or datetime.now(timezone.utc)
        now = now if now.tzinfo else now.replace(tzinfo=timezone.utc)
        return now - timedelta(**{_UNITS[match[2]]: float(match[1])})
    if t:
        try:
            return _parse_iso(t)
        except ValueError:
            pass
    raise ValueError(f"--since {text!r}: expected a duration (7d, 12h, 30m, 2w) "
                     f"or an ISO date/time (2026-11-21, 2026-11-21T02:00Z)")


def _enable_wal(db: sqlite3.Connection) -> None:
    """Switch to WAL. While another process creates the same file, SQLite can refuse the switch
    as "locked" without calling its busy handler, so it is retried here, for up to BUSY_TIMEOUT_S."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class History:
    """The history file at ``path`` (created with its folders and schema). A context manager."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _enable_wal(self._db)
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: history schema version {version} is newer than this qverify "
                                   f"understands ({SCHEMA_VERSION}); upgrade qverify")
            if version == 0:
                for statement in _SCHEMA:
                    self._db.execute(statement)
            elif version == 1:  # a history from before float models: its jobs have no float cosine
                self._db.execute("ALTER TABLE jobs ADD COLUMN float_cosine REAL")
            if version < SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        self._db.execute(begin)
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------------
    def record(self, result: FarmResult) -> None:
        """Store the run, its jobs, board statuses and ``result.regressions`` (replacing an earlier copy)."""
        try:
            started_ts = _parse_iso(result.started).timestamp()
        except (ValueError, IndexError):
            raise ValueError(f"run {result.run_id}: started {result.started!r} is not an ISO 8601 time") from None
        jobs = []
        for j in result.jobs:
            lat = [getattr(j.latency, k) if j.latency else None for k in _LATENCY]
            jobs.append((result.run_id, j.board, j.model, j.outcome, int(j.skipped), j.message, j.attempts,
                         j.seconds, j.min_exact_fraction, j.min_cosine, j.max_lsb, j.first_divergent,
                         j.first_divergent_tensor, *lat, json.dumps(j.versions, sort_keys=True),
                         json.dumps(j.model_sha256, sort_keys=True), j.float_cosine))
        with self._transaction() as db:
            for table in ("jobs", "boards", "regressions", "runs"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (result.run_id,))
            db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (result.run_id, result.inventory, result.started, started_ts, result.finished,
                        result.qverify_version, result.exit_code))
            db.executemany(f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) VALUES "
                           f"({', '.join('?' * len(_JOB_COLUMNS))})", jobs)
            db.executemany("INSERT INTO boards VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(result.run_id, b.name, b.address, b.place, int(b.online), b.error,
                             json.dumps(b.versions, sort_keys=True)) for b in result.boards])
            db.executemany("INSERT INTO regressions VALUES (?, ?, ?, ?, ?, ?)",
                           [(result.run_id, r.board, r.model, r.kind, r.message, r.previous_run)
                            for r in result.regressions])

    # -- regressions -----------------------------------------------------------------------
    def _previous(self, board: str, model: str, before_ts: float, run_id: str, good: bool) -> sqlite3.Row | None:
        """The pair's latest run before ``before_ts`` (not ``run_id``): good only, or any not skipped nor infra."""
        outcome = "j.outcome = 'consistent'" if good else "j.outcome != 'infra'"
        return self._db.execute(
            f"SELECT j.*, r.started FROM jobs j JOIN runs r ON r.run_id = j.run_id "
            f"WHERE j.board = ? AND j.model = ? AND r.started_ts < ? AND r.run_id != ? AND j.skipped = 0 "
            f"AND {outcome} ORDER BY r.started_ts DESC, j.rowid DESC LIMIT 1",
            (board, model, before_ts, run_id)).fetchone()

    def regressions(self, result: FarmResult, latency_pct: float = 10.0,
                    agreement_drop: float = 0.001) -> list[Regression]:
        """What got worse in ``result`` than in each pair's last good run before it (rules: module docstring)."""
        now_ts = _parse_iso(result.started).timestamp()
        found: list[Regression] = []
        for job in result.jobs:
            if job.skipped or job.outcome == INFRA:
                continue
            good = self._previous(job.board, job.model, now_ts, result.run_id, good=True)
            if good is None:
                continue
            since = f"last good run {_short(good['started'])}"

            def flag(kind: str, message: str) -> None:
                found.append(Regression(job.board, job.model, kind, message, previous_run=good["run_id"]))

            if job.outcome == INCONSISTENT:
                prev = self._previous(job.board, job.model, now_ts, result.run_id, good=False)
                if prev is not None and prev["outcome"] == CONSISTENT:
                    where = f", first divergent {job.first_divergent}" if job.first_divergent else ""
                    flag("newly_inconsistent", f"consistent -> inconsistent{where} ({since})")
            else:
                drops = []
                old, new = good["min_exact_fraction"], job.min_exact_fraction
                if old is not None and new is not None and old - new > agreement_drop:
                    drops.append(f"min exact fraction {old:.4f} -> {new:.4f} ({new - old:+.4f})")
                old, new = good["min_cosine"], job.min_cosine
                if (old is not None and new is not None and (1 - new) > 2 * (1 - old)
                        and old - new > agreement_drop / 10):
                    drops.append(f"min cosine {old:.5f} -> {new:.5f}")
                old, new = good["float_cosine"], job.float_cosine
                if old is not None and new is not None and old - new > 0.01:  # the model was re-quantized worse
                    flag("quantization_loss", f"float vs quant.onnx output cosine {old:.5f} -> {new:.5f} ({since})")
                if drops:
                    flag("agreement_dropped", f"{', '.join(drops)} ({since})")
            lat, old_median = job.latency, good["latency_median_ms"]
            if lat is not None and lat.frames > 0 and good["latency_frames"] and old_median and old_median > 0:
                spread = max((good["latency_p99_ms"] or old_median) - old_median, 0.0)
                if lat.median_ms > old_median * (1 + latency_pct / 100) and lat.median_ms - old_median > spread:
                    up = (lat.median_ms / old_median - 1) * 100
                    flag("latency_up", f"latency median {_ms(old_median)} ms -> {_ms(lat.median_ms)} ms "
                                       f"(+{up:.0f} %, {since})")
        return found

    # -- reading ---------------------------------------------------------------------------
    def trend(self, board: str | None = None, model: str | None = None,
              since: datetime | None = None) -> list[dict[str, Any]]:
        """One row per job, by run start time then board and model (for trend plots)."""
        rows = self._db.execute(
            "SELECT r.run_id, r.started, j.board, j.model, j.outcome, j.skipped, j.min_exact_fraction, j.min_cosine,"
            " j.max_lsb, j.latency_median_ms, j.latency_p99_ms, j.float_cosine FROM jobs j JOIN runs r ON r.run_id = j.run_id"
            " WHERE r.started_ts >= ? AND (? IS NULL OR j.board = ?) AND (? IS NULL OR j.model = ?)"
            " ORDER BY r.started_ts, j.board, j.model, j.rowid",
            (_ts(since), board, board, model, model)).fetchall()
        return [{**dict(r), "skipped": bool(r["skipped"])} for r in rows]

    def runs(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """The runs started at or after ``since``, oldest first, with their job counts."""
        rows = self._db.execute(
            "SELECT r.run_id, r.inventory, r.started, r.finished, r.qverify_version, r.exit_code,"
            " count(j.run_id) AS jobs, coalesce(sum(j.outcome = 'consistent'), 0) AS consistent,"
            " coalesce(sum(j.outcome = 'inconsistent'), 0) AS inconsistent,"
            " coalesce(sum(j.outcome = 'infra'), 0) AS infra, coalesce(sum(j.skipped), 0) AS skipped"
            " FROM runs r LEFT JOIN jobs j ON j.run_id = r.run_id WHERE r.started_ts >= ?"
            " GROUP BY r.run_id ORDER BY r.started_ts, r.run_id", (_ts(since),)).fetchall()
        return [dict(r) for r in rows]

    def recorded_regressions(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """The regressions stored with the runs started at or after ``since``, oldest first."""
        rows = self._db.execute(
            "SELECT g.run_id, r.started, g.board, g.model, g.kind, g.message, g.previous_run FROM regressions g"
            " JOIN runs r ON r.run_id = g.run_id WHERE r.started_ts >= ? ORDER BY r.started_ts, g.rowid",
            (_ts(since),)).fetchall()
        return [dict(r) for r in rows]

    def summary(self, since: datetime) -> dict[tuple[str, str], dict[str, Any]]:
        """Per (board, model) over the runs started at or after ``since``, sorted by board and model."""
        with self._transaction("BEGIN"):
            rows, regressions = self.trend(since=since), self.recorded_regressions(since)
            pairs: dict[tuple[str, str], dict[str, Any]] = {}
            for row in rows:
                key = (row["board"], row["model"])
                p = pairs.get(key)
                if p is None:
                    p = pairs[key] = {"board": key[0], "model": key[1], "runs": 0, CONSISTENT: 0, INCONSISTENT: 0,
                                      INFRA: 0, "skipped": 0, "last_outcome": "", "last_run": "",
                                      "last_good_run": "", "last_good_started": "", "latency_first_ms": None,
                                      "latency_last_ms": None, "regressions": 0,
                                      "float_cosine_first": None, "float_cosine_last": None}
                    good = self._previous(*key, float("inf"), "", good=True)
                    if good is not None:
                        p["last_good_run"], p["last_good_started"] = good["run_id"], good["started"]
                p["runs"] += 1
                p[row["outcome"]] = p.get(row["outcome"], 0) + 1
                p["skipped"] += row["skipped"]
                p["last_outcome"], p["last_run"] = row["outcome"], row["run_id"]
                median = row["latency_median_ms"]
                if median is not None and not row["skipped"] and row["outcome"] != INFRA:
                    if p["latency_first_ms"] is None:
                        p["latency_first_ms"] = median
                    p["latency_last_ms"] = median
                if row["float_cosine"] is not None:  # quantization loss, when the entry has a float model
                    if p["float_cosine_first"] is None:
                        p["float_cosine_first"] = row["float_cosine"]
                    p["float_cosine_last"] = row["float_cosine"]
            for reg in regressions:
                if (reg["board"], reg["model"]) in pairs:
                    pairs[reg["board"], reg["model"]]["regressions"] += 1
        return dict(sorted(pairs.items()))
