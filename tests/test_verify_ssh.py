"""The card's command line against a real board on loopback: a private OpenSSH sshd for the
push and a real ``qverify-agent`` whose model store the push lands in.

The board is at 127.0.0.23 with the agent on its default port, so the command line is
exactly ``qverify -m quant.onnx,model.bin -b 127.0.0.23``. SSH details come from the
user's ~/.ssh/config (a private HOME per test): ``Host 127.0.0.23`` names the sshd's port,
user and key, as a real user's config would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import synthetic
from agent_harness import agent_pool  # noqa: F401  (fixture)
from qverify.client.agent_client import file_sha256
from qverify.simulator.compiler import compile_model
from qverify.simulator.modelfile import save
from sshd_harness import SshServer, keygen, sshd, sshd_factory  # noqa: F401  (fixtures)

BOARD = "127.0.0.23"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ssh-verify")
    onnx_path = synthetic.quantize(synthetic.small_cnn(seed=5), folder / "quant.onnx")
    save(compile_model(onnx_path), folder / "model.bin")
    return onnx_path, folder / "model.bin"


@pytest.fixture
def home(tmp_path: Path, sshd: SshServer) -> Path:  # noqa: F811
    """A HOME whose ~/.ssh/config reaches the board's sshd; known_hosts starts empty."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "config").write_text(
        f"Host {BOARD}\n    HostName {sshd.host}\n    Port {sshd.port}\n    User {sshd.user}\n"
        f"    IdentityFile {sshd.user_key}\n")
    return home


@pytest.fixture
def board(agent_pool, tmp_path):  # noqa: F811
    """The board's agent on 127.0.0.23, default port 7060 (skipped if something else holds it)."""
    try:
        return agent_pool.start(host=BOARD, port=7060)
    except Exception as exc:  # the port is taken on this machine
        pytest.skip(f"cannot start an agent on {BOARD}:7060: {str(exc).splitlines()[0]}")


def qverify_cli(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "qverify.client.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_card_command_line_pushes_over_ssh_and_verifies(pair, home, board, tmp_path):
    proc = qverify_cli(home, "-m", f"{pair[0]},{pair[1]}", "-b", BOARD, "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "quant.onnx vs board: 1 output" in proc.stdout and "board vs simulator" in proc.stdout
    sha = file_sha256(pair[1])
    assert (board.model_dir / f"{sha}.bin").read_bytes() == pair[1].read_bytes()
    assert not [p for p in board.model_dir.iterdir() if p.name.endswith(".part")]
    known = (home / ".ssh" / "known_hosts").read_text()
    assert known.strip(), "the new host key was recorded"
    side = [s for s in json.loads((tmp_path / "r.json").read_text())["sides"] if s["kind"] == "board"][0]
    assert side["detail"]["pushed"] is True and side["detail"]["push_transport"] == "sftp"

    again = qverify_cli(home, "-m", f"{pair[0]},{pair[1]}", "-b", BOARD, "--json", tmp_path / "r2.json")
    assert again.returncode == 0, again.stderr
    side = [s for s in json.loads((tmp_path / "r2.json").read_text())["sides"] if s["kind"] == "board"][0]
    assert side["detail"]["pushed"] is False  # content-addressed: already there


def test_a_board_without_ssh_is_an_infrastructure_error(pair, board, sshd, tmp_path):  # noqa: F811
    home = tmp_path / "bare-home"
    home.mkdir()
    proc = qverify_cli(home, "-m", f"{pair[0]},{pair[1]}", "-b", f"{BOARD}:7060", "--ssh-user", sshd.user,
                       "--ssh-key", sshd.user_key, "--ssh-port", sshd.port, "--known-hosts", tmp_path / "kh")
    # Without the config's HostName the push goes to 127.0.0.23 itself, where no sshd listens.
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "ssh" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) >= 1


def test_a_wrong_ssh_key_is_an_infrastructure_error(pair, home, board, tmp_path):
    wrong = tmp_path / "wrong_key"
    keygen(wrong, "wrong")
    proc = qverify_cli(home, "-m", f"{pair[0]},{pair[1]}", "-b", BOARD, "--ssh-key", wrong)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "key" in proc.stderr.lower()
    assert not list(board.model_dir.glob("*.bin"))


def test_a_changed_host_key_is_refused_with_the_reason(pair, home, board, sshd):  # noqa: F811
    first = qverify_cli(home, "-m", f"{pair[0]},{pair[1]}", "-b", BOARD)
    assert first.returncode == 0, first.stderr
    for path in board.model_dir.glob("*.bin"):
        path.unlink()  # so the next run must push again
    known_before = (home / ".ssh" / "known_hosts").read_text()
    sshd.regenerate_host_key()
    proc = qverify_cli(home, "-m", f"{pair[0]},{pair[1]}", "-b", BOARD)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "changed" in proc.stderr.lower() and "Traceback" not in proc.stderr
    assert (home / ".ssh" / "known_hosts").read_text() == known_before
    assert not list(board.model_dir.glob("*.bin"))
