"""The Durable Streams read rules as a sans-I/O state machine (PROTOCOL.md §5.6-5.8, §8).

:class:`ReadCore` decides every request of one read and interprets every
answer; it never touches a socket. An I/O shell (aiohttp in
:mod:`pullwake.io.transport` and :mod:`pullwake.aread`, requests in
:mod:`pullwake.io.reader`) loops::

    req = core.request()                 # the query and headers to send
    head = core.head(status, headers)    # typed error, retry, or a body to frame
    for piece in body: events += core.feed(piece)
    events += core.end()                 # the answer is complete

and acts on the events: :class:`Batch` (values framed from the body, with the
offset they resume at), :class:`Checkpoint` (the next offset, cursor,
``up_to_date``, ``closed``) and :class:`~pullwake.protocol.framing.Rejected`
(one value, or a control event, that cannot be used). ``core.done`` says the
read is finished: the stream is closed (§4.1, the only EOF), or a catch-up read
is up to date or reached ``until``. A broken answer (connection dropped mid-body)
is reported with :meth:`ReadCore.broken`; the retried request then skips the
values this answer already delivered, so a retry never duplicates.

Rules in one place: offsets (``-1``, ``now``, opaque tokens that must move
forward), live modes (a live read catches up first, so the stream's content
type is known, unless the caller says it), cursor echo, ``ETag`` /
``If-None-Match`` / 304, which statuses are transient (5xx, 429 with
``Retry-After``) and which are final (any other 4xx, typed with the server's
code), and the SSE ``control`` / ``data`` events with
``stream-sse-data-encoding: base64``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from pullwake.errors import (
    ConfigError,
    MalformedMessage,
    OffsetsWentBack,
    OversizedMessage,
    ProtocolError,
    StreamStatusError,
    redact_text,
)
from pullwake.protocol.framing import BodyFramer, Kind, Rejected, frame_sse_data, kind_of
from pullwake.protocol.jsontext import loads_or_none, small_array, whole_json
from pullwake.protocol.progress import PROGRESS_BYTES, ProgressWindow
from pullwake.protocol.sse import Oversized, SSEEvent, SSEParser

__all__ = [
    "PROGRESS_BYTES",
    "Batch",
    "Checkpoint",
    "Head",
    "Live",
    "ProgressWindow",
    "ReadCore",
    "Request",
    "check_offset",
    "error_code",
    "parse_retry_after",
    "valid_offset",
]

Live = Literal["catch-up", "long-poll", "sse"]
Event = Any  # Batch | Checkpoint | Rejected

SENTINELS = ("-1", "now")
#: (Each pattern ends in ``\Z``: ``$`` would also match before a final line feed.)
#: Offsets a caller passes: a conservative URL-safe alphabet (PROTOCOL.md §8:
#: tokens never contain , & = ? /), at most 256 characters.
_CALLER_OFFSET_RE = re.compile(r"[A-Za-z0-9._~:+-]{1,256}\Z")
#: Offsets a server sends: opaque, but printable ASCII without , & = ? / (§8)
#: and bounded, so one can never smuggle a query parameter into the next request.
_SERVER_OFFSET_RE = re.compile(r"[\x21-\x25\x27-\x2b\x2d\x2e\x30-\x3c\x3e\x40-\x7e]{1,256}\Z")
_CODE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
#: Query values ``quote`` would leave as they are (offsets usually are).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*\Z")
#: Codes pullwake assigns when the server's error body carries none.
_FALLBACK_CODES = {400: "BAD_REQUEST", 404: "STREAM_NOT_FOUND", 409: "CONFLICT",
                   410: "OFFSET_GONE", 429: "RATE_LIMITED"}
#: How much of an error body is read to find its code.
ERROR_BODY_LIMIT = 4096


def valid_offset(value: object) -> bool:
    """An offset a server may send: printable ASCII, 1-256 characters, not a sentinel."""
    return isinstance(value, str) and bool(_SERVER_OFFSET_RE.match(value)) \
        and value not in SENTINELS


def check_offset(value: object, name: str = "offset") -> str:
    """A caller's offset: ``-1``, ``now`` or a token; else :class:`ConfigError`."""
    if not isinstance(value, str) or not _CALLER_OFFSET_RE.match(value):
        raise ConfigError(
            f"{name} must be '-1', 'now' or an offset token (1-256 characters of "
            "A-Z a-z 0-9 . _ ~ : + -)")
    return value


