"""Tests for :mod:`pullwake.io.reader`, the synchronous catch-up reader.

Rules for this module: every server is on 127.0.0.1 with port 0 and real
sockets; the local one is a small aiohttp app (:class:`FakeStreamServer`,
also used by ``test_cache.py``) run on its own loop in a background thread,
since ``requests`` is synchronous; it counts requests server-side. The
reference-server tests come last and use the ``real_ds_server`` fixture. Every
test has a hard timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import requests.exceptions as rexc
import requests_cache
from aiohttp import web

from pullwake.errors import (
    ConfigError,
    ConnectError,
    ConnectTimeout,
    IdleTimeout,
    InvalidMessage,
    MalformedMessage,
    OversizedMessage,
    ProtocolError,
    StreamStatusError,
    TransportError,
)
from pullwake.io.reader import ReadResult, read_stream
from pullwake.io.sync_http import translate_exception

# --------------------------------------------------------------------------- fake server


def offset_of(index: int) -> str:
    """The fake server's offset token for the position before message ``index``."""
    return f"{index:016d}"


@dataclass(frozen=True)
class Hit:
    """One request the fake server saw."""

    method: str
    path: str
    offset: str | None
    live: str | None
    authorization: str | None
    if_none_match: str | None
    headers: dict[str, str]
    status: int


Override = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


class FakeStreamServer:
    """A Durable Streams look-alike for JSON streams, counting every request.

    Offsets are ``%016d`` message indexes. ``chunk_messages`` caps messages
    per catch-up response (the reference server sends everything at once).
    A *tenant* stream answers with messages that name the caller's
    ``Authorization``, so a response served to the wrong credential shows.
    ``override`` may answer a request itself (misbehaving servers).
    """

    def __init__(self, *, chunk_messages: int | None = None) -> None:
        self.chunk_messages = chunk_messages
        self.streams: dict[str, list[bytes]] = {}
        self.closed: set[str] = set()
        self.tenant: set[str] = set()
        self.hits: list[Hit] = []
        self.override: Override | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.base = ""

    # -- data

    def create(self, name: str, *, tenant: bool = False) -> str:
        with self._lock:
            self.streams.setdefault(name, [])
            if tenant:
                self.tenant.add(name)
        return self.url(name)

    def append(self, name: str, *messages: Any) -> str:
        with self._lock:
            stream = self.streams[name]
            stream.extend(json.dumps(m, separators=(",", ":")).encode() for m in messages)
            return offset_of(len(stream))

    def close_stream(self, name: str) -> None:
        with self._lock:
            self.closed.add(name)

    def url(self, name: str) -> str:
        return f"{self.base}/v1/stream/{name}"

    def count(self, **match: Any) -> int:
        with self._lock:
            return sum(1 for h in self.hits if all(getattr(h, k) == v for k, v in match.items()))

    # -- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._answer(request)
        with self._lock:
            self.hits.append(
                Hit(
                    method=request.method,
                    path=request.match_info["name"],
                    offset=request.query.get("offset"),
                    live=request.query.get("live"),
                    authorization=request.headers.get("Authorization"),
                    if_none_match=request.headers.get("If-None-Match"),
                    headers=dict(request.headers),
                    status=response.status,
                )
            )
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if self.override is not None:
            answered = await self.override(request)
            if answered is not None:
                return answered
        name = request.match_info["name"]
        with self._lock:
            if name not in self.streams:
                return web.Response(status=404, text="Stream not found")
            stored = list(self.streams[name])
            closed = name in self.closed
            tenant = name in self.tenant
        if request.method == "POST":
            value = await request.json()
            return web.Response(
                status=204, headers={"Stream-Next-Offset": self.append(name, value)}
            )
        tail = len(stored)
        raw = request.query.get("offset", "-1")
        if raw == "now":
            return web.Response(
                body=b"[]",
                content_type="application/json",
                headers={
                    "Stream-Next-Offset": offset_of(tail),
                    "Stream-Up-To-Date": "true",
                    "Cache-Control": "no-store",
                },
            )
        if raw == "-1":
            start = 0
        elif raw.isdigit() and len(raw) == 16 and int(raw) <= tail:
            start = int(raw)
        else:
            return web.Response(status=400, text="Invalid offset format")
        live = request.query.get("live")
        if live == "long-poll" and start == tail:
            await asyncio.sleep(0.05)
            return web.Response(
                status=204,
                headers={"Stream-Next-Offset": offset_of(tail), "Stream-Up-To-Date": "true"},
            )
        end = tail if self.chunk_messages is None else min(tail, start + self.chunk_messages)
        chunk = stored[start:end]
        if tenant:
            who = request.headers.get("Authorization", "anonymous")
            chunk = [
                json.dumps({"tenant": who, "i": start + i}).encode() for i in range(len(chunk))
            ]
        etag = f'"{name}:{raw}:{offset_of(end)}{":c" if closed else ""}"'
        headers = {"Stream-Next-Offset": offset_of(end), "ETag": etag}
        if end == tail:
            headers["Stream-Up-To-Date"] = "true"
            if closed:
                headers["Stream-Closed"] = "true"
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(
            body=b"[" + b",".join(chunk) + b"]", content_type="application/json", headers=headers
        )

    # -- lifecycle

    def start(self) -> FakeStreamServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/v1/stream/{name:.+}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            try:
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, "127.0.0.1", 0)
                loop.run_until_complete(site.start())
                port = self._runner.addresses[0][1]
                self.base = f"http://127.0.0.1:{port}"
            except BaseException as exc:  # noqa: BLE001 - re-raised by start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-ds", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake server did not start")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@pytest.fixture
