"""The report writers: JSON equals ``to_dict()``, JUnit counts what failed, HTML is one safe, self-contained page."""
from __future__ import annotations

import json
import math
import os
import stat
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from qverify.client import reports
from qverify.client.results import (ERROR, FAILED, MISMATCHED, InputInfo, PairResult, SideInfo, TensorResult,
                                    Tolerances, VerifyResult)

NASTY = "/blocks.3/conv<1>&'relu\"/out"  # tensor names are arbitrary ONNX strings
OPS = ("Conv", "Relu", "Conv", "Add", "MaxPool", "Conv", "Sigmoid", "Mul", "Concat", "GlobalAveragePool")


def tensor(name: str, index: int, *, kind: str = "layer", op: str = "Conv", elements: int = 4096,
           exact: int | None = None, off_by_one: int = 0, beyond_one: int = 0, max_lsb: int = 0,
           cosine: float = 1.0, passed: bool = True, reason: str = "bit-exact",
           placement: str = "npu") -> TensorResult:
    exact = elements - off_by_one - beyond_one if exact is None else exact
    scale = 0.0235
    max_abs = max_lsb * scale
    return TensorResult(name=name, kind=kind, index=index, producer=f"node_{index}", op=op, placement=placement,
                        shape=[1, 16, 16, 16], elements=elements, scale=scale, max_abs_diff=max_abs,
                        within_digits=exact, exact=exact, off_by_one=off_by_one, beyond_one=beyond_one,
                        max_lsb=max_lsb, cosine=cosine, passed=passed, reason=reason)


def layers(n: int, start: int = 1, **overrides) -> list[TensorResult]:
    return [tensor(f"/model/layer{i}/{OPS[i % len(OPS)]}_output_0", i, op=OPS[i % len(OPS)],
                   placement="cpu" if OPS[i % len(OPS)] == "Sigmoid" else "npu", **overrides)
            for i in range(start, start + n)]


def sides() -> list[SideInfo]:
    return [SideInfo("quant.onnx", "onnx", "models/quant.onnx", "ab" * 32, {"ort_opt": "disabled"}),
            SideInfo("board", "board", "models/model.bin", "cd" * 32,
                     {"agent_version": "0.1.0", "backend": "sim", "target": "sim-a16", "latency_ms": 3.25}),
            SideInfo("simulator", "simulator", "models/model.bin", "cd" * 32, {"target": "sim-a16"})]


def base_result(pairs: list[PairResult], **kw) -> VerifyResult:
    return VerifyResult(sides=sides(), pairs=pairs,
                        inputs=[InputInfo("images", "x", "random (seed 0)", [1, 48, 192, 16], "int8", [1, 3, 48, 192])],
                        frames=2, dump_all=True, seconds=1.5,
                        notes=["model.bin was compiled from another quant.onnx & kept"], **kw)


@pytest.fixture
def passing() -> VerifyResult:
    drift = PairResult("quant.onnx", "board", "tolerance",
                       outputs=[tensor("logits", 22, kind="output", op="Gemm", off_by_one=3, max_lsb=1,
                                       cosine=0.99999, reason="within rounding drift (1 LSB)"),
                                tensor("probs", 23, kind="output", op="Softmax", placement="cpu", reason="exact")],
                       layers=layers(20, off_by_one=40, max_lsb=1, cosine=0.9999, reason="within rounding drift"))
    exact = PairResult("simulator", "board", "bit-exact",
                       outputs=[tensor("logits", 22, kind="output", op="Gemm"),
                                tensor("probs", 23, kind="output", op="Softmax", placement="cpu")],
                       layers=layers(20))
    return base_result([drift, exact])


@pytest.fixture
def failing() -> VerifyResult:
    """simulator vs board diverges at layer 7 (the NASTY-named Conv) and everything after it fails."""
    ok = layers(6)
    first = tensor(NASTY, 7, beyond_one=900, max_lsb=37, cosine=0.71, passed=False, reason="37 LSB apart (not bit-exact)")
    after = layers(5, start=8, beyond_one=2000, max_lsb=60, cosine=0.4, passed=False, reason="not bit-exact")
    out = tensor("logits", 13, kind="output", op="Gemm", beyond_one=10, elements=10, max_lsb=12, cosine=0.2,
                 passed=False, reason="12 LSB apart (not bit-exact)")
    exact = PairResult("simulator", "board", "bit-exact", status=FAILED, outputs=[out],
                       layers=[*ok, first, *after], first_divergent=first)
    drift = PairResult("quant.onnx", "simulator", "tolerance",
                       outputs=[tensor("logits", 13, kind="output", op="Gemm", elements=10, off_by_one=1, max_lsb=1)],
                       layers=layers(12, off_by_one=5, max_lsb=1, reason="within rounding drift"))
    return base_result([exact, drift], latency_failure="median 12.5 ms exceeds --max-latency 10 ms",
                       tolerances=Tolerances(max_latency_ms=10.0))


