"""The strict reader of a Run reply stream: a board's bytes checked before they are decoded.

    outcome = read_run_stream(stub.Run(request), source="board 10.0.0.2:7060")

:class:`RunStreamReader` is the one reader of that stream (the client's ``run`` feeds it
message by message, so what arrived before a broken stream can be reported); anything
that breaks the protocol is a :class:`~qverify.client.agent_errors.ProtocolViolation`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from qverify.agent.tensors import from_wire
from qverify.client.agent_errors import ProtocolViolation
from qverify.v1 import board_agent_pb2 as pb

__all__ = ["DumpedTensor", "RunOutcome", "RunStreamReader", "read_run_stream"]


@dataclass
class DumpedTensor:
    header: pb.DumpHeader
    array: np.ndarray


@dataclass
class RunOutcome:
    outputs: dict[str, np.ndarray]
    dumps: dict[tuple[str, str], DumpedTensor] = field(default_factory=dict)  # (name, "valid"|"aligned")
    timing: pb.Timing | None = None
    headers: list[pb.DumpHeader] = field(default_factory=list)  # in stream order
    messages: int = 0  # RunReply messages read


_LAYOUTS = ("valid", "aligned")


class RunStreamReader:
    """The one reader of a Run reply stream: strict, checking before decoding.

    A board's bytes are not trusted: a header whose dtype, shape and byte count disagree,
    a chunk at the wrong offset or past the end, a dump sent twice, a message after the
    timing or a stream without timing is a :class:`ProtocolViolation` naming the dump and
    what is wrong. Shapes are multiplied in Python integers (no overflow), and nothing is
    allocated from a declared size: buffers grow only with bytes that arrived.

    Stream grammar: batches of small dumps (each header carries its data), or a header
    followed by its chunks in order for a big one; outputs; the timing last.
    """

    def __init__(self, source: str = "the board") -> None:
        self.source = source
        self.outcome = RunOutcome(outputs={})
        self._current: pb.DumpHeader | None = None  # a big dump whose chunks are arriving
        self._current_form: tuple[np.dtype, tuple[int, ...]] = (np.dtype(np.int8), ())
        self._buffer = bytearray()
        self._done: list[tuple[int, str, str]] = []  # (index, layout, name) of complete dumps

    # ---- what arrived so far (for a stream that broke)
    @property
    def received(self) -> list[str]:
        """Names of the dumps fully received, in dump order."""
        return [name for _, _, name in sorted(self._done)]

    @property
    def outputs_received(self) -> list[str]:
        return list(self.outcome.outputs)

    def _fail(self, what: str) -> ProtocolViolation:
        return ProtocolViolation(f"{self.source} sent a malformed Run reply: {what}; the board's qverify-agent is "
                                 "broken or does not match this qverify: reinstall the same qverify version on the "
                                 "board and restart qverify-agent")

    @staticmethod
    def _label(header: pb.DumpHeader) -> str:
        return f"dump {header.index} '{header.name}' ({header.layout or 'no layout'})"

    def _check_header(self, header: pb.DumpHeader) -> tuple[np.dtype, tuple[int, ...]]:
        """dtype, and shape of the buffer this header announces, once they agree with total_bytes."""
        from qverify.simulator.program import DTYPES

        label = self._label(header)
        if header.layout not in _LAYOUTS:
            raise self._fail(f"{label}: layout must be valid or aligned")
        dtype = DTYPES.get(header.dtype)
        if dtype is None:
            raise self._fail(f"{label}: unknown dtype code {header.dtype}")
        dims = [int(d) for d in (header.shape if header.layout == "valid" else header.aligned_shape)]
        if any(d < 0 for d in dims):
            raise self._fail(f"{label}: negative dimension in shape {_dims_text(dims)}")
        count = 1
        for d in dims:
            count *= d
        need = count * dtype.itemsize
        if int(header.total_bytes) != need:
            raise self._fail(f"{label}: shape {_dims_text(dims)} of {dtype} needs {need} bytes, the header declares "
                             f"{header.total_bytes}")
        if (header.name, header.layout) in self.outcome.dumps:
            raise self._fail(f"{label}: sent twice")
        return dtype, tuple(dims)

    def _store(self, header: pb.DumpHeader, data: bytearray, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if len(data) != header.total_bytes:
            raise self._fail(f"{self._label(header)}: got {len(data)} of {header.total_bytes} bytes")
        # Little-endian on the wire; the bytearray becomes the array's (writable) memory.
        array = np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
        self.outcome.dumps[(header.name, header.layout)] = DumpedTensor(header, array)
        self._done.append((header.index, header.layout, header.name))

    def _close_current(self) -> None:
        if self._current is not None:
            header, self._current = self._current, None
            data, self._buffer = self._buffer, bytearray()
            self._store(header, data, *self._current_form)

    def _inline(self, header: pb.DumpHeader) -> None:
        dtype, shape = self._check_header(header)
        if len(header.data) != header.total_bytes:
            raise self._fail(f"{self._label(header)}: {len(header.data)} inline bytes, the header declares "
                             f"{header.total_bytes}")
        self.outcome.headers.append(header)
        self._store(header, bytearray(header.data), dtype, shape)

    def feed(self, reply: pb.RunReply) -> None:
        """Take one message of the stream; raises ProtocolViolation when it breaks the protocol."""
        self.outcome.messages += 1
        if self.outcome.timing is not None:
            raise self._fail("a message came after the timing, which must be last")
        kind = reply.WhichOneof("item")
        if kind == "dump_chunk":
            chunk = reply.dump_chunk
            current = self._current
            if current is None or chunk.index != current.index:
                raise self._fail(f"a chunk of dump {chunk.index} outside its header")
            if chunk.offset != len(self._buffer):
                raise self._fail(f"{self._label(current)}: chunk at offset {chunk.offset}, expected "
                                 f"{len(self._buffer)}")
            if len(self._buffer) + len(chunk.data) > current.total_bytes:
                raise self._fail(f"{self._label(current)}: chunks hold more than the {current.total_bytes} bytes "
                                 "the header declares")
            self._buffer += chunk.data
            return
        self._close_current()
        if kind == "dump_batch":
            for header in reply.dump_batch.dumps:
                self._inline(header)
        elif kind == "dump_header":
            header = reply.dump_header
            if header.data:  # a single dump with its data inline
                self._inline(header)
                return
            self._current_form = self._check_header(header)  # before any chunk is accepted
            self.outcome.headers.append(header)
            self._current = header
        elif kind == "output":
            tensor = reply.output
            if tensor.name in self.outcome.outputs:
                raise self._fail(f"output '{tensor.name}' sent twice")
            try:
                self.outcome.outputs[tensor.name] = from_wire(tensor)
            except ValueError as exc:  # from_wire checks dtype, dims and byte count before decoding
                raise self._fail(f"output {str(exc).removeprefix('input ')}") from None
        elif kind == "timing":
            self.outcome.timing = reply.timing
        else:
            raise self._fail(f"an empty RunReply (item {kind!r})")

    def finish(self) -> RunOutcome:
        """The outcome of a stream that ended normally (it must have ended with the timing)."""
        self._close_current()
        if self.outcome.timing is None:
            raise self._fail("the stream ended without the timing")
        return self.outcome


def read_run_stream(replies: Iterable[pb.RunReply], source: str = "the board") -> RunOutcome:
    """Reassemble a whole Run reply stream with :class:`RunStreamReader` (gRPC errors propagate)."""
    reader = RunStreamReader(source)
    for reply in replies:
        reader.feed(reply)
    return reader.finish()


def _dims_text(dims: list[int]) -> str:
    """A shape for a message: long ones summarised, so a hostile header cannot flood the terminal."""
    if len(dims) <= 8:
        return "[" + ", ".join(map(str, dims)) + "]"
    return "[" + ", ".join(map(str, dims[:3])) + f", ... ({len(dims)} dims)]"
