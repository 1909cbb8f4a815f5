"""``qverify farm run`` / ``qverify farm report`` against a farm of real boards on loopback.

The farm is four emulated boards: real ``qverify-agent`` subprocesses on 127.0.0.11 ..
127.0.0.14 (agent_harness), each listening on the same port of its own address. The
models are a small quantized CNN and a second one with another activation, so the
matrix is boards x 2 models. Every test writes its own inventory and history database
into its temporary folder and runs the farm through ``qverify.client.cli.main`` (the
exit code is the command's) or ``run_farm``.

What is checked: every pair consistent and stamped; a faulty board fails alone, at the
faulted layer, and is never retried; a board that is down is retried with backoff,
reported offline and leaves the others alone; regressions against the history (newly
inconsistent, latency up) for exactly the pairs that got worse; inventory errors name the
file, line and key; boards named by labgrid place are reserved through a real
coordinator, released afterwards (also after a failing job, and on Ctrl-C), and two farm
runs sharing the coordinator never use the same board at once; ``-j 1`` works boards one
after another. The deploy examples (inventory, systemd units, CI pipeline) are checked too.

Agents that no test restarts are shared by the module. Waits are bounded and processes
are stopped by PID; no test asserts how fast anything is.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable
from urllib.parse import unquote

import pytest

import qverify
import synthetic
from agent_harness import AgentPool, AgentProcess, agent_pool, free_port, module_agent_pool  # noqa: F401 (fixtures)
from labgrid_harness import labgrid_farm, lg_farm  # noqa: F401 (fixtures)
from qverify.client import farm_runner
from qverify.client.cli import main
from qverify.client.farm_inventory import BOARD_KEYS, MODEL_KEYS, SETTINGS_KEYS, InventoryError, load_inventory
from qverify.client.farm_runner import run_farm
from qverify.simulator import load
from qverify.simulator.compiler import compile_model
from qverify.simulator.modelfile import save

REPO = Path(__file__).resolve().parents[1]
FARM_DEPLOY = REPO / "deploy" / "farm"
HOSTS = {"board-11": "127.0.0.11", "board-12": "127.0.0.12", "board-13": "127.0.0.13", "board-14": "127.0.0.14"}
PLACES = ("board-11", "board-12")  # labgrid_harness: NetworkService 127.0.0.11 / 127.0.0.12
BOUND_S = 180.0  # upper bound of every wait here: the tests must end, not be fast


# ------------------------------------------------------------------------------ models


@dataclass
class Models:
    names: list[str]
    onnx: dict[str, Path]
    bins: dict[str, Path]
    fault_node: str  # an NPU node in the middle of both programs
    fault_tensor: str  # the tensor it writes (what --fault bitflip:TENSOR corrupts)

    def sha(self, name: str, kind: str) -> str:
        path = self.onnx[name] if kind == "onnx" else self.bins[name]
        return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    """Two small quantized CNNs (HardSwish and x * Sigmoid(x)) and their model.bin files."""
    folder = tmp_path_factory.mktemp("farm-models")
    onnx, bins = {}, {}
    for name, activation in (("cnn-hswish", "hardswish"), ("cnn-silu", "silu")):
        onnx[name] = synthetic.quantize(synthetic.small_cnn(seed=3, activation=activation),
                                        folder / f"{name}.quant.onnx")
        bins[name] = folder / f"{name}.bin"
        save(compile_model(onnx[name]), bins[name])
    programs = [load(path) for path in bins.values()]
    first = [n for n in programs[0].nodes if not n.on_cpu]
    shared = {(n.name, n.outputs[0]) for n in programs[1].nodes if not n.on_cpu}
    middle = sorted(first, key=lambda n: abs(first.index(n) - len(first) // 2))
    node = next(n for n in middle if (n.name, n.outputs[0]) in shared and n is not first[-1])
    return Models(list(onnx), onnx, bins, node.name, node.outputs[0])


# ------------------------------------------------------------------------------ boards


@dataclass
class Board:
    name: str
    host: str
    port: int
    agent: AgentProcess | None = None

    def entry(self, **extra: Any) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "agent_port": self.port, **extra}


def start_boards(pool: AgentPool, names: list[str], *args: str, tag: str = "") -> list[Board]:
    """One agent per board on the board's address, all on one free port (started together)."""
    port = free_port()
    agents = pool.start_many([{"args": list(args), "host": HOSTS[n], "port": port, "name": f"{n}{tag}"}
                              for n in names])
    return [Board(n, a.host, a.port, a) for n, a in zip(names, agents)]


