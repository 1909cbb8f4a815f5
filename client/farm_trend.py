"""Trend sparklines from the farm history, for the farm run page and ``qverify farm report --html``.

Inline SVG only (the pages are self-contained). A run without a value breaks the line and is
marked, never bridged: an offline night must not look like a measured one.
"""
from __future__ import annotations

import math
from html import escape as _E
from typing import Any

from qverify.client.farm_model import CONSISTENT, INCONSISTENT, INFRA

__all__ = ["DOT", "trend_section", "history_page"]

DOT = {CONSISTENT: "#1f4e99", INCONSISTENT: "#c62828", INFRA: "#b35c00"}
_DOT = DOT


def _table(head: Any, rows: list[str]) -> str:
    from qverify.client.farm_reports import _table as table

    return table(head, rows)


def _row(cells: Any, cls: str = "") -> str:
    from qverify.client.farm_reports import _row as row

    return row(cells, cls)


def _value(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _sparkline(rows: list[dict[str, Any]], key: str, label: str, unit: str = "") -> str:
    """One point per run, oldest left. A run without a value (board offline, infrastructure
    failure) breaks the line and is marked by a dashed orange bar: a line drawn across it
    would read as if the board had been measured that night."""
    values = [_value(row, key) for row in rows]
    points = [(i, v, row) for i, (v, row) in enumerate(zip(values, rows)) if v is not None]
    if not points:
        return '<span class="small">no data</span>'
    w, h, pad = 180, 40, 4
    lo, hi = min(v for _, v, _ in points), max(v for _, v, _ in points)
    span = (hi - lo) or 1.0

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + i * (w - 2 * pad) / max(len(rows) - 1, 1), h - pad - (v - lo) / span * (h - 2 * pad)

    out = [f'<svg class="spark" viewBox="0 0 {w} {h}" role="img" aria-label="{_E(label)}">']
    segment: list[str] = []
    for i, v in enumerate([*values, None]):  # the None closes the last segment
        if v is not None:
            segment.append("%.1f,%.1f" % xy(i, v))
            continue
        if len(segment) > 1:
            out.append(f'<polyline fill="none" stroke="#8aa4c8" stroke-width="1.2" points="{" ".join(segment)}"/>')
        segment = []
        if i < len(rows):
            row = rows[i]
            x = xy(i, lo)[0]
            why = "board offline" if row.get("skipped") else str(row.get("outcome") or "not measured")
            out.append(f'<line class="gap" x1="{x:.1f}" x2="{x:.1f}" y1="{pad}" y2="{h - pad}" stroke="{_DOT[INFRA]}" '
                       f'stroke-width="2" stroke-dasharray="3 2"><title>{_E(str(row.get("started", "")) + f": no {label} ({why})")}'
                       "</title></line>")
    for i, v, row in points:
        x, y = xy(i, v)
        tip = f"{row.get('started', '')}: {label} {v:.6g}{unit} ({row.get('outcome', '')})"
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{_DOT.get(row.get("outcome"), "#888")}">'
                   f"<title>{_E(tip)}</title></circle>")
    gaps = len(rows) - len(points)
    note = f' <span class="small gapnote">{gaps} run{"s" if gaps != 1 else ""} without a value</span>' if gaps else ""
    return "".join(out) + f'</svg> <span class="small">{points[-1][1]:.4g}{_E(unit)}</span>{note}'


def trend_section(trend: list[dict[str, Any]] | None) -> str:
    if not trend:
        return ""
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in sorted(trend, key=lambda row: str(row.get("started", ""))):
        series.setdefault((str(row.get("board", "")), str(row.get("model", ""))), []).append(row)
    rows = [_row([_E(b), _E(m), str(len(rs)), _sparkline(rs, "latency_median_ms", "latency median", " ms"),
                  _sparkline(rs, "min_exact_fraction", "min exact fraction")]) for (b, m), rs in series.items()]
    return ('<h2>Trend</h2><p class="small">oldest left, newest right; red: inconsistent run, orange: '
            "infrastructure failure; dashed orange bar: a run without a value, e.g. the board was offline</p>"
            + _table(["board", "model", "runs", "latency median", "min exact fraction"],
                                                   rows))


def history_page(head: str, pairs: list[list[str]], regressions: list[list[str]],
                 trend: list[dict[str, Any]]) -> str:
    """The page of ``qverify farm report --html``: ``head`` (HTML), then tables of plain-text cells."""
    from qverify.client.farm_reports import _CSS, _row, _table

    body = "\n".join([head, "<h2>Pairs</h2>", _table(
        ["board", "model", "runs", "consistent", "inconsistent", "infra", "last outcome", "last good run",
         "latency median", "regressions"], [_row(map(_E, r)) for r in pairs]) if pairs else "<p>no jobs recorded</p>",
        "<h2>Regressions</h2>" + (_table(["run started", "board", "model", "kind", "what", "last good run"],
                                         [_row(map(_E, r)) for r in regressions]) if regressions else "<p>none</p>"),
        trend_section(trend)])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>qverify farm history</title>'
            f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
