"""The runner under faults: hangs, silence, drops, restarts, STOP anywhere, the matrix.

Every test runs a real PullWakeRunner against an EmbeddedServer on 127.0.0.1
(port 0) over real sockets. Timeouts (connect, idle read, request) and backoff
run on a ManualClock, so each bound is checked to the tick: just before it the
runner is still waiting, at it the runner has moved on. Nothing sleeps to make
time pass.

Task hygiene: "no task left behind" compares ``asyncio.all_tasks()`` before
and after, leaving out the embedded server's own request handlers (aiohttp
keeps a handler running after its client went away, until the server's
long-poll wait ends). The start/stop test compares the full set exactly, with
the server stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from runner_helpers import (
    STOP_BOUND_S,
    RecordingRuntime,
    bounded_stop,
    eventually,
    make_runner,
    started,
    wake,
    wake_requests,
)

from pullwake import (
    ConnectError,
    ConnectTimeout,
    IdleTimeout,
    ProtocolError,
    PullWakeRunner,
    RequestTimeout,
    WakeEvent,
)
from pullwake.testing import EmbeddedServer
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(30)

WAKE_PATH = "/runners/r1/wake"
HEARTBEAT_PATH = "/_electric/runners/r1/heartbeat"
CLAIM_PATH = "/_electric/runners/r1/claim"
EPS = 2.0 ** -10  # exact in binary, so `bound - EPS + EPS == bound`


@pytest.fixture
async def server():
    async with EmbeddedServer() as srv:
        yield srv


def _server_side(task: asyncio.Task[Any]) -> bool:
    """A request handler task of an aiohttp web server (the embedded server's)."""
    return task.get_coro().__qualname__.startswith("RequestHandler.")  # type: ignore[union-attr]


def client_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if not _server_side(t)}


def runner_tasks(runner: PullWakeRunner) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().endswith(f"[{runner.config.runner_id}]")]


def open_sockets() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                n += 1
    return n


def claimed_paths(rt: RecordingRuntime) -> list[str]:
    return [d["streamPath"] for d in rt.dispatched]


# ------------------------------------------------------------------- hung connect


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_hung_connect_fails_at_exactly_connect_timeout_and_recovers(
        server: EmbeddedServer, live: str) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    hang = server.hang(WAKE_PATH)
    runner = make_runner(server, clock=clock, live=live, heartbeat_interval=None,
                         connect_timeout=5, on_error=errors.append)
    assert runner.config.hung_connect_bound == 5
    async with started(runner):
        await eventually(lambda: len(wake_requests(server)) == 1)  # accepted, never answered
        await eventually(lambda: clock.pending == [5.0])  # the attempt's deadline is armed
        await clock.advance(runner.config.hung_connect_bound - EPS)
        assert runner.status == "connecting" and errors == []
        await clock.advance(EPS)
        await eventually(lambda: runner.status == "reconnecting")
        assert [type(e) for e in errors] == [ConnectTimeout]
        assert isinstance(errors[0], ConnectError) and isinstance(errors[0], TimeoutError)
        h = runner.health()
        assert h.last_error is not None and h.last_error.startswith("ConnectTimeout")
        assert (h.reconnect_count, h.stream_connected) == (1, False)
        server.remove_fault(hang)
        await clock.advance(1)  # backoff
        await eventually(lambda: runner.status == "streaming")


async def test_repeated_hung_connects_back_off(server: EmbeddedServer) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    server.hang(WAKE_PATH)
    runner = make_runner(server, clock=clock, heartbeat_interval=None, connect_timeout=2,
                         on_error=errors.append)
    async with started(runner):
        for n, backoff in enumerate([1.0, 2.0, 4.0]):
            await eventually(lambda n=n: len(wake_requests(server)) == n + 1)
            await eventually(lambda: clock.pending == [2.0])
            await clock.advance(2)
            await eventually(lambda: runner.status == "reconnecting")
            assert clock.pending == [backoff]
            await clock.advance(backoff)
    assert all(isinstance(e, ConnectTimeout) for e in errors) and len(errors) == 3


