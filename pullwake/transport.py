"""The wake-stream transport: a Durable Streams live read of a JSON stream.

This module owns the read protocol (PROTOCOL.md §5.6–5.8): offsets, the
``Stream-Next-Offset`` / ``Stream-Cursor`` / ``Stream-Up-To-Date`` /
``Stream-Closed`` headers, SSE ``control`` and ``data`` events, long-poll
request chaining with cursor echo. It turns a live read into a stream of
:data:`StreamItem`:

- :class:`Message` — one decoded JSON message;
- :class:`Checkpoint` — the offset to resume from after everything before it,
  and whether the stream is up to date or closed (closed ends the session);
- :class:`BadMessage` — one message that was malformed, of the wrong shape or
  oversized: reported and skipped; the next checkpoint moves past it.

A response that cannot be framed (a broken long-poll body, a connection cut
mid-event, a missing offset header) raises :class:`~pullwake.errors.ProtocolError`
and ends the session; the runner reconnects from its last good offset.

The seam is :data:`StreamFactory`: ``await factory(request)`` returns a
:class:`WakeStream` once response headers arrived (the connect phase) and the
runner iterates it (the read phase, each read bounded by the idle timeout).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from .clock import Clock, deadline
from .errors import (
    MalformedMessage,
    MessageError,
    OversizedMessage,
    ProtocolError,
    StreamStatusError,
    redact_text,
)
from .http import error_code, read_bounded, to_url, translate
from .sse import Oversized, SSEEvent, SSEParser

__all__ = [
    "BadMessage",
    "Checkpoint",
    "Message",
    "StreamFactory",
    "StreamItem",
    "StreamRequest",
    "WakeStream",
    "aiohttp_stream_factory",
    "valid_offset",
]

#: Live reads override the session's timeouts: a caller's session may carry
#: aiohttp's cumulative ``total`` (300 s by default), which would cut a healthy
#: live stream. pullwake's own deadlines bound every phase instead.
_LIVE_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None,
                                      sock_read=None)

#: Offsets are opaque, but must be sane: printable ASCII, bounded length.
_OFFSET_RE = re.compile(r"^[\x21-\x7e]{1,256}$")


def valid_offset(value: object) -> bool:
    return isinstance(value, str) and bool(_OFFSET_RE.match(value))


@dataclass(frozen=True, slots=True)
class Message:
    value: Any


@dataclass(frozen=True, slots=True)
class Checkpoint:
    next_offset: str
    cursor: str | None = None
    up_to_date: bool = False
    closed: bool = False


@dataclass(frozen=True, slots=True)
class BadMessage:
    error: MessageError


StreamItem = Message | Checkpoint | BadMessage


@dataclass(frozen=True)
class StreamRequest:
    """Everything a stream factory needs for one connection attempt."""

    url: str
    offset: str
    live: str = "sse"
    cursor: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    read_idle_timeout: float = 45.0
    max_message_bytes: int = 1024 * 1024
    max_response_bytes: int = 16 * 1024 * 1024
    clock: Clock | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)


class WakeStream(Protocol):
    """An open live read. Iterate it for items; ``close()`` is sync and idempotent."""

    def __aiter__(self) -> AsyncIterator[StreamItem]: ...
    def close(self) -> None: ...


StreamFactory = Callable[[StreamRequest], Awaitable[WakeStream]]


def _query(url: str, params: Mapping[str, str]) -> str:
    from urllib.parse import quote

    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())


def _params(offset: str, live: str, cursor: str | None) -> dict[str, str]:
    p = {"offset": offset, "live": live}
    if cursor:
        p["cursor"] = cursor
    return p


async def _status_error(resp: aiohttp.ClientResponse, url: str,
                        secrets: tuple[str, ...] = ()) -> StreamStatusError:
    code = None
    try:
        body = await read_bounded(resp, 64 * 1024)
        code = error_code(json.loads(body)) if body else None
    except Exception:  # noqa: BLE001 - best effort: the status is the error
        code = None
    if code is not None:
        code = redact_text(code, secrets)  # a server may echo a token as its "code"
    return StreamStatusError(resp.status, url=url, code=code)


def _decode_array(body: bytes, *, max_message_bytes: int, what: str,
                  ) -> tuple[list[StreamItem], MessageError | None]:
    """Decode a JSON array of messages. Returns (items, whole-body error)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return [], MalformedMessage(f"{what} is not valid JSON: {exc.__class__.__name__}")
    if not isinstance(value, list):
        value = [value]
    items: list[StreamItem] = []
    check_each = len(body) > max_message_bytes
    for v in value:
        if check_each:
            size = len(json.dumps(v, separators=(",", ":")))
            if size > max_message_bytes:
                items.append(BadMessage(OversizedMessage(
                    f"message of {size} bytes exceeds the {max_message_bytes}-byte limit",
                    size=size)))
                continue
        items.append(Message(v))
    return items, None


