"""The float model as the golden reference of a verification (``-m float.onnx,quant.onnx,model.bin``).

onnxruntime runs the float model on the same frames as quant.onnx. Every tensor the program
computes has the float model's name beside its own (``onnx_float_name``: ``X`` of
``X_QuantizeLinear_Output``), so each layer is compared three ways: float vs quant.onnx (the
quantization loss), float vs the board (what the customer gets), and quant.onnx vs the board
(the existing verdict: the compiler/board loss). The result, a
:class:`~qverify.client.float_results.FloatReference`, is a warning or ok of its own: it never
turns a consistent board into a failure.
"""
from __future__ import annotations

import math

from qverify.client.float_results import (
    BOARD_LOSS, BOTH_LOSSES, LAYER_TRIAGE, NO_LOSS, OK, QUANT_LOSS, WARNING, FloatLayer, FloatReference,
)
from qverify.client.results import PairResult
from qverify.client.sides import OnnxSide, SideOutput
from qverify.client.verdict import measure, tensor_order

DEFAULT_MIN_FLOAT_COSINE = 0.98  # AXera pulsar's guidance: below 98 % look closer


class FloatSide(OnnxSide):
    """onnxruntime on the float model, its tensors named as the program's (by ``onnx_float_name``)."""
    kind = "float"


def _worst(old: float | None, new: float | None) -> float | None:
    if old is None:
        return new
    if new is None:
        return old
    return min(old, new) if not (math.isnan(old) or math.isnan(new)) else float("nan")


class FloatComparer:
    """Accumulates float vs quant.onnx vs the integer side over frames; :meth:`finish` triages."""

    def __init__(self, float_label: str, quant_label: str, integer_label: str, program,
                 min_float_cosine: float = DEFAULT_MIN_FLOAT_COSINE, digits: int = 5) -> None:
        self.ref = FloatReference(float_label, quant_label, integer_label, min_float_cosine)
        self.program = program
        self.digits = digits
        self.order = tensor_order(program)
        self.outputs = [t.name for t in program.outputs]
        self._rows: dict[str, FloatLayer] = {}

    def add_frame(self, floats: SideOutput, outputs: dict[str, SideOutput], dump_all: bool) -> None:
        """One frame: ``floats`` from the float side, ``outputs`` the other sides' by label."""
        quant = outputs.get(self.ref.quant_label)
        integer = outputs.get(self.ref.integer_label)
        if quant is None:
            return
        names = list(self.outputs)
        if dump_all:
            names += [n for n in floats.tensors if n in quant.tensors and n not in self.outputs]
        for name in names:
            if name not in floats.tensors or name not in quant.tensors:
                continue
            tensor = self.program.tensors[name]
            scale = tensor.scale if tensor.quantized else None
            f = floats.tensors[name]
            try:
                q = measure(name, f, quant.tensors[name], scale, self.digits)
                b = (measure(name, f, integer.tensors[name], scale, self.digits)
                     if integer is not None and name in integer.tensors else None)
            except ValueError:  # a tensor of another shape in the float model: not comparable
                continue
            index, producer, op, _ = self.order.get(name, (len(self.order), "", "", ""))
            row = self._rows.get(name)
            if row is None:
                row = self._rows[name] = FloatLayer(
                    name=name, float_name=tensor.info.onnx_float_name or name,
                    kind="output" if name in self.outputs else "layer", index=index, producer=producer, op=op,
                    scale=scale, quant_cosine=q["cosine"], quant_lsb=None)
            else:
                row.quant_cosine = _worst(row.quant_cosine, q["cosine"])
            if scale:
                row.quant_lsb = max(row.quant_lsb or 0, q["max_abs_diff"] / scale)
            if b is not None:
                row.board_cosine = _worst(row.board_cosine, b["cosine"])

    def finish(self, pairs: list[PairResult], board_loss: bool) -> FloatReference:
        """Triage with the pairs' verdicts (quant.onnx vs the integer side) and ``board_loss``: whether
        the verification itself failed (the compiler/board loss)."""
        ref = self.ref
        # A layer is lost on the board when quant.onnx vs the board fails it, or when the board first
        # differs there from its bit-exact twin (the layers after it differ as a consequence).
        verdicts: dict[str, bool] = {}
        for pair in pairs:
            if (pair.a, pair.b) == (ref.quant_label, ref.integer_label):
                for t in pair.tensors:
                    verdicts[t.name] = verdicts.get(t.name, True) and t.passed
                for layer in pair.isolation:  # isolation decides a layer when it ran
                    verdicts[layer.tensor] = verdicts.get(layer.tensor, True) and layer.passed
        for pair in pairs:
            if pair.criterion == "bit-exact" and ref.integer_label in (pair.a, pair.b):
                for t in pair.tensors:
                    verdicts.setdefault(t.name, True)
                if pair.first_divergent is not None and not pair.passed:
                    verdicts[pair.first_divergent.name] = False
        rows = sorted(self._rows.values(), key=lambda r: r.index)
        threshold = ref.min_float_cosine
        for row in rows:
            row.board_ok = verdicts.get(row.name)
            low = not row.quant_cosine >= threshold  # NaN counts as low
            row.triage = LAYER_TRIAGE[(low, row.board_ok is False)]
        ref.outputs = [r for r in rows if r.kind == "output"]
        ref.layers = [r for r in rows if r.kind != "output"]
        if not ref.outputs:
            ref.message = "no output of the float model could be compared"
            ref.verdict = WARNING
            return ref
        ref.output_cosine = min((r.quant_cosine for r in ref.outputs), key=lambda c: (not math.isnan(c), c))
        board = [r.board_cosine for r in ref.outputs if r.board_cosine is not None]
        ref.integer_output_cosine = min(board) if board else None
        quant_loss = not ref.output_cosine >= threshold
        if quant_loss:
            first = next((r for r in ref.layers + ref.outputs if r.triage in ("quant", "both")), None)
            if first is not None and (ref.layers or first.kind == "layer"):
                ref.first_below, ref.first_below_producer = first.name, first.producer
        ref.triage = {(False, False): NO_LOSS, (True, False): QUANT_LOSS, (False, True): BOARD_LOSS,
                      (True, True): BOTH_LOSSES}[(quant_loss, board_loss)]
        ref.verdict = WARNING if quant_loss else OK
        return ref


