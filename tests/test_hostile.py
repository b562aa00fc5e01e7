"""Hostile input: ids, oversized answers, endless lines, bad offsets and types, TLS.

What a server (or a careless caller) can throw at pullwake, and what must hold:

* ids (runner, subscription, worker) with ``/``, ``..``, ``%``, spaces, Unicode,
  ``?#`` or great length stay inside their one URL path segment, and the server
  reads them back intact;
* a wake stream that sends bytes forever without a newline, an oversized
  control-plane answer, an oversized long-poll body and huge response headers
  are bounded and end in a typed error; the runner keeps running;
* malformed or wrongly typed claim answers and hostile offsets are typed
  errors naming what was wrong;
* TLS certificates are verified unless the configuration explicitly says not to
  (``verify_tls=False``, a real bool).

Secrets in error text and logs are tested in ``test_secrets.py``.

Rules for this module: real sockets on 127.0.0.1 only, port 0, a hard timeout
on every test; ``eventually`` polls with a limit and nothing asserts on elapsed
time. Hostile servers are raw ``aiohttp.web`` apps built here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import ssl
import subprocess
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from runner_helpers import (
    Handler,
    RecordingRuntime,
    eventually,
    make_runner,
    raw_server,
    started,
    wake,
)

from pullwake import PullWakeRunner, RunnerConfig
from pullwake.errors import (
    ConnectError,
    ControlPlaneError,
    OversizedMessage,
    ProtocolError,
    PullwakeError,
)
from pullwake.io.http import HttpClient
from pullwake.runtime.subscriptions import SubscriptionClient
from pullwake.testing import EmbeddedServer
from pullwake.testing.clock import ManualClock
from pullwake.worker import Wake, Worker

pytestmark = pytest.mark.timeout(30)

KiB = 1024
MiB = 1024 * KiB

#: Ids that try to leave their path segment, or to be folded by a client or server.
HOSTILE_IDS = ["a/b", "..", ".", "%2F", "sp ace", "ünï", "?x#y", "a/../../b", "%", "~:@!$&'()*+,;="]
LONG_RUNNER_ID = ("ü/.% " * 128)[:512]  # the longest runner id the config accepts
LONG_SUBSCRIPTION_ID = ("ü/.% " * 64)[:256]  # the longest subscription id
#: A path segment as it must travel: unreserved characters and %XX escapes only.
SEGMENT_RE = re.compile(r"(?:[A-Za-z0-9_.~-]|%[0-9A-F]{2})+")


def assert_one_segment(path: str, before: list[str], after: list[str], expected: str) -> None:
    """``path`` is ``before + [one segment] + after`` and the segment decodes to ``expected``."""
    parts = path.split("/")
    assert parts[: len(before)] == before, path
    assert parts[len(before) + 1:] == after, path
    seg = parts[len(before)]
    assert SEGMENT_RE.fullmatch(seg), f"{seg!r} is not a single encoded segment"
    assert seg not in (".", ".."), f"{seg!r} is a dot-segment"
    assert unquote(seg) == expected


# ------------------------------------------------------------------ raw servers




def sse_event(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata:{json.dumps(data)}\n\n".encode()


async def sse_prepare(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


async def ok_heartbeat(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({})


def hostile_runner(url: str, runtime: Any = None, **overrides: Any) -> PullWakeRunner:
    cfg: dict[str, Any] = {"base_url": url, "runner_id": "r1", "heartbeat_interval": None}
    cfg.update(overrides)
    return PullWakeRunner(RunnerConfig(**cfg), runtime or RecordingRuntime())


# ====================================================================== ids


@pytest.mark.parametrize("runner_id", [*HOSTILE_IDS, LONG_RUNNER_ID],
                         ids=[*HOSTILE_IDS, "long"])
async def test_runner_id_stays_in_its_segment(runner_id: str) -> None:
    async with EmbeddedServer(prefix="/t/acme") as server:
        rt = RecordingRuntime()
        runner = make_runner(server, rt, runner_id=runner_id, heartbeat_interval=30)
        async with started(runner):
            await eventually(lambda: runner.status == "streaming")
            read = server.requests_matching("/wake", method="GET")[0]
            await server.append(read.path.removeprefix("/t/acme"), wake("s1"))
            await eventually(lambda: len(rt.dispatched) == 1)
            await eventually(lambda: len(server.requests_matching("/heartbeat")) >= 1)
        by_kind: dict[str, list[str]] = {"wake": [], "claim": [], "heartbeat": []}
        for r in server.requests:
            by_kind[r.path.rsplit("/", 1)[-1]].append(r.path)
        assert all(by_kind.values()), by_kind
        for path in by_kind["wake"]:
            assert_one_segment(path, ["", "t", "acme", "runners"], ["wake"], runner_id)
        for kind in ("claim", "heartbeat"):
            for path in by_kind[kind]:
                assert_one_segment(path, ["", "t", "acme", "_electric", "runners"], [kind],
                                   runner_id)
        assert set(read.query) == {"offset", "live"}  # "?x#y" did not start a query


@pytest.mark.parametrize("hostile", [*HOSTILE_IDS, LONG_SUBSCRIPTION_ID],
                         ids=[*HOSTILE_IDS, "long"])
async def test_subscription_id_and_worker_name_stay_intact(hostile: str) -> None:
    seen: list[Wake] = []

    async def handler(w: Wake) -> None:
        seen.append(w)

    async with EmbeddedServer() as server:
        worker = Worker(server=server.stream_root, handler=handler, subscription=hostile,
                        worker_name=hostile, wake_stream="wake/pool", pattern="events/*",
                        claim_lease=1.0, heartbeat_interval=0.5, request_timeout=2.0,
                        connect_timeout=2.0, read_idle_timeout=3.0, stop_grace=1.0)
        async with worker:
            await eventually(lambda: worker.runner.status == "streaming")
            await server.create_stream("events/e1")
            await server.append("events/e1", {"i": 1})
            await eventually(lambda: worker.stats.wakes_acked == 1)
        assert [w.subscription_id for w in seen] == [hostile]
        sub_paths = server.requests_matching("/__ds/subscriptions/")
        assert {r.path.rsplit("/", 1)[-1] for r in sub_paths if r.method == "POST"} >= {
            "claim", "ack"}
        for r in sub_paths:
            after = [] if r.method in ("PUT", "GET") else [r.path.rsplit("/", 1)[-1]]
            assert_one_segment(r.path, ["", "v1", "stream", "__ds", "subscriptions"], after,
                               hostile)
        claims = [r.json() for r in sub_paths if r.path.endswith("/claim")]
        assert claims and all(c == {"worker": hostile} for c in claims)
        state = await server.subscription_state(hostile)
        assert state is not None and state["streams"][0]["acked_offset"] == \
            await server.tail_offset("events/e1")


# ======================================================== bounded: endless line


async def test_endless_sse_line_is_bounded_and_reported() -> None:
    """16 MiB without a newline, on a 64 KiB message limit: memory stays bounded,
    the event is reported as OversizedMessage when it finally ends, and the
    stream goes on (no reconnect)."""
    flood = 16 * MiB
    chunk = b"x" * (64 * KiB)
    more: asyncio.Queue[bytes] = asyncio.Queue()
    sent = 0

    async def wake_stream(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = await sse_prepare(request)
        await resp.write(sse_event("control", {"streamNextOffset": "0001", "upToDate": True}))
        await resp.write(b"data:")
        while sent < flood:
            await resp.write(chunk)
            sent += len(chunk)
        await resp.write(b"\n\n")
        await resp.write(sse_event("control", {"streamNextOffset": "0002", "upToDate": True}))
        while True:
            await resp.write(await more.get())

    async def claim(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"claimed": "yes"})

    errors: list[BaseException] = []
    rt = RecordingRuntime()
    routes = {("GET", "/runners/r1/wake"): wake_stream,
              ("POST", "/_electric/runners/r1/claim"): claim}
    async with raw_server(routes) as url:
        runner = hostile_runner(url, rt, max_message_bytes=64 * KiB, on_error=errors.append)
        tracemalloc.start()
        try:
            async with started(runner):
                await eventually(lambda: runner.offset == "0001", timeout=10)
                tracemalloc.reset_peak()
                await eventually(lambda: runner.offset == "0002", timeout=20)
                _, peak = tracemalloc.get_traced_memory()
                assert sent >= flood
                assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB while 16 MiB streamed"
                oversized = [e for e in errors if isinstance(e, OversizedMessage)]
                assert len(oversized) == 1 and oversized[0].size >= flood
                # the session goes on: a later wake is claimed and dispatched
                more.put_nowait(sse_event("data", [wake("s1")]))
                more.put_nowait(sse_event("control", {"streamNextOffset": "0003"}))
                await eventually(lambda: len(rt.dispatched) == 1)
                assert runner.offset == "0003" and runner.status == "streaming"
                assert runner.health().reconnect_count == 0
        finally:
            tracemalloc.stop()


# ============================================== a raw Electric-style server


class Electric:
    """A raw Electric-style server: an SSE wake stream the test feeds, claims it answers.

    ``wake_answers`` / ``claim_answers`` queue special answers for the next
    requests (then the normal ones again); every request path is recorded.
    """

    def __init__(self) -> None:
        self.offset = 0
        self.paths: list[str] = []
        self.wake_answers: list[Handler] = []
        self.claim_answers: list[Handler] = []
        self.claims = 0
        self._connection: asyncio.Queue[bytes] | None = None

    @property
    def routes(self) -> dict[tuple[str, str], Handler]:
        return {("GET", "/runners/r1/wake"): self._wake,
                ("POST", "/_electric/runners/r1/claim"): self._claim,
                ("POST", "/_electric/runners/r1/heartbeat"): ok_heartbeat}

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def send(self, *events: bytes) -> None:
        assert self._connection is not None, "no open wake stream"
        for event in events:
            self._connection.put_nowait(event)

    def send_wake(self, stream: str = "s1") -> str:
        self.offset += 1
        off = f"{self.offset:04d}"
        self.send(sse_event("data", [wake(stream)]),
                  sse_event("control", {"streamNextOffset": off, "upToDate": True}))
        return off

    async def _wake(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path_qs)
        if self.wake_answers:
            return await self.wake_answers.pop(0)(request)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._connection = queue
        resp = await sse_prepare(request)
        await resp.write(sse_event("control", {"streamNextOffset": f"{self.offset:04d}",
                                               "upToDate": True}))
        try:
            while True:
                await resp.write(await queue.get())
        finally:
            if self._connection is queue:
                self._connection = None

    async def _claim(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path_qs)
        self.claims += 1
        body = await request.read()
        if self.claim_answers:
            return await self.claim_answers.pop(0)(request)
        stream = json.loads(body).get("stream") if body else None  # the wake claimed
        return web.json_response({"claim": self.claims, "stream": stream})


@contextlib.asynccontextmanager
async def electric_runner(**overrides: Any) -> AsyncIterator[tuple[Electric, PullWakeRunner,
                                                                  RecordingRuntime,
                                                                  list[BaseException]]]:
    srv = Electric()
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    async with raw_server(srv.routes) as url:
        runner = hostile_runner(url, rt, on_error=errors.append, **overrides)
        async with started(runner):
            await eventually(lambda: runner.status == "streaming" and srv.connected)
            yield srv, runner, rt, errors


async def assert_still_working(srv: Electric, runner: PullWakeRunner,
                               rt: RecordingRuntime) -> None:
    """The runner is streaming and the next wake is claimed and dispatched.

    The wake's own claim is recognised by its stream (the server echoes it): an
    earlier wake's claim, retried after a transient failure, may be dispatched
    in the same turn of the loop, so counting dispatches would race.
    """
    await eventually(lambda: srv.connected and runner.status == "streaming")
    off = srv.send_wake("after")
    await eventually(lambda: [d.get("stream") for d in rt.dispatched].count("after") == 1)
    await eventually(lambda: runner.offset == off)


# ============================================ bounded: control-plane answers


async def _huge_with_length(request: web.Request) -> web.Response:
    return web.Response(body=b'{"pad":"' + b"x" * (5 * MiB) + b'"}',
                        content_type="application/json")


async def _huge_chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        await resp.write(b'{"pad":"')
        for _ in range(80):  # 5 MiB
            await resp.write(b"x" * (64 * KiB))
        await resp.write(b'"}')
        await resp.write_eof()
    return resp


@pytest.mark.parametrize("answer", [_huge_with_length, _huge_chunked],
                         ids=["content-length", "chunked"])
async def test_oversized_claim_answer_is_a_typed_error(answer: Handler) -> None:
    async with electric_runner() as (srv, runner, rt, errors):
        srv.claim_answers.append(answer)
        srv.send_wake()
        await eventually(lambda: runner.health().claims_failed == 1)
        assert runner.health().last_claim_result == "error" and rt.dispatched == []
        [error] = [e for e in errors if isinstance(e, PullwakeError)]
        assert isinstance(error, (ProtocolError, ControlPlaneError))
        assert "1048576-byte limit" in str(error)
        await assert_still_working(srv, runner, rt)
        assert runner.health().reconnect_count == 0


@pytest.mark.parametrize("compression", [True, False], ids=["gzip-streamed", "content-length"])
async def test_oversized_long_poll_body_is_skipped_and_reported(compression: bool) -> None:
    """A long-poll answer with a message past max_message_bytes (and an answer past
    max_response_bytes) is framed as it streams: the message is reported as
    OversizedMessage and skipped (the offset moves past it), never buffered whole,
    because reconnecting would fetch the same body again forever."""
    async with EmbeddedServer(compression=compression) as server:
        errors: list[BaseException] = []
        rt = RecordingRuntime()
        runner = make_runner(server, rt, live="long-poll", max_message_bytes=1 * KiB,
                             max_response_bytes=4 * KiB, on_error=errors.append)
        async with started(runner):
            await eventually(lambda: runner.status == "streaming")
            await eventually(lambda: len(server.requests_matching("/wake")) >= 2)  # at the tail
            big = await server.append_runner_wake("r1", {**wake("s1"), "pad": "x" * 64 * KiB})
            await eventually(lambda: runner.offset == big)
            [error] = [e for e in errors if isinstance(e, PullwakeError)]
            assert isinstance(error, OversizedMessage)
            assert "1024-byte limit" in str(error)
            assert rt.dispatched == [] and runner.status == "streaming"
            tail = await server.append_runner_wake("r1", wake("s2"))
            await eventually(lambda: len(rt.dispatched) == 1)
            await eventually(lambda: runner.offset == tail)
            assert runner.health().reconnect_count == 0


# ================================================================ huge headers


async def _long_header(request: web.Request) -> web.Response:
    return web.Response(status=200, headers={"X-Huge": "a" * 100 * KiB})


async def _many_headers(request: web.Request) -> web.Response:
    return web.Response(status=200, headers={f"X-H{i}": "v" for i in range(1000)})


@pytest.mark.parametrize("answer", [_long_header, _many_headers], ids=["long", "many"])
async def test_huge_headers_on_the_wake_stream_are_a_connect_error(answer: Handler) -> None:
    srv = Electric()
    srv.wake_answers.append(answer)
    errors: list[BaseException] = []
    clock = ManualClock()
    async with raw_server(srv.routes) as url:
        runner = hostile_runner(url, on_error=errors.append, clock=clock)
        async with started(runner):
            await eventually(lambda: runner.status == "reconnecting")
            [error] = errors
            assert isinstance(error, ConnectError)
            assert "bytes when reading" in str(error) or "Too many headers" in str(error)
            await clock.advance(1.0)  # the backoff: the next attempt is answered normally
            await eventually(lambda: runner.status == "streaming" and srv.connected)


@pytest.mark.parametrize("answer", [_long_header, _many_headers], ids=["long", "many"])
async def test_huge_headers_on_a_claim_are_a_control_plane_error(answer: Handler) -> None:
    async with electric_runner() as (srv, runner, rt, errors):
        srv.claim_answers.append(answer)
        srv.send_wake()
        await eventually(lambda: runner.health().claims_failed == 1)
        [error] = errors
        assert isinstance(error, ControlPlaneError) and error.operation == "claim"
        await assert_still_working(srv, runner, rt)


# ======================================================= malformed claim answers


def _answer(body: bytes, status: int = 200) -> Handler:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    return answer


@pytest.mark.parametrize("body", [b"[1, 2]", b'"claimed"', b"42", b"true", b"null",
                                  b"{not json", b"", b"\xff\xfe"],
                         ids=["array", "string", "number", "bool", "null", "malformed",
                              "empty", "not-utf8"])
async def test_malformed_electric_claim_answer_is_a_typed_error(body: bytes) -> None:
    async with electric_runner() as (srv, runner, rt, errors):
        srv.claim_answers.append(_answer(body))
        srv.send_wake()
        await eventually(lambda: runner.health().claims_failed == 1)
        [error] = errors
        assert isinstance(error, ControlPlaneError)
        assert (error.operation, error.status) == ("claim", 200)
        assert "not a JSON object" in str(error)
        assert rt.dispatched == []
        await assert_still_working(srv, runner, rt)


GOOD_CLAIM: dict[str, Any] = {
    "wake_id": "w-1", "generation": 3, "token": "tok-123456", "lease_ttl_ms": 30000,
    "streams": [{"path": "events/e1", "acked_offset": "-1", "tail_offset": "0001",
                 "has_pending": True}],
}


def _bad(**changes: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(GOOD_CLAIM))
    for key, value in changes.items():
        if key.startswith("stream_"):
            body["streams"][0][key[len("stream_"):]] = value
        elif value is _MISSING:
            del body[key]
        else:
            body[key] = value
    return body


_MISSING = object()


WRONG_CLAIMS = [
    ("wake_id-number", _bad(wake_id=5), "wake_id"),
    ("wake_id-null", _bad(wake_id=None), "wake_id"),
    ("wake_id-missing", _bad(wake_id=_MISSING), "wake_id"),
    ("token-number", _bad(token=7), "token"),
    ("token-null", _bad(token=None), "token"),
    ("token-missing", _bad(token=_MISSING), "token"),
    ("generation-numeric-string", _bad(generation="3"), "generation"),
    ("generation-string", _bad(generation="x"), "generation"),
    ("generation-bool", _bad(generation=True), "generation"),
    ("generation-float", _bad(generation=1.5), "generation"),
    ("lease-string", _bad(lease_ttl_ms="30000"), "lease_ttl_ms"),
    ("streams-string", _bad(streams="events/e1"), "streams"),
    ("streams-object", _bad(streams={"path": "x"}), "streams"),
    ("streams-of-strings", _bad(streams=["events/e1"]), "streams[0]"),
    ("path-number", _bad(stream_path=1), "streams[0].path"),
    ("path-null", _bad(stream_path=None), "streams[0].path"),
    ("acked-number", _bad(stream_acked_offset=0), "streams[0].acked_offset"),
    ("tail-array", _bad(stream_tail_offset=["0001"]), "streams[0].tail_offset"),
    ("has_pending-string", _bad(stream_has_pending="yes"), "streams[0].has_pending"),
]


@pytest.mark.parametrize(("body", "field"), [pytest.param(b, f, id=i) for i, b, f in WRONG_CLAIMS])
async def test_subscription_claim_answer_with_wrong_types_names_the_field(
        body: dict[str, Any], field: str) -> None:
    async def claim(request: web.Request) -> web.Response:
        return web.json_response(body)

    route = "/v1/stream/__ds/subscriptions/sub1/claim"
    async with raw_server({("POST", route): claim}) as url:
        http = HttpClient(headers=None, clock=ManualClock(), request_timeout=5.0)
        try:
            with pytest.raises(ControlPlaneError) as info:
                await SubscriptionClient(url + "/v1/stream").claim(http, "sub1", "w1")
        finally:
            await http.close()
    error = info.value
    assert (error.operation, error.status) == ("claim", 200)  # answered: not "no answer"
    assert f"'{field}'" in str(error), str(error)


async def test_subscription_claim_answer_of_the_right_shape_parses() -> None:
    async def claim(request: web.Request) -> web.Response:
        return web.json_response(GOOD_CLAIM)

    route = "/v1/stream/__ds/subscriptions/sub1/claim"
    async with raw_server({("POST", route): claim}) as url:
        http = HttpClient(headers=None, clock=ManualClock(), request_timeout=5.0)
        try:
            result = await SubscriptionClient(url + "/v1/stream").claim(http, "sub1", "w1")
        finally:
            await http.close()
    assert not isinstance(result, str)
    assert (result.wake_id, result.generation, result.token) == ("w-1", 3, "tok-123456")
    assert result.streams[0].tail_offset == "0001" and result.lease_ttl_ms == 30000


# ============================================================= hostile offsets


HOSTILE_OFFSETS = ["a b", "a\nb", "a\r\nStream-Closed: true", "x" * 1024, "", "ünï", "\u0000",
                   5, None, ["0001"]]


@pytest.mark.parametrize("offset", HOSTILE_OFFSETS,
                         ids=["space", "newline", "crlf", "1KB", "empty", "unicode", "nul",
                              "number", "null", "array"])
async def test_hostile_sse_offset_is_a_protocol_error(offset: Any) -> None:
    clock = ManualClock()
    async with electric_runner(clock=clock) as (srv, runner, rt, errors):
        good = srv.send_wake()
        await eventually(lambda: runner.offset == good)
        srv.send(sse_event("control", {"streamNextOffset": offset, "upToDate": True}))
        await eventually(lambda: runner.status == "reconnecting")
        [error] = [e for e in errors if isinstance(e, PullwakeError)]
        assert isinstance(error, ProtocolError) and "streamNextOffset" in str(error)
        assert runner.offset == good
        await clock.advance(1.0)  # backoff: reconnect from the last good offset
        await eventually(lambda: runner.status == "streaming" and srv.connected)
        assert srv.paths[-1] == f"/runners/r1/wake?offset={good}&live=sse"
        await assert_still_working(srv, runner, rt)


@pytest.mark.parametrize("offset", ["a b", "a\tb", "x" * 1024, "", "-1 ; drop"],
                         ids=["space", "tab", "1KB", "empty", "junk"])
async def test_hostile_long_poll_offset_header_is_a_protocol_error(offset: str) -> None:
    seen: list[str] = []

    async def wake_stream(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.Response(body=b"[]", content_type="application/json",
                            headers={"Stream-Next-Offset": offset})

    errors: list[BaseException] = []
    clock = ManualClock()
    async with raw_server({("GET", "/runners/r1/wake"): wake_stream}) as url:
        runner = hostile_runner(url, live="long-poll", clock=clock, on_error=errors.append)
        async with started(runner):
            await eventually(lambda: runner.status == "reconnecting")
            [error] = errors
            assert isinstance(error, ProtocolError) and "Stream-Next-Offset" in str(error)
            assert runner.offset is None
            await clock.advance(1.0)
            await eventually(lambda: len(seen) == 2)
    assert seen == ["/runners/r1/wake?offset=-1"] * 2  # never echoed back


@pytest.mark.parametrize("header", [b"Stream-Next-Offset: 0001\r\n 0002\r\n",
                                    b"Stream-Next-Offset: 0001\r0002\r\n",
                                    b"Stream-Next-Offset: 00\x0b01\r\n",
                                    b"Stream-Next-Offset: 00\x0001\r\n"],
                         ids=["folded", "bare-cr", "vtab", "nul"])
async def test_offset_header_with_line_breaks_is_a_typed_error(header: bytes) -> None:
    """Raw bytes no HTTP library would write: a folded or split Stream-Next-Offset."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\n" + header + b"\r\n[]")
            await writer.drain()
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    errors: list[BaseException] = []
    try:
        runner = hostile_runner(f"http://127.0.0.1:{port}", live="long-poll",
                                clock=ManualClock(), on_error=errors.append)
        async with started(runner):
            await eventually(lambda: runner.status == "reconnecting")
            [error] = errors
            assert isinstance(error, (ProtocolError, ConnectError)), repr(error)
            assert runner.offset is None
    finally:
        server.close()
        await server.wait_closed()