@pytest.fixture
def broken() -> VerifyResult:
    mismatched = PairResult("quant.onnx", "board", "tolerance", status=MISMATCHED,
                            message="model.bin was compiled from a different ONNX (input 'x' <1,3,48,192>)")
    error = PairResult("simulator", "board", "bit-exact", status=ERROR,
                       message="board unreachable: connection refused & retried 3 times")
    return base_result([mismatched, error])


def test_json_report_is_to_dict_indented(tmp_path: Path, failing: VerifyResult) -> None:
    path = tmp_path / "report.json"
    reports.write_json(failing, path)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == failing.to_dict()
    assert text.startswith('{\n  "schema": "qverify.verify/1"')
    assert json.loads(text)["first_divergent"]["name"] == NASTY


def test_json_report_writes_non_finite_figures_as_null(tmp_path: Path, passing: VerifyResult) -> None:
    passing.pairs[0].layers[0].cosine = math.nan
    path = tmp_path / "report.json"
    reports.write_json(passing, path)

    def reject(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    data = json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)
    assert data["pairs"][0]["layers"][0]["cosine"] is None


def junit(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def counts(el: ET.Element) -> tuple[int, int, int]:
    return int(el.get("tests")), int(el.get("failures")), int(el.get("errors"))


def test_junit_has_a_suite_per_pair_and_a_case_per_tensor_outputs_first(tmp_path: Path, passing: VerifyResult) -> None:
    path = tmp_path / "junit.xml"
    reports.write_junit(passing, path)
    root = junit(path)
    assert root.tag == "testsuites" and counts(root) == (44, 0, 0)
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["quant.onnx vs board", "simulator vs board"]
    first = suites[0]
    assert counts(first) == (22, 0, 0)
    names = [c.get("name") for c in first.findall("testcase")]
    assert names[:2] == ["logits", "probs"] and names[2] == "/model/layer1/Relu_output_0"
    assert {c.get("classname") for c in first.findall("testcase")} == {"quant.onnx vs board"}
    assert all(float(c.get("time")) >= 0 for c in root.iter("testcase")) and float(root.get("time")) == 1.5
    props = {p.get("name"): p.get("value") for p in first.iter("property")}
    assert props["qverify.version"] == passing.qverify_version
    assert props["side.board.sha256"] == "cd" * 32 and props["side.board.kind"] == "board"
    assert props["side.board.backend"] == "sim" and props["side.quant.onnx.ort_opt"] == "disabled"


def test_junit_failures_name_the_tensor_and_its_reason(tmp_path: Path, failing: VerifyResult) -> None:
    path = tmp_path / "junit.xml"
    reports.write_junit(failing, path)
    root = junit(path)
    exact, drift, latency = root.findall("testsuite")
    assert counts(exact) == (13, 7, 0)  # 1 output + 12 layers; layer 7 onwards and the output fail
    assert counts(drift) == (13, 0, 0)
    assert counts(latency) == (1, 1, 0) and latency.find("testcase").get("name") == "latency"
    assert "12.5 ms" in latency.find("testcase/failure").get("message")
    assert counts(root) == (27, 8, 0)
    case = next(c for c in exact.findall("testcase") if c.get("name") == NASTY)  # escaped and parsed back intact
    failure = case.find("failure")
    assert "37 LSB apart" in failure.get("message") and "first divergent" in failure.get("message")
    assert "cosine 0.710000" in failure.text and "max 37 LSB" in failure.text
    passing_case = next(c for c in exact.findall("testcase") if c.get("name").startswith("/model/layer1/"))
    assert list(passing_case) == []


def test_junit_mismatched_and_error_pairs_are_one_error_each(tmp_path: Path, broken: VerifyResult) -> None:
    path = tmp_path / "junit.xml"
    reports.write_junit(broken, path)
    root = junit(path)
    assert counts(root) == (2, 0, 2)
    for suite, status, words in zip(root.findall("testsuite"), (MISMATCHED, ERROR),
                                    ("different ONNX (input 'x' <1,3,48,192>)", "connection refused & retried")):
        (case,) = suite.findall("testcase")
        error = case.find("error")
        assert error.get("type") == status and words in error.get("message")
        assert counts(suite) == (1, 0, 1)


def test_junit_failed_pair_without_a_failing_tensor_still_fails(tmp_path: Path, passing: VerifyResult) -> None:
    passing.pairs[1].status = FAILED
    path = tmp_path / "junit.xml"
    reports.write_junit(passing, path)
    assert counts(junit(path).findall("testsuite")[1]) == (23, 1, 0)


class Page(HTMLParser):
    """Checks nesting and collects what the tests look at."""
    VOID = {"meta", "br", "wbr", "hr", "img", "input", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.svgs: list[list[dict]] = []  # per <svg>: the attributes of each circle
        self.refs: list[tuple[str, str]] = []
        self.rows: list[tuple[str, list[str]]] = []  # (class, cell texts)
        self.text: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        self.refs += [(k, v) for k, v in attrs if k in ("src", "href", "xlink:href")]
        if tag == "svg":
            self.svgs.append([])
        if tag == "circle":
            self.svgs[-1].append(a)
        if tag == "tr":
            self.rows.append((a.get("class") or "", []))
        if tag == "td":
            self.rows[-1][1].append("")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack[-1:] == ["style"]:
            return
        self.text.append(data)
        if "td" in self.stack and self.rows:
            self.rows[-1][1][-1] += data


def page(path: Path) -> tuple[Page, str]:
    raw = path.read_text(encoding="utf-8")
    p = Page()
    p.feed(raw)
    p.close()
    assert p.errors == [] and p.stack == [], (p.errors, p.stack)
    return p, raw


def assert_self_contained(p: Page, raw: str) -> None:
    assert all(v.startswith("#") for _, v in p.refs), p.refs
    assert not {"script", "link", "img", "iframe", "object"} & p.tags
    assert "url(" not in raw and "@import" not in raw and "http" not in raw.lower()


def test_html_passing_report(tmp_path: Path, passing: VerifyResult) -> None:
    path = tmp_path / "report.html"
    reports.write_html(passing, path)
    p, raw = page(path)
    text = " ".join(p.text)
    assert "PASSED" in text and "FAILED" not in text and passing.qverify_version in text
    for pair in passing.pairs:
        assert pair.verdict_line() in text
    assert [len(circles) for circles in p.svgs] == [22, 22]  # one point per tensor, per pair
    assert all(c["fill"] != "#c62828" for circles in p.svgs for c in circles)
    assert "sim-a16" in text and "ort_opt: disabled" in text and "abababababab" in text
    assert "random (seed 0)" in text and "model.bin was compiled from another quant.onnx & kept" in text
    assert_self_contained(p, raw)


def test_html_failing_report_marks_failures_and_escapes_names(tmp_path: Path, failing: VerifyResult) -> None:
    path = tmp_path / "report.html"
    reports.write_html(failing, path)
    p, raw = page(path)
    text = " ".join(p.text)
    assert "FAILED" in text and "PASSED" in text  # the overall verdict fails; the drift pair passes
    assert failing.pairs[0].verdict_line() in text and "12.5 ms" in text
    exact_points, drift_points = p.svgs
    assert len(exact_points) == 13 and len(drift_points) == 13
    assert [c["fill"] == "#c62828" for c in exact_points] == [t.passed is False for t in failing.pairs[0].tensors]
    assert NASTY not in raw and "conv<1>" not in raw  # never unescaped ...
    assert NASTY in text  # ... yet shown as is
    first_rows = [cells for cls, cells in p.rows if "first" in cls.split()]
    assert len(first_rows) == 1 and first_rows[0][1] == NASTY
    assert sum("fail" in cls.split() for cls, _ in p.rows) == 7
    assert_self_contained(p, raw)


def test_html_mismatched_and_error_pairs_show_their_message(tmp_path: Path, broken: VerifyResult) -> None:
    path = tmp_path / "report.html"
    reports.write_html(broken, path)
    p, raw = page(path)
    text = " ".join(p.text)
    assert MISMATCHED in text and ERROR in text and "FAILED" in text
    assert "input 'x' <1,3,48,192>" in text and "<1,3,48,192>" not in raw
    assert p.svgs == []  # nothing was compared, nothing to plot
    assert_self_contained(p, raw)


def test_html_plot_stays_inside_the_view_at_300_tensors(tmp_path: Path) -> None:
    pair = PairResult("quant.onnx", "board", "tolerance",
                      outputs=[tensor("out", 301, kind="output")], layers=layers(300, off_by_one=9, max_lsb=1))
    path = tmp_path / "report.html"
    reports.write_html(base_result([pair]), path)
    p, _ = page(path)
    (points,) = p.svgs
    xs = [float(c["cx"]) for c in points]
    assert len(points) == 301 and xs == sorted(set(xs)) and 0 < xs[0] and xs[-1] < 1000
    assert all(0 <= float(c["cy"]) <= 260 for c in points)


@pytest.mark.parametrize("writer", [reports.write_json, reports.write_junit, reports.write_html])
def test_writer_into_a_missing_directory_creates_nothing(tmp_path: Path, passing: VerifyResult, writer) -> None:
    with pytest.raises(FileNotFoundError):
        writer(passing, tmp_path / "missing" / "report")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer, target", [(reports.write_json, "reports.json.dumps"),
                                            (reports.write_junit, "report_junit.ET.tostring"),
                                            (reports.write_html, "reports._figures")])
