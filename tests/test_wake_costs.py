"""Per-wake costs that must not grow: the secrets a worker scrubs, and held wakes.

- The secrets an :class:`~pullwake.io.http.HttpClient` scrubs stay bounded however
  many wakes a worker handles: a claim token is scrubbed while its wake runs
  and forgotten when it ends; a rotating credential provider keeps only its
  most recent values; the scrubber is rebuilt only when the set changes.
- A wake that arrives while the previous one on its subscription is still
  held is claimed the moment that one is acked: the worker tells the runner
  the key is free (an event), so the runner never polls for it.

Real sockets on 127.0.0.1 only (the embedded server, whose request log gives
the tokens the worker sent, and the reference server where marked); every
test has a hard timeout; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from runner_helpers import ClaimsOwner, GrantingControl

from pullwake.errors import ControlPlaneError
from pullwake.io.http import HttpClient, Secrets
from pullwake.runtime.control import WakeEvent
from pullwake.testing.clock import ManualClock
from pullwake.testing.interface import DurableStreamsServer
from pullwake.testing.server import EmbeddedServer
from pullwake.worker import Wake, Worker

pytestmark = [pytest.mark.timeout(60), pytest.mark.ds_server_options(long_poll_timeout=1.0)]

JSON = {"Content-Type": "application/json"}
SUB = "sub1"
STREAM = "events/one"
ACK_PATH = f"/v1/stream/__ds/subscriptions/{SUB}/ack"
STATIC = "static-credential-value"
FAST: dict[str, Any] = {"claim_lease": 1.0, "heartbeat_interval": 0.5, "read_idle_timeout": 3.0,
                        "request_timeout": 2.0, "connect_timeout": 2.0, "stop_grace": 1.0}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def append(http: aiohttp.ClientSession, srv: DurableStreamsServer, value: Any) -> None:
    async with http.post(f"{srv.stream_root}/{STREAM}", data=json.dumps(value),
                         headers=JSON) as resp:
        assert resp.status == 204, await resp.text()


async def create(http: aiohttp.ClientSession, srv: DurableStreamsServer) -> None:
    async with http.put(f"{srv.stream_root}/{STREAM}", headers=JSON) as resp:
        assert resp.status in (200, 201), await resp.text()


def make_worker(srv: DurableStreamsServer, handler: Any, **overrides: Any) -> Worker:
    opts: dict[str, Any] = {"server": srv.stream_root, "subscription": SUB,
                            "wake_stream": "wake/pool", "streams": [STREAM],
                            "worker_name": "w1", "handler": handler, **FAST}
    opts.update(overrides)
    return Worker(**opts)


async def wait_for(predicate: Any, *, timeout: float, what: str) -> None:
    """Poll a condition on the loop; fail (not hang) after ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"not reached within {timeout}s: {what}")
        await asyncio.sleep(0.005)


# ------------------------------------------------------------ the secret set


def test_held_secrets_are_forgotten_and_the_snapshot_is_cached() -> None:
    s = Secrets()
    s.keep(["static-one"])
    base = s.snapshot()
    assert s.snapshot() is base  # unchanged: no copy per request
    for i in range(10_000):
        token = f"claim-token-{i:05d}"
        with s.hold([token, f"Bearer {token}"]):
            assert token in s
            assert s.scrub(f"echo {token} and Bearer {token}!") == "echo *** and Bearer ***!"
            with s.hold([token]):  # held twice (the request inside the wake)
                pass
            assert token in s  # still held by the outer scope
        assert token not in s
    assert s.snapshot() == base and len(s) == 1
    assert s.scrub("x static-one y") == "x *** y"


def test_a_rotating_provider_keeps_only_its_recent_values() -> None:
    s = Secrets(keep_limit=8)
    for i in range(1000):
        s.keep([f"rotating-{i:04d}"])
    assert len(s) == 8
    assert "rotating-0999" in s and "rotating-0992" in s and "rotating-0991" not in s
    s.keep(["rotating-0992"])  # seen again: now the most recent, so it survives
    s.keep(["rotating-new"])
    assert "rotating-0992" in s and "rotating-0993" not in s


