"""Offline compare of two dump folders (``qverify run -r -o DIR`` or ``qverify dump -o DIR``).

Tensors pair by name, with the verdict machinery of verify (:mod:`qverify.client.verdict`):

* the same tensor name on both sides (a board's program tensors are quant.onnx's tensors:
  ``X_QuantizeLinear_Output``);
* a float model's dump against a quantized one pairs through the float names: the quantized
  side's ``onnx_float_name`` (``X`` of ``X_QuantizeLinear_Output`` and
  ``X_DequantizeLinear_Output``) is the float tensor's name; its codes are preferred, then its
  dequantized values;
* what is left of the model outputs pairs by position, as verify pairs outputs.

int8/uint8 codes are read with the manifest's scale and zero point (uint8 codes become the
board's int8 by shifting them by 128), so each pair has an integer view. Several input sets
are compared set by set: one pair per set.

Judging: two board folders must be bit-exact; a board or quant.onnx folder against quant.onnx
is held to verify's tolerance rules; a float model's folder against a quantized one to
cosines only (outputs ``>= min_float_cosine``, layers ``>= min_layer_cosine``), as the float
reference of verify.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qverify.client.errors import EXIT_BAD_INPUT, Failure
from qverify.client.results import (
    FAILED, PASSED, InputInfo, PairResult, SideInfo, TensorResult, Tolerances, VerifyResult,
)
from qverify.client.sides import Observed
from qverify.client.verdict import judge_bit_exact, judge_tolerance, measure

DEFAULT_MIN_FLOAT_COSINE = 0.98


class DumpFolderError(Failure):
    """A folder is not a dump folder, or a file it lists is missing or unreadable (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_BAD_INPUT)


@dataclass
class DumpEntry:
    """One file of a dump folder, as its manifest describes it."""
    tensor: str
    file: str
    input_set: int
    index: int
    producer: str
    op: str
    float_name: str
    dtype: str
    shape: list[int]
    scale: float
    zero_point: int
    output: bool
    raw: dict[str, Any]

    @property
    def codes(self) -> bool:
        """Integer codes with a quantization: the integer view applies."""
        return bool(self.scale) and np.dtype(self.dtype).kind in "iu"

    @property
    def key(self) -> str:
        return self.float_name or self.tensor


@dataclass
class DumpFolder:
    """A dump folder: its manifest and entries (valid layout only), by input set."""
    path: Path
    manifest: dict[str, Any]
    entries: list[DumpEntry] = field(default_factory=list)
    label: str = ""
    _ops: dict[str, str] | None = None  # board folders: node -> op, from the run's timing

    @property
    def source(self) -> str:
        """"board" (qverify run) or "onnx" (qverify dump)."""
        return self.manifest.get("source") or ("board" if "board" in self.manifest else "onnx")

    @property
    def is_float(self) -> bool:
        """A float model's dump: no tensor holds quantized codes or values."""
        return not any(e.scale for e in self.entries)

    @property
    def sets(self) -> list[int]:
        return sorted({e.input_set for e in self.entries})

    def op_of(self, entry: DumpEntry) -> str:
        """The entry's op: its own (ONNX dumps), else the board's timing names the producer's op."""
        if entry.op:
            return entry.op
        if self._ops is None:
            self._ops = {str(layer.get("node")): str(layer.get("op") or "")
                         for s in self.manifest.get("input_sets", [])
                         for layer in (s.get("timing") or {}).get("layers", [])}
        return self._ops.get(entry.producer, "")

    def of_set(self, number: int) -> list[DumpEntry]:
        return [e for e in self.entries if e.input_set == number]

    def load(self, entry: DumpEntry) -> np.ndarray:
        """The array of ``entry``, whatever format the folder uses (a bad file is a DumpFolderError)."""
        path = self.path / entry.file
        fmt = entry.raw.get("format") or self.manifest.get("format", "npy")
        fmt = Path(entry.file).suffix.lstrip(".") or fmt
        try:
            if fmt == "npy":
                array = np.load(path, allow_pickle=False)
            elif fmt == "bin":
                array = np.fromfile(path, dtype=np.dtype(entry.dtype).newbyteorder("<")).reshape(entry.shape)
            else:
                array = _load_txt(path, entry)
        except (OSError, ValueError, EOFError) as exc:
            raise DumpFolderError(f"{path}: cannot read it ({str(exc).splitlines()[0][:200]}); dump the folder "
                                  "again") from None
        if list(array.shape) != list(entry.shape) or str(array.dtype) != np.dtype(entry.dtype).name:
            raise DumpFolderError(f"{path}: holds {array.dtype}{list(array.shape)} but manifest.json says "
                                  f"{entry.dtype}{list(entry.shape)}; the file was changed: dump the folder again")
        return array

    def observed(self, entry: DumpEntry) -> Observed:
        """The entry as the verdict machinery reads it: int8 codes with their quantization, or float values."""
        array = self.load(entry)
        if entry.codes:
            if array.dtype == np.uint8:  # quant.onnx's uint8 codes as the board's int8: both shift by 128
                return Observed(None, (array ^ np.uint8(0x80)).view(np.int8), scale=entry.scale,
                                zero_point=entry.zero_point - 128)
            if array.dtype == np.int8:
                return Observed(None, array, scale=entry.scale, zero_point=entry.zero_point)
            return Observed((array.astype(np.float64) - entry.zero_point) * entry.scale)
        return Observed(array.astype(np.float64))


