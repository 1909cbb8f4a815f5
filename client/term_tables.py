"""Rich tables for narrow and wide terminals: figures never folded or cut, names shortened only
between their tokens, and one stacked block per row when a table cannot fit."""
from __future__ import annotations

import re
from typing import Callable, Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# What a model file or a board says is data, never markup or terminal control: C0/C1 controls
# (ESC starts ANSI sequences), DEL, zero-width and bidirectional overrides are shown as escapes.
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
STACK_BELOW = 100     # terminal columns under which a table's rows are printed as stacked blocks
NAME_MIN = 20         # a table's name column is never shortened below this: the table is stacked instead
# A tensor or node name is cut only between its tokens: ONNX names have no spaces, and these separators
# (kept with the token before them) are where people read them apart.
_TOKENS = re.compile(r"[^_./-]+[_./-]*|[_./-]+")


def _visible(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _plain(value: object) -> str:
    """Text from a model or a board with its control characters made visible, for a rich Text (no markup)."""
    return _UNSAFE_CHARS.sub(lambda m: _visible(m.group()), str(value))


def short_name(name: str, width: int) -> str:
    """``name`` in at most ``width`` cells when it can be: tokens (ending at ``_ . / -``) are dropped
    from its middle and an ellipsis put in their place, keeping as many head and tail tokens as fit
    (``save_infer_model/…/scale_0.tmp_1_QuantizeLinear_Output``). A token is never cut: a name whose
    first and last tokens alone do not fit is returned whole."""
    if cell_len(name) <= width:
        return name
    tokens = _TOKENS.findall(name)
    head, tail, used = [], [], 1  # 1: the ellipsis
    first, last = 0, len(tokens) - 1
    grew = True
    while grew and first <= last:
        grew = False
        # The tail first: the end of a name says what the tensor is (its op, its output).
        for side in ("tail", "head"):
            if first > last:
                break
            token = tokens[last] if side == "tail" else tokens[first]
            if used + cell_len(token) > width:
                continue
            used += cell_len(token)
            grew = True
            if side == "tail":
                tail.insert(0, token)
                last -= 1
            else:
                head.append(token)
                first += 1
    if not head or not tail:
        return name
    return "".join(head) + "…" + "".join(tail)


def rows_table(console: Console, title: str, heads: Sequence[str], rows: Sequence[Sequence[str]], names: Sequence[int],
                stack: Callable[[int], list[str]], styles: Sequence[str | None] = (),
                right: Sequence[int] = ()) -> None:
    """Print ``rows`` (plain text, never markup) as a table whose figures are never folded or cut.

    Only the ``names`` columns give way: their names are shortened between tokens to what the
    terminal has left. Below ``STACK_BELOW`` columns, or when even the shortened table would not
    fit, each row is printed stacked instead: ``stack(index)`` gives row ``index``'s lines (plain
    text too), the first one unindented (the name), the others indented under it."""
    width = console.width
    styles = list(styles) or [None] * len(rows)
    rows = [[_plain(cell) for cell in row] for row in rows]
    if width >= STACK_BELOW:
        need = [max([cell_len(h)] + [cell_len(r[i]) for r in rows]) for i, h in enumerate(heads)]
        left = width - sum(w for i, w in enumerate(need) if i not in names) - 3 * len(heads) - 1
        budget = {}
        # The narrowest name columns take what they need; the others share the rest evenly.
        for k, i in enumerate(sorted(names, key=lambda i: need[i])):
            budget[i] = min(need[i], left // (len(names) - k))
            left -= budget[i]
        if all(budget[i] >= min(need[i], NAME_MIN) for i in names):
            cut = [[short_name(c, budget[i]) if i in names else c for i, c in enumerate(r)] for r in rows]
            widths = [max([cell_len(h)] + [cell_len(r[i]) for r in cut]) for i, h in enumerate(heads)]
            if sum(widths) + 3 * len(heads) + 1 <= width:
                table = Table(title=escape(title), title_justify="left")
                for i, head in enumerate(heads):
                    table.add_column(escape(head), justify="right" if i in right else "left", no_wrap=True,
                                     min_width=widths[i], overflow="fold" if i in names else "ellipsis")
                for row, style in zip(cut, styles):
                    table.add_row(*(Text(cell) for cell in row), style=style)
                console.print(table)
                return
    console.print(Text(title, style="italic"))
    for index, style in enumerate(styles):
        lines = [_plain(line) for line in stack(index)]
        if lines and lines[0]:
            console.print(Text(short_name(lines[0], width), style=style or ""))
        for line in lines[1:]:
            for part in _pack(line.split(" · "), width - 2):
                console.print(Text("  " + part, style=style or ""))


def _pack(parts: list[str], width: int) -> list[str]:
    """``parts`` joined with `` · `` into lines of at most ``width`` cells where they fit: a line is
    broken only between parts, so no figure is ever split across lines."""
    lines: list[str] = []
    for part in parts:
        if lines and cell_len(lines[-1]) + 3 + cell_len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return lines
