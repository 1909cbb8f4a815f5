"""The inventory validator (pydantic), ``qverify farm check``, ``qverify farm schema`` and
``qverify farm report --html``: every error at once with its line and a "did you mean",
the pairs listed without touching a board, a JSON Schema that matches the validator, and
the agent side still free of the host's packages. No board is started here: ``farm check``
must not need one."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qverify.client.cli import main
from qverify.client.farm.history import History
from qverify.client.farm.inventory import (BOARD_KEYS, MODEL_KEYS, SETTINGS_KEYS, InventoryError, json_schema,
                                           load_inventory)
from qverify.client.farm.outcomes import CONSISTENT, INFRA, BoardStatus, FarmResult, JobResult, Latency

GOOD = """\
[settings]
retries = 1

[defaults]
transport = "grpc"

[[boards]]
name = "board-a"
host = "127.0.0.1"
agent_port = 9
labels = { target = "sim-a16" }

[[boards]]
name = "board-b"
place = "lab-b"
labels = { target = "sim-a32" }

[[models]]
name = "cnn16"
bin = "model.bin"
labels = { target = "sim-a16" }

[[models]]
name = "cnn32"
bin = "model.bin"
labels = { target = "sim-a32" }
"""


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def line_of(text: str, needle: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "model.bin").write_bytes(b"stub")  # never read: validation and listing only
    return tmp_path


def test_every_error_is_reported_at_once_with_its_line_and_a_suggestion(folder, capsys):
    text = (GOOD.replace("retries = 1", "retrys = 1")
                .replace("agent_port = 9", "agent_port = 70000")
                .replace('bin = "model.bin"\nlabels = { target = "sim-a32" }',
                         'bin = "missing.bin"\ndigit = 3\nlabels = { target = "sim-a32" }'))
    inv = folder / "farm.toml"
    inv.write_text(text)
    code, out, err = cli(capsys, "farm", "check", inv)
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    lines[0] = lines[0].removeprefix("qverify: error: ")
    expected = [
        (line_of(text, "retrys"), "settings.retrys", "unknown key; did you mean retries?"),
        (line_of(text, "agent_port = 70000"), "boards[0].agent_port", "must be a port number 1..65535"),
        (line_of(text, "digit = 3"), "models[1].digit", "unknown key; did you mean digits?"),
    ]
    assert len(lines) == len(expected), lines  # missing.bin is only checked once the entry's keys are right
    for line, (number, where, words) in zip(lines, expected):
        assert line.startswith(f"{inv}:{number}: {where}: {words}"), (line, number, where)


def test_a_missing_file_and_a_duplicate_name_are_both_reported(folder):
    text = GOOD.replace('bin = "model.bin"\nlabels = { target = "sim-a32" }',
                        'bin = "missing.bin"\nlabels = { target = "sim-a32" }').replace('"cnn32"', '"cnn16"')
    inv = folder / "farm.toml"
    inv.write_text(text)
    with pytest.raises(InventoryError) as caught:
        load_inventory(inv)
    found = [re.match(rf"{re.escape(str(inv))}:(\d+): ([^:]+): ", line) for line in caught.value.lines]
    assert [(int(m.group(1)), m.group(2)) for m in found] == [
        (line_of(text, 'name = "cnn16"') + 5, "models[1].name"), (line_of(text, "missing.bin"), "models[1].bin")]


def test_a_bad_default_is_reported_once_at_its_line(folder):
    text = GOOD.replace('transport = "grpc"', 'transport = "smoke-signals"')
    inv = folder / "farm.toml"
    inv.write_text(text)
    with pytest.raises(InventoryError) as caught:
        load_inventory(inv)
    assert caught.value.lines == [f"{inv}:{line_of(text, 'smoke-signals')}: defaults.transport: must be sftp or grpc"]


def test_farm_check_lists_the_pairs_without_running(folder, capsys):
    inv = folder / "farm.toml"
    inv.write_text(GOOD)  # board-a's port 9 has no agent, board-b's place no coordinator: nothing is contacted
    code, out, err = cli(capsys, "farm", "check", inv)
    assert code == 0, err
    flat = " ".join(out.split())
    assert "2 pairs" in flat and "inventory OK: 2 boards, 2 models, 2 pairs" in flat
    assert "board-a" in flat and "127.0.0.1:9" in flat and "labgrid place lab-b" in flat
    code, out, _ = cli(capsys, "farm", "check", inv, "--json")
    assert code == 0 and json.loads(out)["pairs"] == [{"board": "board-a", "model": "cnn16"},
                                                       {"board": "board-b", "model": "cnn32"}]


def test_schema_describes_what_the_validator_accepts(capsys):
    code, out, _ = cli(capsys, "farm", "schema")
    assert code == 0 and out == json_schema()
    schema = json.loads(out)
    defs = schema["$defs"]
    for name, keys in (("BoardEntry", BOARD_KEYS), ("ModelEntry", MODEL_KEYS), ("Settings", SETTINGS_KEYS)):
        assert set(defs[name]["properties"]) == keys and defs[name]["additionalProperties"] is False
    port = defs["BoardEntry"]["properties"]["agent_port"]
    assert (port["minimum"], port["maximum"]) == (1, 65535)
    assert schema["required"] == ["boards", "models"] and schema["additionalProperties"] is False


def test_farm_report_html_has_the_trend_and_marks_the_offline_night(tmp_path, capsys):
    db = tmp_path / "h.sqlite3"
    with History(db) as history:
        for night, offline in ((1, False), (2, True), (3, False)):
            job = (JobResult("b1", "m1", INFRA, "board offline", skipped=True) if offline else
                   JobResult("b1", "m1", CONSISTENT, min_exact_fraction=1.0, min_cosine=1.0,
                             latency=Latency(frames=10, median_ms=10.0 + night)))
            history.record(FarmResult(f"run{night}", "farm.toml", f"2099-01-0{night}T02:00:00Z",
                                      f"2099-01-0{night}T02:30:00Z", [BoardStatus("b1")], [job]))
    page = tmp_path / "trend.html"
    code, out, err = cli(capsys, "farm", "report", "--db", db, "--since", "2099-01-01", "--html", page)
    assert code == 0, err
    html = page.read_text(encoding="utf-8")
    assert html.count('<svg class="spark"') == 2 and html.count('class="gap"') == 2  # latency and exact fraction
    assert "2099-01-02T02:00:00Z: no latency median (board offline)" in html
    assert "<script" not in html and "http" not in html.lower().replace("https://json", "")
    code, _, err = cli(capsys, "farm", "report", "--db", db, "--html", tmp_path / "missing" / "x.html")
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_the_agent_side_imports_neither_pydantic_nor_platformdirs():
    """Boards install qverify with --no-deps plus grpcio, protobuf and numpy: the validator's libraries
    are host-side only."""
    code = ("import sys\nimport qverify.agent.server, qverify.agent.cli\nimport qverify.simulator\n"
            "print(','.join(sorted(m for m in ('pydantic', 'platformdirs') if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


@pytest.mark.parametrize("columns", [80, 200])
def test_farm_check_fits_the_terminal_without_cutting_a_name(folder, columns):
    """Below ~100 columns each pair is stacked; names are never split mid-token at any width."""
    inv = folder / "farm.toml"
    inv.write_text(GOOD)
    done = subprocess.run([sys.executable, "-c", "import sys; from qverify.client.cli import main; sys.exit(main())",
                           "farm", "check", str(inv)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": str(columns)}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= columns for line in lines), done.stdout
    for name in ("board-a", "board-b", "cnn16", "cnn32", "127.0.0.1:9", "labgrid place lab-b"):
        assert name in done.stdout
    boxed = any(ch in done.stdout for ch in "┃│┏")
    assert boxed == (columns >= 100)
