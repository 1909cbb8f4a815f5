"""qverify-agent's options: addresses, security off loopback, files, and the exit codes of its docstring.

Exit codes: 2 bad options, 3 could not start (port, files); always one line, never a traceback.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent_harness import agent_pool, free_port  # noqa: F401  (fixture)
from labgrid_harness import stop_process
from qverify.agent.server import ConfigError, ServerOptions, check_security, parse_listen
from qverify.client.agent_client import BoardClient
from tls_pki import pki  # noqa: F401  (fixture)


def agent(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qverify.agent.cli", "serve", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("qverify-agent: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.57", ("127.0.0.57", 7060)),        # no port: the default port, not 443
    ("127.0.0.1:7061", ("127.0.0.1", 7061)),
    ("[::1]:7062", ("::1", 7062)),
    ("[::1]", ("::1", 7060)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_listen_addresses_parse_to_host_and_port(text, expected):
    assert parse_listen(text, 7060) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:", "127.0.0.1:http", ":7060",
                                  "::1", "[::1", "[::1]x", "host:1:2"])
def test_listen_addresses_that_are_not_host_and_port_are_refused(text):
    with pytest.raises(ConfigError, match="--listen"):
        parse_listen(text, 7060)


@pytest.mark.parametrize("args, words", [
    (["--listen", "127.0.0.1:99999"], "not a port number"),
    (["--backend", "nope"], "unknown backend 'nope'; available: "),
])
def test_bad_options_exit_2_with_one_line(tmp_path, args, words):
    done = agent("--model-dir", str(tmp_path / "m"), "--listen", f"127.0.0.1:{free_port()}", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert words in one_error_line(done)


def test_a_port_in_use_exits_3_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = agent("--model-dir", str(tmp_path / "m"), "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
    assert done.returncode == 3
    line = one_error_line(done)
    assert f"127.0.0.1:{port}" in line and "in use" in line


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_token_file_problems_exit_3_naming_the_file(tmp_path, case):
    token = tmp_path / "token"
    if case == "empty":
        token.write_text("\n")
    done = agent("--model-dir", str(tmp_path / "m"), "--listen", f"127.0.0.1:{free_port()}", "--token-file",
                 str(token), cwd=tmp_path)
    assert done.returncode == 3
    line = one_error_line(done)
    assert f"--token-file {token}" in line and ("No such file" if case == "missing" else "is empty") in line


def test_a_model_dir_that_is_a_file_exits_3_and_says_so(tmp_path):
    model_dir = tmp_path / "models"
    model_dir.write_text("")
    done = agent("--model-dir", str(model_dir), "--listen", f"127.0.0.1:{free_port()}", cwd=tmp_path)
    assert done.returncode == 3
    line = one_error_line(done)
    assert "is a file, not a folder" in line and "Errno" not in line


def test_a_key_that_does_not_match_the_certificate_is_named(tmp_path, pki):
    done = agent("--model-dir", str(tmp_path / "m"), "--listen", f"127.0.0.1:{free_port()}",
                 "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "client.key"), cwd=tmp_path)
    assert done.returncode == 2
    line = one_error_line(done)
    assert "--tls-key" in line and "matching pair" in line and "bind" not in line.lower()


# ------------------------------------------------------------------ off loopback, callers authenticate


def _options(**kwargs) -> ServerOptions:
    return ServerOptions(listen="0.0.0.0:7060", **kwargs)


def test_server_only_tls_off_loopback_is_not_secured(pki):
    with pytest.raises(ConfigError, match="--tls-client-ca to require client certificates"):
        check_security(_options(tls_cert=pki / "server.pem", tls_key=pki / "server.key"))


@pytest.mark.parametrize("extra", [
    {"token": "t0k3n"},
    {"tls_client_ca": "ca.pem"},
    {"token": "t0k3n", "tls_client_ca": "ca.pem"},
])
def test_a_token_or_mtls_secures_a_network_listen(pki, extra):
    if "tls_client_ca" in extra:
        extra = {**extra, "tls_client_ca": pki / "ca.pem"}
    check_security(_options(tls_cert=pki / "server.pem", tls_key=pki / "server.key", **extra))


def test_server_only_tls_on_the_network_refuses_to_start(tmp_path, pki):
    done = agent("--model-dir", str(tmp_path / "m"), "--listen", f"0.0.0.0:{free_port()}",
                 "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), cwd=tmp_path)
    assert done.returncode == 2
    assert "--tls-client-ca" in one_error_line(done)


def test_server_only_tls_with_insecure_starts_and_warns(tmp_path, pki):
    port = free_port()
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "qverify.agent.cli", "serve", "--listen", f"0.0.0.0:{port}",
                                 "--model-dir", str(tmp_path / "m"), "--tls-cert", str(pki / "server.pem"),
                                 "--tls-key", str(pki / "server.key"), "--insecure"], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        with BoardClient(f"127.0.0.1:{port}", tls_ca=pki / "ca.pem", connect_timeout=30) as board:
            assert board.info().backend == "sim"
        assert "anyone holding the CA certificate can run models" in log.read_text()
    finally:
        stop_process(proc)


def test_a_model_for_another_target_names_the_property_that_differs(agent_pool, tmp_path):
    import grpc
    import numpy as np

    import synthetic
    from agent_harness import model_id
    from qverify.simulator import save
    from qverify.simulator.compiler import compile_model

    path = tmp_path / "model.bin"
    save(compile_model(synthetic.quantize(synthetic.small_cnn(seed=1), tmp_path / "q.onnx"), target="sim-a16"), path)
    data = path.read_bytes()
    agent = agent_pool.start("--target", "sim-a32", name="a32")
    with agent.client() as client:
        client.push(data)
        with pytest.raises(grpc.RpcError) as err:
            client.run(model_id(data), {"x": np.zeros((1, 16, 16, 3), np.int8)}, timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details()
    assert "compiled for target 'sim-a16' (c_align 16 here, 32 on this board)" in details, details
    assert "qverify compile --target sim-a32" in details
    assert agent.stop() == 0
