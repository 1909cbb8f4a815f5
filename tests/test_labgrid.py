"""reserved_place() against a real labgrid coordinator and exporter on loopback (labgrid_harness).

What a shared board farm relies on: the board's address and user come from the place's
NetworkService resource; a held place is acquired on the coordinator and refused to others
(PlaceBusy names the holder); it is released after the block, also when the body raises or
is interrupted (Ctrl-C, SIGTERM); a waiter gets it once it is free; concurrent processes never
hold it at the same time, and of racing ones exactly one wins; a release never frees someone
else's acquisition; unknown places, places without a NetworkService and unreachable
coordinators are LabgridErrors. Waits are bounded; no test asserts how fast anything is.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from labgrid_harness import BARE_PLACE, USER, labgrid_farm, lg_farm, require_labgrid  # noqa: F401  (fixtures)
from qverify.client.farm.labgrid_places import LabgridError, PlaceBusy, PlaceTarget, reserved_place

BOUND_S = 120.0  # upper bound for any wait in these tests: they must end, not be fast

# Holds a place in a process of its own: waits for the file "go" (so that several start
# together), records when it held the place, and holds it HOLD seconds or until "release".
HOLDER = r"""
import sys, time
from pathlib import Path
from qverify.client.farm.labgrid_places import PlaceBusy, reserved_place

