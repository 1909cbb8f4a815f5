"""Per-layer distributions and saturation (``qverify.client.accuracy.distributions``), as a specification.

1. On a real model: ppocr_cls (QDQ, per-channel weights) compiled and run by the simulator
   on real images, every tensor fed to the collector frame by frame with the executor's
   per-layer counts. Each summary equals numpy on the same dumps: histogram counts (those
   of ``np.histogram`` over the summary's own edges), channel min/max, channel quartiles
   (exact for int8 codes), mean, std; saturation and overflow equal the executor's counts.
2. Floats: edges fixed by the first frame, widened by merging bins, counts stay exact.
3. Flags, with faults injected: one channel 50x wider (per-channel candidate; a balanced
   tensor is not flagged); a model calibrated on a far too small range (its layers
   saturate, the well-calibrated run does not; a ReLU's clamps at zero are not saturation);
   int32 accumulator overflow counted by the executor.
4. Weights: ppocr_det quantized per tensor has conv weights whose channels span > 10x and
   they are flagged; the per-channel variant is not; QOperator and the float model give the
   same layers; int8 codes shrunk to a small part of the range are flagged.
5. HTML: well-formed, escapes hostile names, bounded for hundreds of layers.
"""
from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import synthetic
from qverify.client.accuracy.distribution_html import MAX_CHANNELS, MAX_PLOTS
from qverify.client.accuracy.distributions import (
    BINS, DistributionCollector, LayerDistribution, html_section, terminal_columns, weight_distributions,
)
from qverify.client.errors import EXIT_BAD_INPUT, Failure
from qverify.simulator import Program, Simulator, quantize
from qverify.simulator.compiler import compile_model

FRAMES = 3


def _dequant(codes: np.ndarray, scale: float, zp: int) -> np.ndarray:
    return (codes.astype(np.float64) - zp) * scale


def _board_feed(program: Program, x: np.ndarray) -> dict[str, np.ndarray]:
    inp = program.inputs[0]
    q, _ = quantize(x, inp.scale, inp.zero_point)
    return {inp.name: q.transpose(0, 2, 3, 1)}


def _collect(program: Program, frames: list[np.ndarray], keep: bool = False):
    """Run every frame with dumps: (collector, {tensor: [frames]} if keep, {tensor: (saturated, overflow)})."""
    sim, collector = Simulator(program), DistributionCollector()
    dumps: dict[str, list[np.ndarray]] = {}
    counts: dict[str, list[int]] = {}
    producer_output = {n.name: n.outputs[0] for n in program.nodes}
    for x in frames:
        def sink(dump):
            t = dump.tensor
            if t.quantized:
                collector.add(t.name, dump.valid, scale=t.scale, zero_point=t.zero_point)
            else:
                collector.add(t.name, dump.valid)
            if keep:
                dumps.setdefault(t.name, []).append(dump.valid.copy())

        result = sim.run(_board_feed(program, x), dump="all", sink=sink)
        for layer in result.layers:
            out = producer_output[layer.node]
            collector.add_counts(out, saturated=layer.saturated, acc_overflow=layer.acc_overflow)
            c = counts.setdefault(out, [0, 0])
            c[0] += layer.saturated
            c[1] += layer.acc_overflow
    return collector, dumps, counts


@pytest.fixture(scope="module")
def cls_run(compiled, model_feeds):
    program = compiled("ppocr_cls")
    collector, dumps, counts = _collect(program, model_feeds("ppocr_cls", FRAMES), keep=True)
    return program, {d.name: d for d in collector.summaries()}, dumps, counts


# ---------------------------------------------------------------- 1. a real model against numpy

