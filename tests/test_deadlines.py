"""Deadlines: one loop timer for all of them gives exactly what a timer each gives.

:class:`pullwake.io.clock.deadline` has two paths: on a clock with a
``shared_deadlines`` attribute (:class:`~pullwake.io.clock.LoopClock`) every
deadline joins one :class:`~pullwake.io.clock.DeadlineSet` under one armed
timer; on any other clock (``ManualClock``) each arms its own timer, the
general path. Here the same scripts of tasks, deadlines (nested, sooner and
later than the armed one, equal expiries), bodies that finish, foreign
cancellations and clock jumps run on both (a ManualClock, and the same clock
opted in to the set) and must give the same trace: for each task, what timed
out, was cancelled or finished, at which time on the clock, in which order. The
documented semantics are checked directly too, and :class:`LoopClock` on a
real loop: its time follows the running loop's (asyncio's, or one that keeps
its own), and a clock used on a second loop arms its timer there.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pullwake.io.clock import DeadlineSet, LoopClock, deadline
from pullwake.testing.clock import ManualClock


class SharedManualClock(ManualClock):
    """A ManualClock whose deadlines share one timer (the LoopClock path)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared_deadlines: DeadlineSet | None = None


CLOCKS = [ManualClock, SharedManualClock]


# ---------------------------------------------------------------- the semantics


@pytest.mark.parametrize("make", CLOCKS)
async def test_a_stalled_body_times_out_after_exactly_its_seconds(make: Any) -> None:
    clock = make()
    entered = asyncio.Event()

    async def body() -> float:
        with pytest.raises(TimeoutError, match="no progress within 5s"):
            with deadline(clock, 5.0):
                entered.set()
                await asyncio.Event().wait()
        return float(clock.monotonic())

    task = asyncio.ensure_future(body())
    await entered.wait()
    await clock.advance(4.5)
    assert not task.done()  # (advance settled the loop: the task was free to react)
    await clock.advance(0.5)
    assert await task == 5.0


@pytest.mark.parametrize("make", CLOCKS)
async def test_a_body_done_in_time_is_never_cancelled_later(make: Any) -> None:
    clock = make()
    release, after = asyncio.Event(), asyncio.Event()

    async def body() -> str:
        with deadline(clock, 5.0):
            await release.wait()
        after.set()
        await asyncio.Event().wait()  # (cancelled only by the test, below)
        return "unreachable"

    task = asyncio.ensure_future(body())
    await clock.advance(1.0)
    release.set()
    await after.wait()
    await clock.advance(10.0)
    assert not task.done() and task.cancelling() == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("make", CLOCKS)
async def test_a_foreign_cancellation_propagates_untouched(make: Any) -> None:
    clock = make()
    entered = asyncio.Event()

    async def body() -> None:
        with deadline(clock, 5.0):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await clock.advance(10.0)  # the deadline's expiry, after: nothing to cancel
    assert task.cancelled()


@pytest.mark.parametrize("make", CLOCKS)
async def test_an_expiry_with_a_foreign_cancel_pending_stays_a_cancellation(
        make: Any) -> None:
    clock = make()
    entered = asyncio.Event()

    async def body() -> None:
        with deadline(clock, 5.0):
            entered.set()
            try:
                await asyncio.Event().wait()
            finally:
                task.cancel()  # a foreign cancel lands while the expiry's is handled
                await asyncio.sleep(0)

    task = asyncio.ensure_future(body())
    await entered.wait()
    await clock.advance(5.0)
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("make", CLOCKS)
async def test_nested_deadlines_each_expire_on_their_own(make: Any) -> None:
    clock = make()
    trace: list[tuple[str, float]] = []

    async def body() -> None:
        try:
            with deadline(clock, 10.0):
                try:
                    with deadline(clock, 2.0):
                        await asyncio.Event().wait()
                except TimeoutError:
                    trace.append(("inner", clock.monotonic()))
                await asyncio.Event().wait()
        except TimeoutError:
            trace.append(("outer", clock.monotonic()))

    task = asyncio.ensure_future(body())
    await clock.advance(20.0)
    await task
    assert trace == [("inner", 2.0), ("outer", 10.0)]