def _load_txt(path: Path, entry: DumpEntry) -> np.ndarray:
    """A txt dump: one value per line, or (``txt_axis``) one line per index along that axis."""
    values = np.loadtxt(path, dtype=np.dtype(entry.dtype), ndmin=1)
    axis = entry.raw.get("txt_axis")
    if axis is None or not entry.shape:
        return values.reshape(entry.shape)
    moved = [entry.shape[axis]] + [d for k, d in enumerate(entry.shape) if k != axis]
    return np.moveaxis(values.reshape(moved), 0, axis)


def read_folder(path: Path, label: str = "") -> DumpFolder:
    """A dump folder from its manifest.json (DumpFolderError naming the folder and what to do)."""
    path = Path(path)
    if not path.is_dir():
        raise DumpFolderError(f"{path}: not a folder; give a folder written by qverify run -o or qverify dump -o "
                              "(or a bundle .tar.gz alone)")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise DumpFolderError(f"{path}: no manifest.json; give a folder written by qverify run -r -o DIR or "
                              "qverify dump -o DIR")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DumpFolderError(f"{manifest_path}: not a qverify dump manifest ({exc}); write the folder again with "
                              "qverify run -o or qverify dump -o") from None
    folder = DumpFolder(path, manifest, label=label or path.name)
    try:
        for f in files:
            if f.get("layout", "valid") != "valid":
                continue  # aligned buffers hold padding: the valid tensor is what both sides share
            folder.entries.append(DumpEntry(
                tensor=str(f["tensor"]), file=str(f["file"]), input_set=int(f.get("input_set", 0)),
                index=int(f.get("index", 0)), producer=str(f.get("producer") or ""), op=str(f.get("op") or ""),
                float_name=str(f.get("onnx_float_name") or ""), dtype=str(f["dtype"]),
                shape=[int(d) for d in f["shape"]], scale=float(f.get("scale") or 0.0),
                zero_point=int(f.get("zero_point") or 0), output=bool(f.get("output")), raw=f))
            if ".." in Path(f["file"]).parts or Path(f["file"]).is_absolute():
                raise DumpFolderError(f"{manifest_path}: file {f['file']} lies outside the folder; refusing it")
    except (KeyError, TypeError, ValueError) as exc:
        raise DumpFolderError(f"{manifest_path}: a file entry lacks {exc}; write the folder again") from None
    missing = next((e.file for e in folder.entries if not (path / e.file).is_file()), None)
    if missing is not None:
        raise DumpFolderError(f"{path}: {missing} is missing, though manifest.json lists it; copy the whole folder "
                              "or dump it again")
    if not folder.entries and files:
        raise DumpFolderError(f"{path}: holds only aligned dumps; dump with --dump-layout valid or both")
    return folder


def _rank(e: DumpEntry) -> tuple[int, int]:
    """Which of a quantized side's tensors stands for a float tensor: codes, then dequantized values."""
    return (0 if e.codes else 1 if e.scale else 2, e.index)


def pair_entries(a: list[DumpEntry], b: list[DumpEntry], a_float: bool, b_float: bool,
                 outputs_a: list[str], outputs_b: list[str]) -> list[tuple[DumpEntry, DumpEntry]]:
    """The tensors of one input set that ``a`` and ``b`` share (see the module docstring)."""
    pairs: list[tuple[DumpEntry, DumpEntry]] = []
    used_a: set[str] = set()
    used_b: set[str] = set()

    def add(x: DumpEntry, y: DumpEntry) -> None:
        pairs.append((x, y))
        used_a.add(x.tensor)
        used_b.add(y.tensor)

    if a_float != b_float:  # a float model against a quantized side: through the float names
        floats, quants = (a, b) if a_float else (b, a)
        for f in floats:
            candidates = [q for q in quants if q.key == f.tensor or q.tensor == f.tensor]
            if candidates:
                q = min(candidates, key=_rank)
                add(*((f, q) if a_float else (q, f)))
    else:
        by_b = {e.tensor: e for e in b}
        for e in a:
            if e.tensor in by_b:
                add(e, by_b[e.tensor])
        rest_b: dict[str, list[DumpEntry]] = {}
        for e in b:
            if e.tensor not in used_b:
                rest_b.setdefault(e.key, []).append(e)
        for e in a:
            group = rest_b.get(e.key, [])
            if e.tensor not in used_a and len(group) == 1 and group[0].tensor not in used_b:
                add(e, group[0])
    # Outputs left over pair by position, as verify pairs the model outputs.
    out_a = {e.tensor: e for e in a if e.output}
    out_b = {e.tensor: e for e in b if e.output}
    for name_a, name_b in zip(outputs_a, outputs_b):
        x, y = out_a.get(name_a), out_b.get(name_b)
        if x is not None and y is not None and x.tensor not in used_a and y.tensor not in used_b:
            add(x, y)
    return sorted(pairs, key=lambda p: (p[0].index, p[1].index))