@pytest.mark.slow
def test_real_model_summaries_equal_numpy_on_the_same_dumps(cls_run):
    program, dists, dumps, counts = cls_run
    assert list(dists) == list(dumps), "one summary per tensor, in the order they were produced"
    quantized = [name for name in dumps if program.tensors[name].quantized]
    assert len(quantized) > 100
    for name in quantized:
        t, d = program.tensors[name], dists[name]
        frames = np.stack([_dequant(v, t.scale, t.zero_point) for v in dumps[name]])  # (F, N, C, ...)
        assert d.frames == FRAMES and d.elements == dumps[name][0].size
        assert sum(d.histogram) == d.values == d.elements * FRAMES, name
        # The histogram is exact: numpy puts the same values in the summary's own bins.
        np.testing.assert_array_equal(np.histogram(frames, bins=np.asarray(d.bin_edges))[0], d.histogram, err_msg=name)
        per_channel = np.moveaxis(frames, 2, 0).reshape(frames.shape[2], -1) if frames.ndim > 2 else frames.reshape(1, -1)
        np.testing.assert_allclose(d.channel_min, per_channel.min(axis=1), rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(d.channel_max, per_channel.max(axis=1), rtol=0, atol=1e-12, err_msg=name)
        for q, got in ((25, d.channel_p25), (50, d.channel_median), (75, d.channel_p75)):
            np.testing.assert_allclose(got, np.percentile(per_channel, q, axis=1), rtol=0, atol=1e-9, err_msg=name)
        assert d.min == frames.min() and d.max == frames.max()
        assert d.mean == pytest.approx(frames.mean(), rel=1e-9, abs=1e-12)
        assert d.std == pytest.approx(frames.std(), rel=1e-7, abs=1e-12)
        saturated, overflow = counts.get(name, (0, 0))
        assert (d.saturated, d.acc_overflow) == (saturated, overflow), name
    assert sum(d.saturated for d in dists.values()) > 0, "a real network clamps somewhere (ReLUs at least)"


@pytest.mark.slow
def test_real_model_json_and_terminal_columns(cls_run):
    _, dists, _, _ = cls_run
    for d in dists.values():
        json.dumps(d.to_json(), allow_nan=False)
        cols = terminal_columns(d)
        assert set(cols) <= {"sat", "ovf"}
        assert ("sat" in cols) == (d.saturation_fraction > 0) and ("ovf" in cols) == (d.acc_overflow > 0)
        assert all(cols.values()), "only non-zero entries"
    clean = [d for d in dists.values() if d.saturated == 0 and d.acc_overflow == 0 and d.at_limits == 0]
    assert clean and all(terminal_columns(d) == {} for d in clean)


# ---------------------------------------------------------------- 2. floats

def test_float_histogram_widens_exactly_and_stays_bounded():
    rng = np.random.default_rng(3)
    frames = [rng.normal(0, 0.1 * (k + 1), (1, 4, 8, 8)) for k in range(6)]  # every frame wider than the last
    frames[4][0, 2, 0, 0] = -40.0  # an outlier far to the left
    collector = DistributionCollector()
    for f in frames:
        collector.add("t", f.astype(np.float32))
    (d,) = collector.summaries()
    every = np.stack(frames).astype(np.float32).astype(np.float64)
    assert len(d.histogram) <= BINS and sum(d.histogram) == d.values == every.size
    np.testing.assert_array_equal(np.histogram(every, bins=np.asarray(d.bin_edges))[0], d.histogram)
    per_channel = np.moveaxis(every, 2, 0).reshape(4, -1)
    assert d.channel_min == per_channel.min(axis=1).tolist() and d.channel_max == per_channel.max(axis=1).tolist()
    width = d.bin_edges[1] - d.bin_edges[0]
    for q, got in ((25, d.channel_p25), (50, d.channel_median), (75, d.channel_p75)):
        assert np.all(np.abs(np.asarray(got) - np.percentile(per_channel, q, axis=1)) <= width), q
    assert d.mean == pytest.approx(every.mean()) and d.std == pytest.approx(every.std())


@pytest.mark.parametrize("dtype,zp", [(np.uint8, 128), (np.int16, -7), (np.int32, 3)])
def test_other_code_types_are_summarised_in_real_units(dtype, zp):
    rng = np.random.default_rng(11)
    info = np.iinfo(dtype)
    spread = min(info.max // 3, 20_000)
    frames = [np.clip(rng.normal(zp, spread / 3, (1, 3, 10, 10)).round(), info.min, info.max).astype(dtype)
              for _ in range(2)]
    collector = DistributionCollector()
    for f in frames:
        collector.add("t", f, scale=0.01, zero_point=zp)
    (d,) = collector.summaries()
    real = np.stack([_dequant(f, 0.01, zp) for f in frames])
    assert len(d.histogram) <= BINS and sum(d.histogram) == d.values == real.size
    np.testing.assert_array_equal(np.histogram(real, bins=np.asarray(d.bin_edges))[0], d.histogram)
    per_channel = np.moveaxis(real, 2, 0).reshape(3, -1)
    np.testing.assert_allclose(d.channel_min, per_channel.min(axis=1), atol=1e-9)
    np.testing.assert_allclose(d.channel_max, per_channel.max(axis=1), atol=1e-9)
    # Channel quartiles: exact for 8-bit codes, within a channel bin (256 codes) for int16, within a
    # histogram bin for int32 (summarised as floats).
    width = {np.uint8: 0.0, np.int16: 256 * 0.01}.get(dtype, d.bin_edges[1] - d.bin_edges[0])
    assert np.all(np.abs(np.asarray(d.channel_median) - np.median(per_channel, axis=1)) <= width + 1e-9)


def test_non_finite_values_are_counted_and_left_out():
    values = np.array([[1.0, np.nan, 2.0, np.inf], [0.5, 0.25, -np.inf, 3.0]], np.float32)[None]
    collector = DistributionCollector()
    collector.add("bad", values)
    (d,) = collector.summaries()
    assert d.nonfinite == 3 and d.values == 5 and sum(d.histogram) == 5
    assert (d.min, d.max) == (0.25, 3.0)
    assert any("NaN or infinite" in f for f in d.flags)
    json.dumps(d.to_json(), allow_nan=False)


def test_bad_calls_are_refused_with_the_tensor_named():
    collector = DistributionCollector()
    collector.add("a", np.zeros((1, 4, 2, 2), np.int8), scale=0.1, zero_point=0)
    with pytest.raises(ValueError, match="'a' changed"):
        collector.add("a", np.zeros((1, 5, 2, 2), np.int8), scale=0.1, zero_point=0)
    with pytest.raises(ValueError, match="'a' changed"):
        collector.add("a", np.zeros((1, 4, 2, 2), np.int8), scale=0.2, zero_point=0)
    with pytest.raises(ValueError, match="kind"):
        collector.add("b", np.zeros(3), kind="bias")


# ---------------------------------------------------------------- 3. flags

def _one_wide_channel(wide: float) -> np.ndarray:
    x = np.random.default_rng(5).normal(0, 0.04, (1, 8, 12, 12))
    x[:, 3] *= wide
    return x


@pytest.mark.parametrize("codes", [False, True], ids=["float", "int8"])
def test_a_channel_50x_wider_is_a_per_channel_candidate_and_a_balanced_tensor_is_not(codes):
    def summary(x: np.ndarray) -> LayerDistribution:
        collector = DistributionCollector()
        if codes:
            scale = float(np.abs(x).max()) / 127
            collector.add("t", np.clip(np.rint(x / scale), -128, 127).astype(np.int8), scale=scale, zero_point=0)
        else:
            collector.add("t", x)
        return collector.summaries()[0]

    skewed, balanced = summary(_one_wide_channel(50.0)), summary(_one_wide_channel(1.0))
    assert skewed.channel_spread > 30
    (flag,) = skewed.flags
    assert flag.startswith(f"channel ranges span {skewed.channel_spread:.0f}x") and "channel 3:" in flag
    assert flag.endswith("a per-channel quantization or int16 candidate")
    assert balanced.channel_spread < 2 and balanced.flags == []
    assert terminal_columns(balanced) == {}


@pytest.fixture(scope="module")
def small_cnn_narrow(tmp_path_factory) -> Program:
    """small_cnn calibrated on inputs 20x smaller than those it will get: activation scales far too small."""
    feeds = [{"x": f["x"] * 0.05} for f in synthetic.calibration(count=4)]
    path = synthetic.quantize(synthetic.small_cnn(seed=2), tmp_path_factory.mktemp("dist") / "narrow.onnx",
                              feeds=feeds)
    return Program(compile_model(path, target="sim-a16"))


def test_a_layer_calibrated_on_too_small_a_range_is_flagged(small_cnn_narrow):
    calibrated_on = [f["x"] * 0.05 for f in synthetic.calibration(count=4)]  # the very frames calibrated on
    real_range = [f["x"] for f in synthetic.calibration(seed=9, count=2)]
    good = {d.name: d for d in _collect(small_cnn_narrow, calibrated_on)[0].summaries()}
    bad_collector, _, counts = _collect(small_cnn_narrow, real_range)
    bad = {d.name: d for d in bad_collector.summaries()}
    flagged = [d for d in bad.values() if any(f.startswith("saturates") for f in d.flags)]
    assert flagged, "inputs 20x beyond the calibration saturate"
    for d in flagged:
        assert d.saturation_fraction > 0.01 and terminal_columns(d)["sat"].endswith("%")
        assert d.saturated == counts[d.name][0] > 0
        assert "calibrate with more representative data or keep it in int16" in d.flags[0]
    assert not [d for d in good.values() if any(f.startswith("saturates") for f in d.flags)]
    # The ReLU folded into conv1's range clamps half its values at zero: counted, but not saturation.
    relu = next(d for d in good.values() if d.zero_point == -128 and d.saturated > 0.2 * d.values)
    assert relu.saturation_fraction <= relu.at_limits / relu.values < 0.01  # at most the values at the top code
    assert not relu.flags


def test_accumulator_overflow_counted_by_the_executor_is_flagged():
    from test_executor import _matmul_program  # one MatMul whose int32 accumulator overflows

    k = 70_000
    program = _matmul_program(k, x_zp=127, weight=-128)
    result = Simulator(program).run({"x": np.full((1, k), -128, np.int8)})
    collector = DistributionCollector()
    for layer in result.layers:
        collector.add_counts("y", saturated=layer.saturated, acc_overflow=layer.acc_overflow, elements=1)
    (d,) = collector.summaries()
    assert d.acc_overflow == 1 and terminal_columns(d) == {"ovf": "1", "sat": "100.0%"}
    assert any(f.startswith("int32 accumulator overflowed 1 times") for f in d.flags)
    json.dumps(d.to_json(), allow_nan=False)  # a layer with counts only: its figures are null


# ---------------------------------------------------------------- 4. weights

@pytest.mark.slow
def test_per_tensor_weights_with_wide_channel_spread_are_per_channel_candidates(quantized):
    per_tensor = weight_distributions(quantized("ppocr_det", per_channel=False))
    per_channel = weight_distributions(quantized("ppocr_det", per_channel=True))
    assert [d.name for d in per_tensor] == [d.name for d in per_channel] and len(per_tensor) > 50
    candidates = [d for d in per_tensor if any("per-channel quantization candidate" in f for f in d.flags)]
    assert candidates and all(d.channel_spread > 10 for d in candidates)
    assert {d.name for d in candidates} == {d.name for d in per_tensor if d.channel_spread > 10}
    assert not [d for d in per_channel if any(f.startswith("channel ranges span") for f in d.flags)]
    assert all(d.kind == "weight" and d.saturation_fraction == 0 for d in per_tensor + per_channel)
    # Channel ranges are those of the dequantized initializer, per output channel.
    model = onnx.load(str(quantized("ppocr_det", per_channel=False)))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    d = candidates[0]
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == d.tensor)
    real = _dequant(inits[d.tensor], float(inits[dq.input[1]]), int(inits[dq.input[2]]))
    np.testing.assert_allclose(d.channel_min, real.reshape(real.shape[0], -1).min(axis=1), atol=1e-12)
    np.testing.assert_allclose(d.channel_max, real.reshape(real.shape[0], -1).max(axis=1), atol=1e-12)


@pytest.mark.slow
def test_float_and_qoperator_models_give_the_same_weights(quantized, float_model):
    qdq = weight_distributions(quantized("ppocr_cls"))
    qop = weight_distributions(quantized("ppocr_cls", fmt="QOperator"))
    flt = weight_distributions(float_model("ppocr_cls"))
    assert [d.name for d in qdq] == [d.name for d in qop] == [d.name for d in flt] and len(qdq) > 40
    for a, b in zip(qdq, flt):  # same layers, each channel's range within one quantization step
        assert len(a.channel_max) == len(b.channel_max)
        step = np.maximum(np.abs(b.channel_max), np.abs(b.channel_min)) / 127
        assert np.all(np.abs(np.asarray(a.channel_max) - b.channel_max) <= step + 1e-9), a.name
    assert [len(d.channel_max) for d in qop] == [len(d.channel_max) for d in qdq]


def test_int8_weight_codes_using_little_of_the_range_are_flagged(tmp_path):
    path = synthetic.quantize(synthetic.small_cnn(seed=2), tmp_path / "q.onnx", per_channel=False)
    assert not [d for d in weight_distributions(path) if any("int8 codes use only" in f for f in d.flags)]
    model = onnx.load(str(path))
    weight = next(i for i in model.graph.initializer if numpy_helper.to_array(i).dtype == np.int8
                  and numpy_helper.to_array(i).ndim == 4)
    codes = numpy_helper.to_array(weight) // 16  # the scale kept: codes reach only 8 of 127
    weight.CopyFrom(numpy_helper.from_array(codes.astype(np.int8), weight.name))
    broken = tmp_path / "shrunk.onnx"
    onnx.save(model, str(broken))
    flagged = [d for d in weight_distributions(broken) if any("int8 codes use only" in f for f in d.flags)]
    assert [d.tensor for d in flagged] == [weight.name]


def test_weight_distributions_of_a_bad_file_is_a_one_line_failure(tmp_path):
    with pytest.raises(Failure, match="not found") as missing:
        weight_distributions(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model at all" * 10)
    with pytest.raises(Failure, match="is not an ONNX model") as bad:
        weight_distributions(junk)
    for exc in (missing.value, bad.value):
        assert exc.code == EXIT_BAD_INPUT and "\n" not in str(exc)


# ---------------------------------------------------------------- 5. HTML

class _Checker(HTMLParser):
    """Tags balanced (void elements aside), no script, no external resource."""
    VOID = {"br", "wbr", "img", "meta", "hr", "input", "link", "col", "source"}
    SVG_EMPTY = {"path", "line", "circle", "rect", "polyline"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "script" or any(k in ("src", "href") and v and not v.startswith("#") for k, v in attrs):
            self.errors.append(f"external or active content: <{tag} {attrs}>")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _check(fragment: str) -> _Checker:
    checker = _Checker()
    checker.feed(fragment)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    return checker


def _dist(name: str, channels: int = 8, flagged: bool = False) -> LayerDistribution:
    collector = DistributionCollector()
    x = _one_wide_channel(50.0 if flagged else 1.0)[:, :8].repeat(max(1, channels // 8), axis=1)
    collector.add(name, x)
    return collector.summaries()[0]


def test_html_is_well_formed_escapes_names_and_lists_flagged_layers_first():
    hostile = '<script>alert("x")</script>&'
    fragment = html_section([_dist("clean"), _dist(hostile, flagged=True)], title="Board <dumps>")
    checker = _check(fragment)
    assert "<script" not in fragment and "&lt;script&gt;" in fragment and "Board &lt;dumps&gt;" in fragment
    assert checker.tags["svg"] == 4 and checker.tags["details"] == 2
    details = fragment.index("<details")
    assert fragment.index("&lt;script&gt;", details) < fragment.index("clean", details), "flagged layer first"
    assert 'class="flagged"' in fragment


def test_html_stays_bounded_for_hundreds_of_layers():
    one = _dist("layer/0", channels=512)
    many = [LayerDistribution(**{**one.__dict__, "name": f"block{i}/conv/Conv_output_0"}) for i in range(600)]
    fragment = html_section(many)
    checker = _check(fragment)
    assert checker.tags["details"] == 600 and checker.tags["svg"] == 2 * MAX_PLOTS
    assert f"channels 0–{MAX_CHANNELS - 1} of 512" in fragment
    assert len(fragment) < 1_500_000, len(fragment)
    assert html_section([]).count("<details") == 0
    _check(html_section([]))
