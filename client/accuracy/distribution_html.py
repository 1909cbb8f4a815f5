"""The HTML fragment of per-layer distributions: a table, then per layer a histogram and box plots.

Self-contained (inline SVG, no script, no external asset) and bounded for models with
hundreds of layers: each layer is a collapsed ``<details>``, at most ``MAX_PLOTS`` layers get
plots (flagged layers first), at most ``MAX_CHANNELS`` channels are drawn per box plot and
at most ``MAX_BARS`` bars per histogram. Every name is HTML-escaped.
"""
from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from qverify.client.report_text import name_html

if TYPE_CHECKING:
    from qverify.client.accuracy.distributions import LayerDistribution

MAX_PLOTS = 60  # layers drawn
MAX_CHANNELS = 64  # channels per box plot
MAX_BARS = 64  # bars per histogram
_E = html.escape
_STYLE = """<style>
.dist details{border:1px solid #ddd;margin:.3em 0;padding:.2em .6em}
.dist details.flagged{border-left:4px solid #b58900;background:#fffbea}
.dist summary{cursor:pointer}.dist .plots{display:flex;flex-wrap:wrap;gap:1em}
.dist .plots svg{width:30em;max-width:100%;background:#fff;border:1px solid #eee}
.dist .flag{color:#8a6500}.dist .note{color:#555;font-size:.9em}
</style>"""


