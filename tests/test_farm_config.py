"""What configures a farm: inventory errors name the file, line and key, and the deploy
examples (inventory, systemd units, CI pipeline) are consistent with qverify."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from farm_harness import FARM_DEPLOY, farm_cli
from qverify.client.farm.inventory import BOARD_KEYS, MODEL_KEYS, SETTINGS_KEYS, InventoryError, load_inventory


# ---------------------------------------------------------------- 6. inventory validation


BASE = """\
[settings]
retries = 1

[defaults]
transport = "grpc"

[[boards]]
name = "board-11"
host = "127.0.0.11"

[[boards]]
name = "board-12"
host = "127.0.0.12"
agent_port = 7060

[[models]]
name = "cnn"
bin = "model.bin"
perf_frames = 2
"""


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[occurrence - 1]


INVALID = {
    "unknown board key": (lambda t: edit(t, "agent_port = 7060", "agent_prot = 7060"),
                          "agent_prot = 7060", 1, "boards[1].agent_prot", "unknown key"),
    "unknown settings key": (lambda t: edit(t, "retries = 1", "retrys = 1"), "retrys = 1", 1, "settings.retrys",
                             "unknown key"),
    "wrong type of a port": (lambda t: edit(t, "agent_port = 7060", 'agent_port = "7060"'), "agent_port", 1,
                             "boards[1].agent_port", "port number"),
    "wrong type of a model key": (lambda t: edit(t, "perf_frames = 2", 'perf_frames = "2"'), "perf_frames", 1,
                                  "models[0].perf_frames", "integer"),
    "wrong type of a setting": (lambda t: edit(t, "retries = 1", 'retries = "1"'), "retries", 1,
                                "settings.retries", "number"),
    "missing bin file": (lambda t: edit(t, 'bin = "model.bin"', 'bin = "missing.bin"'), "missing.bin", 1,
                         "models[0].bin", "does not exist"),
    "duplicate board name": (lambda t: t + '\n[[boards]]\nname = "board-11"\nhost = "127.0.0.13"\n',
                             'name = "board-11"', 2, "boards[2].name", "used twice"),
    "host and place": (lambda t: edit(t, 'host = "127.0.0.12"', 'host = "127.0.0.12"\nplace = "board-12"'),
                       'host = "127.0.0.12"', 1, "boards[1].host", "exactly one of host"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_inventory_is_one_line_naming_file_line_and_key(tmp_path, capsys, case):
    make, needle, occurrence, key, words = INVALID[case]
    (tmp_path / "model.bin").write_bytes(b"stub")  # never read: validation comes first
    text = make(BASE)
    inv = tmp_path / "farm.toml"
    inv.write_text(text)
    code, out, err = farm_cli(capsys, "run", inv, "--no-db")
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    found = re.search(rf"{re.escape(str(inv))}:(\d+): ([^:]+): (.*)$", lines[0])
    assert found, lines[0]
    assert found.group(2) == key and words in found.group(3), lines[0]
    assert int(found.group(1)) == line_of(text, needle, occurrence), (lines[0], text)


def test_an_unknown_defaults_key_is_an_error(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"stub")
    inv = tmp_path / "farm.toml"
    inv.write_text(edit(BASE, 'transport = "grpc"', 'transport = "grpc"\ndigit = 3'))
    with pytest.raises(InventoryError) as caught:
        load_inventory(inv)
    assert str(caught.value).startswith(f"{inv}:{line_of(inv.read_text(), 'digit = 3')}: defaults.digit: ")


def test_a_bad_defaults_value_is_reported_at_its_line(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"stub")
    inv = tmp_path / "farm.toml"
    inv.write_text(edit(BASE, 'transport = "grpc"', 'transport = "grpc"\nconnect_timeout_s = "5"'))
    with pytest.raises(InventoryError) as caught:
        load_inventory(inv)
    assert str(caught.value).startswith(f"{inv}:{line_of(inv.read_text(), 'connect_timeout_s')}: "), caught.value


# ------------------------------------------------------------------------- deploy examples


def stub_referenced_files(inventory: Path) -> None:
    """Create every relative file the inventory names (models, inputs, tokens) next to it."""
    data = tomllib.loads(inventory.read_text())
    for model in data["models"]:
        for key in ("onnx", "bin"):
            if key in model:
                path = inventory.parent / model[key]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"stub")
        for item in [model["inputs"]] if isinstance(model.get("inputs"), str) else model.get("inputs", []):
            path = inventory.parent / item
            if item.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
                (path / "frame0.npy").write_bytes(b"stub")
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"stub")
    for board in data["boards"]:
        if "token_file" in board and not board["token_file"].startswith(("~", "/")):
            path = inventory.parent / board["token_file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("token\n")


def test_inventory_example_loads(tmp_path):
    example = FARM_DEPLOY / "inventory.example.toml"
    data = tomllib.loads(example.read_text())
    assert set(data) <= {"settings", "defaults", "boards", "models", "matrix"}
    assert set(data["settings"]) <= SETTINGS_KEYS and set(data["defaults"]) <= BOARD_KEYS | MODEL_KEYS
    copy = tmp_path / "farm.toml"
    shutil.copy(example, copy)
    stub_referenced_files(copy)
    inv = load_inventory(copy)
    assert any(b.place for b in inv.boards) and any(b.host for b in inv.boards)
    assert all("token" not in b for b in data["boards"]), "secrets do not belong in the inventory"
    assert inv.matrix, "the example shows [[matrix]] rules"
    pairs = inv.pairs()
    assert {b.name for b, _ in pairs} == {b.name for b in inv.boards}, "every board gets work"
    assert {m.name for _, m in pairs} == {m.name for m in inv.models}, "every model runs somewhere"


def unit_settings(text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_systemd_service_and_timer():
    service = unit_settings((FARM_DEPLOY / "qverify-farm.service").read_text())
    assert service["Type"] == "oneshot"
    assert service["User"] not in ("root", "") and service["User"] == service["Group"]
    command = service["ExecStart"].split()
    assert command[1:4] == ["farm", "run", "/etc/qverify/farm.toml"] and command[0].endswith("/qverify")
    for option in ("--junit", "--html", "--db"):
        assert option in command
    assert service["TimeoutStartSec"] not in ("", "infinity", "0")
    assert service["KillSignal"] == "SIGINT"  # qverify's Ctrl-C: running jobs finish, places are released
    timer = unit_settings((FARM_DEPLOY / "qverify-farm.timer").read_text())
    assert timer["Persistent"] == "true" and timer["RandomizedDelaySec"] and timer["OnCalendar"]
    assert timer["Unit"] == "qverify-farm.service" and timer["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_farm_units(tmp_path):
    standin = tmp_path / "qverify"
    standin.write_text("#!/bin/sh\nexit 0\n")
    standin.chmod(0o755)
    service = (FARM_DEPLOY / "qverify-farm.service").read_text()
    (tmp_path / "qverify-farm.service").write_text(service.replace("/opt/qverify/venv/bin/qverify", str(standin)))
    shutil.copy(FARM_DEPLOY / "qverify-farm.timer", tmp_path / "qverify-farm.timer")
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "qverify-farm.service"),
                             str(tmp_path / "qverify-farm.timer")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and output == "", output


def test_ci_pipeline_example_runs_the_farm_and_publishes_junit_and_html():
    yaml = pytest.importorskip("yaml")
    pipeline = yaml.safe_load((FARM_DEPLOY / "ci-pipeline.example.yml").read_text())
    jobs = {name: job for name, job in pipeline.items() if isinstance(job, dict) and "script" in job}
    runs = [(name, job, line) for name, job in jobs.items() for line in job["script"] if "qverify farm run" in line]
    assert runs, "no job runs qverify farm run"
    for name, job, line in runs:
        words = line.split()
        junit, html = words[words.index("--junit") + 1], words[words.index("--html") + 1]
        artifacts = job["artifacts"]
        assert artifacts["reports"]["junit"] == junit
        assert artifacts["when"] == "always"  # a failing night still publishes its reports
        assert any(html == p or html.startswith(p.rstrip("/") + "/") for p in artifacts["paths"]), artifacts
        assert any("schedule" in str(rule.get("if", "")) for rule in job["rules"])