class _SSEStream:
    """A Durable Streams SSE live read over one aiohttp response."""

    def __init__(self, resp: aiohttp.ClientResponse, req: StreamRequest, clock: Clock) -> None:
        self._resp = resp
        self._req = req
        self._clock = clock
        self._parser = SSEParser(req.max_message_bytes)

    def close(self) -> None:
        self._resp.close()

    async def __aiter__(self) -> AsyncIterator[StreamItem]:
        req = self._req
        content = self._resp.content
        while True:
            with translate("read", url=req.url, secrets=req.secrets):
                async with deadline(self._clock, req.read_idle_timeout):
                    chunk = await content.readany()
            if not chunk:
                if self._parser.pending:
                    raise ProtocolError("connection closed mid-event", url=req.url)
                return
            for ev in self._parser.feed(chunk):
                for item in self._items(ev):
                    yield item

    def _items(self, ev: SSEEvent | Oversized) -> list[StreamItem]:
        if isinstance(ev, Oversized):
            return [BadMessage(OversizedMessage(
                f"SSE {ev.event} event of {ev.size} bytes exceeds the {ev.limit}-byte limit",
                size=ev.size))]
        if ev.event == "data":
            items, err = _decode_array(ev.data.encode(), what="SSE data event",
                                       max_message_bytes=self._req.max_message_bytes)
            return [BadMessage(err)] if err else items
        if ev.event == "control":
            try:
                ctl = json.loads(ev.data)
            except ValueError:
                return [BadMessage(MalformedMessage("SSE control event is not valid JSON"))]
            if not isinstance(ctl, dict):
                return [BadMessage(MalformedMessage("SSE control event is not an object"))]
            nxt = ctl.get("streamNextOffset")
            if not valid_offset(nxt):
                raise ProtocolError("SSE control event without a valid streamNextOffset",
                                    url=self._req.url)
            cursor = ctl.get("streamCursor")
            return [Checkpoint(
                next_offset=str(nxt),
                cursor=cursor if isinstance(cursor, str) else None,
                up_to_date=ctl.get("upToDate") is True,
                closed=ctl.get("streamClosed") is True,
            )]
        return []  # unknown event types are ignored (forward compatible)


class _LongPollStream:
    """A chain of long-poll requests; the first response was received at connect."""

    def __init__(self, session: aiohttp.ClientSession, resp: aiohttp.ClientResponse,
                 req: StreamRequest, clock: Clock) -> None:
        self._session = session
        self._resp: aiohttp.ClientResponse | None = resp
        self._req = req
        self._clock = clock
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if self._resp is not None:
            self._resp.close()

    async def __aiter__(self) -> AsyncIterator[StreamItem]:
        req = self._req
        offset, cursor = req.offset, req.cursor
        while not self._closed:
            if self._resp is None:
                url = _query(req.url, _params(offset, "long-poll", cursor))
                # The server holds a long-poll open up to its own timeout; a
                # silent server is bounded by the idle timeout as a whole.
                with translate("read", url=req.url, secrets=req.secrets):
                    async with deadline(self._clock, req.read_idle_timeout):
                        self._resp = await self._session.get(
                            to_url(url), headers=dict(req.headers), allow_redirects=False,
                            timeout=_LIVE_TIMEOUT)
                        if self._resp.status not in (200, 204):
                            raise await _status_error(self._resp, req.url, req.secrets)
                        body = await self._read_body(self._resp)
            else:
                with translate("read", url=req.url, secrets=req.secrets):
                    async with deadline(self._clock, req.read_idle_timeout):
                        body = await self._read_body(self._resp)
            resp, self._resp = self._resp, None
            if body is None:
                resp.close()  # the rest of an oversized body is never read
            else:
                resp.release()
            nxt = resp.headers.get("Stream-Next-Offset")
            if not valid_offset(nxt):
                raise ProtocolError("long-poll answer without a valid Stream-Next-Offset",
                                    url=req.url)
            assert nxt is not None
            if body is None:
                # Too big to frame; reconnecting would fetch it again forever.
                # Skip it whole: the offset moves to its Stream-Next-Offset.
                yield BadMessage(OversizedMessage(
                    f"long-poll answer larger than max_response_bytes "
                    f"({req.max_response_bytes}) skipped", offset=nxt))
            elif body:
                items, err = _decode_array(body, what="long-poll body",
                                           max_message_bytes=req.max_message_bytes)
                if err is not None:
                    raise ProtocolError(f"cannot frame the long-poll body: {err}", url=req.url)
                for item in items:
                    yield item
            cursor = resp.headers.get("Stream-Cursor") or cursor
            closed = resp.headers.get("Stream-Closed", "").lower() == "true"
            yield Checkpoint(next_offset=nxt, cursor=cursor,
                             up_to_date=resp.headers.get("Stream-Up-To-Date", "").lower()
                             == "true", closed=closed)
            if closed:
                return
            offset = nxt

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes | None:
        """The body, or None once it passes ``max_response_bytes`` (then it is skipped)."""
        if resp.status == 204:
            return b""
        limit = self._req.max_response_bytes
        if resp.content_length is not None and resp.content_length > limit:
            return None
        buf = bytearray()
        async for chunk in resp.content.iter_any():
            buf += chunk
            if len(buf) > limit:
                return None
        return bytes(buf)


