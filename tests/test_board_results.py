"""Every result the board returns is compared: plain runs, dumping runs and repeated runs.

A per-layer verifier compares the board's dumps; a board can dump the right tensors and
still answer wrongly when nobody is looking. The emulated board breaks on purpose
(``--fault``): ``stale:outputs`` returns the first run's outputs from the second run on
while its dumps stay fresh, ``dumponly:LAYER`` is right only while dumping, and
``nondeterministic:LAYER`` is one LSB off in every other run. Boards are real agents on
127.0.0.1 (the embedded one, and a ``qverify-agent`` subprocess); the model is a small
quantized CNN made with onnxruntime.quantization, run through real onnxruntime.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import qverify
import synthetic
from agent_harness import agent_pool  # noqa: F401  (fixture)
from qverify.agent.faults import parse_fault
from qverify.client.cli import main
from qverify.client.farm.reports import verify_result_from_dict
from qverify.client.reports import render_html
from qverify.simulator import load
from qverify.simulator.compiler import compile_model
from qverify.simulator.modelfile import save


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """quant.onnx, the model.bin compiled from it, and two input frames (different images)."""
    folder = tmp_path_factory.mktemp("board_results")
    onnx_path = synthetic.quantize(synthetic.small_cnn(seed=3), folder / "quant.onnx")
    save(compile_model(onnx_path), folder / "model.bin")
    frames = {}
    for i in range(2):
        np.save(folder / f"x{i}.npy", synthetic.calibration(seed=20 + i, count=1)[0]["x"])
        frames[f"x{i}"] = folder / f"x{i}.npy"
    return {"onnx": onnx_path, "bin": folder / "model.bin", **frames}


def models(files: dict[str, Path]) -> str:
    return f"{files['onnx']},{files['bin']}"


def output_name(files: dict[str, Path]) -> str:
    return load(files["bin"]).outputs[0].name


def add_layer(files: dict[str, Path]) -> str:
    """The tensor written by the skip connection's Add, a middle layer whose one-LSB errors
    reach this model's output on the test frames (not every layer's do: Softmax over five
    coarse classes absorbs some)."""
    return next(n.outputs[0] for n in load(files["bin"]).nodes if n.op == "Add")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), err


def test_a_stale_output_buffer_fails_with_r_and_the_plain_run_is_named(capsys, files):
    out = output_name(files)
    code, text, err = run_cli(capsys, "-m", models(files), "-r", "-i", files["x0"], "-i", files["x1"],
                              "--fault", "stale:outputs")
    assert code == 1, text + err
    # The dumps were fresh, so the dump comparison alone passes: that is the hole being closed.
    assert "board vs simulator: 1 output, 8 layers, bit-exact: PASSED" in text
    assert (f"board outputs differ between a plain run and a dumping run: frame 1, tensor {out}, "
            in text)
    assert "stale output buffer" in text
    assert "board (plain run) vs simulator: 1 output, not bit-exact" in text
    assert "board runs: " in text and "plain vs dumping run: 1" in text and "Traceback" not in err


def test_a_board_right_only_while_dumping_fails_with_r(capsys, files):
    out = output_name(files)
    code, text, err = run_cli(capsys, "-m", models(files), "-r", "-i", files["x0"],
                              "--fault", f"dumponly:{add_layer(files)}")
    assert code == 1, text + err
    assert "quant.onnx vs board: 1 output, 8 layers" in text and "board vs simulator: 1 output, 8 layers, " \
        "bit-exact: PASSED" in text
    assert (f"board outputs differ between a plain run and a dumping run: frame 0, tensor {out}, " in text)
    assert "the board is only right while dumping" in text


def test_a_nondeterministic_board_fails_with_repeat_naming_frame_and_tensor(capsys, files):
    args = ["-m", models(files), "-i", files["x0"], "--fault", f"nondeterministic:{add_layer(files)}"]
    code, text, _ = run_cli(capsys, *args)
    assert code == 0, text  # one run of one frame: the first run is right, nothing to see
    code, text, err = run_cli(capsys, *args, "--repeat", "3")
    assert code == 1, text + err
    assert f"non-deterministic board: frame 0, repeat 1 differs from repeat 0, tensor {output_name(files)}, " in text
    assert "repeat 2 differs" not in text  # runs 1 and 3 of the frame are right
    assert "board runs: 1 difference (non-deterministic: 1): FAILED" in text


def test_a_healthy_board_passes_with_r_and_repeat(capsys, files):
    code, text, err = run_cli(capsys, "-m", models(files), "-r", "--repeat", "3", "-i", files["x0"],
                              "-i", files["x1"])
    assert code == 0, text + err
    assert "quant.onnx vs board (plain run): 1 output" in text and "board (plain run) vs simulator: 1 output, " \
        "bit-exact: PASSED" in text
    assert "board runs: plain and dumping runs identical, 3 repeats identical (2 frames, bit for bit): PASSED" in text


def test_the_python_api_keeps_the_pairs_and_adds_the_plain_pairs_and_findings(files):
    result = qverify.verify([files["onnx"], files["bin"]], dump_all=True, repeat=2, inputs=[str(files["x0"])],
                            faults=[f"dumponly:{add_layer(files)}"])
    assert result.exit_code == 1 and not result.passed
    assert [(p.a, p.b, p.passed) for p in result.pairs] == [("quant.onnx", "board", True),
                                                           ("board", "simulator", True)]
    assert [(p.a, p.b) for p in result.plain_pairs] == [("quant.onnx", "board (plain run)"),
                                                       ("board (plain run)", "simulator")]
    assert not result.plain_pairs[1].passed  # the plain run is wrong, so it is not bit-exact
    (finding,) = result.board_findings  # the two plain runs agree with each other: deterministic
    assert (finding.kind, finding.frame, finding.tensor) == ("plain_vs_dump", 0, output_name(files))
    assert 0 < finding.elements <= finding.total == 5 and finding.max_lsb >= 1


def test_a_stale_board_on_a_qverify_agent_process(files, agent_pool):  # noqa: F811
    agent = agent_pool.start("--fault", "stale:outputs")
    inputs = [str(files["x0"]), str(files["x1"])]
    result = qverify.verify([files["onnx"], files["bin"]], f"127.0.0.1:{agent.port}", transport="grpc",
                            dump_all=True, inputs=inputs)
    assert result.exit_code == 1
    kinds = {(f.kind, f.frame, f.tensor) for f in result.board_findings}
    assert ("plain_vs_dump", 1, output_name(files)) in kinds
    assert ("returned_vs_dumped", 1, output_name(files)) in kinds  # the dumping run's own outputs were stale too
    assert all(p.passed for p in result.pairs)
    # The agent keeps the model loaded, so its outputs stay x0's: with x1 first, frame 0 is caught
    # too, and frame 1 (x0 itself) is right by accident.
    again = qverify.verify([files["onnx"], files["bin"]], f"127.0.0.1:{agent.port}", transport="grpc",
                           dump_all=True, inputs=inputs[::-1])
    assert again.exit_code == 1 and {f.frame for f in again.board_findings} == {0}


def test_reports_carry_the_board_findings(capsys, files, tmp_path):
    out = output_name(files)
    code, _, _ = run_cli(capsys, "-m", models(files), "-r", "-i", files["x0"], "-i", files["x1"],
                         "--fault", "stale:outputs", "--json", tmp_path / "r.json", "--junit", tmp_path / "r.xml",
                         "--html", tmp_path / "r.html")
    assert code == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "qverify.verify/1" and report["passed"] is False and report["exit_code"] == 1
    assert report["plain_run"] is True and report["repeat"] == 1
    assert [p["b"] for p in report["plain_pairs"]] == ["board (plain run)", "simulator"]
    plain_vs_dump = [f for f in report["board_findings"] if f["kind"] == "plain_vs_dump"]
    assert [(f["frame"], f["tensor"]) for f in plain_vs_dump] == [(1, out)]
    assert plain_vs_dump[0]["message"].startswith("board outputs differ between a plain run and a dumping run")

    junit = ET.parse(tmp_path / "r.xml").getroot()
    suite = next(s for s in junit.iter("testsuite") if s.get("name") == "board runs")
    failures = {c.get("name"): c.find("failure") for c in suite.iter("testcase")}
    assert failures["plain run vs dumping run"] is not None
    assert f"frame 1, tensor {out}" in failures["plain run vs dumping run"].get("message")
    assert int(junit.get("failures")) >= 2
    assert any(s.get("name") == "board (plain run) vs simulator" for s in junit.iter("testsuite"))

    html = (tmp_path / "r.html").read_text()
    assert 'id="board-runs"' in html and "plain_vs_dump" in html and "board (plain run) vs simulator" in html

    # A report read back (farm pages) keeps the findings, and with them the verdict.
    rebuilt = verify_result_from_dict(report)
    assert rebuilt.passed is False and rebuilt.board_findings[0].tensor == out
    assert 'id="board-runs"' in render_html(rebuilt)


@pytest.mark.parametrize("text, message", [
    ("stale:prob", "the only target is outputs"),
    ("flaky:conv1", "KIND one of"),
    ("dumponly:", "KIND one of"),
])
def test_bad_fault_specs_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_fault(text)


def test_new_fault_kinds_parse():
    assert str(parse_fault("stale:outputs")) == "stale:outputs"
    assert parse_fault("nondeterministic:conv1").kind == "nondeterministic"
    assert parse_fault("dumponly:conv1").target == "conv1"


def test_repeat_without_a_board_says_it_did_nothing(capsys, files):
    code, text, _ = run_cli(capsys, "-m", files["onnx"], "-s", "--repeat", "3")
    assert code == 0
    assert "--repeat runs a board several times; without a board side it does nothing" in text
    assert "board runs:" not in text
