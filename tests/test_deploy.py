"""deploy/: the emulated board's entrypoint, the board installer, the systemd unit, examples.

Docker cannot run in the test environment, so the container's logic is tested by running
its entrypoint script directly, with every path it uses pointed into a temporary folder
and the agent replaced by a stand-in that records how it was started. sshd is the real one
when it is installed (CI installs openssh-server); otherwise a stand-in takes its place
and only the real-sshd checks are skipped. Every process a test starts is killed by PID in
a ``finally``; every wait is bounded.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
ENTRYPOINT = DEPLOY / "emulated-board" / "entrypoint.sh"
INSTALL = DEPLOY / "board" / "install.sh"
UNIT = DEPLOY / "systemd" / "qverify-agent.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "agent.env.example"
DOCKERFILE = DEPLOY / "emulated-board" / "Dockerfile"
INVENTORY = DEPLOY / "farm" / "inventory.example.toml"

REAL_SSHD = Path("/usr/sbin/sshd")
IS_ROOT = os.geteuid() == 0
# A valid public key (its private half is not kept anywhere).
PUBKEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDF8OzWmP+Td0A1tdp11bzkwQ8TSe0PooF9nLP2+dBtU "
          "deploy-test@qverify")
BOARD_PACKAGES = {"grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "numpy"}
HOST_ONLY_PACKAGES = {"onnx", "onnxruntime", "paramiko", "typer", "rich"}

# A stand-in for a long-running daemon: records argv, pid, environment and the token
# file's mode to OUT, then runs until SIGTERM (which it records to OUT.term). With
# IGNORE_TERM it ignores SIGTERM, like a daemon that hangs on shutdown. Run with "-t" it
# exits 0 at once (sshd's configuration test).
STANDIN = '''#!{python}
import json, os, signal, sys, time
OUT = {out!r}
IGNORE_TERM = {ignore_term!r}
argv = sys.argv[1:]
if argv[:1] == ["-t"] or ("-t" in argv and "-D" not in argv):
    sys.exit(0)
token_file = argv[argv.index("--token-file") + 1] if "--token-file" in argv else None
record = {{"pid": os.getpid(), "argv": argv, "env": dict(os.environ)}}
if token_file:
    st = os.stat(token_file)
    record["token_mode"] = st.st_mode & 0o7777
    record["token"] = open(token_file).read()

def on_term(signum, frame):
    with open(OUT + ".term", "w") as f:
        f.write("SIGTERM")
    if not IGNORE_TERM:
        sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
with open(OUT + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(OUT + ".tmp", OUT)
deadline = time.monotonic() + 120  # never outlive a broken test run by much
while time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(3)
'''


# ------------------------------------------------------------------------------ helpers
def write_standin(path: Path, out: Path, ignore_term: bool = False) -> Path:
    path.write_text(STANDIN.format(python=sys.executable, out=str(out), ignore_term=ignore_term))
    path.chmod(0o755)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment: nothing from the developer's QVERIFY_*/SSHD_* settings leaks in."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
           "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
    env.update(extra)
    return env


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate(timeout=5)
            pytest.fail(f"entrypoint exited ({proc.returncode}) before {what}:\n{err}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def read_record(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def kill_pids(*pids: int | None) -> None:
    for pid in pids:
        if pid and pid_running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop_proc(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a kernel that does not deliver SIGKILL
        pass


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def start_entrypoint(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(ENTRYPOINT), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def sshd_banner(port: int) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            return s.recv(64)
    except OSError:
        return None


# ------------------------------------------------------------------------- shell syntax
@pytest.mark.parametrize("script", [INSTALL, ENTRYPOINT], ids=lambda p: p.name)
def test_scripts_parse_and_are_executable(script: Path):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()
    assert os.access(script, os.X_OK), f"{script} is not executable (chmod +x)"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_scripts_are_shellcheck_clean():
    result = subprocess.run(["shellcheck", "--severity=info", str(INSTALL), str(ENTRYPOINT)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------- emulated board entrypoint
def test_entrypoint_runs_sshd_and_agent_and_stops_both_on_sigterm(tmp_path: Path):
    """The container's whole life: keys, authorized key, token, sshd + agent, SIGTERM."""
    real_sshd = REAL_SSHD.exists() and IS_ROOT and shutil.which("ssh-keygen") is not None
    root = tmp_path / "root"
    agent_out = tmp_path / "agent.json"
    agent = write_standin(tmp_path / "agent-standin", agent_out)
    sshd_port, agent_port = free_port(), free_port()
    env = base_env(
        QVERIFY_ROOT=str(root),
        QVERIFY_USER=pwd.getpwuid(os.getuid()).pw_name,
        AGENT_BIN=str(agent),
        AGENT_PORT=str(agent_port),
        QVERIFY_AGENT_TOKEN="tok-3f9a",
        QVERIFY_AUTHORIZED_KEY=PUBKEY,
        QVERIFY_AGENT_EXTRA_ARGS="--max-queue 3 --board-id emu-test",
        SSHD_PORT=str(sshd_port),
        SSHD_LISTEN="127.0.0.1",
        STOP_TIMEOUT="10",
    )
    sshd_out = tmp_path / "sshd.json"
    if real_sshd:
        env["SSHD_BIN"] = str(REAL_SSHD)
    else:  # only the real-sshd checks are skipped; the process handling is still tested
        env["SSHD_BIN"] = str(write_standin(tmp_path / "sshd-standin", sshd_out))
        env["SSH_KEYGEN_BIN"] = shutil.which("ssh-keygen") or str(write_fake_keygen(tmp_path))
    proc = start_entrypoint(env, "--log-level", "DEBUG")
    agent_pid = sshd_pid = None
    try:
        record = wait_for(lambda: read_record(agent_out), 20, "the agent stand-in to start", proc)
        agent_pid = record["pid"]
        run_dir = root / "run" / "qverify"
        if real_sshd:
            pid_file = run_dir / "sshd.pid"
            wait_for(pid_file.exists, 10, "sshd's pid file", proc)
            sshd_pid = int(pid_file.read_text())
            banner = wait_for(lambda: sshd_banner(sshd_port), 10, "sshd to answer", proc)
            assert banner.startswith(b"SSH-2.0-"), banner
        else:
            sshd_pid = wait_for(lambda: read_record(sshd_out), 10, "the sshd stand-in", proc)["pid"]
        assert pid_running(sshd_pid) and pid_running(agent_pid)
        assert agent_pid != proc.pid and sshd_pid != proc.pid

        # Host keys: generated, private halves 0600.
        keys = root / "etc" / "ssh"
        for kind in ("ed25519", "ecdsa", "rsa"):
            assert (keys / f"ssh_host_{kind}_key.pub").is_file(), kind
            assert mode(keys / f"ssh_host_{kind}_key") == 0o600, kind
        # The authorized key, for the SSH user, with the modes sshd's StrictModes wants.
        auth = root / "var" / "lib" / "qverify" / ".ssh" / "authorized_keys"
        assert auth.read_text().strip() == PUBKEY
        assert mode(auth) == 0o600 and mode(auth.parent) == 0o700
        # The sshd configuration the entrypoint wrote points at those files only.
        config = (run_dir / "sshd_config").read_text()
        assert f"Port {sshd_port}" in config and "ListenAddress 127.0.0.1" in config
        assert f"AuthorizedKeysFile {auth}" in config
        assert f"HostKey {keys / 'ssh_host_ed25519_key'}" in config
        assert "PasswordAuthentication no" in config and "PermitRootLogin no" in config
        # The token: in a 0600 file (as the agent saw it when it started), not in its env.
        token_file = run_dir / "token"
        assert record["token_mode"] == 0o600 and mode(token_file) == 0o600
        assert record["token"] == "tok-3f9a"
        assert "QVERIFY_AGENT_TOKEN" not in record["env"]
        assert "tok-3f9a" not in json.dumps(record["env"])
        # The agent's command line.
        model_dir = root / "var" / "lib" / "qverify" / "models"
        assert model_dir.is_dir()
        assert record["argv"] == ["serve", "--listen", f"0.0.0.0:{agent_port}", "--model-dir", str(model_dir),
                                  "--token-file", str(token_file), "--max-queue", "3", "--board-id", "emu-test",
                                  "--log-level", "DEBUG"]

        # SIGTERM to the entrypoint reaches both children; it exits with the agent's status.
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert (tmp_path / "agent.json.term").read_text() == "SIGTERM"
        wait_for(lambda: not pid_running(agent_pid) and not pid_running(sshd_pid), 5,
                 "the agent and sshd to be gone")
        if real_sshd:
            assert sshd_banner(sshd_port) is None, "sshd still accepts connections"
    finally:
        kill_pids(agent_pid, sshd_pid)  # first: they hold the entrypoint's output pipes open
        stop_proc(proc)


