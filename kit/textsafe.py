"""Escaping text that came from a bundle for where it is printed: a terminal, Markdown, CSV.

A shared bundle is untrusted input: a recipe name such as ``"\\x1b]0;pwned\\x07"`` must not
retitle the reader's terminal, a ``|`` must not add a column to a Markdown table, and a cell
starting with ``=`` must not become a spreadsheet formula. Every command that prints a
string read from a bundle passes it through one of these first.
"""

from __future__ import annotations

import unicodedata
from typing import Any

#: Unicode categories never printed raw: controls (C0, DEL, C1), format characters (bidi
#: overrides, zero-width), line/paragraph separators, surrogates and private use.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal(text: Any) -> str:
    """``text`` (any value, as ``str``) with every control, format and separator character
    written as a visible escape (``\\x1b``, ``\\u202e``); newlines and tabs too, so one value
    stays on one line."""
    s = str(text)
    if s.isprintable():  # the common case: nothing to do
        return s
    return "".join(_escape_char(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in s)


def terminal_tree(value: Any) -> Any:
    """``value`` with :func:`terminal` applied to every string in it, keys included (dicts,
    lists and tuples are rebuilt; numbers, booleans and None are left as they are)."""
    if isinstance(value, str):
        return terminal(value)
    if isinstance(value, dict):
        return {terminal_tree(k): terminal_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(terminal_tree(v) for v in value)
    return value


_MARKDOWN_SPECIAL = set("\\`*_[]<>|~")  # what can act inside a table cell


def markdown_cell(text: Any) -> str:
    """``text`` safe inside a Markdown table cell: controls escaped as for the terminal, and
    Markdown's punctuation (``|``, ``*``, ``[``, ``<``, backticks ...) backslash-escaped, so it
    renders as the literal text and cannot add a column, a link or HTML."""
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in terminal(text))


_TABLE_SPECIAL = set("\\`[]<>|")  # what can add a column, a link, code or HTML to a table row


def table_cell(text: Any) -> str:
    """``text`` safe as a cell of a Markdown table that must also read well as plain text
    (the sweep table): controls escaped as for the terminal, and only what can change the
    table's structure or inject a link, code or HTML (``|``, ``[``, ``]``, ``<``, ``>``,
    backticks, backslash) backslash-escaped; ``_`` and ``*`` are left as written
    (``LD_PRELOAD`` stays ``LD_PRELOAD``)."""
    return "".join("\\" + ch if ch in _TABLE_SPECIAL else ch for ch in terminal(text))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: Any) -> str:
    """``text`` safe as a CSV value opened in a spreadsheet: controls escaped, and a value
    that would start a formula (``=``, ``+``, ``-``, ``@``) prefixed with ``'`` (OWASP's advice).
    Quoting is left to the ``csv`` module. Numbers given as numbers are not changed."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return str(text)
    s = str(text)
    if len(s) > 1 and s.startswith(_FORMULA_START) and not _is_number(s):
        s = "'" + s
    return terminal(s)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