@pytest.mark.parametrize("make", CLOCKS)
async def test_no_seconds_means_no_deadline_and_no_timer(make: Any) -> None:
    clock = make()
    release = asyncio.Event()

    async def body() -> str:
        with deadline(clock, None):
            await release.wait()
        return "done"

    task = asyncio.ensure_future(body())
    await clock.advance(1e6)
    assert clock.pending == []
    release.set()
    assert await task == "done"


async def test_deadlines_of_one_duration_share_one_armed_timer() -> None:
    """Later expiries arm nothing, a sooner one re-arms, exits leave the set."""
    clock = SharedManualClock()
    gates = [asyncio.Event() for _ in range(4)]
    entered = asyncio.Semaphore(0)

    async def body(i: int, seconds: float) -> None:
        with deadline(clock, seconds):
            entered.release()
            await gates[i].wait()

    tasks = [asyncio.ensure_future(body(0, 10.0))]
    await entered.acquire()
    await clock.advance(1.0)
    tasks.append(asyncio.ensure_future(body(1, 10.0)))
    await entered.acquire()
    tasks.append(asyncio.ensure_future(body(2, 10.0)))
    await entered.acquire()
    assert clock.pending == [9.0]  # one timer, for the first; the later ones armed nothing
    tasks.append(asyncio.ensure_future(body(3, 2.0)))
    await entered.acquire()
    assert clock.pending == [2.0]  # sooner: re-armed (the old timer cancelled)
    for gate in gates:
        gate.set()
    await asyncio.gather(*tasks)
    shared = clock.shared_deadlines
    assert shared is not None and shared.live == {}
    await clock.advance(2.0)  # the timer fires for nothing, and stops
    assert clock.pending == []


# ---------------------------------------------- the shared timer == a timer each

#: One task of a script: when it starts, its deadline (seconds or None), an
#: optional inner deadline, when its body is released, when it is cancelled.
_task = st.fixed_dictionaries({
    "start": st.integers(0, 8).map(lambda n: n / 2),
    "outer": st.one_of(st.none(), st.integers(0, 12).map(lambda n: n / 2)),
    "inner": st.one_of(st.none(), st.integers(0, 12).map(lambda n: n / 2)),
    "inner_caught": st.booleans(),
    "release": st.one_of(st.none(), st.integers(0, 24).map(lambda n: n / 2)),
    "cancel": st.one_of(st.none(), st.integers(0, 24).map(lambda n: n / 2)),
})
_script = st.fixed_dictionaries({
    "tasks": st.lists(_task, min_size=1, max_size=6),
    "steps": st.lists(st.sampled_from([0.5, 0.5, 1.0, 3.0, 7.5]), min_size=4, max_size=12),
})


