"""Report files for a :class:`~qverify.client.results.VerifyResult`: JSON, JUnit XML, HTML.

The three writers read the same result objects and never leave a half-written file: each
renders into a temporary file beside the target and moves it into place atomically
(``os.replace``); when anything fails the temporary file is removed and the target is
left as it was. The formats are described in docs/report-schema.md.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable

from qverify.client.dumpfiles import write_text_atomic
# The JUnit writer lives in its own module; it is re-exported here, where callers have always found it.
from qverify.client.report_junit import (
    _detail, _figures, _is_first, _num, _pair_name, _pct, _where, render_junit, write_junit, xml_text, yes_no,
)
from qverify.client.report_text import name_html
from qverify.client.results import NONDETERMINISTIC, BoardFinding, PairResult, SideInfo, Tolerances, VerifyResult

__all__ = ["write_json", "write_junit", "write_html", "render_json", "render_junit", "render_html", "finite", "xml_text",
           "name_html", "yes_no"]


# ---------------------------------------------------------------- atomic writing

def _write_atomic(path: Path, render: Callable[[], str]) -> None:
    """Write ``render()`` to ``path`` via a temporary file in the same directory."""
    write_text_atomic(path, render)


def _first_index(p: PairResult) -> int | None:
    return next((i for i, t in enumerate(p.tensors) if _is_first(p, t)), None)


# ---------------------------------------------------------------- JSON

def finite(obj: Any) -> Any:
    """JSON has no NaN/Infinity: a non-finite number is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


_finite = finite