def write_fake_keygen(tmp_path: Path) -> Path:
    """An ssh-keygen stand-in (only where openssh-client is missing): writes dummy key files."""
    fake = tmp_path / "fake-ssh-keygen"
    fake.write_text('#!/usr/bin/env bash\nset -e\nwhile getopts "qt:N:C:f:l" o; do\n'
                    '  case $o in f) f=$OPTARG;; l) exit 0;; esac\ndone\n'
                    '[ -n "${f:-}" ] || exit 0\numask 077\necho key > "$f"\necho pub > "$f.pub"\n')
    fake.chmod(0o755)
    return fake


def test_entrypoint_without_sshd_execs_the_agent(tmp_path: Path):
    """SSHD_ENABLE=0: the agent replaces the script (same PID), so it gets signals directly;
    a mounted key file is installed; QVERIFY_AGENT_INSECURE=1 allows a tokenless network listen."""
    root = tmp_path / "root"
    key_file = tmp_path / "mounted.pub"
    key_file.write_text(PUBKEY + "\n")
    out = tmp_path / "agent.json"
    env = base_env(QVERIFY_ROOT=str(root), AGENT_BIN=str(write_standin(tmp_path / "agent", out)),
                   SSHD_ENABLE="0", QVERIFY_AGENT_INSECURE="1", QVERIFY_AUTHORIZED_KEY_FILE=str(key_file),
                   QVERIFY_AGENT_MODEL_DIR=str(tmp_path / "store"))
    proc = start_entrypoint(env)
    agent_pid = None
    try:
        record = wait_for(lambda: read_record(out), 20, "the agent stand-in to start", proc)
        agent_pid = record["pid"]
        assert agent_pid == proc.pid, "the entrypoint should exec the agent when there is no sshd"
        assert record["argv"] == ["serve", "--listen", "0.0.0.0:7060", "--model-dir", str(tmp_path / "store"),
                                  "--insecure"]
        assert (tmp_path / "store").is_dir()
        auth = root / "var" / "lib" / "qverify" / ".ssh" / "authorized_keys"
        assert auth.read_text().strip() == PUBKEY and mode(auth) == 0o600
        assert not (root / "etc" / "ssh").exists(), "no sshd, so no host keys"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert (tmp_path / "agent.json.term").read_text() == "SIGTERM"
    finally:
        kill_pids(agent_pid)  # first: they hold the entrypoint's output pipes open
        stop_proc(proc)