def judge_float(t: TensorResult, tol: Tolerances, is_output: bool, min_float_cosine: float) -> tuple[bool, str]:
    """A float model against a quantized side: the quantization loss, judged by cosine only."""
    need = min_float_cosine if is_output else tol.min_layer_cosine
    if t.cosine >= need:
        return True, f"cosine {t.cosine:.6f} >= {need}"
    return False, f"cosine {t.cosine:.6f} < {need} (max |diff| {t.max_abs_diff:.4g})"


@dataclass
class Compared:
    """What ``qverify compare`` found: the result (pairs by input set) and the two folders."""
    result: VerifyResult
    a: DumpFolder
    b: DumpFolder
    criterion: str
    common: int  # tensors paired in the first input set


def criterion_of(a: DumpFolder, b: DumpFolder) -> str:
    """"bit-exact" for two integer sides (boards), "float" when one is a float model, else "tolerance"."""
    if a.is_float != b.is_float:
        return "float"
    if a.source == "board" and b.source == "board":
        return "bit-exact"
    return "tolerance"


def _side(folder: DumpFolder) -> SideInfo:
    m = folder.manifest
    kind = "board" if folder.source == "board" else ("float" if folder.is_float else "onnx")
    detail = {"folder": str(folder.path), "files": len(folder.entries)}
    if isinstance(m.get("board"), dict):
        detail.update({k: v for k, v in m["board"].items() if v is not None})
    for key in ("onnxruntime", "ort_opt", "target", "program"):
        if m.get(key):
            detail[key] = m[key]
    return SideInfo(label=folder.label, kind=kind, path=str(m.get("model", "")), sha256=str(m.get("model_sha256", "")),
                    detail=detail)


def compare_folders(a: DumpFolder, b: DumpFolder, tolerances: Tolerances | None = None,
                    min_float_cosine: float = DEFAULT_MIN_FLOAT_COSINE) -> Compared:
    """Compare ``a`` and ``b`` set by set; a DumpFolderError when they share no tensor or no input set."""
    tol = tolerances or Tolerances()
    criterion = criterion_of(a, b)
    sets_a, sets_b = a.sets, b.sets
    if len(sets_a) != len(sets_b):
        raise DumpFolderError(f"{a.path} holds {len(sets_a)} input set(s) and {b.path} {len(sets_b)}; dump both "
                              "with the same -i files")
    result = VerifyResult(tolerances=tol, frames=len(sets_a), dump_all=True)
    result.sides = [_side(a), _side(b)]
    result.inputs = _inputs(a)
    common = 0
    for set_a, set_b in zip(sets_a, sets_b):
        pairs = pair_entries(a.of_set(set_a), b.of_set(set_b), a.is_float, b.is_float,
                             list(a.manifest.get("outputs", [])), list(b.manifest.get("outputs", [])))
        if not pairs:
            names_a = ", ".join(e.tensor for e in a.of_set(set_a)[:2])
            names_b = ", ".join(e.tensor for e in b.of_set(set_b)[:2])
            raise DumpFolderError(f"{a.path} and {b.path} have no tensor in common (e.g. {names_a} vs {names_b}); "
                                  "dump the same model, or quant.onnx and the model.bin compiled from it")
        common = common or len(pairs)
        suffix = f" [input set {set_a}]" if len(sets_a) > 1 else ""
        result.pairs.append(_compare_set(a, b, pairs, criterion, tol, min_float_cosine, suffix))
    if criterion == "float":
        result.notes.append(f"a float model's dump against a quantized one: judged by cosine (outputs >= "
                            f"{min_float_cosine}, layers >= {tol.min_layer_cosine}), the quantization loss")
    return Compared(result, a, b, criterion, common)