# ------------------------------------------------------------------ silent stream


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_silent_stream_ends_at_exactly_read_idle_timeout(server: EmbeddedServer,
                                                               live: str) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    server.hang_after_headers(WAKE_PATH, count=1)  # headers, then nothing
    runner = make_runner(server, rt, clock=clock, live=live, heartbeat_interval=None,
                         read_idle_timeout=20, on_error=errors.append)
    assert runner.config.hung_stream_bound == 20
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await eventually(lambda: clock.pending == [20.0])  # the read's deadline is armed
        await clock.advance(runner.config.hung_stream_bound - EPS)
        assert runner.status == "streaming" and errors == []
        await clock.advance(EPS)
        await eventually(lambda: runner.status == "reconnecting")
        assert [type(e) for e in errors] == [IdleTimeout]
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: len(rt.dispatched) == 1)


async def test_idle_deadline_rearms_on_every_chunk(server: EmbeddedServer) -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    runner = make_runner(server, rt, clock=clock, heartbeat_interval=None, read_idle_timeout=20)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        for n in range(3):  # activity every 15 s keeps a 20 s idle bound from firing
            await eventually(lambda: clock.pending == [20.0])
            await clock.advance(15)
            await server.append_runner_wake("r1", wake(f"s{n}"))
            await eventually(lambda n=n: len(rt.dispatched) == n + 1)
        assert runner.status == "streaming"
        assert runner.health().reconnect_count == 0


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_server_paused_mid_stream_then_for_every_connect(server: EmbeddedServer,
                                                               live: str) -> None:
    """A server that stops answering everything: the open stream ends at the
    idle bound, each new attempt at the connect bound, and it recovers."""
    clock = ManualClock()
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    runner = make_runner(server, rt, clock=clock, live=live, heartbeat_interval=None,
                         connect_timeout=4, read_idle_timeout=20, on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await eventually(lambda: clock.pending == [20.0])
        server.pause()
        await clock.advance(20)
        await eventually(lambda: runner.status == "reconnecting")
        assert type(errors[-1]) is IdleTimeout
        await clock.advance(1)
        await eventually(lambda: clock.pending == [4.0])  # attempt under connect_timeout
        await clock.advance(4)
        await eventually(lambda: runner.status == "reconnecting")
        assert type(errors[-1]) is ConnectTimeout
        server.resume()
        await clock.advance(2)
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: len(rt.dispatched) == 1)


async def test_a_cleanup_stop_waiting_on_a_manual_clock_fails_instead_of_hanging(
        server: EmbeddedServer) -> None:
    """A test that fails half-way leaves its manual clock where it was: a stop whose
    grace runs on it would wait forever (pytest-timeout fires once, in the body).
    The helpers' cleanup stop fails in real time instead, and the stop still ends
    once the clock moves."""
    clock = ManualClock()
    server.hang(CLAIM_PATH, count=1)
    runner = make_runner(server, RecordingRuntime(), clock=clock, heartbeat_interval=None,
                         request_timeout=30, claim_grace=5.0)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    await server.append_runner_wake("r1", wake("s1", 1))
    await eventually(lambda: len(server.claims("r1")) == 1)  # hung: in flight at stop
    with pytest.raises(AssertionError, match=r"runner.stop\(\) did not return within 0.2s"):
        await bounded_stop(runner, bound=0.2)
    stopping = asyncio.ensure_future(runner.stop())
    await eventually(lambda: 5.0 in clock.pending)
    await clock.advance(5.0)  # the grace ends: the hung claim is cancelled
    await asyncio.wait_for(stopping, 10)
    assert runner.status == "stopped"


