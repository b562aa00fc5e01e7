"""The io layer's hot paths map transport failures as :class:`translate` does.

``HttpClient.request`` and the async read shell's ``open`` and ``_piece``
call :func:`pullwake.io.http.transport_error` from a plain ``except`` (no
context manager per request): the same mapping :class:`translate` applies.
Checked here: the mapping itself against ``translate`` for each phase, and
end to end on the embedded server (real sockets on 127.0.0.1): a dropped
control request is a typed transport failure whose request-scoped secrets are
let go, and dropped reads (before the head, catch-up and long-poll; mid-body)
are marked as transport failures, so the shell retries them.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from runner_helpers import eventually, fill_stream, server_path
from yarl import URL

from pullwake import aiter_items, aread_stream
from pullwake.errors import (
    ConfigError,
    ConnectError,
    ConnectTimeout,
    ControlPlaneError,
    IdleTimeout,
    ProtocolError,
    PullwakeError,
    RequestTimeout,
)
from pullwake.io.clock import LoopClock
from pullwake.io.http import HttpClient, translate, transport_error
from pullwake.protocol import RetryPolicy
from pullwake.testing import EmbeddedServer

pytestmark = pytest.mark.timeout(60)

PATH = "events/io-errors"
TOKEN = "tok-0123456789abcdef"


def _response_error() -> aiohttp.ClientResponseError:
    info = aiohttp.RequestInfo(URL("http://127.0.0.1/x"), "POST",
                               CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {TOKEN}"})),
                               URL("http://127.0.0.1/x"))
    return aiohttp.ClientResponseError(info, (), status=502, message=f"bad {TOKEN}")


def _cases() -> list[BaseException]:
    return [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError(f"reset {TOKEN}"),
        aiohttp.ServerTimeoutError("slow"),
        TimeoutError("no progress within 5s"),
        aiohttp.InvalidURL("http://[::1"),
        ConnectionResetError(104, "reset"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
        ValueError(f"odd {TOKEN}"),
        _response_error(),
        ProtocolError("already ours"),
        asyncio.CancelledError(),
        KeyError("not a transport failure"),
    ]


def _through_translate(exc: BaseException, phase: Any) -> BaseException:
    try:
        with translate(phase, url="http://127.0.0.1/x", operation="claim", secrets=(TOKEN,)):
            raise exc
    except BaseException as raised:  # noqa: BLE001 - the comparison wants every outcome
        return raised
    raise AssertionError("unreachable")  # pragma: no cover


def _shape(error: BaseException) -> tuple[Any, ...]:
    return (type(error), str(error), getattr(error, "url", None),
            getattr(error, "operation", None))


@pytest.mark.parametrize("phase", ["connect", "read", "request"])
def test_transport_error_is_what_translate_raises(phase: Any) -> None:
    expected = {"connect": (ConnectError, ConnectTimeout), "read": (ProtocolError, IdleTimeout),
                "request": (ControlPlaneError, RequestTimeout)}[phase]
    for exc_a, exc_b in zip(_cases(), _cases(), strict=True):
        raised = _through_translate(exc_a, phase)
        mapped = transport_error(exc_b, phase, url="http://127.0.0.1/x", operation="claim",
                                 secrets=(TOKEN,))
        if mapped is None:  # passed through untouched
            assert raised is exc_a
            assert isinstance(exc_a, (PullwakeError, asyncio.CancelledError, KeyError))
            continue
        assert raised.__cause__ is exc_a
        assert _shape(raised) == _shape(mapped)
        assert isinstance(mapped, (*expected, ConfigError))
        assert TOKEN not in str(mapped) and TOKEN not in str(raised)
        if isinstance(exc_b, aiohttp.ClientError):  # scrubbed in place, on both paths
            assert repr(exc_a.args) == repr(exc_b.args) and TOKEN not in repr(exc_b.args)


# ------------------------------------------------------------- end to end


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer() as srv:
        yield srv


def _raw(srv: EmbeddedServer, path: str) -> str:
    return server_path(srv, path)


async def _fill(srv: EmbeddedServer, n: int) -> list[str]:
    return await fill_stream(srv, PATH, n, lambda i: [{"i": i, "pad": os.urandom(200).hex()}])


async def test_a_dropped_control_request_is_a_typed_failure_and_lets_its_secrets_go(
        server: EmbeddedServer) -> None:
    await _fill(server, 1)
    url = f"{server.stream_root}/{PATH}"
    server.drop(_raw(server, PATH), method="POST", count=1)  # (a POST is not sent again)
    http = HttpClient(headers=None, clock=LoopClock(), request_timeout=10.0)
    try:
        with pytest.raises(ControlPlaneError) as info:
            await http.request("POST", url, operation="append", json_body=[1],
                               headers={"Authorization": f"Bearer {TOKEN}"})
        assert type(info.value) is ControlPlaneError
        assert ": transport failure: ServerDisconnectedError" in str(info.value)
        assert isinstance(info.value.__cause__, aiohttp.ClientError)
        assert http.secrets == ()  # held for that request only
    finally:
        await http.close()


async def test_a_catch_up_read_dropped_before_its_head_is_retried(
        server: EmbeddedServer) -> None:
    offsets = await _fill(server, 3)
    server.drop(_raw(server, PATH), method="GET", count=2)  # (aiohttp sends it twice)
    result = await aread_stream(f"{server.stream_root}/{PATH}", offsets[0], until=offsets[2])
    assert [m["i"] for m in result.messages] == [1, 2]
    assert len(server.requests_matching(f"/{PATH}", method="GET")) == 3


async def test_a_long_poll_dropped_before_its_head_is_retried(server: EmbeddedServer) -> None:
    """A long-poll's broken wait is a ProtocolError (a live read's), retried
    only because the shell marks it a transport failure."""
    await _fill(server, 1)
    url = f"{server.stream_root}/{PATH}"
    # Twice: aiohttp itself sends a GET once more when the connection drops.
    server.drop(_raw(server, PATH), method="GET", count=2)
    gets = lambda: server.requests_matching(f"/{PATH}", method="GET")  # noqa: E731

    async def first() -> Any:
        async for item in aiter_items(url, "now", live="long-poll"):
            return item.value
        return None  # pragma: no cover - a long-poll read does not end by itself

    reading = asyncio.ensure_future(first())
    # The dropped long-polls, then the shell's retry waiting at the tail: now append.
    await eventually(lambda: len(gets()) >= 3 or reading.done(), timeout=30.0)
    assert not reading.done(), reading.exception()
    async with aiohttp.ClientSession() as s, s.post(
            url, data=json.dumps([{"i": "late"}]),
            headers={"Content-Type": "application/json"}) as r:
        assert r.status in (200, 204)
    assert await asyncio.wait_for(reading, 30) == {"i": "late"}
    assert all(g.query.get("live") == "long-poll" for g in gets())


async def test_a_read_cut_mid_body_is_retried(server: EmbeddedServer) -> None:
    offsets = await _fill(server, 30)
    server.drop(_raw(server, PATH), method="GET", after_bytes=3000, count=1)
    result = await aread_stream(f"{server.stream_root}/{PATH}", offsets[0], until=offsets[29],
                                max_message_bytes=1000)
    assert [m["i"] for m in result.messages] == list(range(1, 30))
    assert len(server.requests_matching(f"/{PATH}", method="GET")) == 2


async def test_a_read_error_echoing_a_sent_header_is_scrubbed() -> None:
    """A broken answer whose status line echoes the credential sent (a bad proxy):
    the typed error and aiohttp's own exception in its chain do not show it (the
    header values a shell sent are secrets of its errors, not only ``Bearer`` ones)."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 2x0 {TOKEN}\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(PullwakeError) as info:
            await aread_stream(f"http://127.0.0.1:{port}/v1/stream/x", "-1",
                               headers={"X-Api-Key": TOKEN}, retry=RetryPolicy(attempts=1))
    finally:
        server.close()
        await server.wait_closed()
    chain: list[BaseException] = []
    error: BaseException | None = info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(type(e).__module__.startswith("aiohttp") for e in chain)
    for e in chain:
        assert TOKEN not in str(e) and TOKEN not in repr(e.args), e