def fake() -> Iterator[FakeStreamServer]:
    server = FakeStreamServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def chunked() -> Iterator[FakeStreamServer]:
    server = FakeStreamServer(chunk_messages=2).start()
    try:
        yield server
    finally:
        server.stop()


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------- reads


@pytest.mark.timeout(20)
def test_reads_every_message_from_the_beginning(fake: FakeStreamServer) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1}, {"n": 2}, {"n": 3})

    result = read_stream(url)

    assert result.messages == ({"n": 1}, {"n": 2}, {"n": 3})
    assert result.next_offset == offset_of(3)
    assert result.up_to_date is True
    assert result.closed is False
    assert result.responses == 1 and result.cached_responses == 0
    assert fake.count(offset="-1") == 1


@pytest.mark.timeout(20)
def test_follows_next_offset_across_chunks_until_up_to_date(chunked: FakeStreamServer) -> None:
    url = chunked.create("a")
    chunked.append("a", *({"n": i} for i in range(5)))

    result = read_stream(url)

    assert [m["n"] for m in result.messages] == [0, 1, 2, 3, 4]
    assert result.up_to_date is True
    assert result.responses == 3
    assert [h.offset for h in chunked.hits] == ["-1", offset_of(2), offset_of(4)]


@pytest.mark.timeout(20)
def test_resuming_returns_only_new_messages_and_the_tail_is_empty(fake: FakeStreamServer) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})
    first = read_stream(url)

    at_tail = read_stream(url, first.next_offset)
    fake.append("a", {"n": 2})
    later = read_stream(url, first.next_offset)

    assert at_tail.messages == () and at_tail.next_offset == first.next_offset
    assert at_tail.up_to_date is True
    assert later.messages == ({"n": 2},)
    assert later.next_offset == offset_of(2)


@pytest.mark.timeout(20)
def test_offset_now_returns_the_tail_without_messages(fake: FakeStreamServer) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1}, {"n": 2})

    result = read_stream(url, "now")

    assert result.messages == ()
    assert result.next_offset == offset_of(2)
    assert result.up_to_date is True


@pytest.mark.timeout(20)
def test_until_stops_following_once_next_offset_reaches_it(chunked: FakeStreamServer) -> None:
    url = chunked.create("a")
    chunked.append("a", *({"n": i} for i in range(10)))

    result = read_stream(url, until=offset_of(4))

    assert [m["n"] for m in result.messages] == [0, 1, 2, 3]
    assert result.next_offset == offset_of(4)
    assert result.up_to_date is False
    assert chunked.count() == 2


@pytest.mark.timeout(20)
def test_until_inside_a_chunk_keeps_the_whole_chunk(chunked: FakeStreamServer) -> None:
    # Reads cannot be bounded on the server (§5.5): the last chunk may overshoot.
    url = chunked.create("a")
    chunked.append("a", *({"n": i} for i in range(10)))

    result = read_stream(url, until=offset_of(3))

    assert [m["n"] for m in result.messages] == [0, 1, 2, 3]
    assert result.next_offset == offset_of(4)