@pytest.fixture
def backoffs(monkeypatch) -> list:
    """The delays the farm runner waits between attempts (its stop event's waits), in order."""
    from qverify.client import farm_runner

    waits: list = []

    class RecordingEvent(threading.Event):
        def wait(self, timeout=None):
            waits.append(timeout)
            return super().wait(timeout)

    monkeypatch.setattr(farm_runner, "threading", SimpleNamespace(Event=RecordingEvent, Lock=threading.Lock))
    return waits


@pytest.fixture(scope="module")
def farm(module_agent_pool) -> list[Board]:
    """Four healthy boards, shared by the module (never restarted)."""
    return start_boards(module_agent_pool, list(HOSTS))


@pytest.fixture(scope="module")
def faulty(module_agent_pool, models) -> Board:
    """board-12's address, another port: an agent flipping bits in the middle layer's output."""
    agent = module_agent_pool.start("--fault", f"bitflip:{models.fault_tensor}", host=HOSTS["board-12"],
                                    name="board-12-bitflip")
    return Board("board-12", agent.host, agent.port, agent)


@pytest.fixture(scope="module")
def slow(module_agent_pool) -> list[Board]:
    """The two labgrid boards' addresses, another port: agents taking 500 ms longer per run."""
    return start_boards(module_agent_pool, list(PLACES), "--fault", "delay:500", tag="-slow")


# --------------------------------------------------------------------------- inventory


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the plain text used here
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_inventory(path: Path, boards: list[dict[str, Any]], models: Models, *, settings: dict | None = None,
                    defaults: dict | None = None, model_names: list[str] | None = None,
                    matrix: list[dict] | None = None) -> Path:
    """An inventory in the documented format: [settings], [defaults], [[boards]], [[models]], [[matrix]]."""
    settings = {"retries": 2, "backoff_s": 0.05, **(settings or {})}
    defaults = {"transport": "grpc", "dump_all": True, "perf_frames": 2, **(defaults or {})}
    lines = ["[settings]", *(f"{k} = {toml_value(v)}" for k, v in settings.items()), "",
             "[defaults]", *(f"{k} = {toml_value(v)}" for k, v in defaults.items()), ""]
    for entry in boards:
        lines += ["[[boards]]", *(f"{k} = {toml_value(v)}" for k, v in entry.items()), ""]
    for name in model_names or models.names:
        lines += ["[[models]]", f"name = {toml_value(name)}", f"onnx = {toml_value(str(models.onnx[name]))}",
                  f"bin = {toml_value(str(models.bins[name]))}", ""]
    for rule in matrix or []:
        lines += ["[[matrix]]", *(f"{k} = {toml_value(v)}" for k, v in rule.items()), ""]
    path.write_text("\n".join(lines))
    return path


# ------------------------------------------------------------------------------ running


def farm_cli(capsys, *args: Any) -> tuple[int, str, str]:
    """``qverify farm ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(["farm", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def flat(text: str) -> str:
    """The terminal output with rich's wrapping undone (words joined by single spaces)."""
    return " ".join(text.split())


