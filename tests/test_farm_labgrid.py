"""``qverify farm run`` with boards named by labgrid place, through a real coordinator.

Places are reserved for the jobs and released afterwards (also after a failing job, and on
Ctrl-C or SIGTERM), one run reserves several places at once, and two farm runs sharing the
coordinator never use the same board at once. Waits are bounded and processes are stopped
by PID; no test asserts how fast anything is.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent_harness import module_agent_pool  # noqa: F401 (fixture)
from farm_harness import (BOUND_S, PLACES, Board, Events, by_pair, farm_cli, write_inventory,  # noqa: F401
                          farm, faulty, models, slow)  # (the last four: fixtures)
from labgrid_harness import labgrid_farm, lg_farm  # noqa: F401 (fixtures)
from qverify.client.farm.inventory import load_inventory
from qverify.client.farm.runner import run_farm


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
