"""An incremental, I/O-free Server-Sent Events parser with a size bound.

Owns SSE framing only (the WHATWG event-stream rules): ``feed(bytes)`` returns
the events completed by those bytes. Lines may end in LF, CR or CRLF (a CRLF
split across two chunks is handled); comments (``:``) are skipped; multiple
``data:`` lines join with ``\\n``; one leading space after the colon is removed.

Memory is bounded: an event whose data (or a single line) grows past
``max_event_bytes`` is discarded up to its terminating blank line and reported
as an :class:`Oversized` item, so a server that streams forever without a
newline cannot exhaust memory.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Oversized", "SSEEvent", "SSEParser"]

_BOM = b"\xef\xbb\xbf"


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
        i = 0
        n = len(chunk)
        while i < n:
            if self._skip_lf:
                self._skip_lf = False
                if chunk[i] == 0x0A:
                    i += 1
                    continue
            # find the next line terminator
            cr = chunk.find(b"\r", i)
            lf = chunk.find(b"\n", i)
            if cr == -1 and lf == -1:
                self._append(chunk[i:])
                break
            end = min(x for x in (cr, lf) if x != -1)
            self._append(chunk[i:end])
            if chunk[end] == 0x0D:
                if end + 1 < n:
                    if chunk[end + 1] == 0x0A:
                        end += 1
                else:
                    self._skip_lf = True
            i = end + 1
            item = self._line_done()
            if item is not None:
                out.append(item)
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
        line = bytes(self._line)
        self._line.clear()
        if not line:
            return self._dispatch()
        text = line.decode("utf-8", errors="replace")
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
