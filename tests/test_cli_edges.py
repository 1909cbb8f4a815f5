"""The command lines' edges: versions, ``python -m qverify``, shell completion, the agent's
--help, the bit-exact one-liner and the report lines, --core, SSH aliases for the agent too,
--connect-timeout reaching SSH (verify and farm), and the --transport grpc suggestion.

Everything runs for real: the CLIs as subprocesses, real agents (agent_harness), a real sshd
(sshd_harness), a real silent TCP listener for the SSH greeting that never comes.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import synthetic
from agent_harness import agent_pool  # noqa: F401  (fixture)
from qverify.client.agent_client import file_sha256
from qverify.client.ssh import SshError, SshOptions, SshUnreachable, connect
from qverify.simulator import load
from qverify.simulator.compiler import compile_model
from qverify.simulator.modelfile import save
from sshd_harness import SshServer, free_port, sshd, sshd_factory  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 180.0  # upper bound of every subprocess here


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("edges")
    onnx_path = synthetic.quantize(synthetic.small_cnn(seed=5), folder / "quant.onnx")
    save(compile_model(onnx_path), folder / "model.bin")
    return onnx_path, folder / "model.bin"


def run(*args: object, home: Path | None = None, env: dict | None = None,
        module: str = "qverify") -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    if home is not None:
        environ["HOME"] = str(home)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=environ, capture_output=True,
                          text=True, timeout=BOUND_S)


# ----------------------------------------------------------------------------- conventions


def test_the_version_lives_in_a_leaf_module_matching_pyproject():
    import qverify
    import qverify.agent
    import qverify.simulator
    from qverify._version import __version__

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == declared
    assert qverify.__version__ == qverify.agent.__version__ == qverify.simulator.__version__ == declared
    # `import qverify` pulls in nothing but the version: every part imports it (boards too).
    proc = subprocess.run([sys.executable, "-c", "import sys, qverify; "
                           "print(sorted(m for m in sys.modules if m.startswith('qverify')))"],
                          capture_output=True, text=True, timeout=BOUND_S)
    assert proc.stdout.strip() == "['qverify', 'qverify._version']", proc.stdout + proc.stderr


def test_version_flags_and_python_dash_m():
    host = run("--version")
    assert host.returncode == 0 and host.stdout.strip() == "qverify 0.1.0", host.stdout + host.stderr
    agent = run("--version", module="qverify.agent.cli")
    assert agent.returncode == 0 and re.fullmatch(r"qverify-agent 0\.1\.0 \(protocol \d+\.\d+\)",
                                                   agent.stdout.strip()), agent.stdout + agent.stderr
    helped = run("--help")
    assert helped.returncode == 0 and "verify" in helped.stdout and "--version" in helped.stdout


def test_shell_completion_is_shown_and_completes():
    shown = run("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "_qverify_completion" in shown.stdout and "complete " in shown.stdout
    # What the installed script asks the program: the completions of `qverify ver` and `qverify perf --co`.
    words = run(env={"_QVERIFY_COMPLETE": "complete_bash", "COMP_WORDS": "qverify ver", "COMP_CWORD": "1"})
    assert words.returncode == 0 and words.stdout.split() == ["verify"], words.stdout + words.stderr
    options = run(env={"_QVERIFY_COMPLETE": "complete_bash", "COMP_WORDS": "qverify perf --co", "COMP_CWORD": "2"})
    assert "--core" in options.stdout.split() and "--connect-timeout" in options.stdout.split()


def test_the_agent_help_names_every_default_and_environment_variable():
    proc = run("serve", "--help", module="qverify.agent.cli")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    read = set(re.findall(r"QVERIFY_AGENT_[A-Z_]+", (ROOT / "agent" / "cli.py").read_text()))
    assert len(read) >= 8
    for name in read:
        assert name in text, f"{name} is read but --help does not name it"
    for default in ("default: 127.0.0.1:7060", "default: sim", "default: sim-a16", "default: /var/lib/qverify/models",
                    "default: 4G", "default: 512M", "default: 8", "default: 30"):
        assert default in text, default


# ----------------------------------------------------------------------------- summaries


def test_a_passing_bit_exact_pair_is_one_line_and_reports_say_where_they_went(pair, tmp_path):
    out = {kind: tmp_path / f"r.{kind}" for kind in ("json", "xml", "html")}
    proc = run("-m", pair[1], "-r", "--json", out["json"], "--junit", out["xml"], "--html", out["html"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "board vs simulator: 1 output" in proc.stdout and "bit-exact: PASSED" in proc.stdout
    assert "100.0%" not in proc.stdout and "(bit-exact)" not in proc.stdout  # no table of identical rows
    for path, kind in ((out["json"], "JSON"), (out["xml"], "JUnit XML"), (out["html"], "HTML")):
        assert f"wrote {path} ({kind})" in proc.stdout.splitlines(), proc.stdout
        assert path.is_file()


def test_a_failing_bit_exact_pair_keeps_its_table(pair, tmp_path):
    program = load(pair[1])
    victim = next(n for n in program.nodes if not n.on_cpu and n is not program.nodes[-1]).outputs[0]
    proc = run("-m", pair[1], "-r", "--fault", f"bitflip:{victim}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "board vs simulator (bit-exact)" in proc.stdout and "FAIL" in proc.stdout


# ----------------------------------------------------------------------------- --core


def test_core_reaches_the_board_in_run_perf_and_verify(pair, agent_pool, tmp_path):  # noqa: F811
    agent = agent_pool.start("--npu-cores", "2")
    board = f"127.0.0.1:{agent.port}"
    done = run("run", "-m", pair[1], "-b", board, "--transport", "grpc", "--core", "1", "--frames", "2",
               "-o", tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["input_sets"][0]["timing"]["core"] == 1
    perf = run("perf", "-m", pair[1], "-b", board, "--transport", "grpc", "--core", "1", "--frames", "7",
               "--json", tmp_path / "perf.json")
    assert perf.returncode == 0, perf.stdout + perf.stderr
    figures = json.loads((tmp_path / "perf.json").read_text())
    assert figures["core"] == 1 and figures["frames"] == 7 and figures["threads"] == 1
    assert "7 frames on core 1" in perf.stderr and "done in" in perf.stderr  # progress, elapsed
    verified = run("-m", f"{pair[0]},{pair[1]}", "-b", board, "--transport", "grpc", "--core", "1")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for args in (("run", "-m", pair[1], "-o", tmp_path / "o2"), ("perf", "-m", pair[1]), ("-m", pair[1])):
        wrong = run(*args, "-b", board, "--transport", "grpc", "--core", "2")
        assert wrong.returncode == 2, wrong.stdout + wrong.stderr
        assert "--core 2" in wrong.stderr and "0..1" in wrong.stderr and "Traceback" not in wrong.stderr


def test_perf_shows_its_progress_with_an_estimate(pair):
    proc = run("perf", "-m", pair[1], "--frames", "20", "--warmup", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 warm-up frames on 1 thread" in proc.stderr
    assert re.search(r"20 frames on 1 thread \(about [\d.]+ s\)", proc.stderr), proc.stderr
    assert "20 frames on 1 thread: done in" in proc.stderr


# ----------------------------------------------------------------------------- SSH


@pytest.fixture
def alias_home(tmp_path: Path, sshd: SshServer) -> Path:  # noqa: F811
    """A HOME whose ~/.ssh/config has `Host board1` with HostName 127.0.0.1 (no DNS knows board1)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "config").write_text(
        f"Host board1\n    HostName {sshd.host}\n    Port {sshd.port}\n    User {sshd.user}\n"
        f"    IdentityFile {sshd.user_key}\n")
    return home


