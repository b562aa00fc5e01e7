"""An in-process Durable Streams server for pullwake's tests and demo.

:class:`EmbeddedServer` runs an ``aiohttp.web`` server on 127.0.0.1 (port 0 by
default) speaking the subset of the Durable Streams protocol pullwake uses,
answering like ``@durable-streams/server`` 0.3.7 does (status codes, headers,
body shapes, error codes), plus the Electric runner endpoints and fault
switches the reference server does not have.

What it owns:

* HTTP: routing, headers, long-poll and SSE framing, ETags, compression,
  the tenant path prefix, request recording, fault switches, pause / restart /
  kill. Storage is :mod:`pullwake.testing._streams`; subscriptions are
  :mod:`pullwake.testing._subscriptions`; faults are :mod:`pullwake.testing._faults`.
* Routes (after the optional ``prefix``, e.g. ``/t/acme``):
  ``/v1/stream/<path>`` (PUT, POST, GET, HEAD, DELETE; ``live=long-poll|sse``),
  ``/v1/stream/__ds/subscriptions/<id>[/claim|/ack|/release|/streams]``,
  ``GET /runners/<id>/wake`` (an ordinary JSON stream, created on first use),
  ``POST /_electric/runners/<id>/heartbeat`` and ``/claim`` (programmable),
  ``POST|DELETE /_test/inject-error`` (the reference server's fault route).

Where it deliberately differs from the reference server:

* The wake event of an append is written *before* the append's 204 is sent
  (the reference server writes it just after), so tests need not poll.
* No producer headers (``Producer-Id/-Epoch/-Seq``), ``Stream-Seq``, TTLs,
  forks, webhooks or the JWKS key; PUT compares only content type and closed.
* Numbers are re-serialized with Python's ``json`` (integral floats printed as
  ints like ``JSON.stringify``; exotic exponents may differ by a byte, so
  offsets of such messages may differ from the reference server's).
* ``restart()`` keeps streams by default, like the reference server with a
  ``dataDir``; ``restart(keep_streams=False)`` behaves like its memory store.
  Subscriptions and injected errors are always forgotten, as they are there.
* Everything in the Electric routes and the fault switches is test scaffolding
  with no reference counterpart.

It must not import pullwake's runtime modules: it is the thing they are tested
against.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import parse_qsl, quote, unquote

from aiohttp import web

from pullwake.testing._faults import (
    Fault,
    FaultTable,
    corrupt,
    fault_from_inject_body,
    inject_body,
)
from pullwake.testing._streams import (
    DEFAULT_CURSOR_INTERVAL_SECONDS,
    OFFSET_RE,
    Message,
    StoreError,
    Stream,
    StreamStore,
    js_stringify,
    parse_json,
    response_cursor,
)
from pullwake.testing._subscriptions import (
    CONTROL_PREFIX,
    SUBSCRIPTION_PREFIX,
    SubscriptionManager,
    error_body,
    normalize_relative,
    parse_create_input,
    to_store_path,
)

__all__ = ["ClaimAnswer", "EmbeddedServer", "Fault", "RecordedRequest"]

STREAM_ROOT = "/v1/stream"
INJECT_ERROR_ROUTE = "/_test/inject-error"
COMPRESSION_THRESHOLD_BYTES = 1024

_BASE_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": (
        "content-type, authorization, Stream-Seq, Stream-TTL, Stream-Expires-At, "
        "Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, Stream-Forked-From, "
        "Stream-Fork-Offset, Stream-Fork-Sub-Offset"
    ),
    "Access-Control-Expose-Headers": (
        "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, "
        "Producer-Epoch, Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, "
        "etag, content-type, content-encoding, vary"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (recorded before any fault acts)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class ClaimAnswer:
    """A programmed answer of ``POST /_electric/runners/<id>/claim`` (or heartbeat)."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def claimed(cls, notification: Mapping[str, Any]) -> ClaimAnswer:
        return cls(200, dict(notification))

    @classmethod
    def no_content(cls) -> ClaimAnswer:
        return cls(204)

    @classmethod
    def done(cls) -> ClaimAnswer:
        return cls(200, {"done": True})

    @classmethod
    def conflict(cls, code: str = "ALREADY_CLAIMED", message: str | None = None) -> ClaimAnswer:
        messages = {
            "ALREADY_CLAIMED": "Wake already claimed",
            "NO_PENDING_WORK": "Subscription has no pending work",
        }
        return cls(409, error_body(code, message or messages.get(code, code)))

    @classmethod
    def error(cls, status: int, code: str = "INTERNAL", message: str = "error") -> ClaimAnswer:
        return cls(status, error_body(code, message))