@pytest.mark.timeout(20)
def test_until_already_reached_makes_no_request(fake: FakeStreamServer) -> None:
    url = fake.create("a")

    result = read_stream(url, offset_of(7), until=offset_of(5))

    assert result == ReadResult(
        messages=(), next_offset=offset_of(7), up_to_date=False, closed=False
    )
    assert fake.count() == 0


@pytest.mark.timeout(20)
def test_until_past_the_tail_stops_at_up_to_date(fake: FakeStreamServer) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})

    result = read_stream(url, until=offset_of(99))

    assert result.messages == ({"n": 1},)
    assert result.up_to_date is True
    assert fake.count() == 1


@pytest.mark.timeout(20)
def test_a_closed_stream_reports_closed(fake: FakeStreamServer) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})
    fake.close_stream("a")

    result = read_stream(url)

    assert result.closed is True
    assert result.messages == ({"n": 1},)


@pytest.mark.timeout(20)
def test_headers_are_sent_and_the_given_session_is_used_and_left_open(
    fake: FakeStreamServer,
) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})
    sent: list[str] = []

    class Recording(requests.adapters.HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(request.url)
            return super().send(request, *args, **kwargs)

    with requests.Session() as session:
        session.mount("http://", Recording())
        read_stream(url, headers={"Authorization": "Bearer t1"}, session=session)
        read_stream(url, headers={"Authorization": "Bearer t1"}, session=session)

    assert len(sent) == 2
    assert fake.count(authorization="Bearer t1") == 2


@pytest.mark.timeout(20)
def test_result_is_frozen(fake: FakeStreamServer) -> None:
    url = fake.create("a")
    result = read_stream(url)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.next_offset = "x"  # type: ignore[misc]


@pytest.mark.timeout(20)
def test_a_response_from_any_cache_is_never_taken_as_up_to_date(fake: FakeStreamServer) -> None:
    # A plain requests-cache session stores Stream-Up-To-Date as it was; the
    # reader must still ask for the next offset and see what was appended.
    url = fake.create("a")
    fake.append("a", {"n": 1})
    with requests_cache.CachedSession(backend="memory") as session:
        first = read_stream(url, session=session)
        fake.append("a", {"n": 2})
        second = read_stream(url, session=session)

    assert first.messages == ({"n": 1},) and first.up_to_date is True
    assert second.messages == ({"n": 1}, {"n": 2})
    assert second.cached_responses == 1 and second.up_to_date is True
    assert fake.count(offset="-1") == 1


# ----------------------------------------------------------------------- validation


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../../etc",
        "0&live=sse",
        "1 2",
        "a\nb",
        "x" * 257,
        "ofs?x",
        "a/b",
        "a=b",
        "a,b",
        "café",
        None,
        5,
        b"-1",
    ],
)
def test_hostile_offsets_are_rejected_before_any_request(fake: FakeStreamServer, bad: Any) -> None:
    url = fake.create("a")
    with pytest.raises(ConfigError, match="offset"):
        read_stream(url, bad)
    if bad is not None:
        with pytest.raises(ConfigError, match="until"):
            read_stream(url, until=bad)
    assert fake.count() == 0


