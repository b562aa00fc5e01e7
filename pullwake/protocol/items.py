"""What a read hands to its caller: items, chunks and results (no I/O).

- :class:`Item` — one message of a JSON stream, or one text / bytes chunk of
  any other stream, with the offset it resumes at. An item that could not be
  decoded (malformed, nested too deeply, oversized) carries ``error``; reading
  ``item.data`` raises it, so a handler that does not look fails typed (and a
  retry policy can dead-letter the wake), while one that checks ``item.ok``
  skips it and goes on.
- :class:`Chunk` — the items of one answer (catch-up or long-poll response,
  or one SSE data event) with what the server said after it.
- :class:`ReadResult` — a whole read: every item, the final offset, flags.
- :class:`Assembler` — turns :mod:`~pullwake.protocol.read` events into these;
  both I/O shells use it, so both hand out exactly the same values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pullwake.errors import MessageError
from pullwake.protocol.framing import Kind, Rejected
from pullwake.protocol.read import Batch, Checkpoint

__all__ = ["Assembler", "Chunk", "Item", "ReadResult"]


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a stream and where it sits.

    Attributes:
        value: the decoded JSON value, ``str`` (text streams) or ``bytes``;
            ``None`` when ``error`` is set.
        offset: resume here to read what follows this item's chunk (every item
            of one chunk shares it: the protocol has offsets per answer).
        start: the offset its chunk was read from.
        index: its position in that chunk; ``(start, index)`` names the item.
        error: why it could not be decoded, or ``None``.
    """

    value: Any
    offset: str
    start: str
    index: int
    error: MessageError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def data(self) -> Any:
        """The value; raises the item's :class:`~pullwake.errors.MessageError` if bad."""
        if self.error is not None:
            raise self.error
        return self.value


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    """The items of one answer, then what the server said about the stream."""

    items: tuple[Item, ...]
    start: str
    offset: str
    cursor: str | None = None
    up_to_date: bool = False
    closed: bool = False
    kind: Kind | None = None
    status: int = 200

    @property
    def data(self) -> tuple[Any, ...]:
        """The values of the good items."""
        return tuple(i.value for i in self.items if i.error is None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadResult:
    """The outcome of one ``read_stream`` / ``aread_stream`` call.

    Attributes:
        messages: the values (JSON values, ``str`` or ``bytes``), in order.
        next_offset: where to resume (the last ``Stream-Next-Offset``).
        up_to_date: the server said ``Stream-Up-To-Date`` on the last,
            freshly fetched answer (never inferred from a cached one).
        closed: the stream is closed (``Stream-Closed``): nothing more will come.
        items: every item with its offsets (bad ones too, when skipped).
        kind: ``"json"``, ``"text"`` or ``"bytes"`` (from the content type).
        content_type: the stream's content type, as the server said it.
        cursor: the last ``Stream-Cursor`` (echo it on a later live read).
        responses / cached_responses / bytes_read: HTTP answers consumed,
            how many came from a cache, and body bytes across all of them.
    """

    messages: tuple[Any, ...]
    next_offset: str
    up_to_date: bool
    closed: bool
    items: tuple[Item, ...] = ()
    kind: Kind | None = None
    content_type: str | None = None
    cursor: str | None = None
    responses: int = 0
    cached_responses: int = 0
    bytes_read: int = 0


@dataclass
class Assembler:
    """Collect read events into chunks; ``items()`` flattens one batch.

    ``core`` (a :class:`~pullwake.protocol.ReadCore`, optional) tells each
    chunk its stream's kind.
    """

    core: Any = None
    _items: list[Item] = field(default_factory=list)

    @staticmethod
    def items(batch: Batch) -> Iterator[Item]:
        start, offset, i = batch.start, batch.offset, batch.first
        for v in batch.values:
            if type(v) is Rejected:
                yield Item(None, offset, start, i, v.error)
            else:
                yield Item(v, offset, start, i)
            i += 1

    def add(self, event: Any) -> Chunk | None:
        """Feed one event; returns a :class:`Chunk` when a checkpoint completes one.

        A :class:`Rejected` event (an unusable SSE control event) is raised.
        """
        if type(event) is Batch:
            self._items.extend(self.items(event))
            return None
        if type(event) is Checkpoint:
            items, self._items = self._items, []
            start = items[0].start if items else event.next_offset
            return Chunk(items=tuple(items), start=start, offset=event.next_offset,
                         cursor=event.cursor, up_to_date=event.up_to_date,
                         closed=event.closed,
                         kind=None if self.core is None else self.core.kind,
                         status=event.status)
        if type(event) is Rejected:
            raise event.error
        return None
