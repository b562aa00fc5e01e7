"""End-to-end: the Worker against the embedded and the reference server.

Rules for this module: real sockets on 127.0.0.1 only, port 0, a hard timeout
on every test. Tests taking ``ds_server`` run against the embedded server and
the file-backed reference server (``realserver`` marker; skipped without node
unless ``PULLWAKE_REQUIRE_REAL_SERVER=1``). Producers append over HTTP, as an
application would. Every delivery test ends by reading the subscription back
from the server: each stream's acked offset must equal its tail, and every
appended message must have reached a handler (at least once). The crashed
worker is a child process killed with SIGKILL. One restart race needs appends
while the server is down and uses the embedded server alone. Leases are
1000 ms, the minimum, and every timeout is short so the module stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from pullwake.errors import HandlerError, SubscriptionError
from pullwake.runtime.subscriptions import SubscriptionConfig
from pullwake.testing.interface import DurableStreamsServer
from pullwake.testing.server import EmbeddedServer
from pullwake.worker import Wake, Worker

#: Keep-alives (SSE control events) every second, well inside read_idle_timeout.
pytestmark = [pytest.mark.timeout(45), pytest.mark.ds_server_options(long_poll_timeout=1.0)]

JSON = {"Content-Type": "application/json"}
LEASE_MS = 1000
SUB = "sub1"
WAKE_STREAM = "wake/pool"
PATTERN = "events/*"
SUBS_PATH = "/v1/stream/__ds/subscriptions"
CLAIM_PATH = f"{SUBS_PATH}/{SUB}/claim"
ACK_PATH = f"{SUBS_PATH}/{SUB}/ack"
WAKE_PATH = f"/v1/stream/{WAKE_STREAM}"
#: Short everything: a 1 s lease (extended every 1/3 s), a silent stream
#: noticed within 3 s, a hung control-plane call abandoned within 2 s.
FAST: dict[str, Any] = {
    "claim_lease": LEASE_MS / 1000,
    "heartbeat_interval": 0.5,
    "read_idle_timeout": 3.0,
    "request_timeout": 2.0,
    "connect_timeout": 2.0,
    "stop_grace": 1.0,
}


# ------------------------------------------------------------------ helpers


@dataclass
class Seen:
    """What the handlers of one test saw."""

    #: (worker, path, message) for every message a handler read.
    messages: list[tuple[str, str, Any]] = field(default_factory=list)
    #: (worker, subscription, generation, recovered) for every wake handed over.
    wakes: list[tuple[str, str, int | None, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self) -> set[tuple[str, int]]:
        return {(m["stream"], m["i"]) for _, _, m in self.messages}

    def generations(self, sub: str = SUB) -> list[int | None]:
        return [g for _, s, g, recovered in self.wakes if s == sub and not recovered]

    def wake_record(self, worker: str, wake: Wake) -> None:
        with self.lock:
            self.wakes.append((worker, wake.subscription_id, wake.generation, wake.recovered))

    def message_record(self, worker: str, path: str, m: Any) -> None:
        with self.lock:
            self.messages.append((worker, path, m))


def reading_handler(seen: Seen, worker: str, *, delay: float = 0.0
                    ) -> Callable[[Wake], Any]:
    """An async handler that reads every stream of the wake and records it all."""

    async def handle(wake: Wake) -> None:
        seen.wake_record(worker, wake)
        for s in wake.streams:
            async for m in wake.messages(s.path):
                seen.message_record(worker, s.path, m)
        if delay:
            await asyncio.sleep(delay)

    return handle


def make_worker(srv: DurableStreamsServer, handler: Callable[[Wake], Any], *,
                name: str = "w1", **overrides: Any) -> Worker:
    opts: dict[str, Any] = {"server": srv.stream_root, "subscription": SUB,
                            "wake_stream": WAKE_STREAM, "pattern": PATTERN,
                            "worker_name": name, "handler": handler, **FAST}
    opts.update(overrides)
    return Worker(**opts)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    """``worker.run()`` as a task, once started; cancelled (a graceful stop) on the way out."""
    task = asyncio.create_task(worker.run())
    try:
        # Appends before the subscription exists are not its work: wait for start().
        await wait_until(lambda: worker.runner.running or task.done(), timeout=10,
                         what="the worker started")
        if task.done():
            task.result()
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def append(http: aiohttp.ClientSession, srv: DurableStreamsServer, path: str,
                 value: Any) -> str:
    async with http.post(f"{srv.stream_root}/{path}", data=json.dumps(value),
                         headers=JSON) as resp:
        assert resp.status == 204, await resp.text()
        return resp.headers["Stream-Next-Offset"]


async def produce(http: aiohttp.ClientSession, srv: DurableStreamsServer,
                  paths: Iterable[str], per_stream: int, *, start: int = 0) -> None:
    """Append ``per_stream`` messages ``{"stream", "i"}`` to each path, all paths at once."""

    async def one(path: str) -> None:
        async with http.put(f"{srv.stream_root}/{path}", headers=JSON) as resp:
            assert resp.status in (200, 201), await resp.text()
        for i in range(start, start + per_stream):
            await append(http, srv, path, {"stream": path, "i": i})

    await asyncio.gather(*(one(p) for p in paths))


async def post_json(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


async def produce_at_once(http: aiohttp.ClientSession, srv: DurableStreamsServer, path: str,
                          count: int) -> None:
    """One append of a JSON array: ``count`` messages at one offset, so one wake."""
    async with http.put(f"{srv.stream_root}/{path}", headers=JSON) as resp:
        assert resp.status in (200, 201), await resp.text()
    await append(http, srv, path, [{"stream": path, "i": i} for i in range(count)])


def expected(paths: Iterable[str], per_stream: int, *, start: int = 0) -> set[tuple[str, int]]:
    return {(p, i) for p in paths for i in range(start, start + per_stream)}


async def acked_offsets(srv: DurableStreamsServer, sub: str = SUB) -> dict[str, str]:
    state = await srv.subscription_state(sub)
    assert state is not None, f"subscription {sub!r} is gone"
    return {s["path"]: s["acked_offset"] for s in state["streams"]}


async def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str,
                     interval: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > end:
            raise AssertionError(f"not reached within {timeout}s: {what}")
        await asyncio.sleep(interval)


async def wait_all_acked(srv: DurableStreamsServer, paths: Iterable[str], *,
                         sub: str = SUB, timeout: float = 15.0) -> dict[str, str]:
    """Wait until the server says every stream's acked offset is its tail."""
    paths = sorted(paths)
    tails = {p: await srv.tail_offset(p) for p in paths}
    last: dict[str, str] = {}

    async def done() -> bool:
        nonlocal last
        last = await acked_offsets(srv, sub)
        return all(last.get(p) == tails[p] for p in paths)

    try:
        await wait_until(done, timeout=timeout, what="acked offsets reach the tails")
    except AssertionError:
        behind = {p: (last.get(p), tails[p]) for p in paths if last.get(p) != tails[p]}
        raise AssertionError(f"{sub}: streams not acked to their tail: {behind}") from None
    return last


