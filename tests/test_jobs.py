"""The one job owner (pullwake.runtime.jobs.Jobs): spawn, report, grace, cancel, wait.

Pure asyncio, no sockets. Time is a ManualClock moved by hand: nothing sleeps
and nothing asserts on elapsed time; every wait is on an event, and every test
has a hard timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

import pytest

from pullwake.errors import JobError, PullwakeError
from pullwake.runtime.jobs import Jobs
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(20)

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("WHO", default="nobody")


async def settle_loop(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_spawn_names_and_tracks_a_job_until_it_ends() -> None:
    jobs = Jobs(clock=ManualClock(), label="r1")
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        return 7

    task = jobs.spawn(work(), "pullwake-claim")
    assert task.get_name() == "pullwake-claim[r1]"
    assert len(jobs) == 1 and task in jobs and list(jobs) == [task]
    release.set()
    assert await task == 7
    assert len(jobs) == 0 and task not in jobs and jobs.failed == 0


async def test_a_job_runs_in_the_context_it_is_given() -> None:
    jobs = Jobs(clock=ManualClock())
    ctx = contextvars.copy_context()
    ctx.run(WHO.set, "job-7")

    async def who() -> str:
        return WHO.get()

    assert await jobs.spawn(who(), "x", context=ctx) == "job-7"
    assert await jobs.spawn(who(), "y") == "nobody"


async def test_a_failed_job_is_reported_once_as_a_typed_error() -> None:
    reported: list[JobError] = []
    jobs = Jobs(clock=ManualClock(), label="r1", on_error=reported.append)
    boom = ValueError("boom")

    async def fails() -> None:
        raise boom

    task = jobs.spawn(fails(), "pullwake-heartbeat")
    await asyncio.wait({task})
    await settle_loop()
    assert len(reported) == 1 and jobs.failed == 1
    err = reported[0]
    assert isinstance(err, PullwakeError)
    assert err.job == "pullwake-heartbeat[r1]" and err.__cause__ is boom
    assert "ValueError: boom" in str(err)


async def test_without_a_reporter_a_failure_is_logged_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    jobs = Jobs(clock=ManualClock())

    async def fails() -> None:
        raise RuntimeError("lost?")

    with caplog.at_level(logging.ERROR, logger="pullwake.jobs"):
        await asyncio.wait({jobs.spawn(fails(), "j")})
        await settle_loop()
    [record] = [r for r in caplog.records if r.name == "pullwake.jobs"]
    assert "job j failed: RuntimeError: lost?" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1].args == ("lost?",)


async def test_a_reporter_that_raises_does_not_lose_the_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    def bad(_e: JobError) -> None:
        raise KeyError("reporter bug")

    jobs = Jobs(clock=ManualClock(), on_error=bad)

    async def fails() -> None:
        raise RuntimeError("the real one")

    with caplog.at_level(logging.ERROR, logger="pullwake.jobs"):
        await asyncio.wait({jobs.spawn(fails(), "j")})
        await settle_loop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "error reporter of job j raised" in text
    assert "job j failed: RuntimeError: the real one" in text


async def test_a_cancelled_job_is_no_failure() -> None:
    reported: list[JobError] = []
    jobs = Jobs(clock=ManualClock(), on_error=reported.append)
    task = jobs.spawn(asyncio.Event().wait(), "j")
    await settle_loop()
    task.cancel()
    await asyncio.wait({task})
    await settle_loop()
    assert reported == [] and jobs.failed == 0 and len(jobs) == 0


async def test_settle_waits_the_grace_on_the_clock_then_cancels_then_waits() -> None:
    clock = ManualClock()
    jobs = Jobs(clock=clock)
    quick_done = asyncio.Event()
    cleaned = asyncio.Event()

    async def quick() -> None:
        await quick_done.wait()

    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # its clean-up runs, and is waited for
            cleaned.set()

    a, b = jobs.spawn(quick(), "quick"), jobs.spawn(slow(), "slow")
    settling = asyncio.ensure_future(jobs.settle(5.0))
    await settle_loop()
    assert clock.pending == [5.0]  # the grace: one timer on the clock, nothing else
    quick_done.set()
    await clock.advance(4.9)
    assert a.done() and not b.done() and not settling.done()
    await clock.advance(0.1)
    cancelled = await settling
    assert cancelled == [b] and b.cancelled() and cleaned.is_set()
    assert len(jobs) == 0 and clock.pending == []


async def test_settle_returns_at_once_when_the_jobs_end_within_the_grace() -> None:
    clock = ManualClock()
    jobs = Jobs(clock=clock)
    go = asyncio.Event()

    async def work() -> None:
        await go.wait()

    task = jobs.spawn(work(), "w")
    settling = asyncio.ensure_future(jobs.settle(30.0))
    await settle_loop()
    go.set()
    assert await settling == [] and task.done() and not task.cancelled()
    assert clock.pending == []  # the grace timer is gone too


async def test_end_grace_cancels_now_and_until_reopened() -> None:
    clock = ManualClock()
    jobs = Jobs(clock=clock)
    first = jobs.spawn(asyncio.Event().wait(), "first")
    settling = asyncio.ensure_future(jobs.settle(None))  # no limit: only end_grace ends it
    await settle_loop()
    assert not settling.done()
    jobs.end_grace()
    assert await settling == [first] and first.cancelled()
    # Still ended: a later settle does not wait at all ...
    second = jobs.spawn(asyncio.Event().wait(), "second")
    assert await jobs.settle(60.0) == [second]
    # ... until the next run.
    jobs.reopen()
    go = asyncio.Event()

    async def work() -> None:
        await go.wait()

    third = jobs.spawn(work(), "third")
    settling = asyncio.ensure_future(jobs.settle(60.0))
    await settle_loop()
    assert not settling.done()
    go.set()
    assert await settling == [] and not third.cancelled()


async def test_a_job_that_ignores_cancellation_is_abandoned_after_the_bound(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    jobs = Jobs(clock=clock)
    let_go = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await let_go.wait()
                return
            except asyncio.CancelledError:
                continue  # ignores it

    task = jobs.spawn(stubborn(), "stubborn")
    await settle_loop()
    with caplog.at_level(logging.WARNING, logger="pullwake.jobs"):
        settling = asyncio.ensure_future(jobs.settle(0, abandon_after=1.0))
        await settle_loop()
        assert not settling.done()
        await clock.advance(1.0)
        assert await settling == [task]
    assert "did not end within 1s of being cancelled: abandoned: stubborn" in caplog.text
    assert not task.done() and task in jobs  # abandoned, still tracked
    let_go.set()
    await asyncio.wait({task})


async def test_settle_never_waits_for_its_caller_and_cancel_covers_a_subset() -> None:
    jobs = Jobs(clock=ManualClock())
    other = jobs.spawn(asyncio.Event().wait(), "other")
    keep = jobs.spawn(asyncio.Event().wait(), "keep")

    async def shutdown() -> list[asyncio.Task[object]]:
        return await jobs.cancel()  # all but itself

    me = jobs.spawn(shutdown(), "shutdown")
    cancelled = await me
    assert set(cancelled) == {other, keep} and not me.cancelled()

    a = jobs.spawn(asyncio.Event().wait(), "a")
    b = jobs.spawn(asyncio.Event().wait(), "b")
    assert await jobs.cancel([a]) == [a]
    assert not b.done() and list(jobs) == [b]
    await jobs.cancel()
    assert len(jobs) == 0


async def test_settle_with_nothing_to_wait_for_arms_no_timer() -> None:
    clock = ManualClock()
    jobs = Jobs(clock=clock)
    assert await jobs.settle(10.0) == []
    assert clock.pending == []


async def test_a_stuck_jobs_work_handed_over_is_waited_for_in_its_new_job() -> None:
    """Jobs.hand_over: a settle in progress (of another group) waits for the new job
    instead of the stuck task; the stuck task's own group no longer waits for it."""
    clock = ManualClock()
    runner, worker = Jobs(clock=clock, label="r"), Jobs(clock=clock, label="w")
    let_go, go_on = asyncio.Event(), asyncio.Event()
    cancels: list[str] = []

    async def stubborn() -> None:
        while not let_go.is_set():
            try:
                await let_go.wait()
            except asyncio.CancelledError:
                cancels.append("stubborn")  # ignores it

    async def rest() -> str:
        await go_on.wait()
        return "released"

    stuck = runner.spawn(stubborn(), "claim")
    try:
        await settle_loop()
        settling = asyncio.ensure_future(worker.settle(0, jobs=[stuck]))  # cancels, then waits
        await settle_loop()
        assert cancels == ["stubborn"] and not settling.done()
        new = worker.hand_over(stuck, rest(), "job")
        assert new.get_name() == "job[w]" and new in worker and stuck not in runner
        await settle_loop()
        assert not settling.done()  # waiting for the new job now
        go_on.set()
        assert await asyncio.wait_for(settling, 10) == [stuck] and await new == "released"
        assert not stuck.done()
        # its group does not wait for it any more (nor cancels it again)
        assert await asyncio.wait_for(runner.cancel(), 10) == [] and cancels == ["stubborn"]
    finally:
        let_go.set()  # (a failed test must not leave it running: teardown would hang)
    await asyncio.wait({stuck})
    assert runner.failed == worker.failed == 0