def render_json(result: VerifyResult) -> str:
    return json.dumps(_finite(result.to_dict()), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(result: VerifyResult, path: Path) -> None:
    """The JSON report: ``result.to_dict()``, indented (schema ``qverify.verify/1``)."""
    _write_atomic(path, lambda: render_json(result))


# ---------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:80em;padding:0 1em;color:#222}
h1,h2,h3{margin:.8em 0 .3em}h1 .badge,h2 .badge{font-size:.7em;vertical-align:middle}
.badge{display:inline-block;padding:.1em .6em;border-radius:.3em;color:#fff;font-weight:700}
.PASSED{background:#1a7f37}.FAILED,.ERROR{background:#c62828}.MISMATCHED{background:#b35c00}
table{border-collapse:collapse;margin:.4em 0 1em}th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}
.name{overflow-wrap:break-word}.mono{font-family:ui-monospace,monospace}
.tname{display:inline-block;min-width:16em;max-width:32em;overflow-wrap:break-word;word-break:normal}
.scroll{max-height:36em;overflow:auto;border:1px solid #ccc}.scroll table{margin:0}
.scroll thead th{position:sticky;top:0}
tr.fail td{background:#fde4e4}tr.first td{background:#f9b9b9;font-weight:600}
.verdict{font-family:ui-monospace,monospace;padding:.4em .6em;background:#f6f8fa;border-left:4px solid #888}
.divergent{border:2px solid #c62828;background:#fff4f4;padding:.5em .8em;margin:.6em 0}
.alert{color:#c62828;font-weight:600}svg{width:100%;height:auto;background:#fff}
.legend span{margin-right:1.2em}.pair{border-top:2px solid #ddd;margin-top:1.5em}
.WARNING{background:#b58900}.warning{color:#8a6500;font-weight:600}tr.warn td{background:#fff5d6}
.float,.distributions{border-top:2px solid #ddd;margin-top:1.5em}
"""

_W, _H, _L, _R, _T, _B = 1000, 260, 48, 12, 14, 30  # plot size and margins (viewBox units)
_SERIES = (("±1 LSB", "#8ab4f8"), ("cosine", "#f4b400"))
_E = html.escape
def _row(cells: Iterable[str], tag: str = "td", cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _table(head: list[str], rows: list[str]) -> str:
    return f"<table><thead>{_row(map(_E, head), 'th')}</thead><tbody>{''.join(rows)}</tbody></table>"


def _sides_table(sides: list[SideInfo]) -> str:
    rows = [_row([_E(s.label), _E(s.kind), f'<span class="name" title="{_E(s.path)}">{_E(Path(s.path).name)}</span>',
                  f'<span class="mono" title="{_E(s.sha256)}">{_E(s.sha256[:12])}</span>',
                  "<br>".join(f"{_E(str(k))}: {_E(_detail(v))}" for k, v in s.detail.items())])
            for s in sides]
    return _table(["side", "kind", "file", "sha256", "details"], rows)


def _header(r: VerifyResult) -> str:
    verdict = "PASSED" if r.passed else "FAILED"
    tol = r.tolerances
    parts = [f'<h1>qverify report <span class="badge {verdict}">{verdict}</span></h1>',
             f"<p>qverify {_E(r.qverify_version)} · exit code {r.exit_code} · {r.frames} frame(s) · "
             f"{'every layer compared' if r.dump_all else 'outputs compared'} · {r.seconds:.2f} s</p>"]
    if r.latency_failure:
        parts.append(f'<p class="alert">Latency: {_E(r.latency_failure)}</p>')
    if r.first_divergent is not None:
        fd = r.first_divergent
        isolated = any(p.first_divergent is fd and p.decided_by == "isolation" for p in r.pairs)
        what = "First wrong layer in isolation" if isolated else "First divergent layer"
        parts.append(f'<p class="alert">{what}: {_E(fd.producer or fd.name)} '
                     f'({_E(fd.op or "input")}) → {_E(fd.name)}</p>')
    ref = r.float_reference
    if ref is not None and ref.verdict != "ok":
        parts.append(f'<p class="warning"><span class="badge WARNING">WARNING</span> {_E(ref.verdict_line())} '
                     '(<a href="#float-reference">float reference</a>)</p>')
    if r.board_findings:
        n = len(r.board_findings)
        parts.append(f'<p class="alert">The board differs from itself: {n} difference{"s" if n != 1 else ""} '
                     f'(<a href="#board-runs">board runs</a>)</p>')
    parts += ["<h3>Sides</h3>", _sides_table(r.sides), "<h3>Inputs</h3>",
              _table(["input", "ONNX input", "source", "board", "ONNX shape", "frame"],
                     [_row([_E(i.name), _E(i.onnx_name), _E(i.source),
                            _E(f"{i.board_dtype}[{','.join(map(str, i.board_shape))}]"),
                            _E(f"[{','.join(map(str, i.onnx_shape))}]"), str(i.frame)]) for i in r.inputs]),
              "<h3>Tolerances</h3>",
              _table(["digits", "max LSB (outputs)", "min cosine (outputs)", "min cosine (layers)", "max latency"],
                     [_row([str(tol.digits), str(tol.max_lsb), _num(tol.min_cosine), _num(tol.min_layer_cosine),
                            "—" if tol.max_latency_ms is None else f"{_num(tol.max_latency_ms)} ms"])])]
    if r.notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{_E(n)}</li>" for n in r.notes) + "</ul>")
    if r.board_runs_checked or r.board_findings:
        parts.append(_board_runs_section(r))
    return "\n".join(parts)


def _finding_row(f: BoardFinding) -> str:
    return _row([_E(f.kind), str(f.frame), str(f.repeat) if f.kind == NONDETERMINISTIC else "—",
                 name_html(f.tensor), f"{f.elements} of {f.total}",
                 "—" if f.max_lsb is None else str(f.max_lsb), _num(f.max_abs_diff), _E(f.message)], cls="fail")


def _board_runs_section(r: VerifyResult) -> str:
    """What the board's runs were compared with (plain vs dumping run, repeats) and every difference."""
    checks = []
    if r.plain_run:
        checks.append("every frame also ran without dumps (a plain run): its outputs must equal the dumping "
                      "run's, and the outputs a dumping run returns must equal its dumps")
    if r.repeat > 1:
        checks.append(f"every frame ran {r.repeat} times without dumps: the outputs must be identical")
    line = r.board_runs_line()
    status = "FAILED" if r.board_findings else "PASSED"
    parts = [f'<h3 id="board-runs">Board runs <span class="badge {status}">{status}</span></h3>',
             f"<p>{_E('; '.join(checks))} (bit for bit).</p>" if checks else "",
             f'<p class="verdict">{_E(line)}</p>' if line else ""]
    if r.board_findings:
        parts.append('<div class="scroll">' + _table(
            ["check", "frame", "repeat", "tensor", "elements differing", "max LSB", "max |diff|", "finding"],
            [_finding_row(f) for f in r.board_findings]) + "</div>")
    return "\n".join(p for p in parts if p)


def _y(value: float) -> float:
    value = min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0
    return _T + (1.0 - value) * (_H - _T - _B)


def _plot(p: PairResult, anchor: str, tol: Tolerances) -> str:
    """Agreement along the network: one marker per tensor (exact fraction), lines for ±1 LSB and cosine,
    and for a tolerance pair the lowest layer cosine accepted. x labels are the tensors' numbers (#),
    the same numbers as the table's rows."""
    tensors = p.tensors
    n = len(tensors)
    xs = [_L + (i + 0.5) * (_W - _L - _R) / max(n, 1) for i in range(n)]
    out = [f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="agreement per tensor, {_E(_pair_name(p))}">']
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{_L}" x2="{_W - _R}" y1="{_y(v):.1f}" y2="{_y(v):.1f}" stroke="#e3e3e3"/>'
                   f'<text x="{_L - 6}" y="{_y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.2f}</text>')
    step = max(1, math.ceil(n / 12))
    for i in range(0, n, step):
        out.append(f'<text x="{xs[i]:.1f}" y="{_H - 10}" font-size="11" text-anchor="middle">{tensors[i].index}</text>')
    threshold = p.criterion == "tolerance" and math.isfinite(tol.min_layer_cosine)
    if threshold:
        y = _y(tol.min_layer_cosine)
        out.append(f'<line class="threshold" x1="{_L}" x2="{_W - _R}" y1="{y:.1f}" y2="{y:.1f}" stroke="{_SERIES[1][1]}" '
                   f'stroke-width="1.2" stroke-dasharray="6 4"/><text x="{_L + 4}" y="{y + 13:.1f}" font-size="11" '
                   f'fill="#8a6500">min layer cosine {_num(tol.min_layer_cosine)}</text>')
    for i, t in enumerate(tensors):
        if not t.passed:
            out.append(f'<rect x="{xs[i] - 2:.1f}" y="{_T}" width="4" height="{_H - _T - _B}" fill="#fbd3d3"/>')
    first = _first_index(p)
    if first is not None:
        x = xs[first]
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_T}" y2="{_H - _B}" stroke="#c62828" stroke-dasharray="4 3"/>')
    values = ([(t.exact + t.off_by_one) / t.elements if t.elements else 1.0 for t in tensors],
              [t.cosine for t in tensors])
    for (label, colour), ys in zip(_SERIES, values):
        points = " ".join(f"{x:.1f},{_y(v):.1f}" for x, v in zip(xs, ys))
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    for i, t in enumerate(tensors):
        colour, radius = ("#c62828", 4) if not t.passed else ("#1f4e99", 2.5)
        tip = f"#{t.index} {t.name}\n{_where(t)}\n{_figures(t, p.digits)}\n{'PASS' if t.passed else 'FAIL'}: {t.reason}"
        out.append(f'<a href="#{anchor}-t{t.index}"><circle class="pt" cx="{xs[i]:.1f}" cy="{_y(t.exact_fraction):.1f}" '
                   f'r="{radius}" fill="{colour}"><title>{_E(tip)}</title></circle></a>')
    out.append("</svg>")
    legend = ('<p class="legend"><span style="color:#1f4e99">● exact fraction</span>'
              + "".join(f'<span style="color:{c}">— {label}</span>' for label, c in _SERIES)
              + (f'<span style="color:#8a6500">- - min layer cosine {_num(tol.min_layer_cosine)}</span>'
                 if threshold else "")
              + '<span style="color:#c62828">● failing tensor</span> (x: tensor #, in execution order)</p>')
    return "".join(out) + legend


def _tensor_rows(p: PairResult, anchor: str) -> list[str]:
    rows = []
    for t in p.tensors:
        first = _is_first(p, t)
        cls = "fail first" if first else "" if t.passed else "fail"
        verdict = ("PASS" if t.passed else "FAIL") + (" (first divergent)" if first else "")
        rows.append(_row([
            f'<span id="{anchor}-t{t.index}">{t.index}</span>', name_html(t.name),
            _E(t.op or t.kind), _E(t.placement), _E("x".join(map(str, t.shape)) or "scalar"),
            _num(t.max_abs_diff), _pct(t.within_digits, t.elements), str(t.exact), str(t.off_by_one),
            str(t.beyond_one), str(t.max_lsb), _num(t.cosine, ".6f"),
            _E(verdict + ": " + t.reason) + ("" if t.layout_ok else " · layout inconsistent")], cls=cls))
    return rows


def _pair_section(p: PairResult, k: int, tol: Tolerances) -> str:
    anchor = f"p{k}"
    parts = [f'<section class="pair" id="{anchor}"><h2>{_E(_pair_name(p))} <span class="badge {_E(p.status)}">'
             f"{_E(p.status)}</span></h2>", f'<p class="verdict">{_E(p.verdict_line())}</p>',
             f"<p>criterion: {_E(p.criterion)}</p>"]
    fd = p.first_divergent
    if fd is not None and not p.passed:
        link = f' <a href="#{anchor}-t{fd.index}">(row {fd.index})</a>' if _first_index(p) is not None else ""
        what = "First wrong layer in isolation" if p.decided_by == "isolation" else "First divergent layer"
        parts.append(f'<div class="divergent"><strong>{what}:</strong> {_E(fd.producer or fd.name)} '
                     f'({_E(fd.op or "input")}) → {name_html(fd.name)}{link}<br>'
                     f"{_E(_where(fd))}<br>{_E(_figures(fd, p.digits))}<br>{_E(fd.reason)}</div>")
    if p.tensors:
        head = ["#", "tensor", "op", "placement", "shape", "max |diff|", f"within {p.digits} digits",
                "exact", "±1 LSB", ">1 LSB", "max LSB", "cosine", "verdict"]
        parts += [_plot(p, anchor, tol), f'<div class="scroll">{_table(head, _tensor_rows(p, anchor))}</div>']
    from qverify.client import isolation_views

    parts.append(isolation_views.html_section(p, anchor))
    parts.append("</section>")
    return "\n".join(parts)


def _accuracy_sections(result: VerifyResult) -> list[str]:
    """The float reference (per-layer cosines, triage) and the board's value distributions (-r)."""
    from qverify.client import float_views

    parts = [float_views.html_section(result.float_reference)] if result.float_reference is not None else []
    dists = [d for d in result.distributions if not isinstance(d, dict)]
    if dists:
        from qverify.client.accuracy.distributions import html_section

        parts.append(f'<section class="distributions" id="distributions"><h2>Distributions (board dumps)</h2>'
                     f"{html_section(dists)}</section>")
    return parts


def render_html(result: VerifyResult) -> str:
    verdict = "PASSED" if result.passed else "FAILED"
    body = "\n".join([_header(result), *_accuracy_sections(result),
                      *(_pair_section(p, k, result.tolerances) for k, p in enumerate(result.pairs + result.plain_pairs))])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>qverify report: {verdict}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_html(result: VerifyResult, path: Path) -> None:
    """One self-contained HTML page: verdict, sides, inputs, and per pair a plot and a tensor table."""
    _write_atomic(path, lambda: render_html(result))