@pytest.mark.parametrize("listen, starts", [("0.0.0.0:7061", False), ("10.1.2.3:7060", False),
                                             ("127.0.0.1:7062", True), ("[::1]:7060", True)])
def test_entrypoint_needs_a_token_for_a_network_listen(tmp_path: Path, listen: str, starts: bool):
    out = tmp_path / "agent.json"
    env = base_env(QVERIFY_ROOT=str(tmp_path / "root"), AGENT_BIN=str(write_standin(tmp_path / "agent", out)),
                   SSHD_ENABLE="0", QVERIFY_AGENT_LISTEN=listen)
    proc = start_entrypoint(env)
    agent_pid = None
    try:
        if starts:
            record = wait_for(lambda: read_record(out), 20, "the agent stand-in to start", proc)
            agent_pid = record["pid"]
            assert record["argv"][:3] == ["serve", "--listen", listen]
            assert "--token-file" not in record["argv"] and "--insecure" not in record["argv"]
        else:
            _, err = proc.communicate(timeout=20)
            assert proc.returncode == 2, err
            assert "QVERIFY_AGENT_TOKEN" in err and "QVERIFY_AGENT_INSECURE=1" in err
            assert not out.exists(), "the agent must not start"
    finally:
        kill_pids(agent_pid)  # first: they hold the entrypoint's output pipes open
        stop_proc(proc)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed (openssh-client)")
