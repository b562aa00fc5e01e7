"""An in-process Durable Streams server for pullwake's tests and demo.

:class:`EmbeddedServer` runs an ``aiohttp.web`` server on 127.0.0.1 (port 0 by
default) speaking the subset of the Durable Streams protocol pullwake uses,
answering like ``@durable-streams/server`` 0.3.7 does (status codes, headers,
body shapes, error codes), plus the Electric runner endpoints and fault
switches the reference server does not have.

What it owns:

* The server itself: listening, pause / resume, graceful stop, kill,
  restart on the same port, the tenant path prefix, request recording,
  dispatch to the routes, the fault-switch and Electric programming API and the
  producer-side test helpers. The routes and the rest are modules of their own:
  streams (reads, long-poll, SSE, ETags, compression) in
  :mod:`pullwake.testing._stream_routes`; subscriptions and Electric in
  :mod:`pullwake.testing._control_routes` (the subscription state machine in
  :mod:`pullwake.testing._subscriptions`); what a fault does to a request in
  :mod:`pullwake.testing._fault_routes` (which fault, in
  :mod:`pullwake.testing._faults`); storage in :mod:`pullwake.testing._streams`;
  shared answer plumbing in :mod:`pullwake.testing._http`.
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
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from aiohttp import web

from pullwake.testing._control_routes import (
    ClaimAnswer,
    ClaimProgram,
    default_claim_answer,
    electric_route,
    subscription_route,
)
from pullwake.testing._fault_routes import apply_after, apply_before, inject_route
from pullwake.testing._faults import Fault, FaultTable, fault_from_inject_body, inject_body
from pullwake.testing._http import Dropped, respond, text_answer
from pullwake.testing._stream_routes import StreamRoutes
from pullwake.testing._streams import DEFAULT_CURSOR_INTERVAL_SECONDS, StoreError, StreamStore
from pullwake.testing._subscription_model import CONTROL_PREFIX, to_store_path
from pullwake.testing._subscriptions import SubscriptionManager

__all__ = ["ClaimAnswer", "EmbeddedServer", "Fault", "RecordedRequest"]

STREAM_ROOT = "/v1/stream"
INJECT_ERROR_ROUTE = "/_test/inject-error"


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
        #: set while the server answers; cleared by :meth:`pause` (every request waits on it)
        self.gate = asyncio.Event()
        self.gate.set()
        self._shutting_down = False
        self._streams = StreamRoutes(self)

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

    def stopping(self) -> bool:
        """True from a graceful stop until the next start: open reads end."""
        return self._shutting_down

    def pause(self) -> None:
        """Every request (and every open SSE stream) hangs until :meth:`resume`."""
        self.gate.clear()

    def resume(self) -> None:
        self.gate.set()

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

    def _next_claim(self, runner_id: str, event: Any) -> ClaimAnswer:
        program = self._claim_program.popleft() if self._claim_program else None
        if program is None:
            return self._claim_default(runner_id, event)
        if isinstance(program, ClaimAnswer):
            return program
        return program(runner_id, event)

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
        await self.gate.wait()
        if method == "OPTIONS":
            return respond(204)
        inner = self._strip_prefix(raw_path)
        if inner is None:
            return text_answer(404, "Not found")
        if inner == INJECT_ERROR_ROUTE:
            return inject_route(self.faults, method, body)
        fault = self.faults.consume(method, raw_path)
        try:
            if fault is not None:
                early = await apply_before(request, fault)
                if early is not None:
                    return early
            response = await self._route(request, method, inner, body, fault)
            await self.gate.wait()
            if fault is not None and not response.prepared:
                return await apply_after(request, fault, response)
            return response
        except Dropped:
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
            return subscription_route(self.subscriptions, request, method, inner, body)
        if inner.startswith("/_electric/runners/"):
            return electric_route(method, inner, body, heartbeat=self.heartbeat_answer,
                                  claim=self._next_claim)
        if inner.startswith("/runners/") and inner.endswith("/wake") and method == "GET":
            self.store.create(inner, content_type="application/json")
        try:
            if method == "PUT":
                return self._streams.create(request, inner, body)
            if method == "HEAD":
                return self._streams.head(inner)
            if method == "GET":
                return await self._streams.read(request, inner, fault)
            if method == "POST":
                return self._streams.append(request, inner, body)
            if method == "DELETE":
                self.store.delete(inner)
                self.subscriptions.on_stream_deleted(inner)
                return respond(204)
        except StoreError as exc:
            return text_answer(exc.status, exc.text)
        return text_answer(405, "Method not allowed")
