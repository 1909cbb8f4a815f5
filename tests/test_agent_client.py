"""The host-side agent client: exceptions for status codes, protocol check, TLS and mTLS."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import synthetic
from tls_pki import make_pki, pki  # noqa: F401  (fixture)
from agent_harness import agent_pool, free_port  # noqa: F401  (fixture)
from qverify.agent import PROTOCOL_VERSION
from qverify.client.agent_client import (
    AuthenticationError,
    BadRequest,
    BoardClient,
    BoardUnreachable,
    ModelMissing,
    ProtocolMismatch,
    check_protocol,
)
from qverify.simulator import Simulator, load, quantize
from qverify.simulator.compiler import compile_model
from qverify.simulator.modelfile import save


@pytest.fixture(scope="module")
def model_bin(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("client")
    save(compile_model(synthetic.quantize(synthetic.small_cnn(seed=3), folder / "q.onnx")), folder / "model.bin")
    return folder / "model.bin"


def _feed(program) -> dict[str, np.ndarray]:
    inp = program.inputs[0]
    q, _ = quantize(synthetic.calibration(seed=9, count=1)[0]["x"], inp.scale, inp.zero_point)
    return {inp.name: q.transpose(0, 2, 3, 1)}


def test_push_run_and_dumps_equal_the_simulator(agent_pool, model_bin):  # noqa: F811
    agent = agent_pool.start()
    program = load(model_bin)
    with BoardClient(agent.address) as board:
        info = board.info()
        assert info.protocol_version == PROTOCOL_VERSION and info.backend == "sim"
        sha = board.push(model_bin)
        assert board.has(sha) and board.push(model_bin) == sha  # second push: already there
        result = board.run(sha, _feed(program), dump="all", layout="both")
    local = {}
    want = Simulator(program).run(_feed(program), dump="all", dump_layout="both",
                                  sink=lambda d: local.__setitem__(d.tensor.name, (d.valid, d.aligned)))
    for name, value in want.outputs.items():
        np.testing.assert_array_equal(result.outputs[name], value)
    assert {name for name, _ in result.dumps} == set(local)
    for (name, layout), dumped in result.dumps.items():
        np.testing.assert_array_equal(dumped.array, local[name][0 if layout == "valid" else 1])
    assert result.timing is not None and len(result.timing.layers) == len(program.nodes)


def test_status_codes_become_exceptions(agent_pool, model_bin):  # noqa: F811
    agent = agent_pool.start(token="s3cret")
    with BoardClient(agent.address, token="wrong") as board:
        with pytest.raises(AuthenticationError, match="token"):
            board.has("0" * 64)
    with BoardClient(agent.address, token="s3cret") as board:
        with pytest.raises(ModelMissing):
            board.run("0" * 64, {})
        sha = board.push(model_bin)
        with pytest.raises(BadRequest, match="expects int8"):
            board.run(sha, {load(model_bin).inputs[0].name: np.zeros((1, 3, 16, 16), np.float32)})


def test_an_unreachable_board_fails_fast():
    with BoardClient(f"127.0.0.1:{free_port()}", connect_timeout=2) as board:
        with pytest.raises(BoardUnreachable, match="unreachable"):
            board.info()


def test_an_incompatible_protocol_is_refused():
    check_protocol("1.3", "board")
    with pytest.raises(ProtocolMismatch, match="protocol 2.0"):
        check_protocol("2.0", "board")


def _serve_tls(tmp_path: Path, pki: Path, mtls: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "qverify.agent.cli", "serve", "--listen", f"127.0.0.1:{port}",
            "--model-dir", str(tmp_path / "models"), "--tls-cert", str(pki / "server.pem"),
            "--tls-key", str(pki / "server.key")]
    if mtls:
        args += ["--tls-client-ca", str(pki / "ca.pem")]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), f"127.0.0.1:{port}"


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def test_tls_agent_talks_to_clients_that_trust_its_ca(tmp_path, pki):
    proc, address = _serve_tls(tmp_path, pki, mtls=False)
    try:
        with BoardClient(address, tls_ca=pki / "ca.pem", connect_timeout=15) as board:
            assert board.info().backend == "sim"
        with BoardClient(address, connect_timeout=3) as plain:  # plaintext to a TLS port
            with pytest.raises(BoardUnreachable):
                plain.info()
    finally:
        _stop(proc)


def test_mtls_agent_requires_a_client_certificate(tmp_path, pki):
    proc, address = _serve_tls(tmp_path, pki, mtls=True)
    try:
        with BoardClient(address, tls_ca=pki / "ca.pem", client_cert=(pki / "client.pem", pki / "client.key"),
                         connect_timeout=15) as board:
            assert board.info().backend == "sim"
        with BoardClient(address, tls_ca=pki / "ca.pem", connect_timeout=3) as anonymous:
            with pytest.raises((BoardUnreachable, AuthenticationError)):
                anonymous.info()
    finally:
        _stop(proc)


def _qverify(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from qverify.client.cli import main; sys.exit(main())",
                           *args], capture_output=True, text=True, timeout=120, cwd=cwd, stdin=subprocess.DEVNULL)


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    return lines[0]


def test_the_cli_presents_a_client_certificate_to_an_mtls_agent(tmp_path, pki):
    proc, address = _serve_tls(tmp_path, pki, mtls=True)
    try:
        ok = _qverify("board", "info", "-b", address, "--tls-ca", str(pki / "ca.pem"), "--tls-cert",
                      str(pki / "client.pem"), "--tls-key", str(pki / "client.key"), "--connect-timeout", "20",
                      cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        refused = _qverify("board", "info", "-b", address, "--tls-ca", str(pki / "ca.pem"), "--connect-timeout", "3",
                           cwd=tmp_path)
        assert refused.returncode == 3
        line = _one_line(refused)
        assert "TLS handshake" in line and "--tls-cert and --tls-key" in line, line
    finally:
        _stop(proc)


def test_a_refused_tls_handshake_says_what_failed(tmp_path, pki):
    other = make_pki(tmp_path / "other-ca") if (tmp_path / "other-ca").mkdir() is None else None
    proc, address = _serve_tls(tmp_path, pki, mtls=False)
    try:
        wrong_ca = _qverify("board", "info", "-b", address, "--tls-ca", str(other / "ca.pem"), "--connect-timeout", "3",
                            cwd=tmp_path)
        assert wrong_ca.returncode == 3 and "not signed by --tls-ca" in _one_line(wrong_ca)
        plaintext = _qverify("board", "info", "-b", address, "--connect-timeout", "3", cwd=tmp_path)
        assert plaintext.returncode == 3 and "probably speaks TLS" in _one_line(plaintext)
    finally:
        _stop(proc)


def test_a_client_certificate_without_its_key_is_bad_usage(tmp_path, pki):
    done = _qverify("board", "info", "-b", "127.0.0.1:7060", "--tls-cert", str(pki / "client.pem"), cwd=tmp_path)
    assert done.returncode == 2 and "--tls-cert and --tls-key go together" in _one_line(done)