@pytest.mark.timeout(20)
@pytest.mark.parametrize("sentinel", ["-1", "now"])
def test_until_must_be_a_real_offset(fake: FakeStreamServer, sentinel: str) -> None:
    with pytest.raises(ConfigError, match="until"):
        read_stream(fake.create("a"), until=sentinel)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/v1/stream/a",
        "/v1/stream/a",
        "http:///nohost",
        "http://127.0.0.1:1/v1/stream/a?offset=5",
        "http://127.0.0.1:1/v1/stream/a?live=sse",
        "http://127.0.0.1:1/v1/stream/a#frag",
        42,
    ],
)
def test_bad_urls_are_config_errors(url: Any) -> None:
    with pytest.raises(ConfigError):
        read_stream(url)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": -1},
        {"timeout": 0},
        {"timeout": (1.0,)},
        {"timeout": float("nan")},
        {"timeout": "5"},
        {"max_bytes": 0},
        {"max_bytes": True},
        {"max_bytes": 1.5},
        {"headers": {"X": 1}},
        {"headers": [("X", "y")]},
        {"session": object()},
    ],
)
def test_bad_arguments_are_config_errors(fake: FakeStreamServer, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        read_stream(fake.create("a"), **kwargs)
    assert fake.count() == 0


@pytest.mark.timeout(20)
def test_a_header_value_with_a_newline_is_a_config_error(fake: FakeStreamServer) -> None:
    with pytest.raises(ConfigError) as info:
        read_stream(fake.create("a"), headers={"Authorization": "Bearer s3cr3t\r\nX: y"})
    assert "s3cr3t" not in str(info.value)


# --------------------------------------------------------------------- status codes


@pytest.mark.timeout(20)
def test_missing_stream_is_a_status_error_with_a_code(fake: FakeStreamServer) -> None:
    with pytest.raises(StreamStatusError) as info:
        read_stream(fake.url("missing"))
    assert info.value.status == 404
    assert info.value.code == "STREAM_NOT_FOUND"


@pytest.mark.timeout(20)
def test_the_servers_error_code_is_used_when_it_sends_one(fake: FakeStreamServer) -> None:
    url = fake.create("a")

    async def overloaded(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"code": "OVERLOADED", "message": "x"}}, status=503)

    fake.override = overloaded
    with pytest.raises(StreamStatusError) as info:
        read_stream(url)
    assert (info.value.status, info.value.code) == (503, "OVERLOADED")


@pytest.mark.timeout(20)
def test_gone_offset_is_a_status_error(fake: FakeStreamServer) -> None:
    url = fake.create("a")

    async def gone(request: web.Request) -> web.StreamResponse:
        return web.Response(status=410, text="Offset before retention")

    fake.override = gone
    with pytest.raises(StreamStatusError) as info:
        read_stream(url, offset_of(1))
    assert (info.value.status, info.value.code) == (410, "OFFSET_GONE")


# ----------------------------------------------------------------------- bad bodies


def _answer_with(
    body: bytes, *, content_type: str = "application/json", **headers: str
) -> Override:
    async def answer(request: web.Request) -> web.StreamResponse:
        hdrs = {"Stream-Next-Offset": offset_of(1), "Stream-Up-To-Date": "true", **headers}
        return web.Response(body=body, headers={"Content-Type": content_type, **hdrs})

    return answer


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"[{]", "application/json", MalformedMessage),
        (b"\xff\xfe\x00garbage", "application/json", MalformedMessage),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", MalformedMessage),
        (b'{"not": "an array"}', "application/json", InvalidMessage),
        (b'"just a string"', "application/json", InvalidMessage),
    ],
)
def test_a_body_that_is_not_a_json_array_is_a_typed_error(
    fake: FakeStreamServer, body: bytes, content_type: str, error: type[Exception]
) -> None:
    url = fake.create("a")
    fake.override = _answer_with(body, content_type=content_type)
    with pytest.raises(error) as info:
        read_stream(url)
    assert info.value.offset == "-1"  # type: ignore[attr-defined]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("content_type", "expected", "kind"), [
    ("text/plain", ("hello",), "text"), ("text/plain; charset=utf-8", ("hello",), "text"),
    ("application/octet-stream", (b"hello",), "bytes"), ("", (b"hello",), "bytes")])
def test_a_body_of_any_other_content_type_is_one_text_or_bytes_item(
    fake: FakeStreamServer, content_type: str, expected: tuple[Any, ...], kind: str
) -> None:
    url = fake.create("a")
    fake.override = _answer_with(b"hello", content_type=content_type)
    result = read_stream(url)
    assert (result.messages, result.kind) == (expected, kind)
    assert [(i.start, i.index) for i in result.items] == [("-1", 0)]


@pytest.mark.timeout(20)
def test_an_empty_200_body_means_no_messages(fake: FakeStreamServer) -> None:
    url = fake.create("a")
    fake.override = _answer_with(b"")
    assert read_stream(url).messages == ()


@pytest.mark.timeout(20)
def test_missing_next_offset_is_a_protocol_error(fake: FakeStreamServer) -> None:
    url = fake.create("a")

    async def no_offset(request: web.Request) -> web.StreamResponse:
        return web.json_response([1])

    fake.override = no_offset
    with pytest.raises(ProtocolError, match="Stream-Next-Offset"):
        read_stream(url)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("hostile", ["0&live=sse", "-1", "now", "a b", "x" * 300])
