"""Handler attempts: running the application's handler once, bounded, in a slot.

This module owns one handler execution (:class:`Attempt`): the
``max_concurrency`` slots, the handler's timeout on the injected clock,
cancellation with :data:`CANCEL_GRACE_S`, and the executions abandoned after
it (still holding their slot until they end). An async handler runs in the
task of whoever awaits the attempt (a wake's job: no task, no future of its
own); a sync one in a daemon thread of its own. Whatever a handler raises is
contained here and returned as the attempt's result; what a failure means
(retry, dead letter, release) is the job's business (:mod:`.dispatch`).

A handler that ignores its cancellation would hold its caller's task
forever, so an attempt is given a ``handover``: when the grace runs out it
is called with the attempt's outcome, and the caller's work goes on
elsewhere (a wake's job in a new job, :meth:`~pullwake.runtime.jobs.Jobs.hand_over`),
while the stubborn handler keeps the old task until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pullwake.errors import HandlerTimeout
from pullwake.io.clock import Clock, TimerHandle
from pullwake.runtime.jobs import Jobs
from pullwake.runtime.logs import LabelledLog

if TYPE_CHECKING:
    from pullwake.runtime.health import WorkerStats
    from pullwake.runtime.wake import Wake

__all__ = ["CANCEL_GRACE_S", "Attempt", "HandlerAttempts", "HandlerTimer", "Handover", "describe"]

#: After a handler is cancelled (lease lost, timeout, stop) it gets this long
#: (on the worker's clock) to end; then it is abandoned: logged, counted, its
#: slot kept until it does end, and nothing waits for it any more.
CANCEL_GRACE_S = 1.0

#: ``handover(error, cancelled)``: an abandoned attempt's outcome, for whoever
#: goes on with its caller's work (``cancelled``: it was cancelled, not timed out).
Handover = Callable[[BaseException | None, bool], object]


class HandlerTimer(Protocol):
    """Where handler durations go (the worker's metrics)."""

    def observe_handler(self, subscription: str, outcome: str, seconds: float) -> None: ...


def describe(wake: Wake) -> str:
    """``sub#generation``, or what a recovered wake is, for log lines and errors."""
    if wake.recovered:
        return f"a recovered wake of {wake.subscription_id}"
    return f"{wake.subscription_id}#{wake.generation}"


class HandlerAttempts:
    """Runs the handler, at most ``max_concurrency`` at once: :meth:`start` an
    :class:`Attempt` in the caller's task, or :meth:`attempt` in a task of its own.

    ``freed()`` is called when an abandoned execution finally ends (the worker
    is less full: a held-back wake may be claimed now).
    """

    def __init__(self, handler: Callable[[Wake], Any], *, max_concurrency: int, clock: Clock,
                 handler_timeout: float | None, log: LabelledLog, stats: WorkerStats,
                 freed: Callable[[], None], timer: HandlerTimer | None = None,
                 jobs: Jobs) -> None:
        self.handler = handler
        self._jobs = jobs
        self._is_async = inspect.iscoroutinefunction(handler)
        self._clock = clock
        self._timeout = handler_timeout
        self._log = log
        self._stats = stats
        self._freed = freed
        self._timer = timer
        #: Bounds running handlers even when claims for several subscriptions
        #: complete at once (is_wake_active only holds back *new* claims).
        self._slots = asyncio.Semaphore(max_concurrency)
        #: Handler executions that outlived their job (abandoned), still holding a slot.
        self.outliving = 0
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._threads: set[threading.Thread] = set()

    def abandoned(self) -> int:
        """Handler executions still running that nothing waits for (stuck threads, tasks)."""
        threads = sum(1 for t in self._threads if t.is_alive())
        return threads + sum(1 for t in self._abandoned if not t.done())

    def start(self, wake: Wake, handover: Handover) -> Attempt:
        """An attempt to await in the caller's task (:meth:`Attempt.run`)."""
        return Attempt(self, wake, handover)

    async def attempt(self, wake: Wake) -> BaseException | None:
        """Run the handler once in a task of its own (:meth:`Attempt.run`'s results).

        For a caller whose work cannot be handed over (a recovery's loop): a
        handler that ignores its cancellation is abandoned in that task, and
        this returns (raises ``CancelledError``) after :data:`CANCEL_GRACE_S`.
        """
        done: asyncio.Future[tuple[BaseException | None, bool]] = \
            asyncio.get_running_loop().create_future()

        def settle(error: BaseException | None, cancelled: bool) -> None:
            if not done.done():
                done.set_result((error, cancelled))

        run = Attempt(self, wake, settle)
        self._jobs.spawn(self._own(run, settle), f"pullwake-handler[{wake.subscription_id}]")
        try:
            error, cancelled = await asyncio.shield(done)
        except asyncio.CancelledError:
            run.cancel()
            await done  # the handler ended, or was abandoned
            raise
        if cancelled:  # pragma: no cover - only the caller cancels it
            raise asyncio.CancelledError
        return error

    @staticmethod
    async def _own(run: Attempt, settle: Handover) -> None:
        try:
            error, cancelled = await run.run(), False
        except asyncio.CancelledError:
            error, cancelled = None, True
        if not run.handed_over:
            settle(error, cancelled)


class Attempt:
    """One handler run: await :meth:`run` once; :meth:`cancel` from outside.

    ``parts`` are what still runs of it: the handler's coroutine (or the wait
    for its thread) and a sync handler's thread; its slot is freed when both
    have ended. No task and no future of its own: a timer while a
    ``handler_timeout`` is set, a second one only once it is cancelled.
    """

    __slots__ = ("_base", "_grace", "_handover", "_owner", "_timer", "abandoned", "ended",
                 "handed_over", "parts", "running", "start", "task", "thread", "timed_out",
                 "wake", "why")

    def __init__(self, owner: HandlerAttempts, wake: Wake, handover: Handover) -> None:
        self._owner = owner
        self.wake = wake
        self._handover: Handover | None = handover
        self.task: asyncio.Task[Any] | None = None
        self.thread: threading.Thread | None = None
        self.parts = 0
        self.running = False  # the handler is running (awaited here)
        self.abandoned = False  # it outlived its job (holds its slot until it ends)
        self.handed_over = False  # its caller's work went on elsewhere (handover)
        self.timed_out = False
        self.ended = False  # run() returned or raised: cancel() does nothing now
        self.why: str | None = None  # why it was cancelled, for the log
        self.start = 0.0
        self._base = 0
        self._timer: TimerHandle | None = None
        self._grace: TimerHandle | None = None

    def cancel(self, why: str = "was cancelled") -> None:
        """Cancel the attempt (lease lost, stop): :meth:`run` raises ``CancelledError``
        once the handler ends, or its ``handover`` is called after :data:`CANCEL_GRACE_S`."""
        if self.why is None:
            self.why = why
        task = self.task
        if task is None or self.ended:
            return  # not begun (run raises at once), or over
        task.cancel()
        if self.running and self._grace is None:
            self._grace = self._owner._clock.call_later(CANCEL_GRACE_S, self._grace_over)

    async def run(self) -> BaseException | None:
        """Run the handler once: None if it returned, else what it raised (or a timeout).

        Whatever the handler raises is contained here (``KeyboardInterrupt``,
        ``SystemExit``, a ``CancelledError`` of its own): it is a handler
        failure, never the worker's end. This raises ``CancelledError`` only
        when the attempt itself is cancelled (lease lost, stop: its task, or
        :meth:`cancel`), once the handler ended. The first wait is for a slot
        (the lease is kept while a job waits for one).
        """
        owner = self._owner
        task = self.task = asyncio.current_task()
        assert task is not None
        if self.why is not None:
            raise asyncio.CancelledError
        self._base = base = task.cancelling()
        await owner._slots.acquire()
        clock = owner._clock
        self.parts = 1
        self.running = True
        self.start = clock.monotonic()
        if owner._timeout is not None:
            self._timer = clock.call_later(owner._timeout, self._time_out)
        error: BaseException | None = None
        try:
            if owner._is_async:
                await owner.handler(self.wake)
            else:
                result, error = await self._in_thread()
                if error is None and inspect.isawaitable(result):
                    await result
        except BaseException as exc:  # noqa: BLE001 - contained: ours is told apart below
            error = exc
        self.running = False
        self.ended = True
        timer, grace = self._timer, self._grace
        self._timer = self._grace = None
        if timer is not None:
            timer.cancel()
        if grace is not None:
            grace.cancel()
        self._handover = None
        if self.handed_over:  # it ended at last; its job went on long ago
            self._part_ended()
            return None
        if self.timed_out:
            task.uncancel()
        cancelled = task.cancelling() > base  # by the caller (lease lost) or a stop
        self._part_ended()
        if (cancelled or self.timed_out) and self.parts:  # a sync handler's thread runs on
            self._abandon("its thread cannot be interrupted")
        if cancelled:
            self._observe("cancelled")
            if isinstance(error, asyncio.CancelledError):
                raise error
            raise asyncio.CancelledError
        if self.timed_out:
            self._observe("error")
            return self._timeout_error()
        self._observe("ok" if error is None else "error")
        return error  # (a CancelledError nobody asked for is the handler's own: a failure)

    def _time_out(self) -> None:
        self._timer = None
        self.timed_out = True
        self.cancel("timed out")

    def _timeout_error(self) -> HandlerTimeout:
        return HandlerTimeout(f"handler timed out on {describe(self.wake)} after "
                              f"{self._owner._timeout:g}s (handler_timeout)")

    def _grace_over(self) -> None:
        """The handler ignored its cancellation for :data:`CANCEL_GRACE_S`: abandon it."""
        self._grace = None
        task, handover = self.task, self._handover
        if not self.running or task is None or handover is None:  # pragma: no cover
            return
        self._handover = None
        self.handed_over = True
        self._abandon("it did not end when cancelled")
        abandoned = self._owner._abandoned
        abandoned.add(task)
        task.add_done_callback(abandoned.discard)
        if self.timed_out:
            task.uncancel()  # ours (as run() does): what is left is the caller's, or a stop
        cancelled = task.cancelling() > self._base
        self._observe("cancelled" if cancelled else "error")
        handover(None if cancelled else self._timeout_error(), cancelled)

    def _abandon(self, how: str) -> None:
        owner = self._owner
        self.abandoned = True
        owner.outliving += 1
        owner._stats.handlers_abandoned += 1
        owner._log.warning("handler of %s %s and is still running (%s): abandoned; it keeps "
                           "a concurrency slot until it ends", describe(self.wake),
                           self.why or "was cancelled", how)

    def _observe(self, outcome: str) -> None:
        owner = self._owner
        if owner._timer is not None:
            owner._timer.observe_handler(self.wake.subscription_id, outcome,
                                         max(0.0, owner._clock.monotonic() - self.start))

    def _in_thread(self) -> asyncio.Future[tuple[Any, BaseException | None]]:
        """Run a sync handler in a daemon thread of its own (a stuck one never blocks exit)."""
        owner = self._owner
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, BaseException | None]] = loop.create_future()
        ctx = contextvars.copy_context()
        handler, wake = owner.handler, self.wake

        def settle(result: Any, error: BaseException | None) -> None:
            if not fut.done():
                fut.set_result((result, error))
            owner._threads.discard(thread)
            self._part_ended()

        def body() -> None:
            result: Any = None
            error: BaseException | None = None
            try:
                result = ctx.run(handler, wake)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop as a failure
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, result, error)

        thread = threading.Thread(target=body, daemon=True,
                                  name=f"pullwake-handler[{wake.subscription_id}]")
        self.parts += 1
        self.thread = thread
        owner._threads.add(thread)
        thread.start()
        return fut

    def _part_ended(self) -> None:
        self.parts -= 1
        if self.parts == 0:
            owner = self._owner
            owner._slots.release()
            if self.abandoned:  # it held a slot past its job: the worker is less full now
                owner.outliving -= 1
                owner._freed()
