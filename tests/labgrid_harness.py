"""Test harness: a real labgrid coordinator and exporter on loopback, with places to reserve.

* ``LabgridFarm.start(workdir)`` runs ``labgrid-coordinator -l 127.0.0.1:0`` with its work
  directory as cwd (it writes places.yaml / resources.yaml there) and reads the port it
  prints; runs ``labgrid-exporter`` (name ``qverify-test``) on ``exporter.yaml``: groups
  ``g11`` and ``g12``, each one NetworkService (127.0.0.11 and 127.0.0.12, user = the current
  user; g12 also sets port 2222); waits (bounded) until the coordinator lists both
  resources; then creates, with ``labgrid-client create`` / ``add-match``, the places
  ``board-11`` and ``board-12`` (one resource each) and ``board-bare`` (no resources).
* ``holder(place)`` says who has acquired a place (the coordinator's GetPlaces, through
  plain gRPC, independent of the code under test); ``client(...)`` runs labgrid-client
  against the farm; ``release_all()`` releases every place, whoever holds it.
* Fixtures: ``labgrid_farm`` (one farm per test module) and ``lg_farm`` (the same farm,
  with every place released before and after each test, so a failed test leaves nothing
  held for the next).

The labgrid tools run as ``python -m`` of the installed package, so no PATH is needed.
Processes are stopped by PID: SIGTERM, a bounded wait, then SIGKILL. Without labgrid the
fixtures skip with the install command.
"""
from __future__ import annotations

import getpass
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

INSTALL_HINT = "pip install 'qverify[labgrid]'"
HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # seconds for the coordinator to listen / the exporter's resources to show
STOP_TIMEOUT = 10.0   # seconds a process gets after SIGTERM before SIGKILL
CLIENT_TIMEOUT = 60.0
EXPORTER = "qverify-test"
BOARDS = {"board-11": ("g11", "127.0.0.11", None), "board-12": ("g12", "127.0.0.12", 2222)}
BARE_PLACE = "board-bare"
USER = getpass.getuser()


def require_labgrid() -> None:
    """Skip unless labgrid (the coordinator, exporter and client) is importable."""
    try:
        import labgrid.remote.client  # noqa: F401
    except ImportError as e:  # not installed, or broken
        pytest.skip(f"labgrid is not importable ({e}); {INSTALL_HINT}")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class LabgridFarm:
    workdir: Path
    address: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def start(cls, workdir: Path) -> "LabgridFarm":
        farm = cls(workdir)
        try:
            farm._start_coordinator()
            farm._start_exporter()
            farm._create_places()
        except BaseException:
            farm.stop()
            raise
        return farm

    def _spawn(self, module: str, args: list[str], log: str) -> subprocess.Popen:
        with open(self.workdir / log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=self.workdir,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _start_coordinator(self) -> None:
        log = self.workdir / "coordinator.log"
        proc = self._spawn("labgrid.remote.coordinator", ["-l", f"{HOST}:0"], log.name)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            found = re.search(rf"listening on {re.escape(HOST)}:(\d+)", log.read_text(errors="replace"))
            if found:
                self.address = f"{HOST}:{found.group(1)}"
                return
            time.sleep(0.1)
        raise RuntimeError(f"labgrid-coordinator did not start listening:\n{_tail(log)}")

    def _start_exporter(self) -> None:
        lines = []
        for group, address, port in BOARDS.values():
            lines += [f"{group}:", "  NetworkService:", f"    address: '{address}'",
                      f"    username: '{USER}'"] + ([f"    port: {port}"] if port else [])
        config = self.workdir / "exporter.yaml"
        config.write_text("\n".join(lines) + "\n")
        proc = self._spawn("labgrid.remote.exporter", ["-c", self.address, "-n", EXPORTER,
                                                       "--hostname", HOST, config.name], "exporter.log")
        want = {f"{EXPORTER}/{group}/NetworkService" for group, _, _ in BOARDS.values()}
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            listed = self.client("resources", check=False).stdout.split()
            if want <= set(listed):
                return
            time.sleep(0.3)
        raise RuntimeError(f"the exporter's resources did not show on the coordinator:\n"
                           f"{_tail(self.workdir / 'exporter.log')}")

    def _create_places(self) -> None:
        for place, (group, _, _) in BOARDS.items():
            self.client("-p", place, "create")
            self.client("-p", place, "add-match", f"{EXPORTER}/{group}/NetworkService")
        self.client("-p", BARE_PLACE, "create")

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run labgrid-client against this farm."""
        done = subprocess.run([sys.executable, "-m", "labgrid.remote.client", "-x", self.address, *args],
                              cwd=self.workdir, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
        if check and done.returncode != 0:
            raise RuntimeError(f"labgrid-client {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}")
        return done

    def _stub(self):
        import grpc
        from labgrid.remote.generated import labgrid_coordinator_pb2_grpc as pb_grpc
        channel = grpc.insecure_channel(self.address)
        return channel, pb_grpc.CoordinatorStub(channel)

    def acquired(self) -> dict[str, str | None]:
        """place name -> who has acquired it (None: free), as the coordinator says."""
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb
        channel, stub = self._stub()
        with channel:
            reply = stub.GetPlaces(pb.GetPlacesRequest(), timeout=CLIENT_TIMEOUT)
        return {p.name: (p.acquired if p.HasField("acquired") else None) or None for p in reply.places}

    def holder(self, place: str) -> str | None:
        return self.acquired()[place]

    def release_all(self) -> None:
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb
        held = [name for name, who in self.acquired().items() if who]
        channel, stub = self._stub()
        with channel:
            for name in held:
                stub.ReleasePlace(pb.ReleasePlaceRequest(placename=name), timeout=CLIENT_TIMEOUT)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # exporter first, then the coordinator
            stop_process(proc)
        self.procs.clear()


@pytest.fixture(scope="module")
def labgrid_farm(tmp_path_factory) -> Iterator[LabgridFarm]:
    """A coordinator + exporter with places board-11, board-12 and board-bare, per module."""
    require_labgrid()
    farm = LabgridFarm.start(tmp_path_factory.mktemp("labgrid"))
    try:
        yield farm
    finally:
        farm.stop()


@pytest.fixture
def lg_farm(labgrid_farm: LabgridFarm) -> Iterator[LabgridFarm]:
    """The module's farm with every place free at the start and end of the test."""
    labgrid_farm.release_all()
    yield labgrid_farm
    labgrid_farm.release_all()
