"""A text detector end to end: PP-OCRv4's DBNet (``ppocr_det``), shipped in rapidocr-onnxruntime.

The classifiers of the zoo end in a softmax over a few classes; the detector ends in a
per-pixel sigmoid (1, 1, 96, 160) after two ConvTranspose upsamplings, and has Resize,
HardSigmoid squeeze-excite blocks and a BatchNormalization the compiler leaves on the CPU.
It is quantized with onnxruntime.quantization, compiled, and verified layer by layer
(``-r``) on real text regions of scikit-image's page on the embedded emulated board.

What a healthy board gives (QDQ and QOperator, uint8 and int8 activations, per-channel and
per-tensor weights, both ``--ort-opt`` levels; 3 real images, in parentheses all 8):

* board vs simulator: bit-exact, every tensor;
* every intermediate tensor vs quant.onnx: cosine >= 0.9895 (default rule: 0.95);
* the sigmoid's input (last ConvTranspose) vs quant.onnx: at most 3-4 LSB, cosine >= 0.9998;
* the output vs quant.onnx: 95-131 LSB off at worst, cosine 0.99899-0.99923
  (0.9902-0.9973: the regions with little text weigh the few differing pixels more).

The output is not wrong: its input scale is about 0.79 (logits quantized over +-100) and
its output scale 1/255, so near 0 one input LSB moves the sigmoid by about 48 output
LSB; the board's 3-LSB drift at the logits becomes 100+ LSB at the probabilities. The
binarised text map (threshold 0.3, rapidocr's; QDQ uint8 per-channel, 8 images) of the
board differs from onnxruntime's on 0.07-0.5 % of the pixels, while quant.onnx itself
differs from the float model on 1.4-6.8 %. The verdict policy therefore judges an output
written by a lookup table through the table (docs/verdict.md): its input must agree like an
output, and each element must be the table's value for an input within that drift.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import qverify
from qverify.client.results import Tolerances
from qverify.simulator import save

KEY = "ppocr_det"
# The settings verified: the default (QDQ, uint8 activations, per-channel weights) and the
# other format with the other activation type and per-tensor weights.
SETTINGS = [("QDQ", "QUInt8", True), ("QOperator", "QInt8", False)]
IMAGES = 3  # per verification; the default-policy test runs all 8


def _label(setting) -> str:
    fmt, act, per_channel = setting
    return f"{fmt}-{act}-{'pc' if per_channel else 'pt'}"


@pytest.fixture(scope="module")
def image_files(model_feeds, tmp_path_factory) -> list[str]:
    """The ONNX model's inputs for the 8 real text regions, as .npy files (``-i``)."""
    folder = tmp_path_factory.mktemp("det_inputs")
    files = []
    for i, feed in enumerate(model_feeds(KEY, 8)):
        np.save(folder / f"page{i}.npy", feed)
        files.append(str(folder / f"page{i}.npy"))
    return files


@pytest.fixture(scope="module")
def model_files(quantized, compiled, tmp_path_factory):
    """``model_files(fmt, act, per_channel)`` -> (quant.onnx, model.bin), made once."""
    folder = tmp_path_factory.mktemp("det_models")
    cache: dict[tuple, tuple[Path, Path]] = {}

    def get(fmt: str, act: str, per_channel: bool) -> tuple[Path, Path]:
        ident = (fmt, act, per_channel)
        if ident not in cache:
            onnx_path = quantized(KEY, fmt, act, per_channel)
            model_bin = folder / f"{onnx_path.stem}.model.bin"
            save(compiled(KEY, fmt, act, per_channel).proto, model_bin)
            cache[ident] = (onnx_path, model_bin)
        return cache[ident]

    return get


