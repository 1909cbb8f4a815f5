"""The farm tests' harness: two small models, boards on loopback addresses, inventories,
``qverify farm`` in this process and a spy on what a farm run tells its listener.

The boards are real ``qverify-agent`` subprocesses on 127.0.0.11 .. 127.0.0.14
(agent_harness), each listening on the same port of its own address. The fixtures here are
imported by the test modules that use them (``from farm_harness import ...``).
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

import synthetic
from agent_harness import AgentPool, AgentProcess, free_port
from qverify.client.cli import main
from qverify.client.farm import runner as farm_runner
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
