"""``qverify doctor``: the preprocessing mistakes that lose accuracy, found from what a pipeline feeds.

Given quant.onnx (and optionally the float model it came from) and the files a pipeline
feeds the model (.npy/.npz tensors, or jpg/png images), the doctor looks for:

* structure (:mod:`.doctor_shapes`): dtype, NHWC vs NCHW, a size other than the model's,
  NV12 / YUV444 camera frames where a tensor is expected, an image file of another size;
* the input range (:mod:`.doctor_range`): against the range quant.onnx was calibrated for
  (mean/std missing or twice, 0-1 vs 0-255, a -128 offset);
* the model's response (:mod:`.doctor_response`, :mod:`.doctor_letterbox`): swapped RGB/BGR,
  padding bars found in the input statistics.

Each finding is one line with the evidence and the fix; no finding means exit code 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qverify.client.accuracy.doctor_range import ModelInput, model_inputs, range_problem
from qverify.client.accuracy.doctor_shapes import Sample, check_sample
from qverify.client.errors import EXIT_INCONSISTENT, EXIT_OK

REPORT_SCHEMA = "qverify.doctor/1"


class DoctorError(Exception):
    """A model or -i file the doctor cannot use; the message says what to give."""


@dataclass
class Finding:
    """One preprocessing mistake: which input, what kind, the evidence, the fix, the files showing it."""
    input: str
    kind: str  # range, dtype, layout, shape, size, nv12, yuv444, channel_order, letterbox
    evidence: str
    fix: str
    sources: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.input}: {self.evidence}; {self.fix}"


@dataclass
class DoctorReport:
    quant: Path
    float: Path | None
    inputs: list[ModelInput]
    frames: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_INCONSISTENT if self.findings else EXIT_OK

    def kinds(self) -> list[str]:
        return [f.kind for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REPORT_SCHEMA, "quant": str(self.quant), "float": str(self.float) if self.float else None,
                "frames": self.frames,
                "inputs": [{"name": p.name, "shape": list(p.shape), "calibrated_range": [p.lo, p.hi]}
                           for p in self.inputs],
                "findings": [{"input": f.input, "kind": f.kind, "evidence": f.evidence, "fix": f.fix,
                              "sources": f.sources, "line": f.line()} for f in self.findings],
                "exit_code": self.exit_code}


def _load_models(paths: list[Path]) -> tuple[Path, Any, Path | None]:
    from qverify.client.modelfiles import ModelFileError, is_quantized, load_onnx, sniff

    quant = floating = None
    try:
        if not paths or len(paths) > 2:
            raise ModelFileError("-m takes quant.onnx, optionally with the float model: -m quant.onnx[,float.onnx]")
        for path in paths:
            if sniff(path) != "onnx":
                raise ModelFileError(f"-m {path}: a model.bin; the doctor checks what is fed to the ONNX model: give "
                                     "quant.onnx[,float.onnx]")
            model = load_onnx(path)
            if is_quantized(model):
                if quant is not None:
                    raise ModelFileError(f"-m: two quantized models ({quant[0]}, {path}); give one")
                quant = (path, model)
            elif floating is not None:
                raise ModelFileError(f"-m: two float models ({floating}, {path}); give one float and one quant.onnx")
            else:
                floating = path
    except ModelFileError as exc:
        raise DoctorError(str(exc)) from None
    if quant is None:
        raise DoctorError(f"-m {floating}: a float model alone; give the quant.onnx quantized from it too "
                          "(its input quantization tells the calibrated range)")
    return quant[0], quant[1], floating


def _read(path: Path) -> tuple[np.ndarray | dict[str, np.ndarray], bool]:
    from qverify.client.inputs import IMAGE_SUFFIXES, InputFileError, _require_file

    try:
        _require_file(path)
    except InputFileError as exc:
        raise DoctorError(str(exc)) from None
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"), dtype=np.uint8), True
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), False
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}, False
    except Exception as exc:  # PIL and numpy raise many kinds for a corrupt file
        raise DoctorError(f"-i {path}: cannot read it ({str(exc).splitlines()[0][:200]})") from None
    raise DoctorError(f"-i {path}: unknown kind of file; give .npy/.npz tensors or .jpg/.png images")


def load_samples(ports: list[ModelInput], specs: list[str]) -> dict[str, list[Sample]]:
    """-i values (FILE or NAME:FILE; an .npz holds arrays by input name) -> samples per input."""
    if not specs:
        raise DoctorError("-i: give the files your pipeline feeds the model (.npy/.npz tensors or images)")
    names = [p.name for p in ports]
    samples: dict[str, list[Sample]] = {n: [] for n in names}
    for spec in specs:
        name, sep, file = spec.partition(":")
        if sep and name in names and file:
            target, path = name, Path(file)
        else:
            target, path = (names[0] if len(names) == 1 else None), Path(spec)
        data, image = _read(path)
        if isinstance(data, dict):
            for key, array in data.items():
                into = key if key in samples else (target if len(data) == 1 and target else None)
                if into is None:
                    raise DoctorError(f"-i {path}: holds array '{key}', but the model's inputs are "
                                      f"{', '.join(names)}; name the arrays after them")
                samples[into].append(Sample(f"{path.name}[{key}]", array))
        elif target is None:
            raise DoctorError(f"-i {spec}: the model has several inputs ({', '.join(names)}); write NAME:FILE")
        else:
            samples[target].append(Sample(path.name, data, image))
    return samples


def _group(problems: list[tuple[str, str, str, str]], input_name: str, count: int) -> list[Finding]:
    """One finding per kind of problem, with the first file's evidence and how many files show it."""
    out: dict[str, Finding] = {}
    for kind, evidence, fix, source in problems:
        if kind not in out:
            out[kind] = Finding(input_name, kind, evidence, fix)
        out[kind].sources.append(source)
    for finding in out.values():
        n = len(finding.sources)
        if count > 1:
            finding.evidence += f" ({n} of {count} files)" if n > 1 else f" (1 of {count} files)"
    return list(out.values())


