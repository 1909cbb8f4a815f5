"""Malformed but well-hashed models never crash anything: corpus of reproducers + bounded atheris runs.

The corpus tests always run. The fuzz runs need atheris; each one is a short, bounded
libFuzzer run (``-runs`` and ``-max_total_time``) in a subprocess the test stops, and
fails when the target raised anything but a clean (SimulatorError) error.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qverify.simulator import Simulator, load, modelfile
from qverify.simulator.errors import ModelFormatError

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "fuzz_corpus"
sys.path.insert(0, str(CORPUS))
from reproducers import REPRODUCERS, reproducer_bytes, tiny_program  # noqa: E402

HAS_ATHERIS = importlib.util.find_spec("atheris") is not None


# ---- corpus: each reproducer is a valid container, refused in one line naming the culprit ----
@pytest.mark.parametrize("stem", sorted(REPRODUCERS))
def test_reproducer_is_refused_with_one_line(stem):
    path = CORPUS / f"{stem}.bin"
    data = path.read_bytes()
    modelfile.decode(data, path.name)  # well-hashed: the container itself is fine
    with pytest.raises(ModelFormatError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    for fragment in REPRODUCERS[stem][1]:
        assert fragment in message, (fragment, message)
    assert "recompile" in message or "limit" in message


@pytest.mark.parametrize("stem", sorted(REPRODUCERS))
def test_checked_in_reproducer_is_current(stem):
    assert (CORPUS / f"{stem}.bin").read_bytes() == reproducer_bytes(stem)


def test_the_unmutated_program_loads_and_runs(tmp_path):
    path = tmp_path / "tiny.bin"
    modelfile.save(tiny_program(), path)
    program = load(path)
    x = np.random.default_rng(0).integers(-128, 128, (1, 8, 8, 3), dtype=np.int8)
    out = Simulator(program).run({"x": x}).outputs["z"]
    assert out.shape == (1, 4, 8, 8) and out.dtype == np.int8


def test_max_tensor_bytes_is_a_load_parameter(tmp_path):
    path = tmp_path / "tiny.bin"
    modelfile.save(tiny_program(), path)
    load(path, max_tensor_bytes=1 << 16)
    with pytest.raises(ModelFormatError, match="over the limit of 1000 bytes"):
        load(path, max_tensor_bytes=1000)


@pytest.mark.parametrize("command", [["-m"], ["info"]])
def test_host_cli_refuses_a_reproducer_with_exit_2_and_no_traceback(command, capsys):
    from qverify.client.cli import main

    bad = CORPUS / "node_without_inputs.bin"
    code = main([*command, str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "node 'lut' (Lut)" in lines[0], err


# ---- bounded atheris runs ----------------------------------------------------------------
DECODE_TARGET = """
import sys
import atheris
with atheris.instrument_imports():
    from qverify.simulator import modelfile
    from qverify.simulator.errors import ModelFormatError

def one(data):
    try:
        modelfile.decode_program(data, "fuzz.bin")
    except ModelFormatError:
        pass
    # also as a well-hashed container around the fuzzed payload
    payload = data[modelfile.HEADER.size:] if data.startswith(modelfile.MAGIC) else data
    from qverify.v1 import model_pb2
    try:
        program = model_pb2.Program.FromString(payload)
    except Exception:
        return
    try:
        modelfile.decode_program(modelfile.encode(program), "fuzz.bin")
    except ModelFormatError:
        pass

atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""