ClaimProgram = ClaimAnswer | Callable[[str, Any], ClaimAnswer]


def default_claim_answer(runner_id: str, event: Any) -> ClaimAnswer:
    """A WakeNotification-shaped 200 built from the wake event."""
    ev = event if isinstance(event, dict) else {}
    stream = "/" + str(ev.get("stream", "")).lstrip("/")
    generation = ev.get("generation", 0)
    wake_id = f"wake-{runner_id}-{generation}"
    return ClaimAnswer.claimed({
        "consumerId": f"{runner_id}:{stream}",
        "epoch": generation,
        "wakeId": wake_id,
        "streamPath": stream,
        "streams": [{"path": stream, "offset": "-1"}],
        "claimToken": f"claim-{wake_id}",
    })


def encode_sse_data(payload: str) -> str:
    """server.ts ``encodeSSEData``: one ``data:`` line (no space) per payload line."""
    lines = payload.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(f"data:{line}" for line in lines) + "\n\n"


class _Dropped(Exception):
    """The connection was closed on purpose; nothing more is written."""


class EmbeddedServer:
    """``async with EmbeddedServer() as srv:`` an in-process Durable Streams server.

    ``url`` includes the tenant ``prefix`` (so ``stream_root`` is
    ``url + "/v1/stream"`` as with :class:`~pullwake.testing.realserver.RealServer`);
    ``origin`` is the bare ``http://127.0.0.1:PORT``.
    """

    kind = "embedded"

    def __init__(
        self,
        *,
        port: int = 0,
        prefix: str = "",
        long_poll_timeout: float = 30.0,
        cursor_interval_seconds: int = DEFAULT_CURSOR_INTERVAL_SECONDS,
        compression: bool = True,
        shutdown_timeout: float = 0.25,
        record: bool = True,
    ) -> None:
        self.long_poll_timeout = long_poll_timeout
        self.cursor_interval_seconds = cursor_interval_seconds
        self.compression = compression
        self.shutdown_timeout = shutdown_timeout
        self.record = record
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.store = StreamStore()
        self.subscriptions = SubscriptionManager(self.store)
        self.faults = FaultTable()
        self.requests: list[RecordedRequest] = []
        self.heartbeat_answer: ClaimAnswer = ClaimAnswer(200, {})
        self._claim_program: deque[ClaimProgram] = deque()
        self._claim_default: Callable[[str, Any], ClaimAnswer] = default_claim_answer
        self._port = port
        self._runner: web.AppRunner | None = None
        self._gate = asyncio.Event()
        self._gate.set()
        self._shutting_down = False

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        return self._port

    @property
    def origin(self) -> str:
        if self._runner is None:
            raise RuntimeError("the embedded server is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return self.origin + self.prefix

    @property
    def stream_root(self) -> str:
        return self.url + STREAM_ROOT

    @property
    def running(self) -> bool:
        return self._runner is not None

    def stream_url(self, path: str) -> str:
        return self.url + self._store_path(path)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        if self._runner is not None:
            raise RuntimeError("the embedded server is already running")
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self._port = int(sockets[0].getsockname()[1])
        self._runner = runner
        self._shutting_down = False
        return self.url

    async def stop(self) -> None:
        """Graceful stop: long-polls answer ``200 []``, SSE streams end, then close."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._shutting_down = True
        self.subscriptions.shutdown()
        self.store.cancel_all_waits()
        await runner.cleanup()

    async def kill(self) -> None:
        """Like SIGKILL: every open connection is cut mid-body, then the port closes."""
        runner = self._runner
        if runner is None:
            return
        server = runner.server
        for handler in list(server.connections) if server is not None else []:
            transport = handler.transport
            if transport is not None:
                transport.abort()
        await self.stop()

    async def restart(self, *, graceful: bool = True, keep_streams: bool = True) -> str:
        """Stop (or kill) and listen again on the same port.

        Streams are kept unless ``keep_streams=False``; subscriptions and
        injected errors are forgotten (as on the reference server); fault
        switches, Electric programs and the request log are kept.
        """
        await (self.stop() if graceful else self.kill())
        if not keep_streams:
            self.store = StreamStore()
        self.subscriptions = SubscriptionManager(self.store)
        self.faults.clear_injected()
        deadline = time.monotonic() + 5.0
        while True:
            try:
                return await self.start()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    def _stopping(self) -> bool:
        return self._shutting_down

    def pause(self) -> None:
        """Every request (and every open SSE stream) hangs until :meth:`resume`."""
        self._gate.clear()

    def resume(self) -> None:
        self._gate.set()

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.resume()
        self.faults.clear()
        await self.stop()

    # ---------------------------------------------------------------- fault API

    def add_fault(self, fault: Fault) -> Fault:
        return self.faults.add(fault)

    def remove_fault(self, fault: Fault) -> None:
        self.faults.remove(fault)

    def clear_faults(self) -> None:
        """Remove every switch and injected error; hung requests are released."""
        self.faults.clear()

    def hang(self, path: str = "/", *, method: str | None = None,
             count: int | None = None) -> Fault:
        return self.add_fault(Fault(path=path, method=method, action="hang", count=count))

    def hang_after_headers(self, path: str = "/", *, method: str | None = None,
                           count: int | None = None) -> Fault:
        return self.add_fault(
            Fault(path=path, method=method, action="hang_after_headers", count=count))

    def drop(self, path: str = "/", *, method: str | None = None, after_bytes: int | None = None,
             count: int | None = None) -> Fault:
        return self.add_fault(Fault(path=path, method=method, action="drop",
                                    drop_after_bytes=after_bytes, count=count))

    def fail(self, path: str = "/", status: int = 503, *, body: Any = None,
             retry_after: float | None = None, method: str | None = None,
             count: int | None = None) -> Fault:
        return self.add_fault(Fault(path=path, method=method, action="status", status=status,
                                    body=body, retry_after=retry_after, count=count))

    def delay(self, path: str = "/", seconds: float = 1.0, *, method: str | None = None,
              count: int | None = None) -> Fault:
        return self.add_fault(Fault(path=path, method=method, delay=seconds, count=count))

    def truncate(self, path: str = "/", nbytes: int = 1, *, method: str | None = None,
                 count: int | None = None) -> Fault:
        return self.add_fault(Fault(path=path, method=method, action="body",
                                    truncate_bytes=nbytes, count=count))

    def corrupt(self, path: str = "/", *, method: str | None = None,
                count: int | None = None) -> Fault:
        return self.add_fault(Fault(path=path, method=method, action="body",
                                    corrupt_body=True, count=count))

    async def inject_error(self, path: str, **opts: Any) -> None:
        """Same arguments and meaning as :meth:`RealServer.inject_error`."""
        fault = fault_from_inject_body(inject_body(path, opts))
        if isinstance(fault, str):
            raise ValueError(fault)
        self.faults.add(fault)

    async def clear_injected_errors(self) -> None:
        self.faults.clear_injected()

    # ------------------------------------------------------------ Electric API

    def program_claims(self, *answers: ClaimProgram) -> None:
        """Queue answers for the next claims (then the default answer again)."""
        self._claim_program.extend(answers)

    def set_claim_handler(self, handler: Callable[[str, Any], ClaimAnswer] | None) -> None:
        """Answer every unprogrammed claim with ``handler(runner_id, event)``."""
        self._claim_default = handler or default_claim_answer

    def heartbeats(self, runner_id: str | None = None) -> list[Any]:
        return [r.json() for r in self.requests_matching("/heartbeat", method="POST")
                if runner_id is None or f"/runners/{runner_id}/" in unquote(r.path)]

    def claims(self, runner_id: str | None = None) -> list[Any]:
        return [r.json() for r in self.requests_matching("/_electric/runners/", method="POST")
                if r.path.endswith("/claim")
                and (runner_id is None or f"/runners/{runner_id}/" in unquote(r.path))]

    async def append_runner_wake(self, runner_id: str, event: Any) -> str:
        """Producer side of ``/runners/<id>/wake``: append one event, return its offset."""
        path = f"/runners/{quote(runner_id, safe='')}/wake"
        self.store.create(path, content_type="application/json")
        message = self.store.append_value(path, event)
        assert message is not None
        return message.offset

    # -------------------------------------------------------------- test helpers

    def requests_matching(self, path_part: str = "", *, method: str | None = None
                          ) -> list[RecordedRequest]:
        return [r for r in self.requests
                if path_part in r.path and (method is None or r.method == method.upper())]

    async def create_stream(self, path: str, content_type: str = "application/json") -> None:
        self.store.create(self._store_path(path), content_type=content_type)

    async def append(self, path: str, value: Any) -> str:
        """Append a JSON value (an array is one message of its elements) like a POST."""
        store_path = self._store_path(path)
        message = self.store.append_value(store_path, value)
        if message is None:
            raise StoreError(409, "Stream is closed")
        self.subscriptions.on_stream_append(store_path)
        return message.offset

    async def read_all(self, path: str) -> list[Any]:
        store_path = self._store_path(path)
        stream = self.store.require(store_path)
        return list(json.loads(self.store.format_response(stream, stream.messages)))

    async def tail_offset(self, path: str) -> str:
        return self.store.require(self._store_path(path)).current_offset

    async def subscription_state(self, sub_id: str) -> dict[str, Any] | None:
        """The ``GET`` body of a subscription, or None if it does not exist."""
        status, body = self.subscriptions.get(sub_id)
        return body if status == 200 else None

    def subscription_internals(self, sub_id: str) -> dict[str, Any] | None:
        """Holder, generation, wake id and lease of a subscription (no HTTP twin)."""
        sub = self.subscriptions.subscriptions.get(sub_id)
        if sub is None:
            return None
        left = (sub.lease_expires_at - time.monotonic()) if sub.lease_expires_at else None
        return {"generation": sub.generation, "wake_id": sub.wake_id, "holder": sub.holder,
                "lease_remaining_s": left, "streams": self.subscriptions.stream_infos(sub)}

    def _store_path(self, path: str) -> str:
        return path if path.startswith("/") else to_store_path(path)

    # ------------------------------------------------------------------ dispatch

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        method = request.method.upper()
        body = await request.read() if request.can_read_body else b""
        if self.record:
            self.requests.append(RecordedRequest(
                method=method, path=raw_path,
                query=dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)),
                headers=dict(request.headers), body=body, at=time.monotonic()))
        await self._gate.wait()
        if method == "OPTIONS":
            return self._respond(204)
        inner = self._strip_prefix(raw_path)
        if inner is None:
            return self._text(404, "Not found")
        if inner == INJECT_ERROR_ROUTE:
            return self._handle_inject(method, body)
        fault = self.faults.consume(method, raw_path)
        try:
            if fault is not None:
                early = await self._apply_fault_before(request, fault)
                if early is not None:
                    return early
            response = await self._route(request, method, inner, body, fault)
            await self._gate.wait()
            if fault is not None and not response.prepared:
                return await self._apply_fault_after(request, fault, response)
            return response
        except _Dropped:
            return web.Response(status=500)  # never reaches the closed socket

    def _strip_prefix(self, raw_path: str) -> str | None:
        if not self.prefix:
            return raw_path
        if raw_path == self.prefix:
            return "/"
        if raw_path.startswith(self.prefix + "/"):
            return raw_path[len(self.prefix):]
        return None

    async def _route(self, request: web.Request, method: str, inner: str, body: bytes,
                     fault: Fault | None) -> web.StreamResponse:
        if inner.startswith(CONTROL_PREFIX + "/") or inner == CONTROL_PREFIX:
            return self._subscription_route(request, method, inner, body)
        if inner.startswith("/_electric/runners/"):
            return self._electric_route(method, inner, body)
        if inner.startswith("/runners/") and inner.endswith("/wake") and method == "GET":
            self.store.create(inner, content_type="application/json")
        try:
            if method == "PUT":
                return self._create(request, inner, body)
            if method == "HEAD":
                return self._head(inner)
            if method == "GET":
                return await self._read(request, inner, fault)
            if method == "POST":
                return self._append(request, inner, body)
            if method == "DELETE":
                self.store.delete(inner)
                self.subscriptions.on_stream_deleted(inner)
                return self._respond(204)
        except StoreError as exc:
            return self._text(exc.status, exc.text)
        return self._text(405, "Method not allowed")

    # ---------------------------------------------------------------- responses

    @staticmethod
    def _respond(status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
                 ) -> web.Response:
        merged = dict(_BASE_HEADERS)
        if headers:
            merged.update(headers)
        return web.Response(status=status, body=body or None, headers=merged)

    def _text(self, status: int, text: str, headers: Mapping[str, str] | None = None
              ) -> web.Response:
        return self._respond(status, text.encode(),
                             {"Content-Type": "text/plain", **(headers or {})})

    def _json(self, status: int, body: Any) -> web.Response:
        if status == 204:
            return self._respond(204)
        return self._respond(status, js_stringify(body if body is not None else {}).encode(),
                             {"Content-Type": "application/json"})

    # ------------------------------------------------------------------ faults

    async def _apply_fault_before(self, request: web.Request, fault: Fault
                                  ) -> web.StreamResponse | None:
        await fault.sleep_delay()
        if fault.action == "hang":
            await fault.wait_released()
        elif fault.action == "drop" and fault.drop_after_bytes is None:
            self._abort(request)
        elif fault.action == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            if fault.body is None:
                return self._text(fault.status, "Injected error for testing", headers)
            if isinstance(fault.body, (bytes, str)):
                raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
                return self._respond(fault.status, raw, {"Content-Type": "text/plain", **headers})
            return self._respond(fault.status, js_stringify(fault.body).encode(),
                                 {"Content-Type": "application/json", **headers})
        return None

    async def _apply_fault_after(self, request: web.Request, fault: Fault,
                                 response: web.StreamResponse) -> web.StreamResponse:
        assert isinstance(response, web.Response)
        raw = response.body if isinstance(response.body, bytes) else b""
        if fault.action == "body":
            if fault.injected:
                return response  # like the reference server: stream reads only (_read_answer)
            response.body = corrupt(raw, truncate_bytes=fault.truncate_bytes,
                                    corrupt_body=fault.corrupt_body)
            return response
        if fault.action not in ("hang_after_headers", "drop"):
            return response
        head = web.StreamResponse(status=response.status, headers=response.headers)
        head.content_length = len(raw)
        await head.prepare(request)
        if fault.action == "hang_after_headers":
            await fault.wait_released()
        else:
            await head.write(raw[: fault.drop_after_bytes or 0])
        self._abort(request)

    @staticmethod
    def _abort(request: web.Request) -> NoReturn:
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise _Dropped()

    def _handle_inject(self, method: str, body: bytes) -> web.Response:
        if method == "DELETE":
            self.faults.clear_injected()
            return self._json(200, {"ok": True})
        if method != "POST":
            return self._text(405, "Method not allowed")
        try:
            config = parse_json(body)
        except ValueError:
            return self._text(400, "Invalid JSON body")
        fault = fault_from_inject_body(config if isinstance(config, dict) else {})
        if isinstance(fault, str):
            return self._text(400, fault)
        self.faults.add(fault)
        return self._json(200, {"ok": True})

    # ----------------------------------------------------------------- streams

    def _create(self, request: web.Request, path: str, body: bytes) -> web.Response:
        ctype = request.headers.get("Content-Type", "")
        if not ctype.strip() or not _looks_like_media_type(ctype):
            ctype = "application/octet-stream"
        closed = request.headers.get("Stream-Closed") == "true"
        stream, created = self.store.create(path, content_type=ctype, initial_data=body,
                                            closed=closed)
        if created and body:
            self.subscriptions.on_stream_append(path)
        headers = {"Content-Type": stream.content_type,
                   "Stream-Next-Offset": stream.current_offset}
        if created:
            headers["Location"] = f"{self.origin}{request.rel_url.raw_path}"
        if stream.closed:
            headers["Stream-Closed"] = "true"
        return self._respond(201 if created else 200, b"", headers)

    def _head(self, path: str) -> web.Response:
        stream = self.store.get(path)
        if stream is None:
            return self._respond(404, b"", {"Content-Type": "text/plain"})
        headers = {"Stream-Next-Offset": stream.current_offset, "Cache-Control": "no-store",
                   "Content-Type": stream.content_type,
                   "ETag": self._etag(path, "-1", stream.current_offset, stream.closed)}
        if stream.closed:
            headers["Stream-Closed"] = "true"
        return self._respond(200, b"", headers)

    def _append(self, request: web.Request, path: str, body: bytes) -> web.Response:
        close = request.headers.get("Stream-Closed") == "true"
        if not body and close:
            final = self.store.close_stream(path)
            return self._respond(204, b"", {"Stream-Next-Offset": final, "Stream-Closed": "true"})
        if not body:
            return self._text(400, "Empty body")
        ctype = request.headers.get("Content-Type")
        if not ctype:
            return self._text(400, "Content-Type header is required")
        message = self.store.append(path, body, content_type=ctype, close=close)
        if message is None:
            stream = self.store.require(path)
            return self._text(409, "Stream is closed", {
                "Stream-Closed": "true", "Stream-Next-Offset": stream.current_offset})
        self.subscriptions.on_stream_append(path)
        headers = {"Stream-Next-Offset": message.offset}
        if close:
            headers["Stream-Closed"] = "true"
        return self._respond(204, b"", headers)

    def _etag(self, path: str, start: str, end: str, closed: bool) -> str:
        encoded = base64.b64encode(path.encode()).decode()
        return f'"{encoded}:{start}:{end}{":c" if closed else ""}"'

    async def _read(self, request: web.Request, path: str, fault: Fault | None
                    ) -> web.StreamResponse:
        stream = self.store.require(path)
        etag_path = request.rel_url.raw_path
        query = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
        offsets = [unquote(v) for k, v in query if k == "offset"]
        live = next((unquote(v) for k, v in query if k == "live"), None)
        cursor = next((unquote(v) for k, v in query if k == "cursor"), None)
        offset = offsets[0] if offsets else None
        if offset is not None:
            if offset == "":
                return self._text(400, "Empty offset parameter")
            if len(offsets) > 1:
                return self._text(400, "Multiple offset parameters not allowed")
            if not OFFSET_RE.match(offset):
                return self._text(400, "Invalid offset format")
        if live in ("long-poll", "sse") and not offset:
            return self._text(400, f"{'SSE' if live == 'sse' else 'Long-poll'} "
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
            return self._respond(200, b"[]" if stream.is_json else b"", headers)

        messages = self.store.read(path, effective)
        caught_up = effective == stream.current_offset or offset == "now"
        if live == "long-poll" and caught_up and not messages:
            wait_from = effective or stream.current_offset
            if stream.closed:
                return self._respond(204, b"", {
                    "Stream-Next-Offset": stream.current_offset, "Stream-Up-To-Date": "true",
                    "Stream-Closed": "true"})
            result = await self.store.wait_for_messages(path, wait_from, self.long_poll_timeout)
            if result.stream_closed or result.timed_out:
                headers = {"Stream-Next-Offset": wait_from, "Stream-Up-To-Date": "true",
                           "Stream-Cursor": response_cursor(cursor, self.cursor_interval_seconds)}
                if result.stream_closed:
                    headers["Stream-Closed"] = "true"
                return self._respond(204, b"", headers)
            messages = result.messages
        return self._read_answer(request, stream, etag_path, offset, live, cursor, messages,
                                 fault)

    def _read_answer(self, request: web.Request, stream: Stream, etag_path: str,
                     offset: str | None, live: str | None, cursor: str | None,
                     messages: list[Message], fault: Fault | None) -> web.Response:
        current = self.store.get(stream.path) or stream
        response_offset = messages[-1].offset if messages else current.current_offset
        headers = {"Content-Type": stream.content_type, "Stream-Next-Offset": response_offset}
        if live == "long-poll":
            headers["Stream-Cursor"] = response_cursor(cursor, self.cursor_interval_seconds)
        headers["Stream-Up-To-Date"] = "true"
        closed_at_tail = current.closed and response_offset == current.current_offset
        if closed_at_tail:
            headers["Stream-Closed"] = "true"
        etag = self._etag(etag_path, offset or "-1", response_offset, closed_at_tail)
        headers["ETag"] = etag
        if request.headers.get("If-None-Match") == etag:
            return self._respond(304, b"", {"ETag": etag})
        data = self.store.format_response(stream, messages)
        if self.compression and len(data) >= COMPRESSION_THRESHOLD_BYTES:
            encoding = _pick_encoding(request.headers.get("Accept-Encoding", ""))
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
        return self._respond(200, data, headers)

    async def _sse(self, request: web.Request, stream: Stream, offset: str,
                   cursor: str | None, fault: Fault | None) -> web.StreamResponse:
        ctype = stream.content_type.split(";", 1)[0].strip().lower()
        use_base64 = not (ctype.startswith("text/") or ctype == "application/json")
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                   "Connection": "keep-alive"}
        if use_base64:
            headers["Stream-SSE-Data-Encoding"] = "base64"
        resp = web.StreamResponse(status=200, headers={**_BASE_HEADERS, **headers})
        await resp.prepare(request)
        sent = 0

        async def write(text: str) -> None:
            nonlocal sent
            await self._gate.wait()
            data = text.encode("utf-8")
            if fault is not None and fault.action == "hang_after_headers":
                await fault.wait_released()
                self._abort(request)
            if fault is not None and fault.action == "drop" and fault.drop_after_bytes is not None:
                room = fault.drop_after_bytes - sent
                if room < len(data):
                    await resp.write(data[: max(room, 0)])
                    self._abort(request)
            sent += len(data)
            await resp.write(data)

        def control(body: dict[str, Any]) -> str:
            return "event: control\n" + encode_sse_data(js_stringify(body))

        try:
            if fault is not None and fault.sse_event is not None:
                await write(f"event: {fault.sse_event[0]}\ndata: {fault.sse_event[1]}\n\n")
            current = offset
            while not self._stopping():
                messages = self.store.read(stream.path, current)
                for message in messages:
                    if use_base64:
                        payload = base64.b64encode(message.data).decode()
                    elif stream.is_json:
                        payload = self.store.format_response(stream, [message]).decode()
                    else:
                        payload = message.data.decode("utf-8", "replace")
                    await write("event: data\n" + encode_sse_data(payload))
                    current = message.offset
                live = self.store.get(stream.path)
                if live is None:
                    break
                control_offset = messages[-1].offset if messages else live.current_offset
                if live.closed and control_offset == live.current_offset:
                    await write(control({"streamNextOffset": control_offset,
                                         "streamClosed": True}))
                    break
                await write(control({
                    "streamNextOffset": control_offset,
                    "streamCursor": response_cursor(cursor, self.cursor_interval_seconds),
                    "upToDate": True}))
                current = control_offset
                result = await self.store.wait_for_messages(
                    stream.path, current, self.long_poll_timeout)
                if self._stopping():
                    break
                if result.stream_closed and not result.messages:
                    await write(control({"streamNextOffset": current, "streamClosed": True}))
                    break
                if result.timed_out:
                    await write(control({
                        "streamNextOffset": current,
                        "streamCursor": response_cursor(cursor, self.cursor_interval_seconds),
                        "upToDate": True}))
            with contextlib.suppress(ConnectionError):
                await resp.write_eof()
        except (ConnectionError, StoreError):
            pass
        return resp

    # ----------------------------------------------------------- subscriptions

    def _subscription_route(self, request: web.Request, method: str, inner: str, body: bytes
                            ) -> web.Response:
        if inner == CONTROL_PREFIX + "/jwks.json":
            if method != "GET":
                return self._text(405, "Method not allowed")
            return self._json(200, {"keys": []})
        route = _parse_subscription_route(inner)
        if route is None:
            return self._json(404, error_body("SUBSCRIPTION_NOT_FOUND",
                                              "Durable Streams control route not found"))
        sub_id, action, stream_path = route
        manager = self.subscriptions
        if action == "base":
            if method == "GET":
                return self._json(*manager.get(sub_id))
            if method == "DELETE":
                return self._json(*manager.delete(sub_id))
            if method != "PUT":
                return self._text(405, "Method not allowed")
        elif action == "stream":
            if method != "DELETE":
                return self._text(405, "Method not allowed")
            return self._json(*manager.remove_stream(sub_id, stream_path))
        elif action in ("callback", "ack", "release"):
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                return self._json(401, error_body(
                    "TOKEN_INVALID", "Missing or malformed Authorization header"))
        elif action == "streams" and method != "POST":
            # claim / ack / release answer any method, like the reference server
            return self._text(405, "Method not allowed")
        try:
            payload = parse_json(body) if body else {}
        except ValueError:
            return self._json(400, error_body("INVALID_REQUEST", "Invalid JSON body"))
        if action == "base":
            parsed = parse_create_input(payload)
            if isinstance(parsed, str):
                return self._json(400, error_body("INVALID_REQUEST", parsed))
            return self._json(*manager.create_or_confirm(sub_id, parsed))
        if action == "streams":
            streams = payload.get("streams") if isinstance(payload, dict) else None
            if not isinstance(streams, list) or any(
                    not isinstance(s, str) or not s for s in streams):
                return self._json(400, error_body("INVALID_REQUEST",
                                                  "streams must be a non-empty string array"))
            return self._json(*manager.add_streams(sub_id, streams))
        if action == "claim":
            worker = payload.get("worker") if isinstance(payload, dict) else None
            if not isinstance(worker, str) or not worker:
                return self._json(400, error_body("INVALID_REQUEST",
                                                  "worker must be a non-empty string"))
            return self._json(*manager.claim(sub_id, worker))
        token = request.headers["Authorization"][len("Bearer "):]
        req = payload if isinstance(payload, dict) else {}
        if action == "release":
            return self._json(*manager.release(sub_id, token, req))
        return self._json(*manager.ack(sub_id, token, req))

    # ---------------------------------------------------------------- Electric

    def _electric_route(self, method: str, inner: str, body: bytes) -> web.Response:
        parts = inner[len("/_electric/runners/"):].split("/")
        if len(parts) != 2 or not parts[0] or parts[1] not in ("heartbeat", "claim"):
            return self._json(404, error_body("NOT_FOUND", "Not found"))
        if method != "POST":
            return self._text(405, "Method not allowed")
        runner_id = unquote(parts[0])
        try:
            payload = parse_json(body) if body else None
        except ValueError:
            return self._json(400, error_body("INVALID_REQUEST", "Invalid JSON body"))
        if parts[1] == "heartbeat":
            answer = self.heartbeat_answer
        else:
            program = self._claim_program.popleft() if self._claim_program else None
            if program is None:
                answer = self._claim_default(runner_id, payload)
            elif isinstance(program, ClaimAnswer):
                answer = program
            else:
                answer = program(runner_id, payload)
        if answer.status == 204 or answer.body is None:
            return self._respond(answer.status, b"", answer.headers)
        return self._respond(answer.status, js_stringify(answer.body).encode(),
                             {"Content-Type": "application/json", **answer.headers})


def _looks_like_media_type(value: str) -> bool:
    main = value.split(";", 1)[0].strip()
    kind, _, sub = main.partition("/")
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    return bool(kind) and bool(sub) and set(kind) <= ok and sub[:1] in ok


def _pick_encoding(accept: str) -> str | None:
    names = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    if "gzip" in names:
        return "gzip"
    if "deflate" in names:
        return "deflate"
    return None


def _parse_subscription_route(inner: str) -> tuple[str, str, str] | None:
    """(id, action, stream path) of a ``/v1/stream/__ds/subscriptions/...`` path."""
    if not inner.startswith(SUBSCRIPTION_PREFIX):
        return None
    parts = inner[len(SUBSCRIPTION_PREFIX):].split("/")
    sub_id = unquote(parts[0]) if parts[0] else ""
    if not sub_id:
        return None
    tail = parts[1:]
    if not tail:
        return sub_id, "base", ""
    if tail[0] == "streams" and len(tail) == 1:
        return sub_id, "streams", ""
    if tail[0] == "streams":
        return sub_id, "stream", normalize_relative(unquote("/".join(tail[1:])))
    if len(tail) == 1 and tail[0] in ("callback", "claim", "ack", "release"):
        return sub_id, tail[0], ""
    return None