def failed_reference(float_label: str, quant_label: str, integer_label: str, min_float_cosine: float,
                     message: str) -> FloatReference:
    """The float model could not run (its message says why): a warning, never a failure."""
    return FloatReference(float_label, quant_label, integer_label, min_float_cosine, verdict=WARNING,
                          message=message, output_cosine=float("nan"))


class FloatRun:
    """The float side of one verification: runs the float model on each frame (through the
    farm's host cache when there is one), compares it with the other sides, and gives the
    :class:`FloatReference` at the end; a float model that cannot run is a warning."""

    def __init__(self, side: FloatSide, comparer: FloatComparer, dump_all: bool, host_cache=None,
                 cache_key: tuple = ()) -> None:
        self.side, self.comparer, self.dump_all = side, comparer, dump_all
        self.host_cache, self.cache_key = host_cache, cache_key
        self.broken = ""  # why the float model could not run ('' while it runs)

    def add_frame(self, frame, number: int, outputs: dict[str, SideOutput]) -> None:
        from qverify.client.sides import SideError

        if self.broken:
            return
        try:
            if self.host_cache is None:
                floats = self.side.run(frame, self.dump_all)
            else:
                floats = self.host_cache.get((*self.cache_key, number),
                                             lambda: self.side.run(frame, self.dump_all))
        except SideError as exc:
            self.broken = str(exc)
            return
        self.comparer.add_frame(floats, outputs, self.dump_all)

    def finish(self, pairs: list[PairResult], board_loss: bool) -> FloatReference:
        ref = self.comparer.finish(pairs, board_loss)
        if self.broken:
            return failed_reference(ref.float_label, ref.quant_label, ref.integer_label, ref.min_float_cosine,
                                    self.broken)
        return ref


__all__ = ["DEFAULT_MIN_FLOAT_COSINE", "FloatComparer", "FloatRun", "FloatSide", "failed_reference", "OK",
           "WARNING"]