def test_longest_secret_wins_and_repr_shows_no_value() -> None:
    s = Secrets()
    s.keep(["abcd", "abcdefgh"])
    assert s.scrub("abcdefgh abcd") == "*** ***"
    assert "abcd" not in repr(s)


async def test_request_headers_are_secret_for_that_request_only(
        embedded_ds_server: EmbeddedServer) -> None:
    srv = embedded_ds_server
    http = HttpClient(headers={"Authorization": f"Bearer {STATIC}"}, clock=ManualClock(),
                      request_timeout=5)
    try:
        for i in range(200):
            token = f"per-request-token-{i:04d}"
            answer = await http.request("HEAD", f"{srv.stream_root}/nope", operation="probe",
                                        headers={"Authorization": f"Bearer {token}"})
            assert answer.status == 404
            assert token not in http.secrets
        assert set(http.secrets) == {f"Bearer {STATIC}", STATIC}
        sent = [r.headers["Authorization"] for r in srv.requests_matching("/nope")]
        assert sent[-1] == "Bearer per-request-token-0199"
    finally:
        await http.close()


async def test_worker_secrets_stay_bounded_and_live_tokens_are_scrubbed(
        embedded_ds_server: EmbeddedServer, http: aiohttp.ClientSession) -> None:
    """200 sequential wakes: each token is scrubbed while its wake runs, then forgotten."""
    srv = embedded_ds_server
    wakes = 200
    during: dict[int, tuple[str, ...]] = {}
    scrubbed: dict[int, str] = {}
    after: list[tuple[str, ...]] = []
    worker: Worker

    async def handle(wake: Wake) -> None:
        assert wake.generation is not None
        snap = worker.runner.http.secrets
        during[wake.generation] = snap
        live = [v for v in snap if STATIC not in v and not v.startswith("Bearer ")]
        scrubbed[wake.generation] = worker.runner.http.scrub(f"echo {' '.join(live)} end")

    worker = make_worker(srv, handle, headers={"Authorization": f"Bearer {STATIC}"})
    await create(http, srv)
    async with worker:
        for i in range(wakes):
            acked = worker.stats.wakes_acked
            await append(http, srv, {"i": i})
            await wait_for(lambda n=acked: worker.stats.wakes_acked > n, timeout=10,
                           what=f"wake {i} acked")
            # The job ends right after its ack: its token must go then (bounded wait).
            await wait_for(lambda: len(worker.runner.http.secrets) == 2, timeout=10,
                           what=f"the token of wake {i} forgotten")
            after.append(worker.runner.http.secrets)
    tokens = {}
    for r in srv.requests_matching(ACK_PATH, method="POST"):
        body = json.loads(r.body)
        if body.get("done"):
            tokens[body["generation"]] = r.headers["Authorization"].split(" ", 1)[1]
    assert len(tokens) == wakes == len(during)
    base = {f"Bearer {STATIC}", STATIC}
    for gen, token in tokens.items():
        assert set(during[gen]) == base | {token, f"Bearer {token}"}, gen
        assert scrubbed[gen] == "echo *** end"
    # Once a wake is acked its token is gone: the set never grows with the run.
    assert all(set(snap) == base for snap in after)
    assert not any(t in snap for snap in after for t in tokens.values())


async def test_an_ack_answer_echoing_the_live_token_is_scrubbed(
        embedded_ds_server: EmbeddedServer, http: aiohttp.ClientSession) -> None:
    srv = embedded_ds_server
    errors: list[BaseException] = []
    echoed: list[str] = []
    worker: Worker

    async def handle(wake: Wake) -> None:
        if echoed:
            return
        (token,) = [v for v in worker.runner.http.secrets if not v.startswith("Bearer ")]
        echoed.append(token)
        srv.fail(ACK_PATH, 500, body={"message": f"token {token} rejected"}, count=1)

    worker = make_worker(srv, handle, on_error=errors.append)
    await create(http, srv)
    async with worker:
        await append(http, srv, {"i": 0})
        # The done-ack fails; the lease runs out and the wake comes back and is acked.
        await wait_for(lambda: worker.stats.wakes_acked == 1, timeout=15, what="acked")
    (token,) = echoed
    failures = [e for e in errors if isinstance(e, ControlPlaneError) and e.status == 500]
    assert failures, errors
    for e in errors:
        assert token not in f"{e} {e!r} {e.args!r}"


