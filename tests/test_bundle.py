"""Reproduction bundles: `qverify compare A B --bundle F.tar.gz` and `write_verify_bundle` pack the
dumps, inputs, model hashes, versions and the report; `qverify compare F.tar.gz` replays them to
the same verdict; a bundle that could write outside its folder is refused; a failed write leaves
nothing behind.

Real parts: the zoo's PP-OCR text-direction classifier (float and quantized), compiled, on the
embedded emulated board (healthy and with an injected fault), on a real image."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from qverify.client import bundle as bundle_mod
from cli_runner import run_qverify as qv
from qverify.client import cli
from qverify.client.boards import BoardOptions
from qverify.simulator.modelfile import save

KEY = "ppocr_cls"
FAULT = "bitflip:Conv@5"


@pytest.fixture(scope="module")
def work(tmp_path_factory, quantized, float_model, compiled, model_feeds) -> dict:
    folder = tmp_path_factory.mktemp("bundle")
    save(compiled(KEY).proto, folder / "model.bin")
    np.save(folder / "x.npy", model_feeds(KEY, 1)[0])
    w = {"dir": folder, "bin": folder / "model.bin", "quant": quantized(KEY), "float": float_model(KEY),
         "input": folder / "x.npy"}
    for name, extra in (("board", []), ("faulty", ["--fault", FAULT])):
        assert cli.main(["run", "-m", str(w["bin"]), "-r", "-i", str(w["input"]), "-o", str(folder / name),
                         *extra]) == 0
    assert cli.main(["dump", "-m", str(w["quant"]), "-i", str(w["input"]), "-o", str(folder / "quant")]) == 0
    return w


def _verdicts(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.endswith(("PASSED", "FAILED"))]


def _members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(path: Path, name: str) -> dict:
    with tarfile.open(path) as tar:
        return json.load(tar.extractfile(f"qverify-bundle/{name}"))


@pytest.mark.slow
@pytest.mark.parametrize("board, expected", [("board", 0), ("faulty", 1)])
def test_a_bundle_replays_to_the_same_verdict(work, tmp_path, capsys, board, expected):
    folder = work["dir"]
    code, out, _ = qv(capsys, "compare", folder / board, folder / "quant", "--bundle", tmp_path / "b.tar.gz")
    assert code == expected
    code_again, replay, _ = qv(capsys, "compare", tmp_path / "b.tar.gz", "--json", tmp_path / "r.json")
    assert code_again == expected
    assert _verdicts(replay) == _verdicts(out)
    assert f"bundle {tmp_path / 'b.tar.gz'}" in replay and "recorded verdict" in replay
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bundle"]["recorded_verdict"]["exit_code"] == expected
    assert report["first_divergent"] == _read(tmp_path / "b.tar.gz", "report.json")["first_divergent"]


def test_a_bundle_holds_dumps_inputs_model_hashes_and_versions(work, tmp_path, capsys):
    folder = work["dir"]
    code, out, _ = qv(capsys, "compare", folder / "board", folder / "quant", "--bundle", tmp_path / "b.tar.gz")
    assert code == 0 and "reproduction bundle" in out
    meta = _read(tmp_path / "b.tar.gz", "bundle.json")
    assert set(meta["versions"]) >= {"qverify", "onnxruntime", "numpy", "python"}
    by_name = {m["name"]: m for m in meta["models"]}
    for path in (work["bin"], work["quant"]):
        entry = by_name[path.name]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["size"] == path.stat().st_size and entry["included"]  # small models travel
    members = _members(tmp_path / "b.tar.gz")
    assert f"qverify-bundle/models/{work['quant'].name}" in members
    assert meta["inputs"] == [{"source": str(work["input"]), "file": "inputs/000_x.npy"}]
    assert "qverify-bundle/inputs/000_x.npy" in members
    assert all(m.isfile() or m.isdir() for m in members.values())
    dumped = [n for n in members if n.startswith("qverify-bundle/dumps/board/") and n.endswith(".npy")]
    assert len(dumped) == len(json.loads((folder / "board" / "manifest.json").read_text())["files"])


def _evil_tar(path: Path, name: str, kind: bytes = tarfile.REGTYPE) -> Path:
    meta = {"schema": bundle_mod.BUNDLE_SCHEMA, "compare": ["dumps/a", "dumps/b"]}
    with tarfile.open(path, "w:gz") as tar:
        for member, data in (("qverify-bundle/bundle.json", json.dumps(meta).encode()), (name, b"gotcha")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            if member == name and kind != tarfile.REGTYPE:
                info.type, info.linkname, info.size = kind, "/etc/passwd", 0
                data = b""
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("name, kind", [
    ("qverify-bundle/../../evil", tarfile.REGTYPE),
    ("../evil", tarfile.REGTYPE),
    ("/tmp/evil-absolute", tarfile.REGTYPE),
    ("qverify-bundle/evil-link", tarfile.SYMTYPE),
    ("qverify-bundle/evil-hardlink", tarfile.LNKTYPE),
])
def test_a_bundle_that_could_write_outside_its_folder_is_refused(tmp_path, capsys, name, kind):
    bundle = _evil_tar(tmp_path / "evil.tar.gz", name, kind)
    code, _, err = qv(capsys, "compare", bundle)
    assert code == 2 and err.count("\n") == 1 and "refusing the bundle" in err
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    assert not Path("/tmp/evil-absolute").exists()


def test_a_file_that_is_not_a_bundle_is_exit_2(tmp_path, capsys):
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar file")
    code, _, err = qv(capsys, "compare", tmp_path / "junk.tar.gz")
    assert code == 2 and "not a readable .tar.gz bundle" in err
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
        pass
    code, _, err = qv(capsys, "compare", tmp_path / "empty.tar.gz")
    assert code == 2 and "bundle.json" in err


def test_a_failed_bundle_write_leaves_nothing_behind(work, tmp_path, capsys, monkeypatch):
    folder = work["dir"]
    code, _, err = qv(capsys, "compare", folder / "board", folder / "quant", "--bundle", tmp_path / "no" / "b.tar.gz")
    assert code == 2 and "does not exist" in err
    code, _, err = qv(capsys, "compare", folder / "board", folder / "quant", "--bundle", tmp_path / "b.zip")
    assert code == 2 and ".tar.gz" in err and not (tmp_path / "b.zip").exists()

    def broken_add(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "add", broken_add)
    (tmp_path / "b.tar.gz").write_bytes(b"the previous bundle")
    code, _, _ = qv(capsys, "compare", folder / "board", folder / "quant", "--bundle", tmp_path / "b.tar.gz")
    assert code == 2
    assert (tmp_path / "b.tar.gz").read_bytes() == b"the previous bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar.gz"]  # no temporary file left


@pytest.mark.slow
@pytest.mark.parametrize("faults, expected", [([], 0), ([FAULT], 1)])
def test_the_verify_bundle_dumps_board_quant_and_float_and_replays(work, tmp_path, capsys, faults, expected):
    report = {"schema": "qverify.verify/1", "passed": not faults, "exit_code": expected}
    path = bundle_mod.write_verify_bundle(
        tmp_path / "v.tar.gz", models=[work["quant"], work["float"], work["bin"]], inputs=[str(work["input"])],
        seed=0, board_options=BoardOptions(faults=faults), report=report, progress=None)
    assert path == tmp_path / "v.tar.gz"
    meta = _read(path, "bundle.json")
    assert meta["kind"] == "verify" and meta["folders"] == ["dumps/board", "dumps/quant", "dumps/float"]
    assert meta["compare"] == ["dumps/board", "dumps/quant"]
    assert {m["role"] for m in meta["models"]} == {"model.bin", "quant.onnx", "float.onnx"}
    assert _read(path, "report.json") == report
    code, out, _ = qv(capsys, "compare", path)
    assert code == expected
    assert "board vs quant" in out and "recorded verdict" in out
