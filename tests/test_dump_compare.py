"""`qverify dump` and `qverify compare`: a board's dump folder (`run -r`) and an ONNX model's dump
folder (`dump`) pair up by tensor name and are judged by verify's rules; broken boards, corrupted
files and folders that are not dump folders are caught, each with the right exit code.

Real parts: the zoo's PP-OCR text-direction classifier (float and quantized with
onnxruntime.quantization), compiled, run on the embedded emulated board (healthy and with an
injected fault), and in onnxruntime; two real input images."""
from __future__ import annotations

import io
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from cli_runner import run_qverify as qv
from qverify.client import cli
from qverify.client.dump_compare import compare_folders, read_folder
from qverify.simulator.modelfile import save

KEY = "ppocr_cls"
FAULTY_NODE = "Conv@5"  # bitflip: bit 6 of every 97th element of its output


@pytest.fixture(scope="module")
def work(tmp_path_factory, quantized, float_model, compiled, model_feeds) -> dict[str, Path]:
    """The models, two real inputs, and the four dump folders every test compares."""
    folder = tmp_path_factory.mktemp("dumpcompare")
    program = compiled(KEY)
    paths = {"quant": quantized(KEY), "float": float_model(KEY), "bin": folder / "model.bin"}
    save(program.proto, paths["bin"])
    inputs = []
    for k, feed in enumerate(model_feeds(KEY, 2)):
        np.save(folder / f"x{k}.npy", feed)
        inputs += ["-i", folder / f"x{k}.npy"]
    runs = {"board": [], "faulty": ["--fault", f"bitflip:{FAULTY_NODE}"]}
    for name, extra in runs.items():
        paths[name + "_dir"] = folder / name
        assert cli.main(["run", "-m", str(paths["bin"]), "-r", *map(str, inputs), "-o", str(folder / name),
                         *extra]) == 0
    for name in ("quant", "float"):
        paths[name + "_dir"] = folder / f"{name}-dump"
        assert cli.main(["dump", "-m", str(paths[name]), *map(str, inputs), "-o", str(paths[name + "_dir"])]) == 0
    paths["program_tensors"] = len(program.tensors)
    paths["faulty_tensor"] = next(n.outputs[0] for n in program.nodes if n.name == FAULTY_NODE)
    return paths


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_a_boards_dumps_and_quant_onnx_dumps_are_consistent(work, tmp_path, capsys):
    code, out, err = qv(capsys, "compare", work["board_dir"], work["quant_dir"], "--json", tmp_path / "r.json")
    assert code == 0, out + err
    report = _report(tmp_path / "r.json")
    assert report["schema"] == "qverify.compare/1" and report["passed"] and report["criterion"] == "tolerance"
    assert len(report["pairs"]) == 2  # one per input set
    for pair in report["pairs"]:
        # Every tensor the board dumped has its quant.onnx twin, by name.
        assert len(pair["outputs"]) + len(pair["layers"]) == work["program_tensors"]
        assert pair["status"] == "PASSED"
    assert out.count("PASSED") == 2 and "FAILED" not in out


@pytest.mark.slow
def test_a_broken_board_is_inconsistent_and_the_first_divergent_tensor_is_named(work, tmp_path, capsys):
    code, out, _ = qv(capsys, "compare", work["faulty_dir"], work["quant_dir"], "--json", tmp_path / "r.json",
                      "--junit", tmp_path / "r.xml", "--html", tmp_path / "r.html")
    assert code == 1
    report = _report(tmp_path / "r.json")
    first = report["first_divergent"]
    assert first is not None and first["name"] in out and "first divergent tensor" in out
    # Downstream of the fault or at it, never before it.
    faulty_index = next(f["index"] for f in json.loads((work["faulty_dir"] / "manifest.json").read_text())["files"]
                        if f["tensor"] == work["faulty_tensor"])
    assert first["index"] >= faulty_index
    suites = ET.parse(tmp_path / "r.xml").getroot()
    assert int(suites.get("failures")) > 0
    assert "FAILED" in (tmp_path / "r.html").read_text()


def test_a_broken_board_against_a_healthy_one_names_the_faulty_layer_exactly(work, capsys):
    code, out, _ = qv(capsys, "compare", work["board_dir"], work["faulty_dir"])
    assert code == 1
    assert "bit-exact" in out
    assert f"first divergent tensor: {work['faulty_tensor']}" in out
    assert f"{FAULTY_NODE}" in out


