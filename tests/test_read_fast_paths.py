"""The handler's catch-up read takes short cuts; each gives what the general read gives.

``wake.messages(path)`` drives :meth:`AsyncShell.step` itself (no async
generator per layer) and sends the worker's headers as its HTTP client
validated them (``checked_headers``), where :func:`pullwake.aread_stream`
goes through :meth:`AsyncShell.events` and validates its headers per request.
Here both read the same ``(acked, tail]`` range of the embedded server (real
sockets on 127.0.0.1, port 0) and must agree on the values, the offset read
to, the requests sent (headers included) and the typed errors, also across a
cut answer that is retried, a transient status and a final one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from runner_helpers import fill_stream, server_path

from pullwake import MessageError, StreamStatusError, aread_stream
from pullwake.io.clock import LoopClock
from pullwake.io.http import HttpClient, make_session
from pullwake.runtime.subscriptions import ClaimedStream
from pullwake.runtime.wake import Wake
from pullwake.testing import EmbeddedServer

pytestmark = pytest.mark.timeout(60)

PATH = "events/a"


@dataclass
class Reader:
    """A :class:`~pullwake.runtime.wake.WakeReader` over one HttpClient (no worker)."""

    http: HttpClient
    root: str
    clock: LoopClock
    max_item_bytes: int = 1024 * 1024
    request_timeout: float = 5.0

    def stream_url(self, path: str) -> str:
        return f"{self.root}/{path}"

    def sync_session(self) -> Any:  # pragma: no cover - async reads only here
        raise AssertionError("no sync reads in this module")

    def sync_headers(self) -> dict[str, str]:  # pragma: no cover
        raise AssertionError("no sync reads in this module")


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer() as srv:
        yield srv


def raw(srv: EmbeddedServer) -> str:
    """The stream's path as the server sees it (where its faults match)."""
    return server_path(srv, PATH)


async def fill(srv: EmbeddedServer, n: int) -> list[str]:
    """A JSON stream of ``n`` appends (two messages each); the offset after each."""
    return await fill_stream(srv, PATH, n, lambda i: [{"i": i, "pad": os.urandom(150).hex()}, i])


@contextlib.asynccontextmanager
async def wake_for(srv: EmbeddedServer, acked: str, tail: str, headers: Any = None,
                   limit: int = 1024 * 1024) -> AsyncIterator[Wake]:
    clock = LoopClock()
    http = HttpClient(headers=headers, clock=clock, request_timeout=5.0)
    stream = ClaimedStream(path=PATH, acked_offset=acked, tail_offset=tail)
    wake = Wake(subscription_id="s", wake_id="w", generation=1, streams=(stream,),
                _reader=Reader(http, srv.stream_root, clock, max_item_bytes=limit))
    try:
        yield wake
    finally:
        await http.close()


async def outcome(read: Callable[[], Any]) -> tuple[str, Any]:
    """What a read gave: its values and offset, or its error (type, text, offset, code)."""
    try:
        return "ok", await read()
    except (MessageError, StreamStatusError) as error:
        return "error", (type(error), str(error), getattr(error, "offset", None),
                         getattr(error, "code", None))


async def both(srv: EmbeddedServer, acked: str, tail: str, *, headers: Any = None,
               arm: Callable[[], Any] = lambda: None, limit: int = 1024 * 1024,
               again: bool = False) -> tuple[Any, Any, list[Any], list[Any]]:
    """The wake read and aread_stream of one range (``again``: twice); the GETs each sent.

    ``limit`` bounds one message on both paths (an answer larger than it is
    framed as it streams in, so a cut one has already handed values out).
    """
    url = f"{srv.stream_root}/{PATH}"

    async def via_wake() -> Any:  # twice: the second read finds the headers validated
        async with wake_for(srv, acked, tail, headers, limit) as wake:
            values = [v async for v in wake.messages(PATH)]
            if again:
                assert [v async for v in wake.messages(PATH)] == values
            return values, wake._read.get(PATH)

    async def via_general() -> Any:
        session = make_session()
        try:
            for _ in range(2 if again else 1):
                result = await aread_stream(url, acked, until=tail, headers=headers,
                                            session=session, max_message_bytes=limit)
        finally:
            await session.close()
        return list(result.messages), result.next_offset

    gets = lambda: srv.requests_matching(f"/{PATH}", method="GET")  # noqa: E731
    arm()
    n0 = len(gets())
    fast = await outcome(via_wake)
    n1 = len(gets())
    srv.clear_faults()
    arm()
    general = await outcome(via_general)
    srv.clear_faults()
    return fast, general, gets()[n0:n1], gets()[n1:]


