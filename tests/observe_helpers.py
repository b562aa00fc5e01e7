"""Helpers for the observability tests: a fast worker, its health server, HTTP gets.

Everything runs on 127.0.0.1 with port 0 against an EmbeddedServer. Timeouts
are short so a hang is noticed quickly: heartbeats every 0.2 s, each bounded
by 0.5 s, and two failures reset the wake stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from pullwake import HealthServer, Worker
from pullwake.testing import EmbeddedServer

SUB = "sub1"
PATTERN = "events/*"
FAST: dict[str, Any] = {
    "claim_lease": 1.0,
    "heartbeat_interval": 0.2,
    "read_idle_timeout": 2.0,
    "request_timeout": 0.5,
    "connect_timeout": 0.5,
    "stop_grace": 1.0,
}


async def noop(wake: Any) -> None:
    for stream in wake.streams:
        async for _ in wake.messages(stream.path):
            pass


def make_worker(srv: EmbeddedServer, *, name: str = "w1", sub: str = SUB,
                pattern: str = PATTERN, handler: Any = noop, **overrides: Any) -> Worker:
    opts = {**FAST, **overrides}
    return Worker(server=srv.stream_root, subscription=sub, wake_stream="wake/pool",
                  pattern=pattern, worker_name=name, handler=handler, **opts)


@contextlib.asynccontextmanager
async def serving(worker: Worker, *, start: bool = True, **opts: Any
                  ) -> AsyncIterator[HealthServer]:
    """A bound health server for ``worker`` (started too unless ``start=False``)."""
    health = HealthServer(worker, port=0, **opts)
    await health.start()
    try:
        if start:
            await worker.start()
        yield health
    finally:
        try:
            await worker.stop()
        finally:
            await health.stop()


async def get(url: str) -> tuple[int, Any]:
    """GET ``url``: (status, JSON body or text)."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


async def acked_to_tail(srv: Any, path: str, *, sub: str = SUB, timeout: float = 20.0) -> None:
    """Wait until the subscription's acked offset of ``path`` is the stream's tail."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    tail = await srv.tail_offset(path)
    while True:
        state = await srv.subscription_state(sub) or {}
        acked = {s["path"]: s["acked_offset"] for s in state.get("streams", [])}
        if acked.get(path) == tail:
            return
        assert loop.time() < end, f"{path} not acked to {tail} in {timeout}s: {acked}"
        await asyncio.sleep(0.02)