def test_zoo_preprocessing_is_rapidocrs_own(model_images):
    """zoo.normalize equals rapidocr's DetPreProcess with the mean and std of its config.yaml."""
    images = model_images(KEY, 8)  # skips, with the install command, when the zoo packages are missing
    from qverify.client import zoo

    yaml = pytest.importorskip("yaml")
    det_utils = pytest.importorskip("rapidocr_onnxruntime.ch_ppocr_det.utils")
    config = yaml.safe_load((zoo.locate(KEY).parent.parent / "config.yaml").read_text())["Det"]
    pre = det_utils.DetPreProcess(config["limit_side_len"], config["limit_type"], config["mean"], config["std"])
    assert len(images) == 8 and all(img.shape == (1, 96, 160, 3) and img.dtype == np.uint8 for img in images)
    assert len({img.tobytes() for img in images}) == 8
    for image in images[:2]:
        theirs = pre.permute(pre.normalize(image[0]))[None].astype(np.float32)
        np.testing.assert_allclose(zoo.normalize(KEY, image), theirs, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("setting", SETTINGS, ids=_label)
def test_healthy_detector_differs_from_onnx_only_where_the_output_sigmoid_amplifies_drift(
        setting, model_files, image_files):
    onnx_path, model_bin = model_files(*setting)
    for ort_opt in ("all", "disabled") if setting == SETTINGS[0] else ("all",):
        result = qverify.verify([onnx_path, model_bin], dump_all=True, inputs=image_files[:IMAGES],
                                ort_opt=ort_opt)
        assert result.passed and result.exit_code == 0, [p.verdict_line() for p in result.pairs]
        onnx_board, board_sim = result.pairs[0], result.pairs[-1]
        assert (onnx_board.a, onnx_board.b, board_sim.a, board_sim.b) == (onnx_path.name, "board", "board",
                                                                          "simulator")
        assert board_sim.criterion == "bit-exact" and len(board_sim.layers) > 100
        assert len(onnx_board.layers) > 100
        assert min(t.cosine for t in onnx_board.layers) > 0.98
        logits = next(t for t in reversed(onnx_board.layers) if t.op == "ConvTranspose")
        assert logits.max_lsb <= 4 and logits.cosine > 0.9995
        (probabilities,) = onnx_board.outputs
        assert probabilities.op == "Sigmoid" and probabilities.cosine > 0.998
        # Drift at the logits, amplified by the sigmoid, accepted through the table.
        assert probabilities.max_lsb > Tolerances().max_lsb and "lookup table" in probabilities.reason


@pytest.mark.slow
def test_default_policy_passes_a_healthy_detector(model_files, image_files):
    onnx_path, model_bin = model_files(*SETTINGS[0])
    result = qverify.verify([onnx_path, model_bin], dump_all=True, inputs=image_files)
    assert result.pairs[-1].passed, result.pairs[-1].verdict_line()  # board vs simulator: bit-exact
    assert result.passed, [p.verdict_line() for p in result.pairs]


@pytest.mark.slow
def test_a_fault_in_a_middle_conv_of_the_detector_is_named(model_files, compiled, image_files):
    onnx_path, model_bin = model_files(*SETTINGS[0])
    convs = [n for n in compiled(KEY, *SETTINGS[0]).nodes if n.op == "Conv"]
    node = convs[len(convs) // 2]
    result = qverify.verify([onnx_path, model_bin], dump_all=True, inputs=image_files[:1],
                            faults=[f"bitflip:{node.outputs[0]}"])
    assert result.exit_code == 1
    assert result.first_divergent.producer == node.name
    board_sim = result.pairs[-1]
    assert board_sim.criterion == "bit-exact" and not board_sim.passed
    assert board_sim.first_divergent.producer == node.name


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["output", "logits"])
def test_a_fault_at_the_sigmoid_is_caught_by_onnx_alone(model_files, compiled, image_files, layer):
    """Without the simulator (--no-run-sim), judging through the table still catches a broken output."""
    onnx_path, model_bin = model_files(*SETTINGS[0])
    program = compiled(KEY, *SETTINGS[0])
    sigmoid = next(n for n in program.nodes if n.outputs[0] == program.outputs[0].name)
    tensor = sigmoid.outputs[0] if layer == "output" else sigmoid.inputs[0]
    result = qverify.verify([onnx_path, model_bin], inputs=image_files[:1], run_sim=False,
                            faults=[f"bitflip:{tensor}"])
    assert result.exit_code == 1, [p.verdict_line() for p in result.pairs]
