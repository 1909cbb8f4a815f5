"""Entire and isolated error per layer, side by side (RKNN's accuracy_analysis columns), for the
terminal, JUnit and HTML reports. The JSON report carries the same rows (``pairs[].isolation``)."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from html import escape as _E

from qverify.client.report_text import name_html
from qverify.client.results import IsolatedLayer, PairResult, TensorResult

_W, _H, _L, _R, _T, _B = 900, 240, 48, 16, 16, 30
_ENTIRE, _ISOLATED = "#8a8a8a", "#1f4e99"


def rows(pair: PairResult) -> list[tuple[IsolatedLayer, TensorResult | None]]:
    """Each isolated layer with the entire-run figures of the same tensor (``-r``), when there are any."""
    entire = {t.name: t for t in pair.outputs + pair.layers}
    return [(layer, entire.get(layer.tensor)) for layer in pair.isolation]


def _entire_text(t: TensorResult | None) -> str:
    return "—" if t is None else f"max {t.max_lsb} LSB, cos {t.cosine:.5f}"


def _isolated_text(layer: IsolatedLayer) -> str:
    share = layer.off_by_one / layer.elements if layer.elements else 0.0
    return f"max {layer.max_lsb} LSB, {share:.1%} at 1 LSB"


def terminal_rows(pair: PairResult, limit: int = 12) -> list[tuple[str, str, str, str, str]]:
    """(layer, op, entire, isolated, verdict) for the wrong layers first, then the largest isolated errors."""
    ranked = sorted(rows(pair), key=lambda r: (r[0].passed, -r[0].max_lsb, -r[0].off_by_one, r[0].index))
    out = []
    for layer, entire in ranked[:limit]:
        verdict = "ok" if layer.passed else "WRONG"
        out.append((layer.node + (f" [{layer.group}]" if layer.group else ""), f"{layer.op} ({layer.kind})",
                    _entire_text(entire), _isolated_text(layer), verdict))
    return out


def junit_suite(root: ET.Element, pair: PairResult, properties: list[tuple[str, str]]) -> ET.Element | None:
    """A testsuite "<pair> (isolated layers)": one testcase per layer, failing when it misses its bound."""
    if not pair.isolation:
        return None
    name = f"{pair.a} vs {pair.b} (isolated layers)"
    suite = ET.SubElement(root, "testsuite", name=name, time="0")
    props = ET.SubElement(suite, "properties")
    for key, value in [*properties, ("pair.decided_by", pair.decided_by), ("pair.drift", pair.drift)]:
        ET.SubElement(props, "property", name=key, value=value)
    for layer, entire in rows(pair):
        case = ET.SubElement(suite, "testcase", classname=name, name=f"{layer.node} -> {layer.tensor}", time="0")
        if not layer.passed:
            failure = ET.SubElement(case, "failure", message=f"{layer.tensor}: {layer.reason}", type="isolated layer")
            failure.text = f"{layer.op} ({layer.kind}); entire: {_entire_text(entire)}; isolated: " \
                           f"{_isolated_text(layer)}; bound {layer.bound}"
    return suite


def _y(value: float, top: float) -> float:
    scaled = math.log2(1 + max(value, 0.0)) / math.log2(1 + top) if top > 0 else 0.0
    return _T + (1.0 - min(scaled, 1.0)) * (_H - _T - _B)


def _plot(pair: PairResult) -> str:
    """Max LSB per layer along the network (log scale): the entire run drifts with depth, an
    isolated layer stays within its bound unless it is wrong."""
    data = rows(pair)
    n = len(data)
    top = max([1.0] + [float(layer.max_lsb) for layer, _ in data] + [float(t.max_lsb) for _, t in data if t])
    xs = [_L + (i + 0.5) * (_W - _L - _R) / max(n, 1) for i in range(n)]
    out = [f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="entire and isolated error per layer">']
    for v in sorted({0, 1, 2, 4, 16, 64, int(top)}):
        if v <= top:
            out.append(f'<line x1="{_L}" x2="{_W - _R}" y1="{_y(v, top):.1f}" y2="{_y(v, top):.1f}" stroke="#e3e3e3"/>'
                       f'<text x="{_L - 6}" y="{_y(v, top) + 4:.1f}" font-size="11" text-anchor="end">{v}</text>')
    step = max(1, math.ceil(n / 12))
    for i in range(0, n, step):  # the tensors' numbers (#), as in the pair's tensor table
        out.append(f'<text x="{xs[i]:.1f}" y="{_H - 10}" font-size="11" text-anchor="middle">{data[i][0].index}</text>')
    entire = [(x, t.max_lsb) for x, (_, t) in zip(xs, data) if t is not None]
    if entire:
        points = " ".join(f"{x:.1f},{_y(v, top):.1f}" for x, v in entire)
        out.append(f'<polyline points="{points}" fill="none" stroke="{_ENTIRE}" stroke-width="1.5"/>')
    points = " ".join(f"{x:.1f},{_y(layer.max_lsb, top):.1f}" for x, (layer, _) in zip(xs, data))
    out.append(f'<polyline points="{points}" fill="none" stroke="{_ISOLATED}" stroke-width="1.5"/>')
    for i, (layer, t) in enumerate(data):
        colour, radius = ("#c62828", 4) if not layer.passed else (_ISOLATED, 2.5)
        tip = f"#{layer.index} {layer.node} ({layer.op}) -> {layer.tensor}\nentire: {_entire_text(t)}\n" \
              f"isolated: {_isolated_text(layer)}\n{layer.reason}"
        out.append(f'<circle cx="{xs[i]:.1f}" cy="{_y(layer.max_lsb, top):.1f}" r="{radius}" fill="{colour}">'
                   f"<title>{_E(tip)}</title></circle>")
    out.append("</svg>")
    legend = (f'<p class="legend"><span style="color:{_ENTIRE}">— entire (accumulated, -r)</span>'
              f'<span style="color:{_ISOLATED}">— isolated (fed the reference\'s inputs)</span>'
              '<span style="color:#c62828">● wrong in isolation</span> (y: max LSB, log scale; x: tensor #)</p>')
    return "".join(out) + legend


def html_section(pair: PairResult, anchor: str = "") -> str:
    """The isolation part of a pair's section: decision, drift note, plot, and the per-layer table.

    Rows are numbered like the pair's tensor table (the tensor's position in execution order);
    with ``anchor`` (the pair section's id) a number links to that tensor's row there."""

    if not pair.isolation:
        return ""
    parts = [f"<h3>Layers in isolation</h3><p>decided by: <strong>{_E(pair.decided_by)}</strong>. Each board "
             "layer was fed the reference's own input tensors; its output is held to its op's bound "
             "(docs/verdict.md).</p>"]
    if pair.drift:
        parts.append(f'<p class="drift">{_E(pair.drift)}</p>')
    parts.append(_plot(pair))
    head = ["#", "layer", "op", "bound family", "group", "entire (accumulated)", "isolated", "bound", "verdict"]
    body = []
    for layer, entire in rows(pair):
        cls = "" if layer.passed else ' class="fail"'
        number = str(layer.index)
        if anchor and entire is not None:
            number = f'<a href="#{_E(anchor)}-t{layer.index}">{number}</a>'
        cells = [number, f"{name_html(layer.node)} → {name_html(layer.tensor)}", _E(layer.op),
                 _E(layer.kind), _E(layer.group or "alone"), _E(_entire_text(entire)), _E(_isolated_text(layer)),
                 _E(layer.bound), _E(("yes" if layer.passed else "WRONG") + ": " + layer.reason)]
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append('<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_E(h)}</th>" for h in head)
                 + "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>")
    return "\n".join(parts)