def aiohttp_stream_factory(session_getter: Callable[[], aiohttp.ClientSession],
                           clock: Clock) -> StreamFactory:
    """The default factory: live reads with aiohttp on the runner's session."""

    async def open_stream(req: StreamRequest) -> WakeStream:
        session = session_getter()
        if req.live == "sse":
            url = _query(req.url, _params(req.offset, req.live, req.cursor))
        else:
            # Long-poll connects with a catch-up read, which the server answers at
            # once. A long-poll at the tail is held open for the server's own
            # timeout (30 s on the reference server), longer than connect_timeout;
            # the polls that follow are reads, bounded by read_idle_timeout.
            url = _query(req.url, {"offset": req.offset})
        headers = dict(req.headers)
        if req.live == "sse":
            headers.setdefault("Accept", "text/event-stream")
        with translate("connect", url=req.url, secrets=req.secrets):
            resp = await session.get(to_url(url), headers=headers, allow_redirects=False,
                                     timeout=_LIVE_TIMEOUT)
        try:
            if req.live == "sse":
                if resp.status != 200:
                    raise await _status_error(resp, req.url, req.secrets)
                ctype = resp.headers.get("Content-Type", "")
                if not ctype.startswith("text/event-stream"):
                    raise ProtocolError(f"SSE read answered with content-type {ctype!r}",
                                        url=req.url)
                return _SSEStream(resp, req, clock)
            if resp.status not in (200, 204):
                raise await _status_error(resp, req.url, req.secrets)
            return _LongPollStream(session, resp, req, clock)
        except BaseException:
            resp.close()
            raise

    return open_stream


async def catch_up(
    session: aiohttp.ClientSession,
    url: str,
    offset: str,
    *,
    until: str | None = None,
    headers: Mapping[str, str] | None = None,
    clock: Clock,
    timeout: float,
    max_response_bytes: int = 16 * 1024 * 1024,
    max_message_bytes: int = 1024 * 1024,
    secrets: tuple[str, ...] = (),
) -> AsyncIterator[tuple[list[Any], str]]:
    """Catch-up read: yield ``(messages, next_offset)`` chunks from ``offset``.

    Stops when the server says up to date or closed, or once ``next_offset >=
    until`` (reads cannot be bounded on the server, so the last chunk may run
    past ``until``). Each request is bounded by ``timeout`` as a whole; an
    oversized or malformed message is a typed error, not skipped: a handler
    asked for exactly these messages.
    """
    current = offset
    while True:
        with translate("request", url=url, operation="read", secrets=secrets):
            async with deadline(clock, timeout):
                async with session.get(to_url(_query(url, {"offset": current})),
                                       headers=dict(headers or {}),
                                       allow_redirects=False) as resp:
                    if resp.status not in (200, 204):
                        raise await _status_error(resp, url, secrets)
                    body = b"" if resp.status == 204 else await read_bounded(
                        resp, max_response_bytes)
                    nxt = resp.headers.get("Stream-Next-Offset")
                    up_to_date = resp.headers.get("Stream-Up-To-Date", "").lower() == "true"
                    closed = resp.headers.get("Stream-Closed", "").lower() == "true"
        if not valid_offset(nxt):
            raise ProtocolError("catch-up answer without a valid Stream-Next-Offset", url=url)
        assert nxt is not None
        messages: list[Any] = []
        if body:
            items, err = _decode_array(body, what="catch-up body",
                                       max_message_bytes=max_message_bytes)
            if err is not None:
                raise err
            for item in items:
                if isinstance(item, BadMessage):
                    raise item.error
                if isinstance(item, Message):
                    messages.append(item.value)
        yield messages, nxt
        if up_to_date or closed or nxt == current or (until is not None and nxt >= until):
            return
        current = nxt