def test_a_hand_corrupted_file_is_caught(work, tmp_path, capsys):
    corrupted = tmp_path / "corrupted"
    shutil.copytree(work["quant_dir"], corrupted)
    manifest = json.loads((corrupted / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["tensor"] == work["faulty_tensor"] and f["input_set"] == 0)
    codes = np.load(corrupted / entry["file"])
    codes.reshape(-1)[::3] ^= np.uint8(0x40)  # 64 codes off at every third element
    np.save(corrupted / entry["file"], codes)
    code, out, _ = qv(capsys, "compare", work["board_dir"], corrupted)
    assert code == 1
    assert f"first divergent tensor: {work['faulty_tensor']}" in out
    assert out.count("FAILED") == 1  # input set 1 was left alone


def test_a_file_that_does_not_match_its_manifest_is_exit_2_naming_it(work, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(work["quant_dir"], broken)
    entry = next(f for f in json.loads((broken / "manifest.json").read_text())["files"]
                 if f["tensor"] == work["faulty_tensor"])
    (broken / entry["file"]).write_bytes(b"not a numpy file")
    code, _, err = qv(capsys, "compare", work["board_dir"], broken)
    assert code == 2
    assert err.count("\n") == 1 and Path(entry["file"]).name in err and "dump the folder again" in err
    np.save(broken / entry["file"], np.zeros(3, dtype=np.float32))  # readable, but not what the manifest says
    code, _, err = qv(capsys, "compare", work["board_dir"], broken)
    assert code == 2 and "manifest.json says" in err
    (broken / entry["file"]).unlink()  # a file the manifest lists is gone, paired or not
    code, _, err = qv(capsys, "compare", work["board_dir"], broken)
    assert code == 2 and "missing" in err and Path(entry["file"]).name in err


def test_a_float_models_dump_pairs_with_quantized_tensors_through_the_float_names(work, tmp_path, capsys):
    code, out, _ = qv(capsys, "compare", work["float_dir"], work["quant_dir"], "--json", tmp_path / "r.json")
    assert code == 0, out
    report = _report(tmp_path / "r.json")
    assert report["criterion"] == "float"
    names = [t["name"] for t in report["pairs"][0]["layers"] + report["pairs"][0]["outputs"]]
    # The float tensor X meets quant.onnx's codes of it, X_QuantizeLinear_Output.
    assert "x ~ x_QuantizeLinear_Output" in names
    assert any(n.endswith(" ~ " + work["faulty_tensor"]) for n in names)
    assert len(report["pairs"][0]["outputs"]) == 1
    assert len(names) > 100
    assert "quantization loss" in out
    # The same float dump against the board's dumps: the board's tensors carry the float names too.
    code, out, _ = qv(capsys, "compare", work["board_dir"], work["float_dir"], "--json", tmp_path / "b.json")
    assert code == 0, out
    board_pairs = _report(tmp_path / "b.json")["pairs"][0]
    assert len(board_pairs["layers"]) + len(board_pairs["outputs"]) > 100
    # The judgement can fail: a threshold no quantized model reaches.
    code, out, _ = qv(capsys, "compare", work["float_dir"], work["quant_dir"], "--min-float-cosine", "0.9999999")
    assert code == 1 and "FAILED" in out


def test_a_folder_without_manifest_is_exit_2_naming_it(work, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = qv(capsys, "compare", work["board_dir"], empty)
    assert code == 2 and err.count("\n") == 1
    assert str(empty) in err and "manifest.json" in err and "qverify run -r -o" in err
    code, _, err = qv(capsys, "compare", work["board_dir"], tmp_path / "missing")
    assert code == 2 and "not a folder" in err


def test_folders_without_a_tensor_in_common_are_exit_2(work, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(work["quant_dir"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    for f in manifest["files"]:
        f["tensor"] = "renamed_" + f["tensor"]
        f["onnx_float_name"] = ""
        f["output"] = False
    (other / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = qv(capsys, "compare", work["board_dir"], other)
    assert code == 2 and err.count("\n") == 1 and "no tensor in common" in err


def test_a_different_number_of_input_sets_is_exit_2(work, tmp_path, capsys):
    single = tmp_path / "single"
    assert cli.main(["dump", "-m", str(work["quant"]), "-i", str(work["board_dir"].parent / "x0.npy"),
                     "-o", str(single)]) == 0
    code, _, err = qv(capsys, "compare", work["board_dir"], single)
    assert code == 2 and "input set" in err


def test_quant_dumps_carry_the_integer_view_and_provenance(work):
    folder = read_folder(work["quant_dir"])
    m = folder.manifest
    assert m["quantized"] is True and len(m["model_sha256"]) == 64 and m["model"] == str(work["quant"])
    assert [i["source"] for s in m["input_sets"] for i in s["inputs"]] == [
        str(work["board_dir"].parent / "x0.npy"), str(work["board_dir"].parent / "x1.npy")]
    by_name = {e.tensor: e for e in folder.of_set(0)}
    q = by_name[work["faulty_tensor"]]
    dq = by_name[work["faulty_tensor"].replace("_QuantizeLinear_Output", "_DequantizeLinear_Output")]
    assert q.codes and q.scale > 0 and q.float_name == dq.float_name
    codes = folder.load(q).astype(np.float64)
    np.testing.assert_allclose(folder.load(dq), (codes - q.zero_point) * q.scale, rtol=1e-6, atol=1e-6)
    # uint8 codes read as the board's int8 codes: the same values.
    np.testing.assert_allclose(folder.observed(q).values, (codes - q.zero_point) * q.scale, rtol=1e-9)


def test_the_terminal_table_fits_80_columns(work):
    from qverify.client.compare_reports import print_compare

    compared = compare_folders(read_folder(work["faulty_dir"]), read_folder(work["quant_dir"]))
    buffer = io.StringIO()
    print_compare(compared, console=Console(file=buffer, width=80, highlight=False))
    lines = buffer.getvalue().splitlines()
    verdicts = [line for line in lines if line.endswith(("PASSED", "FAILED"))]
    assert len(verdicts) == 2  # one line per input set, never wrapped (logs, grep), as verify's
    assert max(len(line) for line in lines if line not in verdicts) <= 80
    assert any(line.startswith("first divergent tensor:") for line in lines)


@pytest.mark.slow
def test_images_reach_the_onnx_dump_as_the_model_bin_takes_them(work, compiled, model_images, tmp_path, capsys):
    """A board that takes images (embedded preprocessing) and quant.onnx fed the same PNG through
    --inputs-like: the dumps agree, from the input tensor on."""
    from PIL import Image

    save(compiled(KEY, preprocess=True).proto, tmp_path / "pre.bin")
    image = model_images(KEY, 1)[0][0][..., ::-1]  # BGR -> RGB for the PNG file
    Image.fromarray(np.ascontiguousarray(image)).save(tmp_path / "page.png")
    assert qv(capsys, "run", "-m", tmp_path / "pre.bin", "-r", "-i", tmp_path / "page.png", "-o", tmp_path / "b")[0] == 0
    code, _, err = qv(capsys, "dump", "-m", work["quant"], "--inputs-like", tmp_path / "pre.bin",
                      "-i", tmp_path / "page.png", "-o", tmp_path / "q")
    assert code == 0, err
    code, out, _ = qv(capsys, "compare", tmp_path / "b", tmp_path / "q", "--json", tmp_path / "r.json")
    assert code == 0, out
    layers = _report(tmp_path / "r.json")["pairs"][0]["layers"]
    assert any(t["name"] == "x_QuantizeLinear_Output" and t["max_lsb"] == 0 for t in layers)
    # Without --inputs-like a PNG cannot be fed to an ONNX model: one line saying what to do.
    code, _, err = qv(capsys, "dump", "-m", work["quant"], "-i", tmp_path / "page.png", "-o", tmp_path / "q2")
    assert code == 2 and "--inputs-like" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_detectors_sigmoid_output_is_judged_through_its_lookup_table(compiled, quantized, model_feeds, tmp_path,
                                                                       capsys):
    """PP-OCR's DBNet detector ends in a Sigmoid over coarse logits: one LSB at its input moves its
    output by many. The board's manifest records the table, so the offline compare judges the
    output through it, as verify does; without the table the same dumps fail."""
    key = "ppocr_det"
    save(compiled(key).proto, tmp_path / "det.bin")
    np.save(tmp_path / "x.npy", model_feeds(key, 1)[0])
    assert qv(capsys, "run", "-m", tmp_path / "det.bin", "-r", "-i", tmp_path / "x.npy", "-o", tmp_path / "b")[0] == 0
    assert qv(capsys, "dump", "-m", quantized(key), "-i", tmp_path / "x.npy", "-o", tmp_path / "q")[0] == 0
    tables = json.loads((tmp_path / "b" / "manifest.json").read_text())["lookup_tables"]
    assert len(tables) == 1 and len(next(iter(tables.values()))["table"]) == 256
    code, out, _ = qv(capsys, "compare", tmp_path / "b", tmp_path / "q", "--json", tmp_path / "r.json")
    assert code == 0, out
    output = _report(tmp_path / "r.json")["pairs"][0]["outputs"][0]
    assert output["name"] in tables and "lookup table" in output["reason"] and output["max_lsb"] > 16
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["lookup_tables"] = {}
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = qv(capsys, "compare", tmp_path / "b", tmp_path / "q")
    assert code == 1 and "beyond rounding drift" in out


@pytest.mark.parametrize("fmt", [["--dump-format", "bin"], ["--dump-format", "txt", "--dump-txt-axis", "1"]])
def test_bin_and_txt_folders_compare_like_npy_ones(work, tmp_path, capsys, fmt):
    inputs = ["-i", work["board_dir"].parent / "x0.npy", "-i", work["board_dir"].parent / "x1.npy"]
    assert qv(capsys, "run", "-m", work["bin"], "-r", *inputs, "-o", tmp_path / "b", *fmt)[0] == 0
    code, out, _ = qv(capsys, "compare", tmp_path / "b", work["board_dir"])
    assert code == 0 and out.count("bit-exact: PASSED") == 2
    # A txt file with a value changed is read back in its place: the changed tensor fails.
    if fmt[1] == "txt":
        manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
        entry = next(f for f in manifest["files"] if f["tensor"] == work["faulty_tensor"] and f["input_set"] == 1)
        lines = (tmp_path / "b" / entry["file"]).read_text().splitlines()
        values = lines[2].split()
        values[4] = str(int(values[4]) ^ 1)
        lines[2] = " ".join(values)
        (tmp_path / "b" / entry["file"]).write_text("\n".join(lines) + "\n")
        code, out, _ = qv(capsys, "compare", tmp_path / "b", work["board_dir"])
        assert code == 1 and f"first divergent tensor: {work['faulty_tensor']}" in out
