"""A wrong server root is found at start, before anything is created there.

The reference server (and the embedded one, which answers like it) stores a
plain data stream at any path, so a subscription PUT below a wrong root
"succeeds" and nothing is ever handled. The worker first GETs its
subscription: only a subscription or 404 SUBSCRIPTION_NOT_FOUND proves a
stream root (PROTOCOL.md §6.3).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from pullwake import ConfigError, ServerRootError, Worker
from pullwake.runtime.server_root import likely_stream_root
from pullwake.testing.interface import DurableStreamsServer

pytestmark = pytest.mark.timeout(30)


async def _noop(wake: object) -> None:
    return None


def _worker(server: str) -> Worker:
    return Worker(server=server, subscription="sub1", wake_stream="wake/pool",
                  pattern="events/*", worker_name="w1", handler=_noop)


@pytest.mark.parametrize(("given", "likely"), [
    ("http://h:4437", "http://h:4437/v1/stream"),
    ("http://h:4437/", "http://h:4437/v1/stream"),
    ("http://h:4437/v1", "http://h:4437/v1/stream"),
    ("http://h:4437/v1/", "http://h:4437/v1/stream"),
    ("https://h/t/acme", "https://h/t/acme/v1/stream"),
    ("http://h:4437/v1/stream", "http://h:4437/v1/stream"),
])
def test_likely_stream_root(given: str, likely: str) -> None:
    assert likely_stream_root(given) == likely


@pytest.mark.parametrize("suffix", ["", "/", "/v1"])
async def test_a_wrong_root_is_refused_and_nothing_is_created(
        ds_server: DurableStreamsServer, suffix: str) -> None:
    server = ds_server.url + suffix
    worker = _worker(server)
    with pytest.raises(ServerRootError) as info:
        await worker.start()
    err = info.value
    assert isinstance(err, ConfigError)
    assert err.likely_root == ds_server.stream_root
    text = str(err)
    assert server.rstrip("/") in text
    assert ds_server.stream_root in text
    assert "not a Durable Streams stream root" in text
    await worker.stop()
    async with aiohttp.ClientSession() as s:
        for path in ("/wake/pool", "/__ds/subscriptions/sub1", "/v1/wake/pool",
                     "/v1/__ds/subscriptions/sub1"):
            async with s.head(ds_server.url + path) as r:
                assert r.status == 404, path  # no stray data stream was created


async def test_the_right_root_starts(ds_server: DurableStreamsServer) -> None:
    worker = _worker(ds_server.stream_root + "/")
    await worker.start()
    try:
        assert await ds_server.subscription_state("sub1") is not None
    finally:
        await worker.stop()


@pytest.fixture
async def put_without_subscription() -> AsyncIterator[str]:
    """A server whose GET says SUBSCRIPTION_NOT_FOUND but whose PUT answers no subscription."""

    async def get(_: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "SUBSCRIPTION_NOT_FOUND"}}, status=404)

    async def put(_: web.Request) -> web.Response:
        return web.Response(status=201)

    app = web.Application()
    app.router.add_get("/v1/stream/__ds/subscriptions/{id}", get)
    app.router.add_put("/v1/stream/__ds/subscriptions/{id}", put)
    app.router.add_put("/v1/stream/{tail:.*}", put)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1/stream"
    finally:
        await runner.cleanup()


async def test_a_put_answer_that_is_not_a_subscription_is_refused(
        put_without_subscription: str) -> None:
    worker = _worker(put_without_subscription)
    with pytest.raises(ServerRootError, match="without a subscription"):
        await worker.start()
    await worker.stop()
