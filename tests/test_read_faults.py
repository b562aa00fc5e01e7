"""Issue 14's read-path fault classes: big answers, poison, drips, redirects.

Rules for this module: real sockets on 127.0.0.1 only, port 0, a hard timeout
on every test; hostile servers are local aiohttp apps; worker tests run
against the embedded and the reference server. Every test waits on an event
or asserts on what a server received, never on elapsed time.

- class 1: a backlog far larger than any per-answer cap is read in full by
  async and sync handlers; a long-poll restart over a wake stream with more
  than 16 MiB of history handles the pending wake.
- class 2: a pathological (deeply nested) wake event is skipped with a record
  and the offset moves past it, in both live modes, with no reconnect.
- class 8: a body that drips one byte at a time is stalled by the
  lack-of-progress bound, on the sync path as on the async one.
- class 10: reads never follow redirects, so credentials never go to another
  origin and another origin's data is never taken as the stream's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pullwake import IdleTimeout, StreamStatusError, aread_stream, read_stream
from pullwake.protocol import NO_RETRY
from pullwake.testing.interface import DurableStreamsServer
from pullwake.worker import Wake, Worker

pytestmark = [pytest.mark.timeout(60), pytest.mark.ds_server_options(long_poll_timeout=1.0)]

FAST: dict[str, Any] = {"claim_lease": 5.0, "heartbeat_interval": 0.5, "read_idle_timeout": 3.0,
                        "request_timeout": 5.0, "connect_timeout": 2.0, "stop_grace": 1.0}
KiB = 1024
MiB = 1024 * KiB


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: worker.runner.running or task.done(), "started")
        if task.done():
            task.result()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], Any], what: str, timeout: float = 45.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"not reached within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def post(http: aiohttp.ClientSession, url: str, body: bytes,
               ctype: str = "application/json") -> str:
    async with http.post(url, data=body, headers={"Content-Type": ctype}) as resp:
        assert resp.status in (200, 204), await resp.text()
        return resp.headers["Stream-Next-Offset"]


async def create(http: aiohttp.ClientSession, url: str) -> None:
    async with http.put(url, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status in (200, 201), await resp.text()


# ---------------------------------------------------------------- class 1


@pytest.mark.parametrize("style", ["async", "sync"])
async def test_a_20_mb_backlog_of_100_kib_messages_is_handled(
        ds_server: DurableStreamsServer, style: str) -> None:
    n = 200
    got: list[int] = []
    lock = threading.Lock()
    backlog = threading.Event()  # set once all n messages are appended

    async def handle_async(wake: Wake) -> None:
        await asyncio.get_running_loop().run_in_executor(None, backlog.wait)
        for s in wake.streams:
            async for m in wake.messages(s.path):
                with lock:
                    got.append(m["i"])

    def handle_sync(wake: Wake) -> None:
        backlog.wait()
        for s in wake.streams:
            for m in wake.messages(s.path):
                with lock:
                    got.append(m["i"])

    url = f"{ds_server.stream_root}/big/a"
    pad = "p" * (100 * KiB)
    async with aiohttp.ClientSession() as http:
        await create(http, url)
        worker = Worker(server=ds_server.stream_root, subscription="big", pattern="big/*",
                        worker_name="w1",
                        handler=handle_async if style == "async" else handle_sync, **FAST)
        async with running(worker):
            # The first wake's handler waits until the backlog is there: its one
            # catch-up answer from the acked offset is then all 20 MB.
            for i in range(n):
                await post(http, url, json.dumps({"i": i, "pad": pad}).encode())
            backlog.set()
            await until(lambda: sorted(set(got)) == list(range(n)), "the whole backlog")
    assert worker.stats.handler_errors == 0


async def test_a_long_poll_restart_over_16_mib_of_wake_history_handles_the_pending_wake(
        ds_server: DurableStreamsServer) -> None:
    handled: list[str] = []

    async def handle(wake: Wake) -> None:
        handled.extend(s.path for s in wake.streams)

    root = ds_server.stream_root
    async with aiohttp.ClientSession() as http:
        await create(http, f"{root}/wake/pool")
        noise = json.dumps({"type": "noise", "pad": "n" * (256 * KiB)}).encode()
        for _ in range(68):  # 17 MiB of history the worker must read past at start
            await post(http, f"{root}/wake/pool", noise)
        await create(http, f"{root}/events/a")
        worker = Worker(server=root, subscription="sub1", pattern="events/*",
                        worker_name="w1", handler=handle, live="long-poll", **FAST)
        async with running(worker):
            await post(http, f"{root}/events/a", b'{"k": 1}')
            await until(lambda: "events/a" in handled, "the pending wake")
        assert worker.runner.health().reconnect_count == 0


# ---------------------------------------------------------------- class 2


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_a_deeply_nested_wake_event_is_skipped_without_reconnecting(
        real_ds_server: DurableStreamsServer, live: str) -> None:
    """The reference server stores JSON nested deeper than Python decodes."""
    errors: list[BaseException] = []
    handled: list[str] = []

    async def handle(wake: Wake) -> None:
        handled.extend(s.path for s in wake.streams)

    root = real_ds_server.stream_root
    deep = b'{"type":"wake","x":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}"
    async with aiohttp.ClientSession() as http:
        await create(http, f"{root}/events/a")
        worker = Worker(server=root, subscription="sub1", pattern="events/*",
                        worker_name="w1", handler=handle, live=live, on_error=errors.append,
                        **FAST)
        async with running(worker):
            await until(lambda: worker.runner.status == "streaming", "streaming")
            poison = await post(http, f"{root}/wake/pool", deep)
            await until(lambda: (worker.runner.offset or "") >= poison, "past the poison")
            await post(http, f"{root}/events/a", b'{"k": 1}')
            await until(lambda: "events/a" in handled, "the wake after the poison")
            assert worker.runner.health().reconnect_count == 0
    assert any("nested too deeply" in str(e) for e in errors)


# ---------------------------------------------------------------- class 8


@contextlib.asynccontextmanager
async def app_server(routes: dict[str, Callable[[web.Request], Any]]) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path", ["sync", "async"])
async def test_a_dripping_body_is_bounded_by_lack_of_progress(path: str) -> None:
    sent = 0
    stop = asyncio.Event()

    async def drip(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                           "Stream-Next-Offset": "0_1"})
        await resp.prepare(request)
        await resp.write(b"[")
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not stop.is_set() and sent < 10_000:
                await resp.write(b" ")  # one byte at a time, each well inside the timeout
                sent += 1
                await asyncio.sleep(0.05)
        return resp

    async with app_server({"/v1/stream/s": drip}) as base:
        url = f"{base}/v1/stream/s"
        with pytest.raises(IdleTimeout, match="no progress"):
            if path == "sync":
                await asyncio.to_thread(read_stream, url, timeout=(2, 0.5), retry=NO_RETRY)
            else:
                await aread_stream(url, idle_timeout=0.5, retry=NO_RETRY)
        stop.set()
    assert sent < 10_000  # it gave up long before the body could end


# ---------------------------------------------------------------- class 10


@pytest.mark.parametrize("path", ["sync", "async"])
async def test_reads_never_follow_a_redirect_to_another_origin(path: str) -> None:
    seen: list[dict[str, str]] = []

    async def other(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response(["not the stream's data"],
                                 headers={"Stream-Next-Offset": "0_9",
                                          "Stream-Up-To-Date": "true"})

    async with app_server({"/v1/stream/s": other}) as elsewhere:
        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"{elsewhere}/v1/stream/s?{request.query_string}")

        async with app_server({"/v1/stream/s": redirect}) as base:
            url = f"{base}/v1/stream/s"
            headers = {"X-Api-Key": "k3y-s3cr3t"}
            with pytest.raises(StreamStatusError) as info:
                if path == "sync":
                    await asyncio.to_thread(read_stream, url, headers=headers)
                else:
                    await aread_stream(url, headers=headers)
    assert info.value.status == 302 and "k3y-s3cr3t" not in str(info.value)
    assert seen == []  # nothing, and no credential, ever reached the other origin


# ---------------------------------------------------------------- secrets, both paths


@pytest.mark.parametrize("path", ["sync", "async"])
async def test_a_server_echoing_the_credential_as_its_error_code_is_scrubbed(
        path: str) -> None:
    token = "t0k3n-" + "s3cr3t" * 3

    async def echo(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "").split(" ", 1)[-1]
        return web.json_response({"error": {"code": sent}}, status=400)

    async with app_server({"/v1/stream/s": echo}) as base:
        url = f"{base}/v1/stream/s"
        provider = lambda: {"Authorization": f"Bearer {token}"}  # noqa: E731
        with pytest.raises(StreamStatusError) as info:
            if path == "sync":
                await asyncio.to_thread(read_stream, url, headers=provider)
            else:
                await aread_stream(url, headers=provider)
    assert info.value.status == 400 and info.value.code == "***"
    assert token not in str(info.value) and token not in repr(info.value.__dict__)
