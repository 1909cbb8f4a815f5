"""Terminal tables at 80 and 200 columns: no figure is ever cut or folded, names are shortened only
between their tokens, and a narrow terminal gets one stacked block per row."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import synthetic
from qverify.client.term_tables import short_name

BOX = re.compile("[┃│┏┡└]")


def run_cli(columns: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    proc = subprocess.run([sys.executable, "-m", "qverify.client.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("narrow")
    quant = synthetic.quantize(synthetic.small_cnn(), folder / "small.quant.onnx")
    model = folder / "model.bin"
    run_cli(200, "compile", str(quant), "-o", str(model))
    return quant, model


@pytest.fixture(scope="module", params=[80, 200])
def verified(request, models, tmp_path_factory) -> tuple[int, str, dict]:
    quant, model = models
    report = tmp_path_factory.mktemp("report") / "report.json"
    proc = run_cli(request.param, "verify", "-m", f"{quant},{model}", "-s", "-r", "--isolate", "always",
                   "--json", str(report))
    return request.param, proc.stdout, json.loads(report.read_text(encoding="utf-8"))


def tensors_shown(report: dict) -> list[dict]:
    """The tensors of the pairs that get a table (a passing bit-exact pair has none)."""
    return [t for p in report["pairs"] if not (p["criterion"] == "bit-exact" and p["passed"])
            for t in p["outputs"] + p["layers"]]


def test_short_name_drops_whole_middle_tokens() -> None:
    name = "save_infer_model/conv2d_57.tmp_0/batch_norm/scale_0.tmp_1_QuantizeLinear_Output"
    short = short_name(name, 48)
    assert len(short) <= 48 and short.count("…") == 1
    head, tail = short.split("…")
    assert name.startswith(head) and name.endswith(tail) and head.endswith(("_", ".", "/", "-"))
    assert name[len(name) - len(tail) - 1] in "_./-"  # the tail starts at a token
    assert short_name("x", 1) == "x" and short_name("oneverylongtokenwithoutseparators", 10) == \
        "oneverylongtokenwithoutseparators"


def test_every_figure_is_printed_whole(verified) -> None:
    columns, out, report = verified
    shown = tensors_shown(report)
    assert shown, out
    for t in shown:
        if columns < 100:
            assert f"exact {t['exact']} · ±1 {t['off_by_one']} · >1 {t['beyond_one']} · max {t['max_lsb']} LSB" in out
        else:
            assert re.search(rf"│\s+{t['exact']}/{t['off_by_one']}/{t['beyond_one']} │", out), out
        assert f"{t['cosine']:.5f}" in out
    for layer in (row for p in report["pairs"] for row in p["isolation"]):
        assert f"max {layer['max_lsb']} LSB" in out


def test_names_are_whole_or_cut_between_tokens(verified) -> None:
    columns, out, report = verified
    lines = out.splitlines()
    for t in tensors_shown(report):
        name = t["name"]
        cells = [cell.strip() for line in lines for cell in re.split("[│]", line)] if columns >= 100 else \
            [line.strip() for line in lines]
        assert name in cells or any(
            "…" in c and name.startswith(c.split("…")[0]) and name.endswith(c.split("…")[1]) for c in cells), name


def test_layout_follows_the_width(verified) -> None:
    columns, out, _ = verified
    if columns < 100:
        assert not BOX.search(out), out
        assert all(len(line) <= columns for line in out.splitlines() if " · " in line), out
        assert re.search(r"^  exact \d+ · ±1 \d+ · >1 \d+ · max \d+ LSB · cos [\d.]+ · (PASS|FAIL)$", out, re.M), out
    else:
        assert BOX.search(out), out


@pytest.mark.parametrize("columns", [80, 200])
def test_info_is_stacked_when_narrow(models, columns) -> None:
    _, model = models
    out = run_cli(columns, "info", str(model)).stdout
    summary = json.loads(run_cli(columns, "info", "--json", str(model)).stdout)
    for layer in summary["layers"]:
        for output in layer["outputs"]:
            assert output["name"] in out and "x".join(map(str, output["shape"])) in out
    if columns < 100:
        assert not BOX.search(out) and "0 conv1  Conv (Conv) on npu" in out, out
    else:
        assert re.search(r"│ 0 │ conv1\s+│ Conv", out), out
