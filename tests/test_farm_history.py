"""The farm history: the SQLite file, the regression rules, the report and ``--since``."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone

import pytest
from rich.console import Console

from qverify.client.farm import history as farm_history
from qverify.client.farm.history import History, default_db_path, parse_since
from qverify.client.farm.history_report import render_report, report_json
from qverify.client.farm.outcomes import (CONSISTENT, INCONSISTENT, INFRA, BoardStatus, FarmResult, JobResult, Latency,
                                       Regression)

T0 = datetime(2026, 11, 21, 2, 0, tzinfo=timezone.utc)


def night(n: int) -> str:
    return (T0 + timedelta(days=n)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job(board="b1", model="m1", outcome=CONSISTENT, median=10.0, p99=None, exact=1.0, cosine=1.0, skipped=False,
        **kw) -> JobResult:
    latency = None if median is None else Latency(frames=100, min_ms=median * 0.95, median_ms=median,
                                                  p99_ms=median * 1.02 if p99 is None else p99,
                                                  max_ms=median * 1.1, mean_ms=median)
    return JobResult(board, model, outcome, skipped=skipped, min_exact_fraction=exact, min_cosine=cosine,
                     latency=latency, **kw)


def run(n: int, *jobs: JobResult, run_id: str | None = None) -> FarmResult:
    return FarmResult(run_id=run_id or f"run{n}", inventory="farm.toml", started=night(n),
                      finished=night(n).replace("02:00", "02:30"), jobs=list(jobs),
                      boards=[BoardStatus("b1", address="10.0.0.1:7060", versions={"agent": "1.0"})])


@pytest.fixture
def history(tmp_path):
    with History(tmp_path / "h.sqlite3") as h:
        yield h


def kinds(regs: list[Regression]) -> list[str]:
    return [r.kind for r in regs]


def test_schema_created_in_a_fresh_folder(tmp_path):
    path = tmp_path / "deep" / "er" / "history.sqlite3"
    with History(path):
        pass
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == farm_history.SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "jobs", "boards", "regressions"} <= tables
    db.close()
    with History(path) as again:  # reopening keeps the schema
        assert again.runs() == []


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "h.sqlite3"
    History(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {farm_history.SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        History(path)


def test_record_and_trend_round_trip(history):
    j = job(median=12.5, exact=0.97, cosine=0.9995, max_lsb=3, first_divergent="conv3",
            versions={"agent": "1.0", "firmware": "2.1"}, model_sha256={"bin": "ab" * 32})
    history.record(run(0, j, job("b2", "m1", INFRA, median=None, skipped=True, exact=None, cosine=None)))
    history.record(run(1, job(median=13.0)))
    rows = history.trend()
    assert [(r["run_id"], r["board"]) for r in rows] == [("run0", "b1"), ("run0", "b2"), ("run1", "b1")]
    first = rows[0]
    assert first["started"] == night(0) and first["outcome"] == CONSISTENT and first["skipped"] is False
    assert (first["min_exact_fraction"], first["min_cosine"], first["max_lsb"]) == (0.97, 0.9995, 3)
    assert first["latency_median_ms"] == 12.5
    assert rows[1]["skipped"] is True and rows[1]["latency_median_ms"] is None
    assert [r["run_id"] for r in history.trend(board="b1", since=T0 + timedelta(hours=1))] == ["run1"]
    assert history.trend(model="nope") == []
    db = sqlite3.connect(history.path)
    versions, sha = db.execute("SELECT versions, model_sha256 FROM jobs WHERE run_id = 'run0' AND board = 'b1'").fetchone()
    assert json.loads(versions) == {"agent": "1.0", "firmware": "2.1"} and json.loads(sha) == {"bin": "ab" * 32}
    assert db.execute("SELECT name, address, online FROM boards WHERE run_id = 'run0'").fetchall() == [
        ("b1", "10.0.0.1:7060", 1)]
    db.close()


def test_recording_a_run_again_replaces_it(history):
    history.record(run(0, job()))
    again = run(0, job(), job("b2"))
    again.regressions = [Regression("b1", "m1", "latency_up", "x", "run-1")]
    history.record(again)
    assert len(history.runs()) == 1 and len(history.trend()) == 2
    assert [r["kind"] for r in history.recorded_regressions()] == ["latency_up"]


def test_last_good_run_is_the_baseline_not_the_previous_run(history):
    history.record(run(0, job(median=10.0)))
    history.record(run(1, job(outcome=INFRA, median=None, exact=None, cosine=None)))
    regs = history.regressions(run(2, job(median=30.0)))
    assert kinds(regs) == ["latency_up"]
    assert regs[0].previous_run == "run0"
    assert regs[0].message == "latency median 10.0 ms -> 30.0 ms (+200 %, last good run 2026-11-21T02:00Z)"


def test_last_good_run_skips_an_inconsistent_run_with_fast_latency(history):
    history.record(run(0, job(median=10.0)))
    history.record(run(1, job(outcome=INCONSISTENT, median=50.0)))
    regs = history.regressions(run(2, job(median=30.0)))
    assert kinds(regs) == ["latency_up"] and regs[0].previous_run == "run0"


def test_only_runs_started_before_count(history):
    history.record(run(5, job(median=10.0)))  # recorded earlier, but started later
    assert history.regressions(run(2, job(median=30.0))) == []
    now = run(6, job(median=30.0))
    history.record(now)  # recorded first: the run itself is never its own baseline
    assert kinds(history.regressions(now)) == ["latency_up"]


def test_jitter_within_the_old_spread_is_not_flagged(history):
    history.record(run(0, job(median=10.0, p99=14.0)))
    assert history.regressions(run(1, job(median=13.0))) == []  # +30 %, but within p99 - median = 4 ms
    assert kinds(history.regressions(run(1, job(median=14.5)))) == ["latency_up"]


def test_small_increase_within_the_percentage_is_not_flagged(history):
    history.record(run(0, job(median=10.0, p99=10.0)))  # no spread at all
    assert history.regressions(run(1, job(median=10.9))) == []
    assert kinds(history.regressions(run(1, job(median=11.1)))) == ["latency_up"]
    assert history.regressions(run(1, job(median=11.1)), latency_pct=20) == []


def test_newly_inconsistent_is_flagged_once(history):
    history.record(run(0, job()))
    history.record(run(1, job(outcome=INFRA, median=None)))
    first = run(2, job(outcome=INCONSISTENT, first_divergent="conv3"))
    regs = history.regressions(first)
    assert kinds(regs) == ["newly_inconsistent"] and regs[0].previous_run == "run0"
    assert "first divergent conv3" in regs[0].message and "2026-11-21T02:00Z" in regs[0].message
    history.record(first)
    assert history.regressions(run(3, job(outcome=INCONSISTENT))) == []  # still inconsistent: not new


def test_no_baseline_no_regression(history):
    history.record(run(0, job(outcome=INCONSISTENT)))
    assert history.regressions(run(1, job(outcome=INCONSISTENT, median=100.0))) == []
    assert history.regressions(run(1, job(model="new", median=100.0))) == []


def test_infra_is_never_a_regression(history):
    history.record(run(0, job(median=10.0)))
    infra = job(outcome=INFRA, median=99.0, exact=0.1, cosine=0.5, message="board unreachable")
    assert history.regressions(run(1, infra)) == []


def test_skipped_jobs_are_ignored(history):
    history.record(run(0, job(median=10.0)))
    history.record(run(1, job(median=10.0, skipped=True, outcome=CONSISTENT)))  # never a baseline either
    skipped = job(outcome=INCONSISTENT, median=99.0, exact=0.1, skipped=True)
    assert history.regressions(run(2, skipped)) == []
    assert history.regressions(run(2, job(median=30.0)))[0].previous_run == "run0"


def test_agreement_drop_is_flagged(history):
    history.record(run(0, job(exact=0.990, cosine=0.9998)))
    assert history.regressions(run(1, job(exact=0.9895, cosine=0.9998))) == []  # within 0.001
    regs = history.regressions(run(1, job(exact=0.985, cosine=0.9998)))
    assert kinds(regs) == ["agreement_dropped"]
    assert "min exact fraction 0.9900 -> 0.9850" in regs[0].message and regs[0].previous_run == "run0"
    assert history.regressions(run(1, job(exact=0.985)), agreement_drop=0.01) == []


def test_cosine_drop_is_flagged_when_its_distance_to_one_doubles(history):
    history.record(run(0, job(cosine=0.9996)))
    assert history.regressions(run(1, job(cosine=0.99955))) == []  # distance 4e-4 -> 4.5e-4
    assert history.regressions(run(1, job(cosine=0.99925))) == []  # distance 7.5e-4: not doubled
    regs = history.regressions(run(1, job(cosine=0.9990)))
    assert kinds(regs) == ["agreement_dropped"] and "min cosine 0.99960 -> 0.99900" in regs[0].message


def test_pairs_are_compared_with_their_own_history(history):
    history.record(run(0, job("b1", "m1", median=10.0), job("b2", "m1", median=30.0)))
    regs = history.regressions(run(1, job("b1", "m1", median=10.0), job("b2", "m1", median=30.0)))
    assert regs == []


_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from qverify.client.farm.history import History
    from qverify.client.farm.outcomes import FarmResult, JobResult, Latency
    path, tag, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.005)
    with History(path) as h:
        for i in range(25):
            jobs = [JobResult(f"b{k}", "m", "consistent", latency=Latency(10, 1, 2, 3, 4, 2)) for k in range(5)]
            h.record(FarmResult(f"{tag}-{i}", "farm.toml", f"2026-11-21T02:{i:02d}:00Z", jobs=jobs))
""")


