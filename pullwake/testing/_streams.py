"""In-memory Durable Streams storage for the embedded test server.

This module owns the stream data model of :mod:`pullwake.testing.server`:
streams keyed by their server path (``/v1/stream/wake/pool``,
``/runners/r1/wake``), offsets, JSON message framing, the long-poll wait, the
``Stream-Cursor`` arithmetic and the subscription glob. It knows nothing of
HTTP; the server module turns its results and :class:`StoreError` into
responses.

Faithful to ``@durable-streams/server`` 0.3.7 (``store.ts``, ``cursor.ts``,
``glob.ts``), checked against the running server:

* An offset is ``<readSeq:16 digits>_<byteOffset:16 digits>``; every append adds
  ``5 + len(fragment)`` bytes, where the fragment is the normalized JSON of the
  value(s) each followed by a comma. Offsets sort as strings.
* A JSON POST of an array appends ONE message holding each element (one offset
  for the whole array); an empty array is refused (400) except at create.
* Reads return every message after the offset (the server never paginates, so
  ``Stream-Up-To-Date`` is always true) as one JSON array of values. "After"
  compares the byte part of offsets, as the file-backed store (``dataDir``)
  does; the reference memory store compares whole strings instead, which only
  differs for offsets the server never issued.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ZERO_OFFSET = "0000000000000000_0000000000000000"
BEFORE_FIRST_OFFSET = "-1"
FRAME_OVERHEAD_BYTES = 5
OFFSET_RE = re.compile(r"(-1|now|\d+_\d+)\Z")

#: cursor.ts: intervals of 20 s counted from 2024-10-09T00:00:00Z.
CURSOR_EPOCH_MS = 1_728_432_000_000
DEFAULT_CURSOR_INTERVAL_SECONDS = 20
_MAX_JITTER_SECONDS = 3600


class StoreError(Exception):
    """A request the store refuses; ``status`` and ``text`` are the plain-text answer."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def format_offset(read_seq: int, byte_offset: int) -> str:
    return f"{read_seq:016d}_{byte_offset:016d}"


def byte_position(offset: str | None) -> int:
    """The byte part of an offset; ``-1`` / None / no byte part count as 0."""
    if not offset or "_" not in offset:
        return 0
    tail = offset.split("_", 1)[1]
    return int(tail) if tail.isdigit() else 0


