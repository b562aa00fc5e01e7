"""Control-plane answers of any length, read item by item (issue 14, class 1).

This module owns the incremental reading of JSON answers that list streams
(a claim answer, a subscription): the body is parsed as it arrives
(:mod:`ijson`), so no answer is ever held whole, and every bound is *per
item*, never per answer:

- one item (a stream entry, or one top-level field) may not exceed
  ``item_limit`` bytes of the body (:class:`~pullwake.errors.AnswerTooLarge`,
  raised by :class:`~pullwake.io.http.BodyReader`);
- at most ``max_items`` stream entries are *kept*. Entries with pending work
  are preferred; any beyond the bound are counted (``deferred``), not kept.
  They keep their pending work on the server, so the next wake hands them
  over: a subscription linking any number of streams always makes progress.

It does no I/O of its own: it reads from whatever ``await reader.read(n)``
object it is given (the HTTP boundary hands it a
:class:`~pullwake.io.bodies.BodyReader`) and pushes the chunks into the parser.

A small answer (a claim of a few streams: the common case) is cheap: when
the reader offers ``await reader.small_body()`` (the whole body, when its
length is known and no larger than one item may be), it is decoded by one
``json.loads`` and its items kept by the same rules; no item can exceed the
bound, so checking it costs nothing. Anything the one-shot decode cannot
reproduce exactly (invalid JSON, ``NaN``, escapes, a repeated items key, a
dotted key) is parsed incrementally from the same bytes instead, so results
and errors are those of the incremental parser.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import ijson

from pullwake.errors import ControlPlaneError
from pullwake.protocol.jsontext import NOT_WHOLE, whole_json

__all__ = ["NOT_SMALL", "ItemsAnswer", "decode_small", "read_items_answer", "small_body"]

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
                            select: Callable[[Mapping[str, Any]], bool] | None = None,
                            status: int | None = None, small: Any = None) -> ItemsAnswer:
    """Parse a JSON object answer incrementally; keep at most ``max_items`` entries.

    ``keep_fields`` (if given) are the only entry fields kept (others are
    skipped as they stream by); entries ``select`` rejects are neither kept
    nor counted as deferred. An entry counts as pending unless its
    ``has_pending`` is ``false``. ``small``: what ``await reader.small_body()``
    answered, if the caller asked already (:func:`small_body`).

    The parser is pushed chunks (``ijson.parse_coro``): every wait is this
    coroutine's own ``await reader.read()``, so cancellation and deadlines
    behave as anywhere else.
    """
    body = await small_body(reader) if small is None else small
    if body is not NOT_SMALL:
        fast = _parse_small(body, items_key=items_key, max_items=max_items,
                            keep_fields=keep_fields, select=select)
        if fast is not None:
            return fast
        reader = _Bytes(body)  # the incremental parser decides (its results, its errors)
    parser = _ItemsParser(reader, items_key=items_key, max_items=max_items,
                          keep_fields=keep_fields, select=select)
    events: Any = ijson.sendable_list()
    coro = ijson.parse_coro(events, use_float=True)
    try:
        while not parser.done:
            data = await reader.read(_READ_SIZE)
            if data:
                coro.send(data)
            else:
                coro.close()  # end of body: raises if the JSON is incomplete
            for prefix, event, value in events:
                if parser.feed(prefix, event, value):
                    break
            del events[:]
            if not data:
                break
    except ijson.JSONError as exc:
        if parser.depth == 0:  # empty, or not JSON at all: the caller names it
            parser.out.is_object = False
            return parser.out
        raise ControlPlaneError(f"answer is not valid JSON: {exc}"[:200], operation=operation,
                                status=status) from None
    finally:
        if not parser.done:
            with contextlib.suppress(Exception):
                coro.close()
    return parser.result()


#: What :func:`small_body` answers for a body it cannot hand over whole (an empty
#: one included: nothing to decode at once), and :func:`decode_small` for one it
#: leaves to the incremental parser (no JSON value is bytes).
NOT_SMALL = b""


async def small_body(reader: Any) -> bytes:
    """``await reader.small_body()`` if the reader offers it and it has the whole
    body, else :data:`NOT_SMALL` (then the reader hands out the body from its start)."""
    ask = getattr(reader, "small_body", None)
    body = await ask() if ask is not None else None
    return NOT_SMALL if body is None else body


def decode_small(body: bytes, items_key: str = "streams") -> Any:
    """A small answer's value decoded at once, or :data:`NOT_SMALL` if the one-shot
    decode might differ from the incremental parse (:func:`_parse_small`'s rules)."""
    if b"\\" in body or body.count(b'"' + items_key.encode() + b'"') > 1:
        return NOT_SMALL  # escapes (keys spelt two ways), or a repeated items key
    try:
        text = body.decode("utf-8")
        value = whole_json(text, _scan)  # the common answer: compact, nothing around it
        return _decode(text) if value is NOT_WHOLE else value
    except (ValueError, RecursionError):
        return NOT_SMALL  # not JSON, or not as ijson reads it: its errors, not ours


#: Bytes asked of the reader at a time.
_READ_SIZE = 64 * 1024


class _Bytes:
    """A whole body as a reader (the incremental fallback of a small answer)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        out, self._data = self._data, b""
        return out

    def mark(self) -> None:
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: the incremental parser's call


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0:  # 1e400 overflows: the incremental parser's call too
        raise ValueError("number out of range")
    return value


#: ``json.loads(text, parse_constant=_reject_constant, parse_float=_finite)`` with its
#: decoder built once (``json.loads`` builds one per call when given options; a
#: leading BOM, which it rejects itself, fails this decoder's scan all the same).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite)
_decode = _DECODER.decode
_scan: Any = _DECODER.scan_once  # type: ignore[attr-defined]


def _parse_small(body: bytes, *, items_key: str, max_items: int,
                 keep_fields: tuple[str, ...] | None,
                 select: Callable[[Mapping[str, Any]], bool] | None) -> ItemsAnswer | None:
    """A whole small answer decoded at once, kept like :class:`_ItemsParser` keeps it.

    None when the one-shot decode might differ from the incremental parse:
    then the caller parses the same bytes incrementally.
    """
    value = decode_small(body, items_key)
    if value is NOT_SMALL:
        return None
    out = ItemsAnswer()
    if not isinstance(value, dict):
        out.is_object = False
        return out
    pending: list[tuple[int, Any]] = []
    idle: list[tuple[int, Any]] = []
    fields = out.fields
    for key, v in value.items():
        if "." in key or not key:
            return None  # the incremental parser's prefixes treat these specially
        if key == items_key:
            if isinstance(v, list):
                out.items_type = "list"
                for entry in v:
                    if isinstance(entry, dict):
                        item = _entry(entry, keep_fields)
                        if item is None:
                            return None
                        if select is None or select(item):
                            _keep(item, out, pending, idle, max_items)
                    else:
                        _keep(NESTED if isinstance(entry, list) else entry, out, pending,
                              idle, max_items, force_pending=True)
            else:
                if isinstance(v, dict) and "item" in v:
                    return None  # "streams.item" would read as an entry there
                out.items_type = "other"
                fields[key] = NESTED if isinstance(v, (dict, list)) else v
            continue
        fields[key] = NESTED if isinstance(v, (dict, list)) else v
    merged = sorted(pending + idle, key=lambda p: p[0]) if idle else pending
    out.items = [item for _, item in merged]
    return out


def _entry(entry: dict[str, Any], keep: tuple[str, ...] | None) -> dict[str, Any] | None:
    item: dict[str, Any] = {}
    for name, v in entry.items():
        if "." in name:
            return None
        if keep is None or name in keep:
            item[name] = NESTED if isinstance(v, (dict, list)) else v
    return item


class _ItemsParser:
    """The event handling of :func:`read_items_answer` (pure: no I/O)."""

    def __init__(self, reader: _Reader, *, items_key: str, max_items: int,
                 keep_fields: tuple[str, ...] | None,
                 select: Callable[[Mapping[str, Any]], bool] | None) -> None:
        self.reader = reader
        self.out = ItemsAnswer()
        self.max_items = max_items
        self.keep_fields = keep_fields
        self.select = select
        self.items_key = items_key
        self.item_prefix = f"{items_key}.item"
        self.field_prefix = self.item_prefix + "."
        self.current: dict[str, Any] | None = None
        self.pending: list[tuple[int, Any]] = []
        self.idle: list[tuple[int, Any]] = []
        self.depth = 0
        self.done = False

    def result(self) -> ItemsAnswer:
        merged = sorted(self.pending + self.idle, key=lambda p: p[0])
        self.out.items = [item for _, item in merged]
        return self.out

    def _keep(self, item: Any, *, force_pending: bool = False) -> None:
        _keep(item, self.out, self.pending, self.idle, self.max_items,
              force_pending=force_pending)

    def feed(self, prefix: str, event: str, value: Any) -> bool:
        """Handle one parser event; True once the answer is complete."""
        self._feed(prefix, event, value)
        return self.done

    def _feed(self, prefix: str, event: str, value: Any) -> None:
        out = self.out
        if self.depth == 0:
            self.depth = 1
            if event != "start_map":
                out.is_object = False
                self.done = True
            return
        if prefix == self.item_prefix:
            if event == "start_map":
                self.current = {}
            elif event == "end_map":
                cur = self.current
                if cur is not None and (self.select is None or self.select(cur)):
                    self._keep(cur)
                self.current = None
                self.reader.mark()
            elif event in _SCALARS or event == "start_array":
                # not an object: kept as it is (or a marker) so the caller can name it
                self._keep(value if event in _SCALARS else NESTED, force_pending=True)
                self.reader.mark()
            return
        if prefix.startswith(self.field_prefix):
            if self.current is None:
                return
            name = prefix[len(self.field_prefix):]
            if "." in name or event == "map_key":
                return  # inside a nested field value: skipped as it streams by
            if self.keep_fields is not None and name not in self.keep_fields:
                return
            if event in _SCALARS:
                self.current[name] = value
            elif event in ("start_map", "start_array"):
                self.current[name] = NESTED
            return
        if prefix == self.items_key:
            if event == "start_array":
                out.items_type = "list"
            elif event == "end_array":
                self.reader.mark()
            elif event in _SCALARS or event == "start_map":
                out.items_type = "other"
                out.fields[self.items_key] = value if event in _SCALARS else NESTED
            return
        if prefix == "":
            if event == "end_map":
                self.done = True
            return
        if "." not in prefix:
            if event in _SCALARS:
                out.fields[prefix] = value
                self.reader.mark()
            elif event in ("start_map", "start_array"):
                out.fields[prefix] = NESTED


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
