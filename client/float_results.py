"""What the float model says about a verification: float vs quant.onnx vs board, per layer, and
where the accuracy went (quantization, the compiler/board, or both).

The float comparison never changes the verdict of the pairs: it is a warning or ok of its own
(:attr:`FloatReference.verdict`), read by the terminal, the JSON, JUnit and HTML reports.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OK, WARNING = "ok", "warning"
NO_LOSS, QUANT_LOSS, BOARD_LOSS, BOTH_LOSSES = "none", "quantization loss", "compiler/board loss", "both"
# Per layer: which step lost the accuracy ("" where none did).
LAYER_TRIAGE = {(False, False): "", (True, False): "quant", (False, True): "board", (True, True): "both"}


@dataclass
class FloatLayer:
    """One tensor seen by the float model, quant.onnx and the integer side (worst frame)."""
    name: str  # program tensor name
    float_name: str  # the float model's tensor
    kind: str  # "output" or "layer"
    index: int  # execution order, as TensorResult.index
    producer: str
    op: str
    scale: float | None  # the layer's LSB (integer view); None for float tensors
    quant_cosine: float  # float vs quant.onnx
    quant_lsb: float | None = None  # float vs quant.onnx: largest difference in LSB of the layer's scale
    board_cosine: float | None = None  # float vs the integer side (board, or simulator without a board)
    board_ok: bool | None = None  # the quant.onnx vs integer side verdict of this tensor (None: not compared)
    triage: str = ""  # "", "quant", "board", "both"


@dataclass
class FloatReference:
    """The float model as the golden reference of one verification."""
    float_label: str  # the float model's file name
    quant_label: str  # quant.onnx's file name
    integer_label: str = ""  # "board" or "simulator": the side quant.onnx was verified against
    min_float_cosine: float = 0.98
    output_cosine: float = 1.0  # float vs quant.onnx, worst output and frame
    integer_output_cosine: float | None = None  # float vs the integer side, worst output and frame
    outputs: list[FloatLayer] = field(default_factory=list)
    layers: list[FloatLayer] = field(default_factory=list)  # intermediates, execution order (-r)
    first_below: str = ""  # first tensor (execution order) whose float vs quant.onnx cosine is below the threshold
    first_below_producer: str = ""
    triage: str = NO_LOSS  # NO_LOSS, QUANT_LOSS, BOARD_LOSS, BOTH_LOSSES
    verdict: str = OK  # OK or WARNING; never a failure
    message: str = ""  # when the float model could not run: why

    @property
    def quantization_loss(self) -> bool:
        return self.triage in (QUANT_LOSS, BOTH_LOSSES)

    def verdict_line(self) -> str:
        """``float.onnx vs quant.onnx: output cosine 0.9731 < 0.98: quantization loss (first layer below:
        conv_12): WARNING``"""
        head = f"{self.float_label} vs {self.quant_label}"
        if self.message:
            return f"{head}: {self.message}: {self.verdict.upper()}"
        cos = f"output cosine {self.output_cosine:.4f}"
        board = (f", {self.integer_label} {self.integer_output_cosine:.4f}"
                 if self.integer_output_cosine is not None else "")
        if not self.quantization_loss:
            return f"{head}: {cos} >= {self.min_float_cosine:g}{board}: {self.verdict.upper()}"
        where = (f"first layer below: {self.first_below_producer or self.first_below}" if self.first_below
                 else "-r names the first layer below")
        return f"{head}: {cos} < {self.min_float_cosine:g}{board}: quantization loss ({where}): {self.verdict.upper()}"

    def triage_line(self) -> str:
        """One line naming where the accuracy went."""
        what = {NO_LOSS: "no loss beyond the thresholds (float -> quant.onnx -> "
                         f"{self.integer_label or 'board'})",
                QUANT_LOSS: "quantization loss (float -> quant.onnx); the compiled model computes what quant.onnx "
                            "computes",
                BOARD_LOSS: f"compiler/board loss (quant.onnx -> {self.integer_label or 'board'}); quantization "
                            "kept the float model's answer",
                BOTH_LOSSES: f"both: quantization loss (float -> quant.onnx) and compiler/board loss (quant.onnx "
                             f"-> {self.integer_label or 'board'})"}
        return f"triage: {what.get(self.triage, self.triage)}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict_line"] = self.verdict_line()
        data["triage_line"] = self.triage_line()
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "FloatReference":
        known = {k: v for k, v in data.items() if k in FloatReference.__dataclass_fields__
                 and k not in ("outputs", "layers")}
        fields = FloatLayer.__dataclass_fields__
        layers = {key: [FloatLayer(**{k: v for k, v in t.items() if k in fields}) for t in data.get(key, [])]
                  for key in ("outputs", "layers")}
        if known.get("output_cosine") is None:  # JSON null = a non-finite figure
            known["output_cosine"] = float("nan")
        return FloatReference(**known, **layers)