async def test_hung_claim_fails_at_request_timeout_is_retried_then_the_next_wake_claimed(
        server: EmbeddedServer) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    server.hang(CLAIM_PATH, count=1)
    runner = make_runner(server, rt, clock=clock, heartbeat_interval=None, request_timeout=3,
                         on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1", 1))
        await eventually(lambda: len(server.claims("r1")) == 1)
        await server.append_runner_wake("r1", wake("s1", 2))  # deferred behind the hung one
        await eventually(lambda: runner.health().claims_skipped == 1)
        await eventually(lambda: 3.0 in clock.pending)
        await clock.advance(3 - EPS)
        assert runner.health().claims_failed == 0
        await clock.advance(EPS)
        await eventually(lambda: runner.health().claims_failed == 1)
        assert isinstance(errors[0], RequestTimeout) and errors[0].operation == "claim"
        assert len(server.claims("r1")) == 1  # the retry waits its backoff on the clock
        await clock.advance(0.1)  # a timed-out claim is transient: retried after 0.1 s
        # the retried wake, then the deferred one
        await eventually(lambda: len(rt.dispatched) == 2)
        assert [c["generation"] for c in server.claims("r1")] == [1, 1, 2]
        assert runner.status == "streaming"


# ---------------------------------------------------------------- hung heartbeat


async def test_hung_heartbeats_force_a_reset_within_the_bound(server: EmbeddedServer) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    runner = make_runner(server, clock=clock, heartbeat_interval=10, request_timeout=3,
                         event_heartbeat_throttle=2, on_error=errors.append)
    bound = runner.config.hung_heartbeat_bound
    assert bound == 10 + 2 * 3
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await clock.advance(2)  # the connect-triggered heartbeat
        await clock.advance(8)  # t=10: the periodic one
        await eventually(lambda: len(server.heartbeats()) == 3)
        await eventually(lambda: runner.health().last_heartbeat_ok)
        # Worst case: the server stops answering right after a good heartbeat.
        hang = server.hang(HEARTBEAT_PATH)
        elapsed = 0.0
        await clock.advance(10)  # t=20: the next periodic heartbeat hangs
        elapsed += 10
        await eventually(lambda: len(server.heartbeats()) == 4)
        await eventually(lambda: 3.0 in clock.pending)
        await clock.advance(3)  # its request_timeout: failure 1, retried at once
        elapsed += 3
        await eventually(lambda: runner.health().heartbeat_failures == 1)
        assert isinstance(errors[-1], RequestTimeout)
        assert errors[-1].operation == "heartbeat"
        assert runner.health().last_heartbeat_ok is False
        await eventually(lambda: len(server.heartbeats()) == 5)
        await eventually(lambda: 3.0 in clock.pending)
        await clock.advance(3 - EPS)
        assert runner.status == "streaming"  # one failure does not reset
        await clock.advance(EPS)  # failure 2: the stream is reset
        elapsed += 3
        await eventually(lambda: runner.status == "reconnecting")
        assert elapsed == bound
        assert [type(e) for e in errors] == [RequestTimeout, RequestTimeout]
        server.remove_fault(hang)
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")
        assert len(wake_requests(server)) == 2


async def test_hung_heartbeat_also_aborts_a_hung_connect(server: EmbeddedServer) -> None:
    """Everything hangs, and connect_timeout is far away: the heartbeats alone,
    each bounded by request_timeout, still end the hung attempt."""
    clock = ManualClock()
    server.hang(WAKE_PATH)
    server.hang(HEARTBEAT_PATH)
    runner = make_runner(server, clock=clock, heartbeat_interval=10, request_timeout=3,
                         connect_timeout=1000)
    async with started(runner):
        await eventually(lambda: runner.status == "connecting")
        await eventually(lambda: len(server.heartbeats()) == 1)
        await eventually(lambda: 3.0 in clock.pending)
        await clock.advance(3)
        await eventually(lambda: len(server.heartbeats()) == 2)
        await eventually(lambda: 3.0 in clock.pending)
        await clock.advance(3)
        await eventually(lambda: runner.status == "reconnecting")
        assert clock.monotonic() <= runner.config.hung_heartbeat_bound


# ---------------------------------------------------------- drops and restarts


async def test_connection_dropped_before_answer_reconnects(server: EmbeddedServer) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    # Every attempt is dropped (aiohttp itself retries a GET whose connection
    # closed before any answer, so one drop alone may go unnoticed).
    drop = server.drop(WAKE_PATH)
    runner = make_runner(server, clock=clock, heartbeat_interval=None, on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.status == "reconnecting")
        assert isinstance(errors[0], ConnectError)
        server.remove_fault(drop)
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_killed_server_drops_the_stream_then_runner_resumes(server: EmbeddedServer,
                                                                  live: str) -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    errors: list[BaseException] = []
    runner = make_runner(server, rt, clock=clock, live=live, heartbeat_interval=None,
                         on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        o1 = await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: runner.offset == o1 and len(rt.dispatched) == 1)
        await server.kill()  # like SIGKILL: connections cut mid-body
        await eventually(lambda: runner.status == "reconnecting")
        await server.append_runner_wake("r1", wake("s2"))  # written while down
        await clock.advance(1)
        await eventually(lambda: runner.health().reconnect_count == 2)  # refused
        assert isinstance(errors[-1], ConnectError)
        await server.start()  # same port
        await clock.advance(2)
        await eventually(lambda: runner.status == "streaming")
        o3 = await server.append_runner_wake("r1", wake("s3"))
        await eventually(lambda: runner.offset == o3)
        await eventually(lambda: len(rt.dispatched) == 3)
    resumed = [r for r in wake_requests(server) if r.query["offset"] == o1]
    assert resumed, "the runner resumed from its offset"
    assert claimed_paths(rt) == ["/s1", "/s2", "/s3"]  # nothing lost, nothing twice


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_graceful_server_restart_resumes_from_offset_without_losing_wakes(
        server: EmbeddedServer, live: str) -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    runner = make_runner(server, rt, clock=clock, live=live, heartbeat_interval=None)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("before1"))
        o1 = await server.append_runner_wake("r1", wake("before2"))
        await eventually(lambda: runner.offset == o1 and len(rt.dispatched) == 2)
        n = len(wake_requests(server))
        await server.restart()
        await eventually(lambda: runner.status == "reconnecting")
        await server.append_runner_wake("r1", wake("after1"))
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")
        o3 = await server.append_runner_wake("r1", wake("after2"))
        await eventually(lambda: runner.offset == o3)
        await eventually(lambda: len(rt.dispatched) == 4)
    first_after = wake_requests(server)[n]
    assert first_after.query["offset"] == o1
    assert claimed_paths(rt) == ["/before1", "/before2", "/after1", "/after2"]


