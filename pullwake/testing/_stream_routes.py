"""The stream routes of the embedded server: PUT, HEAD, POST, GET (catch-up, long-poll, SSE).

This module owns what :mod:`pullwake.testing.server` answers on
``/v1/stream/<path>`` apart from DELETE: create (content type and closed
compared like the reference server's PUT), HEAD, append (JSON arrays, close),
and reads: offsets (``-1``, ``now``, tokens), long-polls held up to the
server's timeout, SSE ``data`` / ``control`` events (base64 for binary
streams), ``Stream-Cursor``, ``ETag`` / ``If-None-Match``, gzip / deflate
above :data:`COMPRESSION_THRESHOLD_BYTES`, and a body fault of a read. It reads
the server through :class:`StreamHost` (its store, subscriptions, settings,
pause gate and shutdown flag), each time, because a restart replaces them.
Storage is :mod:`pullwake.testing._streams`'; routing and the other faults are
the server's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import zlib
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from pullwake.testing._faults import Fault, corrupt
from pullwake.testing._http import (
    BASE_HEADERS,
    abort,
    encode_sse_data,
    looks_like_media_type,
    pick_encoding,
    respond,
    text_answer,
)
from pullwake.testing._streams import (
    OFFSET_RE,
    Message,
    StoreError,
    Stream,
    StreamStore,
    js_stringify,
    response_cursor,
)
from pullwake.testing._subscriptions import SubscriptionManager

__all__ = ["COMPRESSION_THRESHOLD_BYTES", "StreamHost", "StreamRoutes"]

COMPRESSION_THRESHOLD_BYTES = 1024


class StreamHost(Protocol):
    """What the stream routes read of their server (:class:`~pullwake.testing.EmbeddedServer`)."""

    store: StreamStore
    subscriptions: SubscriptionManager
    long_poll_timeout: float
    cursor_interval_seconds: int
    compression: bool
    #: set while the server is open; cleared by ``pause()`` (every write waits on it)
    gate: asyncio.Event

    @property
    def origin(self) -> str: ...

    def stopping(self) -> bool: ...


class StreamRoutes:
    """The ``/v1/stream/<path>`` handlers of one server (``host``)."""

    def __init__(self, host: StreamHost) -> None:
        self.host = host

    def create(self, request: web.Request, path: str, body: bytes) -> web.Response:
        ctype = request.headers.get("Content-Type", "")
        if not ctype.strip() or not looks_like_media_type(ctype):
            ctype = "application/octet-stream"
        closed = request.headers.get("Stream-Closed") == "true"
        stream, created = self.host.store.create(path, content_type=ctype, initial_data=body,
                                                 closed=closed)
        if created and body:
            self.host.subscriptions.on_stream_append(path)
        headers = {"Content-Type": stream.content_type,
                   "Stream-Next-Offset": stream.current_offset}
        if created:
            headers["Location"] = f"{self.host.origin}{request.rel_url.raw_path}"
        if stream.closed:
            headers["Stream-Closed"] = "true"
        return respond(201 if created else 200, b"", headers)

    def head(self, path: str) -> web.Response:
        stream = self.host.store.get(path)
        if stream is None:
            return respond(404, b"", {"Content-Type": "text/plain"})
        headers = {"Stream-Next-Offset": stream.current_offset, "Cache-Control": "no-store",
                   "Content-Type": stream.content_type,
                   "ETag": self._etag(path, "-1", stream.current_offset, stream.closed)}
        if stream.closed:
            headers["Stream-Closed"] = "true"
        return respond(200, b"", headers)

    def append(self, request: web.Request, path: str, body: bytes) -> web.Response:
        close = request.headers.get("Stream-Closed") == "true"
        if not body and close:
            final = self.host.store.close_stream(path)
            return respond(204, b"", {"Stream-Next-Offset": final, "Stream-Closed": "true"})
        if not body:
            return text_answer(400, "Empty body")
        ctype = request.headers.get("Content-Type")
        if not ctype:
            return text_answer(400, "Content-Type header is required")
        message = self.host.store.append(path, body, content_type=ctype, close=close)
        if message is None:
            stream = self.host.store.require(path)
            return text_answer(409, "Stream is closed", {
                "Stream-Closed": "true", "Stream-Next-Offset": stream.current_offset})
        self.host.subscriptions.on_stream_append(path)
        headers = {"Stream-Next-Offset": message.offset}
        if close:
            headers["Stream-Closed"] = "true"
        return respond(204, b"", headers)

    def _etag(self, path: str, start: str, end: str, closed: bool) -> str:
        encoded = base64.b64encode(path.encode()).decode()
        return f'"{encoded}:{start}:{end}{":c" if closed else ""}"'

    async def read(self, request: web.Request, path: str, fault: Fault | None
                    ) -> web.StreamResponse:
        stream = self.host.store.require(path)
        etag_path = request.rel_url.raw_path
        query = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
        offsets = [unquote(v) for k, v in query if k == "offset"]
        live = next((unquote(v) for k, v in query if k == "live"), None)
        cursor = next((unquote(v) for k, v in query if k == "cursor"), None)
        offset = offsets[0] if offsets else None
        if offset is not None:
            if offset == "":
                return text_answer(400, "Empty offset parameter")
            if len(offsets) > 1:
                return text_answer(400, "Multiple offset parameters not allowed")
            if not OFFSET_RE.match(offset):
                return text_answer(400, "Invalid offset format")
        if live in ("long-poll", "sse") and not offset:
            return text_answer(400, f"{'SSE' if live == 'sse' else 'Long-poll'} "
                                   "requires offset parameter")
        if live == "sse":
            start = stream.current_offset if offset == "now" else str(offset)
            return await self._sse(request, stream, start, cursor, fault)

        effective = stream.current_offset if offset == "now" else offset
        if offset == "now" and live != "long-poll":
            headers = {"Stream-Next-Offset": stream.current_offset, "Stream-Up-To-Date": "true",
                       "Cache-Control": "no-store", "Content-Type": stream.content_type}
            if stream.closed:
                headers["Stream-Closed"] = "true"
            return respond(200, b"[]" if stream.is_json else b"", headers)

        messages = self.host.store.read(path, effective)
        caught_up = effective == stream.current_offset or offset == "now"
        if live == "long-poll" and caught_up and not messages:
            wait_from = effective or stream.current_offset
            if stream.closed:
                return respond(204, b"", {
                    "Stream-Next-Offset": stream.current_offset, "Stream-Up-To-Date": "true",
                    "Stream-Closed": "true"})
            result = await self.host.store.wait_for_messages(path, wait_from,
                                                             self.host.long_poll_timeout)
            if result.stream_closed or result.timed_out:
                headers = {"Stream-Next-Offset": wait_from, "Stream-Up-To-Date": "true",
                           "Stream-Cursor": response_cursor(cursor,
                                                            self.host.cursor_interval_seconds)}
                if result.stream_closed:
                    headers["Stream-Closed"] = "true"
                return respond(204, b"", headers)
            messages = result.messages
        return self._read_answer(request, stream, etag_path, offset, live, cursor, messages,
                                 fault)

    def _read_answer(self, request: web.Request, stream: Stream, etag_path: str,
                     offset: str | None, live: str | None, cursor: str | None,
                     messages: list[Message], fault: Fault | None) -> web.Response:
        current = self.host.store.get(stream.path) or stream
        response_offset = messages[-1].offset if messages else current.current_offset
        headers = {"Content-Type": stream.content_type, "Stream-Next-Offset": response_offset}
        if live == "long-poll":
            headers["Stream-Cursor"] = response_cursor(cursor, self.host.cursor_interval_seconds)
        headers["Stream-Up-To-Date"] = "true"
        closed_at_tail = current.closed and response_offset == current.current_offset
        if closed_at_tail:
            headers["Stream-Closed"] = "true"
        etag = self._etag(etag_path, offset or "-1", response_offset, closed_at_tail)
        headers["ETag"] = etag
        if request.headers.get("If-None-Match") == etag:
            return respond(304, b"", {"ETag": etag})
        data = self.host.store.format_response(stream, messages)
        if self.host.compression and len(data) >= COMPRESSION_THRESHOLD_BYTES:
            encoding = pick_encoding(request.headers.get("Accept-Encoding", ""))
            if encoding == "gzip":
                data = gzip.compress(data)
            elif encoding == "deflate":
                data = zlib.compress(data)
            if encoding:
                headers["Content-Encoding"] = encoding
                headers["Vary"] = "accept-encoding"
        if fault is not None and fault.injected and fault.action == "body":
            data = corrupt(data, truncate_bytes=fault.truncate_bytes,
                           corrupt_body=fault.corrupt_body)
        return respond(200, data, headers)

    async def _sse(self, request: web.Request, stream: Stream, offset: str,
                   cursor: str | None, fault: Fault | None) -> web.StreamResponse:
        ctype = stream.content_type.split(";", 1)[0].strip().lower()
        use_base64 = not (ctype.startswith("text/") or ctype == "application/json")
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                   "Connection": "keep-alive"}
        if use_base64:
            headers["Stream-SSE-Data-Encoding"] = "base64"
        resp = web.StreamResponse(status=200, headers={**BASE_HEADERS, **headers})
        await resp.prepare(request)
        host, gate = self.host, self.host.gate
        sent = 0

        async def write(text: str) -> None:
            nonlocal sent
            await gate.wait()
            data = text.encode("utf-8")
            if fault is not None and fault.action == "hang_after_headers":
                await fault.wait_released()
                abort(request)
            if fault is not None and fault.action == "drop" and fault.drop_after_bytes is not None:
                room = fault.drop_after_bytes - sent
                if room < len(data):
                    await resp.write(data[: max(room, 0)])
                    abort(request)
            sent += len(data)
            await resp.write(data)

        def control(body: dict[str, Any]) -> str:
            return "event: control\n" + encode_sse_data(js_stringify(body))

        try:
            if fault is not None and fault.sse_event is not None:
                await write(f"event: {fault.sse_event[0]}\ndata: {fault.sse_event[1]}\n\n")
            current = offset
            while not host.stopping():
                messages = self.host.store.read(stream.path, current)
                for message in messages:
                    if use_base64:
                        payload = base64.b64encode(message.data).decode()
                    elif stream.is_json:
                        payload = self.host.store.format_response(stream, [message]).decode()
                    else:
                        payload = message.data.decode("utf-8", "replace")
                    await write("event: data\n" + encode_sse_data(payload))
                    current = message.offset
                live = self.host.store.get(stream.path)
                if live is None:
                    break
                control_offset = messages[-1].offset if messages else live.current_offset
                if live.closed and control_offset == live.current_offset:
                    await write(control({"streamNextOffset": control_offset,
                                         "streamClosed": True}))
                    break
                await write(control({
                    "streamNextOffset": control_offset,
                    "streamCursor": response_cursor(cursor, self.host.cursor_interval_seconds),
                    "upToDate": True}))
                current = control_offset
                result = await self.host.store.wait_for_messages(
                    stream.path, current, self.host.long_poll_timeout)
                if host.stopping():
                    break
                if result.stream_closed and not result.messages:
                    await write(control({"streamNextOffset": current, "streamClosed": True}))
                    break
                if result.timed_out:
                    await write(control({
                        "streamNextOffset": current,
                        "streamCursor": response_cursor(cursor, self.host.cursor_interval_seconds),
                        "upToDate": True}))
            with contextlib.suppress(ConnectionError):
                await resp.write_eof()
        except (ConnectionError, StoreError):
            pass
        return resp
