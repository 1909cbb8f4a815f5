"""Test harness: pytest fixtures around a real OpenSSH ``sshd`` on loopback, for SFTP push tests.

The server itself (``SshServer``, ``SshdFactory`` and their helpers) is ``bench/sshd_runner.py``,
which needs no pytest so that ``bench/push.py`` can use it too; its names are importable
from here as before. The ``sshd_factory`` fixture gives a factory per test
(``sshd_factory(alias="board", sftp_options="")`` -> a started SshServer) and stops every
server it started by PID at teardown; ``sshd`` is one default server per test. Without
``/usr/sbin/sshd`` or ``ssh-keygen`` the fixtures skip with the install command.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

# bench/ is not a package: put it on the path the way pytest puts tests/ there. Appended, so
# that no bench script's name shadows an installed module.
_BENCH = str(Path(__file__).resolve().parents[1] / "bench")
if _BENCH not in sys.path:
    sys.path.append(_BENCH)

from sshd_runner import (  # noqa: E402
    HOST, INSTALL_HINT, PRIVSEP_DIR, SSHD, START_ATTEMPTS, START_TIMEOUT, STOP_TIMEOUT, SshdFactory, SshdStartError,
    SshdUnavailable, SshServer, current_user, descendants, free_port, keygen, openssh_tools, ssh_banner,
    sshd_version,
)

__all__ = [
    "HOST", "INSTALL_HINT", "PRIVSEP_DIR", "SSHD", "START_ATTEMPTS", "START_TIMEOUT", "STOP_TIMEOUT", "SshdFactory",
    "SshdStartError", "SshdUnavailable", "SshServer", "current_user", "descendants", "free_port", "keygen",
    "openssh_tools", "ssh_banner", "sshd_version", "sshd_factory", "sshd",
]


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[SshdFactory]:
    """``sshd_factory(alias="board", sftp_options="")`` -> a started SshServer; all stopped at teardown."""
    try:
        openssh_tools()
    except SshdUnavailable as exc:
        pytest.skip(str(exc))
    factory = SshdFactory(tmp_path / "sshd")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def sshd(sshd_factory: SshdFactory) -> SshServer:
    """One started private sshd for this test (alias ``board`` in its ssh_config)."""
    return sshd_factory()
