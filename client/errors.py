"""Exit codes of ``qverify`` and :class:`Failure`, the one-line error its commands raise.

Exit codes (DESIGN.md): 0 consistent / success, 1 inconsistent, 2 bad usage or bad
input file, 3 board unreachable or infrastructure failure. This module imports nothing
of qverify, so every command module can use it without importing the CLI itself.
"""
from __future__ import annotations

EXIT_OK, EXIT_INCONSISTENT, EXIT_BAD_INPUT, EXIT_INFRA = 0, 1, 2, 3


class Failure(Exception):
    """A foreseeable failure of a command: ``qverify`` prints the message on one line and
    exits with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