def test_two_processes_recording_concurrently_both_land(tmp_path):
    path, go = tmp_path / "shared" / "h.sqlite3", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, str(go)], stderr=subprocess.PIPE)
             for tag in ("a", "b")]
    time.sleep(0.3)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with History(path) as h:
        assert len(h.runs()) == 50
        assert len(h.trend()) == 250


def test_parse_since_durations():
    now = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since(" 30m ", now) == now - timedelta(minutes=30)
    assert parse_since("2W", now) == now - timedelta(weeks=2)
    assert abs(parse_since("1d") - (datetime.now(timezone.utc) - timedelta(days=1))) < timedelta(seconds=5)


def test_parse_since_iso():
    assert parse_since("2026-11-21") == datetime(2026, 11, 21, tzinfo=timezone.utc)
    assert parse_since("2026-11-21T02:00Z") == T0
    assert parse_since("2026-11-21T03:00+01:00") == T0
    assert parse_since("2026-11-21T02:00:00") == T0  # naive means UTC


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-7d", "yesterday", "2026-13-01", "7 days"])
def test_parse_since_errors(text):
    with pytest.raises(ValueError, match=r"expected a duration \(7d, 12h, 30m, 2w\) or an ISO date/time"):
        parse_since(text)


def _week(history: History) -> None:
    history.record(run(0, job("b1", median=10.0), job("b2", median=5.0)))
    history.record(run(1, job("b1", outcome=INFRA, median=None), job("b2", median=5.0)))
    bad = run(2, job("b1", outcome=INCONSISTENT, median=10.5), job("b2", median=9.0))
    bad.regressions = history.regressions(bad)
    history.record(bad)
    history.record(run(3, job("b1", outcome=INFRA, median=None, skipped=True), job("b2", median=9.0)))