def test_entrypoint_refuses_an_invalid_authorized_key(tmp_path: Path):
    out = tmp_path / "agent.json"
    env = base_env(QVERIFY_ROOT=str(tmp_path / "root"), AGENT_BIN=str(write_standin(tmp_path / "agent", out)),
                   SSHD_ENABLE="0", QVERIFY_AGENT_TOKEN="t", QVERIFY_AUTHORIZED_KEY="ssh-ed25519 not-a-key")
    result = subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2, result.stderr
    assert "no valid public key" in result.stderr
    assert not out.exists()
    assert not (tmp_path / "root" / "var" / "lib" / "qverify" / ".ssh" / "authorized_keys").exists()


def test_entrypoint_sigkills_an_agent_that_ignores_sigterm(tmp_path: Path):
    """STOP_TIMEOUT bounds the shutdown: an agent hanging on SIGTERM is SIGKILLed."""
    agent_out, sshd_out = tmp_path / "agent.json", tmp_path / "sshd.json"
    env = base_env(QVERIFY_ROOT=str(tmp_path / "root"), QVERIFY_AGENT_TOKEN="t",
                   AGENT_BIN=str(write_standin(tmp_path / "agent", agent_out, ignore_term=True)),
                   SSHD_BIN=str(write_standin(tmp_path / "sshd", sshd_out)),
                   SSH_KEYGEN_BIN=str(write_fake_keygen(tmp_path)), STOP_TIMEOUT="1")
    proc = start_entrypoint(env)
    agent_pid = sshd_pid = None
    try:
        agent_pid = wait_for(lambda: read_record(agent_out), 20, "the agent stand-in", proc)["pid"]
        sshd_pid = wait_for(lambda: read_record(sshd_out), 10, "the sshd stand-in", proc)["pid"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert (tmp_path / "agent.json.term").exists(), "SIGTERM was not forwarded to the agent"
        assert proc.returncode == 128 + signal.SIGKILL, err
        assert "SIGKILL" in err
        wait_for(lambda: not pid_running(agent_pid) and not pid_running(sshd_pid), 5, "both children to be gone")
    finally:
        kill_pids(agent_pid, sshd_pid)  # first: they hold the entrypoint's output pipes open
        stop_proc(proc)


def test_entrypoint_stops_the_agent_when_sshd_dies(tmp_path: Path):
    """A board without SSH is broken: the container exits so its restart policy applies."""
    agent_out, sshd_out = tmp_path / "agent.json", tmp_path / "sshd.json"
    env = base_env(QVERIFY_ROOT=str(tmp_path / "root"), QVERIFY_AGENT_TOKEN="t",
                   AGENT_BIN=str(write_standin(tmp_path / "agent", agent_out)),
                   SSHD_BIN=str(write_standin(tmp_path / "sshd", sshd_out)),
                   SSH_KEYGEN_BIN=str(write_fake_keygen(tmp_path)), STOP_TIMEOUT="5")
    proc = start_entrypoint(env)
    agent_pid = sshd_pid = None
    try:
        agent_pid = wait_for(lambda: read_record(agent_out), 20, "the agent stand-in", proc)["pid"]
        sshd_pid = wait_for(lambda: read_record(sshd_out), 10, "the sshd stand-in", proc)["pid"]
        os.kill(sshd_pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=15)
        assert "sshd exited" in err
        assert (tmp_path / "agent.json.term").exists(), "the agent was not stopped with SIGTERM"
        wait_for(lambda: not pid_running(agent_pid), 5, "the agent to be gone")
    finally:
        kill_pids(agent_pid, sshd_pid)  # first: they hold the entrypoint's output pipes open
        stop_proc(proc)


@pytest.mark.skipif(not (REAL_SSHD.exists() and IS_ROOT), reason="needs the real sshd (openssh-server) and root")
@pytest.mark.skipif(shutil.which("sftp") is None or shutil.which("ssh-keygen") is None, reason="needs openssh-client")
def test_emulated_board_accepts_an_sftp_model_push(tmp_path: Path):
    """The push path of the design: the host's key logs in over SFTP and writes into the model store.

    The login user is `nobody` (the `qverify` user exists only in the image); the folder
    lives outside pytest's 0700 tmp folders so that user can reach it, and StrictModes is
    off because /tmp itself is world-writable.
    """
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    root = Path(tempfile.mkdtemp(prefix="qverify-board-"))
    proc = None
    agent_pid = None
    try:
        root.chmod(0o755)
        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=20)
        out = tmp_path / "agent.json"
        port = free_port()
        env = base_env(QVERIFY_ROOT=str(root), QVERIFY_USER="nobody", SSH_HOST_KEY_TYPES="ed25519",
                       SSHD_EXTRA_CONFIG="StrictModes no", SSHD_BIN=str(REAL_SSHD), SSHD_PORT=str(port),
                       SSHD_LISTEN="127.0.0.1", QVERIFY_AGENT_TOKEN="t",
                       QVERIFY_AUTHORIZED_KEY=(tmp_path / "id_ed25519.pub").read_text(),
                       AGENT_BIN=str(write_standin(tmp_path / "agent", out)))
        proc = start_entrypoint(env)
        agent_pid = wait_for(lambda: read_record(out), 20, "the agent stand-in", proc)["pid"]
        wait_for(lambda: sshd_banner(port), 10, "sshd to answer", proc)
        model_dir = root / "var" / "lib" / "qverify" / "models"
        payload = tmp_path / "model.part"
        payload.write_bytes(b"QVFYMDL\0" + os.urandom(64))
        sha = "ab" * 32
        batch = f"cd {model_dir}\nput {payload} {sha}.bin\n"
        # The board's own (throw-away) host key is the only one trusted: no blind acceptance.
        host_key = (root / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        ssh_opts = ["-P", str(port), "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_hosts}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]
        for attempt in range(3):  # a loaded machine can drop the first connection; bounded retries
            result = subprocess.run(["sftp", "-b", "-", "-i", str(key), *ssh_opts, "nobody@127.0.0.1"],
                                    input=batch, capture_output=True, text=True, timeout=60)
            if result.returncode == 0 or "Permission denied" in result.stderr:
                break
        assert result.returncode == 0, result.stderr
        pushed = model_dir / f"{sha}.bin"
        assert pushed.read_bytes() == payload.read_bytes()
        assert pushed.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        # Password logins are off: without the key, nobody gets in.
        denied = subprocess.run(
            ["sftp", "-b", "-", *ssh_opts, "-o", "IdentitiesOnly=yes", "-o", "IdentityFile=/dev/null",
             "nobody@127.0.0.1"], input="ls\n", capture_output=True, text=True, timeout=60)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied.stderr
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
        assert proc.returncode == 0
    finally:
        kill_pids(agent_pid)  # first: the children hold the entrypoint's output pipes open
        pid_file = root / "run" / "qverify" / "sshd.pid"
        if pid_file.exists():
            kill_pids(int(pid_file.read_text()))
        if proc is not None:
            stop_proc(proc)
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------- board installer
def plan(stdout: str) -> list[list[str]]:
    """The commands install.sh printed ("+ cmd args"), split as a shell would."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def pip_installs(commands: list[list[str]]) -> list[list[str]]:
    return [c for c in commands if c[1:4] == ["-m", "pip", "install"]]


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~ ;\[]", spec, maxsplit=1)[0].lower()


def install_dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), "--dry-run", "--prefix", str(tmp_path / "opt"), *args, str(REPO)],
                          capture_output=True, text=True, timeout=30, env=base_env())


def test_install_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path):
    result = install_dry_run(tmp_path, "--no-systemd")
    assert result.returncode == 0, result.stderr
    commands = plan(result.stdout)
    venv_python = str(tmp_path / "opt" / "venv" / "bin" / "python")
    (make_venv,) = [c for c in commands if c[1:3] == ["-m", "venv"]]
    assert make_venv[3:] == [str(tmp_path / "opt" / "venv")]
    pips = pip_installs(commands)
    assert len(pips) == 2 and all(c[0] == venv_python for c in pips)
    deps, package = pips
    # The agent's own dependencies: exactly the board set, nothing host-side.
    assert {requirement_name(a) for a in deps[4:] if not a.startswith("-")} == BOARD_PACKAGES
    assert "--no-deps" not in deps
    # qverify itself with --no-deps, so pyproject's host dependencies never reach a board.
    assert "--no-deps" in package and package[-1] == str(REPO)
    assert "--no-index" not in package
    flat = " ".join(" ".join(c) for c in commands)
    for name in HOST_ONLY_PACKAGES:
        assert not re.search(rf"(^|\s|'){name}([<>=~!\s']|$)", flat), name
    assert not (tmp_path / "opt").exists(), "--dry-run created the prefix"
    assert "systemctl" not in flat and "qverify-agent.service" not in result.stdout


def test_install_dry_run_offline_and_systemd(tmp_path: Path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    result = install_dry_run(tmp_path, "--find-links", str(wheels), "--no-user", "--systemd",
                             "--unit-dir", str(tmp_path / "units"), "--conf-dir", str(tmp_path / "etc"))
    assert result.returncode == 0, result.stderr
    commands = plan(result.stdout)
    for pip in pip_installs(commands):
        assert "--no-index" in pip and pip[pip.index("--find-links") + 1] == str(wheels)
    assert not any(c[0] in ("useradd", "adduser") for c in commands), "--no-user still creates a user"
    assert f"would write {tmp_path / 'units' / 'qverify-agent.service'}" in result.stdout
    assert not (tmp_path / "units").exists() and not (tmp_path / "etc").exists()


def test_install_default_requirements_match_pyproject(tmp_path: Path):
    """install.sh's floors are pyproject's floors for the same packages."""
    result = install_dry_run(tmp_path, "--no-systemd")
    assert result.returncode == 0, result.stderr
    deps = [a for a in pip_installs(plan(result.stdout))[0][4:] if not a.startswith("-")]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {requirement_name(d): d.split(";")[0].replace(" ", "") for d in pyproject}
    for spec in deps:
        assert declared.get(requirement_name(spec)) == spec, f"{spec} vs pyproject {declared.get(requirement_name(spec))}"


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/qverify.whl"], "does not exist"),
    (["--bogus", "x.whl"], "unknown option"),
    ([], "no PACKAGE"),
    (["--find-links", "/nonexistent-dir", "."], "not a directory"),
])
def test_install_rejects_bad_usage(tmp_path: Path, args: list[str], message: str):
    result = subprocess.run(["bash", str(INSTALL), "--dry-run", "--prefix", str(tmp_path / "p"), *args],
                            capture_output=True, text=True, timeout=30, cwd=REPO, env=base_env())
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr


def test_install_help():
    result = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0
    for option in ("--prefix", "--requirements", "--find-links", "--no-systemd", "--no-user", "--dry-run"):
        assert option in result.stdout


def make_wheel(folder: Path, name: str, version: str, module_source: str) -> Path:
    """A minimal pure-Python wheel, built by hand (no build backend, no network)."""
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files = {f"{dist}.py": module_source,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test_deploy\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, text in files.items():
            zf.writestr(n, text)
        zf.writestr(f"{info}/RECORD", record)
    return path


def offline_pip_env() -> dict[str, str]:
    # No pip configuration of this machine; an index that cannot answer, no retries:
    # anything that is not --no-index fails fast instead of reaching PyPI.
    return base_env(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0",
                    PIP_TIMEOUT="2", PIP_DISABLE_PIP_VERSION_CHECK="1")


def test_install_real_offline_run_is_idempotent(tmp_path: Path):
    """A real install from wheels only: venv, dependencies via --no-index --find-links,
    qverify --no-deps, unit and env example; run twice, the second run changes nothing."""
    # The qverify wheel, from a copy of the tree (the repository gets no build/ folder).
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "tests", "bench", "deploy", "build", "dist", "*.egg-info", "__pycache__", ".*", "*.onnx", "demo-out"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=120,
                           env={**offline_pip_env(), "PATH": os.environ["PATH"]})
    assert built.returncode == 0, built.stderr
    (qverify_wheel,) = wheels.glob("qverify-*.whl")
    make_wheel(wheels, "qverify-deploy-testdep", "1.0", "VALUE = 42\n")

    prefix, units, etc = tmp_path / "opt", tmp_path / "units", tmp_path / "etc"
    args = ["bash", str(INSTALL), "--prefix", str(prefix), "--no-user", "--systemd", "--unit-dir", str(units),
            "--conf-dir", str(etc), "--find-links", str(wheels), "--requirements", "qverify-deploy-testdep==1.0",
            str(qverify_wheel)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=180, env=offline_pip_env(), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    venv = prefix / "venv"
    assert os.access(venv / "bin" / "qverify-agent", os.X_OK)
    check = subprocess.run([str(venv / "bin" / "python"), "-I", "-c",
                            "import qverify.agent, qverify_deploy_testdep as d; print(qverify.agent.__file__, d.VALUE)"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert check.stdout.split()[0].startswith(str(venv)) and check.stdout.split()[1] == "42"
    listed = subprocess.run([str(venv / "bin" / "python"), "-I", "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, timeout=60, env=offline_pip_env())
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "qverify" in installed and not installed & HOST_ONLY_PACKAGES, installed
    unit = (units / "qverify-agent.service").read_text()
    assert f"ExecStart={venv}/bin/qverify-agent serve " in unit and "/opt/qverify/venv" not in unit
    assert (etc / "agent.env.example").read_text() == ENV_EXAMPLE.read_text()
    assert mode(etc) == 0o750 and mode(units / "qverify-agent.service") == 0o644

    python_inode = (venv / "bin" / "python").lstat().st_ino
    unit_mtime = (units / "qverify-agent.service").stat().st_mtime_ns
    second = subprocess.run(args, capture_output=True, text=True, timeout=180, env=offline_pip_env(), cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "reusing the virtual environment" in second.stdout
    assert "qverify-agent.service is up to date" in second.stdout
    assert (venv / "bin" / "python").lstat().st_ino == python_inode
    assert (units / "qverify-agent.service").stat().st_mtime_ns == unit_mtime

    # Offline means offline: a dependency missing from --find-links fails, PyPI is not asked.
    missing = subprocess.run([*args[:-3], "--requirements", "numpy>=1.24", str(qverify_wheel)],
                             capture_output=True, text=True, timeout=120, env=offline_pip_env(), cwd=tmp_path)
    assert missing.returncode != 0
    assert "127.0.0.1:9" not in missing.stdout + missing.stderr
    assert "no matching distribution" in (missing.stdout + missing.stderr).lower()


# -------------------------------------------------------------------------- systemd unit
def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_settings():
    s = unit_settings(UNIT.read_text())
    one = {k: v[-1] for k, v in s.items()}
    assert one["User"] == "qverify" and one["Group"] == "qverify"
    assert "qverify" in one["StateDirectory"].split()
    assert one["EnvironmentFile"] == "-/etc/qverify/agent.env"
    exec_start = shlex.split(one["ExecStart"])
    assert exec_start[:2] == ["/opt/qverify/venv/bin/qverify-agent", "serve"]
    assert exec_start[2:] == ["--listen", "${QVERIFY_AGENT_LISTEN}", "--model-dir", "${QVERIFY_AGENT_MODEL_DIR}",
                              "$QVERIFY_AGENT_EXTRA_ARGS"]
    defaults = dict(e.split("=", 1) for e in s["Environment"])
    assert defaults["QVERIFY_AGENT_LISTEN"] == "127.0.0.1:7060"
    assert defaults["QVERIFY_AGENT_MODEL_DIR"].startswith("/var/lib/qverify/")
    assert one["Restart"] == "on-failure" and float(one["RestartSec"]) > 0
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "ReadWritePaths": "/var/lib/qverify", "KillSignal": "SIGTERM"}.items():
        assert one.get(key) == value, key
    assert int(one["LimitNOFILE"]) >= 4096
    # The stop timeout covers the agent's drain: its --grace default, read from the agent.
    from qverify.agent.cli import build_parser

    grace = build_parser().parse_args(["serve"]).grace
    assert float(one["TimeoutStopSec"]) > grace


def test_env_example_documents_the_unit_and_agent_variables():
    example = ENV_EXAMPLE.read_text()
    documented = set(re.findall(r"^#?(QVERIFY_AGENT_\w+)=", example, flags=re.M))
    unit = UNIT.read_text()
    used_by_unit = set(re.findall(r"\$\{?(QVERIFY_AGENT_\w+)", unit))
    assert used_by_unit <= documented, used_by_unit - documented
    assert {"QVERIFY_AGENT_LISTEN", "QVERIFY_AGENT_MODEL_DIR", "QVERIFY_AGENT_TOKEN_FILE", "QVERIFY_AGENT_TARGET",
            "QVERIFY_AGENT_EXTRA_ARGS"} <= documented
    agent_cli = (REPO / "agent" / "cli.py").read_text()
    for name in documented:  # each one is read by the unit or by the agent itself
        assert name in used_by_unit or f'"{name}"' in agent_cli, f"{name} is documented but nobody reads it"
    # Every line is a comment or blank: the example changes nothing until edited.
    assert all(not line.strip() or line.startswith("#") for line in example.splitlines())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path):
    """The unit as install.sh writes it (ExecStart under the prefix) passes systemd-analyze verify."""
    agent = write_standin(tmp_path / "qverify-agent", tmp_path / "unused.json")
    unit = tmp_path / "qverify-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/qverify/venv/bin/qverify-agent", str(agent)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == "", output  # unknown keys and bad values are only warnings: none allowed


# ------------------------------------------------------------------ image and inventory
def test_dockerfile_copies_what_exists_and_runs_the_entrypoint():
    text = DOCKERFILE.read_text()
    joined = re.sub(r"\\\n", " ", text)
    copies = [line.split()[1:] for line in joined.splitlines()
              if line.startswith("COPY") and "--from" not in line]
    assert copies
    for args in copies:
        for source in args[:-1]:
            assert (REPO / source.rstrip("/")).exists(), f"COPY {source}: not in the repository"
    destinations = {args[-1] for args in copies}
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, flags=re.M).group(1))
    assert entrypoint[-1] in destinations
    assert ["deploy/emulated-board/entrypoint.sh", entrypoint[-1]] in copies
    assert "install.sh --no-systemd" in joined and "openssh-server" in joined
    for package in HOST_ONLY_PACKAGES:
        assert package not in joined.lower().replace("qverify-agent", "")


def test_farm_inventory_example_is_consistent():
    """Static checks; tests/test_farm.py loads the example with the real inventory loader."""
    from qverify.simulator.targets import get_target

    inventory = tomllib.loads(INVENTORY.read_text())
    boards = inventory["boards"]
    names = {b["name"] for b in boards}
    assert len(names) == len(boards) >= 2
    for board in boards:
        assert ("host" in board) != ("place" in board), board
        assert "token" not in board, "secrets do not belong in the inventory"
        target = board.get("labels", {}).get("target")
        if target:
            assert get_target(target).name == target
    for model in inventory["models"]:
        assert model["bin"].endswith(".bin") and model.get("onnx", "x.onnx").endswith(".onnx")