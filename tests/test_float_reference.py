"""`qverify -m float.onnx,quant.onnx,model.bin`: the float model as the golden reference.

Real zoo models (ppocr_cls, and ppocr_det for the detector), real onnxruntime, the embedded
emulated board. The float model is recognised by content, must be the model quant.onnx was
quantized from, and says where accuracy was lost: quantization (a warning of its own, never a
failure) or the compiler/board (the existing verdict).
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import qverify
from qverify.client.cli import main
from qverify.client.float_results import BOARD_LOSS, NO_LOSS, QUANT_LOSS
from qverify.client.modelfiles import ModelFileError, classify
from qverify.simulator.compiler import compile_model
from qverify.simulator.modelfile import save

KEY = "ppocr_cls"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), err


def coarsen_first_conv_output(src: Path, dst: Path, factor: float = 24.0) -> str:
    """A quant.onnx whose first Conv output is quantized with a ``factor`` times coarser scale (the
    Q and DQ share it, so the damaged model is self-consistent); returns the damaged tensor."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in producers
                and producers[n.input[0]].op_type == "Conv")
    scale = inits[node.input[1]]
    scale.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(scale) * factor).astype(np.float32), scale.name))
    onnx.save(model, str(dst))
    return node.output[0]


@pytest.fixture(scope="module")
def cls(tmp_path_factory, quantized, float_model, model_feeds) -> dict[str, Path]:
    """float.onnx, quant.onnx, model.bin, a damaged quant.onnx with its model.bin, two real inputs."""
    folder = tmp_path_factory.mktemp("float_ref")
    files = {"float": float_model(KEY), "quant": quantized(KEY)}
    save(compile_model(files["quant"]), folder / "model.bin")
    files["bin"] = folder / "model.bin"
    files["bad_quant"] = folder / "coarse.onnx"
    files["bad_tensor"] = Path(coarsen_first_conv_output(files["quant"], files["bad_quant"]))
    save(compile_model(files["bad_quant"]), folder / "coarse.bin")
    files["bad_bin"] = folder / "coarse.bin"
    for i, feed in enumerate(model_feeds(KEY, 2)):
        np.save(folder / f"x{i}.npy", feed)
        files[f"x{i}"] = folder / f"x{i}.npy"
    return files


def models(*paths: Path) -> str:
    return ",".join(str(p) for p in paths)


# ----------------------------------------------------------------------------- recognition


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_the_float_model_is_recognised_by_content_in_any_order(cls, order):
    paths = [cls["float"], cls["quant"], cls["bin"]]
    files = classify([paths[i] for i in order])
    assert (files.float, files.onnx, files.bin) == (cls["float"], cls["quant"], cls["bin"])


def test_two_float_models_or_a_float_model_alone_are_refused_with_a_sentence(cls, capsys):
    with pytest.raises(ModelFileError, match="two float ONNX files"):
        classify([cls["float"], cls["float"], cls["quant"]])
    code, _, err = run_cli(capsys, "-m", models(cls["float"], cls["bin"]))
    assert code == 2
    assert "give that too" in err and "quant.onnx" in err and "Traceback" not in err


def test_another_zoo_models_float_is_mismatched(cls, float_model, capsys):
    code, out, err = run_cli(capsys, "-m", models(float_model("ppocr_det"), cls["quant"], cls["bin"]))
    assert code == 2, out + err
    assert "do not belong together" in out and "MISMATCHED" in out


def test_a_float_model_with_other_weights_is_mismatched_naming_the_weights(cls, tmp_path, capsys):
    model = onnx.load(str(cls["float"]))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:  # "another version of the model": retrained weights
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.ndim == 4:
            init.CopyFrom(numpy_helper.from_array(rng.standard_normal(array.shape).astype(np.float32), init.name))
    onnx.save(model, str(tmp_path / "retrained.onnx"))
    code, out, err = run_cli(capsys, "-m", models(tmp_path / "retrained.onnx", cls["quant"], cls["bin"]))
    assert code == 2, out + err
    assert "weights of" in out and "another version of the model" in out


# ----------------------------------------------------------------------------- verdicts


def test_a_healthy_board_with_the_float_model_passes_and_the_float_line_is_ok(cls, capsys, tmp_path):
    code, out, err = run_cli(capsys, "-m", models(cls["bin"], cls["float"], cls["quant"]), "-r",
                             "-i", cls["x0"], "--json", tmp_path / "r.json")
    assert code == 0, out + err
    assert f"{cls['float'].name} vs {cls['quant'].name}: output cosine" in out and ": OK" in out
    assert "triage: no loss beyond the thresholds" in out
    ref = json.loads((tmp_path / "r.json").read_text())["float_reference"]
    assert ref["verdict"] == "ok" and ref["triage"] == NO_LOSS
    assert ref["output_cosine"] >= 0.98 and ref["integer_output_cosine"] >= 0.98
    assert len(ref["layers"]) > 50  # every layer, three ways
    assert all(layer["board_cosine"] is not None for layer in ref["layers"])


