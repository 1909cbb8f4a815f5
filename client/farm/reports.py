"""Report files for a farm run (:class:`~qverify.client.farm.outcomes.FarmResult`): JSON, JUnit XML, HTML.

Like the single-verification writers in :mod:`qverify.client.reports`, nothing is ever left
half-written: files are rendered into temporary files beside the target and renamed into
place. The HTML report also writes one page per (board, model) pair into the folder
``<stem>.pairs/`` next to it; that folder is built under a temporary name and swapped in
whole. The formats are described in docs/report-schema.md ("Farm reports").
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

from qverify.client import reports
from qverify.client.dumpfiles import write_text_atomic
from qverify.client.farm.outcomes import CONSISTENT, INCONSISTENT, INFRA, FarmResult, JobResult, Regression
from qverify.client.farm.trend import PAGE_CSS as _CSS
from qverify.client.farm.trend import html_row as _row
from qverify.client.farm.trend import html_table as _table
from qverify.client.farm.trend import trend_section as _trend
from qverify.client.reports import finite as _finite
from qverify.client.reports import xml_text as _x
from qverify.client.results import (InputInfo, PairResult, SideInfo, TensorResult, Tolerances,
                                    VerifyResult)

__all__ = ["write_farm_json", "write_farm_junit", "write_farm_html", "render_farm_json", "render_farm_junit",
           "render_farm_html", "render_pair_html", "pair_file_names", "verify_result_from_dict"]

VERSION_KEYS = ("agent", "backend", "runtime", "driver", "firmware", "target")
_E = html.escape


# ---------------------------------------------------------------- JSON

def render_farm_json(result: FarmResult) -> str:
    return json.dumps(_finite(result.to_dict()), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_farm_json(result: FarmResult, path: Path) -> None:
    """``result.to_dict()`` (schema ``qverify.farm/1``), indented; non-finite numbers as null."""
    write_text_atomic(path, lambda: render_farm_json(result))


# ---------------------------------------------------------------- shared helpers

def _boards(result: FarmResult) -> list[str]:
    """Board names: the inventory's order, then any board only the jobs name."""
    names = [b.name for b in result.boards]
    return names + [n for n in dict.fromkeys(j.board for j in result.jobs) if n not in names]


def _models(result: FarmResult) -> list[str]:
    return list(dict.fromkeys(j.model for j in result.jobs))


def _regressions(result: FarmResult, board: str, model: str) -> list[Regression]:
    return [r for r in result.regressions if r.board == board and r.model == model]


def _fmt(value: float | None, spec: str = ".4g", unit: str = "") -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec) + unit


def _exact_pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100.0 * value:.2f}%"


def _divergence(job: JobResult) -> str:
    if not job.first_divergent and not job.first_divergent_tensor:
        return ""
    return f"first divergent layer {job.first_divergent or job.first_divergent_tensor}" + (
        f" -> {job.first_divergent_tensor}" if job.first_divergent_tensor else "")


def _job_details(job: JobResult) -> str:
    lat = job.latency
    lines = [job.message, _divergence(job),
             f"min exact fraction {_exact_pct(job.min_exact_fraction)}, min cosine {_fmt(job.min_cosine, '.6f')}, "
             f"max LSB {'—' if job.max_lsb is None else job.max_lsb}",
             f"float vs quant.onnx output cosine {_fmt(job.float_cosine, '.6f')} (quantization loss)"
             if job.float_cosine is not None else "",
             f"latency median {_fmt(lat.median_ms)} ms, p99 {_fmt(lat.p99_ms)} ms over {lat.frames} frames"
             if lat else "", f"attempts {job.attempts}, {job.seconds:.2f} s",
             *(f"model {k} sha256 {v}" for k, v in job.model_sha256.items())]
    return "\n".join(line for line in lines if line)


# ---------------------------------------------------------------- JUnit XML

