"""`qverify run`, `qverify perf` and `qverify board info`: saved tensors equal the simulator's,
file formats round-trip, output folders are all-or-nothing, failures are one line and an exit code."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import synthetic
from agent_harness import free_port, module_agent_pool  # noqa: F401  (fixture)
from qverify.agent import PROTOCOL_VERSION
from qverify.client import cli, dumpfiles
from qverify.simulator import Simulator, load
from qverify.simulator.compiler import compile_model
from qverify.simulator.modelfile import save


def _rename_tensors(path: Path, out: Path, rename) -> Path:
    """The quantized ONNX model with every tensor renamed (names holding '/', ':' like exported graphs)."""
    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        for values in (node.input, node.output):
            for i, name in enumerate(values):
                if name:
                    values[i] = rename(name)
    for item in list(graph.input) + list(graph.output) + list(graph.value_info) + list(graph.initializer):
        item.name = rename(item.name)
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runperf")
    quant = synthetic.quantize(synthetic.small_cnn(seed=3), folder / "q.onnx")
    save(compile_model(quant), folder / "model.bin")
    odd = _rename_tensors(quant, folder / "odd.onnx", lambda n: f"stage.1/{n}:0")
    save(compile_model(odd), folder / "odd.bin")
    return {"bin": folder / "model.bin", "odd": folder / "odd.bin", "onnx": quant}


@pytest.fixture(scope="module")
def agent(module_agent_pool):  # noqa: F811
    return module_agent_pool.start()


def qv(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


def _feed(program, seed: int = 5) -> np.ndarray:
    inp = program.inputs[0]
    shape = (1, inp.shape[2], inp.shape[3], inp.shape[1])  # the board's NHWC feed
    return np.random.default_rng(seed).integers(-128, 128, shape, dtype=np.int8)


def _reference(program, feed: np.ndarray):
    dumps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    result = Simulator(program).run({program.inputs[0].name: feed}, dump="all", dump_layout="both",
                                    sink=lambda d: dumps.__setitem__(d.tensor.name, (np.array(d.valid),
                                                                                      np.array(d.aligned))))
    return result.outputs, dumps


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


# ---------------------------------------------------------------------------- run


def test_run_saves_outputs_equal_to_the_simulator(models, tmp_path, capsys):
    program = load(models["bin"])
    feed = _feed(program)
    np.save(tmp_path / "feed.npy", feed)
    out = tmp_path / "out"
    code, stdout, _ = qv(capsys, "run", "-m", models["bin"], "-i", tmp_path / "feed.npy", "-o", out,
                         "--frames", 3, "--warmup", 1)
    assert code == 0
    want, _ = _reference(program, feed)
    manifest = _manifest(out)
    files = manifest["files"]
    assert {f["tensor"] for f in files} == set(want) and all(f["output"] and f["layout"] == "valid" for f in files)
    for f in files:
        saved = np.load(out / f["file"])
        assert saved.dtype == want[f["tensor"]].dtype
        np.testing.assert_array_equal(saved, want[f["tensor"]])
        assert f["shape"] == list(saved.shape) and f["dtype"] == str(saved.dtype)
    assert manifest["input_sets"][0]["timing"]["frames"] == 3
    assert manifest["input_sets"][0]["inputs"][0]["source"].endswith("feed.npy")
    assert "latency over 3 frames" in stdout and "1x5" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feed.npy", "out"]  # no temporary folder left


def test_several_input_files_are_saved_per_input_set(models, tmp_path, capsys):
    program = load(models["bin"])
    feeds = [_feed(program, seed=s) for s in (1, 2)]
    for i, feed in enumerate(feeds):
        np.save(tmp_path / f"in{i}.npy", feed)
    out = tmp_path / "out"
    code, stdout, _ = qv(capsys, "run", "-m", models["bin"], "-i", tmp_path / "in0.npy", "-i", tmp_path / "in1.npy",
                         "-o", out)
    assert code == 0 and "input set 1:" in stdout
    manifest = _manifest(out)
    assert [s["folder"] for s in manifest["input_sets"]] == ["set000", "set001"]
    for f in manifest["files"]:
        assert f["file"].startswith(f"set{f['input_set']:03d}/")
        want, _ = _reference(program, feeds[f["input_set"]])
        np.testing.assert_array_equal(np.load(out / f["file"]), want[f["tensor"]])
    assert len(manifest["files"]) == 2 * len(program.outputs)


def test_dump_all_nodes_saves_every_layer_in_both_layouts_on_a_real_agent(models, agent, tmp_path, capsys):
    """Tensor names with '/' and ':' become safe, unique file names; the manifest keeps the real ones."""
    program = load(models["odd"])
    feed = _feed(program, seed=11)
    np.save(tmp_path / "feed.npy", feed)
    out = tmp_path / "layers"
    code, stdout, _ = qv(capsys, "run", "-m", models["odd"], "-b", agent.address, "--transport", "grpc",
                         "-i", tmp_path / "feed.npy", "-o", out, "-r", "--dump-layout", "both")
    assert code == 0
    _, want = _reference(program, feed)
    manifest = _manifest(out)
    files = manifest["files"]
    assert manifest["board"]["embedded"] is False and manifest["board"]["address"] == agent.address
    assert {(f["tensor"], f["layout"]) for f in files} == {(n, lay) for n in want for lay in ("valid", "aligned")}
    names = [f["file"] for f in files]
    assert len(set(names)) == len(names) == 2 * len(program.tensors)
    assert sorted(names + ["manifest.json"]) == sorted(p.name for p in out.iterdir())
    for f in files:
        assert "/" not in f["file"] and ":" not in f["file"] and f["file"].endswith(f".{f['layout']}.npy")
        assert f["tensor"].startswith("stage.1/") and f["tensor"].endswith(":0")
        tensor = program.tensors[f["tensor"]]
        info = tensor.info
        saved = np.load(out / f["file"])
        assert list(saved.shape) == f["shape"]
        assert f["logical_shape"] == list(tensor.shape) and f["aligned_shape"] == list(info.aligned_shape)
        assert f["aligned_strides"] == list(info.aligned_strides)
        assert f["shape"] == (f["logical_shape"] if f["layout"] == "valid" else f["aligned_shape"])
        assert f["scale"] == pytest.approx(tensor.scale) and f["zero_point"] == tensor.zero_point
        assert f["placement"] in (None, "npu", "cpu") and (f["placement"] is None) == (f["producer"] == "")
        np.testing.assert_array_equal(saved, want[f["tensor"]][0 if f["layout"] == "valid" else 1])
    padded = [f for f in files if f["layout"] == "aligned" and f["shape"] != f["logical_shape"]]
    assert padded and all(f["shape"][-1] % 16 == 0 for f in padded)  # sim-a16: NHWC, channels padded to 16
    assert "manifest.json lists them all" in stdout


def test_bin_and_txt_formats_round_trip(models, tmp_path, capsys):
    program = load(models["bin"])
    npy, raw, txt, deq = (tmp_path / n for n in ("npy", "bin", "txt", "deq"))
    common = ["-m", models["bin"], "--seed", 3, "-r", "--dump-layout", "both"]
    assert qv(capsys, "run", *common, "-o", npy)[0] == 0
    assert qv(capsys, "run", *common, "-o", raw, "--dump-format", "bin")[0] == 0
    assert qv(capsys, "run", *common, "-o", txt, "--dump-format", "txt", "--dump-txt-axis", 1)[0] == 0
    assert qv(capsys, "run", *common, "-o", deq, "--dump-format", "txt", "--dequantize", "--dump-precision", 4)[0] == 0
    reference = {(f["tensor"], f["layout"]): np.load(npy / f["file"]) for f in _manifest(npy)["files"]}
    assert len(reference) == 2 * len(program.tensors)

    for f in _manifest(raw)["files"]:
        assert f["file"].endswith(".bin")
        array = np.fromfile(raw / f["file"], dtype=np.dtype(f["dtype"]).newbyteorder("<")).reshape(f["shape"])
        np.testing.assert_array_equal(array, reference[(f["tensor"], f["layout"])])

    four_d = 0
    for f in _manifest(txt)["files"]:
        want = reference[(f["tensor"], f["layout"])]
        lines = (txt / f["file"]).read_text().splitlines()
        if want.ndim > 1:
            assert f["txt_axis"] == 1 and len(lines) == want.shape[1]
            rows = np.array([[int(v) for v in line.split()] for line in lines])
            np.testing.assert_array_equal(rows, np.moveaxis(want, 1, 0).reshape(want.shape[1], -1))
            four_d += want.ndim == 4
        else:
            assert f["txt_axis"] is None and len(lines) == want.size
    assert four_d > 0

    for f in _manifest(deq)["files"]:
        q = reference[(f["tensor"], f["layout"])]
        values = np.array([float(v) for v in (deq / f["file"]).read_text().split()])
        assert f["dtype"] == "float32" and f["board_dtype"] == "int8" and len(values) == q.size
        assert all(len(v.split(".")[1]) == 4 for v in (deq / f["file"]).read_text().split()[:5])
        expected = f["scale"] * (q.astype(np.float64).ravel() - f["zero_point"])
        np.testing.assert_allclose(values, expected, atol=0.5e-4 + 1e-6)


def test_a_non_empty_output_folder_is_refused_and_left_untouched(models, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    before = os.stat(out / "mine.txt").st_mtime_ns
    code, stdout, err = qv(capsys, "run", "-m", models["bin"], "-o", out)
    assert code == 2 and "not empty" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"
    assert os.stat(out / "mine.txt").st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    code, _, _ = qv(capsys, "run", "-m", models["bin"], "-o", out, "--force")
    assert code == 0
    assert not (out / "mine.txt").exists() and (out / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_output_folder_is_used(models, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert qv(capsys, "run", "-m", models["bin"], "-o", out)[0] == 0
    assert (out / "manifest.json").exists()


def test_a_failed_write_leaves_no_folder_behind(models, tmp_path, capsys, monkeypatch):
    real = dumpfiles.TensorFormat.write
    calls = []

    def failing(self, array, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        return real(self, array, path)

    monkeypatch.setattr(dumpfiles.TensorFormat, "write", failing)
    out = tmp_path / "deep" / "out"
    code, _, err = qv(capsys, "run", "-m", models["bin"], "-o", out, "-r")
    assert code == 2 and "No space left" in err
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


def test_a_bad_input_file_is_one_line_and_exit_2(models, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 7), np.float32))
    out = tmp_path / "out"
    code, _, err = qv(capsys, "run", "-m", models["bin"], "-i", bad, "-o", out)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("qverify: error:") and "bad.npy" in lines[0]
    assert not out.exists()
    code, _, err = qv(capsys, "run", "-m", tmp_path / "missing.npy.bin", "-o", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out.exists()
    code, _, err = qv(capsys, "run", "-m", models["onnx"], "-o", out)
    assert code == 2 and "qverify compile" in err and not out.exists()
    code, _, err = qv(capsys, "run", "-m", models["bin"], "-o", out, "--dump-format", "csv")
    assert code == 2 and "npy, bin or txt" in err and not out.exists()


def test_an_unreachable_board_is_exit_3(models, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = qv(capsys, "run", "-m", models["bin"], "-b", f"127.0.0.1:{free_port()}", "--transport", "grpc",
                      "--connect-timeout", 1, "-o", out)
    assert code == 3 and "unreachable" in err and not out.exists()
    code, _, err = qv(capsys, "board", "info", "-b", f"127.0.0.1:{free_port()}", "--connect-timeout", 1)
    assert code == 3 and "unreachable" in err


# ---------------------------------------------------------------------------- perf


def test_perf_prints_fps_and_writes_json(models, tmp_path, capsys):
    report = tmp_path / "perf.json"
    code, stdout, _ = qv(capsys, "perf", "-m", models["bin"], "--frames", 12, "--warmup", 2, "--layers",
                         "--json", report)
    assert code == 0 and "FPS" in stdout and "slowest" in stdout and "conv1" in stdout
    figures = json.loads(report.read_text())
    assert figures["frames"] == 12 and figures["threads"] == 1 and figures["fps"] > 0
    lat = figures["latency_ms"]
    assert 0 < lat["min"] <= lat["median"] <= lat["p99"] <= lat["max"]
    assert {layer["node"] for layer in figures["layers"]} == {n.name for n in load(models["bin"]).nodes}


def test_perf_on_a_real_agent_with_an_input_file(models, agent, tmp_path, capsys):
    program = load(models["bin"])
    np.save(tmp_path / "feed.npy", _feed(program))
    report = tmp_path / "perf.json"
    code, stdout, _ = qv(capsys, "perf", "-m", models["bin"], "-b", agent.address, "--transport", "grpc",
                         "-i", tmp_path / "feed.npy", "--frames", 5, "--json", report)
    assert code == 0 and "FPS" in stdout
    figures = json.loads(report.read_text())
    assert figures["frames"] == 5 and figures["inputs"] == "files" and figures["board"]["address"] == agent.address
    code, _, err = qv(capsys, "perf", "-m", models["bin"], "-b", agent.address, "--transport", "grpc",
                      "--threads", 64, "--frames", 2)
    assert code == 2 and "threads" in err


# ---------------------------------------------------------------------------- board info


def test_board_info_lists_the_model_pushed_by_a_run(models, agent, tmp_path, capsys):
    from qverify.client.agent_client import file_sha256

    code, _, _ = qv(capsys, "run", "-m", models["bin"], "-b", agent.address, "--transport", "grpc",
                    "-o", tmp_path / "out")
    assert code == 0
    code, stdout, _ = qv(capsys, "board", "info", "-b", agent.address, "--json")
    assert code == 0
    info = json.loads(stdout)
    assert info["backend"] == "sim" and info["protocol_version"] == PROTOCOL_VERSION and info["embedded"] is False
    assert info["target"]["name"] == "sim-a16" and info["npu_cores"] >= 1 and "perf" in info["capabilities"]
    stored = {m["sha256"]: m for m in info["models"]}
    sha = file_sha256(models["bin"])
    assert sha in stored and stored[sha]["size_bytes"] == models["bin"].stat().st_size
    assert stored[sha]["target"] == "sim-a16" and stored[sha]["last_used_unix_ms"] > 0
    code, stdout, _ = qv(capsys, "board", "info", "-b", agent.address)
    assert code == 0 and sha[:12] in stdout and "sim-a16" in stdout


def test_board_info_without_a_board_describes_the_embedded_one(capsys):
    code, stdout, _ = qv(capsys, "board", "info", "--json")
    info = json.loads(stdout)
    assert code == 0 and info["embedded"] is True and info["backend"] == "sim" and info["models"] == []


# ---------------------------------------------------------------------------- file names


@pytest.mark.parametrize("name", ["a/b:0", "../../etc/passwd", "", "...", "x" * 300, "名前/テンソル", "a b\tc\n"])
def test_safe_names_have_no_separators_and_stay_bounded(name):
    safe = dumpfiles.safe_name(name)
    assert safe and len(safe) <= dumpfiles.MAX_NAME
    assert not set(safe) - set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert not safe.startswith(".")


def test_names_that_clean_up_alike_keep_distinct_files():
    assert dumpfiles.safe_name("x" * 300) != dumpfiles.safe_name("x" * 299 + "y")
    assert dumpfiles.file_name(1, "a/b", "valid", "npy") != dumpfiles.file_name(2, "a:b", "valid", "npy")
    assert dumpfiles.file_name(42, "blk/conv:0", "aligned", "bin") == "0042_blk_conv_0.aligned.bin"
