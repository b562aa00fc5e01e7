"""The original runner's 24 behaviours (original-behaviors.md), one test each.

Every test runs a real PullWakeRunner against a real EmbeddedServer on
127.0.0.1 (port 0) over real sockets. Tests that depend on timers use a
ManualClock and move time by hand; none sleeps to make time pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from runner_helpers import (
    BOUND,
    RecordingRuntime,
    eventually,
    make_runner,
    started,
    wake,
    wake_requests,
)

from pullwake import ControlPlaneError, PullWakeRunner, RunnerConfig
from pullwake.testing import ClaimAnswer, EmbeddedServer
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
async def server():
    async with EmbeddedServer() as srv:
        yield srv


async def test_01_reads_from_beginning_without_offset(server: EmbeddedServer) -> None:
    runner = make_runner(server)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
    reqs = wake_requests(server)
    assert reqs[0].query["offset"] == "-1"
    assert reqs[0].query["live"] == "sse"


async def test_01b_resumes_from_configured_offset(server: EmbeddedServer) -> None:
    off = await server.append_runner_wake("r1", wake("s0"))
    runner = make_runner(server, offset=off)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
    assert wake_requests(server)[0].query["offset"] == off


async def test_02_claims_before_dispatch_and_follows_offset(server: EmbeddedServer) -> None:
    rt = RecordingRuntime()
    runner = make_runner(server, rt, claim_token_header="electric-claim-token",
                         claim_headers={"x-tenant": "acme"})
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        tail = await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: len(rt.dispatched) == 1)
        await eventually(lambda: runner.offset == tail)
        assert server.claims("r1") == [wake("s1")]  # the event itself is the claim body
        assert rt.token_headers == ["electric-claim-token"]
        headers = await rt.claim_headers[0]()
        assert headers == {"x-tenant": "acme", "electric-runner-id": "r1"}
        assert "drain" not in rt.calls  # only at stop
        h = runner.health()
        assert (h.events_received, h.claims_succeeded, h.last_claim_result) == (1, 1, "claimed")
    assert rt.calls == ["dispatch", "abort", "drain"]


async def test_03_second_wake_for_same_path_deferred_until_claim_settles(
        server: EmbeddedServer) -> None:
    rt = RecordingRuntime()
    gate = asyncio.Event()
    answers: list[ClaimAnswer] = []

    async def slow_first() -> None:
        await gate.wait()

    server.delay("/_electric/runners/r1/claim", seconds=0.3, count=1)
    server.program_claims(ClaimAnswer.claimed({"n": 1}), ClaimAnswer.conflict("NO_PENDING_WORK"))
    runner = make_runner(server, rt)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1", 1))
        await eventually(lambda: len(server.claims("r1")) == 1)
        await server.append_runner_wake("r1", wake("s1", 2))
        await eventually(lambda: runner.health().claims_skipped == 1)
        assert len(server.claims("r1")) == 1  # deferred, not claimed concurrently
        await eventually(lambda: len(server.claims("r1")) == 2)
        assert server.claims("r1")[1]["generation"] == 2
        await eventually(lambda: runner.health().claims_skipped == 2)  # the 409 counts too
    assert [n for n in rt.dispatched] == [{"n": 1}]
    del answers, slow_first


async def test_04_runtime_busy_path_retried_until_free(server: EmbeddedServer) -> None:
    rt = RecordingRuntime()
    rt.active.add("/s1")  # paths are normalised with a leading "/", as in the original
    clock = ManualClock()
    runner = make_runner(server, rt, clock=clock, heartbeat_interval=None)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: runner.health().claims_skipped == 1)
        for _ in range(3):
            await clock.advance(0.025)
        assert server.claims("r1") == []  # still busy: retried, never claimed
        assert clock.pending[0] == pytest.approx(0.025)
        rt.active.clear()
        await clock.advance(0.025)
        await eventually(lambda: len(rt.dispatched) == 1)
    assert len(server.claims("r1")) == 1


@pytest.mark.parametrize(
    ("answer", "result", "skipped", "failed"),
    [
        (ClaimAnswer.no_content(), "no_work", 1, 0),
        (ClaimAnswer.conflict("ALREADY_CLAIMED"), "no_work", 1, 0),
        (ClaimAnswer.conflict("NO_PENDING_WORK"), "no_work", 1, 0),
        (ClaimAnswer.done(), "no_work", 1, 0),
        (ClaimAnswer.conflict("SOMETHING_ELSE"), "error", 0, 1),
        (ClaimAnswer(409, {"message": "ALREADY_CLAIMED by someone"}), "error", 0, 1),
    ],
    ids=["204", "409-already", "409-no-work", "done", "409-other", "409-substring"],
)
async def test_05_claim_answers(server: EmbeddedServer, answer: ClaimAnswer, result: str,
                                skipped: int, failed: int) -> None:
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    server.program_claims(answer)
    runner = make_runner(server, rt, on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: runner.health().last_claim_result == result)
        h = runner.health()
        assert (h.claims_skipped, h.claims_failed, h.claims_succeeded) == (skipped, failed, 0)
    assert rt.dispatched == []
    claim_errors = [e for e in errors if isinstance(e, ControlPlaneError)]
    assert len(claim_errors) == failed
    if failed:
        assert claim_errors[0].status == answer.status
        assert claim_errors[0].operation == "claim"


async def test_06_health_snapshot_fields(server: EmbeddedServer) -> None:
    runner = make_runner(server)
    h = runner.health()
    assert (h.running, h.status, h.started_at, h.offset) == (False, "stopped", None, None)
    assert (h.events_received, h.claims_succeeded, h.claims_skipped, h.claims_failed,
            h.reconnect_count) == (0, 0, 0, 0, 0)
    assert h.last_heartbeat_ok is False and h.stream_connected is False
    expected = {"running", "status", "offset", "started_at", "stream_connected",
                "stream_connected_since", "reconnect_count", "last_error", "last_error_at",
                "last_heartbeat_at", "last_heartbeat_ok", "last_claim_at", "last_claim_result",
                "last_dispatch_at", "events_received", "claims_succeeded", "claims_skipped",
                "claims_failed"}
    assert expected <= set(h.to_dict())
    async with started(runner):
        await eventually(lambda: runner.health().stream_connected)
        h = runner.health()
        assert h.running and h.status == "streaming" and h.started_at is not None
        assert h.stream_connected_since is not None
        with pytest.raises(AttributeError):
            h.running = False  # type: ignore[misc]  # frozen


async def test_07_base_url_prefix_and_encoded_runner_id() -> None:
    async with EmbeddedServer(prefix="/t/acme") as server:
        rt = RecordingRuntime()
        runner = make_runner(server, rt, runner_id="a b/c", heartbeat_interval=30)
        async with started(runner):
            await eventually(lambda: runner.status == "streaming")
            await server.append_runner_wake("a b/c", wake("s1"))
            await eventually(lambda: len(rt.dispatched) == 1)
            await eventually(lambda: len(server.heartbeats()) >= 1)
        paths = {r.path for r in server.requests}
        assert "/t/acme/runners/a%20b%2Fc/wake" in paths
        assert "/t/acme/_electric/runners/a%20b%2Fc/claim" in paths
        assert "/t/acme/_electric/runners/a%20b%2Fc/heartbeat" in paths


async def test_08_heartbeat_body_periodic_and_event_driven(server: EmbeddedServer) -> None:
    clock = ManualClock()
    runner = make_runner(server, clock=clock, heartbeat_interval=10,
                         event_heartbeat_throttle=2)
    async with started(runner):
        await eventually(lambda: len(server.heartbeats()) == 1)
        first = server.heartbeats()[0]
        assert first["lease_ms"] == 30_000  # 3 x interval by default
        assert first["wake_stream_offset"] == "-1"  # nothing read yet: as the original
        diag = first["diagnostics"]
        assert "running" not in diag and "offset" not in diag
        assert diag["status"] in ("connecting", "streaming")
        await eventually(lambda: runner.status == "streaming")
        await clock.advance(2)  # connect changed diagnostics: one throttled heartbeat
        await eventually(lambda: len(server.heartbeats()) == 2)
        tail = await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: runner.offset == tail)
        await clock.advance(2)
        await eventually(lambda: len(server.heartbeats()) == 3)
        assert server.heartbeats()[-1]["wake_stream_offset"] == tail
        assert server.heartbeats()[-1]["diagnostics"]["events_received"] == 1
        await clock.advance(6)  # periodic at t=10
        await eventually(lambda: len(server.heartbeats()) == 4)
        await clock.advance(10)
        await eventually(lambda: len(server.heartbeats()) == 5)


async def test_09_no_event_heartbeat_for_unchanged_offset(server: EmbeddedServer) -> None:
    clock = ManualClock()
    runner = make_runner(server, clock=clock, heartbeat_interval=100)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await clock.advance(5)  # flush the connect-triggered heartbeat
        await eventually(lambda: len(server.heartbeats()) == 2)
        runner.lifecycle.fire("OFFSET", offset=runner.offset)  # unchanged
        await clock.advance(5)
        assert len(server.heartbeats()) == 2
        runner.lifecycle.fire("OFFSET", offset="0000000000000000_0000000000000099")
        await clock.advance(5)
        await eventually(lambda: len(server.heartbeats()) == 3)


async def test_10_heartbeats_coalesce_while_in_flight(server: EmbeddedServer) -> None:
    clock = ManualClock()
    server.delay("/_electric/runners/r1/heartbeat", seconds=0.4, count=1)
    runner = make_runner(server, clock=clock, heartbeat_interval=100,
                         event_heartbeat_throttle=0)
    async with started(runner):
        await eventually(lambda: len(server.requests_matching("/heartbeat")) == 1)
        for _ in range(5):  # five requests while the first is in flight
            runner._heartbeat.notify()
            await clock.advance(0)
        await eventually(lambda: len(server.heartbeats()) == 2, timeout=5)
        await asyncio.sleep(0.1)
        assert len(server.heartbeats()) == 2  # one follow-up, not five


async def test_11_heartbeat_failures_reset_on_restart(server: EmbeddedServer) -> None:
    clock = ManualClock()
    server.heartbeat_answer = ClaimAnswer.error(500)
    runner = make_runner(server, clock=clock, heartbeat_interval=100,
                         heartbeat_failures_before_reset=5)
    runner.start()
    await eventually(lambda: runner.health().heartbeat_failures >= 2)
    await runner.stop()
    server.heartbeat_answer = ClaimAnswer(200, {})
    runner.start()
    assert runner.health().heartbeat_failures == 0
    assert runner.health().last_heartbeat_ok is False
    await eventually(lambda: runner.health().last_heartbeat_ok)
    await runner.stop()


async def test_12_async_headers_provider_resolved_per_connection(
        server: EmbeddedServer) -> None:
    calls = 0

    async def provider() -> dict[str, str]:
        nonlocal calls
        calls += 1
        return {"Authorization": f"Bearer token-{calls}"}

    clock = ManualClock()
    runner = make_runner(server, clock=clock, headers=provider, heartbeat_interval=None)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        first = wake_requests(server)[0].headers["Authorization"]
        runner.lifecycle.fire("STREAM_RESET", error=RuntimeError("test reset"))
        await eventually(lambda: runner.status == "reconnecting")
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")
        second = wake_requests(server)[1].headers["Authorization"]
    assert first != second and calls >= 2


async def test_13_claims_run_concurrently_with_reading(server: EmbeddedServer) -> None:
    rt = RecordingRuntime()
    server.delay("/_electric/runners/r1/claim", seconds=0.5, count=1)  # the first claim is slow
    runner = make_runner(server, rt)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("slow"))
        await eventually(lambda: len(server.claims("r1")) == 1)
        await server.append_runner_wake("r1", wake("fast"))
        await eventually(lambda: len(rt.dispatched) >= 1)
        assert rt.dispatched[0]["streamPath"] == "/fast"  # not blocked behind "slow"
        await eventually(lambda: len(rt.dispatched) == 2)


async def test_14_claim_completing_after_stop_began_is_not_dispatched(
        server: EmbeddedServer) -> None:
    rt = RecordingRuntime()
    server.delay("/_electric/runners/r1/claim", seconds=0.3, count=1)
    runner = make_runner(server, rt, claim_grace=5)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    await server.append_runner_wake("r1", wake("s1"))
    await eventually(lambda: len(server.claims("r1")) == 1)
    await runner.stop()
    assert runner.health().claims_succeeded == 1  # the claim did answer, within the grace
    assert rt.dispatched == []


async def test_15_heartbeats_report_degraded_while_reconnecting(server: EmbeddedServer) -> None:
    clock = ManualClock()
    server.fail("/runners/r1/wake", 503)
    runner = make_runner(server, clock=clock, heartbeat_interval=10,
                         event_heartbeat_throttle=0.5)
    async with started(runner):
        await eventually(lambda: runner.status == "reconnecting")
        await clock.advance(0.5)  # the throttled heartbeat, before the 1 s backoff ends
        await eventually(lambda: any(hb["diagnostics"]["status"] == "reconnecting"
                                     for hb in server.heartbeats()))
        hb = [h for h in server.heartbeats() if h["diagnostics"]["status"] == "reconnecting"][-1]
        assert hb["diagnostics"]["stream_connected"] is False
        assert hb["diagnostics"]["reconnect_count"] >= 1


async def test_16_two_heartbeat_failures_reset_open_stream(server: EmbeddedServer) -> None:
    clock = ManualClock()
    runner = make_runner(server, clock=clock, heartbeat_interval=10)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        server.heartbeat_answer = ClaimAnswer.error(503)
        await clock.advance(10)  # periodic heartbeat fails, the immediate retry fails
        await eventually(lambda: runner.status == "reconnecting")
        assert runner.health().reconnect_count == 1
        server.heartbeat_answer = ClaimAnswer(200, {})
        await clock.advance(1)  # backoff
        await eventually(lambda: runner.status == "streaming")
        assert len(wake_requests(server)) == 2


async def test_17_reset_aborts_a_hung_connection_attempt(server: EmbeddedServer) -> None:
    clock = ManualClock()  # connect_timeout never elapses: only the reset can help
    hang = server.hang("/runners/r1/wake")
    runner = make_runner(server, clock=clock, heartbeat_interval=10)
    async with started(runner):
        await eventually(lambda: len(wake_requests(server)) == 1)
        assert runner.status == "connecting"
        server.heartbeat_answer = ClaimAnswer.error(503)
        await clock.advance(10)
        await eventually(lambda: runner.status == "reconnecting")
        server.remove_fault(hang)
        server.heartbeat_answer = ClaimAnswer(200, {})
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")


async def test_18_last_heartbeat_ok_false_before_error_reported(server: EmbeddedServer) -> None:
    seen: list[bool] = []
    runner: PullWakeRunner | None = None

    def on_error(err: BaseException) -> None:
        assert runner is not None
        seen.append(runner.health().last_heartbeat_ok)

    server.heartbeat_answer = ClaimAnswer.error(500)
    runner = make_runner(server, on_error=on_error, heartbeat_failures_before_reset=9)
    async with started(runner):
        await eventually(lambda: len(seen) >= 1)
    assert seen[0] is False


async def test_19_on_error_is_reporting_only(server: EmbeddedServer,
                                              caplog: pytest.LogCaptureFixture) -> None:
    def on_error(err: BaseException) -> None:
        raise RuntimeError("reporter exploded")

    rt = RecordingRuntime()
    server.program_claims(ClaimAnswer.error(500))
    runner = make_runner(server, rt, on_error=on_error)
    with caplog.at_level(logging.ERROR, logger="pullwake"):
        async with started(runner):
            await eventually(lambda: runner.status == "streaming")
            await server.append_runner_wake("r1", wake("s1"))
            await eventually(lambda: runner.health().claims_failed == 1)
            await server.append_runner_wake("r1", wake("s2"))
            await eventually(lambda: len(rt.dispatched) == 1)  # still working
        assert not runner.running
    assert "on_error raised" in caplog.text


async def test_20_hung_claim_does_not_block_stop(server: EmbeddedServer) -> None:
    rt = RecordingRuntime()
    server.hang("/_electric/runners/r1/claim", count=1)
    runner = make_runner(server, rt, claim_grace=0.2)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    await server.append_runner_wake("r1", wake("s1"))
    await eventually(lambda: len(server.claims("r1")) == 1)
    await asyncio.wait_for(runner.stop(), timeout=5)
    assert rt.dispatched == []
    runner.start()  # and it can start again
    await eventually(lambda: runner.status == "streaming")
    await server.append_runner_wake("r1", wake("s2"))
    await eventually(lambda: len(rt.dispatched) == 1)
    await runner.stop()


async def test_21_drain_error_recorded_and_reraised_after_stopped(
        server: EmbeddedServer) -> None:
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    rt.drain_error = ValueError("drain broke")
    runner = make_runner(server, rt, on_error=errors.append)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    with pytest.raises(ValueError, match="drain broke"):
        await runner.stop()
    assert not runner.running and runner.status == "stopped"
    assert runner.health().last_error == "ValueError: drain broke"
    assert any(isinstance(e, ValueError) for e in errors)
    await runner.stop()  # a later stop of a stopped runner does not raise again


async def test_22_concurrent_stops_share_one_shutdown(server: EmbeddedServer) -> None:
    rt = RecordingRuntime()
    rt.drain_gate = asyncio.Event()
    runner = make_runner(server, rt)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    stops = [asyncio.create_task(runner.stop()) for _ in range(3)]
    waiter = asyncio.create_task(runner.wait_for_stopped())
    await eventually(lambda: "drain" in rt.calls)
    runner.start()  # ignored while stopping
    assert runner.status == "stopping"
    await asyncio.sleep(0.05)
    assert not waiter.done()
    rt.drain_gate.set()
    await asyncio.gather(*stops, waiter)
    assert rt.calls.count("abort") == 1 and rt.calls.count("drain") == 1
    assert runner.status == "stopped"


async def test_23_connection_failures_back_off_exponentially(server: EmbeddedServer) -> None:
    clock = ManualClock()
    server.fail("/runners/r1/wake", 503)
    runner = make_runner(server, clock=clock, heartbeat_interval=None, rng=BOUND)
    delays: list[float] = []
    async with started(runner):
        for _ in range(6):
            await eventually(lambda: runner.status == "reconnecting")
            delays.append(clock.pending[0])
            await clock.advance(clock.pending[0])
            want = len(delays) + 1
            await eventually(lambda want=want: len(wake_requests(server)) == want)
    assert delays == [1, 2, 4, 8, 16, 30]  # the bounds: the jitter's rng pinned at its top


@pytest.mark.parametrize(("rng", "expected"), [
    (lambda: 0.25, [0.25, 0.5, 1.0, 2.0]),  # full jitter: rng() x the bound
    (None, None),  # RunnerConfig's default random source: each delay below its bound
])
async def test_23_reconnects_are_jittered_by_default(
        server: EmbeddedServer, rng: Callable[[], float] | None,
        expected: list[float] | None) -> None:
    clock = ManualClock()
    server.fail("/runners/r1/wake", 503)
    runner = make_runner(server, clock=clock, heartbeat_interval=None, rng=rng)
    delays: list[float] = []
    async with started(runner):
        for _ in range(4):
            await eventually(lambda: runner.status == "reconnecting")
            delays.append(clock.pending[0])
            await clock.advance(clock.pending[0])
            want = len(delays) + 1
            await eventually(lambda want=want: len(wake_requests(server)) == want)
    if expected is not None:
        assert delays == expected
    else:
        assert all(0.0 <= d < bound for d, bound in zip(delays, [1, 2, 4, 8], strict=True))


async def test_24_stop_aborts_then_drains(server: EmbeddedServer) -> None:
    rt = RecordingRuntime()
    runner = make_runner(server, rt)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    await runner.stop()
    assert rt.calls == ["abort", "drain"]


async def test_context_manager_starts_and_stops(server: EmbeddedServer) -> None:
    rt = RecordingRuntime()
    async with PullWakeRunner(RunnerConfig(base_url=server.url, runner_id="r1"), rt) as runner:
        assert runner.running
        await eventually(lambda: runner.status == "streaming")
    assert not runner.running and rt.calls == ["abort", "drain"]


def _unused(_: Any) -> None:  # keep imports honest for linters
    pass


@pytest.mark.parametrize("answer", [ClaimAnswer.error(500), ClaimAnswer.error(503),
                                    ClaimAnswer(429, {"error": {"code": "SLOW_DOWN"}},
                                                {"Retry-After": "0"})],
                         ids=["500", "503", "429"])
async def test_05b_transient_claim_failure_counted_reported_and_retried(
        server: EmbeddedServer, answer: ClaimAnswer) -> None:
    """Better than the original: a 5xx/429 is counted and reported, then retried."""
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    server.program_claims(answer, answer)
    runner = make_runner(server, rt, on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: len(rt.dispatched) == 1)
        h = runner.health()
        assert (h.claims_failed, h.claims_succeeded, h.last_claim_result) == (2, 1, "claimed")
    assert len(server.claims("r1")) == 3
    statuses = [e.status for e in errors if isinstance(e, ControlPlaneError)]
    assert statuses == [answer.status, answer.status]