def test_summary_counts(history):
    _week(history)
    s = history.summary(T0 - timedelta(days=1))
    assert list(s) == [("b1", "m1"), ("b2", "m1")]
    b1, b2 = s["b1", "m1"], s["b2", "m1"]
    assert (b1["runs"], b1[CONSISTENT], b1[INCONSISTENT], b1[INFRA], b1["skipped"]) == (4, 1, 1, 2, 1)
    assert b1["last_outcome"] == INFRA and b1["last_run"] == "run3" and b1["last_good_run"] == "run0"
    assert (b1["latency_first_ms"], b1["latency_last_ms"]) == (10.0, 10.5)
    assert b1["regressions"] == 1  # newly_inconsistent
    assert (b2["runs"], b2[CONSISTENT], b2["last_good_run"], b2["regressions"]) == (4, 4, "run3", 1)  # latency_up
    assert (b2["latency_first_ms"], b2["latency_last_ms"]) == (5.0, 9.0)
    later = history.summary(T0 + timedelta(days=1, hours=12))
    assert later["b1", "m1"]["runs"] == 2 and later["b1", "m1"]["last_good_run"] == "run0"  # found before the period
    assert history.summary(T0 + timedelta(days=30)) == {}


def test_runs_listing(history):
    _week(history)
    runs = history.runs(T0 + timedelta(days=2))
    assert [r["run_id"] for r in runs] == ["run2", "run3"]
    assert (runs[0]["exit_code"], runs[0]["consistent"], runs[0]["inconsistent"], runs[0]["jobs"]) == (1, 1, 1, 2)
    assert runs[1]["skipped"] == 1 and runs[1]["inventory"] == "farm.toml"


def test_report_json_structure(history):
    _week(history)
    since = parse_since("2026-11-20")
    data = report_json(history, since)
    assert data["schema"] == "qverify.farm-report/1" and data["since"] == "2026-11-20T00:00:00+00:00"
    assert [r["run_id"] for r in data["runs"]] == ["run0", "run1", "run2", "run3"]
    assert [(p["board"], p["model"]) for p in data["pairs"]] == [("b1", "m1"), ("b2", "m1")]
    assert sorted((r["board"], r["kind"], r["previous_run"]) for r in data["regressions"]) == [
        ("b1", "newly_inconsistent", "run0"), ("b2", "latency_up", "run1")]
    json.dumps(data)  # serialisable as it is


def test_render_report(history):
    _week(history)
    console = Console(record=True, width=200)
    render_report(history, parse_since("2026-11-20"), console)
    text = console.export_text()
    assert "4 runs" in text and "b1" in text and "b2" in text
    assert "5.0 → 9.0 ms (+80 %)" in text
    assert "newly_inconsistent" in text and "latency_up" in text
    empty = Console(record=True, width=200)
    render_report(history, parse_since("2030-01-01"), empty)
    assert "no jobs recorded" in empty.export_text()


def test_default_db_path_is_the_users_data_dir(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_db_path() == platformdirs.user_data_path("qverify", appauthor=False) / "history.sqlite3"
    if sys.platform.startswith("linux"):
        assert default_db_path() == tmp_path / "qverify" / "history.sqlite3"
        monkeypatch.delenv("XDG_DATA_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert default_db_path() == tmp_path / "home" / ".local" / "share" / "qverify" / "history.sqlite3"
