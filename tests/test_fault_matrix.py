"""Fault-matrix cells not covered elsewhere (docs/reliability.md maps every cell).

Same rules as test_runner_faults.py: a real runner, a real EmbeddedServer on
127.0.0.1, timeouts and backoff on a ManualClock; each test also checks that
no runner task is left once it is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
from runner_helpers import RecordingRuntime, eventually, make_runner, started, wake, wake_requests
from test_runner_faults import CLAIM_PATH, HEARTBEAT_PATH, in_state, runner_tasks

from pullwake import ConnectError, ControlPlaneError
from pullwake.testing import ClaimAnswer, EmbeddedServer
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server():
    async with EmbeddedServer() as srv:
        yield srv


async def test_connecting_refused_backs_off_then_recovers(server: EmbeddedServer) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    runner = make_runner(server, rt, clock=clock, heartbeat_interval=None, on_error=errors.append)
    await server.stop()  # nothing listens on the port: connection refused
    async with started(runner):
        await eventually(lambda: runner.status == "reconnecting")
        assert isinstance(errors[0], ConnectError)
        await clock.advance(1)
        await eventually(lambda: runner.status == "reconnecting" and len(errors) == 2)
        await server.start()  # the same port again
        await clock.advance(2)
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: len(rt.dispatched) == 1)
    assert runner_tasks(runner) == []


@pytest.mark.parametrize("answer", [ClaimAnswer.error(500), ClaimAnswer.error(503),
                                    ClaimAnswer(429, {"error": {"code": "RATE_LIMITED"}},
                                                {"Retry-After": "7"})],
                         ids=["500", "503", "429"])
async def test_streaming_heartbeat_5xx_or_429_twice_resets(server: EmbeddedServer,
                                                           answer: ClaimAnswer) -> None:
    async with in_state(server, "streaming") as sc:
        await sc.clock.advance(2)  # the connect's throttled heartbeat, answered
        await eventually(lambda: len(server.heartbeats()) == 2 and
                         sc.runner.health().last_heartbeat_ok)
        server.heartbeat_answer = answer
        await sc.clock.advance(28)  # the periodic heartbeat, and its immediate retry
        await eventually(lambda: sc.runner.status == "reconnecting")
        failures = [e for e in sc.errors if isinstance(e, ControlPlaneError)]
        assert [e.status for e in failures] == [answer.status, answer.status]
        assert all(e.operation == "heartbeat" for e in failures)
        server.heartbeat_answer = ClaimAnswer(200, {})
        await sc.clock.advance(1)
        await eventually(lambda: sc.runner.status == "streaming")


async def test_reconnecting_heartbeat_failures_do_not_stack_resets(
        server: EmbeddedServer) -> None:
    async with in_state(server, "reconnecting") as sc:
        assert sc.runner.health().reconnect_count == 1
        # Two failed liveness results (heartbeats or lease extensions) fire
        # STREAM_RESET, which `reconnecting` ignores by name (already_reconnecting).
        sc.runner.record_liveness(False, ControlPlaneError("down", operation="heartbeat"))
        sc.runner.record_liveness(False, ControlPlaneError("down", operation="heartbeat"))
        assert sc.runner.lifecycle.last_kind == "ignored"
        assert sc.runner.status == "reconnecting"
        assert sc.runner.health().reconnect_count == 1  # no extra reconnect from the reset
        server.clear_faults()
        server.heartbeat_answer = ClaimAnswer(200, {})
        await sc.clock.advance(1)  # the 1 s backoff ends
        await eventually(lambda: sc.runner.status == "streaming")
        assert sc.runner.health().reconnect_count == 1


async def test_claims_in_flight_survive_a_reconnect(server: EmbeddedServer) -> None:
    async with in_state(server, "streaming") as sc:
        server.delay(CLAIM_PATH, seconds=0.3, count=1)
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: len(server.claims("r1")) == 1)
        sc.runner.lifecycle.fire("STREAM_RESET", error=RuntimeError("forced"))
        await eventually(lambda: sc.runner.status == "reconnecting")
        await eventually(lambda: len(sc.runtime.dispatched) == 1)  # answered while away
        assert sc.runner.status == "reconnecting"


async def test_reconnecting_claim_failure_is_retried_after_reconnect(
        server: EmbeddedServer) -> None:
    async with in_state(server, "streaming") as sc:
        server.fail(CLAIM_PATH, 503, count=1)
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: sc.runner.health().claims_failed == 1)
        server.fail(WAKE_REL, 503)
        sc.runner.lifecycle.fire("STREAM_RESET", error=RuntimeError("forced"))
        await eventually(lambda: sc.runner.status == "reconnecting")
        await sc.clock.advance(0.1)  # the claim's retry backoff
        await eventually(lambda: len(sc.runtime.dispatched) == 1)
        assert sc.runner.status == "reconnecting"


WAKE_REL = "/runners/r1/wake"


async def test_stopping_sends_no_heartbeat_and_reads_nothing(server: EmbeddedServer) -> None:
    async with in_state(server, "stopping") as sc:
        beats, reads = len(server.heartbeats()), len(wake_requests(server))
        await server.append_runner_wake("r1", wake("late"))
        await sc.clock.advance(120)  # four heartbeat intervals, many backoffs
        await asyncio.sleep(0.05)
        assert len(server.heartbeats()) == beats
        assert len(wake_requests(server)) == reads
        assert sc.runtime.dispatched == []
        assert sc.clock.pending == []


async def test_stopping_drain_raises_and_on_error_raises_still_stops(
        server: EmbeddedServer, caplog: pytest.LogCaptureFixture) -> None:
    def on_error(err: BaseException) -> None:
        raise RuntimeError("reporter exploded")

    rt = RecordingRuntime()
    rt.drain_error = OSError("drain broke")
    runner = make_runner(server, rt, on_error=on_error)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    with caplog.at_level(logging.ERROR, logger="pullwake"), pytest.raises(OSError):
        await runner.stop()
    assert runner.status == "stopped" and runner_tasks(runner) == []
    assert "on_error raised" in caplog.text


async def test_stopping_second_fault_hung_claim_and_heartbeat_bounded(
        server: EmbeddedServer) -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    runner = make_runner(server, rt, clock=clock, heartbeat_interval=30, claim_grace=1,
                         request_timeout=5)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    server.hang(CLAIM_PATH)
    server.hang(HEARTBEAT_PATH)
    await server.append_runner_wake("r1", wake("s1"))
    await eventually(lambda: len(server.claims("r1")) == 1)
    stop = asyncio.create_task(runner.stop())
    await eventually(lambda: runner.status == "stopping")
    await clock.advance(1)  # the claim grace, on the clock
    await asyncio.wait_for(stop, 5)
    assert runner.status == "stopped" and rt.dispatched == []
    assert runner_tasks(runner) == []


def test_reliability_doc_maps_every_fault_to_a_test() -> None:
    """Every test named in docs/reliability.md's matrix exists."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "reliability.md").read_text()
    matrix = doc.split("## Fault matrix", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(test_[a-z0-9_]+)`", matrix))
    assert len(names) >= 30, names
    here = Path(__file__).resolve().parent
    source = "\n".join(p.read_text() for p in here.glob("test_*.py"))
    missing = sorted(n for n in names if f"def {n}(" not in source)
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
