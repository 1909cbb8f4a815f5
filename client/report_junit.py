"""The JUnit XML report of a :class:`~qverify.client.results.VerifyResult` (one testsuite per pair,
one testcase per compared tensor), and the text of a tensor's figures the HTML report shares.

Written atomically like every report (docs/report-schema.md describes the format).
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable

from qverify.client.dumpfiles import write_text_atomic
from qverify.client.results import (
    ERROR, FAILED, MISMATCHED, NONDETERMINISTIC, PLAIN_VS_DUMP, RETURNED_VS_DUMPED, PairResult, TensorResult,
    VerifyResult,
)

__all__ = ["render_junit", "write_junit", "xml_text", "yes_no"]


# ---------------------------------------------------------------- figures as text

def _num(x: float, spec: str = ".4g") -> str:
    return format(x, spec) if math.isfinite(x) else str(x)


def _pct(part: int, whole: int) -> str:
    """A percentage that reads 100% only when ``part == whole`` (and 0% only when part is 0)."""
    if whole <= 0 or part == whole:
        return "100%"
    value = 100.0 * part / whole
    return f"{min(max(value, 0.01) if part else 0.0, 99.99):.2f}%"


def _figures(t: TensorResult, digits: int) -> str:
    text = (f"max |diff| {_num(t.max_abs_diff)}, {_pct(t.within_digits, t.elements)} within {digits} digits, "
            f"exact {t.exact} / ±1 LSB {t.off_by_one} / >1 LSB {t.beyond_one} of {t.elements}, "
            f"max {t.max_lsb} LSB, cosine {_num(t.cosine, '.6f')}")
    return text if t.layout_ok else text + ", aligned buffer inconsistent with the valid tensor"


def _where(t: TensorResult) -> str:
    op = t.op or t.kind
    parts = [f"{t.kind} #{t.index}", f"op {op}"]
    if t.producer:
        parts.append(f"node {t.producer}")
    if t.placement:
        parts.append(f"on {t.placement}")
    parts.append("shape [" + ",".join(map(str, t.shape)) + "]")
    return ", ".join(parts)


def yes_no(value: bool) -> str:
    """How a report prints a flag: for people, not Python's True/False."""
    return "yes" if value else "no"


def _detail(value: Any) -> str:
    if isinstance(value, bool):
        return yes_no(value)
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_detail(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_detail(v) for v in value)
    return str(value)


def _pair_name(p: PairResult) -> str:
    return f"{p.a} vs {p.b}"


def _is_first(p: PairResult, t: TensorResult) -> bool:
    """Whether ``t`` is the pair's first divergent tensor (shown only when the pair did not pass)."""
    fd = p.first_divergent
    return fd is not None and not p.passed and (fd is t or fd == t)


# ---------------------------------------------------------------- JUnit XML

_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: Any) -> str:
    """Text XML 1.0 can hold (ElementTree escapes <&>\"' itself but not control characters)."""
    return _XML_ILLEGAL.sub("\ufffd", str(text))


_x = xml_text


def _side_properties(result: VerifyResult) -> Iterable[tuple[str, str]]:
    yield "qverify.version", result.qverify_version
    yield "qverify.verdict", "PASSED" if result.passed else "FAILED"
    yield "qverify.exit_code", str(result.exit_code)
    for s in result.sides:
        for key in ("kind", "path", "sha256"):
            yield f"side.{s.label}.{key}", str(getattr(s, key))
        for key, value in s.detail.items():
            yield f"side.{s.label}.{key}", _detail(value)


def _testcase(suite: ET.Element, classname: str, name: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=_x(classname), name=_x(name), time="0")


def _pair_suite(root: ET.Element, p: PairResult, props: list[tuple[str, str]]) -> ET.Element:
    name = _pair_name(p)
    suite = ET.SubElement(root, "testsuite", name=_x(name), time="0")
    properties = ET.SubElement(suite, "properties")
    for key, value in [*props, ("pair.criterion", p.criterion), ("pair.status", p.status),
                       ("pair.verdict", p.verdict_line())]:
        ET.SubElement(properties, "property", name=_x(key), value=_x(value))
    if p.status in (MISMATCHED, ERROR):
        case = _testcase(suite, name, p.status.lower())
        ET.SubElement(case, "error", message=_x(p.message or p.status), type=p.status).text = _x(p.verdict_line())
        return suite
    for t in p.outputs + p.layers:
        case = _testcase(suite, name, t.name)
        if not t.passed:
            first = " (first divergent)" if _is_first(p, t) else ""
            failure = ET.SubElement(case, "failure", message=_x(f"{t.name}: {t.reason}{first}"),
                                    type=f"{t.kind} tensor")
            failure.text = _x(f"{_where(t)}\n{_figures(t, p.digits)}")
    if p.status == FAILED and all(t.passed for t in p.outputs + p.layers):
        case = _testcase(suite, name, "verdict")
        ET.SubElement(case, "failure", message=_x(p.verdict_line()), type=FAILED).text = _x(p.verdict_line())
    return suite