# ----------------------------------------------------------- a held wake waits


class _BusyRuntime:
    notifies_wake_free = True

    def __init__(self) -> None:
        self.busy: set[str] = set()
        self.dispatched: list[Any] = []

    def is_wake_active(self, key: str) -> bool:
        return key in self.busy

    def dispatch_wake(self, notification: Any, **kw: Any) -> None:
        self.dispatched.append(notification)


async def test_a_held_back_wake_is_claimed_when_the_runtime_frees_the_key() -> None:
    from pullwake.runtime.claims import ClaimScheduler
    from pullwake.runtime.health import Stats
    from pullwake.runtime.ports import RuntimeHooks

    clock = ManualClock()
    control, runtime, owner = GrantingControl(), _BusyRuntime(), ClaimsOwner(clock)
    jobs = owner.jobs
    claims = ClaimScheduler(owner, control=control,
                            runtime=RuntimeHooks.of(runtime),  # type: ignore[arg-type]
                            clock=clock, stats=Stats(), busy_retry=0.025)
    claims.open()
    runtime.busy.add("sub1")
    claims.submit(WakeEvent(stream="s1", subscription_id="sub1"))
    claims.submit(WakeEvent(stream="s2", subscription_id="sub1"))  # the latest is kept
    assert claims.in_flight == 1 and not control.claimed
    assert clock.pending == []  # held without a timer: never polled, only the event frees it
    claims.runtime_free("sub1")  # still busy: nothing happens yet
    assert not control.claimed
    runtime.busy.clear()
    claims.runtime_free("sub1")  # the event: claimed now, no clock advance
    await asyncio.gather(*jobs)
    assert control.claimed == ["s2"] and runtime.dispatched == [{"wake": "s2"}]
    assert claims.busy_retries == 0 and claims.in_flight == 0
    runtime.busy.add("sub1")
    claims.submit(WakeEvent(stream="s3", subscription_id="sub1"))
    runtime.busy.clear()
    claims.runtime_free(None)  # "any key may be free" (a concurrency slot opened)
    await asyncio.gather(*jobs)
    assert control.claimed == ["s2", "s3"] and claims.busy_retries == 0
    claims.close()


async def test_back_to_back_wakes_never_wait_for_a_busy_retry(
        ds_server: DurableStreamsServer, http: aiohttp.ClientSession) -> None:
    """Each handler appends the next message, so every next wake arrives while its
    predecessor is held; it must be claimed on the ack, not by polling."""
    wakes = 60
    handled: list[int] = []

    async def handle(wake: Wake) -> None:
        async for m in wake.messages(STREAM):
            handled.append(m["i"])
        if handled[-1] + 1 < wakes:
            await append(http, ds_server, {"i": handled[-1] + 1})

    # A polling fallback that would take minutes: only the event can make progress.
    worker = make_worker(ds_server, handle, runtime_busy_retry=300.0)
    await create(http, ds_server)
    async with worker:
        await append(http, ds_server, {"i": 0})
        await wait_for(lambda: worker.stats.wakes_acked >= wakes, timeout=40,
                       what=f"{wakes} wakes acked")
    assert sorted(set(handled)) == list(range(wakes))
    assert worker.runner.claims.busy_retries == 0
    assert worker.stats.handler_errors == 0