@dataclass
class Events:
    """What a farm run told its listener, with times: which boards were busy when."""
    seen: list[tuple[float, str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hooks: list[Callable[[str, str, str], None]] = field(default_factory=list)

    def listener(self, forward: Callable[[str, str, str], None] | None = None) -> Callable[[str, str, str], None]:
        def listen(event: str, board: str, detail: str) -> None:
            with self.lock:
                self.seen.append((time.monotonic(), event, board, detail))
            for hook in self.hooks:
                hook(event, board, detail)
            if forward is not None:
                forward(event, board, detail)
        return listen

    def spans(self) -> dict[str, tuple[float, float]]:
        """board -> (first event, the 'done'/'offline' state): when the board was being worked on."""
        out: dict[str, list[float]] = {}
        for stamp, event, board, detail in self.seen:
            span = out.setdefault(board, [stamp, float("nan")])
            if event == "state" and detail in ("done", "offline"):
                span[1] = stamp
        return {board: (a, b) for board, (a, b) in out.items()}

    def max_busy(self) -> int:
        """Most boards being worked on at the same moment."""
        edges = sorted([(a, 1) for a, _ in self.spans().values()] + [(b, -1) for _, b in self.spans().values()])
        busy = most = 0
        for _, step in edges:
            busy += step
            most = max(most, busy)
        return most

    def done_order(self) -> list[str]:
        return [board for _, event, board, detail in self.seen if event == "state" and detail in ("done", "offline")]


@pytest.fixture
def spy(monkeypatch) -> tuple[Events, list[int | None]]:
    """Wrap run_farm as the CLI calls it: its listener events and the ``jobs`` it was given."""
    events, jobs = Events(), []
    original = farm_runner.run_farm

    def run(inventory, jobs_arg=None, listener=None):
        jobs.append(jobs_arg)
        return original(inventory, jobs_arg, events.listener(listener))

    monkeypatch.setattr(farm_runner, "run_farm", run)
    return events, jobs


def by_pair(report: dict) -> dict[tuple[str, str], dict]:
    return {(j["board"], j["model"]): j for j in report["jobs"]}


def junit_suites(path: Path) -> dict[str, list[ET.Element]]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return {s.get("name"): s.findall("testcase") for s in suites}


# ------------------------------------------------------------------------- 1. all good


def test_all_good_every_pair_consistent_stamped_and_reported(tmp_path, capsys, spy, farm, models):
    events, _ = spy
    inv = write_inventory(tmp_path / "farm.toml", [b.entry() for b in farm], models)
    out_json, out_junit, out_html = tmp_path / "farm.json", tmp_path / "farm.xml", tmp_path / "farm.html"
    code, out, err = farm_cli(capsys, "run", inv, "--db", tmp_path / "history.db", "--json", out_json,
                              "--junit", out_junit, "--html", out_html)
    assert code == 0, out + err
    assert "8 consistent, 0 inconsistent, 0 infrastructure errors, 0 regressions: exit 0" in flat(out)

    report = json.loads(out_json.read_text())
    assert report["schema"] == "qverify.farm/1" and report["exit_code"] == 0
    assert report["counts"] == {"consistent": 8, "inconsistent": 0, "infra": 0}
    assert report["qverify_version"] == qverify.__version__
    assert [(j["board"], j["model"]) for j in report["jobs"]] == [(b.name, m) for b in farm for m in models.names]
    statuses = {s["name"]: s for s in report["boards"]}
    for b in farm:
        status = statuses[b.name]
        assert status["online"] and status["error"] == "" and status["address"] == f"{b.host}:{b.port}"
        assert status["versions"]["agent"] == qverify.__version__ and status["versions"]["backend"] == "sim"
    for job in report["jobs"]:
        assert job["outcome"] == "consistent" and job["attempts"] == 1 and not job["skipped"], job["message"]
        assert job["first_divergent"] == "" and "PASSED" in job["message"]
        stamps, board = job["versions"], statuses[job["board"]]["versions"]
        assert stamps["backend"] == "sim" and stamps["target"] == "sim-a16"
        assert stamps["qverify"] == qverify.__version__
        # The agent's and runtime's versions are on every job (under whichever key, see
        # test_job_stamps_use_the_documented_version_keys).
        assert {board["agent"], board["runtime"]} <= set(stamps.values()), stamps
        assert job["model_sha256"]["bin"] == models.sha(job["model"], "bin")
        assert job["model_sha256"]["onnx"] == models.sha(job["model"], "onnx")
        assert job["latency"]["frames"] == 2 and job["latency"]["median_ms"] > 0
        assert job["report"]["pairs"], "the pair's full verify report is kept"

    suites = junit_suites(out_junit)
    assert list(suites) == [b.name for b in farm]  # a testsuite per board
    for board, cases in suites.items():
        assert [c.get("name") for c in cases] == models.names  # a testcase per model
        assert all(c.find("failure") is None and c.find("error") is None for c in cases)

    page = out_html.read_text()
    assert all(b.name in page for b in farm) and all(m in page for m in models.names)
    links = [href for href in re.findall(r'href="([^"]+)"', page) if ".pairs/" in href]
    assert len(links) == 8
    for href in links:
        pair_page = (out_html.parent / unquote(href)).read_text()
        assert "farm report" in pair_page

    assert events.max_busy() > 1, "boards run in parallel"


def test_job_stamps_use_the_documented_version_keys(tmp_path, farm, models):
    """JobResult.versions is documented (farm_model) as agent, backend, runtime, driver, firmware,
    target -- the keys BoardStatus.versions and the reports (farm_reports.VERSION_KEYS) use."""
    inv = load_inventory(write_inventory(tmp_path / "farm.toml", [farm[0].entry()], models,
                                         defaults={"perf_frames": 0}, model_names=models.names[:1]))
    result = run_farm(inv)
    (job,) = result.jobs
    assert job.outcome == "consistent", job.message
    board = result.boards[0].versions
    for key in ("agent", "backend", "runtime", "driver", "firmware"):
        assert job.versions[key] == board[key], key
    assert job.versions["target"] == "sim-a16"


# ----------------------------------------------------------------------- 2. a faulty board


def test_a_faulty_board_is_inconsistent_alone_at_the_faulted_layer(tmp_path, capsys, farm, faulty, models):
    boards = [faulty.entry() if b.name == faulty.name else b.entry() for b in farm]
    inv = write_inventory(tmp_path / "farm.toml", boards, models)
    out_json, out_junit = tmp_path / "farm.json", tmp_path / "farm.xml"
    code, out, err = farm_cli(capsys, "run", inv, "--no-db", "--json", out_json, "--junit", out_junit)
    assert code == 1, out + err
    report = json.loads(out_json.read_text())
    assert report["counts"] == {"consistent": 6, "inconsistent": 2, "infra": 0}
    for (board, model), job in by_pair(report).items():
        if board == faulty.name:
            assert job["outcome"] == "inconsistent", job["message"]
            assert job["first_divergent"] == models.fault_node
            assert job["first_divergent_tensor"] == models.fault_tensor
            assert "FAILED" in job["message"] and job["attempts"] == 1
        else:
            assert job["outcome"] == "consistent", (board, model, job["message"])
    assert "2 inconsistent" in flat(out) and models.fault_node in out
    cases = junit_suites(out_junit)
    assert all(c.find("failure") is not None for c in cases[faulty.name])
    assert all(c.find("failure") is None for name, cs in cases.items() if name != faulty.name for c in cs)


# ------------------------------------------------------------------------ 3. a board down


def test_a_board_down_is_retried_reported_offline_and_leaves_the_others_alone(tmp_path, capsys, spy, farm, models,
                                                                            backoffs):
    events, _ = spy
    down_port = free_port()  # nothing listens there on 127.0.0.14
    boards = [b.entry() for b in farm[:3]] + [{"name": "board-14", "host": HOSTS["board-14"],
                                              "agent_port": down_port, "connect_timeout_s": 0.5}]
    inv = write_inventory(tmp_path / "farm.toml", boards, models, settings={"retries": 2, "backoff_s": 0.2})
    out_json = tmp_path / "farm.json"
    code, out, err = farm_cli(capsys, "run", inv, "--db", tmp_path / "history.db", "--json", out_json)
    assert code == 3, out + err  # the worst outcome
    report = json.loads(out_json.read_text())
    assert report["counts"] == {"consistent": 6, "inconsistent": 0, "infra": 2}
    statuses = {s["name"]: s for s in report["boards"]}
    offline = statuses["board-14"]
    assert not offline["online"]
    assert f"127.0.0.14:{down_port}" in offline["error"] and "after 3 attempts" in offline["error"]
    assert all(statuses[b.name]["online"] for b in farm[:3])
    for (board, model), job in by_pair(report).items():
        if board == "board-14":
            assert job["outcome"] == "infra" and job["skipped"] and "board offline" in job["message"]
        else:
            assert job["outcome"] == "consistent" and job["attempts"] == 1
    assert "board board-14 offline" in flat(out)
    assert backoffs == [0.2, 0.4]  # retried with exponential backoff before giving up


def test_pairs_of_an_offline_board_count_the_attempts_made(tmp_path, models):
    """The health check was tried retries + 1 times; its pairs' attempts should say so."""
    inv = load_inventory(write_inventory(
        tmp_path / "farm.toml", [{"name": "board-14", "host": HOSTS["board-14"], "agent_port": free_port(),
                                  "connect_timeout_s": 0.5}], models, settings={"retries": 1, "backoff_s": 0.05}))
    result = run_farm(inv)
    assert [j.outcome for j in result.jobs] == ["infra", "infra"]
    assert "after 2 attempts" in result.boards[0].error
    assert all(j.attempts == 2 for j in result.jobs)


def test_a_board_lost_after_its_health_check_is_retried_with_backoff_then_infra(tmp_path, agent_pool, farm, models,
                                                                                 backoffs):
    """The agent dies just before the job: the job is retried (infrastructure), then reported."""
    lost = start_boards(agent_pool, ["board-14"], tag="-lost")[0]
    inv = load_inventory(write_inventory(
        tmp_path / "farm.toml", [farm[0].entry(), lost.entry(connect_timeout_s=0.5)], models,
        settings={"retries": 2, "backoff_s": 0.2},
        matrix=[{"boards": {"name": "board-11"}, "models": {}},
                {"boards": {"name": "board-14"}, "models": {"name": "cnn-hswish"}}]))
    assert [(b.name, m.name) for b, m in inv.pairs()] == [("board-11", "cnn-hswish"), ("board-11", "cnn-silu"),
                                                          ("board-14", "cnn-hswish")]
    events = Events()
    events.hooks.append(lambda event, board, detail: lost.agent.kill()
                        if board == "board-14" and detail.startswith("running") else None)
    result = run_farm(inv, listener=events.listener())
    jobs = {(j.board, j.model): j for j in result.jobs}
    lost_job = jobs["board-14", "cnn-hswish"]
    assert lost_job.outcome == "infra" and not lost_job.skipped and lost_job.attempts == 3, lost_job.message
    assert backoffs[:2] == [0.2, 0.4]  # the backoff was waited, doubling
    assert jobs["board-11", "cnn-hswish"].outcome == jobs["board-11", "cnn-silu"].outcome == "consistent"
    assert result.exit_code == 3


# ---------------------------------------------------------- 4. inconsistent is never retried


def test_inconsistent_results_are_never_retried(tmp_path, faulty, models):
    inv = load_inventory(write_inventory(tmp_path / "farm.toml", [faulty.entry()], models,
                                         settings={"retries": 4, "backoff_s": 0.05}, defaults={"perf_frames": 0}))
    result = run_farm(inv)
    assert [(j.outcome, j.attempts) for j in result.jobs] == [("inconsistent", 1), ("inconsistent", 1)]
    assert result.exit_code == 1


def test_a_board_that_dies_mid_run_is_run_again_and_then_reported_as_gone(tmp_path, agent_pool, models):
    """Dying mid-run may be a crash or a network cut: the job runs again; a board that stays
    silent afterwards is an infrastructure error that says what happened first."""
    (board,) = start_boards(agent_pool, ["board-13"], "--fault", f"crash:{models.fault_tensor}", tag="-crash")
    inv = load_inventory(write_inventory(tmp_path / "farm.toml", [board.entry()], models,
                                         settings={"retries": 1, "backoff_s": 0.05}, defaults={"perf_frames": 0}))
    result = run_farm(inv)
    job = result.jobs[0]
    assert job.outcome == "infra" and job.attempts >= 2, job
    assert "stopped answering during a run and has not answered since" in job.message


# ------------------------------------------------------------------- 5. history, regressions


def test_regressions_are_flagged_for_exactly_the_pairs_that_got_worse(tmp_path, capsys, agent_pool, models):
    boards = start_boards(agent_pool, ["board-11", "board-12", "board-13"], tag="-hist")
    db = tmp_path / "history.db"
    settings = {"latency_regression_pct": 2000}  # 21x slower: far above a healthy board's jitter
    inv = write_inventory(tmp_path / "farm.toml", [b.entry() for b in boards], models, settings=settings,
                          defaults={"perf_frames": 3})
    code, out, err = farm_cli(capsys, "run", inv, "--db", db, "--json", tmp_path / "first.json")
    assert code == 0, out + err
    assert json.loads((tmp_path / "first.json").read_text())["regressions"] == []

    # The same boards, same addresses and ports: board-11 now 300 ms slower per run, board-12 broken.
    slowed, broken = boards[0], boards[1]
    for board, fault in ((slowed, "delay:300"), (broken, f"bitflip:{models.fault_tensor}")):
        board.agent.stop()
        board.agent = agent_pool.start("--fault", fault, host=board.host, port=board.port, name=f"{board.name}-2")
        assert board.agent.port == board.port
    second = tmp_path / "second.json"
    code, out, err = farm_cli(capsys, "run", inv, "--db", db, "--json", second)
    assert code == 1, out + err
    report = json.loads(second.read_text())
    flagged = {(r["board"], r["model"], r["kind"]) for r in report["regressions"]}
    first_run = json.loads((tmp_path / "first.json").read_text())["run_id"]
    assert flagged == {(slowed.name, m, "latency_up") for m in models.names} | \
                      {(broken.name, m, "newly_inconsistent") for m in models.names}, report["regressions"]
    assert all(r["previous_run"] == first_run for r in report["regressions"])
    for r in report["regressions"]:
        assert flat(f"regression {r['board']} / {r['model']}") in flat(out)
    assert "4 regressions" in flat(out)
    jobs = by_pair(report)
    assert all(jobs[slowed.name, m]["outcome"] == "consistent" for m in models.names)  # slower, still right

    code, out, err = farm_cli(capsys, "report", "--since", "1d", "--db", db, "--json")
    assert code == 0, err
    history = json.loads(out)
    assert [r["run_id"] for r in history["runs"]] == [first_run, report["run_id"]]
    assert {(r["board"], r["model"], r["kind"]) for r in history["regressions"]} == flagged
    code, out, err = farm_cli(capsys, "report", "--since", "1d", "--db", db)
    assert code == 0, err
    assert "newly_inconsistent" in out and "latency_up" in out


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


# ----------------------------------------------------------------------------- 7. labgrid


def place_entries(coordinator: str, boards: list[Board]) -> list[dict[str, Any]]:
    return [{"name": b.name, "place": b.name, "coordinator": coordinator, "agent_port": b.port} for b in boards]


# One farm run reserving two places at once (jobs > 1) opens two labgrid client sessions at
# once; see test_one_run_reserves_several_places_at_once. The other labgrid tests run their
# boards one at a time (jobs = 1) so that they test what they are about.

def test_labgrid_places_are_reserved_for_the_jobs_and_released(tmp_path, lg_farm, farm, models):
    boards = [b for b in farm if b.name in PLACES]
    inv = load_inventory(write_inventory(tmp_path / "farm.toml", place_entries(lg_farm.address, boards), models,
                                         settings={"place_wait_s": 30, "jobs": 1}, defaults={"perf_frames": 0}))
    holders: list[tuple[str, str | None]] = []
    events = Events()
    events.hooks.append(lambda event, board, detail: holders.append((board, lg_farm.holder(board)))
                        if detail.startswith("running") else None)
    result = run_farm(inv, listener=events.listener())
    assert result.exit_code == 0, [j.message for j in result.jobs]
    assert [(j.board, j.outcome) for j in result.jobs] == [(b.name, "consistent") for b in boards for _ in models.names]
    for status, b in zip(result.boards, boards):
        assert status.place == b.name and status.address == f"{b.host}:{b.port}" and status.online
    assert len(holders) == 4
    assert all(who and f"qverify-{os.getpid()}-" in who for _, who in holders), holders  # held while running
    assert all(lg_farm.holder(p) is None for p in PLACES), lg_farm.acquired()  # released after


def test_one_run_reserves_several_places_at_once(tmp_path, lg_farm, farm, models):
    boards = [b for b in farm if b.name in PLACES]
    inv = load_inventory(write_inventory(tmp_path / "farm.toml", place_entries(lg_farm.address, boards), models,
                                         settings={"place_wait_s": 30, "jobs": 2}, defaults={"perf_frames": 0},
                                         model_names=models.names[:1]))
    for _ in range(3):  # the two reservations race; a few runs make the outcome certain
        result = run_farm(inv)
        assert [(j.board, j.outcome) for j in result.jobs] == [(b.name, "consistent") for b in boards], \
            [j.message for j in result.jobs]
        assert all(lg_farm.holder(p) is None for p in PLACES), lg_farm.acquired()


def test_labgrid_places_are_released_after_failing_jobs(tmp_path, capsys, lg_farm, farm, faulty, models):
    board_11 = next(b for b in farm if b.name == "board-11")
    entries = place_entries(lg_farm.address, [board_11, faulty])
    entries.append({"name": "bare", "place": "board-bare", "coordinator": lg_farm.address})
    inv = write_inventory(tmp_path / "farm.toml", entries, models, defaults={"perf_frames": 0},
                          settings={"place_wait_s": 5, "jobs": 1})
    code, out, err = farm_cli(capsys, "run", inv, "--no-db", "--json", tmp_path / "farm.json")
    assert code == 3, out + err
    report = json.loads((tmp_path / "farm.json").read_text())
    jobs = by_pair(report)
    assert all(jobs["board-12", m]["outcome"] == "inconsistent" for m in models.names)
    assert all(jobs["board-11", m]["outcome"] == "consistent" for m in models.names)
    assert all(jobs["bare", m]["outcome"] == "infra" and jobs["bare", m]["skipped"] for m in models.names)
    bare = next(s for s in report["boards"] if s["name"] == "bare")
    assert not bare["online"] and "NetworkService" in bare["error"]
    assert lg_farm.acquired() == {"board-11": None, "board-12": None, "board-bare": None}


class Tap(threading.Thread):
    """A TCP forwarder on ``host``: every connection goes on to ``target``; when it was open is logged.

    Two taps in front of one agent give a board two addresses, so two farm runs can share
    the board (and its labgrid place) while the log tells which run was connected when."""

    def __init__(self, host: str, target: tuple[str, int], tag: tuple[str, str],
                 log: list[tuple[tuple[str, str], float, float]]) -> None:
        super().__init__(daemon=True, name=f"tap-{tag}")
        self.target, self.tag, self.log = target, tag, log
        self.server = socket.create_server((host, 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.halt = threading.Event()
        self.pipes: list[threading.Thread] = []

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                client, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            pipe = threading.Thread(target=self._pipe, args=(client, time.monotonic()), daemon=True)
            self.pipes.append(pipe)
            pipe.start()

    def _pipe(self, client: socket.socket, opened: float) -> None:
        sockets = [client]
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            sockets.append(upstream)
            for s in sockets:
                s.settimeout(None)
            peer = {client: upstream, upstream: client}
            with selectors.DefaultSelector() as sel:
                for s in sockets:
                    sel.register(s, selectors.EVENT_READ)
                while not self.halt.is_set():
                    for key, _ in sel.select(timeout=0.2):
                        data = key.fileobj.recv(1 << 16)
                        if not data:
                            return
                        peer[key.fileobj].sendall(data)
        except OSError:
            return
        finally:
            self.log.append((self.tag, opened, time.monotonic()))
            for s in sockets:
                s.close()

    def close(self) -> None:
        self.halt.set()
        self.server.close()
        self.join(10)
        for pipe in self.pipes:
            pipe.join(10)


def start_farm_process(tmp_path: Path, inventory: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    out, log = tmp_path / f"{name}.json", tmp_path / f"{name}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "qverify.client.cli", "farm", "run", str(inventory),
                                 "--no-db", "--json", str(out)], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=tmp_path)
    return proc, out, log


def finish_process(proc: subprocess.Popen, log: Path) -> int:
    try:
        return proc.wait(BOUND_S)
    except subprocess.TimeoutExpired:
        proc.kill()  # by PID
        proc.wait(30)
        pytest.fail(f"farm run {proc.pid} did not end within {BOUND_S:g} s:\n{log.read_text(errors='replace')}")


def test_two_farm_runs_sharing_the_coordinator_never_use_a_board_at_once(tmp_path, lg_farm, slow, models):
    log: list[tuple[tuple[str, str], float, float]] = []
    taps = [Tap(b.host, (b.host, b.port), (b.name, run), log) for run in ("A", "B") for b in slow]
    procs = []
    try:
        for tap in taps:
            tap.start()
        for run in ("A", "B"):
            entries = [{"name": b.name, "place": b.name, "coordinator": lg_farm.address,
                        "agent_port": next(t.port for t in taps if t.tag == (b.name, run))} for b in slow]
            inv = write_inventory(tmp_path / f"farm-{run}.toml", entries, models, defaults={"perf_frames": 0},
                                  settings={"place_wait_s": 150, "jobs": 1})
            procs.append(start_farm_process(tmp_path, inv, run))
        codes = [finish_process(proc, plog) for proc, _, plog in procs]
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        for tap in taps:
            tap.close()
    for (proc, out, plog), code in zip(procs, codes):
        assert code == 0, plog.read_text(errors="replace")
        report = json.loads(out.read_text())
        assert report["counts"] == {"consistent": 4, "inconsistent": 0, "infra": 0}
    for b in slow:
        hulls = {}
        for run in ("A", "B"):
            spans = [(opened, closed) for tag, opened, closed in log if tag == (b.name, run)]
            assert spans, f"run {run} never connected to {b.name}"
            hulls[run] = (min(o for o, _ in spans), max(c for _, c in spans))
        (a0, a1), (b0, b1) = hulls["A"], hulls["B"]
        assert a1 <= b0 or b1 <= a0, f"{b.name}: run A connected {a0:.3f}..{a1:.3f}, run B {b0:.3f}..{b1:.3f}"
    assert all(lg_farm.holder(p) is None for p in PLACES), lg_farm.acquired()



@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, id="SIGINT"),
                                    pytest.param(signal.SIGTERM, id="SIGTERM")])