EXECUTE_TARGET = """
import sys
import atheris
import numpy as np
with atheris.instrument_imports():
    from qverify.simulator import Simulator, modelfile
    from qverify.simulator.errors import ModelFormatError, SimulatorError
    from qverify.simulator.executor import feed_shape
    from qverify.v1 import model_pb2

SEED = model_pb2.Program.FromString(open(sys.argv.pop(1), "rb").read())

def mutate(fdp, program):
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        kind = fdp.ConsumeIntInRange(0, 7)
        if kind == 0 and program.nodes:  # an attribute: new value of any type
            node = program.nodes[fdp.ConsumeIntInRange(0, len(program.nodes) - 1)]
            keys = sorted(node.attrs) or ["x"]
            attr = node.attrs[keys[fdp.ConsumeIntInRange(0, len(keys) - 1)]]
            choice = fdp.ConsumeIntInRange(0, 3)
            if choice == 0:
                attr.i = fdp.ConsumeIntInRange(-(1 << 33), 1 << 33)
            elif choice == 1:
                attr.f = fdp.ConsumeRegularFloat()
            elif choice == 2:
                attr.ints.values[:] = fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 5), -70000, 70000)
            else:
                attr.s = fdp.ConsumeUnicodeNoSurrogates(8)
        elif kind == 1 and program.tensors:  # a dim, scale or zero point
            t = program.tensors[fdp.ConsumeIntInRange(0, len(program.tensors) - 1)]
            if t.shape and fdp.ConsumeBool():
                t.shape[fdp.ConsumeIntInRange(0, len(t.shape) - 1)] = fdp.ConsumeIntInRange(-2, 40)
            elif fdp.ConsumeBool():
                t.quant.scale = fdp.ConsumeRegularFloat()
            else:
                t.quant.zero_point = fdp.ConsumeIntInRange(-300, 300)
        elif kind == 2 and program.constants:  # constant bytes (and shape)
            c = program.constants[fdp.ConsumeIntInRange(0, len(program.constants) - 1)]
            c.data = fdp.ConsumeBytes(len(c.data) + fdp.ConsumeIntInRange(-8, 8))
            if c.shape and fdp.ConsumeBool():
                c.shape[fdp.ConsumeIntInRange(0, len(c.shape) - 1)] = fdp.ConsumeIntInRange(0, 300)
        elif kind == 3 and program.nodes:  # op, placement, wiring
            node = program.nodes[fdp.ConsumeIntInRange(0, len(program.nodes) - 1)]
            names = [n.op for n in program.nodes] + ["Gather", "Pad", "Softmax", "Relu", "LayerNormalization"]
            pick = names[fdp.ConsumeIntInRange(0, len(names) - 1)]
            if fdp.ConsumeBool():
                node.op = pick
            else:
                node.placement, node.onnx_op = 2, pick
        elif kind == 4 and program.nodes:
            node = program.nodes[fdp.ConsumeIntInRange(0, len(program.nodes) - 1)]
            tensors = [t.name for t in program.tensors]
            if node.inputs and fdp.ConsumeBool():
                node.inputs[fdp.ConsumeIntInRange(0, len(node.inputs) - 1)] = tensors[
                    fdp.ConsumeIntInRange(0, len(tensors) - 1)]
            elif fdp.ConsumeBool():
                del node.inputs[:]
            else:
                del node.outputs[:]
        elif kind == 5:
            program.target.c_align = fdp.ConsumeIntInRange(-1, 70)
            program.target.w_align = fdp.ConsumeIntInRange(-1, 9)
        elif kind == 6 and program.nodes:
            node = program.nodes[fdp.ConsumeIntInRange(0, len(program.nodes) - 1)]
            consts = [c.name for c in program.constants]
            if node.constants and consts:
                node.constants[fdp.ConsumeIntInRange(0, len(node.constants) - 1)] = consts[
                    fdp.ConsumeIntInRange(0, len(consts) - 1)]
        else:  # raw payload bytes, re-hashed
            raw = bytearray(program.SerializeToString())
            for _ in range(fdp.ConsumeIntInRange(1, 8)):
                if raw:
                    raw[fdp.ConsumeIntInRange(0, len(raw) - 1)] = fdp.ConsumeIntInRange(0, 255)
            try:
                program.ParseFromString(bytes(raw))
            except Exception:
                return

def one(data):
    fdp = atheris.FuzzedDataProvider(data)
    program = model_pb2.Program()
    program.CopyFrom(SEED)
    mutate(fdp, program)
    try:
        loaded = modelfile.decode_program(modelfile.encode(program), "fuzz.bin", max_tensor_bytes=1 << 22)
    except ModelFormatError:
        return
    rng = np.random.default_rng(fdp.ConsumeIntInRange(0, 1 << 30))
    feeds = {}
    for t in loaded.inputs:
        info = np.iinfo(t.dtype) if t.dtype.kind in "iu" else None
        shape = feed_shape(t)
        feeds[t.name] = (rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=t.dtype)
                         if info else rng.normal(size=shape).astype(t.dtype))
    try:
        Simulator(loaded).run(feeds, dump="all", dump_layout="both", sink=lambda d: None)
    except SimulatorError:
        pass

atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""


def _fuzz(tmp_path: Path, target: str, extra: list[str], runs: int, seconds: int) -> None:
    script = tmp_path / "target.py"
    script.write_text(textwrap.dedent(target))
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    args = [sys.executable, str(script), *extra, f"-runs={runs}", f"-max_total_time={seconds}",
            "-rss_limit_mb=2048", "-max_len=4096", "-seed=1", f"-artifact_prefix={crashes}/"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        out, _ = proc.communicate(timeout=seconds + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0 and not list(crashes.iterdir()), text[-4000:]


@pytest.mark.skipif(not HAS_ATHERIS, reason="atheris is not installed (pip install 'qverify[test]')")
def test_fuzz_decoding_arbitrary_bytes_raises_only_model_format_errors(tmp_path):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for path in CORPUS.glob("*.bin"):
        (seeds / path.name).write_bytes(path.read_bytes())
    _fuzz(tmp_path, DECODE_TARGET, [str(seeds)], runs=3000, seconds=8)


@pytest.mark.skipif(not HAS_ATHERIS, reason="atheris is not installed (pip install 'qverify[test]')")
def test_fuzz_running_mutated_programs_raises_only_clean_errors(tmp_path, small_model_bin):
    _fuzz(tmp_path, EXECUTE_TARGET, [str(small_model_bin)], runs=1500, seconds=10)


@pytest.fixture(scope="module")
def small_model_bin(tmp_path_factory) -> Path:
    """The payload of a real model.bin compiled from a small quantized CNN (tests/synthetic.py)."""
    from synthetic import quantize, small_cnn

    from qverify.simulator.compiler import compile_model

    folder = tmp_path_factory.mktemp("fuzz_model")
    onnx_path = quantize(small_cnn(), folder / "quant.onnx")
    program = compile_model(onnx_path)
    payload = folder / "program.pb"
    payload.write_bytes(program.SerializeToString())
    return payload
