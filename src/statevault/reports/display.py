"""Text from a checkpoint made safe to show on a terminal: escaped and shortened.

Tensor names, metadata and state values come from files anyone may have written. Printed
as they are, an escape sequence in a name can clear the screen, retitle the window or
forge output lines. So control characters (C0, DEL, C1), line separators and bidi overrides
are shown escaped, as ``git`` and ``ls -b`` do (``\\x1b``), and long values are shortened
*before* anything formats them, with their length (``…(104857600 chars)``): terminals and
rich slow down faster than linearly on a 100 MB line. JSON output keeps full values.

May import: nothing of statevault. Imported by ``tools`` and ``cli``.
"""

from __future__ import annotations

from typing import Any

NAME_CHARS = 200  # a tensor name, a state path, a file path
VALUE_CHARS = 400  # a metadata or state value


def _escape_table() -> dict[int, str]:
    codes = [*range(0x20), 0x7F, *range(0x80, 0xA0)]  # C0, DEL, C1
    codes += [0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]  # separators, bidi
    return {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in codes}


_ESCAPES = _escape_table()  # constant, built once: str.translate needs the mapping


def shown(text: str, *, limit: int = NAME_CHARS) -> str:
    """``text`` with control characters escaped, cut at ``limit`` characters with its length.

    Shortened first, so the cost is bounded by ``limit`` whatever the length of ``text``.
    """
    if len(text) > limit:
        return f"{text[:limit].translate(_ESCAPES)}…({len(text)} chars)"
    return text.translate(_ESCAPES)


def shown_value(value: Any, limit: int = VALUE_CHARS) -> str:
    """``repr(value)`` as :func:`shown` shows it; a long string is cut before ``repr`` runs."""
    if isinstance(value, str) and len(value) > limit:
        return f"{shown(repr(value[:limit]), limit=2 * limit)}…({len(value)} chars)"
    return shown(repr(value), limit=limit)
