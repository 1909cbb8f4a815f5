"""The distribution: non-editable install, console scripts, generated code, import arrows."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_protobuf_code_is_up_to_date():
    pytest.importorskip("grpc_tools")
    proc = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_simulator_runtime_imports_no_host_only_packages():
    """Boards install grpcio, protobuf and numpy only: loading and running a model must not need more."""
    code = (
        "import sys\n"
        "import qverify.simulator as s\n"
        "from qverify.simulator.ops import registry\n"
        "registry.load_kernels()\n"
        "bad = sorted(m for m in ('onnx', 'onnxruntime', 'paramiko', 'typer', 'rich', 'scipy') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"runtime imported {proc.stdout.strip()}"


def test_ci_runs_the_readme_fresh_machine_commands_exactly_as_written():
    """CI proves the README's two commands, not a private variant of them."""
    readme = (ROOT / "README.md").read_text().splitlines()
    fence = readme.index("```bash")
    written = readme[fence + 1:readme.index("```", fence + 1)]
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print-commands"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == written
    assert len(written) == 2
    assert "pip install" in written[0] and "qverify demo" in written[0]
    assert "pip install" in written[1] and "pytest" in written[1]


@pytest.mark.slow
def test_non_editable_install_into_a_fresh_venv(tmp_path):
    """`pip install .` (not -e) yields a working package: every mapped folder, the proto, the scripts."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # The running environment's site-packages provide the dependencies, appended after the
    # venv's own (a .pth of plain paths: their own .pth files, such as an editable install's
    # finder, are not run), so the venv's qverify must win.
    own_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()]
    (Path(own_site) / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    # Build isolation, as a user's `pip install .` does: the build backend comes from
    # pyproject.toml's [build-system], never from whatever setuptools/wheel this machine has.
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--quiet", str(src)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    check = ("import qverify, qverify.v1.model_pb2, qverify.simulator, qverify.simulator.compiler, "
             "qverify.client.cli, qverify.agent.cli\n"
             "from qverify.simulator.ops import registry; registry.load_kernels()\n"
             "import pathlib; p = pathlib.Path(qverify.simulator.__file__)\n"
             "print(p)\n"
             "assert 'site-packages' in str(p), p\n"
             "assert (pathlib.Path(qverify.v1.model_pb2.__file__).parent / 'model.proto').exists()\n"
             "print(len(registry.npu_ops()), len(registry.cpu_ops()))\n")
    proc = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(env_dir) in proc.stdout.splitlines()[0]
    npu, cpu = map(int, proc.stdout.splitlines()[1].split())
    assert npu >= 15 and cpu >= 60
    for script, code in (("qverify", 0), ("qverify-agent", 2)):
        run = subprocess.run([str(env_dir / "bin" / script), "--help"] if script == "qverify" else
                             [str(env_dir / "bin" / script)], capture_output=True, text=True, timeout=120)
        assert run.returncode == code, run.stderr


def test_the_backend_interface_is_backend_neutral():
    """A vendor backend implements agent/backends/base.py without any simulator type: the interface
    imports nothing of the simulator, and the agent builds every message from the backend's description."""
    code = ("import sys\n"
            "import qverify.agent.backends.base as base\n"
            "print(sorted(m for m in sys.modules if m.startswith('qverify.simulator')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    service = (ROOT / "agent" / "service.py").read_text()
    assert "model.program" not in service
