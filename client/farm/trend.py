"""Trend sparklines from the farm history, for the farm run page and ``qverify farm report --html``.

Inline SVG only (the pages are self-contained). A run without a value breaks the line and is
marked, never bridged: an offline night must not look like a measured one.
"""
from __future__ import annotations

import math
from html import escape as _E
from typing import Any, Iterable

from qverify.client.farm.outcomes import CONSISTENT, INCONSISTENT, INFRA

__all__ = ["DOT", "trend_section", "history_page"]

DOT = {CONSISTENT: "#1f4e99", INCONSISTENT: "#c62828", INFRA: "#b35c00"}
_DOT = DOT


# The page style and table cells of both HTML pages (the farm run's and the history's); the run's
# report imports them from here, so neither module imports the other.
PAGE_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:90em;padding:0 1em;color:#222}
.badge{display:inline-block;padding:.1em .6em;border-radius:.3em;color:#fff;font-weight:700;font-size:.7em;vertical-align:middle}
.v0{background:#1a7f37}.v1{background:#c62828}.v2,.v3{background:#b35c00}
table{border-collapse:collapse;margin:.4em 0 1em}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}
td.consistent{background:#d4f4dc}td.inconsistent{background:#f9c5c5}td.infra{background:#e6e0d8;color:#7a4a00}
td.empty{background:#fff}td.cell a{color:inherit;display:block}.small{font-size:.85em;color:#555}
tr.offline td{background:#fbefe2}svg.spark{width:180px;height:40px;vertical-align:middle}
"""


def html_row(cells: Iterable[str], cls: str = "") -> str:
    return (f'<tr class="{cls}">' if cls else "<tr>") + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def html_table(head: Iterable[str], rows: list[str]) -> str:
    th = "".join(f"<th>{_E(h)}</th>" for h in head)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


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
    rows = [html_row([_E(b), _E(m), str(len(rs)), _sparkline(rs, "latency_median_ms", "latency median", " ms"),
                  _sparkline(rs, "min_exact_fraction", "min exact fraction")]) for (b, m), rs in series.items()]
    return ('<h2>Trend</h2><p class="small">oldest left, newest right; red: inconsistent run, orange: '
            "infrastructure failure; dashed orange bar: a run without a value, e.g. the board was offline</p>"
            + html_table(["board", "model", "runs", "latency median", "min exact fraction"],
                                                   rows))


def history_page(head: str, pairs: list[list[str]], regressions: list[list[str]],
                 trend: list[dict[str, Any]]) -> str:
    """The page of ``qverify farm report --html``: ``head`` (HTML), then tables of plain-text cells."""
    body = "\n".join([head, "<h2>Pairs</h2>", html_table(
        ["board", "model", "runs", "consistent", "inconsistent", "infra", "last outcome", "last good run",
         "latency median", "regressions", *(["float cosine"] if pairs and len(pairs[0]) > 10 else [])],
        [html_row(map(_E, r)) for r in pairs]) if pairs else "<p>no jobs recorded</p>",
        "<h2>Regressions</h2>" + (html_table(["run started", "board", "model", "kind", "what", "last good run"],
                                         [html_row(map(_E, r)) for r in regressions]) if regressions else "<p>none</p>"),
        trend_section(trend)])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>qverify farm history</title>'
            f"<style>{PAGE_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