def test_an_interrupted_farm_run_releases_its_places(tmp_path, lg_farm, slow, models, signum):
    """Ctrl-C, and SIGTERM (what systemd and CI runners send to stop a job), release the places."""
    inv = write_inventory(tmp_path / "farm.toml", place_entries(lg_farm.address, slow[:1]), models,
                          defaults={"perf_frames": 5})
    proc, _, plog = start_farm_process(tmp_path, inv, "interrupted")
    try:
        deadline = time.monotonic() + BOUND_S
        while lg_farm.holder(slow[0].name) is None:
            assert proc.poll() is None, plog.read_text(errors="replace")
            assert time.monotonic() < deadline, "the farm run never acquired its place"
            time.sleep(0.05)
        proc.send_signal(signum)
        code = finish_process(proc, plog)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert code != 0
    still = lg_farm.holder(slow[0].name)
    assert still is None, f"{slow[0].name} still held by {still}:\n{plog.read_text(errors='replace')}"


# ----------------------------------------------------------------------------- 8. -j 1


def test_one_job_at_a_time_works_boards_one_after_another(tmp_path, capsys, spy, farm, models):
    events, jobs = spy
    inv = write_inventory(tmp_path / "farm.toml", [b.entry() for b in farm], models, defaults={"perf_frames": 0})
    code, out, err = farm_cli(capsys, "run", inv, "-j", "1", "--no-db", "--json", tmp_path / "farm.json")
    assert code == 0, out + err
    assert jobs == [1]
    report = json.loads((tmp_path / "farm.json").read_text())
    assert report["counts"] == {"consistent": 8, "inconsistent": 0, "infra": 0}
    assert events.max_busy() == 1
    assert events.done_order() == [b.name for b in farm]


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