def _true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def error_code(body: Any) -> str | None:
    """The machine-readable code of a JSON error body, in any shape servers use."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    found: Any = body.get("code")
    if found is None and isinstance(err, dict):
        found = err.get("code")
    elif found is None and isinstance(err, str) and err.replace("_", "").isalnum() \
            and err.isupper():
        found = err
    return found if isinstance(found, str) and _CODE_RE.match(found) else None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds form), bounded to an hour."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None


@dataclass(frozen=True, slots=True)
class Request:
    """One GET to send: query parameters (in order) and extra headers."""

    params: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    live: Live

    def query(self) -> str:
        """The query string, percent-encoded (unreserved values as they are)."""
        return "&".join([
            f"{k}={v if _UNRESERVED.match(v) else quote(v, safe='')}" for k, v in self.params])

    def url(self, base: str) -> str:
        sep = "&" if "?" in base else "?"
        return base + sep + self.query()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where to resume after everything before it, and what the server said."""

    next_offset: str
    cursor: str | None = None
    up_to_date: bool = False
    closed: bool = False
    #: The HTTP status of the answer it ends (204: a long-poll timed out).
    status: int = 200


@dataclass(frozen=True, slots=True)
class Batch:
    """Values of one answer (or SSE data event); all resume at ``offset``.

    ``start`` is the offset the answer was read from; ``first`` the position
    of ``values[0]`` in that answer (several batches may frame one big answer).
    """

    values: list[Any]
    start: str
    offset: str
    first: int = 0


@dataclass(frozen=True, slots=True)
class Head:
    """An interpreted answer head. ``ok`` False: see ``transient`` and ``retry_after``."""

    status: int
    ok: bool
    transient: bool = False
    retry_after: float | None = None


#: The heads of usable answers (immutable: one each, shared).
_HEAD_OK = {status: Head(status, True) for status in (200, 204, 304)}