async def settle(srv: DurableStreamsServer, seen: Seen, paths: list[str],
                 want: set[tuple[str, int]], *, timeout: float = 15.0) -> None:
    """Everything appended was handled, and the server has it all acked."""
    await wait_until(lambda: want <= seen.ids(), timeout=timeout,
                     what=f"all {len(want)} messages handled")
    await wait_all_acked(srv, paths, timeout=timeout)
    assert seen.ids() == want  # nothing invented either


# ------------------------------------------------------------------ throughput


@pytest.mark.timeout(60)
async def test_thousand_messages_across_twenty_streams_are_handled_and_acked(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    seen = Seen()
    # Not a lease test: a lease long enough that a loaded machine (a slow
    # extension, a stream reset) cannot lose one, which the asserts below forbid.
    worker = make_worker(ds_server, reading_handler(seen, "w1"), claim_lease=10.0)
    paths = [f"events/s{i:02d}" for i in range(20)]
    async with worker:
        await produce(http, ds_server, paths, 50)
        await settle(ds_server, seen, paths, expected(paths, 50), timeout=30)
    stats = worker.stats
    assert stats.handler_errors == 0 and stats.leases_lost == 0
    assert stats.wakes_acked == stats.wakes_handled == stats.wakes_claimed
    assert not worker.runner.running
    health = worker.health()
    assert health["worker"]["jobs_active"] == 0


async def test_sync_handler_reads_in_a_thread(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    seen = Seen()
    threads: set[str] = set()

    def handle(wake: Wake) -> None:  # a plain def: run in a worker thread
        threads.add(threading.current_thread().name)
        seen.wake_record("w1", wake)
        for s in wake.streams:
            for m in wake.messages(s.path):
                seen.message_record("w1", s.path, m)

    paths = ["events/a", "events/b", "events/c"]
    async with make_worker(ds_server, handle):
        await produce(http, ds_server, paths, 20)
        await settle(ds_server, seen, paths, expected(paths, 20))
    assert threading.main_thread().name not in threads


# ------------------------------------------------------------------ two workers


async def test_two_workers_each_generation_handled_by_exactly_one(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    seen = Seen()
    paths = [f"events/s{i}" for i in range(5)]
    w1 = make_worker(ds_server, reading_handler(seen, "w1", delay=0.02), name="w1")
    w2 = make_worker(ds_server, reading_handler(seen, "w2", delay=0.02), name="w2")
    async with running(w1), running(w2):
        batches = 0
        # Waves of work until both have won claims (bounded): the test must see
        # two workers competing, or "exactly one" would hold trivially.
        while batches < 6 or ({w for w, _, _, _ in seen.wakes} != {"w1", "w2"}
                              and batches < 15):
            await produce(http, ds_server, paths, 10, start=batches * 10)
            batches += 1
            await asyncio.sleep(0.05)
        await settle(ds_server, seen, paths, expected(paths, 10 * batches))
    gens = seen.generations()
    assert None not in gens
    duplicates = sorted({g for g in gens if gens.count(g) > 1})
    assert not duplicates, f"generations handled twice: {duplicates} in {seen.wakes}"
    # Both competed for every wake: each either won claims or lost the race
    # (409 ALREADY_CLAIMED / NO_PENDING_WORK). Who wins is up to the event loop,
    # so winning is not required of both.
    for w in (w1, w2):
        h = w.runner.health()
        assert h.claims_succeeded + h.claims_skipped > 0, f"{w.worker_name} never competed"
    assert {w for w, _, _, _ in seen.wakes} <= {"w1", "w2"}
    assert w1.stats.leases_lost == w2.stats.leases_lost == 0


# ------------------------------------------------------------------ failures of the handler


async def test_handler_raises_once_then_wake_is_released_and_retried(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    seen, first_try = Seen(), Seen()
    errors: list[BaseException] = []
    failed = asyncio.Event()

    async def handle(wake: Wake) -> None:
        if not failed.is_set():
            failed.set()
            await reading_handler(first_try, "w1")(wake)
            raise RuntimeError("boom once")
        await reading_handler(seen, "w1")(wake)

    paths = ["events/a", "events/b"]
    worker = make_worker(ds_server, handle, on_error=errors.append)
    async with worker:
        await produce(http, ds_server, paths, 5)
        await settle(ds_server, seen, paths, expected(paths, 5))
    assert worker.stats.handler_errors == 1
    assert worker.stats.wakes_released >= 1
    herr = [e for e in errors if isinstance(e, HandlerError)]
    assert len(herr) == 1 and isinstance(herr[0].__cause__, RuntimeError)
    assert "boom once" in str(herr[0]) and SUB in str(herr[0])
    # What the failed attempt read came back under a later generation (released,
    # never acked) and was handled by a successful attempt.
    assert first_try.ids() and first_try.ids() <= seen.ids()
    (failed_generation,) = first_try.generations()
    assert failed_generation is not None
    assert all(g is not None and g > failed_generation for g in seen.generations())


async def test_stop_gives_a_running_handler_its_grace_then_releases(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck(wake: Wake) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker = make_worker(ds_server, stuck, stop_grace=0.3)
    async with running(worker):
        await produce_at_once(http, ds_server, "events/a", 5)
        async with asyncio.timeout(10):
            await entered.wait()
    # Leaving running() cancelled run(): a graceful stop.
    assert cancelled.is_set() and not worker.runner.running
    assert worker.stats.wakes_released == 1 and worker.stats.wakes_acked == 0
    # Released, not left to expire: the next generation is claimable at once.
    status, body = await post_json(http, ds_server.url + CLAIM_PATH, {"worker": "probe"})
    assert status == 200 and body["generation"] == 2, body
    assert body["streams"][0]["acked_offset"] < body["streams"][0]["tail_offset"]


# ------------------------------------------------------------------ killed mid-wake

_CHILD = r"""
import asyncio, sys
from pullwake.worker import Worker

async def handle(wake):
    streams = [[s.path, s.acked_offset, s.tail_offset] for s in wake.streams]
    print("HANDLING", wake.generation, __import__("json").dumps(streams), flush=True)
    await asyncio.Event().wait()  # hold the wake forever: no ack, no release

async def main():
    worker = Worker(server=sys.argv[1], subscription="sub1", wake_stream="wake/pool",
                    pattern="events/*", worker_name="doomed", handler=handle,
                    claim_lease=1.0, heartbeat_interval=0.5, read_idle_timeout=3.0,
                    request_timeout=2.0, connect_timeout=2.0)
    await worker.run()

asyncio.run(main())
"""


async def test_worker_killed_mid_wake_lease_expires_and_another_handles_it(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    paths = ["events/a", "events/b"]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, ds_server.stream_root,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # Wait until the child holds its subscription (its start() ensured it).
        await wait_until(lambda: ds_server.subscription_state(SUB), timeout=15,
                         what="the child worker created its subscription")
        await produce(http, ds_server, paths, 5)
        assert child.stdout is not None
        async with asyncio.timeout(10):
            line = (await child.stdout.readline()).decode()
        assert line.startswith("HANDLING"), line
        _, gen_text, streams_text = line.split(" ", 2)
        doomed_generation = int(gen_text)
        handed = {p: (acked, tail) for p, acked, tail in json.loads(streams_text)}
        # The lease is held past its TTL: extended every ~1/3 s while the handler blocks.
        await asyncio.sleep(LEASE_MS / 1000 * 1.5)
        status, body = await post_json(http, ds_server.url + CLAIM_PATH, {"worker": "probe"})
        assert status == 409 and body["error"]["code"] == "ALREADY_CLAIMED"
        assert body["error"]["current_holder"] == "doomed"
        assert await acked_offsets(ds_server) == {p: acked for p, (acked, _) in handed.items()}
        child.send_signal(signal.SIGKILL)  # a crash: no ack, no release
        assert await child.wait() == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()

    seen = Seen()
    survivor = make_worker(ds_server, reading_handler(seen, "w2"), name="w2")
    async with survivor:
        await settle(ds_server, seen, paths, expected(paths, 5))
    # Only after the dead worker's lease ran out could a next generation be claimed.
    gens = seen.generations()
    assert gens and min(g for g in gens if g is not None) > doomed_generation
    handled = {p for _, p, _ in seen.messages}
    assert set(handed) <= handled  # the very ranges the dead worker held


# ------------------------------------------------------------------ server restart


@pytest.mark.parametrize("graceful", [True, False], ids=["stop", "kill"])
async def test_server_restart_recreates_subscription_and_resumes(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession, graceful: bool
) -> None:
    seen = Seen()
    paths = ["events/a", "events/b", "events/c"]
    worker = make_worker(ds_server, reading_handler(seen, "w1"))
    async with worker:
        for batch in range(4):  # several wakes, so the wake stream has some length
            await produce(http, ds_server, paths, 5, start=batch * 5)
            await settle(ds_server, seen, paths, expected(paths, 5 * (batch + 1)))
        offset_before = worker.runner.offset
        assert offset_before is not None and offset_before != "-1"

        # File-backed: streams (the wake stream too) survive; subscriptions do not.
        await ds_server.restart(graceful=graceful)
        # Appended while the worker may not have re-created its subscription yet:
        # a subscription created later starts at the tail and never wakes for these.
        await produce(http, ds_server, paths, 5, start=20)
        await wait_until(lambda: worker.stats.subscriptions_recreated >= 1, timeout=15,
                         what="the worker re-created its subscription")
        await produce(http, ds_server, paths, 5, start=25)
        await settle(ds_server, seen, paths, expected(paths, 30), timeout=20)
        # It resumed reading the wake stream where it was, not from the beginning:
        # every wake event was read once (one more if a read was cut before its
        # offset was confirmed), not the pre-restart ones over again.
        total = len(await ds_server.read_all(WAKE_STREAM))
        await wait_until(lambda: worker.runner.health().events_received >= total, timeout=5,
                         what="every wake event read")
        assert worker.runner.health().events_received <= total + 1
    assert worker.stats.subscriptions_recreated == 1
    assert worker.runner.offset is not None and worker.runner.offset > offset_before
    if isinstance(ds_server, EmbeddedServer):
        reads = ds_server.requests_matching(WAKE_PATH, method="GET")
        offsets = [r.query.get("offset") for r in reads]
        assert offsets.count("-1") == 1 and len(offsets) >= 2, offsets  # the first connect only


@pytest.mark.timeout(30)
async def test_restart_recovery_is_not_undone_by_a_wake_handled_first(
    embedded_ds_server: EmbeddedServer, http: aiohttp.ClientSession
) -> None:
    """Embedded only: it needs appends while the server is down, deterministically."""
    srv = embedded_ds_server
    seen = Seen()
    paths = ["events/a", "events/b"]
    worker = make_worker(srv, reading_handler(seen, "w1"))
    async with worker:
        await produce(http, srv, paths, 5)
        await settle(srv, seen, paths, expected(paths, 5))
        await srv.stop()
        # Appended while the server is down (into the kept store): the
        # re-created subscription starts at these tails and never wakes for them.
        for p in paths:
            for i in range(5, 10):
                await srv.append(p, {"stream": p, "i": i})
        # The worker's look-up of the re-created subscription is slow ...
        srv.delay(f"{SUBS_PATH}/{SUB}", 1.5, method="GET", count=1)
        await srv.restart()
        await wait_until(lambda: worker.stats.subscriptions_recreated >= 1, timeout=15,
                         what="the worker re-created its subscription")
        # ... and a fresh wake is claimed, handled and acked before it answers.
        await produce(http, srv, paths, 5, start=10)
        await settle(srv, seen, paths, expected(paths, 15))
    assert worker.stats.recovered_wakes == 1
    recovered = [m["i"] for w, p, m in seen.messages if p == "events/a"]
    assert sorted(set(recovered)) == list(range(15))


# ------------------------------------------------------------------ injected faults


@pytest.mark.parametrize("status", [503, 429])
async def test_claim_failing_with_503_or_429_is_retried(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession, status: int
) -> None:
    seen = Seen()
    errors: list[BaseException] = []
    paths = ["events/a", "events/b"]
    worker = make_worker(ds_server, reading_handler(seen, "w1"), on_error=errors.append)
    async with worker:
        # The one wake event is read once; its claim must not be given up.
        await ds_server.inject_error(CLAIM_PATH, status=status, count=2)
        await produce(http, ds_server, paths, 5)
        await settle(ds_server, seen, paths, expected(paths, 5))
    assert [getattr(e, "status", None) for e in errors] == [status, status], errors
    # Every claimed wake acked, none released. (Appends that land after the
    # retried claim, on a loaded machine, make a second wake: not a failure.)
    stats = worker.stats
    assert stats.wakes_claimed == stats.wakes_acked >= 1 and stats.wakes_released == 0


async def test_ack_failing_with_500_is_not_lost(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    seen = Seen()
    errors: list[BaseException] = []
    paths = ["events/a"]
    worker = make_worker(ds_server, reading_handler(seen, "w1"), on_error=errors.append)
    async with worker:
        await ds_server.inject_error(ACK_PATH, status=500, count=1)  # the final ack
        await produce_at_once(http, ds_server, "events/a", 5)
        await settle(ds_server, seen, paths, expected(paths, 5))
    assert any(getattr(e, "status", None) == 500 for e in errors), errors
    # Not acked, not released: the lease ran out and the next generation redid it.
    assert seen.generations() == [1, 2]
    assert worker.stats.wakes_acked == 1


async def test_dropped_wake_stream_connection_on_connect_reconnects(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    seen = Seen()
    paths = ["events/a", "events/b"]
    # The first wake-stream GETs are dropped before any answer (twice: aiohttp
    # retries a GET once on a dropped keep-alive connection).
    await ds_server.create_stream(WAKE_STREAM)
    await ds_server.inject_error(WAKE_PATH, drop_connection=True, count=2, method="GET")
    worker = make_worker(ds_server, reading_handler(seen, "w1"))
    async with worker:
        await produce(http, ds_server, paths, 5)
        await settle(ds_server, seen, paths, expected(paths, 5))
        assert worker.runner.health().reconnect_count >= 1


@pytest.mark.ds_server_options(long_poll_timeout=0.5)
async def test_dropped_long_poll_mid_run_reconnects_from_its_offset(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    seen = Seen()
    paths = ["events/a", "events/b"]
    worker = make_worker(ds_server, reading_handler(seen, "w1"), live="long-poll")
    async with worker:
        await produce(http, ds_server, paths, 5)
        await settle(ds_server, seen, paths, expected(paths, 5))
        offset = worker.runner.offset
        assert worker.runner.health().reconnect_count == 0
        # The next polls are dropped mid-run; the runner reconnects from its offset.
        await ds_server.inject_error(WAKE_PATH, drop_connection=True, count=2, method="GET")
        await wait_until(lambda: worker.runner.health().reconnect_count >= 1, timeout=10,
                         what="the dropped poll made the runner reconnect")
        await produce(http, ds_server, paths, 5, start=5)
        await settle(ds_server, seen, paths, expected(paths, 10))
        assert offset is not None and worker.runner.offset is not None
        assert worker.runner.offset > offset


@pytest.mark.parametrize("delay_ms", [500, 1500], ids=["within-lease", "past-lease"])
async def test_slow_ack_still_ends_acked(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession, delay_ms: int
) -> None:
    seen = Seen()
    errors: list[BaseException] = []
    paths = ["events/a"]
    read = reading_handler(seen, "w1")
    injected = False

    async def handle(wake: Wake) -> None:
        nonlocal injected
        await read(wake)
        if not injected:  # the next ack is this wake's final one (not a lease extension,
            injected = True  # which a loaded machine could send first)
            await ds_server.inject_error(ACK_PATH, delay_ms=delay_ms, count=1)

    worker = make_worker(ds_server, handle, on_error=errors.append)
    async with worker:
        await produce_at_once(http, ds_server, "events/a", 5)
        await settle(ds_server, seen, paths, expected(paths, 5))
    stats = worker.stats
    if delay_ms < LEASE_MS:  # it lands late but in time: nothing is repeated
        assert stats.leases_lost == 0 and stats.wakes_acked == stats.wakes_claimed == 1
        assert seen.wakes == [("w1", SUB, 1, False)]
        assert len(seen.messages) == 5
    else:  # the lease ran out first: fenced, and the next generation does it again
        assert stats.leases_lost == 1
        assert any(getattr(e, "code", None) == "FENCED" for e in errors), errors
        assert seen.generations() == [1, 2]
        assert len(seen.messages) == 10


async def test_slow_lease_extension_within_the_lease_keeps_it(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    """An extension answered after a third of the TTL but before the lease runs out holds.

    3 s lease: extended at 1 s; that extension is answered after 1.5 s (past the
    1 s between extensions, inside the 2 s the lease has left). The handler returns
    once an extension held, so a lost lease (the extension given up at 1 s and the
    next one sent at 3 s, fenced) fails the test.
    """
    extended = asyncio.Event()
    errors: list[BaseException] = []

    async def handle(wake: Wake) -> None:
        await extended.wait()

    worker = make_worker(ds_server, handle, claim_lease=3.0, on_error=errors.append)
    async with worker:
        await ds_server.inject_error(ACK_PATH, delay_ms=1500, count=1)
        await produce_at_once(http, ds_server, "events/a", 1)
        await wait_until(lambda: worker.stats.lease_extensions >= 1 or worker.stats.leases_lost,
                         timeout=15, what="the slow extension answered")
        extended.set()
        await wait_until(lambda: worker.stats.wakes_acked >= 1 or worker.stats.leases_lost,
                         timeout=15, what="the wake acked")
    assert worker.stats.leases_lost == 0, errors
    assert worker.stats.wakes_acked == worker.stats.wakes_claimed == 1


# ------------------------------------------------------------------ configuration


async def test_conflicting_subscription_config_is_a_clear_error(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    first = make_worker(ds_server, reading_handler(Seen(), "w1"), claim_lease=2.0)
    await first.start()
    await first.stop()
    second = make_worker(ds_server, reading_handler(Seen(), "w2"), name="w2")
    with pytest.raises(SubscriptionError, match=SUB) as info:
        await second.start()
    assert info.value.status == 409 and info.value.code == "SUBSCRIPTION_ALREADY_EXISTS"
    assert not second.runner.running
    third = make_worker(ds_server, reading_handler(Seen(), "w3"), name="w3")
    with pytest.raises(SubscriptionError, match="different configuration"):
        async with asyncio.timeout(10):
            await third.run()
    assert not third.runner.running


async def test_max_concurrency_across_three_subscriptions(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    active = 0
    peak = 0
    handled: dict[str, int] = {}

    async def handle(wake: Wake) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.3)
        finally:
            active -= 1
        handled[wake.subscription_id] = handled.get(wake.subscription_id, 0) + 1

    subs = [SubscriptionConfig(id=f"sub{i}", wake_stream=WAKE_STREAM, pattern=PATTERN,
                               claim_lease=LEASE_MS / 1000) for i in range(1, 4)]
    opts = {k: v for k, v in FAST.items() if k != "claim_lease"}
    worker = Worker(server=ds_server.stream_root, subscriptions=subs, worker_name="w1",
                    handler=handle, max_concurrency=2, **opts)
    paths = ["events/a", "events/b"]
    async with worker:
        await produce(http, ds_server, paths, 3)
        for sub in subs:
            await wait_all_acked(ds_server, paths, sub=sub.id)
    assert peak == 2, f"peak concurrency {peak}"
    assert set(handled) == {"sub1", "sub2", "sub3"}
