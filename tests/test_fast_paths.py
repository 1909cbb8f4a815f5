"""The simulator's fast paths compute exactly the bits of its reference paths."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

import synthetic
from qverify.simulator import Program, Simulator, fixedpoint, quantize
from qverify.simulator.compiler import compile_model


def _dump_digest(program: Program, feeds: list[np.ndarray]) -> str:
    sim = Simulator(program)
    digest = hashlib.sha256()
    for feed in feeds:
        sim.run({program.inputs[0].name: feed}, dump="all",
                sink=lambda d: digest.update(d.tensor.name.encode() + d.valid.tobytes()))
    return digest.hexdigest()


@pytest.fixture(scope="module", params=["sim-a16", "sim-a16-gemmlowp"])
def small_program(request, tmp_path_factory) -> Program:
    """The small model on a single-rounding and on a double-rounding target."""
    path = synthetic.quantize(synthetic.small_cnn(seed=5), tmp_path_factory.mktemp("fast") / "q.onnx")
    return Program(compile_model(path, target=request.param))


def _feeds(program: Program) -> list[np.ndarray]:
    inp = program.inputs[0]
    out = []
    for feed in synthetic.calibration(seed=11, count=4):
        q, _ = quantize(feed["x"] * 3.0, inp.scale, inp.zero_point)  # * 3: push into saturation too
        out.append(q.transpose(0, 2, 3, 1))
    return out


def test_float64_requantization_equals_the_int64_path(small_program, monkeypatch):
    fast = _dump_digest(small_program, _feeds(small_program))
    monkeypatch.setattr(fixedpoint, "fast_path_ok", lambda bound, shift: False)
    slow = _dump_digest(Program(small_program.proto), _feeds(small_program))
    assert fast == slow


def test_rounding_mode_travels_in_the_model_and_changes_results(tmp_path):
    """The target's rounding is recorded in model.bin and used by whoever runs it."""
    from qverify.simulator import load, save

    path = synthetic.quantize(synthetic.small_cnn(seed=5), tmp_path / "q.onnx")
    digests = {}
    for target in ("sim-a16", "sim-a16-gemmlowp"):
        save(compile_model(path, target=target), tmp_path / f"{target}.bin")
        program = load(tmp_path / f"{target}.bin")
        assert program.target.rounding == ("double" if target.endswith("gemmlowp") else "single")
        digests[target] = _dump_digest(program, _feeds(program))
    assert digests["sim-a16"] != digests["sim-a16-gemmlowp"]


def test_fusion_does_not_change_any_surviving_tensor(tmp_path):
    path = synthetic.quantize(synthetic.small_cnn(seed=6, activation="silu"), tmp_path / "q.onnx")
    fused, plain = Program(compile_model(path)), Program(compile_model(path, fuse=False))
    assert [n.op for n in plain.nodes].count("Mul") == 1
    assert [n.op for n in fused.nodes].count("Mul") == 0  # x * Sigmoid(x) became one Lut
    assert len(fused.nodes) == len(plain.nodes) - 1
    feeds = _feeds(plain)
    dumps = {}
    for program, key in ((fused, "fused"), (plain, "plain")):
        sim = Simulator(program)
        dumps[key] = []
        for feed in feeds:
            seen = {}
            sim.run({program.inputs[0].name: feed}, dump="all", sink=lambda d: seen.__setitem__(d.tensor.name, d.valid))
            dumps[key].append(seen)
    for f, p in zip(dumps["fused"], dumps["plain"]):
        assert set(f) <= set(p)
        for name in f:
            np.testing.assert_array_equal(f[name], p[name], err_msg=name)
