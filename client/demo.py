"""The end-to-end demo: quantize a real model, compile it, run it on the simulator with
real images, and report agreement with onnxruntime on the same quantized model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qverify.client import zoo
from qverify.client.compare import TensorComparison, compare


@dataclass
class DemoImageResult:
    image: int
    comparison: TensorComparison
    sim_class: int
    ort_class: int


@dataclass
class DemoResult:
    model: str
    quant_onnx: Path
    model_bin: Path
    sha256: str
    layers: int
    cpu_layers: int
    images: list[DemoImageResult] = field(default_factory=list)
    sim_seconds: float = 0.0
    ort_seconds: float = 0.0

    @property
    def classes_agree(self) -> bool:
        return all(r.sim_class == r.ort_class for r in self.images)


class _Untimed:
    """Stands in for a progress display when the caller wants none."""

    def __init__(self, label: str, total: int | None = None) -> None:
        pass

    def __enter__(self) -> "_Untimed":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def step(self, count: int = 1) -> None:
        pass


def run_demo(key: str, workdir: Path, image_count: int = 8, digits: int = 2, progress=None,
             timer: Callable[..., Any] | None = None) -> DemoResult:
    """``progress(message)`` hears each step; ``timer(label, total=None)`` (e.g.
    ``qverify.client.views.timed_progress``) shows the long ones with elapsed time and ETA."""
    import onnxruntime as ort

    from qverify.simulator import Simulator, load, save
    from qverify.simulator.compiler import PreprocessSpec, compile_model

    spec = zoo.MODELS[key]
    say = progress or (lambda message: None)
    timed = timer or _Untimed
    # Calibration (one onnxruntime run per image) is most of quantize_static's time: counted per image.
    calibration = 8
    with timed(f"quantizing {spec.filename} (QDQ, uint8 activations, per-channel int8 weights) on real images",
               total=calibration) as bar:
        quant = zoo.quantize(key, workdir, "QDQ", "QUInt8", per_channel=True, calibration_count=calibration,
                             on_calibration_image=bar.step)
    say(f"compiling {quant.name} with embedded {spec.color} preprocessing")
    program = compile_model(quant, input_shapes={spec.input_name: list(spec.input_shape)},
                            preprocess=PreprocessSpec.parse(spec.preprocess_spec), name=key)
    model_bin = workdir / f"{key}.model.bin"
    digest = save(program, model_bin)
    loaded = load(model_bin)
    sim = Simulator(loaded)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(quant), options, providers=["CPUExecutionProvider"])
    result = DemoResult(key, quant, model_bin, digest, len(loaded.nodes), sum(n.on_cpu for n in loaded.nodes))
    images = zoo.model_images(key, image_count)
    say(f"running {len(images)} real images on the simulator and on onnxruntime")
    with timed("simulator and onnxruntime", total=len(images)) as bar:
        for index, image in enumerate(images):
            _run_image(result, index, image, sim, session, loaded, digits)
            bar.step()
    return result


def _run_image(result: DemoResult, index: int, image: np.ndarray, sim, session, loaded, digits: int) -> None:
    """One image through the simulator and onnxruntime, compared; appended to ``result``."""
    import time

    from qverify.simulator import dequantize

    spec = zoo.MODELS[result.model]
    out = loaded.outputs[0]
    t0 = time.perf_counter()
    run = sim.run({loaded.inputs[0].name: image})
    t1 = time.perf_counter()
    reference = session.run(None, {spec.input_name: zoo.normalize(result.model, image)})[0]
    t2 = time.perf_counter()
    result.sim_seconds += t1 - t0
    result.ort_seconds += t2 - t1
    board = run.outputs[out.name]
    board = dequantize(board, out.scale, out.zero_point) if out.quantized else board
    cmp = compare(out.name, board, reference, out.scale if out.quantized else None, digits)
    result.images.append(DemoImageResult(index, cmp, int(np.argmax(board)), int(np.argmax(reference))))


def write_images(key: str, workdir: Path, count: int) -> list[Path]:
    """The demo's real images as PNG files (what a user would pass with -i)."""
    from PIL import Image

    folder = workdir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(zoo.model_images(key, count)):
        path = folder / f"{key}_{index}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(np.ascontiguousarray(image[0][..., ::-1])).save(tmp, format="PNG")  # BGR -> RGB file
        tmp.replace(path)
        paths.append(path)
    return paths
