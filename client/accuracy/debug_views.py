"""Terminal output of ``qverify debug``: the sensitivity table, the curve's summary and the
suggestion, and the measured ``--apply`` result."""
from __future__ import annotations

from pathlib import Path

from qverify.client.accuracy.curve import Curve, Suggestion
from qverify.client.accuracy.debug_apply import ApplyResult
from qverify.client.accuracy.sensitivity import KINDS, SensitivityResult
from qverify.client.exec_common import out
from qverify.client.term_tables import rows_table
from qverify.client.views import safe_text


def _v(value: float | None) -> str:
    return "-" if value is None else f"{value:.5g}"


def _gain(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2g}"


def print_sensitivity(result: SensitivityResult, top: int) -> None:
    """The top ``top`` nodes by node sensitivity, with their weight-only and activation-only figures."""
    m = result.metric
    title = f"most sensitive nodes ({m} of the output vs the float model; all quantized: {result.baseline[m]:.6g})"
    # Each kind's value with its improvement over all-quantized (the gain).
    heads = ("rank", "node", "op", "node float", "gain", "weights float", "gain", "acts float", "gain")
    rows = [[str(rank), n.name, n.op, *[text for k in KINDS for text in (_v(n.values[k]), _gain(n.gains[k]))]]
            for rank, n in enumerate(result.ranking("node")[:top], start=1)]

    def stack(i: int) -> list[str]:
        r = rows[i]
        return [f"{r[0]}. {r[1]} ({r[2]})",
                " · ".join(f"{label} {value} ({gain})" for label, value, gain in
                           (("node", r[3], r[4]), ("weights", r[5], r[6]), ("acts", r[7], r[8])))]

    rows_table(out, title, heads, rows, names=(1,), stack=stack, right=(0, 3, 4, 5, 6, 7, 8))
    for kind in ("weight", "activation"):
        ranked = result.ranking(kind)[:3]
        if ranked:
            out.print(f"most sensitive to {kind} quantization: "
                      + ", ".join(f"{safe_text(n.name)} ({_gain(n.gains[kind])})" for n in ranked), soft_wrap=True)
    out.print(f"{len(result.nodes)} quantized nodes, {result.runs} variants run in {result.seconds:.1f} s; "
              f"inputs: {result.inputs}", soft_wrap=True)
    if result.inputs.startswith("seeded random"):
        out.print("random inputs rank by range, not by what the model sees: give real inputs (-i) for a "
                  "meaningful ranking", soft_wrap=True)


def print_curve(result: SensitivityResult, curves: list[Curve], suggestion: Suggestion, quant_path: Path,
                float_path: Path | None = None) -> None:
    """Each curve's k = 0, the first k reaching the target and k = N; then the suggestion."""
    print_sensitivity(result, 5)
    for c in curves:
        cos = [p["cosine"] for p in c.points]
        first = next((k for k, v in enumerate(cos) if v >= suggestion.target), None)
        reach = f"reaches {suggestion.target:g} at k = {first}" if first is not None else \
            f"never reaches {suggestion.target:g} (best {max(cos):.6f})"
        out.print(f"{c.kind} curve: cosine {cos[0]:.6f} at k = 0, {cos[-1]:.6f} at k = {len(cos) - 1}; {reach}",
                  soft_wrap=True)
    if suggestion.k == 0 and suggestion.reached:
        out.print(f"quant.onnx already reaches cosine {suggestion.target:g} ({suggestion.cosine:.6f}): "
                  "no node needs to stay in float", soft_wrap=True)
        return
    if suggestion.reached:
        out.print(f"keep {suggestion.k} node{'s' if suggestion.k != 1 else ''} in float to reach cosine "
                  f"{suggestion.target:g} ({suggestion.cosine:.6f}):", soft_wrap=True)
    else:
        out.print(f"cosine {suggestion.target:g} is not reachable; the best is k = {suggestion.k} "
                  f"(cosine {suggestion.cosine:.6f}):", soft_wrap=True)
    out.print(safe_text(suggestion.command(quant_path, float_path), None), soft_wrap=True, markup=False)


def print_apply(applied: ApplyResult) -> None:
    before, after = applied.before["cosine"], applied.after["cosine"]
    out.print(f"measured on {safe_text(applied.where, None)} ({applied.frames} input set"
              f"{'s' if applied.frames != 1 else ''}): float vs board cosine {before:.6f} as compiled, "
              f"{after:.6f} with {len(applied.nodes)} node{'s' if len(applied.nodes) != 1 else ''} on the CPU "
              f"({after - before:+.6f})", soft_wrap=True)
