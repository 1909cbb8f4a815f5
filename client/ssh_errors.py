"""The errors of the SSH push: every foreseeable failure is an ``SshError`` subclass whose
message is one sentence saying what to do.

They live apart from :mod:`qverify.client.ssh` so that its parts (host keys,
authentication, connection, upload) can raise them without importing one another.
"""
from __future__ import annotations

__all__ = ["SshError", "HostKeyChanged", "SshAuthFailed", "SshUnreachable", "SshTransferFailed"]


class SshError(Exception):
    """An SSH push failed; the message is one sentence saying what to do."""


class HostKeyChanged(SshError):
    """The server's host key differs from the one known_hosts records: refused."""


class SshAuthFailed(SshError):
    """The server refused every key offered (or there was none to offer)."""


class SshUnreachable(SshError):
    """No SSH server answered: DNS, connection refused, timeout, or not an SSH port."""


class SshTransferFailed(SshError):
    """The upload did not complete: missing or read-only store, full disk, cut connection."""
