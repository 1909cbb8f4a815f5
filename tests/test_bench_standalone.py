"""The benchmarks run where only ``qverify[models]`` is installed: no pytest, nothing from tests/.

Each check starts a fresh interpreter in which ``import pytest`` fails (as in a venv
without the test extras) and runs a bench script the way ``python bench/<script>.py``
would, then lists any module it loaded from tests/.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
TESTS = REPO / "tests"

# sys.modules[name] = None makes ``import name`` raise ImportError, like a missing package.
# sys.path[0] is the script's folder, as when Python runs a script; -I keeps this folder and
# PYTHONPATH out, so tests/ is reachable only if the script puts it on the path itself.
_RUNNER = """
import json, os, runpy, sys
from pathlib import Path
sys.modules["pytest"] = None
sys.modules["_pytest"] = None
script, tests = sys.argv[1], Path(sys.argv[2])
sys.argv = [script, "--help"]
sys.path.insert(0, os.path.dirname(script))
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
from_tests = sorted(name for name, module in list(sys.modules.items())
                    if getattr(module, "__file__", None) and Path(module.__file__).resolve().parent == tests)
print(json.dumps({"code": code, "from_tests": from_tests}))
"""


def run_without_pytest(script: Path, tmp_path: Path) -> tuple[dict, str]:
    """(the runner's JSON report, the script's --help text) for ``script --help`` without pytest."""
    done = subprocess.run([sys.executable, "-I", "-c", _RUNNER, str(script), str(TESTS)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    *help_lines, report = done.stdout.rstrip("\n").split("\n")
    return json.loads(report), "\n".join(help_lines)


def test_push_bench_runs_without_pytest_and_tests(tmp_path: Path):
    report, help_text = run_without_pytest(BENCH / "push.py", tmp_path)
    assert report == {"code": 0, "from_tests": []}
    assert "--mib" in help_text and "--repeat" in help_text


def test_sshd_runner_imports_without_pytest(tmp_path: Path):
    code = ("import sys; sys.modules['pytest'] = None; sys.path.insert(0, sys.argv[1]); "
            "import sshd_runner; print(sshd_runner.SshdFactory.__name__)")
    done = subprocess.run([sys.executable, "-I", "-c", code, str(BENCH)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SshdFactory"


def test_sensitivity_bench_runs_without_pytest_and_tests(tmp_path: Path):
    report, help_text = run_without_pytest(BENCH / "sensitivity.py", tmp_path)
    assert report == {"code": 0, "from_tests": []}
    assert "--jobs" in help_text and "--models" in help_text


BENCH_SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if "__main__" in p.read_text())


@pytest.mark.parametrize("script", BENCH_SCRIPTS)
def test_every_bench_starts_without_pytest_and_tests(script: str, tmp_path: Path):
    report, help_text = run_without_pytest(BENCH / script, tmp_path)
    assert report == {"code": 0, "from_tests": []}
    assert "usage:" in help_text


def test_every_bench_prints_a_ratio_line():
    for script in BENCH_SCRIPTS:
        assert "ratio" in (BENCH / script).read_text(), f"bench/{script} prints no ratio line"