def _count(suite: ET.Element) -> tuple[int, int, int]:
    cases = suite.findall("testcase")
    counts = (len(cases), sum(c.find("failure") is not None for c in cases),
              sum(c.find("error") is not None for c in cases))
    suite.set("tests", str(counts[0]))
    suite.set("failures", str(counts[1]))
    suite.set("errors", str(counts[2]))
    suite.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))
    return counts


# The board's checks against itself: (kind, testcase name, whether the run checked it).
_BOARD_CHECKS = (
    (PLAIN_VS_DUMP, "plain run vs dumping run", lambda r: r.plain_run),
    (RETURNED_VS_DUMPED, "returned outputs vs dumps", lambda r: r.plain_run),
    (NONDETERMINISTIC, "repeated runs identical", lambda r: r.repeat > 1),
)


def _board_runs_suite(root: ET.Element, result: VerifyResult, props: list[tuple[str, str]]) -> ET.Element | None:
    """A testsuite "board runs": one testcase per check of the board against itself, failing
    with every difference found (the message names the first)."""
    checks = [(kind, name) for kind, name, checked in _BOARD_CHECKS
              if checked(result) or any(f.kind == kind for f in result.board_findings)]
    if not checks:
        return None
    suite = ET.SubElement(root, "testsuite", name="board runs", time="0")
    properties = ET.SubElement(suite, "properties")
    for key, value in [*props, ("board.repeat", str(result.repeat)), ("board.plain_run", str(result.plain_run).lower()),
                       ("board.verdict", result.board_runs_line())]:
        ET.SubElement(properties, "property", name=_x(key), value=_x(value))
    for kind, name in checks:
        case = _testcase(suite, "board runs", name)
        found = [f for f in result.board_findings if f.kind == kind]
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            ET.SubElement(case, "failure", message=_x(found[0].message + more), type=kind).text = \
                _x("\n".join(f.message for f in found))
    return suite


def _float_suite(root: ET.Element, result: VerifyResult, props: list[tuple[str, str]]) -> ET.Element | None:
    """A testsuite "float reference" with one testcase, "quantization loss": never a failure. A
    warning is a ``<skipped type="warning">`` (CI pages show it without failing the suite), and
    the verdict and triage lines are in its ``<system-out>`` and properties."""
    ref = result.float_reference
    if ref is None:
        return None
    suite = ET.SubElement(root, "testsuite", name=_x(f"{ref.float_label} vs {ref.quant_label}"), time="0")
    properties = ET.SubElement(suite, "properties")
    for key, value in [*props, ("float_reference.verdict", ref.verdict), ("float_reference.triage", ref.triage),
                       ("float_reference.output_cosine", _num(ref.output_cosine, ".6f")),
                       ("float_reference.min_float_cosine", _num(ref.min_float_cosine)),
                       ("float_reference.first_below", ref.first_below)]:
        ET.SubElement(properties, "property", name=_x(key), value=_x(value))
    case = _testcase(suite, "float reference", "quantization loss")
    if ref.verdict != "ok":
        ET.SubElement(case, "skipped", type="warning", message=_x(ref.verdict_line()))
    ET.SubElement(case, "system-out").text = _x(f"{ref.verdict_line()}\n{ref.triage_line()}")
    return suite


def render_junit(result: VerifyResult) -> str:
    root = ET.Element("testsuites", name="qverify", time=f"{result.seconds:.3f}")
    props = list(_side_properties(result))
    from qverify.client import isolation_views

    suites = [_pair_suite(root, p, props) for p in result.pairs + result.plain_pairs]
    suites += [s for s in (isolation_views.junit_suite(root, p, props) for p in result.pairs) if s is not None]
    board_runs = _board_runs_suite(root, result, props)
    if board_runs is not None:
        suites.append(board_runs)
    float_suite = _float_suite(root, result, props)
    if float_suite is not None:
        suites.append(float_suite)
    if result.latency_failure or result.tolerances.max_latency_ms is not None:
        board = next((s.label for s in result.sides if s.kind == "board"), "board")
        suite = ET.SubElement(root, "testsuite", name=_x(f"{board} latency"), time="0")
        case = _testcase(suite, board, "latency")
        if result.latency_failure:
            ET.SubElement(case, "failure", message=_x(result.latency_failure), type="latency").text = \
                _x(f"budget {result.tolerances.max_latency_ms} ms: {result.latency_failure}")
        suites.append(suite)
    totals = [sum(c) for c in zip(*(_count(s) for s in suites))] or [0, 0, 0]
    for key, value in zip(("tests", "failures", "errors"), totals):
        root.set(key, str(value))
    root.set("skipped", str(sum(int(s.get("skipped", "0")) for s in suites)))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(result: VerifyResult, path: Path) -> None:
    """JUnit XML: a testsuite per pair, a testcase per compared tensor (outputs, then layers)."""
    write_text_atomic(path, lambda: render_junit(result))