@pytest.mark.slow
def test_a_damaged_quant_onnx_passes_on_the_board_but_warns_of_quantization_loss(cls, capsys, tmp_path):
    code, out, err = run_cli(capsys, "-m", models(cls["float"], cls["bad_quant"], cls["bad_bin"]), "-r",
                             "-i", cls["x0"], "-i", cls["x1"], "--json", tmp_path / "r.json",
                             "--junit", tmp_path / "r.xml", "--html", tmp_path / "r.html")
    assert code == 0, out + err  # the board computes what the (damaged) quant.onnx computes
    assert "vs board: 1 output, 112 layers, consistent" in out
    assert "quantization loss (first layer below: Conv@0): WARNING" in out
    assert "triage: quantization loss" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["passed"] is True and result["exit_code"] == 0
    ref = result["float_reference"]
    assert ref["verdict"] == "warning" and ref["triage"] == QUANT_LOSS
    assert ref["output_cosine"] < 0.98
    assert ref["first_below"] == str(cls["bad_tensor"]) and ref["first_below_producer"] == "Conv@0"
    damaged = next(r for r in ref["layers"] if r["name"] == str(cls["bad_tensor"]))
    assert damaged["triage"] == "quant" and damaged["board_ok"] is True
    suites = ET.parse(tmp_path / "r.xml").getroot()
    assert suites.get("failures") == "0" and suites.get("skipped") == "1"
    skipped = suites.find(".//testcase[@name='quantization loss']/skipped")
    assert skipped is not None and skipped.get("type") == "warning" and "quantization loss" in skipped.get("message")
    page = (tmp_path / "r.html").read_text()
    assert 'class="badge WARNING"' in page and 'id="float-reference"' in page


def test_the_threshold_is_an_option(cls):
    result = qverify.verify([cls["float"], cls["bad_quant"], cls["bad_bin"]], inputs=[str(cls["x0"])],
                            min_float_cosine=0.0)
    assert result.passed and result.float_reference.verdict == "ok"
    assert "-r names the first layer below" not in result.float_reference.verdict_line()


def test_a_faulty_board_with_the_float_model_fails_triaged_as_board_loss(cls, capsys, tmp_path):
    tensor = "batch_norm_0.tmp_2_QuantizeLinear_Output"
    code, out, err = run_cli(capsys, "-m", models(cls["float"], cls["quant"], cls["bin"]), "-r", "-i", cls["x0"],
                             "--fault", f"lsb:{tensor}", "--json", tmp_path / "r.json")
    assert code == 1, out + err
    assert "triage: compiler/board loss" in out
    ref = json.loads((tmp_path / "r.json").read_text())["float_reference"]
    assert ref["verdict"] == "ok" and ref["triage"] == BOARD_LOSS
    assert [r["name"] for r in ref["layers"] if r["triage"] == "board"] == [tensor]


def test_float_and_quant_with_the_simulator_only(cls):
    result = qverify.verify([cls["quant"], cls["float"]], run_sim=True, inputs=[str(cls["x0"])])
    assert result.passed
    ref = result.float_reference
    assert ref.integer_label == "simulator" and ref.integer_output_cosine is not None and ref.verdict == "ok"


def test_a_bad_threshold_is_one_line_exit_2(cls, capsys):
    code, _, err = run_cli(capsys, "-m", models(cls["float"], cls["quant"], cls["bin"]), "--min-float-cosine", "1.5")
    assert code == 2 and "--min-float-cosine" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_detector_with_its_float_model(quantized, float_model, model_feeds, tmp_path):
    quant = quantized("ppocr_det")
    save(compile_model(quant), tmp_path / "det.bin")
    np.save(tmp_path / "x.npy", model_feeds("ppocr_det", 1)[0])
    result = qverify.verify([float_model("ppocr_det"), quant, tmp_path / "det.bin"], inputs=[str(tmp_path / "x.npy")],
                            dump_all=True)
    assert result.exit_code == 0, [p.verdict_line() for p in result.pairs]
    ref = result.float_reference
    assert ref is not None and ref.layers and ref.verdict in ("ok", "warning")
    assert ref.integer_output_cosine is not None and ref.integer_output_cosine > 0.9


def test_a_report_read_back_keeps_the_float_reference(cls):
    from qverify.client.results import VerifyResult

    result = qverify.verify([cls["float"], cls["quant"], cls["bin"]], inputs=[str(cls["x0"])])
    data = json.loads(json.dumps(result.to_dict()))
    again = VerifyResult(float_reference=data["float_reference"])
    assert again.float_reference.verdict_line() == result.float_reference.verdict_line()
