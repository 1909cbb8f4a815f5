"""Reports of ``qverify debug``: the JSON document and a self-contained HTML page (inline SVG
plot of the cumulative curves, no external assets), both written atomically."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from qverify.client.accuracy.curve import Curve, Suggestion
from qverify.client.accuracy.debug_apply import ApplyResult
from qverify.client.accuracy.sensitivity import KINDS, SensitivityResult
from qverify.client.dumpfiles import write_text_atomic
from qverify.client.reports import finite

SCHEMA = "qverify.debug/1"
COLORS = {"node": "#1f77b4", "weight": "#ff7f0e", "activation": "#2ca02c"}


def to_dict(float_path: Path, quant_path: Path, result: SensitivityResult, curves: list[Curve] | None = None,
            suggestion: Suggestion | None = None, applied: ApplyResult | None = None) -> dict[str, Any]:
    """The debug report as JSON-ready data."""
    doc: dict[str, Any] = {
        "schema": SCHEMA, "float_model": str(float_path), "quant_model": str(quant_path), "metric": result.metric,
        "inputs": result.inputs, "all_quantized": result.baseline, "variants_run": result.runs,
        "seconds": result.seconds,
        "nodes": [{"rank": {k: None for k in KINDS}, "name": n.name, "op": n.op, "value": n.values,
                   "improvement": n.gains} for n in result.nodes],
    }
    ranks = {k: {n.name: i + 1 for i, n in enumerate(result.ranking(k))} for k in KINDS}
    for entry in doc["nodes"]:
        entry["rank"] = {k: ranks[k].get(entry["name"]) for k in KINDS}
    if curves is not None:
        doc["curves"] = [{"kind": c.kind, "nodes": c.nodes, "points": [{"k": k, **p} for k, p in enumerate(c.points)]}
                         for c in curves]
    if suggestion is not None:
        doc["suggestion"] = {"target_cosine": suggestion.target, "reached": suggestion.reached, "k": suggestion.k,
                             "cosine": suggestion.cosine, "nodes": suggestion.nodes,
                             "command": suggestion.command(quant_path, float_path)}
    if applied is not None:
        doc["apply"] = {"board": applied.where, "nodes": applied.nodes, "frames": applied.frames,
                        "before": applied.before, "after": applied.after,
                        "cosine_gain": applied.after["cosine"] - applied.before["cosine"]}
    return finite(doc)


def write_json(doc: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, lambda: json.dumps(doc, indent=2) + "\n")


def _svg(curves: list[dict], target: float | None) -> str:
    """Cosine against k for each curve, as an inline SVG."""
    width, height, pad = 720, 320, 48
    points = [p["cosine"] for c in curves for p in c["points"]] + ([target] if target is not None else [])
    low = min(points + [0.99])
    low = max(0.0, low - (1 - low) * 0.05)
    top_k = max(len(c["points"]) - 1 for c in curves) or 1

    def xy(k: int, v: float) -> tuple[float, float]:
        return (pad + (width - 2 * pad) * k / top_k,
                height - pad - (height - 2 * pad) * (v - low) / ((1 - low) or 1))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="cumulative error curves">',
             f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" '
             f'stroke="#999"/>',
             f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="12">k (most sensitive nodes '
             f'left in float)</text>',
             f'<text x="12" y="{pad - 12}" font-size="12">cosine vs float model</text>',
             f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end" font-size="10">1</text>',
             f'<text x="{pad - 4}" y="{height - pad}" text-anchor="end" font-size="10">{low:.4g}</text>',
             f'<text x="{width - pad}" y="{height - pad + 14}" text-anchor="end" font-size="10">{top_k}</text>']
    if target is not None:
        _, ty = xy(0, target)
        parts.append(f'<line x1="{pad}" x2="{width - pad}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#d62728" '
                     f'stroke-dasharray="4 3"/><text x="{width - pad}" y="{ty - 4:.1f}" text-anchor="end" '
                     f'font-size="10" fill="#d62728">target {target:g}</text>')
    for i, c in enumerate(curves):
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(p["k"], p["cosine"]) for p in c["points"]))
        color = COLORS.get(c["kind"], "#333")
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        parts.append(f'<text x="{pad + 8}" y="{pad + 16 + 14 * i}" font-size="11" fill="{color}">'
                     f'{html.escape(c["kind"])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(doc: dict[str, Any], top: int = 20) -> str:
    esc = html.escape
    metric = doc["metric"]
    rows = sorted((n for n in doc["nodes"] if n["rank"]["node"]), key=lambda n: n["rank"]["node"])[:top]

    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.6g}"

    body = [f"<h1>Accuracy debugging: {esc(Path(doc['quant_model']).name)}</h1>",
            f"<p>float model {esc(doc['float_model'])}; inputs: {esc(doc['inputs'])}; all quantized: "
            f"{metric} {cell(doc['all_quantized'][metric])}, cosine {cell(doc['all_quantized']['cosine'])}</p>",
            f"<h2>Most sensitive nodes ({esc(metric)})</h2><table><tr><th>rank</th><th>node</th><th>op</th>"
            "<th>node in float</th><th>gain</th><th>weights in float</th><th>gain</th>"
            "<th>activations in float</th><th>gain</th></tr>"]
    for n in rows:
        body.append(f"<tr><td>{n['rank']['node']}</td><td>{esc(n['name'])}</td><td>{esc(n['op'])}</td>"
                    + "".join(f"<td>{cell(n['value'][k])}</td><td>{cell(n['improvement'][k])}</td>" for k in KINDS)
                    + "</tr>")
    body.append("</table>")
    if "curves" in doc:
        target = doc.get("suggestion", {}).get("target_cosine")
        body.append("<h2>Cumulative error curve</h2>" + _svg(doc["curves"], target))
    if "suggestion" in doc:
        s = doc["suggestion"]
        state = "reaches" if s["reached"] else "does not reach; best"
        body.append(f"<p>k = {s['k']} {state} cosine {s['target_cosine']:g} (cosine {s['cosine']:.6f}): "
                    f"<code>{esc(s['command'])}</code></p>")
    if "apply" in doc:
        a = doc["apply"]
        body.append(f"<p>Measured on {esc(a['board'])}: float vs board cosine {a['before']['cosine']:.6f} before, "
                    f"{a['after']['cosine']:.6f} after ({a['cosine_gain']:+.6f}).</p>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>qverify debug</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


def write_html(doc: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, lambda: render_html(doc))
