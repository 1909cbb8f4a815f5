"""The one atomic writer every host report goes through, and the run manifest's schema key."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from qverify.client import dumpfiles


def test_manifest_carries_its_schema_first(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    dumpfiles.write_manifest({"model": "model.bin", "schema": "stale", "files": []}, path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert list(data)[0] == "schema" and data["schema"] == dumpfiles.RUN_MANIFEST_SCHEMA == "qverify.run/1"
    assert data == {"schema": "qverify.run/1", "model": "model.bin", "files": []}


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_json_files_are_world_readable_and_keep_an_existing_mode(tmp_path: Path) -> None:
    path = tmp_path / "perf.json"
    dumpfiles.write_json_atomic({"fps": 1.0}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone would leave 0600
    path.chmod(0o640)
    dumpfiles.write_json_atomic({"fps": 2.0}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and json.loads(path.read_text()) == {"fps": 2.0}


def test_a_failing_render_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text("previous", encoding="utf-8")

    def render() -> str:
        raise RuntimeError("render failed")

    with pytest.raises(RuntimeError):
        dumpfiles.write_text_atomic(path, render)
    assert list(tmp_path.iterdir()) == [path] and path.read_text(encoding="utf-8") == "previous"
