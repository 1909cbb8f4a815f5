"""Names in HTML reports: escaped, and wrapping only after their separators."""
from __future__ import annotations

import re
from html import escape

# ONNX names have no spaces: a break in the middle of a word makes them unreadable.
_SEPARATOR = re.compile(r"(?<=[/._:-])(?=.)")


def name_html(name: str) -> str:
    """A tensor or node name, escaped, that wraps only after its separators (``/ . _ - :``)."""
    return '<span class="tname">' + "<wbr>".join(escape(part) for part in _SEPARATOR.split(name)) + "</span>"
