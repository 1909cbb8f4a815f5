"""`qverify run` without `-b` runs on the embedded emulated board; `--dump NAME,...` on `run` and on
`dump` saves the named tensors only, with the same values as a full dump; unknown names and
conflicting options are one line and exit 2, with nothing written.

Real parts: the zoo's PP-OCR text-direction classifier, quantized, compiled, on a real image."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_runner import run_qverify as qv
from qverify.simulator import Simulator
from qverify.simulator.modelfile import save

KEY = "ppocr_cls"


@pytest.fixture(scope="module")
def model(tmp_path_factory, quantized, compiled, model_feeds) -> dict:
    folder = tmp_path_factory.mktemp("named")
    program = compiled(KEY)
    save(program.proto, folder / "model.bin")
    np.save(folder / "x.npy", model_feeds(KEY, 1)[0])
    return {"bin": folder / "model.bin", "onnx": quantized(KEY), "input": folder / "x.npy", "program": program}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_run_without_a_board_runs_on_the_embedded_board_and_equals_the_simulator(model, tmp_path, capsys):
    code, out, err = qv(capsys, "run", "-m", model["bin"], "-i", model["input"], "-o", tmp_path / "out")
    assert code == 0, err
    manifest = _manifest(tmp_path / "out")
    assert manifest["board"]["embedded"] is True and manifest["source"] == "board"
    assert "embedded emulated board" in out + err
    program = model["program"]
    outputs = [f for f in manifest["files"] if f["output"]]
    assert [f["tensor"] for f in outputs] == [t.name for t in program.outputs]
    # What the embedded board returned is what the simulator computes for the same feed.
    from qverify.client import inputs as inputs_mod

    frame = inputs_mod.build_frames(inputs_mod.ports_from_program(program), [str(model["input"])])[0]
    expected = Simulator(program).run(frame.board).outputs[program.outputs[0].name]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / outputs[0]["file"]), expected)


def test_run_dump_names_saves_those_tensors_only_with_the_full_dumps_values(model, tmp_path, capsys):
    program = model["program"]
    names = [program.nodes[3].outputs[0], program.nodes[10].outputs[0]]
    code, _, err = qv(capsys, "run", "-m", model["bin"], "-i", model["input"], "-o", tmp_path / "named",
                      "--dump", ",".join(names))
    assert code == 0, err
    named = _manifest(tmp_path / "named")
    assert sorted(f["tensor"] for f in named["files"]) == sorted(names)
    assert named["dump_names"] == names and named["dump_all_nodes"] is False
    assert sorted(p.name for p in (tmp_path / "named").iterdir()) == sorted(
        [f["file"] for f in named["files"]] + ["manifest.json"])
    code, _, _ = qv(capsys, "run", "-m", model["bin"], "-i", model["input"], "-o", tmp_path / "all", "-r")
    assert code == 0
    full = {f["tensor"]: f for f in _manifest(tmp_path / "all")["files"]}
    for f in named["files"]:
        np.testing.assert_array_equal(np.load(tmp_path / "named" / f["file"]),
                                      np.load(tmp_path / "all" / full[f["tensor"]]["file"]))


def test_run_with_an_unknown_name_is_one_line_listing_valid_names_and_writes_nothing(model, tmp_path, capsys):
    code, _, err = qv(capsys, "run", "-m", model["bin"], "-o", tmp_path / "out", "--dump",
                      f"{model['program'].outputs[0].name},no_such_tensor")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "no_such_tensor" in line and "valid names include" in line and model["program"].inputs[0].name in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["-r", "--dump", "x"], "give one of them"),
    (["--dump", " , "], "comma-separated"),
    (["--fault", "bitflip:Conv@0", "-b", "127.0.0.1:1"], "embedded emulated board"),
    (["--fault", "bogus"], "KIND:TARGET"),
])
def test_run_refuses_conflicting_or_malformed_options(model, tmp_path, capsys, args, message):
    code, _, err = qv(capsys, "run", "-m", model["bin"], "-o", tmp_path / "out", *args)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_dump_names_on_an_onnx_model_writes_those_only(model, tmp_path, capsys):
    name = model["program"].nodes[3].outputs[0]  # a program tensor is a quant.onnx tensor
    code, _, err = qv(capsys, "dump", "-m", model["onnx"], "-i", model["input"], "-o", tmp_path / "d",
                      "--dump", f"{name},x")
    assert code == 0, err
    files = _manifest(tmp_path / "d")["files"]
    assert sorted(f["tensor"] for f in files) == sorted([name, "x"])
    x = next(f for f in files if f["tensor"] == "x")
    np.testing.assert_array_equal(np.load(tmp_path / "d" / x["file"]), np.load(model["input"]))
    # The named tensor is what the full dump holds.
    code, _, _ = qv(capsys, "dump", "-m", model["onnx"], "-i", model["input"], "-o", tmp_path / "all")
    full = {f["tensor"]: f for f in _manifest(tmp_path / "all")["files"]}
    mine = next(f for f in files if f["tensor"] == name)
    np.testing.assert_array_equal(np.load(tmp_path / "d" / mine["file"]),
                                  np.load(tmp_path / "all" / full[name]["file"]))


def test_dump_with_an_unknown_name_or_a_model_bin_is_exit_2(model, tmp_path, capsys):
    code, _, err = qv(capsys, "dump", "-m", model["onnx"], "-o", tmp_path / "d", "--dump", "nope")
    assert code == 2 and "nope" in err and "valid names include" in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()
    code, _, err = qv(capsys, "dump", "-m", model["bin"], "-o", tmp_path / "d")
    assert code == 2 and "qverify run" in err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    code, _, err = qv(capsys, "dump", "-m", model["onnx"], "-o", tmp_path / "busy")
    assert code == 2 and "--force" in err and (tmp_path / "busy" / "keep.txt").read_text() == "mine"