def _suite_properties(result: FarmResult, board: str) -> Iterable[tuple[str, str]]:
    status = next((b for b in result.boards if b.name == board), None)
    versions = dict(status.versions) if status else {}
    for job in result.jobs:  # a board's own facts first, then what its jobs measured
        if job.board == board:
            versions = {**job.versions, **versions}
    yield "board.address", status.address if status else ""
    yield "board.place", status.place if status else ""
    yield "board.online", str(status.online if status else True).lower()
    if status and status.error:
        yield "board.error", status.error
    for key in (*VERSION_KEYS, *sorted(set(versions) - set(VERSION_KEYS))):
        yield f"version.{key}", versions.get(key, "")
    yield "qverify.version", result.qverify_version
    yield "farm.run_id", result.run_id
    yield "farm.inventory", result.inventory


def _testcase(suite: ET.Element, job: JobResult, regressions: list[Regression]) -> ET.Element:
    case = ET.SubElement(suite, "testcase", classname=_x(job.board), name=_x(job.model), time=f"{job.seconds:.3f}")
    prefix = "REGRESSION: " if any(r.kind == "newly_inconsistent" for r in regressions) else ""
    if job.outcome == INCONSISTENT:
        lines = job.message.splitlines()
        verdict = next((line for line in lines if "FAILED" in line), lines[0] if lines else "")
        message = " / ".join(p for p in (_divergence(job), verdict) if p)
        ET.SubElement(case, "failure", message=_x(prefix + (message or "inconsistent")),
                      type="inconsistent").text = _x(_job_details(job))
    elif job.outcome == INFRA:
        what = "not run, board offline" if job.skipped else f"after {job.attempts} attempt(s)"
        ET.SubElement(case, "error", message=_x(f"infrastructure error ({what}), the lab is at fault, "
                                                f"not the model: {job.message}"),
                      type="infra.offline" if job.skipped else "infra").text = _x(_job_details(job))
    latency = [r for r in regressions if r.kind == "latency_up"]
    if latency and job.outcome == CONSISTENT:
        ET.SubElement(case, "failure", message=_x("REGRESSION: " + latency[0].message),
                      type="regression.latency_up").text = _x("\n".join(r.message for r in latency))
    if regressions:
        ET.SubElement(case, "system-out").text = _x("\n".join(
            f"REGRESSION {r.kind}: {r.message}" + (f" (last good run {r.previous_run})" if r.previous_run else "")
            for r in regressions))
    return case


def _board_suite(root: ET.Element, result: FarmResult, board: str) -> tuple[int, int, int, float]:
    jobs = [j for j in result.jobs if j.board == board]
    suite = ET.SubElement(root, "testsuite", name=_x(board))
    properties = ET.SubElement(suite, "properties")
    for key, value in _suite_properties(result, board):
        ET.SubElement(properties, "property", name=_x(key), value=_x(value))
    cases = [_testcase(suite, j, _regressions(result, board, j.model)) for j in jobs]
    orphans = [r for r in result.regressions if r.board == board and r.model not in {j.model for j in jobs}]
    if orphans:
        ET.SubElement(suite, "system-out").text = _x("\n".join(f"REGRESSION {r.kind} {r.model}: {r.message}"
                                                              for r in orphans))
    counts = (len(cases), sum(c.find("failure") is not None for c in cases),
              sum(c.find("error") is not None for c in cases), sum(j.seconds for j in jobs))
    for key, value in zip(("tests", "failures", "errors"), counts):
        suite.set(key, str(value))
    suite.set("skipped", "0")
    suite.set("time", f"{counts[3]:.3f}")
    return counts