def normalize_content_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _js_numbers(value: Any) -> Any:
    """Make ``json.dumps`` print integral floats the way ``JSON.stringify`` does (1.0 -> 1)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, list):
        return [_js_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _js_numbers(v) for k, v in value.items()}
    return value


def js_stringify(value: Any) -> str:
    """``JSON.stringify`` for the values tests use (compact, unescaped unicode)."""
    return json.dumps(_js_numbers(value), separators=(",", ":"), ensure_ascii=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes) -> Any:
    """``JSON.parse``: strict (no NaN / Infinity); raises ValueError."""
    return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)


@dataclass
class Message:
    """One append: its end offset, its stored bytes and (JSON streams) its values."""

    offset: str
    data: bytes
    values: tuple[Any, ...] = ()


@dataclass
class Stream:
    path: str
    content_type: str
    messages: list[Message] = field(default_factory=list)
    current_offset: str = ZERO_OFFSET
    closed: bool = False

    @property
    def is_json(self) -> bool:
        return normalize_content_type(self.content_type) == "application/json"


@dataclass
class WaitResult:
    messages: list[Message]
    timed_out: bool
    stream_closed: bool = False


def _enrich_with_offset(value: Any, offset: str) -> Any:
    """store.ts: state-protocol messages (``headers.operation|control``) get ``headers.offset``."""
    if not isinstance(value, dict):
        return value
    headers = value.get("headers")
    if not isinstance(headers, dict):
        return value
    if not isinstance(headers.get("operation"), str) and not isinstance(
        headers.get("control"), str
    ):
        return value
    return {**value, "headers": {**headers, "offset": offset}}


class StreamStore:
    """All streams of one embedded server, plus the waiters of long-polls and SSE."""

    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}
        self._waiters: dict[str, set[asyncio.Future[str]]] = {}

    # ------------------------------------------------------------------ queries

    def get(self, path: str) -> Stream | None:
        return self.streams.get(path)

    def has(self, path: str) -> bool:
        return path in self.streams

    def paths(self) -> list[str]:
        return list(self.streams)

    def require(self, path: str) -> Stream:
        stream = self.streams.get(path)
        if stream is None:
            raise StoreError(404, "Stream not found")
        return stream

    def read(self, path: str, offset: str | None) -> list[Message]:
        """Messages ending after ``offset``, compared by byte position like the
        file-backed store (``9999_0001`` reads from byte 1, not past the tail)."""
        stream = self.require(path)
        start = byte_position(offset)
        return [m for m in stream.messages if byte_position(m.offset) > start]

    def format_response(self, stream: Stream, messages: Iterable[Message]) -> bytes:
        if not stream.is_json:
            return b"".join(m.data for m in messages)
        items = [
            js_stringify(_enrich_with_offset(value, m.offset))
            for m in messages
            for value in m.values
        ]
        return ("[" + ",".join(items) + "]").encode("utf-8")

    # ---------------------------------------------------------------- mutations

    def create(
        self,
        path: str,
        *,
        content_type: str | None,
        initial_data: bytes = b"",
        closed: bool = False,
    ) -> tuple[Stream, bool]:
        """PUT: returns (stream, created). Same config again is idempotent, else 409."""
        ctype = content_type or "application/octet-stream"
        existing = self.streams.get(path)
        if existing is not None:
            same_type = (normalize_content_type(ctype) or "application/octet-stream") == (
                normalize_content_type(existing.content_type) or "application/octet-stream"
            )
            if same_type and closed == existing.closed:
                return existing, False
            raise StoreError(409, "Stream already exists with different configuration")
        stream = Stream(path=path, content_type=ctype)
        if initial_data:
            self._append_to(stream, initial_data, initial=True)
        stream.closed = closed
        self.streams[path] = stream
        return stream, True

    def append(
        self,
        path: str,
        data: bytes,
        *,
        content_type: str | None = None,
        close: bool = False,
    ) -> Message | None:
        """POST: append one message. None means the stream is closed (409 upstream)."""
        stream = self.require(path)
        if stream.closed:
            return None
        if content_type and stream.content_type and normalize_content_type(
            content_type
        ) != normalize_content_type(stream.content_type):
            raise StoreError(409, "Content-type mismatch")
        message = self._append_to(stream, data, initial=False)
        assert message is not None
        if close:
            stream.closed = True
        self._notify(path)
        return message

    def append_value(self, path: str, value: Any) -> Message | None:
        """Append a JSON value (an array appends its elements as one message)."""
        return self.append(path, js_stringify(value).encode("utf-8"))

    def close_stream(self, path: str) -> str:
        stream = self.require(path)
        stream.closed = True
        self._notify(path)
        return stream.current_offset

    def delete(self, path: str) -> None:
        self.require(path)
        del self.streams[path]
        self._notify(path, reason="cancel")

    def _append_to(self, stream: Stream, data: bytes, *, initial: bool) -> Message | None:
        values: tuple[Any, ...] = ()
        fragment = data
        if stream.is_json:
            try:
                parsed = parse_json(data)
            except ValueError as exc:
                raise StoreError(400, "Invalid JSON") from exc
            if isinstance(parsed, list):
                if not parsed:
                    if initial:
                        return None
                    raise StoreError(400, "Empty arrays are not allowed")
                values = tuple(parsed)
            else:
                values = (parsed,)
            fragment = "".join(js_stringify(v) + "," for v in values).encode("utf-8")
        read_seq, byte_offset = (int(part) for part in stream.current_offset.split("_"))
        offset = format_offset(read_seq, byte_offset + FRAME_OVERHEAD_BYTES + len(fragment))
        message = Message(offset=offset, data=fragment, values=values)
        stream.messages.append(message)
        stream.current_offset = offset
        return message

    # ---------------------------------------------------------------- waiting

    def _notify(self, path: str, reason: str = "data") -> None:
        for fut in self._waiters.pop(path, set()):
            if not fut.done():
                fut.set_result(reason)

    def cancel_all_waits(self) -> None:
        """Shutdown: every waiter wakes with no data (long-polls answer 200 ``[]``)."""
        for path in list(self._waiters):
            self._notify(path, reason="cancel")

    async def wait_for_messages(self, path: str, offset: str, timeout: float) -> WaitResult:
        stream = self.require(path)
        messages = self.read(path, offset)
        if messages:
            return WaitResult(messages, timed_out=False)
        if stream.closed and offset == stream.current_offset:
            return WaitResult([], timed_out=False, stream_closed=True)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(path, set()).add(fut)
        try:
            done, _ = await asyncio.wait({fut}, timeout=max(0.0, timeout))
        finally:
            waiters = self._waiters.get(path)
            if waiters is not None:
                waiters.discard(fut)
            if not fut.done():
                fut.cancel()
        current = self.streams.get(path)
        if not done:
            return WaitResult([], timed_out=True, stream_closed=bool(current and current.closed))
        if fut.result() == "cancel" or current is None:
            return WaitResult([], timed_out=False)
        messages = self.read(path, offset)
        return WaitResult(messages, timed_out=False, stream_closed=current.closed and not messages)


# ------------------------------------------------------------------------ cursors


def calculate_cursor(interval_seconds: int = DEFAULT_CURSOR_INTERVAL_SECONDS) -> str:
    now_ms = time.time() * 1000
    return str(math.floor((now_ms - CURSOR_EPOCH_MS) / (interval_seconds * 1000)))


def _leading_int(text: str) -> int | None:
    """``parseInt`` semantics: the leading (signed) digits, or None."""
    match = re.match(r"^\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else None


def response_cursor(
    client_cursor: str | None, interval_seconds: int = DEFAULT_CURSOR_INTERVAL_SECONDS
) -> str:
    """cursor.ts ``generateResponseCursor``: never echo a cursor <= the client's."""
    current = calculate_cursor(interval_seconds)
    if not client_cursor:
        return current
    client = _leading_int(client_cursor)
    if client is None or client < int(current):
        return current
    jitter_seconds = 1 + random.randrange(_MAX_JITTER_SECONDS)
    return str(client + max(1, math.ceil(jitter_seconds / interval_seconds)))


# --------------------------------------------------------------------------- glob


def _split_glob(path: str) -> list[str]:
    return [part for part in path.strip("/").split("/") if part]


def glob_match(pattern: str, path: str) -> bool:
    """glob.ts: ``*`` is one segment, ``**`` zero or more, ``%2A`` a literal ``*``."""
    return _match_parts(_split_glob(pattern), 0, _split_glob(path), 0)


def _match_parts(pattern: list[str], pi: int, path: list[str], si: int) -> bool:
    while pi < len(pattern) and si < len(path):
        seg = pattern[pi]
        if seg == "**":
            return any(_match_parts(pattern, pi + 1, path, i) for i in range(si, len(path) + 1))
        if seg != "*" and re.sub(r"%2[Aa]", "*", seg) != path[si]:
            return False
        pi += 1
        si += 1
    while pi < len(pattern) and pattern[pi] == "**":
        pi += 1
    return pi == len(pattern) and si == len(path)