async def test_a_wake_held_back_by_max_concurrency_goes_when_a_slot_frees(
        ds_server: DurableStreamsServer, http: aiohttp.ClientSession) -> None:
    """One slot, two subscriptions: each handler makes work for the other and returns
    only once the runner has held that wake back (the slot is taken), so every wake
    but the first waits for a slot; it must be claimed when the slot frees."""
    rounds = 30
    order: list[str] = []
    worker: Worker
    paths = {"a": "events/a", "b": "events/b"}

    async def handle(wake: Wake) -> None:
        mine = wake.subscription_id
        async for _ in wake.messages(paths[mine]):
            pass
        order.append(mine)
        if len(order) < rounds:
            other = "b" if mine == "a" else "a"
            async with http.post(f"{ds_server.stream_root}/{paths[other]}",
                                 data=json.dumps({"n": len(order)}), headers=JSON) as resp:
                assert resp.status == 204
            await wait_for(lambda: worker.runner.claims.in_flight >= 1, timeout=10,
                           what=f"the wake of {other} held back")

    from pullwake.runtime.subscriptions import SubscriptionConfig

    subs = [SubscriptionConfig(id=k, wake_stream="wake/pool", streams=(p,), claim_lease=5.0)
            for k, p in paths.items()]
    worker = Worker(server=ds_server.stream_root, subscriptions=subs, handler=handle,
                    worker_name="w1", max_concurrency=1,
                    runtime_busy_retry=300.0,
                    **{k: v for k, v in FAST.items() if k != "claim_lease"})
    for p in paths.values():
        async with http.put(f"{ds_server.stream_root}/{p}", headers=JSON) as resp:
            assert resp.status in (200, 201)
    async with worker:
        async with http.post(f"{ds_server.stream_root}/{paths['a']}", data="{}",
                             headers=JSON) as resp:
            assert resp.status == 204
        await wait_for(lambda: worker.stats.wakes_acked >= rounds, timeout=40,
                       what=f"{rounds} wakes acked")
    assert order == ["a", "b"] * (rounds // 2)
    assert worker.runner.claims.busy_retries == 0


# ------------------------------------------------ the lease keeper is a timer


async def test_a_long_handler_keeps_its_lease_by_timed_extensions(
        ds_server: DurableStreamsServer, http: aiohttp.ClientSession) -> None:
    """A 1 s lease extended every 1/3 s while the handler waits for three extensions."""
    worker: Worker

    async def handle(wake: Wake) -> None:
        await wait_for(lambda: worker.stats.lease_extensions >= 3, timeout=20,
                       what="three lease extensions")

    worker = make_worker(ds_server, handle)
    await create(http, ds_server)
    async with worker:
        await append(http, ds_server, {"i": 0})
        await wait_for(lambda: worker.stats.wakes_acked == 1, timeout=30, what="acked")
        assert worker.stats.leases_lost == 0 and worker.stats.lease_extensions >= 3
        assert worker.stats.wakes_claimed == 1  # never lost, never claimed again


class _TimerLog(ManualClock):
    """A ManualClock that records what arms each timer (the clock is the seam)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed: list[str] = []

    def call_later(self, delay: float, callback: Any, *args: Any) -> Any:
        self.armed.append(getattr(callback, "__qualname__", repr(callback)))
        return super().call_later(delay, callback, *args)

    def lease_timers(self) -> int:
        return sum(1 for name in self.armed if "Lease" in name)


async def test_wakes_share_one_lease_timer_and_a_long_one_is_still_extended(
        embedded_ds_server: EmbeddedServer, http: aiohttp.ClientSession) -> None:
    """No timer per wake for its lease: the keeper's one timer, for the soonest due."""
    srv, clock = embedded_ds_server, _TimerLog()
    entered, release = asyncio.Event(), asyncio.Event()
    seen: list[int] = []

    async def handle(wake: Wake) -> None:
        async for m in wake.messages(STREAM):
            seen.append(m["i"])
        if seen[-1] == 3:  # the fourth wake waits through two extensions
            entered.set()
            await release.wait()

    # A 30 s lease: extended every 10 s of the test's clock, which only the test moves.
    worker = make_worker(srv, handle, clock=clock, claim_lease=30.0, heartbeat_interval=None,
                         read_idle_timeout=60.0, request_timeout=30.0, connect_timeout=30.0)
    await create(http, srv)
    async with worker:
        try:
            for i in range(3):
                await append(http, srv, {"i": i})
                await wait_for(lambda i=i: worker.stats.wakes_acked == i + 1, timeout=10,
                               what=f"wake {i} acked")
            assert clock.lease_timers() == 1  # three wakes, one timer (still armed, unfired)
            assert worker.stats.lease_extensions == 0
            await append(http, srv, {"i": 3})
            await asyncio.wait_for(entered.wait(), 10)
            for n in (1, 2):
                await clock.advance(10.0)
                await wait_for(lambda n=n: worker.stats.lease_extensions == n, timeout=10,
                               what=f"extension {n}")
        finally:
            release.set()
        await wait_for(lambda: worker.stats.wakes_acked == 4, timeout=10, what="wake 3 acked")
    assert seen == [0, 1, 2, 3] and worker.stats.leases_lost == 0
    assert worker.stats.wakes_claimed == 4  # never lost, never claimed again


async def test_a_fenced_extension_cancels_the_handler(
        embedded_ds_server: EmbeddedServer, http: aiohttp.ClientSession) -> None:
    srv = embedded_ds_server
    cancelled = asyncio.Event()
    errors: list[BaseException] = []
    started = asyncio.Event()

    async def handle(wake: Wake) -> None:
        if started.is_set():
            return  # the next generation: done at once
        started.set()
        try:
            await asyncio.Event().wait()  # only the lease loss ends this
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker = make_worker(srv, handle, on_error=errors.append)
    await create(http, srv)
    async with worker:
        await append(http, srv, {"i": 0})
        await asyncio.wait_for(started.wait(), 10)
        srv.fail(ACK_PATH, 409, body={"error": {"code": "FENCED"}}, count=1)
        await asyncio.wait_for(cancelled.wait(), 10)
        await wait_for(lambda: worker.stats.wakes_acked == 1, timeout=15,
                       what="the next generation acked")
    assert worker.stats.leases_lost == 1
    assert any(getattr(e, "code", None) == "FENCED" for e in errors), errors


async def test_a_lost_lease_whose_handler_ignores_cancellation_frees_its_key(
        embedded_ds_server: EmbeddedServer, http: aiohttp.ClientSession) -> None:
    """The handler runs in its job's task: one that ignores the cancellation keeps
    that task, and the rest of the job (count the lost lease, release nothing,
    free the key) goes on in a new job after CANCEL_GRACE_S."""
    srv = embedded_ds_server
    swallowed, let_go, started = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handle(wake: Wake) -> None:
        if started.is_set():
            return  # the next generation: done at once
        started.set()
        while not let_go.is_set():
            try:
                await let_go.wait()
            except asyncio.CancelledError:
                swallowed.set()  # and carry on

    worker = make_worker(srv, handle, max_concurrency=2)
    await create(http, srv)
    try:
        async with worker:
            await append(http, srv, {"i": 0})
            await asyncio.wait_for(started.wait(), 10)
            srv.fail(ACK_PATH, 409, body={"error": {"code": "FENCED"}}, count=1)
            await asyncio.wait_for(swallowed.wait(), 10)
            await wait_for(lambda: worker.stats.wakes_acked == 1, timeout=15,
                           what="the next generation acked")
            assert worker.stats.leases_lost == 1 and worker.stats.wakes_released == 0
            assert worker.stats.handlers_abandoned == 1 and worker.abandoned_handlers() == 1
            assert worker.runner.runtime.jobs_active == 0
    finally:
        let_go.set()
    await wait_for(lambda: worker.abandoned_handlers() == 0, timeout=5,
                   what="the stubborn handler ended once told to")


def _pullwake_garbage(garbage: list[Any]) -> list[str]:
    """The objects of ``garbage`` that pullwake made (its types, functions, frames)."""
    found = []
    for obj in garbage:
        kind = type(obj)
        owner = getattr(obj, "__func__", obj)  # a bound method: its function
        module = getattr(owner, "__module__", None) if callable(owner) else None
        if kind.__module__.startswith("pullwake") or (
                isinstance(module, str) and module.startswith("pullwake")):
            found.append(f"{kind.__name__} {getattr(owner, '__qualname__', '')}".strip())
        elif kind.__name__ in ("coroutine", "async_generator", "frame"):
            code = getattr(obj, "cr_code", None) or getattr(obj, "ag_code", None) or \
                getattr(obj, "f_code", None)
            if code is not None and "/pullwake/" in code.co_filename:
                found.append(f"{kind.__name__} {code.co_qualname}")
    return found


async def test_a_wake_leaves_no_reference_cycles_behind(
        embedded_ds_server: EmbeddedServer, http: aiohttp.ClientSession) -> None:
    """A wake's objects die with it, by reference counting: a cycle per wake (closures
    calling each other, an object holding its own bound method) is garbage the
    collector must find, and its collections were a worker's largest cost per wake.
    Covers a claim, its catch-up read, a lease extension and the ack."""
    import gc

    srv = embedded_ds_server
    wakes = 20
    seen: list[int] = []
    worker: Worker

    async def handle(wake: Wake) -> None:
        async for m in wake.messages(STREAM):
            seen.append(m["i"])
        if len(seen) == 1:  # the first wake also keeps its lease by an extension
            await wait_for(lambda: worker.stats.lease_extensions >= 1, timeout=10,
                           what="a lease extension")

    worker = make_worker(srv, handle)  # claim_lease 1 s: an extension every 0.33 s
    await create(http, srv)
    async with worker:
        await append(http, srv, {"i": -1})  # warm: first-use objects are not per wake
        await wait_for(lambda: worker.stats.wakes_acked >= 1, timeout=10, what="warm-up wake")
        seen.clear()
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for i in range(wakes):
                acked = worker.stats.wakes_acked
                await append(http, srv, {"i": i})
                await wait_for(lambda n=acked: worker.stats.wakes_acked > n, timeout=10,
                               what=f"wake {i} acked")
            await wait_for(lambda: worker.stats.jobs_active == 0, timeout=10, what="jobs ended")
            gc.collect()
            found = _pullwake_garbage(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert seen == list(range(wakes))
    assert worker.stats.lease_extensions >= 1
    assert found == [], sorted(set(found))


@pytest.mark.parametrize("interval", [60.0, 0.0])
async def test_a_worker_probes_liveness_on_its_interval_not_per_wake(
        embedded_ds_server: EmbeddedServer, http: aiohttp.ClientSession,
        interval: float) -> None:
    """A worker's heartbeat (a ``HEAD`` of its wake stream) carries no diagnostics:
    wakes send no extra, event-driven one; the periodic one still goes on time.
    With ``heartbeat_interval=0`` (event-driven only) changes still send one."""
    srv = embedded_ds_server
    clock = ManualClock()
    handled: list[int] = []

    async def handle(wake: Wake) -> None:
        handled.append(len(handled))

    def probes() -> int:
        return len(srv.requests_matching("/wake/pool", method="HEAD"))

    # Every other timer far beyond the time advanced (the clock jumps: a 2 s
    # request timeout would expire requests still on their way).
    worker = make_worker(srv, handle, clock=clock, heartbeat_interval=interval,
                         claim_lease=600.0, read_idle_timeout=3000.0, request_timeout=600.0,
                         connect_timeout=600.0)
    await create(http, srv)
    async with worker:
        await wait_for(lambda: worker.runner.status == "streaming", timeout=10,
                       what="streaming")
        if interval:
            await wait_for(lambda: probes() == 1, timeout=10, what="the start's probe")
        start = probes()
        for i in range(3):
            await append(http, srv, {"i": i})
            await wait_for(lambda n=i: worker.stats.wakes_acked > n, timeout=10,
                           what=f"wake {i} acked")
            await clock.advance(2.5)  # past the event-driven throttle (2 s) each time
        if interval:
            # The next probe is the periodic one, and it is the only one since the start.
            await clock.advance(interval)
            await wait_for(lambda: probes() > start, timeout=10, what="the periodic probe")
            assert probes() == start + 1
        else:
            await wait_for(lambda: probes() > start, timeout=10, what="an event-driven probe")
        assert len(handled) == 3