def test_an_invalid_next_offset_is_a_protocol_error(fake: FakeStreamServer, hostile: str) -> None:
    url = fake.create("a")

    async def bad(request: web.Request) -> web.StreamResponse:
        return web.json_response([1], headers={"Stream-Next-Offset": hostile})

    fake.override = bad
    with pytest.raises(ProtocolError, match="invalid Stream-Next-Offset"):
        read_stream(url)
    assert fake.count() == 1


@pytest.mark.timeout(20)
def test_an_offset_that_goes_backwards_is_a_protocol_error(fake: FakeStreamServer) -> None:
    url = fake.create("a")
    fake.override = _answer_with(b"[1]", **{"Stream-Up-To-Date": "false"})
    with pytest.raises(ProtocolError, match="backwards"):
        read_stream(url, offset_of(5))


@pytest.mark.timeout(20)
def test_no_progress_without_up_to_date_stops_instead_of_looping(fake: FakeStreamServer) -> None:
    url = fake.create("a")

    async def stuck(request: web.Request) -> web.StreamResponse:
        return web.json_response([], headers={"Stream-Next-Offset": offset_of(3)})

    fake.override = stuck
    with pytest.raises(ProtocolError, match="did not move"):
        read_stream(url, offset_of(3))
    assert fake.count() == 1


@pytest.mark.timeout(20)
def test_more_than_max_bytes_in_one_body_is_refused_naming_the_limit(
    fake: FakeStreamServer,
) -> None:
    url = fake.create("a")
    fake.append("a", *({"pad": "x" * 100} for _ in range(50)))
    with pytest.raises(OversizedMessage, match="max_bytes=1000") as info:
        read_stream(url, max_bytes=1000)
    assert info.value.size is not None and info.value.size > 1000


@pytest.mark.timeout(20)
def test_max_bytes_counts_across_chunks(chunked: FakeStreamServer) -> None:
    url = chunked.create("a")
    chunked.append("a", *({"pad": "x" * 100} for _ in range(10)))
    with pytest.raises(OversizedMessage, match="max_bytes=500"):
        read_stream(url, max_bytes=500)
    assert 1 < chunked.count() < 5
    assert len(read_stream(url, max_bytes=10_000).messages) == 10


# --------------------------------------------------------------------- transport


@pytest.mark.timeout(20)
def test_connection_refused_is_a_connect_error_from_the_original() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/stream/a"
    with pytest.raises(ConnectError) as info:
        read_stream(url, timeout=2)
    assert not isinstance(info.value, ConnectTimeout)
    assert isinstance(info.value.__cause__, rexc.ConnectionError)


@pytest.mark.timeout(20)
def test_no_headers_within_the_read_timeout_is_an_idle_timeout(fake: FakeStreamServer) -> None:
    url = fake.create("a")

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3)
        return web.json_response([])

    fake.override = slow
    with pytest.raises(IdleTimeout) as info:
        read_stream(url, timeout=(2, 0.3))
    assert isinstance(info.value.__cause__, rexc.RequestException)


@pytest.mark.timeout(20)
def test_a_body_that_stalls_is_an_idle_timeout(fake: FakeStreamServer) -> None:
    url = fake.create("a")

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Stream-Next-Offset": offset_of(1)}
        )
        await response.prepare(request)
        await response.write(b"[1,")
        await asyncio.sleep(3)
        return response

    fake.override = stall
    with pytest.raises(IdleTimeout):
        read_stream(url, timeout=(2, 0.3))


@pytest.mark.timeout(20)
def test_a_truncated_body_is_a_protocol_error(fake: FakeStreamServer) -> None:
    url = fake.create("a")

    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/json",
                "Stream-Next-Offset": offset_of(1),
                "Content-Length": "1000",
            }
        )
        await response.prepare(request)
        await response.write(b"[1,2,")
        assert request.transport is not None
        request.transport.close()
        return response

    fake.override = truncated
    with pytest.raises(ProtocolError) as info:
        read_stream(url)
    assert isinstance(info.value.__cause__, rexc.RequestException)


