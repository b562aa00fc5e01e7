"""An incremental, I/O-free Server-Sent Events parser with a size bound.

Owns SSE framing only (the WHATWG event-stream rules): ``feed(bytes)`` returns
the events completed by those bytes. Lines may end in LF, CR or CRLF (a CRLF
split across two chunks is handled); comments (``:``) are skipped; multiple
``data:`` lines join with ``\\n``; one leading space after the colon is removed.

Cost is linear in the bytes fed: each chunk is split into lines by one
regular-expression scan (C speed), or by one ``split`` when it has only LF
line ends and cannot overflow an event (the common case: a wake stream's
small events), and a run of blank lines costs one match,
so a hostile server that inflates a few KiB of gzip into megabytes of
newlines cannot stall the event loop (issue 14, class 8).

Memory is bounded: an event whose data (or a single line) grows past
``max_event_bytes`` is discarded up to its terminating blank line and reported
as an :class:`Oversized` item, so a server that streams forever without a
newline cannot exhaust memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Oversized", "SSEEvent", "SSEParser"]

_BOM = b"\xef\xbb\xbf"
#: A run of line terminators: the first ends a line, any more are blank lines,
#: and a run of blank lines dispatches at most once, so it is matched whole.
_TERMS = re.compile(rb"[\r\n]+")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Oversized:
    """An event that exceeded the limit and was dropped; ``size`` is bytes seen."""

    event: str
    size: int
    limit: int


class SSEParser:
    """Feed bytes, get events. ``pending`` is True while an event is half-received."""

    def __init__(self, max_event_bytes: int = 1024 * 1024) -> None:
        self.max_event_bytes = max_event_bytes
        self._line = bytearray()
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""
        self._id: str | None = None
        self._last_id: str | None = None
        self._skip_lf = False
        self._overflow = 0  # bytes discarded in the current oversized event
        self._overflow_line = False  # bytes discarded since the last line end
        self._started = False  # BOM handling
        self._head = b""  # the first bytes, while they could still be a split BOM

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered (a cut mid-event)."""
        return bool(self._line or self._data or self._event or self._overflow or self._head)

    def feed(self, chunk: bytes) -> list[SSEEvent | Oversized]:
        out: list[SSEEvent | Oversized] = []
        if not self._started and chunk:
            chunk = self._head + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._head = chunk  # maybe a BOM split across chunks: decide later
                return out
            self._started = True
            self._head = b""
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
        if (self._started and not self._line and not self._skip_lf and not self._overflow
                and len(chunk) + self._data_size <= self.max_event_bytes
                and b"\r" not in chunk):
            return self._whole_lines(chunk, out)
        return self._any_lines(chunk, out)

    def _any_lines(self, chunk: bytes, out: list[SSEEvent | Oversized]
                   ) -> list[SSEEvent | Oversized]:
        """:meth:`feed` for any chunk: every line end, carried lines, size bounds."""
        pos = 0
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                pos = 1
        n = len(chunk)
        for m in _TERMS.finditer(chunk, pos):
            self._append(chunk[pos:m.start()])
            item = self._line_done()
            if item is not None:
                out.append(item)
            run = m.end() - m.start()
            if run > 2 or (run == 2 and chunk[m.start()] != 0x0D) or (
                    run == 2 and chunk[m.start() + 1] != 0x0A):
                item = self._line_done()  # blank line(s) right after: one dispatch
                if item is not None:
                    out.append(item)
            pos = m.end()
        if pos < n:
            self._append(chunk[pos:])
        elif n and chunk[-1] == 0x0D:
            self._skip_lf = True  # a CRLF may be split across chunks
        return out

    def _whole_lines(self, chunk: bytes, out: list[SSEEvent | Oversized]
                     ) -> list[SSEEvent | Oversized]:
        """:meth:`feed` for the common chunk: LF line ends only, no line carried over,
        and too small to overflow an event (so no size check can trigger). The
        same events as :meth:`_any_lines`, line by line without its bookkeeping:
        the field rules of :meth:`_line_done` and the dispatch of :meth:`_dispatch`
        inline (no call per line or event), and the size of the data held
        (``_data_size``, the sum of its lines' ``len + 1``) counted only for an
        event still open when the chunk ends."""
        end = chunk.rfind(b"\n")
        if end < 0:
            if chunk:
                self._line += chunk  # the start of a line still to come
            return out
        data = self._data
        # One decode for all the chunk's whole lines: LF is never part of a UTF-8
        # sequence, so a bad sequence is replaced as it is in each line alone.
        for text in chunk[:end].decode("utf-8", errors="replace").split("\n"):
            if not text:  # a blank line: dispatch (no overflow is possible here)
                if self._id is not None:
                    self._last_id = self._id
                    self._id = None
                if data:
                    out.append(SSEEvent(self._event or "message", "\n".join(data),
                                        self._last_id))
                    data = self._data = []
                self._event = ""
                continue
            if text[0] == ":":
                continue
            field, sep, value = text.partition(":")
            if sep and value[:1] == " ":
                value = value[1:]
            if field == "data":
                data.append(value)
            elif field == "event":
                self._event = value
            elif field == "id" and "\0" not in value:
                self._id = value
        self._data_size = sum(map(len, data)) + len(data) if data else 0
        if end + 1 < len(chunk):
            self._line += chunk[end + 1:]  # after the last LF: a line still to come
        return out

    # ---------------------------------------------------------------- internals

    def _append(self, part: bytes) -> None:
        if not part:
            return
        if self._overflow:
            self._overflow += len(part)
            self._overflow_line = True
            return
        if len(self._line) + len(part) + self._data_size > self.max_event_bytes:
            self._overflow = len(self._line) + len(part) + self._data_size
            self._overflow_line = True
            self._line.clear()
            self._data.clear()
            self._data_size = 0
            return
        self._line += part

    def _line_done(self) -> SSEEvent | Oversized | None:
        if self._overflow:
            if not self._overflow_line:  # a blank line: the oversized event ends
                item = Oversized(self._event or "message", self._overflow, self.max_event_bytes)
                self._reset_event()
                return item
            self._overflow_line = False
            return None
        if not self._line:
            return self._dispatch()
        text = self._line.decode("utf-8", errors="replace")
        self._line.clear()
        if text.startswith(":"):
            return None
        field, sep, value = text.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        # "retry" and unknown fields are ignored
        return None

    def _dispatch(self) -> SSEEvent | None:
        if self._id is not None:
            self._last_id = self._id
        if not self._data:
            self._reset_event()
            return None
        ev = SSEEvent(self._event or "message", "\n".join(self._data), self._last_id)
        self._reset_event()
        return ev

    def _reset_event(self) -> None:
        self._data.clear()
        self._data_size = 0
        self._event = ""
        self._id = None
        self._overflow = 0
        self._overflow_line = False