def diagnose(models: list[Path], specs: list[str]) -> DoctorReport:
    """Run every check on the -i files against quant.onnx (and the float model's response)."""
    from qverify.client.accuracy.doctor_letterbox import letterbox_problem
    from qverify.client.accuracy.doctor_response import Responder, channel_order_problem

    quant_path, quant, float_path = _load_models(models)
    ports = model_inputs(quant)
    samples = load_samples(ports, specs)
    report = DoctorReport(quant_path, float_path, ports, max(len(v) for v in samples.values()))
    tensors: dict[str, list[np.ndarray]] = {}
    for port in ports:
        problems, good = [], []
        for sample in samples[port.name]:
            found, x = check_sample(sample, port)
            problems += [(kind, evidence, fix, sample.source) for kind, evidence, fix in found]
            if x is not None:
                good.append(x)
        report.findings += _group(problems, port.name, len(samples[port.name]))
        tensors[port.name] = good
        if good and port.lo is not None:
            ranged = range_problem(np.concatenate([g.ravel() for g in good]), port.lo, port.hi)
            if ranged:
                report.findings.append(Finding(port.name, "range", ranged[0], ranged[1],
                                               [s.source for s in samples[port.name]]))
    if report.findings or not all(tensors.values()):
        return report  # the response of a model fed wrongly shaped or scaled inputs says nothing more
    responder = Responder(float_path or quant_path, (float_path or quant_path).name)
    for port in ports:
        if not port.image_like:
            continue
        others = {p.name: tensors[p.name][0] for p in ports if p is not port}
        frames = tensors[port.name]
        problems = [("channel_order", channel_order_problem(responder, port.name, frames, others)
                     if port.shape[1] == 3 else None),
                    ("letterbox", letterbox_problem(responder, port, frames, others))]
        report.findings += [Finding(port.name, kind, problem[0], problem[1], [s.source for s in samples[port.name]])
                            for kind, problem in problems if problem]
    return report
