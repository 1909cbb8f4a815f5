"""The float reference on the terminal and in HTML: per-layer cosines float vs quant.onnx vs board
(pulsar's cos-sim table, RKNN's "entire" column), the triage column, the float verdict line
and the triage line; with -r, the board's saturation/overflow columns where non-zero."""
from __future__ import annotations

import html
import math

from rich.console import Console
from rich.markup import escape

from qverify.client.float_results import OK, FloatLayer, FloatReference
from qverify.client.report_text import name_html
from qverify.client.term_tables import rows_table

FLAGGED_LINES = 8  # layers the distributions point out, one line each, before "N more"

_TRIAGE_WORDS = {"": "", "quant": "quant", "board": "board", "both": "both"}


def _cos(value: float | None) -> str:
    if value is None:
        return "—"
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _lsb(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def shown_layers(ref: FloatReference, top: int = 8) -> list[FloatLayer]:
    """The outputs, the ``top`` layers farthest from the float model, and the first one below the threshold."""
    worst = sorted(ref.layers, key=lambda r: (r.quant_cosine if not math.isnan(r.quant_cosine) else -2.0))[:top]
    worst += [r for r in ref.layers if (r.name == ref.first_below or r.triage in ("board", "both"))
              and r not in worst]
    return sorted(ref.outputs + worst, key=lambda r: r.index)


def terminal_rows(ref: FloatReference, layers: list[FloatLayer], counts: dict[str, dict[str, str]]) -> tuple:
    """(heads, rows): tensor, op, float~quant, float~board, LSB (float in LSB of the layer's scale),
    triage, and sat/ovf when some layer has non-zero counts."""
    extra = sorted({key for c in counts.values() for key in c})
    heads = ("tensor", "op", "fl~quant", f"fl~{ref.integer_label or 'int'}", "LSB", "triage", *extra)
    rows = [[r.name, r.op or r.kind, _cos(r.quant_cosine), _cos(r.board_cosine), _lsb(r.quant_lsb),
             _TRIAGE_WORDS.get(r.triage, r.triage), *(counts.get(r.name, {}).get(k, "") for k in extra)]
            for r in layers]
    return heads, rows


def print_float_table(console: Console, ref: FloatReference, counts: dict[str, dict[str, str]] | None = None,
                      top: int = 8) -> None:
    """The per-layer float table (outputs, the least agreeing layers, the first below the threshold)."""
    if ref.message or not (ref.outputs or ref.layers):
        return
    layers = shown_layers(ref, top)
    heads, rows = terminal_rows(ref, layers, counts or {})

    def stack(i: int) -> list[str]:
        row = rows[i]
        more = [f"{h} {v}" for h, v in zip(heads[6:], row[6:]) if v]
        return [row[0], " · ".join([f"{row[1]}", f"float~quant {row[2]}", f"float~{ref.integer_label or 'int'} "
                                    f"{row[3]}", f"{row[4]} LSB", *([f"triage {row[5]}"] if row[5] else []), *more])]

    rows_table(console, f"{ref.float_label} vs {ref.quant_label} vs {ref.integer_label or 'integer side'} (cosine)",
               heads, rows, names=(0,), stack=stack,
               styles=["yellow" if r.triage else None for r in layers], right=(2, 3, 4))
    if len(ref.layers) > len(layers) - len(ref.outputs):
        console.print(f"[dim]{len(ref.layers)} layers compared with the float model, the least agreeing shown; "
                      "--html has them all[/dim]")


def print_float_verdict(console: Console, ref: FloatReference, literal) -> None:
    """The float verdict line (a warning, never a failure) and the triage line."""
    style = "green" if ref.verdict == OK else "yellow"
    console.print(f"[{style}]{literal(ref.verdict_line())}[/]", soft_wrap=True)
    if not ref.message:
        console.print(f"[{style}]{escape(literal(ref.triage_line()))}[/]", soft_wrap=True)


# ---------------------------------------------------------------- HTML

_E = html.escape


def html_section(ref: FloatReference) -> str:
    """The float reference section: verdict badge, triage, and every layer's cosines."""
    badge = "PASSED" if ref.verdict == OK else "WARNING"
    parts = [f'<section class="float" id="float-reference"><h2>Float reference: {_E(ref.float_label)} '
             f'<span class="badge {badge}">{_E(ref.verdict.upper())}</span></h2>',
             f'<p class="verdict">{_E(ref.verdict_line())}</p>']
    if not ref.message:
        parts.append(f"<p>{_E(ref.triage_line())}</p>")
    rows = []
    for r in sorted(ref.outputs + ref.layers, key=lambda r: r.index):
        cls = ' class="warn"' if r.triage else ""
        first = " (first below)" if r.name == ref.first_below else ""
        rows.append(f"<tr{cls}><td>{r.index}</td><td>{name_html(r.name)}</td><td>{name_html(r.float_name)}</td>"
                    f"<td>{_E(r.op or r.kind)}</td><td>{_cos(r.quant_cosine)}</td><td>{_cos(r.board_cosine)}</td>"
                    f"<td>{_lsb(r.quant_lsb)}</td><td>{'—' if r.board_ok is None else 'ok' if r.board_ok else 'FAIL'}"
                    f"</td><td>{_E(r.triage + first)}</td></tr>")
    if rows:
        head = ["#", "tensor", "float tensor", "op", f"float vs {ref.quant_label}",
                f"float vs {ref.integer_label or 'integer side'}", "LSB (float in the layer's scale)",
                f"{ref.quant_label} vs {ref.integer_label or 'integer side'}", "triage"]
        parts.append('<div class="scroll"><table><tr>' + "".join(f"<th>{_E(h)}</th>" for h in head) + "</tr>"
                     + "".join(rows) + "</table></div>")
    parts.append("</section>")
    return "\n".join(parts)


# ---------------------------------------------------------------- distributions (-r)

def distribution_columns(dists: list) -> dict[str, dict[str, str]]:
    """tensor -> its non-zero terminal columns such as {"sat": "3.1%"}, from the board's
    per-layer distributions; empty when there are none."""
    if not dists:
        return {}
    from qverify.client.accuracy.distributions import terminal_columns

    return {d.name: cols for d in dists if not isinstance(d, dict) and (cols := terminal_columns(d))}


def print_counts_table(console: Console, counts: dict[str, dict[str, str]]) -> None:
    """The board's saturation/overflow counts per layer, when there is no float table to carry them."""
    keys = sorted({key for c in counts.values() for key in c})
    names = list(counts)
    rows = [[name, *(counts[name].get(k, "") for k in keys)] for name in names]

    def stack(i: int) -> list[str]:
        return [rows[i][0], " · ".join(f"{k} {v}" for k, v in zip(keys, rows[i][1:]) if v)]

    rows_table(console, "board: saturation and accumulator overflow per layer", ("tensor", *keys), rows,
               names=(0,), stack=stack, right=tuple(range(1, len(keys) + 1)))


def print_layer_tables(console: Console, result, top: int, literal) -> None:
    """The float reference's per-layer table (sat/ovf columns from the distributions when non-zero),
    or without one the layers that saturate or overflow (the worst ``top``), then one line per
    layer the distributions point out (at most FLAGGED_LINES; all of them are in --html/--json)."""
    from qverify.client.accuracy.distributions import SATURATION_FLAG

    dists = [d for d in result.distributions if not isinstance(d, dict)]
    counts = distribution_columns(dists)
    if result.float_reference is not None:
        print_float_table(console, result.float_reference, counts, top)
    elif counts:
        worst = sorted((d for d in dists if d.name in counts), key=lambda d: (-d.acc_overflow, -d.saturation_fraction))
        print_counts_table(console, {d.name: counts[d.name] for d in worst[:top]})
        if len(worst) > top:
            console.print(f"… {len(worst) - top} more layers saturate or overflow (all of them are in --html and "
                          "--json)", soft_wrap=True)
    # Saturating and overflowing layers first (they lose values now), then the others in graph order.
    flagged = sorted((d for d in dists if d.flags), key=lambda d: (
        -bool(d.acc_overflow), -(d.saturation_fraction if d.saturation_fraction > SATURATION_FLAG else 0.0)))
    for d in flagged[:FLAGGED_LINES]:  # one line per layer: its pointers joined
        console.print(f"[yellow]{literal(d.kind)} {literal(d.name)}: {literal('; '.join(d.flags))}[/yellow]",
                      soft_wrap=True)
    if len(flagged) > FLAGGED_LINES:
        console.print(f"[yellow]… {len(flagged) - FLAGGED_LINES} more layers pointed out (all of them are in --html "
                      "and --json)[/yellow]", soft_wrap=True)
