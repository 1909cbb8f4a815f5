"""The `qverify` CLI: compile and info, exit codes, one-line errors, nothing half-written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import synthetic


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qverify.client.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def quant_onnx(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    return synthetic.quantize(synthetic.small_cnn(), folder / "small.quant.onnx")


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_compile_writes_a_loadable_model_and_info_describes_it(quant_onnx, tmp_path):
    out = tmp_path / "model.bin"
    proc = run_cli("compile", str(quant_onnx), "-o", str(out), "--target", "sim-a32")
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "wrote" in proc.stdout
    info = run_cli("info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["target"] == {"name": "sim-a32", "c_align": 32, "w_align": 1, "rounding": "single"}
    assert [i["onnx_input"] for i in summary["inputs"]] == ["x"]
    assert summary["inputs"][0]["feed_shape"] == [1, 16, 16, 3]  # NHWC int8 on the board
    ops = [layer["onnx_op"] for layer in summary["layers"]]
    assert "Conv" in ops and "Gemm" in ops
    conv_out = next(layer for layer in summary["layers"] if layer["name"] == "conv1")["outputs"][0]
    assert conv_out["shape"] == [1, 8, 8, 8]
    assert conv_out["aligned_shape"] == [1, 8, 8, 32]  # NHWC, C padded to 32
    assert conv_out["scale"] > 0 and "zero_point" in conv_out
    assert all(layer["placement"] in ("npu", "cpu") for layer in summary["layers"])
    table = run_cli("info", str(out))
    assert table.returncode == 0 and "conv1" in table.stdout and "sim-a32" in table.stdout


def test_run_on_cpu_places_the_named_node_on_the_cpu(quant_onnx, tmp_path):
    out = tmp_path / "model.bin"
    assert run_cli("compile", str(quant_onnx), "-o", str(out), "--run-on-cpu", "dwconv").returncode == 0
    layers = json.loads(run_cli("info", str(out), "--json").stdout)["layers"]
    placement = {layer["name"]: layer["placement"] for layer in layers}
    assert placement["dwconv"] == "cpu" and placement["conv1"] == "npu"


def test_float_model_is_refused_with_a_hint(tmp_path):
    import onnx

    path = tmp_path / "float.onnx"
    onnx.save(synthetic.small_cnn(), str(path))
    proc = run_cli("compile", str(path), "-o", str(tmp_path / "m.bin"))
    assert_one_line_error(proc, 2, "not quantized", "quantize_static")
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("content", [b"", b"garbage that is not protobuf \xff\xfe"])
def test_unreadable_onnx_is_refused(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    proc = run_cli("compile", str(path), "-o", str(tmp_path / "m.bin"))
    assert_one_line_error(proc, 2, "bad.onnx")
    assert not (tmp_path / "m.bin").exists()


def test_unknown_run_on_cpu_node_is_named(quant_onnx, tmp_path):
    proc = run_cli("compile", str(quant_onnx), "-o", str(tmp_path / "m.bin"), "--run-on-cpu", "no_such_node")
    assert_one_line_error(proc, 2, "no_such_node")


def test_bad_input_shape_syntax(quant_onnx, tmp_path):
    proc = run_cli("compile", str(quant_onnx), "-o", str(tmp_path / "m.bin"), "--input-shape", "x=1,3")
    assert_one_line_error(proc, 2, "--input-shape")


def test_unknown_target(quant_onnx, tmp_path):
    proc = run_cli("compile", str(quant_onnx), "-o", str(tmp_path / "m.bin"), "--target", "sim-a7")
    assert proc.returncode == 2 and "sim-a16" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "missing"])
def test_info_on_a_damaged_model_bin(quant_onnx, tmp_path, damage):
    out = tmp_path / "model.bin"
    assert run_cli("compile", str(quant_onnx), "-o", str(out)).returncode == 0
    data = bytearray(out.read_bytes())
    if damage == "truncate":
        out.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[-10] ^= 0x40
        out.write_bytes(bytes(data))
    elif damage == "magic":
        out.write_bytes(b"PK\x03\x04" + bytes(data[4:]))
    else:
        out.unlink()
    proc = run_cli("info", str(out))
    assert_one_line_error(proc, 2, "model.bin")


def test_compile_to_a_missing_folder_is_refused(quant_onnx, tmp_path):
    proc = run_cli("compile", str(quant_onnx), "-o", str(tmp_path / "nope" / "m.bin"))
    assert_one_line_error(proc, 2, "does not exist")


def test_agent_version_names_the_protocol():
    proc = subprocess.run([sys.executable, "-m", "qverify.agent.cli", "version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "protocol 1.1" in proc.stdout


def test_simulator_matches_onnxruntime_on_the_small_model(quant_onnx, tmp_path):
    import onnxruntime as ort

    from qverify.simulator import Simulator, dequantize, load, quantize
    from qverify.simulator.modelfile import save
    from qverify.simulator.compiler import compile_model

    save(compile_model(quant_onnx), tmp_path / "m.bin")
    program = load(tmp_path / "m.bin")
    sim = Simulator(program)
    session = ort.InferenceSession(str(quant_onnx), providers=["CPUExecutionProvider"])
    inp, out = program.inputs[0], program.outputs[0]
    for feed in synthetic.calibration(seed=7, count=3):
        q, _ = quantize(feed["x"], inp.scale, inp.zero_point)
        got = sim.run({inp.name: q.transpose(0, 2, 3, 1)}).outputs[out.name]
        want = session.run(None, {"x": dequantize(q, inp.scale, inp.zero_point)})[0]
        lsb = np.abs(dequantize(got, out.scale, out.zero_point) - want) / out.scale
        assert lsb.max() <= 2.01, lsb
        assert np.argmax(got) == np.argmax(want)


@pytest.mark.parametrize("args", [[], ["bogus"], ["info"], ["compile"], ["--nope"], ["demo", "--images", "99"]])
def test_usage_errors_exit_2_without_traceback(args):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Usage" in proc.stderr + proc.stdout


def test_unwritable_output_is_one_line(quant_onnx, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("compile", str(quant_onnx), "-o", str(blocker / "m.bin"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli("demo", "--workdir", str(blocker))
    assert_one_line_error(proc, 2, "file")
