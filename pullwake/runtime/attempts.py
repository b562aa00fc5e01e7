"""Handler attempts: running the application's handler once, bounded, in a slot.

This module owns one handler execution: the ``max_concurrency`` slots, the
handler's task (async handlers) or daemon thread (sync ones), its timeout on
the injected clock, cancellation with :data:`CANCEL_GRACE_S`, and the
executions abandoned after it (still holding their slot until they end).
Whatever a handler raises is contained here and returned as the attempt's
result; what a failure means (retry, dead letter, release) is the job's
business (:mod:`.dispatch`).
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
from pullwake.io.clock import Clock
from pullwake.runtime.jobs import Jobs
from pullwake.runtime.logs import LabelledLog

if TYPE_CHECKING:
    from pullwake.runtime.health import WorkerStats
    from pullwake.runtime.wake import Wake

__all__ = ["CANCEL_GRACE_S", "HandlerAttempts", "HandlerTimer", "describe"]

#: After a handler is cancelled (lease lost, timeout, stop) it gets this long
#: (on the worker's clock) to end; then it is abandoned: logged, counted, its
#: slot kept until it does end, and nothing waits for it any more.
CANCEL_GRACE_S = 1.0


class HandlerTimer(Protocol):
    """Where handler durations go (the worker's metrics)."""

    def observe_handler(self, subscription: str, outcome: str, seconds: float) -> None: ...


def describe(wake: Wake) -> str:
    """``sub#generation``, or what a recovered wake is, for log lines and errors."""
    if wake.recovered:
        return f"a recovered wake of {wake.subscription_id}"
    return f"{wake.subscription_id}#{wake.generation}"


class _Execution:
    """One handler run: its task and (sync) thread; the slot is freed when all have ended."""

    __slots__ = ("abandoned", "parts", "thread")

    def __init__(self) -> None:
        self.parts = 1  # the task; a sync handler's thread adds one
        self.abandoned = False
        self.thread: threading.Thread | None = None


class HandlerAttempts:
    """Runs the handler, at most ``max_concurrency`` at once; see :meth:`attempt`.

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

    async def attempt(self, wake: Wake) -> BaseException | None:
        """Run the handler once: None if it returned, else what it raised (or a timeout).

        Whatever the handler raises is contained here (``KeyboardInterrupt``,
        ``SystemExit``, a ``CancelledError`` of its own): it is a handler
        failure, never the worker's end. This raises ``CancelledError`` only
        when this attempt itself is cancelled (lease lost, stop); the handler
        is then cancelled and given :data:`CANCEL_GRACE_S`, else abandoned.
        """
        await self._slots.acquire()  # the lease is kept while a job waits for a slot
        ex = _Execution()
        start = self._clock.monotonic()
        # The handler's own task (a job): one that ignores its cancellation can be
        # abandoned while the wake's job goes on to release its claim.
        run = self._jobs.spawn(self._invoke(wake, ex), f"pullwake-handler[{wake.subscription_id}]")
        run.add_done_callback(lambda _t: self._part_ended(ex))
        outcome = "cancelled"
        try:
            if not await self.wait_on_clock(run, self._timeout):
                await self._wind_down(run, ex, wake, why="timed out")
                outcome = "error"
                return HandlerTimeout(
                    f"handler timed out on {describe(wake)} after "
                    f"{self._timeout:g}s (handler_timeout)")
            if run.cancelled():  # pragma: no cover - only this method cancels it
                return asyncio.CancelledError()
            error = run.result()
            outcome = "ok" if error is None else "error"
            return error
        except asyncio.CancelledError:
            await self._wind_down(run, ex, wake, why="was cancelled")
            raise
        finally:
            if self._timer is not None:
                self._timer.observe_handler(wake.subscription_id, outcome,
                                           max(0.0, self._clock.monotonic() - start))

    async def _invoke(self, wake: Wake, ex: _Execution) -> BaseException | None:
        try:
            if self._is_async:
                await self.handler(wake)
                return None
            result, error = await self._in_thread(wake, ex)
            if error is not None:
                return error
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # ours: lease lost, timeout or stop
            return exc  # the handler raised CancelledError itself: a failure like any
        except BaseException as exc:  # noqa: BLE001 - contained, reported as a handler failure
            return exc
        return None

    def _in_thread(self, wake: Wake, ex: _Execution
                   ) -> asyncio.Future[tuple[Any, BaseException | None]]:
        """Run a sync handler in a daemon thread of its own (a stuck one never blocks exit)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, BaseException | None]] = loop.create_future()
        ctx = contextvars.copy_context()
        handler = self.handler

        def settle(result: Any, error: BaseException | None) -> None:
            if not fut.done():
                fut.set_result((result, error))
            self._threads.discard(thread)
            self._part_ended(ex)

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
        ex.parts += 1
        ex.thread = thread
        self._threads.add(thread)
        thread.start()
        return fut

    def _part_ended(self, ex: _Execution) -> None:
        ex.parts -= 1
        if ex.parts == 0:
            self._slots.release()
            if ex.abandoned:  # it held a slot past its job: the worker is less full now
                self.outliving -= 1
                self._freed()

    async def wait_on_clock(self, fut: asyncio.Future[Any], seconds: float | None) -> bool:
        """Wait for ``fut`` at most ``seconds`` on the worker's clock; True if it is done.

        Does not cancel the waiting task (unlike :func:`~pullwake.io.clock.deadline`),
        so it is safe inside a cancellation that is already being handled; nor
        ``fut`` when the wait is cancelled (what ``asyncio.wait`` does, with one
        future and one callback instead of its sets).
        """
        if fut.done():
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake(_f: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        fut.add_done_callback(wake)
        handle = self._clock.call_later(seconds, wake) if seconds is not None else None
        try:
            await waiter
        finally:
            fut.remove_done_callback(wake)
            if handle is not None:
                handle.cancel()
        return fut.done()

    async def _wind_down(self, run: asyncio.Future[Any], ex: _Execution, wake: Wake, *,
                         why: str) -> None:
        """Cancel a handler run and wait :data:`CANCEL_GRACE_S` for it; else abandon it."""
        run.cancel()
        await self.wait_on_clock(run, CANCEL_GRACE_S)
        if ex.parts == 0:
            return
        ex.abandoned = True
        self.outliving += 1
        self._stats.handlers_abandoned += 1
        if not run.done():
            self._abandoned.add(run)
            run.add_done_callback(self._abandoned.discard)
        how = ("its thread cannot be interrupted" if ex.thread is not None
               else "it did not end when cancelled")
        self._log.warning("handler of %s %s and is still running (%s): abandoned; it keeps "
                          "a concurrency slot until it ends", describe(wake), why, how)
