"""Farm reports: JSON is ``to_dict()``, JUnit has a suite per board, HTML is a matrix linking per-pair pages."""
from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

import qverify
import synthetic
from qverify.client.farm import reports as farm_reports
from qverify.client.farm.outcomes import (CONSISTENT, INCONSISTENT, INFRA, BoardStatus, FarmResult, JobResult, Latency,
                                       Regression)
from qverify.simulator import load
from qverify.simulator.compiler import compile_model
from qverify.simulator.modelfile import save

NASTY_BOARD = 'lab<&>"2"'
NASTY_MODEL = "det<&>'v2"
MODELS = ("small_cnn", NASTY_MODEL)
BOARDS = ("rk3588-01", NASTY_BOARD, "hailo-03", "imx8-04")
VERSIONS = {"agent": "0.1.0", "backend": "sim", "runtime": "qverify-sim 0.1.0", "driver": "", "firmware": "",
            "target": "sim-a16"}


@pytest.fixture(scope="module")
def verify_reports(tmp_path_factory) -> dict:
    """Real reports from the embedded emulated board: a clean run, and one with a fault in a middle layer."""
    folder = tmp_path_factory.mktemp("farm_reports")
    onnx_path = synthetic.quantize(synthetic.small_cnn(seed=3), folder / "quant.onnx")
    save(compile_model(onnx_path), folder / "model.bin")
    nodes = [n for n in load(folder / "model.bin").nodes if not n.on_cpu]
    node = nodes[len(nodes) // 2]
    good = qverify.verify([onnx_path, folder / "model.bin"], dump_all=True)
    bad = qverify.verify([onnx_path, folder / "model.bin"], dump_all=True, faults=[f"lsb:{node.outputs[0]}"])
    assert good.exit_code == 0 and bad.exit_code == 1
    return {"good": good.to_dict(), "bad": bad.to_dict(), "node": bad.first_divergent.producer,
            "tensor": bad.first_divergent.name}


def consistent(board: str, model: str, report: dict, median: float = 2.5) -> JobResult:
    return JobResult(board, model, CONSISTENT, message="quant.onnx vs board: PASSED", seconds=1.25,
                     min_exact_fraction=0.97, min_cosine=0.9999, max_lsb=1, versions=dict(VERSIONS),
                     latency=Latency(20, 2.0, median, 3.0, 3.5, 2.6), model_sha256={"bin": "cd" * 32}, report=report)


@pytest.fixture
def farm(verify_reports) -> FarmResult:
    good, bad = verify_reports["good"], verify_reports["bad"]
    offline = "labgrid place imx8-04 cannot be acquired: acquired by ci-runner-7"
    jobs = [consistent("rk3588-01", "small_cnn", good, median=4.0),
            JobResult("rk3588-01", NASTY_MODEL, INCONSISTENT, message=bad["pairs"][1]["verdict"], seconds=2.5,
                      min_exact_fraction=0.5, min_cosine=0.93, max_lsb=1, first_divergent=verify_reports["node"],
                      first_divergent_tensor=verify_reports["tensor"], versions=dict(VERSIONS), report=bad),
            consistent(NASTY_BOARD, "small_cnn", good), consistent(NASTY_BOARD, NASTY_MODEL, good),
            JobResult("hailo-03", "small_cnn", INFRA, message="transfer cut: connection reset by peer", attempts=3,
                      seconds=9.0),
            consistent("hailo-03", NASTY_MODEL, good),
            *(JobResult("imx8-04", m, INFRA, message=offline, skipped=True, seconds=0.0) for m in MODELS)]
    boards = [BoardStatus("rk3588-01", "10.0.0.11:7060", "rk-place", versions=dict(VERSIONS)),
              BoardStatus(NASTY_BOARD, "10.0.0.12:7060", versions=dict(VERSIONS)),
              BoardStatus("hailo-03", "10.0.0.13:7060"),
              BoardStatus("imx8-04", "", "imx8-04", online=False, error=offline)]
    regressions = [Regression("rk3588-01", NASTY_MODEL, "newly_inconsistent", "was consistent in run 41", "run-41"),
                   Regression("rk3588-01", "small_cnn", "latency_up", "latency median 2.5 -> 4.0 ms (+60%)", "run-41"),
                   Regression(NASTY_BOARD, "small_cnn", "agreement_dropped", "min exact 99% -> 97%", "run-41")]
    return FarmResult("run-42", "farm<&>.toml", "2025-01-02T03:04:05Z", "2025-01-02T03:09:00Z", boards, jobs,
                      regressions)


def trend_rows() -> list[dict]:
    return [{"started": f"2025-01-0{d}T03:00:00Z", "board": "rk3588-01", "model": NASTY_MODEL,
             "outcome": INCONSISTENT if d == 4 else CONSISTENT, "min_exact_fraction": 0.99 - d / 100,
             "min_cosine": 0.9999, "latency_median_ms": 2.0 + d / 10} for d in (1, 2, 3, 4)]


class Page(HTMLParser):
    """Matrix cells (class, href), every href/src, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict] = []
        self.refs: list[str] = []
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "td" and "cell" in attrs.get("class", "").split():
            self.cells.append({"class": attrs["class"].split(), "href": None})
        if tag == "a" and self.cells and self.cells[-1]["href"] is None:
            self.cells[-1]["href"] = attrs.get("href")
        self.refs += [v for k, v in attrs.items() if k in ("href", "src", "xlink:href") and v]

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


# ---------------------------------------------------------------- JSON

def test_json_is_to_dict_and_non_finite_numbers_are_null(farm, tmp_path):
    farm.jobs[0].min_cosine = math.nan
    farm_reports.write_farm_json(farm, tmp_path / "farm.json")
    data = json.loads((tmp_path / "farm.json").read_text(encoding="utf-8"))
    assert data["schema"] == "qverify.farm/1" and data["exit_code"] == 3
    assert data["counts"] == {CONSISTENT: 4, INCONSISTENT: 1, INFRA: 3}
    assert data["jobs"][0]["min_cosine"] is None
    farm.jobs[0].min_cosine = None
    assert data == json.loads(json.dumps(farm.to_dict()))
    assert data["jobs"][1]["report"]["pairs"][1]["first_divergent"]["producer"] == farm.jobs[1].first_divergent
    assert os.listdir(tmp_path) == ["farm.json"]


def test_a_report_rebuilt_from_its_json_is_the_same_result(verify_reports):
    for key in ("good", "bad"):
        report = json.loads(json.dumps(verify_reports[key]))
        assert farm_reports.verify_result_from_dict(report).to_dict() == verify_reports[key]


# ---------------------------------------------------------------- JUnit

def test_junit_has_a_suite_per_board_and_a_testcase_per_model(farm, tmp_path):
    farm_reports.write_farm_junit(farm, tmp_path / "farm.xml")
    root = ET.parse(tmp_path / "farm.xml").getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == list(BOARDS)
    for suite in suites:
        cases = suite.findall("testcase")
        assert [(c.get("classname"), c.get("name")) for c in cases] == [(suite.get("name"), m) for m in MODELS]
        assert suite.get("tests") == "2"
        assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases)
        assert int(suite.get("errors")) == sum(c.find("error") is not None for c in cases)
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("8", "2", "3", "0")
    props = {p.get("name"): p.get("value") for p in suites[0].iter("property")}
    assert props["board.address"] == "10.0.0.11:7060" and props["board.place"] == "rk-place"
    assert props["version.agent"] == "0.1.0" and props["version.target"] == "sim-a16"
    assert props["qverify.version"] == qverify.__version__ and "version.firmware" in props
    assert suites[0].find("testcase").get("time") == "1.250"


def test_junit_failures_errors_and_regressions(farm, verify_reports):
    root = ET.fromstring(farm_reports.render_farm_junit(farm))
    case = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    failure = case["rk3588-01", NASTY_MODEL].find("failure")
    assert failure.get("message").startswith("REGRESSION: first divergent layer " + verify_reports["node"])
    assert verify_reports["tensor"] in failure.get("message") and "FAILED" in failure.get("message")
    assert "was consistent in run 41" in case["rk3588-01", NASTY_MODEL].find("system-out").text
    latency = case["rk3588-01", "small_cnn"].find("failure")
    assert latency.get("type") == "regression.latency_up" and latency.get("message").startswith("REGRESSION:")
    drift = case[NASTY_BOARD, "small_cnn"]
    assert drift.find("failure") is None and "agreement_dropped" in drift.find("system-out").text
    for model in MODELS:  # an offline board's jobs are the lab's errors, not skipped tests
        offline = case["imx8-04", model]
        assert offline.find("skipped") is None and offline.find("failure") is None
        error = offline.find("error")
        assert error.get("type") == "infra.offline" and "the lab is at fault" in error.get("message")
        assert "board offline" in error.get("message") and "ci-runner-7" in error.get("message")
    retried = case["hailo-03", "small_cnn"].find("error")
    assert retried.get("type") == "infra" and "3 attempt" in retried.get("message")
    assert case[NASTY_BOARD, NASTY_MODEL].find("failure") is None and case[NASTY_BOARD, NASTY_MODEL].find("error") is None


# ---------------------------------------------------------------- HTML

def test_html_matrix_links_every_pair_to_its_own_report(farm, tmp_path):
    farm_reports.write_farm_html(farm, tmp_path / "farm.html")
    page = parse((tmp_path / "farm.html").read_text(encoding="utf-8"))
    assert len(page.cells) == len(BOARDS) * len(MODELS)
    expected = [job.outcome for job in farm.jobs]  # the jobs are listed board by board, model by model
    assert [next(c for c in cell["class"] if c != "cell") for cell in page.cells] == expected
    for job, cell in zip(farm.jobs, page.cells):
        if job.report is None:
            assert cell["href"] is None
            continue
        target = tmp_path / unquote(cell["href"])
        assert target.parent == tmp_path / "farm.pairs" and target.is_file()
        text = target.read_text(encoding="utf-8")
        for pair in job.report["pairs"]:
            assert escape(pair["verdict"]) in text
        assert escape(job.board) in text and escape(job.model) in text
        assert 'href="../farm.html"' in text
    assert sorted(os.listdir(tmp_path)) == ["farm.html", "farm.pairs"]
    assert len(os.listdir(tmp_path / "farm.pairs")) == sum(j.report is not None for j in farm.jobs)


def test_html_header_boards_and_regressions(farm):
    text = farm_reports.render_farm_html(farm)
    words = " ".join("".join(parse(text).text).split())
    assert "INFRASTRUCTURE" in words and "run-42" in words and qverify.__version__ in words
    assert "4 consistent · 1 inconsistent · 3 infrastructure" in words
    assert "offline" in words and "ci-runner-7" in words and "rk-place" in words
    assert "latency median 2.5 -> 4.0 ms" in words and "newly_inconsistent" in words
    assert "<svg" not in text  # no trend given


def test_html_blank_cell_for_a_pair_not_run(farm):
    farm.jobs = [j for j in farm.jobs if (j.board, j.model) != ("hailo-03", NASTY_MODEL)]
    page = parse(farm_reports.render_farm_html(farm))
    assert len(page.cells) == 8 and sum("empty" in c["class"] for c in page.cells) == 1


def test_html_trend_sparklines_mark_failing_runs(farm, tmp_path):
    farm_reports.write_farm_html(farm, tmp_path / "farm.html", trend=trend_rows())
    text = (tmp_path / "farm.html").read_text(encoding="utf-8")
    assert text.count('<svg class="spark"') == 2  # latency and exact fraction of the one series
    assert text.count('fill="#c62828"') == 2  # the inconsistent run, in both sparklines
    assert "<polyline" in text and escape(NASTY_MODEL) in text


def test_html_trend_marks_an_offline_night_instead_of_bridging_it(farm):
    rows = trend_rows()
    rows[2].update(outcome=INFRA, skipped=True, min_exact_fraction=None, latency_median_ms=None, min_cosine=None)
    text = farm_reports.render_farm_html(farm, trend=rows)
    latency = text.split('<svg class="spark"')[1].split("</svg>")[0]
    lines = [line.split('points="')[1].split('"')[0].split() for line in latency.split("<polyline")[1:]]
    assert [len(points) for points in lines] == [2, 1] or [len(points) for points in lines] == [2]
    assert latency.count('class="gap"') == 1 and "2025-01-03T03:00:00Z: no latency median (board offline)" in latency
    gap_x = float(latency.split('class="gap" x1="')[1].split('"')[0])
    drawn = [float(point.split(",")[0]) for line in lines for point in line]
    assert all(abs(x - gap_x) > 1 for x in drawn)  # no point at the offline night...
    assert not any(a < gap_x < b for line in lines for a, b in zip(
        [float(p.split(",")[0]) for p in line], [float(p.split(",")[0]) for p in line][1:]))  # ...nor a line across it
    assert "1 run without a value" in text


def test_html_escapes_names_and_references_nothing_outside(farm, tmp_path):
    farm_reports.write_farm_html(farm, tmp_path / "farm.html", trend=trend_rows())
    pages = [tmp_path / "farm.html", *sorted((tmp_path / "farm.pairs").iterdir())]
    for path in pages:
        text = path.read_text(encoding="utf-8")
        assert NASTY_BOARD not in text and NASTY_MODEL not in text and "farm<&>" not in text
        page = parse(text)
        assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
        assert all(not ref.startswith(("http:", "https:", "//", "data:", "javascript:")) for ref in page.refs)
        assert all(ref.startswith("#") or (path.parent / unquote(ref)).exists() for ref in page.refs)
    assert escape(NASTY_BOARD) in pages[0].read_text(encoding="utf-8")


def test_pair_file_names_are_safe_and_distinct(farm):
    names = farm_reports.pair_file_names(farm)
    assert len(set(names.values())) == len(names) == 5
    assert names["rk3588-01", "small_cnn"] == "rk3588-01__small_cnn.html"
    assert all("/" not in n and "<" not in n and not n.startswith(".") for n in names.values())


# ---------------------------------------------------------------- atomic writes

def test_a_failure_mid_write_leaves_nothing_behind(farm, tmp_path, monkeypatch):
    written = []

    def fail_on_second(path, text):
        if written:
            raise OSError("disk full")
        written.append(path)
        Path(path).write_text(text, encoding="utf-8")

    monkeypatch.setattr(farm_reports, "_write_file", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        farm_reports.write_farm_html(farm, tmp_path / "farm.html")
    assert written and os.listdir(tmp_path) == []

    monkeypatch.setattr(farm_reports, "render_farm_junit", lambda result: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        farm_reports.write_farm_junit(farm, tmp_path / "farm.xml")
    assert os.listdir(tmp_path) == []


def test_a_failed_rewrite_keeps_the_previous_report_and_a_new_one_replaces_it_whole(farm, tmp_path, monkeypatch):
    farm_reports.write_farm_html(farm, tmp_path / "farm.html")
    before = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "farm.pairs").iterdir()}
    page = (tmp_path / "farm.html").read_text(encoding="utf-8")
    real_replace = os.replace

    def fail_on_page(src, dst):
        if Path(dst).name == "farm.html":
            raise OSError("read-only")
        real_replace(src, dst)

    monkeypatch.setattr(farm_reports.os, "replace", fail_on_page)
    farm.run_id = "run-43"
    with pytest.raises(OSError, match="read-only"):
        farm_reports.write_farm_html(farm, tmp_path / "farm.html")
    monkeypatch.setattr(farm_reports.os, "replace", real_replace)
    assert sorted(os.listdir(tmp_path)) == ["farm.html", "farm.pairs"]
    assert (tmp_path / "farm.html").read_text(encoding="utf-8") == page
    assert {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "farm.pairs").iterdir()} == before

    farm.jobs = [j for j in farm.jobs if j.board != NASTY_BOARD]  # fewer pairs: stale pages go
    farm_reports.write_farm_html(farm, tmp_path / "farm.html")
    assert "run-43" in (tmp_path / "farm.html").read_text(encoding="utf-8")
    assert len(os.listdir(tmp_path / "farm.pairs")) == 3
    assert sorted(os.listdir(tmp_path)) == ["farm.html", "farm.pairs"]
