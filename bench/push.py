"""SFTP push throughput: qverify's push_sftp against OpenSSH scp and paramiko's own put.

    python bench/push.py [--mib 100] [--repeat 3]

Starts a private OpenSSH sshd on 127.0.0.1 (``bench/sshd_runner.py``: throw-away host and
user keys, a free port, ``Subsystem sftp internal-sftp``) and writes a file of --mib MiB of
random bytes into a temporary directory. Then, --repeat times, interleaved, each into an
empty destination so every method really sends:

* ``push_sftp`` (``qverify.client.ssh``) into an empty model store: connect, check for the
  model, upload to a ``.part`` file, rename;
* ``scp -i KEY -P PORT -o BatchMode=yes -o UserKnownHostsFile=FILE`` with OpenSSH's
  default cipher, the host key trusted through that known_hosts file (no
  StrictHostKeyChecking=no), and the same with ``-c aes128-gcm@openssh.com``, the cipher
  push_sftp negotiates, as a second reference;
* paramiko's default ``SSHClient`` + ``SFTPClient.put`` (default Transport, 32 KiB writes).

Each figure is the wall time of the whole operation (connection included, like the scp
process) and the best of the repetitions; MB = 10^6 bytes. The ratio is push_sftp / scp
(target >= 0.6). sshd, scp and this process share the machine's CPUs, so run it on an
otherwise idle machine. sshd is stopped by PID in a ``finally``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paramiko

from qverify.client.ssh import SshOptions, connect, push_sftp
# sshd_runner sits beside this script (on sys.path as the script's own directory) and needs
# no pytest: the benchmark runs where only qverify[models] is installed.
from sshd_runner import SshdFactory, SshdUnavailable, SshServer, sshd_version

SHA = "0" * 64  # push_sftp trusts the id it is given; the content does not matter here


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=100, help="size of the pushed file in MiB (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per method; the best is reported")
    args = parser.parse_args(argv)
    if args.mib < 1 or args.repeat < 1:
        parser.error("--mib and --repeat must be at least 1")
    return args


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def empty(directory: Path) -> None:
    for item in directory.iterdir():
        item.unlink()


def run_push(server: SshServer, source: Path, store: Path, options: SshOptions) -> None:
    empty(store)
    result = push_sftp(source, server.host, str(store), SHA, options)
    assert result.sent and (store / f"{SHA}.bin").stat().st_size == source.stat().st_size


def run_scp(server: SshServer, source: Path, dest: Path, config: Path, *extra: str) -> None:
    empty(dest)
    subprocess.run(["scp", "-q", "-F", str(config), "-i", str(server.user_key), "-P", str(server.port),
                    "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={server.known_hosts}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", *extra,
                    str(source), f"{server.user}@{server.host}:{dest}/copy.bin"],
                   check=True, timeout=600, stdin=subprocess.DEVNULL)
    assert (dest / "copy.bin").stat().st_size == source.stat().st_size


def run_paramiko_put(server: SshServer, source: Path, dest: Path) -> None:
    empty(dest)
    client = paramiko.SSHClient()
    client.load_host_keys(str(server.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(server.host, server.port, username=server.user, key_filename=str(server.user_key),
                       allow_agent=False, look_for_keys=False, timeout=30)
        with client.open_sftp() as sftp:
            sftp.put(str(source), f"{dest}/copy.bin")
    finally:
        client.close()


def bench(args: argparse.Namespace, root: Path) -> int:
    factory = SshdFactory(root / "sshd")
    try:
        server = factory()
        server.trust()
        config = root / "empty_ssh_config"
        config.touch()
        options = SshOptions(user=server.user, key=server.user_key, port=server.port,
                             known_hosts=server.known_hosts, config_file=config, connect_timeout=30)
        source = root / "model.bin"
        with open(source, "wb") as fh:
            for _ in range(args.mib):
                fh.write(os.urandom(1 << 20))
        size = source.stat().st_size
        store, dest = root / "store", root / "dest"
        store.mkdir()
        dest.mkdir()
        client = connect(server.host, options)
        cipher = client.get_transport().remote_cipher
        client.close()
        major, minor = sshd_version()
        print(f"{args.mib} MiB of random bytes to a private sshd (OpenSSH {major}.{minor}) on {server.host}, "
              f"{os.cpu_count()} CPUs; best of {args.repeat}, MB = 10^6 bytes", flush=True)
        methods = {
            f"qverify push_sftp ({cipher})": lambda: run_push(server, source, store, options),
            "OpenSSH scp (default cipher)": lambda: run_scp(server, source, dest, config),
            "OpenSSH scp -c aes128-gcm": lambda: run_scp(server, source, dest, config,
                                                         "-c", "aes128-gcm@openssh.com"),
            "paramiko SFTPClient.put (defaults)": lambda: run_paramiko_put(server, source, dest),
        }
        best = {name: float("inf") for name in methods}
        for _ in range(args.repeat):
            for name, fn in methods.items():  # interleaved: slow drift of the machine hits all alike
                best[name] = min(best[name], timed(fn))
        width = max(map(len, methods))
        print(f"{'method':<{width}}  {'MB/s':>7}  {'seconds':>8}")
        for name, seconds in best.items():
            print(f"{name:<{width}}  {size / seconds / 1e6:7.1f}  {seconds:8.3f}")
        push_name, scp_name = list(methods)[:2]
        ratio = best[scp_name] / best[push_name]
        print(f"ratio push_sftp / scp: {ratio:.2f} (target >= 0.6)")
        return 0
    finally:
        factory.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("scp") is None:
        print("cannot run the benchmark: scp is not installed (apt-get install openssh-client)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="qverify-push-bench-"))
    try:
        return bench(args, root)
    except SshdUnavailable as exc:
        print(f"cannot run the benchmark: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
