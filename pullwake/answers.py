"""Control-plane answers of any length, read item by item (issue 14, class 1).

This module owns the incremental reading of JSON answers that list streams
(a claim answer, a subscription): the body is parsed as it arrives
(:mod:`ijson`), so no answer is ever held whole, and every bound is *per
item*, never per answer:

- one item (a stream entry, or one top-level field) may not exceed
  ``item_limit`` bytes of the body (:class:`~pullwake.errors.AnswerTooLarge`,
  raised by :class:`~pullwake.http.BodyReader`);
- at most ``max_items`` stream entries are *kept*. Entries with pending work
  are preferred; any beyond the bound are counted (``deferred``), not kept.
  They keep their pending work on the server, so the next wake hands them
  over: a subscription linking any number of streams always makes progress.

It does no I/O of its own: it reads from whatever ``await reader.read(n)``
object it is given (the HTTP boundary hands it a :class:`BodyReader`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import ijson

from .errors import ControlPlaneError

__all__ = ["ItemsAnswer", "read_items_answer"]

#: Values of these ijson events are scalars.
_SCALARS = frozenset({"string", "number", "boolean", "null"})
#: A field whose value is an object or array (not expected in these answers).
NESTED: Any = type("Nested", (), {"__repr__": lambda self: "<nested>"})()


class _Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...
    def mark(self) -> None: ...


@dataclass
class ItemsAnswer:
    """A JSON object answer: its top-level scalar fields and its kept items.

    ``fields`` maps each top-level key to its scalar value (or :data:`NESTED`);
    ``items`` are the kept entries of the ``items_key`` array (dicts of scalar
    fields, in answer order; non-objects are kept as they are so the caller
    can name them); ``seen`` counts all entries, ``deferred`` those with pending
    work that were not kept, ``dropped_idle`` those without pending work not kept.
    """

    fields: dict[str, Any] = field(default_factory=dict, repr=False)  # a claim token
    items: list[Any] = field(default_factory=list, repr=False)
    seen: int = 0
    deferred: int = 0
    dropped_idle: int = 0
    is_object: bool = True
    items_type: str | None = None


async def read_items_answer(reader: _Reader, *, operation: str, items_key: str = "streams",
                            max_items: int, keep_fields: tuple[str, ...] | None = None,
                            status: int | None = None) -> ItemsAnswer:
    """Parse a JSON object answer incrementally; keep at most ``max_items`` entries.

    ``keep_fields`` (if given) are the only entry fields kept (others are
    skipped as they stream by). An entry counts as pending unless its
    ``has_pending`` is ``false``.
    """
    out = ItemsAnswer()
    pending: list[tuple[int, Any]] = []
    idle: list[tuple[int, Any]] = []
    item_prefix = f"{items_key}.item"
    field_prefix = item_prefix + "."
    current: dict[str, Any] | None = None
    depth = 0
    try:
        async for prefix, event, value in ijson.parse_async(reader, use_float=True):
            if depth == 0:
                if event != "start_map":
                    out.is_object = False
                    return out
                depth = 1
                continue
            if prefix == item_prefix:
                if event == "start_map":
                    current = {}
                elif event == "end_map":
                    _keep(current, out, pending, idle, max_items)
                    current = None
                    reader.mark()
                elif event in _SCALARS or event in ("start_array",):
                    # not an object: kept as a marker so the caller can name it
                    _keep(value if event in _SCALARS else NESTED, out, pending, idle, max_items,
                          force_pending=True)
                    reader.mark()
                continue
            if prefix.startswith(field_prefix):
                if current is None:
                    continue
                name = prefix[len(field_prefix):]
                if "." in name or event == "map_key":
                    continue  # inside a nested field value: skipped as it streams by
                if keep_fields is not None and name not in keep_fields:
                    continue
                if event in _SCALARS:
                    current[name] = value
                elif event in ("start_map", "start_array"):
                    current[name] = NESTED
                continue
            if prefix == items_key:
                if event == "start_array":
                    out.items_type = "list"
                elif event == "end_array":
                    reader.mark()
                elif event in _SCALARS or event == "start_map":
                    out.items_type = "other"
                    out.fields[items_key] = value if event in _SCALARS else NESTED
                continue
            if prefix == "":
                if event == "end_map":
                    break
                continue
            if "." not in prefix and prefix != items_key:
                if event in _SCALARS:
                    out.fields[prefix] = value
                    reader.mark()
                elif event in ("start_map", "start_array"):
                    out.fields[prefix] = NESTED
    except ijson.JSONError as exc:
        if depth == 0:  # empty, or not JSON at all: the caller names it
            out.is_object = False
            return out
        raise ControlPlaneError(f"answer is not valid JSON: {exc}"[:200], operation=operation,
                                status=status) from None
    merged = sorted(pending + idle, key=lambda p: p[0])
    out.items = [item for _, item in merged]
    return out


def _keep(item: Any, out: ItemsAnswer, pending: list[tuple[int, Any]],
          idle: list[tuple[int, Any]], max_items: int, *, force_pending: bool = False) -> None:
    index = out.seen
    out.seen += 1
    is_pending = force_pending or not (isinstance(item, dict) and item.get("has_pending") is False)
    if is_pending:
        if len(pending) >= max_items:
            out.deferred += 1
            return
        pending.append((index, item))
        if len(pending) + len(idle) > max_items:
            idle.pop()
            out.dropped_idle += 1
        return
    if len(pending) + len(idle) >= max_items:
        out.dropped_idle += 1
        return
    idle.append((index, item))
