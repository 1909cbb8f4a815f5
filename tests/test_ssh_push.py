"""SFTP push of model.bin into a board's model store, against a real OpenSSH sshd on loopback.

Every test gets its own sshd (``sshd_harness``), a HOME of its own (so the machine's
~/.ssh and SSH agent never take part) and models of a few MiB of random bytes (the push
does not parse them).
"""
from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from qverify.agent.store import _PART_RE, ModelStore
from qverify.client.ssh import (
    HostKeyChanged,
    PushResult,
    SshAuthFailed,
    SshError,
    SshOptions,
    SshTransferFailed,
    SshUnreachable,
    connect,
    push_sftp,
)
from sshd_harness import SshServer, free_port, keygen, sshd, sshd_factory  # noqa: F401  (fixtures)

MIB = 1 << 20


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads the real ~/.ssh (config, known_hosts, keys) or talks to a real SSH agent."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


def make_model(tmp_path: Path, size: int = 4 * MIB, name: str = "model.bin") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def options(server: SshServer, **overrides) -> SshOptions:
    """Explicit user, key, port and known_hosts, and an empty ssh config: nothing from the machine."""
    empty_config = server.workdir / "empty_ssh_config"
    empty_config.touch()
    values = dict(user=server.user, key=server.user_key, port=server.port, known_hosts=server.known_hosts,
                  config_file=empty_config, connect_timeout=20.0)
    values.update(overrides)
    return SshOptions(**values)


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------- the push


def test_push_lands_the_model_under_its_sha256_with_identical_bytes(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path)
    result = push_sftp(model, sshd.host, str(store), sha, options(sshd))
    assert isinstance(result, PushResult)
    assert (result.sha256, result.sent, result.bytes) == (sha, True, 4 * MIB)
    assert result.remote_path == f"{store}/{sha}.bin"
    assert result.seconds > 0
    assert listing(store) == [f"{sha}.bin"], "no .part file may be left behind"
    assert (store / f"{sha}.bin").read_bytes() == model.read_bytes()


def test_the_agent_store_sees_the_pushed_model(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path, 3 * MIB + 12345)  # not a multiple of any request size
    push_sftp(model, sshd.host, str(store), sha, options(sshd))
    agent_store = ModelStore(store, capacity_bytes=1 << 30, max_model_bytes=1 << 30)
    assert agent_store.has(sha) == model.stat().st_size
    assert agent_store.path_for_run(sha) == store / f"{sha}.bin"  # its sha256 checks out


def test_a_second_push_of_the_same_model_sends_nothing(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path)
    push_sftp(model, sshd.host, str(store), sha, options(sshd))
    before = (store / f"{sha}.bin").stat()
    again = push_sftp(model, sshd.host, str(store), sha, options(sshd))
    assert (again.sent, again.bytes, again.remote_path) == (False, 0, f"{store}/{sha}.bin")
    after = (store / f"{sha}.bin").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the file must not be rewritten"


def test_a_stored_file_of_the_wrong_size_is_replaced(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path)
    (store / f"{sha}.bin").write_bytes(model.read_bytes()[:1000])  # e.g. copied by hand and cut
    result = push_sftp(model, sshd.host, str(store), sha, options(sshd))
    assert result.sent
    assert (store / f"{sha}.bin").read_bytes() == model.read_bytes()
    assert listing(store) == [f"{sha}.bin"]


def test_an_empty_file_is_pushed_too(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path, 0)
    calls = []
    result = push_sftp(model, sshd.host, str(store), sha, options(sshd), progress=lambda *a: calls.append(a))
    assert result.sent and (store / f"{sha}.bin").read_bytes() == b""
    assert calls == [(0, 0)]
    assert listing(store) == [f"{sha}.bin"]