coordinator, place, out, wait_s, hold = sys.argv[1:6]
out = Path(out)
out.with_suffix(".ready").write_text("")
deadline = time.monotonic() + 120
while not (out.parent / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
try:
    with reserved_place(place, coordinator, wait_s=float(wait_s), poll_s=0.05):
        entered = time.time()
        out.with_suffix(".held").write_text("")
        if hold == "until-release":
            while not (out.parent / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            time.sleep(float(hold))
        left = time.time()
    out.write_text(f"won {entered!r} {left!r}")
except PlaceBusy as e:
    out.write_text(f"busy {e.holder}")
"""


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {BOUND_S:g} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def start_holders(lg_farm, tmp_path):
    """``start_holders(count, wait_s, hold)``: HOLDER processes on board-11, started together;
    [(process, output file)]. Teardown lets go of the place and kills what still runs."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(count: int, wait_s: float, hold: str) -> list[tuple[subprocess.Popen, Path]]:
        for i in range(count):
            out = tmp_path / f"holder{i}.out"
            started.append((subprocess.Popen(
                [sys.executable, str(script), lg_farm.address, "board-11", str(out), str(wait_s), hold],
                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), out))
        wait_until(lambda: all(out.with_suffix(".ready").exists() or proc.poll() is not None
                               for proc, out in started), "holder processes ready")
        (tmp_path / "go").write_text("")
        return list(started)

    yield start
    (tmp_path / "release").write_text("")
    for proc, _ in (held for held in started if held[0].poll() is None):
        try:
            proc.communicate(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def finish(started: list[tuple[subprocess.Popen, Path]]) -> list[str]:
    results = []
    for proc, out in started:
        try:
            output = proc.communicate(timeout=BOUND_S)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0].decode(errors="replace")
        assert proc.returncode == 0 and out.exists(), f"holder failed ({proc.returncode}):\n{output}"
        results.append(out.read_text())
    return results


def test_yields_the_network_service_address_and_user(lg_farm):
    with reserved_place("board-11", lg_farm.address) as board:
        assert board == PlaceTarget("board-11", "127.0.0.11", USER, None)
    with reserved_place("board-12", lg_farm.address) as board:
        assert board == PlaceTarget("board-12", "127.0.0.12", USER, 2222)


def test_coordinator_from_lg_coordinator(lg_farm, monkeypatch):
    monkeypatch.setenv("LG_COORDINATOR", lg_farm.address)
    with reserved_place("board-12") as board:
        assert board.address == "127.0.0.12"
        assert lg_farm.holder("board-12")


def test_held_place_is_acquired_and_refused_to_others(lg_farm):
    with reserved_place("board-11", lg_farm.address):
        holder = lg_farm.holder("board-11")
        assert holder and holder.endswith(f"/{USER}") and "+qverify-" in holder
        assert f"acquired: {holder}" in lg_farm.client("-p", "board-11", "show").stdout
        assert lg_farm.holder("board-12") is None
        with pytest.raises(PlaceBusy) as busy:
            with reserved_place("board-11", lg_farm.address, wait_s=0):
                pytest.fail("a second holder entered the block")
        assert busy.value.holder == holder and holder in str(busy.value) and "board-11" in str(busy.value)
        assert lg_farm.holder("board-11") == holder  # the refused attempt did not release it
    assert lg_farm.holder("board-11") is None
    with reserved_place("board-11", lg_farm.address, wait_s=0) as board:
        assert board.address == "127.0.0.11"


def test_busy_when_held_by_labgrid_client(lg_farm):
    lg_farm.client("-p", "board-12", "acquire")
    holder = lg_farm.holder("board-12")
    with pytest.raises(PlaceBusy) as busy:
        with reserved_place("board-12", lg_farm.address, wait_s=0.3, poll_s=0.1):
            pytest.fail("entered a place held by labgrid-client")
    assert busy.value.holder == holder
    assert lg_farm.holder("board-12") == holder


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_released_when_the_body_raises(lg_farm, error):
    with pytest.raises(error):
        with reserved_place("board-11", lg_farm.address):
            assert lg_farm.holder("board-11")
            raise error("job failed")
    assert lg_farm.holder("board-11") is None


def test_exit_never_releases_someone_elses_acquisition(lg_farm):
    with reserved_place("board-11", lg_farm.address):
        lg_farm.release_all()  # an operator kicks us, and someone else takes the board
        lg_farm.client("-p", "board-11", "acquire")
        other = lg_farm.holder("board-11")
    assert lg_farm.holder("board-11") == other


def test_waiter_gets_the_place_once_released(lg_farm):
    got: dict[str, object] = {}

    def waiter() -> None:
        try:
            got["started"] = time.time()
            with reserved_place("board-11", lg_farm.address, wait_s=BOUND_S, poll_s=0.1) as board:
                got["entered"], got["board"] = time.time(), board
        except BaseException as e:  # reported by the main thread
            got["error"] = e

    with reserved_place("board-11", lg_farm.address):
        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        time.sleep(1.0)
        assert "entered" not in got and "error" not in got
        released_at = time.time()
    thread.join(BOUND_S)
    assert not thread.is_alive() and "error" not in got, got.get("error")
    assert got["started"] < released_at <= got["entered"]
    assert got["board"].address == "127.0.0.11"
    assert lg_farm.holder("board-11") is None


def test_concurrent_processes_never_hold_the_place_together(lg_farm, start_holders):
    results = finish(start_holders(3, wait_s=BOUND_S, hold="1.0"))
    intervals = sorted((float(r.split()[1]), float(r.split()[2])) for r in results if r.startswith("won"))
    assert len(intervals) == 3, results
    for (_, left), (entered, _) in zip(intervals, intervals[1:]):
        assert left <= entered, intervals
    assert lg_farm.holder("board-11") is None


def test_racing_processes_exactly_one_wins(lg_farm, tmp_path, start_holders):
    started = start_holders(4, wait_s=0, hold="until-release")
    outs = [out for _, out in started]
    wait_until(lambda: all(o.with_suffix(".held").exists() or o.exists() or p.poll() is not None
                           for p, o in started), "every racer decided")
    holders = [o for o in outs if o.with_suffix(".held").exists()]
    assert len(holders) == 1, [o.read_text() if o.exists() else "held" for o in outs]
    winner = lg_farm.holder("board-11")
    (tmp_path / "release").write_text("")
    results = finish(started)
    assert sorted(r.split()[0] for r in results) == ["busy", "busy", "busy", "won"]
    assert all(r == f"busy {winner}" for r in results if r.startswith("busy"))
    assert lg_farm.holder("board-11") is None


def test_sigterm_releases_the_place(lg_farm, start_holders):
    [(proc, out)] = start_holders(1, wait_s=0, hold="until-release")
    wait_until(lambda: out.with_suffix(".held").exists() or proc.poll() is not None, "the holder holds")
    assert lg_farm.holder("board-11")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=BOUND_S)
    assert proc.returncode == 128 + signal.SIGTERM
    assert lg_farm.holder("board-11") is None


def test_unknown_place(lg_farm):
    with pytest.raises(LabgridError) as error:
        with reserved_place("no-such-board", lg_farm.address):
            pytest.fail("entered an unknown place")
    assert not isinstance(error.value, PlaceBusy)
    assert "no-such-board" in str(error.value)


def test_place_without_network_service_is_refused_and_released(lg_farm):
    with pytest.raises(LabgridError, match="NetworkService") as error:
        with reserved_place(BARE_PLACE, lg_farm.address):
            pytest.fail("entered a place without a NetworkService")
    assert BARE_PLACE in str(error.value)
    assert lg_farm.holder(BARE_PLACE) is None


def _raises_labgrid_error(**kwargs) -> LabgridError:
    """reserved_place(**kwargs) in a thread (so a hang cannot hang the tests); its LabgridError."""
    require_labgrid()
    got: dict[str, BaseException] = {}

    def attempt() -> None:
        try:
            with reserved_place("board-11", **kwargs):
                pass
        except BaseException as e:
            got["error"] = e

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), "reserved_place did not give up"
    assert isinstance(got.get("error"), LabgridError), got
    return got["error"]


def test_unreachable_coordinator():
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % sock.getsockname()[1]
    error = _raises_labgrid_error(coordinator=address)
    assert address in str(error) and not isinstance(error, PlaceBusy)


def test_silent_coordinator_times_out():
    with socket.socket() as sock:  # accepts connections (kernel backlog) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        address = "127.0.0.1:%d" % sock.getsockname()[1]
        error = _raises_labgrid_error(coordinator=address, op_timeout_s=2.0)
    assert "did not answer" in str(error) and address in str(error)


def test_missing_labgrid_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "labgrid.remote.client", None)  # import fails as if absent
    with pytest.raises(LabgridError, match=r"pip install 'qverify\[labgrid\]'"):
        with reserved_place("board-11", "127.0.0.1:1"):
            pass