# ======================================================================== TLS


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=20)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx, cert


def test_tls_verification_is_on_by_default() -> None:
    assert RunnerConfig(base_url="https://127.0.0.1:1", runner_id="r1").verify_tls is True


@pytest.mark.parametrize("value", [None, 0, "false", "no", 1])
def test_turning_tls_verification_off_takes_an_explicit_false(value: Any) -> None:
    with pytest.raises(ValueError, match="verify_tls"):
        RunnerConfig(base_url="https://127.0.0.1:1", runner_id="r1", verify_tls=value)


async def test_self_signed_certificate_is_refused_by_default(
        self_signed: tuple[ssl.SSLContext, Path]) -> None:
    srv = Electric()
    errors: list[BaseException] = []
    async with raw_server(srv.routes, ssl_context=self_signed[0]) as url:
        assert url.startswith("https://")
        runner = hostile_runner(url, on_error=errors.append, clock=ManualClock())
        async with started(runner):
            await eventually(lambda: runner.status == "reconnecting")
    [error] = errors
    assert isinstance(error, ConnectError)
    assert "certificate verify failed" in str(error).lower()
    assert srv.paths == []  # nothing was sent over the unverified connection


async def test_self_signed_certificate_is_accepted_when_verification_is_off(
        self_signed: tuple[ssl.SSLContext, Path]) -> None:
    srv = Electric()
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    async with raw_server(srv.routes, ssl_context=self_signed[0]) as url:
        runner = hostile_runner(url, rt, on_error=errors.append, verify_tls=False)
        async with started(runner):
            await assert_still_working(srv, runner, rt)
    assert errors == []