def _compare_set(a: DumpFolder, b: DumpFolder, pairs: list[tuple[DumpEntry, DumpEntry]], criterion: str,
                 tol: Tolerances, min_float_cosine: float, suffix: str) -> PairResult:
    pair = PairResult(a.label + suffix, b.label + suffix, "bit-exact" if criterion == "bit-exact" else "tolerance",
                      digits=tol.digits)
    results: list[TensorResult] = []
    for x, y in pairs:
        ox, oy = a.observed(x), b.observed(y)
        scale = x.scale or y.scale or None
        is_output = x.output or y.output
        name = x.tensor if x.tensor == y.tensor else f"{x.tensor} ~ {y.tensor}"
        kind = "output" if is_output else ("input" if not (x.producer or y.producer) else "layer")
        try:
            figures = measure(name, ox, oy, scale, tol.digits)
            bad_shape = ""
        except ValueError:
            n = max(int(np.prod(x.shape)), int(np.prod(y.shape)))
            figures = dict(elements=n, max_abs_diff=float("inf"), within_digits=0, exact=0, off_by_one=0,
                           beyond_one=n, max_lsb=0, cosine=0.0)
            bad_shape = f"shapes differ: {x.shape} vs {y.shape}"
        t = TensorResult(name=name, kind=kind, index=x.index, producer=x.producer or y.producer,
                         op=a.op_of(x) or b.op_of(y),
                         placement=str(x.raw.get("placement") or ""), shape=list(x.shape), scale=scale, passed=True,
                         reason="", **figures)
        if bad_shape:
            t.passed, t.reason = False, bad_shape
        elif criterion == "float":
            t.passed, t.reason = judge_float(t, tol, is_output, min_float_cosine)
        elif criterion == "bit-exact":
            t.passed, t.reason = judge_bit_exact(t, tol, is_output)
        else:
            t.passed, t.reason = judge_tolerance(t, tol, is_output)
            if is_output and not t.passed:
                judged = _through_table(a, b, x, y, ox, oy, pairs, tol)
                if judged is not None:
                    t.passed, t.reason = judged
        results.append(t)
    ordered = sorted(results, key=lambda t: t.index)
    pair.outputs = [t for t in ordered if t.kind == "output"]
    pair.layers = [t for t in ordered if t.kind != "output"]
    failing = [t for t in ordered if not t.passed]
    pair.first_divergent = failing[0] if failing else None
    pair.status = FAILED if failing else PASSED
    n = len(pair.outputs)
    counts = f"{n} output{'s' if n != 1 else ''}, {len(pair.layers)} layers"
    if criterion == "float":
        worst = min((t.cosine for t in pair.outputs), default=float("nan"))
        pair.message = (f"{counts}, quantization loss: worst output cosine {worst:.6f} "
                        f"({'>=' if worst >= min_float_cosine else '<'} {min_float_cosine})")
    elif not pair.outputs:
        pair.message = f"{len(ordered)} tensors in common, no model output among them" + (
            f", {len(failing)} disagree" if failing else "")
    return pair


def _through_table(a: DumpFolder, b: DumpFolder, x: DumpEntry, y: DumpEntry, ox: Observed, oy: Observed,
                   pairs: list[tuple[DumpEntry, DumpEntry]], tol: Tolerances) -> tuple[bool, str] | None:
    """An output a lookup table writes (a board's manifest records the table) is judged through the
    table, as verify judges it: each element must be what the table gives for an input within the
    allowed drift. None when no table is recorded or its input was not dumped on both sides."""
    from types import SimpleNamespace

    from qverify.client.verdict import as_codes, judge_through_table

    lut = (a.manifest.get("lookup_tables") or {}).get(x.tensor) or (b.manifest.get("lookup_tables") or {}).get(y.tensor)
    if not lut:
        return None
    source = next(((p, q) for p, q in pairs if lut["input"] in (p.tensor, q.tensor)), None)
    if source is None or not x.scale or not source[0].scale:
        return None
    out_q = SimpleNamespace(scale=x.scale, zero_point=_int8_zero_point(x))
    in_q = SimpleNamespace(scale=source[0].scale, zero_point=_int8_zero_point(source[0]))
    return judge_through_table(as_codes(ox, out_q), as_codes(oy, out_q), as_codes(a.observed(source[0]), in_q),
                               as_codes(b.observed(source[1]), in_q), np.asarray(lut["table"], dtype=np.int8), tol)


def _int8_zero_point(e: DumpEntry) -> int:
    """The zero point of the int8 codes the comparison reads (uint8 codes are shifted by 128)."""
    return e.zero_point - 128 if np.dtype(e.dtype) == np.uint8 else e.zero_point


def _inputs(folder: DumpFolder) -> list[InputInfo]:
    infos = []
    for s in folder.manifest.get("input_sets", []):
        for i in s.get("inputs", []):
            infos.append(InputInfo(name=str(i.get("name", "")), onnx_name=str(i.get("name", "")),
                                   source=str(i.get("source", "")), board_shape=list(i.get("shape", [])),
                                   board_dtype=str(i.get("dtype", "")), onnx_shape=list(i.get("shape", [])),
                                   frame=int(s.get("index", 0))))
    return infos