async def driving_backoffs(runner: PullWakeRunner, clock: ManualClock,
                           predicate: Any, timeout: float = 10.0) -> None:
    """Wait for ``predicate()``, moving the clock through backoffs (and only
    backoffs: never a connect or idle deadline) whenever the runner waits in one."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, f"condition not reached; runner {runner.status}"
        if runner.status == "reconnecting" and clock.pending:
            await clock.advance(clock.pending[0])
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_restarts_under_load_lose_no_wake(server: EmbeddedServer, live: str) -> None:
    """Wakes keep arriving while the server restarts six times (graceful and
    killed, wakes also written while it is down): the stream delivers every
    one, at least once, and the runner comes back each time on its own.

    A claim cut by the restart fails and is reported (claims are not retried
    in the Electric profile), so a wake missing from dispatch must be matched
    by a reported claim failure.
    """
    clock = ManualClock()
    rt = RecordingRuntime()
    errors: list[BaseException] = []
    runner = make_runner(server, rt, clock=clock, live=live, heartbeat_interval=None,
                         on_error=errors.append)
    produced: list[str] = []
    stop_producing = asyncio.Event()
    may_produce = asyncio.Event()
    may_produce.set()

    async def produce() -> None:
        n = 0
        while not stop_producing.is_set():
            await may_produce.wait()
            name = f"w{n}"
            await server.append_runner_wake("r1", wake(name))
            produced.append("/" + name)
            n += 1
            await asyncio.sleep(0.002)

    read: list[str] = []  # every wake the stream delivered, before its claim
    submit = runner.claims.submit

    def record(w: WakeEvent) -> None:
        read.append("/" + w.stream)
        submit(w)

    runner.claims.submit = record  # type: ignore[method-assign]
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        producer = asyncio.create_task(produce())
        for i in range(6):
            await driving_backoffs(runner, clock,
                                   lambda i=i: len(rt.dispatched) >= 3 * (i + 1))
            if i % 2:
                await server.kill()  # writes go on into the kept store while it is down
                await server.start()
            else:
                # Not during a graceful stop: the embedded server answers a
                # pending long-poll with its *current* tail then, which would
                # skip a write that raced the shutdown (the reference server
                # answers with the poll's own offset).
                may_produce.clear()
                await server.restart()
                may_produce.set()
            await driving_backoffs(runner, clock, lambda: runner.status == "streaming")
        stop_producing.set()
        await producer
        tail = await server.tail_offset("/runners/r1/wake")
        await driving_backoffs(runner, clock, lambda: runner.offset == tail)
        await eventually(lambda: set(read) >= set(produced))
        await eventually(lambda: runner.claims.in_flight == 0)
        # Every kill cuts the open read; a graceful restart may not (a long-poll
        # answered "[]" at shutdown is followed by a poll the new server takes).
        assert runner.health().reconnect_count >= 3
    assert set(read) == set(produced)
    missing = set(produced) - set(claimed_paths(rt))
    claim_failures = [e for e in errors if getattr(e, "operation", None) == "claim"]
    assert len(missing) <= len(claim_failures) == runner.health().claims_failed


# ------------------------------------------------------------ driving into states


@dataclass
class Scenario:
    server: EmbeddedServer
    runner: PullWakeRunner
    runtime: RecordingRuntime
    clock: ManualClock
    errors: list[BaseException] = field(default_factory=list)
    stop_task: asyncio.Task[None] | None = None


@contextlib.asynccontextmanager
async def in_state(server: EmbeddedServer, state: str) -> AsyncIterator[Scenario]:
    """A runner driven into ``state`` by real conditions, cleaned up afterwards.

    connecting: the wake stream accepts and never answers; streaming: normal;
    reconnecting: the wake stream answers 503; stopping: drain_wakes is held.
    All on a ManualClock, so no timeout or backoff moves the runner on its own.
    """
    clock = ManualClock()
    rt = RecordingRuntime()
    sc = Scenario(server, None, rt, clock)  # type: ignore[arg-type]
    runner = make_runner(server, rt, clock=clock, heartbeat_interval=30,
                         on_error=sc.errors.append)
    sc.runner = runner
    if state == "connecting":
        server.hang(WAKE_PATH)
    elif state == "reconnecting":
        server.fail(WAKE_PATH, 503)
    elif state == "stopping":
        rt.drain_gate = asyncio.Event()
    try:
        if state != "stopped":
            runner.start()
            if state == "connecting":
                await eventually(lambda: len(wake_requests(server)) == 1)
            elif state == "stopping":
                await eventually(lambda: runner.status == "streaming")
                sc.stop_task = asyncio.create_task(runner.stop())
                await eventually(lambda: "drain" in rt.calls)
            else:
                await eventually(lambda: runner.status == state)
        assert runner.status == state
        yield sc
    finally:
        if rt.drain_gate is not None:
            rt.drain_gate.set()
        server.clear_faults()
        await bounded_stop(runner)
        if sc.stop_task is not None:
            await asyncio.wait_for(sc.stop_task, STOP_BOUND_S)


STATES = ["stopped", "connecting", "streaming", "reconnecting", "stopping"]


@pytest.mark.parametrize("state", STATES)
async def test_stop_from_each_state_leaves_no_task(server: EmbeddedServer, state: str) -> None:
    before = client_tasks()
    async with in_state(server, state) as sc:
        runner = sc.runner
        stopping = asyncio.create_task(runner.stop())
        if state == "stopping":
            await asyncio.sleep(0)
            assert not stopping.done()  # shares the shutdown that is waiting on drain
            sc.runtime.drain_gate.set()  # type: ignore[union-attr]
        await asyncio.wait_for(stopping, timeout=5)
        assert runner.status == "stopped" and not runner.running
        assert runner_tasks(runner) == []
        assert sc.clock.pending == []  # no timer left armed either
        assert client_tasks() - before <= ({sc.stop_task} if sc.stop_task else set())
        if state == "stopped":
            assert sc.runtime.calls == []
        else:
            assert sc.runtime.calls.count("abort") == 1 and sc.runtime.calls.count("drain") == 1
    assert client_tasks() == before
    assert runner.health().stream_connected is False


async def test_never_dispatch_after_stop_began(server: EmbeddedServer) -> None:
    """Claims that answer during the grace, a wake waiting for a busy runtime,
    and wakes fired while stopping: none reaches dispatch_wake after stop()."""
    clock = ManualClock()
    statuses: list[str] = []
    runner: PullWakeRunner | None = None

    class Watching(RecordingRuntime):
        def dispatch_wake(self, notification: Any, **kw: Any) -> None:
            assert runner is not None
            statuses.append(runner.status)
            super().dispatch_wake(notification, **kw)

    rt = Watching()
    rt.drain_gate = asyncio.Event()
    rt.active.add("/busy")
    server.delay(CLAIM_PATH, seconds=0.2)
    runner = make_runner(server, rt, clock=clock, heartbeat_interval=None, claim_grace=5)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    for n in range(5):
        await server.append_runner_wake("r1", wake(f"s{n}"))
    await server.append_runner_wake("r1", wake("busy"))
    await eventually(lambda: len(server.claims("r1")) == 5)  # all in flight, delayed
    await eventually(lambda: runner.health().claims_skipped == 1)  # busy: waiting locally
    stop = asyncio.create_task(runner.stop())
    await eventually(lambda: "drain" in rt.calls)
    assert runner.health().claims_succeeded == 5  # answered within the grace …
    rt.active.clear()
    await clock.advance(1)  # … the busy retry would have fired by now
    runner.lifecycle.fire("WAKE", wake=WakeEvent.parse(wake("late")))  # ignored: stopping
    rt.drain_gate.set()
    await stop
    assert rt.dispatched == [] and statuses == []
    assert len(server.claims("r1")) == 5  # "busy" and "late" were never claimed


async def test_dispatch_status_under_load_then_stop(server: EmbeddedServer) -> None:
    statuses: list[str] = []
    runner: PullWakeRunner | None = None

    class Watching(RecordingRuntime):
        def dispatch_wake(self, notification: Any, **kw: Any) -> None:
            assert runner is not None
            statuses.append(runner.status)
            super().dispatch_wake(notification, **kw)

    rt = Watching()
    server.delay(CLAIM_PATH, seconds=0.01)
    runner = make_runner(server, rt, heartbeat_interval=None, claim_grace=0.05)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    for n in range(60):
        await server.append_runner_wake("r1", wake(f"s{n}"))
    await eventually(lambda: len(rt.dispatched) >= 5)
    await runner.stop()
    n_dispatched = len(rt.dispatched)
    assert set(statuses) <= {"streaming"}
    await asyncio.sleep(0.1)  # claims still answered by the server are not dispatched
    assert len(rt.dispatched) == n_dispatched
    assert runner_tasks(runner) == []


# ------------------------------------------------------------ the 35-cell matrix

EVENTS = ["START", "STOP", "STREAM_RESET", "WAKE", "OFFSET", "STREAM_END", "STREAM_END(error)"]

#: original-behaviors.md, "Lifecycle": state after the event, before any work
#: the event starts has completed.
MATRIX: dict[str, dict[str, str]] = {
    "stopped": dict.fromkeys(EVENTS, "stopped") | {"START": "connecting"},
    "connecting": dict.fromkeys(EVENTS, "connecting") | {"STOP": "stopping",
                                                          "STREAM_RESET": "reconnecting"},
    "streaming": dict.fromkeys(EVENTS, "streaming") | {"STOP": "stopping",
                                                        "STREAM_END": "reconnecting",
                                                        "STREAM_END(error)": "reconnecting"},
    "reconnecting": dict.fromkeys(EVENTS, "reconnecting") | {"STOP": "stopping"},
    "stopping": dict.fromkeys(EVENTS, "stopping"),
}
NEW_OFFSET = "0000000000000000_0000000000000042"


def test_matrix_has_35_cells() -> None:
    assert len(MATRIX) * len(EVENTS) == 35
    assert sum(len(row) for row in MATRIX.values()) == 35


def fire(runner: PullWakeRunner, event: str) -> None:
    lc = runner.lifecycle
    if event == "WAKE":
        lc.fire("WAKE", wake=WakeEvent.parse(wake("m1")))
    elif event == "OFFSET":
        lc.fire("OFFSET", offset=NEW_OFFSET)
    elif event == "STREAM_RESET":
        lc.fire("STREAM_RESET", error=RuntimeError("matrix reset"))
    elif event == "STREAM_END(error)":
        lc.fire("STREAM_END", error=ProtocolError("matrix end"))
    else:
        lc.fire(event)


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("state", STATES)
async def test_matrix_through_a_real_runner(server: EmbeddedServer, state: str,
                                            event: str) -> None:
    before = client_tasks()
    async with in_state(server, state) as sc:
        runner = sc.runner
        offset_before = runner.offset
        received_before = runner.health().events_received
        errors_before = len(sc.errors)
        fire(runner, event)
        assert runner.status == MATRIX[state][event], (state, event)
        assert runner.health().status == runner.status  # health reports the real state

        # What the decision set in motion.
        handled_in_streaming = state == "streaming"
        if event == "WAKE":
            received = runner.health().events_received - received_before
            assert received == (1 if handled_in_streaming else 0)
            if handled_in_streaming:
                await eventually(lambda: len(sc.runtime.dispatched) == 1)
                assert server.claims("r1") == [wake("m1")]
        if event == "OFFSET":
            assert runner.offset == (NEW_OFFSET if handled_in_streaming else offset_before)
        if state == "streaming" and event == "STREAM_RESET":
            # The open response is cancelled; its end takes the machine on.
            await eventually(lambda: runner.status == "reconnecting")
            fire(runner, "STREAM_RESET")  # already reconnecting: ignored
            assert runner.status == "reconnecting"
        if state == "streaming" and event == "STREAM_END(error)":
            assert isinstance(sc.errors[-1], ProtocolError)
        if state == "connecting" and event == "STREAM_RESET":
            assert runner.health().reconnect_count == 1
        if state == "stopped" and event == "START":
            await eventually(lambda: runner.status == "streaming")
        if event == "STOP" and state != "stopped":
            if sc.runtime.drain_gate is not None:
                sc.runtime.drain_gate.set()
            await eventually(lambda: runner.status == "stopped")
        if state in ("stopped", "stopping") and event != "START":
            assert len(sc.errors) == errors_before  # ignored: nothing reported
    assert runner.status == "stopped"
    assert runner_tasks(runner) == []
    assert client_tasks() == before


async def test_streaming_second_reset_while_pending_is_ignored(server: EmbeddedServer) -> None:
    async with in_state(server, "streaming") as sc:
        runner = sc.runner
        fire(runner, "STREAM_RESET")
        fire(runner, "STREAM_RESET")  # the response is cancelled once
        assert runner.status == "streaming" and runner.lifecycle.reset_pending
        await eventually(lambda: runner.status == "reconnecting")
        assert runner.health().reconnect_count == 1
        assert 1.0 in sc.clock.pending  # one backoff, the first


async def test_transitions_at_debug_reconnects_and_errors_at_warning(
        server: EmbeddedServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pullwake")
    clock = ManualClock()
    server.fail(WAKE_PATH, 503, count=1)
    runner = make_runner(server, clock=clock, heartbeat_interval=None, name="lg")
    async with started(runner):
        await eventually(lambda: runner.status == "reconnecting")
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")
    lines = [(r.levelno, r.name, r.getMessage()) for r in caplog.records]
    debug = [m for lvl, name, m in lines if lvl == logging.DEBUG and name == "pullwake.runner"]
    for step in ("stopped --START--> connecting", "connecting --CONNECT_FAILED--> reconnecting",
                 "reconnecting --BACKOFF_ELAPSED--> connecting",
                 "connecting --CONNECTED--> streaming", "streaming --STOP--> stopping",
                 "stopping --SHUTDOWN_DONE--> stopped"):
        assert f"[lg] {step}" in debug, step
    warnings = [m for lvl, _, m in lines if lvl == logging.WARNING]
    assert any(m.startswith("[lg] reconnecting in 1s") for m in warnings)
    assert any("connect error: StreamStatusError" in m and "503" in m for m in warnings)
    assert all(lvl < logging.ERROR for lvl, _, _ in lines)


# ---------------------------------------------------- start / stop / start, 100x


@pytest.mark.timeout(30)
async def test_start_stop_start_100_times_cleanly() -> None:
    before = asyncio.all_tasks()
    sockets_before = open_sockets()
    rt = RecordingRuntime()
    async with EmbeddedServer() as server:
        sockets_listening = open_sockets()
        runner = make_runner(server, rt)  # real clock, heartbeats on
        base = client_tasks()
        for i in range(100):
            runner.start()
            await eventually(lambda: runner.status == "streaming")
            if i % 10 == 0:  # under load: a wake claimed and dispatched every tenth run
                await server.append_runner_wake("r1", wake(f"s{i}"))
                await eventually(lambda i=i: len(rt.dispatched) == i // 10 + 1)
            await runner.stop()
            assert runner.status == "stopped"
            assert runner_tasks(runner) == [], i
            assert client_tasks() == base, i
            session = runner.http._session
            assert session is None or session.closed
            await eventually(lambda: open_sockets() <= sockets_listening + 1,
                             message=f"sockets after run {i}")
        assert rt.calls.count("abort") == 100 and rt.calls.count("drain") == 100
        assert len(rt.dispatched) == 10
    await eventually(lambda: asyncio.all_tasks() == before)
    # <=: sockets leaked by earlier tests in this process may be collected meanwhile
    assert open_sockets() <= sockets_before