def render_farm_junit(result: FarmResult) -> str:
    root = ET.Element("testsuites", name=_x(f"qverify farm {result.run_id}"))
    counts = [_board_suite(root, result, board) for board in _boards(result)]
    totals = [sum(c) for c in zip(*counts)] or [0, 0, 0, 0.0]
    for key, value in zip(("tests", "failures", "errors"), totals):
        root.set(key, str(value))
    root.set("skipped", "0")
    root.set("time", f"{totals[3]:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_farm_junit(result: FarmResult, path: Path) -> None:
    """JUnit XML: a testsuite per board, a testcase per model on it (see docs/report-schema.md)."""
    write_text_atomic(path, lambda: render_farm_junit(result))


# ---------------------------------------------------------------- a pair's report from its dict

def _build(cls: type, data: dict[str, Any], **overrides: Any) -> Any:
    """A dataclass from a dict, ignoring keys it does not know (reports only gain keys)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in data.items() if k in names}, **overrides)


def _tensor(data: dict[str, Any] | None) -> TensorResult | None:
    if data is None:
        return None
    floats = {k: math.nan for k in ("max_abs_diff", "cosine") if data.get(k) is None}  # JSON null = non-finite
    return _build(TensorResult, {k: v for k, v in data.items() if k not in floats}, **floats)


def verify_result_from_dict(report: dict[str, Any]) -> VerifyResult:
    """Rebuild a :class:`VerifyResult` from its ``to_dict()`` (or the JSON report read back)."""
    pairs = [_build(PairResult, {k: v for k, v in p.items() if k not in ("outputs", "layers", "first_divergent")},
                    outputs=[_tensor(t) for t in p.get("outputs", [])],
                    layers=[_tensor(t) for t in p.get("layers", [])],
                    first_divergent=_tensor(p.get("first_divergent"))) for p in report.get("pairs", [])]
    rest = {k: v for k, v in report.items() if k not in ("sides", "inputs", "pairs", "tolerances")}
    return _build(VerifyResult, rest, pairs=pairs, sides=[_build(SideInfo, s) for s in report.get("sides", [])],
                  inputs=[_build(InputInfo, i) for i in report.get("inputs", [])],
                  tolerances=_build(Tolerances, report.get("tolerances", {})))


def render_pair_html(job: JobResult, back: str = "") -> str:
    """The pair's per-layer HTML report (``reports.render_html``) with a line naming board and model."""
    page = reports.render_html(verify_result_from_dict(job.report or {}))
    link = f'<a href="{_E(back)}">← farm report</a> · ' if back else ""
    nav = f'<p>{link}board <b>{_E(job.board)}</b> · model <b>{_E(job.model)}</b></p>\n'
    return page.replace("<body>\n", "<body>\n" + nav, 1)


def pair_file_names(result: FarmResult) -> dict[tuple[str, str], str]:
    """``<board>__<model>.html`` for every job with a report (unsafe characters as ``_``, clashes numbered)."""
    names: dict[tuple[str, str], str] = {}
    for job in result.jobs:
        if job.report is None or (job.board, job.model) in names:
            continue
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", f"{job.board}__{job.model}").lstrip(".")[:120] or "pair"
        name, n = f"{stem}.html", 1
        while name.lower() in {v.lower() for v in names.values()}:
            n += 1
            name = f"{stem}-{n}.html"
        names[(job.board, job.model)] = name
    return names


# ---------------------------------------------------------------- HTML

_VERDICT = {0: "CONSISTENT", 1: "INCONSISTENT", 3: "INFRASTRUCTURE"}


def _header(r: FarmResult) -> str:
    code, c = r.exit_code, r.counts()
    return (f'<h1>qverify farm report <span class="badge v{code}">{_VERDICT.get(code, code)}</span></h1>'
            f"<p>run <b>{_E(r.run_id)}</b> · inventory {_E(r.inventory)} · started {_E(r.started)} · finished "
            f"{_E(r.finished or '—')} · qverify {_E(r.qverify_version)} · exit code {code}</p>"
            f"<p>{c[CONSISTENT]} consistent · {c[INCONSISTENT]} inconsistent · {c[INFRA]} infrastructure "
            f"(of {len(r.jobs)} pairs)</p>")


def _cell(job: JobResult | None, href: str | None) -> str:
    if job is None:
        return '<td class="cell empty"></td>'
    what = "skipped (board offline)" if job.skipped else job.outcome
    figures = [f"min exact {_exact_pct(job.min_exact_fraction)}"] if job.min_exact_fraction is not None else []
    if job.latency is not None:
        figures.append(f"{_fmt(job.latency.median_ms, '.2f')} ms")
    if job.outcome == INFRA and job.message:
        figures.append(job.message if len(job.message) <= 60 else job.message[:59] + "…")
    text = f"<b>{_E(what)}</b>" + (f'<br><span class="small">{_E(" · ".join(figures))}</span>' if figures else "")
    if job.first_divergent and job.outcome == INCONSISTENT:
        text += f'<br><span class="small">at {_E(job.first_divergent)}</span>'
    if href:
        text = f'<a href="{_E(href)}">{text}</a>'
    return f'<td class="cell {_E(job.outcome)}" title="{_E(job.message)}">{text}</td>'


def _matrix(r: FarmResult, links: dict[tuple[str, str], str]) -> str:
    jobs = {(j.board, j.model): j for j in r.jobs}
    models = _models(r)
    rows = [f"<tr><th>{_E(b)}</th>" + "".join(_cell(jobs.get((b, m)), links.get((b, m))) for m in models) + "</tr>"
            for b in _boards(r)]
    head = "<th>board \\ model</th>" + "".join(f"<th>{_E(m)}</th>" for m in models)
    return (f'<h2>Boards × models</h2><table class="matrix"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _boards_table(r: FarmResult) -> str:
    rows = [_row([_E(b.name), "online" if b.online else "<b>offline</b>", _E(b.error), _E(b.address), _E(b.place),
                  "<br>".join(f"{_E(k)}: {_E(v)}" for k, v in b.versions.items())], "" if b.online else "offline")
            for b in r.boards]
    return "<h2>Boards</h2>" + _table(["board", "status", "reason", "address", "labgrid place", "versions"], rows)


def _regressions_table(r: FarmResult) -> str:
    if not r.regressions:
        return "<h2>Regressions</h2><p>none</p>"
    rows = [_row(map(_E, (g.board, g.model, g.kind, g.message, g.previous_run))) for g in r.regressions]
    return "<h2>Regressions</h2>" + _table(["board", "model", "kind", "what", "last good run"], rows)


def render_farm_html(result: FarmResult, trend: list[dict[str, Any]] | None = None,
                     pairs_folder: str | None = None) -> str:
    """The farm page; with ``pairs_folder`` the matrix cells link to ``<pairs_folder>/<pair file>``."""
    names = pair_file_names(result) if pairs_folder else {}
    links = {k: f"{quote(pairs_folder)}/{quote(v)}" for k, v in names.items()} if pairs_folder else {}
    body = "\n".join([_header(result), _matrix(result, links), _boards_table(result), _regressions_table(result),
                      _trend(trend)])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>qverify farm {_E(result.run_id)}: {_VERDICT.get(result.exit_code, '')}</title>"
            f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _write_file(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_farm_html(result: FarmResult, path: Path, trend: list[dict[str, Any]] | None = None) -> None:
    """The farm page at ``path`` and, for every job with a report, ``<stem>.pairs/<board>__<model>.html``.

    Everything is rendered first, then written under temporary names and renamed into
    place; a previous pairs folder is replaced whole. On failure the previous page and
    folder are left as they were and no temporary file or folder remains.
    """
    path = Path(path)
    folder = path.parent / f"{path.stem}.pairs"
    jobs = {(j.board, j.model): j for j in result.jobs}
    pages = {name: render_pair_html(jobs[key], back=f"../{quote(path.name)}")
             for key, name in pair_file_names(result).items()}
    page = render_farm_html(result, trend, folder.name if pages else None)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    tmp_page, old, swapped = tmp.parent / f".{path.name}{tmp.name}", None, False
    try:
        for name, text in pages.items():
            _write_file(tmp / name, text)
        _write_file(tmp_page, page)
        os.chmod(tmp_page, mode)
        tmp.chmod(0o755)
        if folder.is_dir():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{folder.name}.old."))
            os.replace(folder, old / folder.name)
        if pages:
            os.replace(tmp, folder)
            swapped = True
        os.replace(tmp_page, path)
    except BaseException:
        if swapped:
            shutil.rmtree(folder, ignore_errors=True)
        if old is not None and (old / folder.name).exists():
            os.replace(old / folder.name, folder)
        raise
    finally:
        for leftover in (tmp, old):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
        if tmp_page.exists():
            tmp_page.unlink()
