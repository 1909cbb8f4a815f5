"""Run ``qverify`` in this process, the way a user's shell would, and capture what it printed."""
from __future__ import annotations

from qverify.client import cli


def run_qverify(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``qverify ARGS``; a foreseeable failure never shows a traceback."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err