def test_progress_is_monotonic_and_reaches_the_total(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path, 5 * MIB + 7)
    calls: list[tuple[int, int]] = []
    push_sftp(model, sshd.host, str(store), sha, options(sshd), progress=lambda *call: calls.append(call))
    total = 5 * MIB + 7
    assert len(calls) > 1
    assert {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total


def test_the_upload_goes_to_a_part_name_the_agent_cleans_up(sshd: SshServer, store: Path, tmp_path: Path):
    """Mid-transfer the store holds only ``.<sha>.<random>.part`` (what ModelStore removes after a crash)."""
    model, sha = make_model(tmp_path)
    seen: list[list[str]] = []
    push_sftp(model, sshd.host, str(store), sha, options(sshd),
              progress=lambda done, total: seen.append(listing(store)) if done < total else None)
    assert seen, "progress should be reported before the end"
    for names in seen:
        assert len(names) == 1 and _PART_RE.fullmatch(names[0]) and names[0].startswith(f".{sha}."), names
    assert listing(store) == [f"{sha}.bin"]


def test_the_model_id_must_be_a_sha256(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path, 10)
    for bad in (sha.upper(), sha[:-1], "../" + sha[3:], ""):
        with pytest.raises(ValueError, match="64 lowercase hex"):
            push_sftp(model, sshd.host, str(store), bad, options(sshd))
    assert listing(store) == []


def test_aes_gcm_is_negotiated_when_the_server_offers_it(sshd: SshServer):
    if "aes128-gcm@openssh.com" not in paramiko.Transport._preferred_ciphers:
        pytest.skip(f"paramiko {paramiko.__version__} has no AES-GCM (it came with 3.5): pip install 'paramiko>=3.5'")
    client = connect(sshd.host, options(sshd))
    try:
        transport = client.get_transport()
        assert transport.local_cipher in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
        assert transport.remote_cipher == transport.local_cipher
    finally:
        client.close()


# ---------------------------------------------------------------------------- host keys


def test_a_new_host_is_recorded_in_known_hosts_and_trusted_next_time(sshd: SshServer, store: Path, tmp_path: Path):
    known_hosts = tmp_path / "fresh" / ".ssh" / "known_hosts"  # neither file nor folder exists yet
    model, sha = make_model(tmp_path)
    push_sftp(model, sshd.host, str(store), sha, options(sshd, known_hosts=known_hosts))
    assert known_hosts.read_text() == sshd.known_hosts_line()  # recorded as "[127.0.0.1]:PORT type key"
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    assert stat.S_IMODE(known_hosts.parent.stat().st_mode) == 0o700
    # The next connection finds the key and records nothing more.
    assert not push_sftp(model, sshd.host, str(store), sha, options(sshd, known_hosts=known_hosts)).sent
    assert known_hosts.read_text() == sshd.known_hosts_line()


def test_recording_a_host_appends_and_keeps_what_the_file_held(sshd: SshServer, store: Path, tmp_path: Path):
    known_hosts = tmp_path / "known_hosts"
    other = ("# my boards\n"
             "other.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDF8OzWmP+Td0A1tdp11bzkwQ8TSe0PooF9nLP2+dBtU")
    known_hosts.write_text(other)  # no final newline
    model, sha = make_model(tmp_path, 1000)
    push_sftp(model, sshd.host, str(store), sha, options(sshd, known_hosts=known_hosts))
    assert known_hosts.read_text() == other + "\n" + sshd.known_hosts_line()


def test_a_changed_host_key_is_refused_naming_the_host_and_the_fix(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path)
    sshd.trust()  # known_hosts holds the key the server has now...
    sshd.regenerate_host_key()  # ...and then the server gets another one
    recorded = sshd.known_hosts.read_text()
    with pytest.raises(HostKeyChanged) as caught:
        push_sftp(model, sshd.host, str(store), sha, options(sshd))
    message = str(caught.value)
    assert f"[127.0.0.1]:{sshd.port}" in message
    assert f"{sshd.known_hosts} line 1" in message
    assert f"ssh-keygen -f {sshd.known_hosts} -R '[127.0.0.1]:{sshd.port}'" in message
    assert listing(store) == [], "nothing may be uploaded to a host that failed its key check"
    assert sshd.known_hosts.read_text() == recorded, "a changed key must never be recorded"


def test_a_host_known_with_another_key_type_is_refused(sshd: SshServer, store: Path, tmp_path: Path):
    """An ECDSA key on record and an Ed25519 key presented is a changed key, not a new host."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(tmp_path / "ecdsa_host_key")],
                   check=True, capture_output=True, timeout=30)
    kind, blob = (tmp_path / "ecdsa_host_key.pub").read_text().split()[:2]
    sshd.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    model, sha = make_model(tmp_path, 1000)
    with pytest.raises(HostKeyChanged, match="ssh-keygen"):
        push_sftp(model, sshd.host, str(store), sha, options(sshd))
    assert listing(store) == []


# ---------------------------------------------------------------------------- authentication


def test_a_wrong_user_key_is_refused_naming_user_host_and_key(sshd: SshServer, store: Path, tmp_path: Path):
    wrong = keygen(tmp_path / "not_authorized", "stranger")
    model, sha = make_model(tmp_path, 1000)
    with pytest.raises(SshAuthFailed) as caught:
        push_sftp(model, sshd.host, str(store), sha, options(sshd, key=wrong))
    message = str(caught.value)
    assert sshd.user in message and "127.0.0.1" in message and str(wrong) in message
    assert "authorized_keys" in message
    assert listing(store) == []


def test_a_missing_key_file_is_named(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path, 1000)
    with pytest.raises(SshAuthFailed, match="does not exist"):
        push_sftp(model, sshd.host, str(store), sha, options(sshd, key=tmp_path / "nope"))


def test_without_any_key_the_error_says_where_keys_come_from(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path, 1000)
    with pytest.raises(SshAuthFailed, match="no SSH key"):
        push_sftp(model, sshd.host, str(store), sha, options(sshd, key=None))


def test_a_default_key_in_home_is_used(sshd: SshServer, store: Path, tmp_path: Path, private_home: Path):
    ssh_dir = private_home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "id_ed25519").write_bytes(sshd.user_key.read_bytes())
    (ssh_dir / "id_ed25519").chmod(0o600)
    model, sha = make_model(tmp_path, 1000)
    assert push_sftp(model, sshd.host, str(store), sha, options(sshd, key=None)).sent


# ---------------------------------------------------------------------------- reaching the host


def test_nothing_listening_is_unreachable(store: Path, tmp_path: Path):
    port = free_port()
    model, sha = make_model(tmp_path, 1000)
    empty = tmp_path / "empty_config"
    empty.touch()
    with pytest.raises(SshUnreachable, match="connection refused") as caught:
        push_sftp(model, "127.0.0.1", str(store), sha,
                  SshOptions(user="nobody", port=port, config_file=empty, known_hosts=tmp_path / "kh",
                             connect_timeout=5.0))
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert not (tmp_path / "kh").exists()


def test_a_port_that_never_greets_is_unreachable_after_the_connect_timeout(store: Path, tmp_path: Path):
    """A listener that accepts TCP but never sends an SSH banner (a wrong port, a hung board)."""
    model, sha = make_model(tmp_path, 1000)
    empty = tmp_path / "empty_config"
    empty.touch()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        with pytest.raises(SshUnreachable, match="1 s") as caught:
            push_sftp(model, "127.0.0.1", str(store), sha,
                      SshOptions(user="nobody", port=port, config_file=empty, known_hosts=tmp_path / "kh",
                                 connect_timeout=1.0))
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_an_unknown_host_name_is_unreachable(store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path, 1000)
    empty = tmp_path / "empty_config"
    empty.touch()
    with pytest.raises(SshUnreachable, match="resolve"):
        push_sftp(model, "no-such-board.invalid", str(store), sha,
                  SshOptions(user="nobody", config_file=empty, known_hosts=tmp_path / "kh", connect_timeout=5.0))


def test_an_ssh_config_alias_supplies_hostname_port_user_and_key(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path)
    result = push_sftp(model, sshd.alias, str(store), sha,
                       SshOptions(config_file=sshd.ssh_config, known_hosts=sshd.known_hosts))
    assert result.sent and (store / f"{sha}.bin").read_bytes() == model.read_bytes()
    # Host keys are recorded under the real address, as OpenSSH does, not under the alias.
    assert sshd.known_hosts.read_text() == sshd.known_hosts_line()


def test_the_default_ssh_config_in_home_is_honoured(sshd: SshServer, store: Path, tmp_path: Path,
                                                    private_home: Path):
    (private_home / ".ssh").mkdir(mode=0o700)
    (private_home / ".ssh" / "config").write_text(sshd.ssh_config.read_text())
    model, sha = make_model(tmp_path, 1000)
    assert push_sftp(model, sshd.alias, str(store), sha, SshOptions(known_hosts=sshd.known_hosts)).sent
    assert (private_home / ".ssh" / "known_hosts").exists() is False  # the explicit known_hosts was used


def test_explicit_options_win_over_the_ssh_config(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path, 1000)
    closed_port = free_port()
    with pytest.raises(SshUnreachable, match=str(closed_port)):
        push_sftp(model, sshd.alias, str(store), sha,
                  SshOptions(config_file=sshd.ssh_config, known_hosts=sshd.known_hosts, port=closed_port))
    wrong = keygen(tmp_path / "not_authorized", "stranger")
    with pytest.raises(SshAuthFailed, match=str(wrong)):
        push_sftp(model, sshd.alias, str(store), sha,
                  SshOptions(config_file=sshd.ssh_config, known_hosts=sshd.known_hosts, key=wrong))


def test_a_missing_config_file_given_explicitly_is_an_error(store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path, 10)
    with pytest.raises(SshError, match="does not exist"):
        push_sftp(model, "board", str(store), sha, SshOptions(config_file=tmp_path / "nope"))


# ---------------------------------------------------------------------------- the store on the board


def test_a_missing_store_directory_is_named_and_nothing_is_left(sshd: SshServer, tmp_path: Path):
    model, sha = make_model(tmp_path)
    missing = tmp_path / "no" / "models"
    with pytest.raises(SshTransferFailed) as caught:
        push_sftp(model, sshd.host, str(missing), sha, options(sshd))
    assert str(missing) in str(caught.value) and "does not exist" in str(caught.value)
    assert not missing.exists()


def test_a_server_that_refuses_writes_is_reported_and_nothing_is_left(sshd_factory, store: Path, tmp_path: Path):
    """The SFTP server in read-only mode (``internal-sftp -R``) denies the write, for root too."""
    server = sshd_factory(sftp_options="-R")
    model, sha = make_model(tmp_path)
    with pytest.raises(SshTransferFailed) as caught:
        push_sftp(model, server.host, str(store), sha, options(server))
    message = str(caught.value)
    assert "permission denied" in message and str(store) in message and server.user in message
    assert listing(store) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_store_directory_without_write_permission_is_reported(sshd: SshServer, store: Path, tmp_path: Path):
    model, sha = make_model(tmp_path)
    store.chmod(0o555)
    try:
        with pytest.raises(SshTransferFailed, match="permission denied"):
            push_sftp(model, sshd.host, str(store), sha, options(sshd))
        assert listing(store) == []
    finally:
        store.chmod(0o755)


def test_an_interrupted_push_leaves_neither_part_nor_model(sshd: SshServer, store: Path, tmp_path: Path):
    """Ctrl-C midway: the .part file is removed, the model never appears, and a new push works."""
    model, sha = make_model(tmp_path)
    interrupted = []

    def interrupt(done: int, total: int) -> None:
        if done >= total // 3 and not interrupted:
            interrupted.append(listing(store))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        push_sftp(model, sshd.host, str(store), sha, options(sshd), progress=interrupt)
    assert interrupted and _PART_RE.fullmatch(interrupted[0][0]), "the push should have been mid-transfer"
    assert listing(store) == []
    assert push_sftp(model, sshd.host, str(store), sha, options(sshd)).sent
    assert (store / f"{sha}.bin").read_bytes() == model.read_bytes()


def test_a_cut_connection_is_a_transfer_failure_and_no_model_appears(sshd: SshServer, store: Path, tmp_path: Path):
    if not Path(f"/proc/{sshd.pid}/task/{sshd.pid}/children").exists():
        pytest.skip("finding sshd's connection processes needs /proc/PID/task/TID/children (Linux)")
    model, sha = make_model(tmp_path, 8 * MIB)
    cut = []

    def cut_midway(done: int, total: int) -> None:
        if done >= total // 4 and not cut:
            cut.append(sshd.drop_connections())

    with pytest.raises(SshTransferFailed, match="dropped") as caught:
        push_sftp(model, sshd.host, str(store), sha, options(sshd), progress=cut_midway)
    assert cut and cut[0] > 0, "the connection's sshd processes should have been found"
    assert "push again" in str(caught.value)
    assert not (store / f"{sha}.bin").exists()
    # Whatever .part is left is one the agent removes when it starts.
    assert all(_PART_RE.fullmatch(name) for name in listing(store))
    ModelStore(store, capacity_bytes=1 << 30, max_model_bytes=1 << 30)
    assert listing(store) == []
