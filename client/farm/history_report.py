"""``qverify farm report``: the history's pairs, trends and regressions of a period, as JSON, a
terminal table or a self-contained HTML page (the history itself: :mod:`.history`)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from qverify.client.farm.history import History, _ms, _short
from qverify.client.farm.outcomes import CONSISTENT, INCONSISTENT, INFRA


def report_json(history: History, since: datetime) -> dict[str, Any]:
    """``qverify farm report --json``: the runs, the pairs' summary and the regressions since ``since``."""
    since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    return {"schema": "qverify.farm-report/1", "since": since.astimezone(timezone.utc).isoformat(),
            "database": str(history.path), "runs": history.runs(since),
            "pairs": list(history.summary(since).values()), "regressions": history.recorded_regressions(since)}


def _latency_trend(first: float | None, last: float | None) -> str:
    if first is None or last is None:
        return "-"
    if first == last or first <= 0:
        return f"{_ms(last)} ms"
    return f"{_ms(first)} → {_ms(last)} ms ({(last / first - 1) * 100:+.0f} %)"


def _float_trend(p: dict[str, Any]) -> str:
    """Float model vs quant.onnx output cosine: ``0.99712`` or ``0.99712 -> 0.97310``; "—" without a float model."""
    first, last = p.get("float_cosine_first"), p.get("float_cosine_last")
    if last is None:
        return "—"
    return f"{last:.5f}" if first is None or abs(first - last) < 5e-6 else f"{first:.5f} -> {last:.5f}"


def render_report(history: History, since: datetime, console: Any) -> None:
    """``qverify farm report``: one table row per (board, model), then the regressions of the period."""
    from rich.markup import escape
    from rich.table import Table

    data = report_json(history, since)
    runs = data["runs"]
    head = f"farm history since {_short(data['since'])}: {len(runs)} run{'s' * (len(runs) != 1)}"
    if runs:
        head += f", last {runs[-1]['run_id']} at {_short(runs[-1]['started'])}"
    console.print(escape(head))
    if not data["pairs"]:
        console.print(f"no jobs recorded in {escape(str(history.path))} since then")
        return
    colours = {CONSISTENT: "green", INCONSISTENT: "red", INFRA: "yellow"}
    table = Table(show_edge=False)
    floats = any(p.get("float_cosine_last") is not None for p in data["pairs"])
    for name in ("board", "model", "runs", "✓", "✗", "infra", "last outcome", "last good run",
                 "latency median", "regressions", *(["float cosine"] if floats else [])):
        table.add_column(name, justify="right" if name in ("runs", "✓", "✗", "infra", "regressions") else "left")
    for p in data["pairs"]:
        last = p["last_outcome"] + (" (skipped)" if p["last_outcome"] == INFRA and p["skipped"] else "")
        colour = colours.get(p["last_outcome"], "white")
        table.add_row(escape(p["board"]), escape(p["model"]), str(p["runs"]), str(p[CONSISTENT]),
                      str(p[INCONSISTENT]), str(p[INFRA]), f"[{colour}]{escape(last)}[/]",
                      _short(p["last_good_started"]) if p["last_good_run"] else "never",
                      _latency_trend(p["latency_first_ms"], p["latency_last_ms"]),
                      f"[red]{p['regressions']}[/]" if p["regressions"] else "0",
                      *([_float_trend(p)] if floats else []))
    console.print(table)
    for reg in data["regressions"]:
        console.print(f"[red]{escape(reg['kind'])}[/] {_short(reg['started'])} {escape(reg['board'])} "
                      f"{escape(reg['model'])}: {escape(reg['message'])}")


def render_report_html(history: History, since: datetime) -> str:
    """``qverify farm report --html F``: the terminal report's tables, the regressions and the trend
    sparklines of every pair, as one self-contained page (the farm run page's style)."""
    from html import escape as e

    from qverify.client.farm.trend import history_page

    data = report_json(history, since)
    runs = data["runs"]
    head = (f"<h1>qverify farm history</h1><p>since {e(_short(data['since']))} · {len(runs)} "
            f"run{'s' * (len(runs) != 1)}" + (f" · last {e(runs[-1]['run_id'])} at {e(_short(runs[-1]['started']))}"
                                              if runs else "") + f" · {e(str(history.path))}</p>")
    rows = [[p["board"], p["model"], str(p["runs"]), str(p[CONSISTENT]), str(p[INCONSISTENT]), str(p[INFRA]),
             p["last_outcome"] + (" (skipped)" if p["last_outcome"] == INFRA and p["skipped"] else ""),
             _short(p["last_good_started"]) if p["last_good_run"] else "never",
             _latency_trend(p["latency_first_ms"], p["latency_last_ms"]), str(p["regressions"]),
             *([_float_trend(p)] if any(q.get("float_cosine_last") is not None for q in data["pairs"]) else [])]
            for p in data["pairs"]]
    regressions = [[_short(g["started"]), g["board"], g["model"], g["kind"], g["message"], g["previous_run"]]
                   for g in data["regressions"]]
    return history_page(head, rows, regressions, history.trend(since=since))
