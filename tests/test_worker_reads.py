"""Worker handlers reading streams of every content type, async and sync alike.

Rules for this module: real sockets on 127.0.0.1 only, port 0, a hard timeout
on every test. ``ds_server`` tests run against the embedded server and the
reference server (``realserver``); tests that inspect the requests a handler
made use the embedded server, which records them. Every delivery test waits on
what the handlers saw and then on the server's acked offsets (never a sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pullwake import ConfigError, MessageError
from pullwake.io.cache import FetchCache
from pullwake.testing.interface import DurableStreamsServer
from pullwake.testing.server import EmbeddedServer
from pullwake.worker import Wake, Worker

pytestmark = [pytest.mark.timeout(120), pytest.mark.ds_server_options(long_poll_timeout=1.0)]

FAST: dict[str, Any] = {"claim_lease": 1.0, "heartbeat_interval": 0.5, "read_idle_timeout": 3.0,
                        "request_timeout": 2.0, "connect_timeout": 2.0, "stop_grace": 1.0}
TYPES = {"events/json": "application/json", "events/text": "text/plain",
         "events/bin": "application/octet-stream"}


def worker_for(srv: DurableStreamsServer, handler: Callable[[Wake], Any],
               **overrides: Any) -> Worker:
    opts: dict[str, Any] = {"server": srv.stream_root, "subscription": "sub1",
                            "wake_stream": "wake/pool", "pattern": "events/*",
                            "worker_name": "w1", "handler": handler, **FAST}
    opts.update(overrides)
    return Worker(**opts)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: worker.runner.running or task.done(), "the worker started")
        if task.done():
            task.result()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], Any], what: str, timeout: float = 90.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"not reached within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def put(http: aiohttp.ClientSession, srv: DurableStreamsServer, path: str,
              ctype: str, body: bytes | None = None) -> str:
    url = f"{srv.stream_root}/{path}"
    if body is None:
        async with http.put(url, headers={"Content-Type": ctype}) as resp:
            assert resp.status in (200, 201), await resp.text()
            return ""
    async with http.post(url, data=body, headers={"Content-Type": ctype}) as resp:
        assert resp.status in (200, 204), await resp.text()
        return resp.headers["Stream-Next-Offset"]


def body_of(ctype: str, i: int) -> bytes:
    if ctype == "application/json":
        return json.dumps({"i": i}).encode()
    if ctype == "text/plain":
        return f"line {i}\n".encode()
    return bytes([i, 0, 255])


def joined(ctype: str, items: list[Any]) -> Any:
    """What the handlers saw of one stream, as one value (chunks may split anyhow)."""
    if ctype == "application/json":
        return [m["i"] for m in items]
    return "".join(items) if ctype == "text/plain" else b"".join(items)


def once(ctype: str, items: list[Any]) -> list[int]:
    """The appends a handler saw, in order, each counted once.

    Delivery is at least once: a file-backed server may refuse an ack past the
    tail it has committed, so a range read past the claimed tail comes again in
    the next wake. Every append here is a whole record (``{"i": i}``,
    ``line i``, ``[i, 0, 255]``), so the handler's items parse back into the
    appends' numbers; a repeat must be a redelivery of one already seen.
    """
    value = joined(ctype, items)
    if ctype == "application/json":
        numbers = list(value)
    elif ctype == "text/plain":
        assert value == "" or value.endswith("\n"), f"a partial line: {value!r}"
        numbers = [int(line.removeprefix("line ")) for line in value.splitlines()]
    else:
        assert len(value) % 3 == 0, f"a partial record: {value!r}"
        numbers = [value[k] for k in range(0, len(value), 3)]
        assert value == b"".join(bytes([i, 0, 255]) for i in numbers), value
    first = list(dict.fromkeys(numbers))
    assert first == sorted(first), f"appends out of order: {numbers}"
    return first


@pytest.mark.parametrize("style", ["async", "sync"])
async def test_every_item_of_every_content_type_reaches_the_handler_with_offsets(
        ds_server: DurableStreamsServer, style: str) -> None:
    seen: dict[str, list[Any]] = {p: [] for p in TYPES}
    offsets: list[tuple[str, str, str, int]] = []
    lock = threading.Lock()

    def record(path: str, item: Any) -> None:
        with lock:
            seen[path].append(item.data)
            offsets.append((path, item.start, item.offset, item.index))

    async def handle_async(wake: Wake) -> None:
        for s in wake.streams:
            async for item in wake.items(s.path):
                record(s.path, item)

    def handle_sync(wake: Wake) -> None:
        for s in wake.streams:
            for item in wake.items(s.path):
                record(s.path, item)

    handler = handle_async if style == "async" else handle_sync
    n = 4
    async with aiohttp.ClientSession() as http:
        for path, ctype in TYPES.items():
            await put(http, ds_server, path, ctype)
        worker = worker_for(ds_server, handler)
        async with running(worker):
            tails = {}
            for i in range(n):
                for path, ctype in TYPES.items():
                    tails[path] = await put(http, ds_server, path, ctype, body_of(ctype, i))

            def done() -> bool:
                with lock:
                    return all(once(TYPES[p], seen[p]) == list(range(n)) for p in TYPES)

            await until(done, "every item handled")

            async def acked() -> bool:
                state = await ds_server.subscription_state("sub1")
                got = {s["path"]: s["acked_offset"] for s in (state or {}).get("streams", [])}
                return all(got.get(p) == tails[p] for p in TYPES)

            for _ in range(500):
                if await acked():
                    break
                await asyncio.sleep(0.02)
            assert await acked()
    with lock:
        for path, start, offset, index in offsets:
            assert start < offset <= tails[path] or start == "-1"
            assert index >= 0
        # Items of one chunk share its offset; the last one handed over is the tail.
        assert {p: max(o for q, _, o, _ in offsets if q == p) for p in TYPES} == tails


async def test_a_handler_can_skip_an_item_it_cannot_decode_and_checkpoint_past_it(
        real_ds_server: DurableStreamsServer) -> None:
    """The reference server stores JSON nested deeper than Python can decode (the
    embedded server refuses it), so this runs against it."""
    srv = real_ds_server
    skipped: list[MessageError] = []
    good: list[Any] = []

    async def handle(wake: Wake) -> None:
        for s in wake.streams:
            async for item in wake.items(s.path):
                if not item.ok:
                    assert item.error is not None
                    skipped.append(item.error)
                    continue
                good.append(item.data)

    deep = b'{"a":' * 3000 + b"1" + b"}" * 3000
    async with aiohttp.ClientSession() as http:
        await put(http, srv, "events/json", "application/json")
        # request_timeout as a worker's default is, not FAST's 0.5 s: on a loaded
        # machine an ack that took longer failed, and the wake came again.
        worker = worker_for(srv, handle, max_item_bytes=64 * 1024, request_timeout=10.0)
        async with running(worker):
            await put(http, srv, "events/json", "application/json", b'{"before": 1}')
            await put(http, srv, "events/json", "application/json", deep)
            await put(http, srv, "events/json", "application/json",
                      json.dumps({"big": "x" * 100_000}).encode())
            tail = await put(http, srv, "events/json", "application/json", b'{"after": 2}')
            await until(lambda: {"after": 2} in good, "the message after the poison")

            async def acked() -> bool:
                state = await srv.subscription_state("sub1")
                return any(s["acked_offset"] == tail for s in (state or {})["streams"])

            for _ in range(500):
                if await acked():
                    break
                await asyncio.sleep(0.02)
            assert await acked()
    assert good[0] == {"before": 1} and good[-1] == {"after": 2}
    # Delivery is at least once: a wake that came again repeats its items.
    assert {type(e).__name__ for e in skipped} == {"MalformedMessage", "OversizedMessage"}


async def test_messages_raises_the_typed_error_of_an_undecodable_message(
        real_ds_server: DurableStreamsServer) -> None:
    srv = real_ds_server
    errors: list[BaseException] = []

    async def handle(wake: Wake) -> None:
        for s in wake.streams:
            async for _ in wake.messages(s.path):
                pass

    async with aiohttp.ClientSession() as http:
        await put(http, srv, "events/json", "application/json")
        worker = worker_for(srv, handle, on_error=errors.append)
        async with running(worker):
            deep = b'{"a":' * 3000 + b"1" + b"}" * 3000
            await put(http, srv, "events/json", "application/json", deep)
            await until(lambda: errors, "the handler failed")
    assert isinstance(errors[0].__cause__, MessageError)


# ------------------------------------------------------------- the two sync bugs


async def test_a_sync_handler_sends_the_headers_providers_credentials(
        embedded_ds_server: EmbeddedServer) -> None:
    """On the seed's code ``_sync_headers`` was ``{}`` for a provider: no credentials."""
    srv = embedded_ds_server
    calls = 0
    read: list[Any] = []

    def provider() -> dict[str, str]:
        nonlocal calls
        calls += 1
        return {"Authorization": f"Bearer tok-{calls:06d}", "X-Tenant": "t1"}

    def handle(wake: Wake) -> None:
        for s in wake.streams:
            read.extend(wake.messages(s.path))

    async with aiohttp.ClientSession() as http:
        await put(http, srv, "events/json", "application/json")
        worker = worker_for(srv, handle, headers=provider)
        async with running(worker):
            await put(http, srv, "events/json", "application/json", b'{"k": 1}')
            await until(lambda: read == [{"k": 1}], "the sync handler read the message")
    reads = [r for r in srv.requests_matching("/v1/stream/events/json", method="GET")]
    assert reads
    for r in reads:
        assert r.headers.get("Authorization", "").startswith("Bearer tok-")
        assert r.headers.get("X-Tenant") == "t1"


