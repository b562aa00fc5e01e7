"""A server that forgot what the worker owns (issue 14, class 4).

An in-memory server that restarts loses every stream and subscription: the
wake stream answers 404 on the liveness HEAD and on connect. The worker
re-creates what it owns (the wake stream, then its subscriptions), says so in
the log, reads the new wake stream from the beginning and handles new work.
A wake stream re-created by someone else is noticed by its offsets going
back, and read anew.

Against the embedded server (``restart(keep_streams=False)``) and the real
reference server started without a data directory (memory mode); SSE and
long-poll. Real sockets on 127.0.0.1 only; every test has a hard timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from fixtures_servers import _skip_or_fail_real
from runner_helpers import RecordingRuntime, eventually, make_runner, started, wake
from test_worker_e2e import SUB, Seen, make_worker, reading_handler

from pullwake.testing.interface import DurableStreamsServer
from pullwake.testing.realserver import RealServer
from pullwake.testing.server import EmbeddedServer

pytestmark = [pytest.mark.timeout(90)]


@contextlib.asynccontextmanager
async def memory_server(kind: str) -> AsyncIterator[DurableStreamsServer]:
    if kind == "embedded":
        async with EmbeddedServer(long_poll_timeout=1.0) as emb:
            yield emb
        return
    _skip_or_fail_real()
    async with RealServer(long_poll_timeout=1.0) as real:  # no data_dir: memory only
        yield real


async def forget_everything(srv: DurableStreamsServer) -> None:
    if isinstance(srv, EmbeddedServer):
        await srv.restart(keep_streams=False)
    else:
        await srv.restart()


@pytest.mark.parametrize("live", ["sse", "long-poll"])
@pytest.mark.parametrize("kind", ["embedded", pytest.param("real", marks=pytest.mark.realserver)])
async def test_in_memory_restart_recreates_wake_stream_and_subscription(
        kind: str, live: str, caplog: pytest.LogCaptureFixture) -> None:
    seen = Seen()
    async with memory_server(kind) as srv:
        worker = make_worker(srv, reading_handler(seen, "w1"), live=live)
        with caplog.at_level(logging.WARNING, logger="pullwake"):
            async with worker:
                await srv.create_stream("events/a")
                await srv.append("events/a", {"stream": "events/a", "i": 0})
                await eventually(lambda: ("events/a", 0) in seen.ids(), timeout=20)
                for round_ in range(1, 3):  # twice: each restart forgets everything again
                    await forget_everything(srv)
                    assert await srv.subscription_state(SUB) is None
                    await eventually(lambda r=round_: worker.stats.wake_streams_recreated == r
                                     and worker.runner.status == "streaming", timeout=30)
                    await until_subscribed(srv)  # re-created after the reconnect
                    await srv.create_stream("events/b")
                    await srv.append("events/b", {"stream": "events/b", "i": round_})
                    await eventually(lambda r=round_: ("events/b", r) in seen.ids(),
                                     timeout=30)
                    await srv_delete(srv, "events/b")
        assert worker.stats.wake_streams_recreated == 2
        assert worker.stats.subscriptions_recreated >= 2
    assert "wake stream 'wake/pool' was gone" in caplog.text
    # whichever noticed first (the connect's 404, or the liveness HEAD's 404 and
    # then the offsets going back), the new stream is read from its beginning
    assert ("re-created it; reading it from the beginning" in caplog.text
            or "the stream was re-created; reading it from the beginning" in caplog.text)


async def until_subscribed(srv: DurableStreamsServer, *, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while await srv.subscription_state(SUB) is None:
        assert loop.time() < end, "the subscription was never re-created"
        await asyncio.sleep(0.02)


async def srv_delete(srv: DurableStreamsServer, path: str) -> None:
    """Delete a data stream so the next round can create it again (memory servers)."""
    import aiohttp

    async with aiohttp.ClientSession() as s, s.delete(f"{srv.stream_root}/{path}") as r:
        assert r.status in (200, 204), r.status


async def test_wake_stream_recreated_by_someone_else_is_read_from_the_beginning(
        caplog: pytest.LogCaptureFixture) -> None:
    """A runner that does not own its wake stream (the Electric profile) connects to
    a stream someone re-created: its offsets went back, so it is read anew and the
    wake at the new stream's start is not skipped."""
    async with EmbeddedServer() as srv:
        rt = RecordingRuntime()
        runner = make_runner(srv, rt, heartbeat_interval=0)
        with caplog.at_level(logging.WARNING, logger="pullwake"):
            async with started(runner):
                for i in range(5):
                    await srv.append_runner_wake("r1", wake(f"s{i}"))
                await eventually(lambda: len(rt.dispatched) == 5)
                old = runner.offset
                await srv.restart(keep_streams=False)
                await srv.append_runner_wake("r1", wake("after"))
                await eventually(lambda: len(rt.dispatched) == 6, timeout=20)
                assert runner.offset is not None and old is not None
                assert runner.offset < old  # the new stream's own offsets
    assert "offsets went back" in caplog.text and "reading it from the beginning" in caplog.text
