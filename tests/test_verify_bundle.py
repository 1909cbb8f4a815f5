"""`qverify verify --bundle F.tar.gz` writes a reproduction bundle after the verification (the
report inside is the --json report), and `qverify compare F.tar.gz` replays it to the same
verdict: 0 for a healthy board, 1 for a board with an injected fault. A bundle in a folder that
does not exist is refused (exit 2) before anything runs.

Real parts: the zoo's PP-OCR text-direction classifier, quantized by onnxruntime and compiled,
on the embedded emulated board, with a real image."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from cli_runner import run_qverify as qv
from qverify.simulator.modelfile import save

KEY = "ppocr_cls"
FAULT = "bitflip:Conv@5"


@pytest.fixture(scope="module")
def cls(tmp_path_factory, quantized, compiled, model_feeds) -> dict:
    folder = tmp_path_factory.mktemp("verify_bundle")
    save(compiled(KEY).proto, folder / "model.bin")
    np.save(folder / "x.npy", model_feeds(KEY, 1)[0])
    return {"dir": folder, "models": f"{quantized(KEY)},{folder / 'model.bin'}", "input": folder / "x.npy"}


@pytest.mark.slow
@pytest.mark.parametrize("faults, expected", [([], 0), (["--fault", FAULT], 1)])
def test_verify_bundle_replays_to_the_same_verdict(cls, tmp_path, capsys, faults, expected):
    bundle, report = tmp_path / "repro.tar.gz", tmp_path / "r.json"
    code, out, _ = qv(capsys, "verify", "-m", cls["models"], "-i", cls["input"], *faults, "--json", report,
                      "--bundle", bundle)
    assert code == expected
    assert f"wrote {bundle} (reproduction bundle)" in out.replace("\n", "")
    with tarfile.open(bundle) as tar:
        inside = json.load(tar.extractfile("qverify-bundle/report.json"))
    assert inside == json.loads(report.read_text())  # the same dict --json writes
    code, out, _ = qv(capsys, "compare", bundle)
    assert code == expected
    assert out.rstrip().splitlines()[-1].endswith("PASSED" if expected == 0 else "FAILED")


def test_verify_bundle_in_a_missing_folder_is_refused_before_running(cls, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "repro.tar.gz"
    code, out, err = qv(capsys, "verify", "-m", cls["models"], "-i", cls["input"], "--bundle", missing)
    assert code == 2
    assert "nowhere" in err and "does not exist" in err
    assert not missing.parent.exists() and "PASSED" not in out