def test_a_fetch_cache_string_is_refused_at_worker_construction() -> None:
    """On the seed's code the path was taken as a store name and failed every sync read."""
    with pytest.raises(ConfigError, match=r"FetchCache\.sqlite"):
        Worker(server="http://127.0.0.1:1/v1/stream", subscription="s", pattern="e/*",
               handler=lambda wake: None, fetch_cache="/path/x.sqlite")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        FetchCache(store="disk")  # type: ignore[arg-type]


async def test_a_sqlite_fetch_cache_serves_sync_reads(
        embedded_ds_server: EmbeddedServer, tmp_path: Path) -> None:
    srv = embedded_ds_server
    read: list[Any] = []

    def handle(wake: Wake) -> None:
        for s in wake.streams:
            read.extend(wake.messages(s.path))

    cache = FetchCache.sqlite(tmp_path / "x.sqlite")
    async with aiohttp.ClientSession() as http:
        await put(http, srv, "events/json", "application/json")
        worker = worker_for(srv, handle, fetch_cache=cache)
        async with running(worker):
            await put(http, srv, "events/json", "application/json", b'{"k": 1}')
            await until(lambda: read == [{"k": 1}], "the sync handler read the message")
            await put(http, srv, "events/json", "application/json", b'{"k": 2}')
            await until(lambda: read[-1:] == [{"k": 2}], "the second message")
    assert worker.stats.handler_errors == 0
    assert (tmp_path / "x.sqlite").exists()