def _num(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _pct(fraction: float) -> str:
    from qverify.client.accuracy.distributions import _pct as pct

    return pct(fraction) if fraction else ""


def _histogram_svg(d: LayerDistribution) -> str:
    """Bars over the value range, heights on a log scale (a ReLU's spike at zero would flatten the rest)."""
    counts, edges = d.histogram, d.bin_edges
    if not counts or len(edges) != len(counts) + 1:
        return ""
    group = max(1, math.ceil(len(counts) / MAX_BARS))
    bars = [sum(counts[i:i + group]) for i in range(0, len(counts), group)]
    w, h, left, base = 320, 96, 4, 80
    step = (w - 2 * left) / len(bars)
    top = math.log1p(max(bars)) or 1.0
    path = "".join(f"M{left + i * step:.1f} {base}v{-70 * math.log1p(c) / top:.1f}h{max(step - 0.6, 0.4):.1f}"
                   f"V{base}Z" for i, c in enumerate(bars) if c)
    return (f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="histogram of {_E(d.name)}">'
            f'<path d="{path}" fill="#1f4e99"/><line x1="{left}" x2="{w - left}" y1="{base}" y2="{base}" stroke="#999"/>'
            f'<text x="{left}" y="{h - 3}" font-size="10">{_num(edges[0])}</text>'
            f'<text x="{w - left}" y="{h - 3}" font-size="10" text-anchor="end">{_num(edges[-1])}</text>'
            f'<text x="{w / 2}" y="{h - 3}" font-size="10" text-anchor="middle">{sum(counts)} values, log scale</text>'
            "</svg>")


def _boxplot_svg(d: LayerDistribution) -> str:
    """Per channel: a whisker from min to max, a box from the 25th to the 75th percentile, the median."""
    n = min(len(d.channel_min), MAX_CHANNELS)
    if n == 0:
        return ""
    rows = [(d.channel_min[c], d.channel_p25[c] if c < len(d.channel_p25) else math.nan,
             d.channel_median[c] if c < len(d.channel_median) else math.nan,
             d.channel_p75[c] if c < len(d.channel_p75) else math.nan, d.channel_max[c]) for c in range(n)]
    finite = [v for row in rows for v in row if math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite + [0.0]), max(finite + [0.0])
    hi = hi if hi > lo else lo + 1.0
    w, h, left, right, top, bottom = 320, 110, 34, 4, 6, 92
    step = (w - left - right) / n
    half = max(step * 0.3, 0.3)

    def y(v: float) -> float:
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    whiskers, boxes, medians = [], [], []
    for c, (mn, p25, med, p75, mx) in enumerate(rows):
        x = left + (c + 0.5) * step
        if math.isfinite(mn) and math.isfinite(mx):
            whiskers.append(f"M{x:.1f} {y(mn):.1f}V{y(mx):.1f}")
        if math.isfinite(p25) and math.isfinite(p75):
            boxes.append(f"M{x - half:.1f} {y(p75):.1f}h{2 * half:.1f}V{y(p25):.1f}h{-2 * half:.1f}Z")
        if math.isfinite(med):
            medians.append(f"M{x - half:.1f} {y(med):.1f}h{2 * half:.1f}")
    total = len(d.channel_min)
    shown = f"channels 0–{n - 1} of {total}" if total > n else f"{total} channel{'s' if total != 1 else ''}"
    return (f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="per-channel ranges of {_E(d.name)}">'
            f'<line x1="{left}" x2="{w - right}" y1="{y(0.0):.1f}" y2="{y(0.0):.1f}" stroke="#ddd"/>'
            f'<path d="{"".join(whiskers)}" stroke="#888" fill="none"/>'
            f'<path d="{"".join(boxes)}" fill="#8ab4f8" stroke="#1f4e99" stroke-width=".5"/>'
            f'<path d="{"".join(medians)}" stroke="#c62828" fill="none"/>'
            f'<text x="{left - 3}" y="{top + 8}" font-size="10" text-anchor="end">{_num(hi)}</text>'
            f'<text x="{left - 3}" y="{bottom}" font-size="10" text-anchor="end">{_num(lo)}</text>'
            f'<text x="{(left + w) / 2}" y="{h - 3}" font-size="10" text-anchor="middle">{shown}</text></svg>')


def _table(dists: list[LayerDistribution]) -> str:
    head = ["layer", "kind", "min", "max", "mean", "std", "channels", "channel spread", "saturated", "acc overflow"]
    rows = []
    for d in dists:
        cells = [name_html(d.name), _E(d.kind), _num(d.min), _num(d.max), _num(d.mean), _num(d.std),
                 str(len(d.channel_min)), f"{d.channel_spread:.1f}x" if len(d.channel_min) > 1 else "",
                 _pct(d.saturation_fraction), str(d.acc_overflow) if d.acc_overflow else ""]
        cls = ' class="warn"' if d.flags else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ('<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_E(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def _layer(d: LayerDistribution, plots: bool) -> str:
    cls = ' class="flagged"' if d.flags else ""
    flags = "".join(f'<li class="flag">{_E(f)}</li>' for f in d.flags)
    figures = (f"{d.frames} frame{'s' if d.frames != 1 else ''} · {d.elements} values a frame · range "
               f"{_num(d.min)}..{_num(d.max)}" + (f" · scale {_num(d.scale)} zero point {d.zero_point}"
                                                  if d.scale is not None else ""))
    body = f'<div class="plots">{_histogram_svg(d)}{_boxplot_svg(d)}</div>' if plots else ""
    return (f"<details{cls}><summary>{name_html(d.name)} <span class=\"note\">{_E(d.kind)}"
            f"{' · ' + str(len(d.flags)) + ' flag(s)' if d.flags else ''}</span></summary>"
            f'<p class="note">{_E(figures)}</p>' + (f"<ul>{flags}</ul>" if flags else "") + body + "</details>")


def html_section(distributions: list[LayerDistribution], *, title: str = "Distributions") -> str:
    """The distributions as one HTML fragment: flagged layers listed first, a table, then collapsible plots."""
    ordered = [d for d in distributions if d.flags] + [d for d in distributions if not d.flags]
    flagged = [d for d in ordered if d.flags]
    parts = [_STYLE, f'<div class="dist"><h3>{_E(title)}</h3>',
             f'<p class="note">{len(distributions)} layer{"s" if len(distributions) != 1 else ""}, '
             f"{len(flagged)} pointed out. Histograms are in real units (bar heights on a log scale); box plots show "
             f"per channel the minimum–maximum whisker, the 25th–75th percentile box and the median (red), at most "
             f"{MAX_CHANNELS} channels drawn per layer.</p>"]
    if flagged:
        parts.append("<ul>" + "".join(f'<li class="flag">{name_html(d.name)}: {_E(f)}</li>'
                                      for d in flagged for f in d.flags) + "</ul>")
    if distributions:
        parts.append(_table(ordered))
    parts += [_layer(d, plots=i < MAX_PLOTS) for i, d in enumerate(ordered)]
    if len(ordered) > MAX_PLOTS:
        parts.append(f'<p class="note">Plots are drawn for the first {MAX_PLOTS} layers (flagged first); the other '
                     f"{len(ordered) - MAX_PLOTS} show their figures only.</p>")
    parts.append("</div>")
    return "\n".join(parts)