async def _trace(clock: ManualClock, script: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Run ``script`` on ``clock``; every outcome with its time on the clock, in order."""
    trace: list[tuple[Any, ...]] = []
    specs = script["tasks"]
    releases = [asyncio.Event() for _ in specs]
    tasks: dict[int, asyncio.Task[None]] = {}

    async def body(i: int, spec: dict[str, Any]) -> None:
        try:
            with deadline(clock, spec["outer"]):
                try:
                    with deadline(clock, spec["inner"]):
                        await releases[i].wait()
                    trace.append((i, "inner done", clock.monotonic()))
                except TimeoutError as error:
                    trace.append((i, "inner timeout", clock.monotonic(), str(error)))
                    if not spec["inner_caught"]:
                        raise
                await asyncio.sleep(0)
            trace.append((i, "done", clock.monotonic()))
        except TimeoutError as error:
            trace.append((i, "timeout", clock.monotonic(), str(error)))
        except asyncio.CancelledError:
            trace.append((i, "cancelled", clock.monotonic()))
            raise

    def act(now: float) -> None:
        for i, spec in enumerate(specs):
            if spec["start"] <= now and i not in tasks:
                tasks[i] = asyncio.ensure_future(body(i, spec))
            if spec["release"] is not None and spec["release"] <= now:
                releases[i].set()
            if spec["cancel"] is not None and spec["cancel"] <= now and i in tasks \
                    and not tasks[i].done():
                tasks[i].cancel()
                spec["cancel"] = None

    act(clock.monotonic())
    for step in script["steps"]:
        await clock.advance(step)
        act(clock.monotonic())
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    return trace


@settings(max_examples=300, deadline=None, database=None)
@given(script=_script)
def test_one_shared_timer_gives_exactly_what_a_timer_each_gives(
        script: dict[str, Any]) -> None:
    import copy

    def run(make: Any) -> dict[int, list[tuple[Any, ...]]]:
        trace = asyncio.run(asyncio.wait_for(_trace(make(), copy.deepcopy(script)), 30))
        # Each task's outcomes, in order, with their times on the clock. (Tasks
        # whose deadlines expire at the same instant may interleave differently:
        # a ManualClock lets the loop run between its timers at one instant, a
        # real loop runs every timer due before any task, as the set does.)
        per_task: dict[int, list[tuple[Any, ...]]] = {}
        for i, *outcome in trace:
            per_task.setdefault(i, []).append(tuple(outcome))
        return per_task

    shared, own = run(SharedManualClock), run(ManualClock)
    assert shared == own


# ----------------------------------------------------------- LoopClock, real loop


async def _times_out(clock: LoopClock, seconds: float) -> str:
    try:
        with deadline(clock, seconds):
            await asyncio.Event().wait()
    except TimeoutError:
        return "timed out"
    return "finished"  # pragma: no cover - the wait never ends by itself


def test_a_loop_clock_used_on_a_second_loop_arms_its_timer_there() -> None:
    """The set is per loop: one bound to a closed loop must not hold back a deadline."""
    clock = LoopClock()

    async def first() -> None:
        with deadline(clock, 0.05):  # armed on this loop; exits at once
            await asyncio.sleep(0)

    asyncio.run(first())
    # A deadline later than the one the old loop's timer was armed for: it must
    # arm a timer on this loop (the old one will never fire).
    result = asyncio.run(asyncio.wait_for(_times_out(clock, 0.2), 20))
    assert result == "timed out"


async def test_loop_clock_deadlines_expire_each_and_leave_the_set() -> None:
    clock = LoopClock()
    results = await asyncio.gather(_times_out(clock, 0.05), _times_out(clock, 0.01),
                                   _times_out(clock, 0.05))
    assert results == ["timed out"] * 3
    shared = clock.shared_deadlines
    assert shared is not None and shared.live == {}
    assert shared.loop is asyncio.get_running_loop()


class _OwnTimeLoop(asyncio.SelectorEventLoop):
    """A loop keeping its own time (as uvloop does): a day ahead of time.monotonic."""

    def time(self) -> float:
        return super().time() + 86_400.0


def _patched_loop() -> asyncio.AbstractEventLoop:
    """A default loop whose own ``time`` was replaced on the instance."""
    loop = asyncio.new_event_loop()
    base = loop.time
    loop.time = lambda: base() - 3_600.0  # type: ignore[method-assign]
    return loop


def _between(loop_factory: Any) -> tuple[float, float, float]:
    clock = LoopClock()

    async def read() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        now = clock.monotonic()
        return before, now, loop.time()

    loop = loop_factory()
    try:
        return loop.run_until_complete(read())
    finally:
        loop.close()


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, _OwnTimeLoop, _patched_loop])
def test_loop_clock_monotonic_is_the_running_loops_time(loop_factory: Any) -> None:
    before, now, after = _between(loop_factory)
    assert before <= now <= after


def test_one_loop_clock_follows_each_loop_it_runs_on() -> None:
    clock = LoopClock()

    async def read() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        return loop.time(), clock.monotonic(), loop.time()

    for factory in (asyncio.new_event_loop, _OwnTimeLoop, _patched_loop,
                    asyncio.new_event_loop):
        loop = factory()
        try:
            before, now, after = loop.run_until_complete(read())
        finally:
            loop.close()
        assert before <= now <= after


@pytest.mark.parametrize("loop_factory", [_OwnTimeLoop, _patched_loop])
def test_loop_clock_deadlines_expire_on_a_loop_keeping_its_own_time(loop_factory: Any) -> None:
    clock = LoopClock()

    async def run() -> list[str]:
        return list(await asyncio.gather(_times_out(clock, 0.05), _times_out(clock, 0.01)))

    loop = loop_factory()
    try:
        assert loop.run_until_complete(asyncio.wait_for(run(), 20)) == ["timed out"] * 2
        shared = clock.shared_deadlines
        assert shared is not None and shared.live == {}
        assert shared.now() == pytest.approx(loop.time(), abs=5.0)  # the loop's scale
    finally:
        loop.close()
