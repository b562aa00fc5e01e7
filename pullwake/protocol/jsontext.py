"""JSON text decoded exactly as ``json.loads`` decodes it, without its Python layers.

Owns one shortcut: :func:`whole_json` calls the C scanner ``json.loads`` ends in
(``JSONDecoder.scan_once``) on a text that is one JSON value from its first
character to its last (a wake stream's SSE events are). Anything else
(whitespace around the value, a BOM, invalid JSON, trailing data) answers
:data:`NOT_WHOLE`, and the caller decodes it the general way, so results and
errors stay ``json.loads``'s. No I/O.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["NOT_WHOLE", "loads_or_none", "small_array", "whole_json"]

#: What :func:`whole_json` answers for a text it leaves to ``json.loads``.
NOT_WHOLE: Any = type("NotWhole", (), {"__repr__": lambda self: "<not whole>"})()

#: The scanner of a default decoder: the one ``json.loads`` uses, without the
#: wrappers around it (loads, decode, raw_decode, the whitespace matches).
_scan: Any = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def whole_json(text: str, scan: Any = _scan) -> Any:
    """``json.loads(text)`` if ``text`` is exactly one JSON value, else :data:`NOT_WHOLE`.

    ``scan``: another decoder's scanner (``JSONDecoder(...).scan_once``), for
    what that decoder's ``decode`` gives.
    """
    try:
        value, end = scan(text, 0)
    except (StopIteration, ValueError, RecursionError):
        return NOT_WHOLE
    return value if end == len(text) else NOT_WHOLE


def loads_or_none(text: str) -> Any:
    """``json.loads(text)``, or None if it raises (an SSE control event's decode)."""
    value = whole_json(text)
    if value is NOT_WHOLE:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = None
    return value


def small_array(text: str, limit: int) -> list[Any] | None:
    """``json.loads(text)`` if ``text`` is exactly one JSON array whose UTF-8 encoding
    is surely within ``limit`` bytes (at most 4 a character), else None: then
    :func:`~pullwake.protocol.framing.frame_sse_data` decides (and sizes it)."""
    if len(text) * 4 > limit:
        return None
    value = whole_json(text)
    return value if type(value) is list else None