class ReadCore:
    """The rules of one read, from ``offset`` on, in one live mode.

    ``live="catch-up"`` reads until up to date (or ``until``, or closed);
    ``"long-poll"`` / ``"sse"`` catch up first (unless ``kind`` is given) and
    then follow the stream until it is closed. ``max_message_bytes`` bounds one
    message (or one text/bytes chunk, or one SSE event), never a whole answer.
    """

    def __init__(self, *, offset: str = "-1", live: Live = "catch-up",
                 cursor: str | None = None, until: str | None = None,
                 kind: Kind | None = None, max_message_bytes: int = 1024 * 1024,
                 url: str | None = None, use_etag: bool = False,
                 extra_params: tuple[tuple[str, str], ...] = ()) -> None:
        if live not in ("catch-up", "long-poll", "sse"):
            raise ConfigError(f"live must be 'catch-up', 'long-poll' or 'sse', got {live!r}")
        # (check_offset's test inline: a read starts every wake; it names the error)
        if not isinstance(offset, str) or not _CALLER_OFFSET_RE.match(offset):
            check_offset(offset)
        if until is not None:
            if not isinstance(until, str) or not _CALLER_OFFSET_RE.match(until):
                check_offset(until, "until")
            if until in SENTINELS:
                raise ConfigError("until must be an offset token, not '-1' or 'now'")
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) \
                or max_message_bytes <= 0:
            raise ConfigError("max_message_bytes must be a positive int")
        reserved = {k for k, _ in extra_params} & {"offset", "live", "cursor"} \
            if extra_params else None
        if reserved:
            raise ConfigError(f"extra params must not set {', '.join(sorted(reserved))}")
        self.offset = offset
        self.live = live
        self.cursor = cursor
        self.until = until
        self.kind: Kind | None = kind
        self.max_message_bytes = max_message_bytes
        self.url = url
        self.use_etag = use_etag
        self.extra_params = extra_params
        self.up_to_date = False
        self.closed = False
        self.done = until is not None and offset not in SENTINELS and offset >= until
        self.etag: str | None = None
        self.content_type: str | None = None
        # per answer
        self._mode: Live = "catch-up"
        self._start = offset
        self._framer: BodyFramer | None = None
        self._sse: SSEParser | None = None
        self._base64 = False
        self._pending: list[Any] = []
        self._head: Mapping[str, str] | None = None
        self._next: str | None = None  # the answer's Stream-Next-Offset, as sent
        self._emitted = 0  # values delivered from the current answer
        self._drop = 0  # values to drop from a retried answer (already delivered)
        self._not_modified = False
        self._status = 200

    # ----------------------------------------------------------- requests

    def _reached(self, offset: str) -> bool:
        return self.until is not None and offset not in SENTINELS and offset >= self.until

    def _next_mode(self) -> Live:
        if self.live == "catch-up":
            return "catch-up"
        if self.up_to_date or self.kind is not None:
            return self.live
        if self.live == "long-poll" and self.offset == "now":
            return "long-poll"  # §8: wait at the tail at once; an answer with data names its type
        return "catch-up"  # learn the content type (and catch up) first

    def request(self) -> Request:
        """The next request. Do not call once ``done``."""
        mode = self.live if self.live == "catch-up" else self._next_mode()
        params: list[tuple[str, str]] = [("offset", self.offset)]
        headers: list[tuple[str, str]] = []
        if mode != "catch-up":
            params.append(("live", mode))
            if self.cursor:
                params.append(("cursor", self.cursor))
        if mode == "sse":
            headers.append(("Accept", "text/event-stream"))
        elif mode == "catch-up" and self.use_etag and self.etag:
            headers.append(("If-None-Match", self.etag))
        params.extend(self.extra_params)
        self._mode = mode
        return Request(tuple(params), tuple(headers), mode)

    # ------------------------------------------------------------ answers

    def head(self, status: int, headers: Mapping[str, str]) -> Head:
        """Interpret a status and headers (case-insensitive mapping)."""
        mode = self._mode
        ok = status == 200 or (status == 204 and mode == "long-poll") or (
            status == 204 and mode == "catch-up") or (status == 304 and mode == "catch-up"
                                                       and self.etag is not None)
        if not ok:
            transient = status >= 500 or status == 429
            return Head(status, False, transient,
                        parse_retry_after(headers.get("Retry-After")) if transient else None)
        self._head = headers
        self._next = headers.get("Stream-Next-Offset")
        self._start = self.offset
        self._not_modified = status == 304
        self._status = status
        self._pending = []
        self._emitted = 0
        if mode == "sse":
            ctype = headers.get("Content-Type", "")
            if not ctype.lower().startswith("text/event-stream"):
                raise ProtocolError(f"SSE read answered with content-type {ctype!r}",
                                    url=self.url)
            self._base64 = headers.get("stream-sse-data-encoding", "").strip().lower() \
                == "base64"
            self._sse = SSEParser(self.max_message_bytes * 4 // 3 + 1024)
            self._framer = None
            return _HEAD_OK[status]
        if status == 200:
            body_type = headers.get("Content-Type")
            if body_type or self.kind is None:
                self.content_type = body_type or self.content_type
                self.kind = kind_of(body_type)
            self._framer = BodyFramer(self.kind, self.max_message_bytes)
        else:
            self._framer = None
        return _HEAD_OK[status]

    def status_error(self, status: int, body: bytes,
                     secrets: tuple[str, ...] = ()) -> StreamStatusError:
        """The typed error for a status that is not an answer (body: its first bytes)."""
        code = None
        text = body[:ERROR_BODY_LIMIT]
        if text.lstrip()[:1] == b"{":
            try:
                code = error_code(json.loads(text))
            except (ValueError, RecursionError):
                code = None
        if code is not None:
            code = redact_text(code, secrets)  # a server may echo a token as its "code"
        return StreamStatusError(status, url=self.url,
                                 code=code or _FALLBACK_CODES.get(status))

    def feed(self, data: bytes) -> list[Event]:
        """Frame body bytes; returns the events they complete."""
        if self._sse is not None:
            return self._sse_events(self._sse.feed(data))
        if self._framer is None or not data:
            return []
        values = self._framer.feed(data)  # (usually none: a small body is framed at its end)
        return self._batch(values) if values else []

    def end(self) -> list[Event]:
        """The body ended normally. For SSE: the server closed the connection."""
        if self._sse is not None:
            parser, self._sse = self._sse, None
            if parser.pending and not self.closed:
                raise ProtocolError("SSE connection closed mid-event", url=self.url)
            self._drop = 0
            return []  # reconnect from self.offset unless closed (done is set then)
        headers = self._head or {}
        framer, self._framer = self._framer, None
        out = self._batch(framer.finish()) if framer is not None else []
        if self._not_modified:
            nxt = self.offset  # 304: nothing new at this offset
        else:
            nxt_raw = self._next
            if nxt_raw is None:
                raise ProtocolError("answer has no Stream-Next-Offset header", url=self.url)
            if not (isinstance(nxt_raw, str) and _SERVER_OFFSET_RE.match(nxt_raw)) \
                    or nxt_raw in SENTINELS:  # (valid_offset inline)
                raise ProtocolError("answer has an invalid Stream-Next-Offset header",
                                    url=self.url)
            nxt = nxt_raw
        if self.offset not in SENTINELS and nxt < self.offset:
            raise OffsetsWentBack("Stream-Next-Offset moved backwards", url=self.url)
        etag = headers.get("ETag")
        if etag and self._mode == "catch-up" and not self._not_modified:
            self.etag = etag
        cursor = headers.get("Stream-Cursor") or self.cursor
        # (_true inline, exact "true" first: both are read every answer)
        flag = headers.get("Stream-Closed")
        closed = flag is not None and (flag == "true" or _true(flag))
        flag = headers.get("Stream-Up-To-Date")
        up_to_date = closed or (flag is not None and (flag == "true" or _true(flag))) \
            or self._not_modified
        advanced = nxt != self.offset
        out = self._stamp(out, nxt)
        self._drop = 0
        self.offset, self.cursor = nxt, cursor
        self.up_to_date, self.closed = up_to_date, closed
        out.append(Checkpoint(nxt, cursor, up_to_date, closed, self._status))
        until = self.until
        if closed or (self.live == "catch-up" and (up_to_date or (
                until is not None and nxt not in SENTINELS and nxt >= until))):  # _reached
            self.done = True
        elif self.live == "catch-up" and not advanced:
            raise ProtocolError("the server did not say up to date, yet "
                                "Stream-Next-Offset did not move", url=self.url)
        return out

    def broken(self) -> None:
        """The answer was cut (connection lost): the retried one skips what was delivered."""
        if self._framer is not None:
            self._drop = self._emitted
        self._framer = None
        self._sse = None
        self._pending = []

    # ------------------------------------------------------------ helpers

    def _batch(self, values: list[Any]) -> list[Event]:
        if not values:
            return []
        if self._drop:
            cut = min(self._drop, len(values))
            self._drop -= cut
            self._emitted += cut
            values = values[cut:]
            if not values:
                return []
        first = self._emitted
        self._emitted += len(values)
        return [Batch(values, self._start, self._next or self.offset, first)]

    def _stamp(self, events: list[Event], nxt: str) -> list[Event]:
        for e in events:
            if type(e) is Batch and e.offset != nxt:
                break
        else:
            return events  # (the usual case: stamped with this offset when framed)
        return [Batch(e.values, e.start, nxt, e.first) if isinstance(e, Batch)
                and e.offset != nxt else e for e in events]

    def _sse_events(self, events: list[Any]) -> list[Event]:
        """The read events of SSE events, twice a wake: the common ones are decided
        here (a data event that is one JSON array surely within the limit, a control
        event that is one JSON object), the rest by :meth:`_sse_event`, which decides
        these the same way (tests/test_wake_fast_paths.py compares them)."""
        out: list[Event] = []
        for ev in events:
            if type(ev) is SSEEvent:
                name = ev.event
                if name == "data":
                    kind = self.kind
                    if not self._base64 and (kind is None or kind == "json"):
                        text = ev.data
                        if len(text) * 4 <= self.max_message_bytes:  # small_array's test
                            values = whole_json(text)
                            if type(values) is list:
                                self._pending += values
                                continue
                elif name == "control":
                    ctl = whole_json(ev.data)
                    if type(ctl) is dict:
                        self._control(ctl, out)
                        continue
            out.extend(self._sse_event(ev))
        return out

    def _sse_event(self, ev: Any) -> Sequence[Event]:
        if isinstance(ev, Oversized):
            if ev.event == "control":
                raise ProtocolError("SSE control event exceeds the size limit", url=self.url)
            self._pending.append(Rejected(OversizedMessage(
                f"SSE {ev.event} event of {ev.size} bytes exceeds the {ev.limit}-byte limit",
                size=ev.size)))
            return ()
        if ev.event == "data":
            values = None if self._base64 or self.kind not in (None, "json") else \
                small_array(ev.data, self.max_message_bytes)  # the common event, at once
            self._pending.extend(values if values is not None else frame_sse_data(
                ev.data, self.kind or "json", base64=self._base64, limit=self.max_message_bytes))
            return ()
        if ev.event != "control":
            return ()  # unknown event types are ignored (forward compatible)
        ctl = loads_or_none(ev.data)
        if not isinstance(ctl, dict):
            # Skippable on the wake stream (the next control event carries the
            # offset); a read for a caller raises it.
            return [Rejected(MalformedMessage("SSE control event is not a JSON object"))]
        out: list[Event] = []
        self._control(ctl, out)
        return out

    def _control(self, ctl: dict[str, Any], out: list[Event]) -> None:
        """Apply one control event (a JSON object): its checkpoint, after the values of
        the data events before it, appended to ``out``."""
        nxt: Any = ctl.get("streamNextOffset")
        if not valid_offset(nxt):
            # The offset to resume from is unknown: the answer cannot be used at all.
            raise ProtocolError("SSE control event without a valid streamNextOffset",
                                url=self.url)
        if self.offset not in SENTINELS and nxt < self.offset:
            raise OffsetsWentBack("SSE streamNextOffset moved backwards", url=self.url)
        if self._pending:
            out.append(Batch(self._pending, self.offset, nxt, 0))
            self._pending = []
        cursor = ctl.get("streamCursor")
        self.cursor = cursor if isinstance(cursor, str) and cursor else self.cursor
        self.closed = ctl.get("streamClosed") is True
        self.up_to_date = self.closed or ctl.get("upToDate") is True
        self.offset = nxt
        out.append(Checkpoint(nxt, self.cursor, self.up_to_date, self.closed))
        if self.closed:
            self.done = True
