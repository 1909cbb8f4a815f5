"""`qverify verify -r` collects every board dump's value distribution and each layer's saturation and
accumulator-overflow counts: the counts are the executor's own (the simulator's LayerStats for the
same frames), saturating layers are pointed out on the terminal (bounded), in JSON and in HTML,
and a model that saturates nothing gets no sat column.

Real parts: the zoo's PP-OCR DBNet text detector, quantized by onnxruntime and compiled, on the
embedded emulated board with real images; a small synthetic CNN for the clean case."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import synthetic
from qverify.client import cli
from qverify.client import inputs as inputs_mod
from qverify.client.verify import verify
from qverify.simulator import Simulator
from qverify.simulator.modelfile import save

KEY = "ppocr_det"


def qv(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out


@pytest.fixture(scope="module")
def det(tmp_path_factory, quantized, compiled, model_feeds) -> dict:
    folder = tmp_path_factory.mktemp("verify_dist")
    save(compiled(KEY).proto, folder / "model.bin")
    frames = []
    for i, feed in enumerate(model_feeds(KEY, 2)):
        np.save(folder / f"x{i}.npy", feed)
        frames.append(folder / f"x{i}.npy")
    return {"dir": folder, "bin": folder / "model.bin", "quant": quantized(KEY), "inputs": frames,
            "program": compiled(KEY)}


@pytest.fixture(scope="module")
def det_result(det):
    return verify([det["quant"], det["bin"]], dump_all=True, inputs=[str(p) for p in det["inputs"]])


@pytest.mark.slow
def test_saturation_counts_are_the_simulators_layer_stats_for_the_same_frames(det, det_result):
    program = det["program"]
    frames = inputs_mod.build_frames(inputs_mod.ports_from_program(program), [str(p) for p in det["inputs"]], 0)
    expected: dict[str, list[int]] = {}
    sim = Simulator(program)
    for frame in frames:
        for node, stats in zip(program.nodes, sim.run(frame.board).layers):
            assert stats.node == node.name
            counts = expected.setdefault(node.outputs[0], [0, 0])
            counts[0] += stats.saturated
            counts[1] += stats.acc_overflow
    got = {d.name: d for d in det_result.distributions if d.kind == "activation"}
    assert det_result.passed
    assert set(expected) <= set(got)
    assert {name: [got[name].saturated, got[name].acc_overflow] for name in expected} == expected
    assert sum(c[0] for c in expected.values()) > 0  # the detector does saturate: the comparison means something
    # Every dumped tensor is summarised over both frames, as int8 codes with its scale.
    tensor = program.tensors[program.nodes[0].outputs[0]]
    first = got[tensor.name]
    assert first.frames == 2 and first.values == 2 * int(np.prod(tensor.shape))
    assert first.scale == pytest.approx(tensor.scale) and first.zero_point == tensor.zero_point


@pytest.mark.slow
def test_weights_of_quant_onnx_are_added_and_a_plain_verify_collects_nothing(det, det_result):
    weights = [d for d in det_result.distributions if d.kind == "weight"]
    convs = sum(1 for n in det["program"].nodes if n.onnx_op == "Conv")
    assert len(weights) >= convs > 0
    assert all(len(w.channel_min) > 0 for w in weights)
    plain = verify([det["quant"], det["bin"]], inputs=[str(det["inputs"][0])])
    assert plain.distributions == []
    # Asked not to (a farm job's default), -r compares every layer and collects nothing.
    off = verify([det["quant"], det["bin"]], dump_all=True, distributions=False, inputs=[str(det["inputs"][0])])
    assert off.passed and off.distributions == [] and len(off.pairs[0].tensors) > 1


@pytest.mark.slow
def test_flagged_layers_are_on_the_terminal_bounded_and_in_json_and_html(det, det_result, capsys, tmp_path):
    flagged = [d for d in det_result.distributions if d.flags]
    assert len(flagged) > 8  # more than the terminal shows: the rest is counted
    worst = max(det_result.distributions, key=lambda d: d.saturation_fraction)
    assert worst.saturation_fraction > 0.01 and any(f.startswith("saturates") for f in worst.flags)
    json_out, html_out = tmp_path / "r.json", tmp_path / "r.html"
    code, out = qv(capsys, "verify", "-m", f"{det['quant']},{det['bin']}", "-r", *[a for p in det["inputs"] for a in ("-i", p)],
                   "--json", json_out, "--html", html_out)
    assert code == 0
    text = re.sub(r"\s+", " ", out)
    assert "board: saturation and accumulator overflow per layer" in text
    assert f"activation {worst.name}: saturates" in text
    assert f"… {len(flagged) - 8} more layers pointed out" in text
    assert len(re.findall(r"^(?:activation|weight) \S+: ", out, re.M)) == 8
    report = json.loads(json_out.read_text())
    by_name = {d["name"]: d for d in report["distributions"] if d["kind"] == "activation"}
    assert by_name[worst.name]["saturated"] == worst.saturated and by_name[worst.name]["flags"] == worst.flags
    html = html_out.read_text()
    assert 'id="distributions"' in html and worst.name in html
    assert html.index('id="distributions"') < html.rindex("max |diff|")  # beside the per-layer tables


@pytest.mark.slow
def test_a_model_that_saturates_nothing_has_no_sat_column(tmp_path, capsys):
    quant = synthetic.quantize(synthetic.small_cnn(seed=3), tmp_path / "quant.onnx")
    assert cli.main(["compile", str(quant), "-o", str(tmp_path / "model.bin")]) == 0
    inputs = []
    for i, feed in enumerate(synthetic.calibration(seed=1, count=2)):
        np.save(tmp_path / f"x{i}.npy", feed["x"] * np.float32(0.5))  # well inside the calibrated range
        inputs += ["-i", tmp_path / f"x{i}.npy"]
    code, out = qv(capsys, "verify", "-m", f"{quant},{tmp_path / 'model.bin'}", "-r", *inputs,
                   "--json", tmp_path / "r.json")
    assert code == 0
    assert "saturation and accumulator overflow" not in out
    assert not re.search(r"\bsat \d|: saturates \d", out)
    dists = json.loads((tmp_path / "r.json").read_text())["distributions"]
    assert dists and all(d["saturation_fraction"] == 0 and d["acc_overflow"] == 0 for d in dists)
    # Fault injection: the same model fed twice the calibrated range does saturate, and says so.
    for i, feed in enumerate(synthetic.calibration(seed=1, count=2)):
        np.save(tmp_path / f"x{i}.npy", feed["x"] * np.float32(3.0))
    code, out = qv(capsys, "verify", "-m", f"{quant},{tmp_path / 'model.bin'}", "-r", *inputs)
    assert "board: saturation and accumulator overflow per layer" in out
    assert re.search(r"\bsat \d", out) and re.search(r"^activation \S+: saturates \d", out, re.M)
