"""``qverify debug curve``: the cumulative error curve, its suggestion, and ``--apply`` on the
embedded emulated board (the damaged chain model of test_debug_sensitivity)."""
from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from qverify.client.accuracy.curve import curves, suggest
from test_debug_sensitivity import _analyse, chain, run_cli  # noqa: F401 (chain is a fixture)


def test_curve_climbs_to_the_float_model_and_suggests_the_damaged_nodes(chain):  # noqa: F811
    _, runner, result = _analyse(chain["float"], chain["bad"])
    node, weight, activation = curves(result, runner)
    cos = [p["cosine"] for p in node.points]
    assert len(cos) == len(result.nodes) + 1 and cos[0] == pytest.approx(result.baseline["cosine"])
    assert cos[-1] == pytest.approx(1.0, abs=1e-6)  # every node in float: the float model
    assert cos[2] - cos[0] > 0.8 * (1 - cos[0])  # the two damaged nodes carry most of the loss
    assert min(np.diff(cos[:3])) > 0  # and each of them helps
    assert weight.nodes[0] == "conv_c" and activation.nodes[0] == "conv_b"
    s = suggest(node, 0.9999)
    assert s.reached and set(s.nodes) >= {"conv_b", "conv_c"} and s.cosine >= 0.9999
    unreachable = suggest(weight, 0.999999)  # weights alone cannot undo the activation damage
    assert not unreachable.reached and unreachable.k >= 1


@pytest.mark.slow
def test_cli_curve_suggestion_compiles_and_apply_measures_on_the_board(chain, tmp_path, capsys):  # noqa: F811
    code, out, err = run_cli(capsys, "debug", "curve", "-m", f"{chain['bad']},{chain['float']}",
                             "--target-cosine", "0.9999", "--apply", "--json", tmp_path / "c.json",
                             "--html", tmp_path / "c.html")
    assert code == 0, err
    doc = json.loads((tmp_path / "c.json").read_text())
    s = doc["suggestion"]
    assert s["reached"] and s["command"] in " ".join(out.split())
    # The printed command compiles as printed: its node names are the ones --run-on-cpu accepts,
    # and the float model makes them float islands (what the curve measured).
    argv = shlex.split(s["command"])
    assert argv[:4] == ["qverify", "compile", str(chain["bad"]), "--run-on-cpu"]
    assert argv[argv.index("--float-model") + 1] == str(chain["float"])
    argv[argv.index("-o") + 1] = str(tmp_path / "model.bin")
    code, _, err = run_cli(capsys, *argv[1:])
    assert code == 0, err
    applied = doc["apply"]
    assert applied["board"] == "the embedded emulated board" and applied["nodes"] == s["nodes"]
    # As compiled, the board is about as far from the float model as quant.onnx is; with the
    # suggestion's float islands it gets measurably closer.
    assert applied["before"]["cosine"] == pytest.approx(doc["all_quantized"]["cosine"], abs=0.02)
    assert applied["cosine_gain"] > 0.001 and "measured on the embedded emulated board" in out
    svg = (tmp_path / "c.html").read_text()
    assert "<svg" in svg and svg.count("<polyline") == 3


def test_board_option_without_apply_is_refused(chain, capsys):  # noqa: F811
    code, out, err = run_cli(capsys, "debug", "curve", "-m", f"{chain['float']},{chain['bad']}", "-b", "127.0.0.1")
    assert code == 2 and "--apply" in err and out == ""


def test_compile_float_model_must_be_the_float_model(chain, tmp_path, capsys):  # noqa: F811
    out_bin = tmp_path / "model.bin"
    for given, says in ((chain["quant"], "not a float ONNX model"), (tmp_path / "missing.onnx", "no such file")):
        code, _, err = run_cli(capsys, "compile", chain["bad"], "--run-on-cpu", "conv_c", "--float-model", given,
                               "-o", out_bin)
        assert code == 2 and f"--float-model {given}: {says}" in err and len(err.strip().splitlines()) == 1
        assert not out_bin.exists()