def test_writer_failing_midway_leaves_the_old_file_and_no_temp(tmp_path: Path, passing: VerifyResult,
                                                               monkeypatch, writer, target) -> None:
    path = tmp_path / "report"
    path.write_text("previous report", encoding="utf-8")

    def boom(*args, **kwargs):
        raise RuntimeError("serializer failed")

    monkeypatch.setattr(f"qverify.client.{target}", boom)
    with pytest.raises(RuntimeError, match="serializer failed"):
        writer(passing, path)
    assert list(tmp_path.iterdir()) == [path] and path.read_text(encoding="utf-8") == "previous report"


def test_writer_failing_at_the_final_rename_removes_the_temp(tmp_path: Path, passing: VerifyResult,
                                                             monkeypatch) -> None:
    def refuse(src, dst):
        raise PermissionError("read-only target")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        reports.write_json(passing, tmp_path / "report.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_written_report_is_world_readable(tmp_path: Path, passing: VerifyResult) -> None:
    path = tmp_path / "report.html"
    reports.write_html(passing, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_html_tensor_names_wrap_only_after_separators_in_a_wide_column(tmp_path: Path, failing: VerifyResult) -> None:
    path = tmp_path / "report.html"
    reports.write_html(failing, path)
    p, raw = page(path)
    assert "overflow-wrap:anywhere" not in raw  # that let the column shrink to a few letters
    assert ".tname{display:inline-block;min-width:16em" in raw
    name = "/model/layer1/Relu_output_0"
    assert "/<wbr>model/<wbr>layer1/<wbr>Relu_<wbr>output_<wbr>0" in raw
    assert name in " ".join(p.text)  # the break hints are not characters: copying the name gives the name


def test_html_rows_plot_and_links_share_one_numbering(tmp_path: Path, failing: VerifyResult) -> None:
    path = tmp_path / "report.html"
    reports.write_html(failing, path)
    p, raw = page(path)
    exact = failing.pairs[0]
    table_rows = [cells for _, cells in p.rows if len(cells) == 13][:len(exact.tensors)]
    assert [int(cells[0]) for cells in table_rows] == [t.index for t in exact.tensors]  # 1..13, not 0..12
    assert 'href="#p0-t7">(row 7)</a>' in raw and 'id="p0-t7"' in raw  # the first divergent tensor is #7
    titles = [c for c in p.svgs[0]]
    assert len(titles) == 13
    assert f"#7 {NASTY}" in " ".join(p.text)  # the marker's tooltip uses the row's number


def test_html_plot_draws_the_layer_cosine_threshold_of_tolerance_pairs(tmp_path: Path, failing: VerifyResult) -> None:
    failing.tolerances.min_layer_cosine = 0.9
    html_text = reports.render_html(failing)
    sections = html_text.split('<section class="pair"')[1:]
    exact, drift = sections  # simulator vs board is bit-exact: no cosine threshold applies
    assert 'class="threshold"' not in exact
    assert 'class="threshold"' in drift and "min layer cosine 0.9" in drift
    y = float(drift.split('class="threshold"')[1].split('y1="')[1].split('"')[0])
    assert y == pytest.approx(reports._y(0.9))


def test_html_prints_flags_as_yes_and_no(tmp_path: Path, passing: VerifyResult) -> None:
    passing.sides[1].detail.update({"dumps": True, "tls": False})
    text = " ".join(page_of(tmp_path, passing).text)
    assert "dumps: yes" in text and "tls: no" in text
    assert "True" not in text and "False" not in text


def page_of(tmp_path: Path, result: VerifyResult) -> Page:
    path = tmp_path / "report.html"
    reports.write_html(result, path)
    return page(path)[0]