def sent(requests: list[Any]) -> list[tuple[dict[str, str], dict[str, str]]]:
    """What matters of each GET: its query and the credentials it carried."""
    return [(r.query, {k: v for k, v in r.headers.items()
                       if k.lower() in ("authorization", "x-tenant")}) for r in requests]


async def test_a_wake_read_gives_the_values_and_offset_of_the_general_read(
        server: EmbeddedServer) -> None:
    offsets = await fill(server, 12)
    fast, general, fast_gets, general_gets = await both(server, offsets[2], offsets[9])
    assert fast == general
    status, (values, offset) = fast
    # One answer holds the range and what follows it: both hand over all of it.
    assert status == "ok" and offset == offsets[11]
    assert [v for v in values if isinstance(v, int)] == list(range(3, 12))
    assert sent(fast_gets) == sent(general_gets)


@pytest.mark.parametrize("style", ["mapping", "provider", "async provider"])
async def test_a_wake_read_sends_the_headers_the_general_read_sends(
        server: EmbeddedServer, style: str) -> None:
    offsets = await fill(server, 3)
    calls = 0
    static = {"Authorization": "Bearer tok-static-1", "X-Tenant": "t1"}

    def provider() -> dict[str, str]:
        nonlocal calls
        calls += 1
        return {"Authorization": f"Bearer tok-{calls:04d}", "X-Tenant": "t1"}

    async def aprovider() -> dict[str, str]:
        return provider()

    headers = {"mapping": static, "provider": provider, "async provider": aprovider}[style]
    fast, general, fast_gets, general_gets = await both(server, offsets[0], offsets[2],
                                                        headers=headers, again=True)
    assert fast == general and fast[0] == "ok"
    assert len(fast_gets) == len(general_gets) == 2
    if style == "mapping":
        assert sent(fast_gets) == sent(general_gets)
        assert sent(fast_gets)[0][1] == static
    else:  # a provider is asked before every request, on both paths
        for got in (fast_gets, general_gets):
            assert all(r.headers["Authorization"].startswith("Bearer tok-") and
                       r.headers["X-Tenant"] == "t1" for r in got)
        assert calls == len(fast_gets) + len(general_gets)


async def test_an_answer_cut_mid_body_is_read_again_without_repeats_on_both_paths(
        server: EmbeddedServer) -> None:
    offsets = await fill(server, 40)  # ~13 KB (incompressible): several pieces, cut at 5 KB
    fast, general, fast_gets, general_gets = await both(
        server, offsets[0], offsets[39],
        arm=lambda: server.drop(raw(server), method="GET", after_bytes=5000, count=1),
        limit=1000)
    assert fast == general
    status, (values, _) = fast
    assert status == "ok"
    assert [v for v in values if isinstance(v, int)] == list(range(1, 40))
    assert len(fast_gets) == len(general_gets) == 2  # the cut answer, then its retry


async def test_a_transient_status_is_retried_and_a_final_one_typed_alike(
        server: EmbeddedServer) -> None:
    offsets = await fill(server, 3)
    fast, general, fast_gets, _ = await both(
        server, offsets[0], offsets[2],
        arm=lambda: server.fail(raw(server), 503, method="GET", count=1))
    assert fast == general and fast[0] == "ok" and len(fast_gets) == 2
    fast, general, _, _ = await both(
        server, offsets[0], offsets[2],
        arm=lambda: server.fail(raw(server), 404, body={"error": {"code": "STREAM_NOT_FOUND"}},
                                method="GET"))
    assert fast == general
    assert fast[0] == "error" and fast[1][0] is StreamStatusError
    assert fast[1][3] == "STREAM_NOT_FOUND"