@pytest.mark.timeout(20)
def test_the_translation_table_covers_each_phase() -> None:
    url = "http://u:pw@127.0.0.1/v1/stream/a?token=s3cr3t"
    cases: list[tuple[Exception, bool, type[Exception]]] = [
        (rexc.ConnectTimeout(), False, ConnectTimeout),
        (rexc.ReadTimeout(), False, IdleTimeout),
        (rexc.SSLError(), False, ConnectError),
        (rexc.ConnectionError(), False, ConnectError),
        (rexc.ConnectionError(), True, ProtocolError),
        (rexc.ChunkedEncodingError(), True, ProtocolError),
        (rexc.ContentDecodingError(), True, ProtocolError),
        (rexc.TooManyRedirects(), False, ProtocolError),
        (rexc.InvalidURL(), False, ConfigError),
        (rexc.RetryError(), False, TransportError),
    ]
    for exc, body, expected in cases:
        mapped = translate_exception(exc, url, reading_body=body)  # type: ignore[arg-type]
        assert type(mapped) is expected, (exc, mapped)
        assert "pw" not in str(mapped) and "s3cr3t" not in str(mapped)


@pytest.mark.timeout(20)
def test_errors_never_show_credentials(fake: FakeStreamServer) -> None:
    secret_url = fake.url("missing").replace("http://", "http://user:pa55w0rd@") + "?token=s3cr3t"
    with pytest.raises(StreamStatusError) as info:
        read_stream(secret_url, headers={"Authorization": "Bearer t0ps3cr3t"})
    text = str(info.value)
    for secret in ("pa55w0rd", "s3cr3t", "t0ps3cr3t"):
        assert secret not in text
    assert "/v1/stream/missing" in text


# ------------------------------------------------------------------ reference server


@pytest.mark.timeout(60)
async def test_real_server_catch_up_resume_and_until(real_ds_server: Any) -> None:
    path = "reader/a"
    await real_ds_server.create_stream(path)
    for i in range(3):
        await real_ds_server.append(path, {"n": i})
    url = f"{real_ds_server.stream_root}/{path}"

    first = await asyncio.to_thread(read_stream, url)
    assert [m["n"] for m in first.messages] == [0, 1, 2]
    assert first.up_to_date is True and first.closed is False

    at_tail = await asyncio.to_thread(read_stream, url, first.next_offset)
    assert at_tail.messages == () and at_tail.next_offset == first.next_offset

    await real_ds_server.append(path, {"n": 3})
    later = await asyncio.to_thread(read_stream, url, first.next_offset)
    assert later.messages == ({"n": 3},)

    bounded = await asyncio.to_thread(read_stream, url, "-1", until=first.next_offset)
    assert bounded.next_offset >= first.next_offset


@pytest.mark.timeout(60)
async def test_real_server_missing_stream_and_bad_offset(real_ds_server: Any) -> None:
    url = f"{real_ds_server.stream_root}/reader/missing"
    with pytest.raises(StreamStatusError) as info:
        await asyncio.to_thread(read_stream, url)
    assert (info.value.status, info.value.code) == (404, "STREAM_NOT_FOUND")

    await real_ds_server.create_stream("reader/b")
    with pytest.raises(StreamStatusError) as bad:
        await asyncio.to_thread(
            read_stream, f"{real_ds_server.stream_root}/reader/b", "0000_not_an_offset"
        )
    assert bad.value.status == 400


@pytest.mark.timeout(60)
async def test_real_server_large_gzip_read_and_closed_stream(real_ds_server: Any) -> None:
    path = "reader/big"
    await real_ds_server.create_stream(path)
    await real_ds_server.append(path, [{"i": i, "pad": "x" * 1000} for i in range(300)])
    url = f"{real_ds_server.stream_root}/{path}"

    result = await asyncio.to_thread(read_stream, url)
    assert len(result.messages) == 300 and result.bytes_read > 300_000
    with pytest.raises(OversizedMessage):
        await asyncio.to_thread(read_stream, url, max_bytes=100_000)

    response = await asyncio.to_thread(
        requests.post,
        url,
        data=b'{"last":true}',
        headers={"Content-Type": "application/json", "Stream-Closed": "true"},
        timeout=10,
    )
    assert response.status_code in (200, 204)
    closed = await asyncio.to_thread(read_stream, url, result.next_offset)
    assert closed.closed is True and closed.messages == ({"last": True},)
