"""The BoardAgent gRPC servicer: model store calls, streamed runs, perf.

Every foreseeable failure becomes a status code with a sentence (see board_agent.proto);
nothing a client sends can make the agent raise an unhandled exception.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import grpc
import numpy as np

from qverify._version import __version__
from qverify.agent import PROTOCOL_VERSION, store as store_mod
from qverify.agent.backends import Backend
from qverify.agent.backends.base import RunCancelled
from qverify.agent.faults import Fault
from qverify.agent.perf import distribution, random_inputs
from qverify.agent.scheduler import CoreScheduler
from qverify.agent.status import Abort, Cancelled, status_for
from qverify.agent.streaming import DumpStreamer
from qverify.agent.tensors import TensorError, dtype_name, from_wire, to_wire
from qverify.v1 import board_agent_pb2 as pb
from qverify.v1 import board_agent_pb2_grpc, model_pb2

log = logging.getLogger("qverify.agent")

DEFAULT_CHUNK = 1 << 20
MAX_FRAMES = 10_000


@dataclass
class AgentConfig:
    board_id: str = field(default_factory=socket.gethostname)
    max_queue: int = 8
    max_model_bytes: int = 512 << 20
    max_message_bytes: int = 64 << 20
    max_input_bytes: int = 64 << 20
    max_tensor_bytes: int = 256 << 20
    faults: list[Fault] = field(default_factory=list)


class BoardAgentService(board_agent_pb2_grpc.BoardAgentServicer):
    def __init__(self, backend: Backend, model_store: "store_mod.ModelStore", config: AgentConfig,
                 target: model_pb2.Target) -> None:
        self.backend = backend
        self.store = model_store
        self.config = config
        self.target = target
        info = backend.info()
        self.backend_info = info
        self.scheduler = CoreScheduler(info.npu_cores, config.max_queue)
        self.draining = False
        self._active = 0
        self._active_lock = threading.Condition()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight (draining); False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._active_lock:
            while self._active:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._active_lock.wait(min(remaining, 0.1))
        return True

    # ---- info -------------------------------------------------------------------------
    def GetInfo(self, request, context):
        info = self.backend_info
        memory = 0
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            pass
        return pb.AgentInfo(
            agent_version=__version__, protocol_version=PROTOCOL_VERSION, board_id=self.config.board_id,
            hostname=socket.gethostname(), backend=info.name, runtime_version=info.runtime_version,
            driver_version=info.driver_version, firmware_version=info.firmware_version, target=self.target,
            cpu_count=os.cpu_count() or 1, memory_bytes=memory, model_store_path=str(self.store.root),
            model_store_free_bytes=self.store.free_bytes(),
            limits=pb.Limits(max_model_bytes=self.config.max_model_bytes,
                             max_message_bytes=self.config.max_message_bytes,
                             store_capacity_bytes=self.store.capacity_bytes, max_queue=self.config.max_queue,
                             max_input_bytes=self.config.max_input_bytes,
                             max_tensor_bytes=self.config.max_tensor_bytes),
            capabilities=info.capabilities, npu_cores=info.npu_cores,
            faults=[str(f) for f in self.config.faults])

    # ---- model store ------------------------------------------------------------------
    def HasModel(self, request, context):
        with self._errors(context):
            size = self.store.has(request.sha256)
            return pb.HasModelReply(present=size is not None, size_bytes=size or 0)

    def ListModels(self, request, context):
        with self._errors(context):
            models = [pb.StoredModel(sha256=m.sha256, size_bytes=m.size_bytes, last_used_unix_ms=m.last_used_unix_ms,
                                     name=m.name, target=m.target) for m in self.store.list()]
            return pb.ModelList(models=models, used_bytes=self.store.used_bytes(),
                                capacity_bytes=self.store.capacity_bytes)

    def DeleteModel(self, request, context):
        with self._errors(context):
            deleted = self.store.delete(request.sha256)
            if hasattr(self.backend, "forget"):
                self.backend.forget(request.sha256)
            return pb.DeleteModelReply(deleted=deleted)

    def PushModel(self, request_iterator, context):
        with self._errors(context):
            first = next(request_iterator, None)
            if first is None:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "empty push: the first chunk must name sha256 and total_bytes")
            store_mod.validate_id(first.sha256)
            if first.total_bytes <= 0:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "the first push chunk must give total_bytes > 0")
            if self.store.has(first.sha256) is not None:
                for _ in request_iterator:  # drain: the client may already be streaming
                    pass
                return pb.PushModelReply(sha256=first.sha256, size_bytes=self.store.has(first.sha256) or 0,
                                         already_present=True)
            with self.store.begin_push(first.sha256, first.total_bytes) as push:
                push.write(first.data)
                for chunk in request_iterator:
                    if not context.is_active():
                        raise Cancelled()
                    push.write(chunk.data)
                push.commit()
            log.info("stored model %s (%d bytes)", first.sha256, first.total_bytes)
            return pb.PushModelReply(sha256=first.sha256, size_bytes=first.total_bytes)

    # ---- runs -------------------------------------------------------------------------
    def _decode_feeds(self, model, tensors) -> dict[str, np.ndarray]:
        """An isolated run's feeds: program tensors in their logical layout (as valid dumps carry them)."""
        feeds: dict[str, np.ndarray] = {}
        for tensor in tensors:
            want = model.description.tensors.get(tensor.name)
            if want is None:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"feed '{tensor.name}' is not a tensor of the model; see 'qverify info'")
            if tensor.name in feeds:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"feed '{tensor.name}' given twice")
            try:
                array = from_wire(tensor)
            except TensorError as exc:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc}; feed '{tensor.name}' expects "
                            f"{want.dtype}{list(want.shape)}")
            if array.dtype != want.dtype or tuple(array.shape) != want.shape:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"feed '{tensor.name}' expects {want.dtype}{list(want.shape)} (logical layout), got "
                            f"{dtype_name(tensor.dtype)}{list(tensor.shape)}")
            feeds[tensor.name] = array
        return feeds

    def _decode_inputs(self, model, tensors, require_all: bool = True) -> dict[str, np.ndarray]:
        total = sum(len(t.data) for t in tensors)
        if total > self.config.max_input_bytes:
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"inputs are {total} bytes, more than this agent's limit of {self.config.max_input_bytes} "
                        "(--max-input-size)")
        expected = {t.name: t for t in model.description.inputs}
        inputs = {}
        for tensor in tensors:
            if tensor.name in inputs:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input '{tensor.name}' given twice")
            want = expected.get(tensor.name)
            if want is None:
                listing = ", ".join(f"'{n}' {t.dtype}{list(t.feed_shape)}" for n, t in expected.items())
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"unknown input '{tensor.name}'; the model's inputs are: {listing}")
            try:
                array = from_wire(tensor)
            except TensorError as exc:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{exc}; input '{tensor.name}' expects {want.dtype}{list(want.feed_shape)}")
            shape = want.feed_shape
            if array.dtype != want.dtype or tuple(array.shape) != shape:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"input '{tensor.name}' expects {want.dtype}{list(shape)}, got "
                              f"{dtype_name(tensor.dtype)}{list(tensor.shape)}")
            inputs[tensor.name] = array
        missing = [name for name in expected if name not in inputs]
        if missing and require_all:
            want = expected[missing[0]]
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"missing input '{missing[0]}' ({want.dtype}{list(want.feed_shape)})")
        return inputs

    def Run(self, request, context) -> Iterator[pb.RunReply]:
        with self._errors(context):
            frames = request.frames or 1
            if not 1 <= frames <= MAX_FRAMES or request.warmup < 0 or request.warmup > MAX_FRAMES:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"frames must be 1..{MAX_FRAMES} and warmup 0..{MAX_FRAMES}")
            chunk = request.chunk_bytes or DEFAULT_CHUNK
            if not (64 << 10) <= chunk <= (4 << 20):
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "chunk_bytes must be between 64 KiB and 4 MiB")
            # A chunk message carries a few bytes of framing besides its data.
            chunk = min(chunk, self.config.max_message_bytes - 1024)
            store_mod.validate_id(request.model_sha256)
            with self.store.pin(request.model_sha256) as path:
                model = self.backend.load(path, request.model_sha256)
                if request.isolate and "isolate" not in self.backend_info.capabilities:
                    raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"backend '{self.backend_info.name}' cannot run layers in isolation; the client cuts "
                                "the model into pieces instead (update qverify on the host)")
                inputs = self._decode_inputs(model, request.inputs, require_all=not request.isolate)
                dump = self._dump_selection(request, model)
                layout = {pb.LAYOUT_VALID: "valid", pb.LAYOUT_ALIGNED: "aligned", pb.LAYOUT_BOTH: "both"}.get(
                    request.dump_layout, "valid")
                core = request.core if request.HasField("core") else -1
                remaining = context.time_remaining()
                with self.scheduler.acquire(core, timeout=remaining, still_wanted=context.is_active) as (chosen, waited):
                    yield from self._run_frames(model, inputs, request, dump, layout, frames, chunk, chosen, waited,
                                                context)

    def _dump_selection(self, request, model):
        if request.dump == pb.DUMP_ALL:
            return "all"
        if request.dump == pb.DUMP_OUTPUTS:
            return "outputs"
        if request.dump == pb.DUMP_NAMED:
            unknown = [n for n in request.dump_names if n not in model.description.tensors]
            if unknown:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"no tensor named '{unknown[0]}' in the model; see 'qverify info'")
            return list(request.dump_names)
        return None

    def _run_frames(self, model, inputs, request, dump, layout, frames, chunk, core, waited, context):
        # Warm-up and all but the last measured frame run without dumps.
        frame_us: list[float] = []
        layer_us: list[list[float]] = []
        last = None
        if request.isolate:  # one pass over the layers, each group on the fed tensors
            feeds = self._decode_feeds(model, request.feeds)
            groups = [(g.first, g.last) for g in request.groups]

            def run_once(sink, should_stop):
                return model.run_isolated(inputs, feeds, groups, dump=dump, dump_layout=layout, sink=sink, core=core,
                                          should_stop=should_stop)
            frames, dump = 1, dump or []
        else:
            def run_once(sink, should_stop):
                return model.run(inputs, dump=dump, dump_layout=layout, sink=sink, core=core, should_stop=should_stop)
        for index in range(0 if request.isolate else request.warmup + frames):
            if not context.is_active():
                raise Cancelled()
            final = index == request.warmup + frames - 1
            if final and dump is not None:
                break
            t0 = time.perf_counter()
            try:
                result = model.run(inputs, core=core, should_stop=lambda: not context.is_active())
            except RunCancelled as exc:
                log.info("%s", exc)
                raise
            if index >= request.warmup:
                frame_us.append((time.perf_counter() - t0) * 1e6)
                layer_us.append([layer.seconds * 1e6 for layer in result.layers])
            last = result
        if dump is not None:
            last = yield from DumpStreamer(model, request, chunk, context).stream(run_once, frame_us, layer_us)
        for tensor in model.description.outputs:
            if tensor.name in last.outputs:  # an isolated run has the outputs of the layers that ran
                yield pb.RunReply(output=to_wire(tensor.name, last.outputs[tensor.name]))
        layers = []
        for i, layer in enumerate(last.layers):
            layers.append(pb.LayerTiming(node=layer.node, op=layer.op, placement=layer.placement,
                                         frame_us=[frame[i] for frame in layer_us if i < len(frame)],
                                         acc_overflow=layer.acc_overflow, saturated=layer.saturated))
        yield pb.RunReply(timing=pb.Timing(model=distribution(frame_us), layers=layers, queue_wait_us=waited * 1e6,
                                           frame_us=frame_us, core=core))

    # ---- perf -------------------------------------------------------------------------
    def Perf(self, request, context):
        with self._errors(context):
            frames = request.frames or 100
            threads = request.threads or 1
            if not 1 <= frames <= MAX_FRAMES or not 1 <= threads <= self.scheduler.cores:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"frames must be 1..{MAX_FRAMES} and threads 1..{self.scheduler.cores} (NPU cores)")
            store_mod.validate_id(request.model_sha256)
            with self.store.pin(request.model_sha256) as path:
                model = self.backend.load(path, request.model_sha256)
                inputs = (self._decode_inputs(model, request.inputs) if request.inputs
                          else random_inputs(model.description, self.config.max_input_bytes))
                def stop() -> bool:  # asked between layers
                    return not context.is_active()

                for _ in range(max(0, request.warmup)):
                    model.run(inputs, should_stop=stop)
                latencies: list[float] = []
                lock = threading.Lock()
                counter = iter(range(frames))

                def runner() -> None:
                    while context.is_active():
                        with lock:
                            if next(counter, None) is None:
                                return
                        with self.scheduler.acquire(-1, timeout=context.time_remaining(),
                                                    still_wanted=context.is_active) as (core, _):
                            t0 = time.perf_counter()
                            model.run(inputs, core=core, should_stop=stop)
                            elapsed = (time.perf_counter() - t0) * 1e6
                        with lock:
                            latencies.append(elapsed)

                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    for future in [pool.submit(runner) for _ in range(threads)]:
                        try:
                            future.result()
                        except RunCancelled as exc:
                            log.info("%s", exc)
                            raise Cancelled() from None
                wall = time.perf_counter() - started
                if not context.is_active():
                    raise Cancelled()
                return pb.PerfReply(latency=distribution(latencies), fps=len(latencies) / wall if wall else 0.0,
                                    frames=len(latencies), threads=threads, wall_s=wall)

    # ---- error mapping ----------------------------------------------------------------
    class _ErrorScope:
        """Counts the call as in flight and maps exceptions to status codes."""

        def __init__(self, service: "BoardAgentService", context) -> None:
            self.service = service
            self.context = context

        def __enter__(self):
            if self.service.draining:
                self.context.abort(grpc.StatusCode.UNAVAILABLE,
                                   "the agent is shutting down (draining running calls); retry on its restart")
            with self.service._active_lock:
                self.service._active += 1
            return self

        def __exit__(self, kind, exc, tb):
            with self.service._active_lock:
                self.service._active -= 1
                self.service._active_lock.notify_all()
            if exc is None or isinstance(exc, (GeneratorExit, grpc.RpcError)) or kind is None:
                return False
            code, message = status_for(exc)
            if code is None:
                return False
            if code == grpc.StatusCode.INTERNAL:
                log.error("call failed: %s", message, exc_info=(kind, exc, tb))
            self.context.abort(code, message)

    def _errors(self, context) -> "_ErrorScope":
        return self._ErrorScope(self, context)
