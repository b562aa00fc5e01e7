"""Control-plane rules matched with the original or decided (issue 14, classes 8, 12-16).

- 12: claim de-duplication and ``is_wake_active`` see stream paths normalised
  with one leading ``/``;
- 13: a retried claim recognises its own earlier success (``ALREADY_CLAIMED``
  with this worker as holder) and claims again when that lease ends;
- 15: messages arriving on the wake stream are proof of life: liveness
  failures meanwhile are reported but do not reset it;
- 16: heartbeat interval 0 keeps event-driven heartbeats, ``None`` turns them
  off; the first heartbeat sends ``wake_stream_offset`` ``"-1"``;
- 8: every per-key table is bounded (claim keys, the recovery ledger), driven
  with many distinct names; the assertions are on sizes, never on timing.

Real sockets on 127.0.0.1, port 0; timeouts on a ManualClock; hard timeouts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from runner_helpers import RecordingRuntime, eventually, make_runner, started, wake
from test_worker_e2e import Seen, make_worker, reading_handler

from pullwake import ControlPlaneError
from pullwake.io.clock import LoopClock
from pullwake.io.http import HttpClient
from pullwake.runtime.bounded import BoundedTable
from pullwake.runtime.control import WakeEvent, stream_key
from pullwake.runtime.subscriptions import (
    ClaimedStream,
    SubscriptionClient,
    SubscriptionConfig,
    SubscriptionControlPlane,
)
from pullwake.testing import EmbeddedServer
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(60)

CLAIM_PATH = "/_electric/runners/r1/claim"


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer() as srv:
        yield srv


# ------------------------------------------------------------------ class 12


def test_stream_keys_have_one_leading_slash() -> None:
    assert {stream_key(p) for p in ("a/b", "/a/b", "//a/b")} == {"/a/b"}
    assert stream_key("") == "/"


async def test_claim_dedup_and_is_wake_active_normalise_stream_paths(
        server: EmbeddedServer) -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    rt.active.add("/a/b")  # a runtime keyed like the original's
    runner = make_runner(server, rt, clock=clock, heartbeat_interval=None)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        for path in ("a/b", "/a/b"):
            await server.append_runner_wake("r1", wake(path))
        await eventually(lambda: runner.health().claims_skipped == 2)
        assert server.claims("r1") == []  # busy under either spelling
        rt.active.clear()
        await clock.advance(0.025)
        await eventually(lambda: len(rt.dispatched) == 1)
        # One claim in flight for x/y defers the wake for /x/y (same key).
        server.delay(CLAIM_PATH, seconds=0.3, count=1)
        await server.append_runner_wake("r1", wake("x/y"))
        await eventually(lambda: len(server.claims("r1")) == 2)
        await server.append_runner_wake("r1", wake("/x/y"))
        await eventually(lambda: runner.health().claims_skipped == 3)
        await eventually(lambda: len(server.claims("r1")) == 3)  # claimed after the first
        await eventually(lambda: len(rt.dispatched) == 3)


# ------------------------------------------------------------------ class 13


@pytest.fixture
async def claim_server() -> AsyncIterator[tuple[str, list[str], list[str]]]:
    """Claims of ``sub1``: the first is granted to w1 but never answered; then
    409 ALREADY_CLAIMED (holder w1) until told, then granted with a token."""
    script: list[str] = []
    seen: list[str] = []
    hang = asyncio.Event()

    async def claim(request: web.Request) -> web.Response:
        step = script.pop(0) if script else "grant"
        seen.append(step)
        if step == "lost":
            await hang.wait()  # granted on the server; the answer never comes
        if step.startswith("held-by:"):
            return web.json_response({"error": {"code": "ALREADY_CLAIMED",
                                                "current_holder": step.split(":", 1)[1]}},
                                     status=409)
        return web.json_response({"wake_id": "w-2", "generation": 2, "token": "tok",
                                  "streams": [], "lease_ttl_ms": 2000})

    app = web.Application()
    app.router.add_post("/v1/stream/__ds/subscriptions/sub1/claim", claim)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1/stream", script, seen
    finally:
        hang.set()
        await runner.cleanup()


def _plane(root: str, clock: ManualClock) -> SubscriptionControlPlane:
    sub = SubscriptionConfig(id="sub1", wake_stream="wake/pool", pattern="e/*",
                             claim_lease=2.0)

    return SubscriptionControlPlane(SubscriptionClient(root), worker="w1",
                                    subscriptions={"sub1": sub},
                                    wake_stream_url=f"{root}/wake/pool", clock=clock)


async def test_retried_claim_recognises_its_own_earlier_success(
        claim_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    root, script, seen = claim_server
    clock = ManualClock()
    http = HttpClient(headers=None, clock=clock, request_timeout=1.0)
    plane = _plane(root, clock)
    script[:] = ["lost", "held-by:w1", "grant"]
    event = WakeEvent(stream="e/a", subscription_id="sub1")
    try:
        with caplog.at_level(logging.WARNING, logger="pullwake"):
            call = asyncio.ensure_future(plane.claim(http, event))
            await eventually(lambda: seen == ["lost"])
            await clock.advance(1.0)  # the claim's answer never came: timed out
            await clock.advance(0.1)  # the transient-retry backoff
            await eventually(lambda: seen == ["lost", "held-by:w1"])
            assert not call.done()  # not skipped: waiting for its own lease to end
            await clock.advance(2.0)
            await clock.advance(0.1)
            outcome = await asyncio.wait_for(call, 5)
    finally:
        await http.close()
    assert outcome.claimed and seen == ["lost", "held-by:w1", "grant"]
    assert "an earlier attempt succeeded but its answer was lost" in caplog.text


@pytest.mark.parametrize("steps", [["held-by:w2"], ["held-by:w1"]],
                         ids=["held-by-another", "held-by-us-no-failure"])
async def test_already_claimed_is_a_skip_unless_our_own_lost_answer(
        claim_server: Any, steps: list[str]) -> None:
    root, script, seen = claim_server
    http = HttpClient(headers=None, clock=LoopClock(), request_timeout=5.0)
    script[:] = steps
    try:
        outcome = await _plane(root, ManualClock()).claim(
            http, WakeEvent(stream="e/a", subscription_id="sub1"))
    finally:
        await http.close()
    assert not outcome.claimed and outcome.reason == "ALREADY_CLAIMED" and seen == steps


# ------------------------------------------------------------------ class 15


async def test_messages_arriving_are_proof_of_life_while_liveness_fails(
        server: EmbeddedServer, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    runner = make_runner(server, rt, clock=clock, heartbeat_interval=30)
    failure = ControlPlaneError("hung", operation="heartbeat")
    with caplog.at_level(logging.WARNING, logger="pullwake"):
        async with started(runner):
            await eventually(lambda: runner.status == "streaming")
            # The start's real heartbeat (and its follow-up) answered first: a success
            # landing between the failures below would shift their count (a race).
            await eventually(lambda: runner.health().heartbeats_ok >= 1
                             and runner._heartbeat._in_flight is None)
            for n in range(3):  # failures interleaved with wakes: never reset
                runner.record_liveness(False, failure)
                await server.append_runner_wake("r1", wake(f"s{n}"))
                await eventually(lambda n=n: len(rt.dispatched) == n + 1)
                runner.record_liveness(False, failure)
                assert runner.status == "streaming"
            assert runner.health().reconnect_count == 0
            assert runner.health().last_heartbeat_ok is False  # still reported
            # No message since the failures began: the stream is reset.
            runner.record_liveness(False, failure)
            runner.record_liveness(False, failure)
            await eventually(lambda: runner.status == "reconnecting")
    assert "delivered messages meanwhile: it is alive, not resetting it" in caplog.text


# ------------------------------------------------------------------ class 16


async def test_heartbeat_interval_zero_keeps_event_driven_heartbeats(
        server: EmbeddedServer) -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    runner = make_runner(server, rt, clock=clock, heartbeat_interval=0,
                         event_heartbeat_throttle=2, read_idle_timeout=1000)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await clock.advance(0)  # the connect changed diagnostics: one heartbeat
        await eventually(lambda: len(server.heartbeats()) == 1)
        first = server.heartbeats()[0]
        assert first["wake_stream_offset"] in ("-1", runner.offset)
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: len(rt.dispatched) == 1)
        await clock.advance(2)  # throttled, then sent
        await eventually(lambda: len(server.heartbeats()) >= 2)
        count = len(server.heartbeats())
        for _ in range(10):  # 300 s, nothing changing: no periodic heartbeat with 0
            await clock.advance(30)
        await asyncio.sleep(0.05)
        assert len(server.heartbeats()) == count


async def test_heartbeat_interval_none_sends_none_and_first_offset_is_minus_one(
        server: EmbeddedServer) -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    quiet = make_runner(server, rt, clock=clock, heartbeat_interval=None)
    async with started(quiet):
        await eventually(lambda: quiet.status == "streaming")
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: len(rt.dispatched) == 1)
        await clock.advance(120)
        assert server.heartbeats() == []
    server.hang("/runners/r1/wake")  # nothing read yet when the first heartbeat goes
    beating = make_runner(server, RecordingRuntime(), runner_id="r1", clock=ManualClock(),
                          heartbeat_interval=10)
    async with started(beating):
        await eventually(lambda: len(server.heartbeats()) == 1)
        assert server.heartbeats()[0]["wake_stream_offset"] == "-1"


# ------------------------------------------------------------------ class 8


def test_bounded_table_keeps_the_most_recently_written() -> None:
    t: BoundedTable[str, int] = BoundedTable(3)
    for i in range(10):
        t[f"k{i}"] = i
        assert len(t) <= 3
    t["k7"] = 70  # rewritten: now the newest
    t["k10"] = 10
    assert list(t) == ["k9", "k7", "k10"] and t.evicted == 8
    with pytest.raises(ValueError):
        BoundedTable(0)


async def test_claim_keys_in_flight_are_bounded_and_drops_are_recorded(
        server: EmbeddedServer) -> None:
    """Thousands of distinct never-seen stream names while claims hang: the
    scheduler's tables never pass max_keys; each drop is reported."""
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    runner = make_runner(server, rt, clock=ManualClock(), heartbeat_interval=None,
                         on_error=errors.append)
    runner.claims.max_keys = 50
    server.hang(CLAIM_PATH)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    for n in range(400):
        event = WakeEvent.parse(wake(f"never-seen/{n}"))
        runner.lifecycle.fire("WAKE", wake=event)
        runner.lifecycle.fire("WAKE", wake=event)  # a repeat is deferred, not a new key
        sched = runner.claims
        assert len(sched._in_flight) + len(sched._held) <= 50
        assert len(sched._deferred) <= 50 and len(sched._retries) <= 50
    assert runner.claims.dropped == 2 * 350 and len(runner.claims._deferred) == 50
    drops = [e for e in errors if "is dropped" in str(e)]
    assert len(drops) == 700 and all(isinstance(e, ControlPlaneError) for e in drops)
    clock = runner.config.clock
    stop = asyncio.ensure_future(runner.stop())
    await eventually(lambda: runner.status == "stopping")
    await clock.advance(1)  # type: ignore[union-attr]  # the claim grace
    await asyncio.wait_for(stop, 10)


async def test_recovery_ledger_is_bounded_however_many_stream_names_claims_list(
        embedded_ds_server: EmbeddedServer) -> None:
    seen = Seen()
    worker = make_worker(embedded_ds_server, reading_handler(seen, "w1"),
                         max_tracked_streams=100)
    recovery = worker._runtime.recovery
    for round_ in range(30):  # 30 claims, each listing 200 never-seen names
        recovery.learn("sub1", [ClaimedStream(path=f"r{round_}/s{i}", acked_offset=f"{i:04d}",
                                              tail_offset=f"{i:04d}") for i in range(200)])
        assert len(recovery.ledger["sub1"]) <= 100
    ledger = recovery.ledger["sub1"]
    assert len(ledger) == 100 and ledger.evicted == 30 * 200 - 100
    assert "r29/s199" in ledger  # the newest are kept
    await worker.runner.http.close()
