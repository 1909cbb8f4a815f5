"""The last frame of a dumping run: run in a worker thread, its dumps streamed to the client.

The worker hands messages to the RPC thread through a bounded queue, so a slow client
slows the run instead of filling the board's memory. Small dumps travel together in
DumpBatch messages (data inline); a big one gets its own header and chunks. Each queue
item is a list of messages: one handoff per group.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Generator

import numpy as np

from qverify.agent.backends.base import RunCancelled, TensorDump
from qverify.agent.status import Cancelled
from qverify.simulator.executor import dequantize
from qverify.simulator.program import PROTO_DTYPES
from qverify.v1 import board_agent_pb2 as pb

log = logging.getLogger("qverify.agent")

_DONE = object()  # the worker's last queue item: the outcome is ready


class DumpStreamer:
    """One dumping frame: the queue, the batch being filled, the dump counter and cancellation.

    ``stream`` runs ``run_once(sink, should_stop)`` in a worker thread and yields the
    replies as the RPC thread hands them to gRPC; its value is the run's result.
    """

    def __init__(self, model, request: pb.RunRequest, chunk: int, context) -> None:
        self._messages: queue.Queue = queue.Queue(maxsize=8)
        self._cancelled = threading.Event()
        context.add_callback(self._cancelled.set)
        self._context = context
        self._chunk = chunk
        self._isolate = request.isolate
        self._dequantized = request.dump_values == pb.VALUES_DEQUANTIZED
        self._placement = {layer.name: layer.placement for layer in model.description.layers}
        self._batch: list[pb.DumpHeader] = []
        self._batch_bytes = 0
        self._count = 0
        self._outcome: dict = {}

    def stream(self, run_once: Callable, frame_us: list[float],
               layer_us: list[list[float]]) -> Generator[pb.RunReply, None, object]:
        """Yield the frame's dump replies; append its timings to ``frame_us`` and ``layer_us``; return its result."""
        worker = threading.Thread(target=self._work, args=(run_once, frame_us, layer_us), name="qverify-run",
                                  daemon=True)
        worker.start()
        try:
            while True:
                try:
                    message = self._messages.get(timeout=0.1)
                except queue.Empty:
                    if not self._context.is_active():
                        raise Cancelled()
                    continue
                if message is _DONE:
                    break
                yield from message
                self._messages.task_done()  # gRPC asked for the next message: this one went to the transport
        finally:
            if not self._outcome:  # the client left before the worker finished: tell it to stop
                self._cancelled.set()
            worker.join(timeout=5)
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["result"]

    def sink(self, d: TensorDump) -> None:
        """Queue one tensor's dump (called by the backend, in the worker thread)."""
        index = self._count
        self._count += 1
        chunk = self._chunk
        for which, array in (("valid", d.valid), ("aligned", d.aligned)):
            if array is None:
                continue
            if self._dequantized and d.tensor.quantized:
                array = dequantize(array, d.tensor.scale, d.tensor.zero_point)
            data = np.ascontiguousarray(array).tobytes()
            header = pb.DumpHeader(
                index=index, name=d.tensor.name, producer=d.producer, onnx_float_name=d.tensor.onnx_float_name,
                dtype=PROTO_DTYPES[array.dtype], shape=list(d.tensor.shape), aligned_shape=list(d.aligned_shape),
                aligned_strides=list(d.aligned_strides), aligned_layout=d.aligned_layout,
                scale=d.tensor.scale, zero_point=d.tensor.zero_point, layout=which, total_bytes=len(data),
                placement=self._placement.get(d.producer, ""), isolated=self._isolate)
            if len(data) <= chunk:
                if self._batch_bytes + len(data) > chunk:
                    self._flush()
                header.data = data
                self._batch.append(header)
                self._batch_bytes += len(data) + 256
                continue
            self._flush()
            view = memoryview(data)
            self._put([pb.RunReply(dump_header=header)] + [
                pb.RunReply(dump_chunk=pb.DumpChunk(index=index, offset=offset, data=bytes(view[offset:offset + chunk])))
                for offset in range(0, len(data), chunk)])
        if self._isolate:
            # Layer by layer, each handed to the transport before the next layer runs: a board
            # that dies in a layer has delivered every layer before it, which names it.
            self._flush()
            self._delivered()

    def _put(self, message) -> None:
        while True:
            if self._cancelled.is_set():
                raise Cancelled()
            try:
                self._messages.put(message, timeout=0.1)
                return
            except queue.Full:
                continue

    def _flush(self) -> None:
        if self._batch:
            self._put([pb.RunReply(dump_batch=pb.DumpBatch(dumps=list(self._batch)))])
            self._batch.clear()
            self._batch_bytes = 0

    def _delivered(self) -> None:
        """Wait until the RPC thread has handed every queued message to gRPC."""
        while self._messages.unfinished_tasks:
            if self._cancelled.is_set():
                raise Cancelled()
            with self._messages.all_tasks_done:
                self._messages.all_tasks_done.wait(0.1)

    def _work(self, run_once: Callable, frame_us: list[float], layer_us: list[list[float]]) -> None:
        try:
            t0 = time.perf_counter()
            result = run_once(self.sink, lambda: self._cancelled.is_set() or not self._context.is_active())
            self._flush()
            frame_us.append((time.perf_counter() - t0) * 1e6)
            layer_us.append([layer.seconds * 1e6 for layer in result.layers])
            self._outcome["result"] = result
        except BaseException as exc:  # handed to the RPC thread, which maps it
            if isinstance(exc, RunCancelled):
                log.info("%s", exc)
            self._outcome["error"] = exc
        finally:
            try:
                self._put(_DONE)
            except Cancelled:
                pass
