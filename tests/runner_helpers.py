"""Helpers for runner tests: a recording runtime, polling, and a runner factory.

Runner tests talk to a real EmbeddedServer over 127.0.0.1 sockets. ``eventually``
polls a condition with a hard limit; it never asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from pullwake import PullWakeRunner, RunnerConfig
from pullwake.io.clock import Clock
from pullwake.runtime.control import ClaimOutcome, WakeEvent
from pullwake.runtime.jobs import Jobs
from pullwake.runtime.logs import LabelledLog
from pullwake.testing import EmbeddedServer


class RecordingRuntime:
    """A Runtime that records every call, in order."""

    def __init__(self) -> None:
        self.dispatched: list[Any] = []
        self.calls: list[str] = []
        self.claim_headers: list[Any] = []
        self.token_headers: list[str | None] = []
        self.active: set[str] = set()
        self.drain_error: BaseException | None = None
        self.drain_gate: asyncio.Event | None = None
        self.abort_error: BaseException | None = None

    def dispatch_wake(self, notification: Any, *, claim_headers: Any,
                      claim_token_header: str | None) -> None:
        self.calls.append("dispatch")
        self.dispatched.append(notification)
        self.claim_headers.append(claim_headers)
        self.token_headers.append(claim_token_header)

    async def drain_wakes(self) -> None:
        self.calls.append("drain")
        if self.drain_gate is not None:
            await self.drain_gate.wait()
        if self.drain_error is not None:
            raise self.drain_error

    def abort_wakes(self) -> None:
        self.calls.append("abort")
        if self.abort_error is not None:
            raise self.abort_error

    def is_wake_active(self, stream_path: str) -> bool:
        return stream_path in self.active


async def eventually(predicate: Callable[[], Any], *, timeout: float = 5.0,
                     interval: float = 0.005, message: str = "") -> None:
    """Wait until ``predicate()`` is truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        if predicate():
            return
        if loop.time() > end:
            raise AssertionError(f"condition not reached in {timeout}s: {message or predicate}")
        await asyncio.sleep(interval)


def wake(stream: str = "s1", generation: int = 1, sub: str = "sub1") -> dict[str, Any]:
    return {"type": "wake", "subscription_id": sub, "stream": stream, "generation": generation}


def BOUND() -> float:
    """A backoff rng pinned at the top of the jitter range (``rng=BOUND``): each
    reconnect waits its bound, the original's 1 s, 2 s, 4 s … sequence."""
    return 1.0


def make_runner(server: EmbeddedServer, runtime: Any | None = None, *,
                runner_id: str = "r1", **overrides: Any) -> PullWakeRunner:
    # rng=BOUND: each reconnect waits its jitter's bound (1, 2, 4 … s), so a test
    # that moves a ManualClock through reconnects sees one schedule on every run;
    # pass rng=None for the default random source (the jittered reconnects).
    cfg: dict[str, Any] = {"base_url": server.url, "runner_id": runner_id,
                           "heartbeat_interval": 30.0, "rng": BOUND}
    cfg.update(overrides)
    return PullWakeRunner(RunnerConfig(**cfg), runtime or RecordingRuntime())


#: Real seconds a test's cleanup waits for ``runner.stop()``. A stop whose grace
#: runs on a manual clock nobody advances any more (the test failed half-way)
#: would wait forever, past pytest-timeout (which fires once, in the body).
STOP_BOUND_S = 15.0


async def bounded_stop(runner: PullWakeRunner, bound: float = STOP_BOUND_S) -> None:
    """``runner.stop()`` for a test's cleanup: its errors ignored, but never a hang."""
    try:
        await asyncio.wait_for(runner.stop(), bound)
    except TimeoutError:
        raise AssertionError(f"runner.stop() did not return within {bound:g}s "
                             f"(status {runner.status})") from None
    except Exception:  # noqa: BLE001 - cleanup: the test's own outcome is what counts
        pass


@contextlib.asynccontextmanager
async def started(runner: PullWakeRunner) -> AsyncIterator[PullWakeRunner]:
    runner.start()
    try:
        yield runner
    finally:
        await bounded_stop(runner)


def wake_requests(server: EmbeddedServer) -> list[Any]:
    return [r for r in server.requests_matching("/wake", method="GET")]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def raw_server(routes: dict[tuple[str, str], Handler], *,
                     ssl_context: ssl.SSLContext | None = None,
                     handler_cancellation: bool = False) -> AsyncIterator[str]:
    """A bare aiohttp app on 127.0.0.1, port 0; yields its base URL.

    ``handler_cancellation``: a handler is cancelled when its client goes away
    (for answers that never come)."""
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1,
                           handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "https" if ssl_context is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def server_path(srv: EmbeddedServer, path: str) -> str:
    """A stream's path as the embedded server sees it (where its faults match)."""
    return urlsplit(srv.stream_root).path + "/" + path


async def fill_stream(srv: EmbeddedServer, path: str, n: int,
                      batch: Callable[[int], list[Any]]) -> list[str]:
    """Create the JSON stream ``path`` and append ``batch(i)`` for ``i < n``, one
    request each; the offset after each append."""
    offsets = []
    async with aiohttp.ClientSession() as s:
        url = f"{srv.stream_root}/{path}"
        async with s.put(url, headers={"Content-Type": "application/json"}) as r:
            assert r.status in (200, 201)
        for i in range(n):
            async with s.post(url, data=json.dumps(batch(i)),
                              headers={"Content-Type": "application/json"}) as r:
                assert r.status in (200, 204)
                offsets.append(r.headers["Stream-Next-Offset"])
    return offsets


# ------------------------------------------------- the claims' seams (no HTTP)


class GrantingControl:
    """A control plane seam for a ``ClaimScheduler``: every claim is granted at once
    (no HTTP), keyed by subscription; it records the streams it claimed."""

    def __init__(self) -> None:
        self.claimed: list[str] = []

    def claim_key(self, wake: WakeEvent) -> str:
        return wake.subscription_id or wake.stream

    async def claim(self, http: Any, wake: WakeEvent) -> ClaimOutcome:
        self.claimed.append(wake.stream)
        return ClaimOutcome(True, {"wake": wake.stream})

    async def heartbeat(self, http: Any, **kw: Any) -> None:  # pragma: no cover - unused
        return None


class ClaimsOwner:
    """The claims' owner seam (a runner's ``ClaimOwner``), with a job owner of its own:
    ``failed`` gets what a job raised, ``reported`` what the claims reported."""

    http: Any = None
    claim_token_header = None

    def __init__(self, clock: Clock) -> None:
        self.log = LabelledLog(logging.getLogger("pullwake.test.claims"), "t1")
        self.failed: list[BaseException] = []
        self.jobs = Jobs(clock=clock, on_error=self.failed.append)
        self.reported: list[object] = []

    async def claim_headers(self) -> dict[str, str]:
        return {}

    def report(self, error: object, *, where: str = "runner", quiet: bool = False) -> None:
        self.reported.append(error)

    def activity(self) -> None:
        pass