async def test_an_undecodable_answer_raises_the_same_typed_error(server: EmbeddedServer) -> None:
    offsets = await fill(server, 3)
    fast, general, _, _ = await both(
        server, offsets[0], offsets[2],
        arm=lambda: server.corrupt(raw(server), method="GET"))
    assert fast == general
    assert fast[0] == "error" and issubclass(fast[1][0], MessageError)


async def test_the_session_keeps_no_cookies(server: EmbeddedServer) -> None:
    """A ``Set-Cookie`` (the protocol uses none) is never sent back by pullwake's session."""
    seen: list[str | None] = []

    async def handler(request: aiohttp.web.Request) -> aiohttp.web.Response:
        seen.append(request.headers.get("Cookie"))
        response = aiohttp.web.Response(text="ok")
        response.set_cookie("sid", "abc123")
        return response

    app = aiohttp.web.Application()
    app.router.add_get("/", handler)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = make_session()
    try:
        for _ in range(2):
            async with session.get(f"http://127.0.0.1:{port}/") as r:
                assert r.status == 200 and "sid" in r.cookies  # the server did set one
        assert seen == [None, None]
        assert len(session.cookie_jar) == 0
    finally:
        await session.close()
        await runner.cleanup()


async def test_a_large_compressed_answer_is_read_whole_on_both_paths(
        server: EmbeddedServer) -> None:
    """Draining aiohttp's buffer can resume its parser, which may then buffer the rest
    of the body and its end before the read returns: a piece taken with the end in
    sight is only the last one once the buffer is empty too (``at_eof``)."""
    async with aiohttp.ClientSession() as s:
        url = f"{server.stream_root}/{PATH}"
        async with s.put(url, headers={"Content-Type": "application/json"}) as r:
            assert r.status in (200, 201)
        batch = [{"i": i, "pad": "y" * 200} for i in range(2000)]  # ~0.4 MB, gzip ~1 %
        async with s.post(url, data=json.dumps(batch),
                          headers={"Content-Type": "application/json"}) as r:
            first = r.headers["Stream-Next-Offset"]
        for k in range(1, 8):
            async with s.post(url, data=json.dumps([{**m, "k": k} for m in batch]),
                              headers={"Content-Type": "application/json"}) as r:
                tail = r.headers["Stream-Next-Offset"]
    # (a limit above the body's size: it is framed whole, at its end)
    fast, general, fast_gets, _ = await both(server, first, tail, limit=16 * 1024 * 1024)
    assert fast == general
    assert fast[0] == "ok" and len(fast[1][0]) == 7 * 2000
    assert len(fast_gets) == 1


async def test_a_large_compressed_control_answer_is_read_whole(server: EmbeddedServer) -> None:
    """The same for HttpClient's bodies: ``read_bounded`` (whole) and ``small_body``
    (a parser's one-go read) give the answer's every byte, as aiohttp's own read does."""
    async with aiohttp.ClientSession() as s:
        url = f"{server.stream_root}/{PATH}"
        async with s.put(url, headers={"Content-Type": "application/json"}) as r:
            assert r.status in (200, 201)
        # ~0.85 MB, 3 KB gzipped: the first read of the buffer lets the parser go on
        # and buffer the rest with the end, before the read returns (aiohttp 3.14).
        async with s.post(url, data=json.dumps([{"pad": "y" * 200}] * 4000),
                          headers={"Content-Type": "application/json"}) as r:
            assert r.status in (200, 204)
        async with s.get(url, params={"offset": "-1"}) as r:
            assert r.headers.get("Content-Encoding") == "gzip"  # (what this test is about)
            expected = await r.read()
    http = HttpClient(headers=None, clock=LoopClock(), request_timeout=5.0)
    whole_url = f"{url}?offset=-1"

    async def one_go(reader: Any) -> bytes:
        body = await reader.small_body()
        if body is None:  # not known small: read it as a parser would
            body = b""
            while chunk := await reader.read(65536):
                body += chunk
                reader.mark()
        return bytes(body)

    try:
        whole = await http.request("GET", whole_url, operation="t", max_body=64 << 20)
        parsed = await http.request("GET", whole_url, operation="t", consume=one_go,
                                    item_limit=64 << 20)
    finally:
        await http.close()
    assert whole.body == expected
    assert parsed.streamed == expected
