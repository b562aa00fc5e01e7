"""Handler attempts (pullwake.runtime.attempts): the fast path gives what the general one gives.

A wake's job runs its handler in its own task (:meth:`HandlerAttempts.start`,
the fast path: no task, no future); a recovery in a task of its own
(:meth:`HandlerAttempts.attempt`, the general path). For every way a handler
can end (return, raise, raise ``CancelledError`` itself, time out, be
cancelled, ignore either), both paths give the same outcome, at the same time
on the clock, with the same abandoned handlers and slots, and that outcome is
the one written here. A handler that ignores its cancellation is handed over
after CANCEL_GRACE_S on the fast path (its caller's task stays with it).

Pure asyncio, no sockets: a ManualClock moved by hand; every wait is bounded,
nothing asserts on elapsed time; hard timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pullwake.runtime.attempts import CANCEL_GRACE_S, HandlerAttempts
from pullwake.runtime.health import WorkerStats
from pullwake.runtime.jobs import Jobs
from pullwake.runtime.logs import LabelledLog
from pullwake.runtime.wake import Wake
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(30)

WAKE = Wake(subscription_id="sub1", wake_id="w1", generation=1, streams=())
TIMEOUT = 1.0
CANCEL_AT = 0.5


@dataclass
class Case:
    handler: Callable[[threading.Event, asyncio.Event], Callable[[Wake], Any]]
    timeout: float | None = None
    cancel: bool = False  # cancelled at CANCEL_AT (a stop, a lost lease)
    outcome: tuple[Any, ...] = ()
    at: float | None = None  # when the outcome comes, on the clock (None: a thread's pace)
    abandoned: int = 0


def returns(_t: threading.Event, _a: asyncio.Event) -> Callable[[Wake], Any]:
    async def handle(wake: Wake) -> None:
        await asyncio.sleep(0)
    return handle


def raising(exc: BaseException) -> Callable[[threading.Event, asyncio.Event],
                                           Callable[[Wake], Any]]:
    def make(_t: threading.Event, _a: asyncio.Event) -> Callable[[Wake], Any]:
        async def handle(wake: Wake) -> None:
            await asyncio.sleep(0)
            raise exc
        return handle
    return make


def waits(_t: threading.Event, let_go: asyncio.Event) -> Callable[[Wake], Any]:
    async def handle(wake: Wake) -> None:
        await let_go.wait()  # a cancellation ends it
    return handle


def ignores_cancellation(_t: threading.Event, let_go: asyncio.Event) -> Callable[[Wake], Any]:
    async def handle(wake: Wake) -> None:
        while not let_go.is_set():
            try:
                await let_go.wait()
            except asyncio.CancelledError:
                continue
    return handle


def sync_raises(_t: threading.Event, _a: asyncio.Event) -> Callable[[Wake], Any]:
    def handle(wake: Wake) -> None:
        raise ValueError("sync")
    return handle


def sync_stuck(release: threading.Event, _a: asyncio.Event) -> Callable[[Wake], Any]:
    def handle(wake: Wake) -> None:
        release.wait(20)
    return handle


CASES = {
    "returns": Case(returns, outcome=("returned", None), at=CANCEL_AT),
    "raises": Case(raising(ValueError("no")), outcome=("returned", "ValueError"), at=CANCEL_AT),
    "raises-KeyboardInterrupt": Case(raising(KeyboardInterrupt()),
                                     outcome=("returned", "KeyboardInterrupt"), at=CANCEL_AT),
    "raises-its-own-CancelledError": Case(raising(asyncio.CancelledError("own")),
                                          outcome=("returned", "CancelledError"), at=CANCEL_AT),
    "times-out": Case(waits, timeout=TIMEOUT, outcome=("returned", "HandlerTimeout"),
                      at=TIMEOUT),
    "times-out-ignoring-it": Case(ignores_cancellation, timeout=TIMEOUT,
                                  outcome=("returned", "HandlerTimeout"),
                                  at=TIMEOUT + CANCEL_GRACE_S, abandoned=1),
    "cancelled": Case(waits, cancel=True, outcome=("cancelled",), at=CANCEL_AT),
    "cancelled-ignoring-it": Case(ignores_cancellation, cancel=True, outcome=("cancelled",),
                                  at=CANCEL_AT + CANCEL_GRACE_S, abandoned=1),
    "cancelled-before-its-timeout": Case(waits, timeout=TIMEOUT, cancel=True,
                                         outcome=("cancelled",), at=CANCEL_AT),
    "sync-raises": Case(sync_raises, outcome=("returned", "ValueError")),
    "sync-times-out": Case(sync_stuck, timeout=TIMEOUT, outcome=("returned", "HandlerTimeout"),
                           at=TIMEOUT, abandoned=1),
}


def _returned(error: BaseException | None) -> tuple[Any, ...]:
    return ("returned", None if error is None else type(error).__name__)


async def _one(case: Case, *, fast: bool) -> dict[str, Any]:
    """Run ``case`` on one path; what came out, when, and what was left behind."""
    clock = ManualClock()
    stats = WorkerStats()
    freed: list[int] = []
    release, let_go = threading.Event(), asyncio.Event()
    attempts = HandlerAttempts(
        case.handler(release, let_go), max_concurrency=1, clock=clock,
        handler_timeout=case.timeout, log=LabelledLog(logging.getLogger("test"), "w1"),
        stats=stats, freed=lambda: freed.append(1), jobs=Jobs(clock=clock))
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[tuple[Any, ...]] = loop.create_future()

    def came(value: tuple[Any, ...]) -> None:
        assert not outcome.done(), f"a second outcome {value} after {outcome.result()}"
        outcome.set_result(value)

    if fast:  # the wake's job: in the caller's task, handed over if it must be
        def handover(error: BaseException | None, cancelled: bool) -> None:
            came(("cancelled",) if cancelled else _returned(error))

        run = attempts.start(WAKE, handover)

        async def job() -> None:
            try:
                error = await run.run()
            except asyncio.CancelledError:
                if not run.handed_over:
                    came(("cancelled",))
                return
            if not run.handed_over:
                came(_returned(error))

        caller = asyncio.ensure_future(job())
        cancel: Callable[[], object] = run.cancel
    else:  # a recovery: the handler in a task of its own
        async def recovery() -> None:
            try:
                came(_returned(await attempts.attempt(WAKE)))
            except asyncio.CancelledError:
                came(("cancelled",))

        caller = asyncio.ensure_future(recovery())
        cancel = caller.cancel
    try:
        await clock.advance(CANCEL_AT)
        if case.cancel:
            cancel()
        for _ in range(40):
            await asyncio.wait({outcome}, timeout=0.05)
            if outcome.done():
                break
            await clock.advance(0.25)
        got = {"outcome": await asyncio.wait_for(outcome, 5),
               "at": clock.monotonic() if case.at is not None else None,
               "abandoned": stats.handlers_abandoned,
               "stuck": attempts.abandoned(), "outliving": attempts.outliving}
    finally:
        release.set()
        let_go.set()
    await asyncio.wait_for(caller, 5)
    for _ in range(200):  # the abandoned ones end now: their slot comes back
        if attempts.abandoned() == 0 and attempts.outliving == 0:
            break
        await asyncio.sleep(0.01)
    got["after"] = (attempts.abandoned(), attempts.outliving, len(freed))
    async with asyncio.timeout(5):
        await attempts._slots.acquire()  # the one slot is free again
    return got


@pytest.mark.parametrize("name", list(CASES))
async def test_the_fast_path_gives_what_the_general_path_gives(name: str) -> None:
    case = CASES[name]
    fast, general = await _one(case, fast=True), await _one(case, fast=False)
    assert fast == general
    assert fast["outcome"] == case.outcome
    assert fast["at"] == case.at
    assert fast["abandoned"] == fast["stuck"] == fast["outliving"] == case.abandoned
    assert fast["after"] == (0, 0, case.abandoned)


async def test_the_fast_path_starts_no_task_and_arms_no_timer_without_a_timeout() -> None:
    clock = ManualClock()
    seen: list[asyncio.Task[Any] | None] = []

    async def handle(wake: Wake) -> None:
        seen.append(asyncio.current_task())

    attempts = HandlerAttempts(handle, max_concurrency=1, clock=clock, handler_timeout=None,
                               log=LabelledLog(logging.getLogger("test"), "w1"),
                               stats=WorkerStats(), freed=lambda: None, jobs=Jobs(clock=clock))
    run = attempts.start(WAKE, lambda _e, _c: None)
    before = len(asyncio.all_tasks())
    assert await run.run() is None
    assert seen == [asyncio.current_task()] and len(asyncio.all_tasks()) == before
    assert clock.pending == []