def test_an_ssh_config_alias_reaches_the_agent_too(pair, alias_home, agent_pool):  # noqa: F811
    agent = agent_pool.start()
    proc = run("-m", f"{pair[0]},{pair[1]}", "-b", f"board1:{agent.port}", home=alias_home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (agent.model_dir / f"{file_sha256(pair[1])}.bin").read_bytes() == pair[1].read_bytes()
    info = run("board", "info", "-b", f"board1:{agent.port}", "--json", home=alias_home)
    assert info.returncode == 0, info.stdout + info.stderr
    assert json.loads(info.stdout)["address"] == f"127.0.0.1:{agent.port}"


def test_proxyjump_and_refused_ssh_suggest_the_grpc_transport(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(f"Host jumped\n    HostName 127.0.0.1\n    ProxyJump gateway\n"
                      f"Host closed\n    HostName 127.0.0.1\n    Port {free_port()}\n")
    with pytest.raises(SshError, match="--transport grpc"):
        connect("jumped", SshOptions(config_file=config, known_hosts=tmp_path / "kh"))
    with pytest.raises(SshUnreachable, match="connection refused.*--transport grpc"):
        connect("closed", SshOptions(config_file=config, known_hosts=tmp_path / "kh", connect_timeout=5))


@pytest.fixture
def silent_ssh_port():
    """A TCP port that accepts connections (the kernel's backlog) and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_connect_timeout_reaches_ssh_in_verify(pair, agent_pool, silent_ssh_port, tmp_path):  # noqa: F811
    agent = agent_pool.start()
    home = tmp_path / "bare"
    home.mkdir()
    proc = run("-m", f"{pair[0]},{pair[1]}", "-b", f"127.0.0.1:{agent.port}", "--ssh-port", silent_ssh_port,
               "--ssh-user", "nobody", "--known-hosts", tmp_path / "kh", "--connect-timeout", "1.25", home=home)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "within 1.25 s" in proc.stderr, proc.stderr


def test_connect_timeout_reaches_ssh_in_the_farm(pair, agent_pool, silent_ssh_port, tmp_path):  # noqa: F811
    agent = agent_pool.start()
    inventory = tmp_path / "farm.toml"
    inventory.write_text(
        "[settings]\nretries = 0\nbackoff_s = 0.05\n\n"
        f"[[boards]]\nname = \"b1\"\nhost = \"127.0.0.1\"\nagent_port = {agent.port}\ntransport = \"sftp\"\n"
        f"ssh_port = {silent_ssh_port}\nssh_user = \"nobody\"\nknown_hosts = \"{tmp_path / 'kh'}\"\n"
        "connect_timeout_s = 1.25\n\n"
        f"[[models]]\nname = \"m\"\nonnx = \"{pair[0]}\"\nbin = \"{pair[1]}\"\n")
    proc = run("farm", "run", inventory, "--no-db", "--json", tmp_path / "farm.json", home=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "farm.json").read_text())
    messages = " ".join(job["message"] for job in report["jobs"])
    assert "within 1.25 s" in messages, messages
