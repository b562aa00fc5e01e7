"""Jobs: the one owner of pullwake's asyncio tasks.

This module owns every background task the package starts: spawning it
(named, optionally in a context), tracking it until it ends, reporting its
failure, and the stop sequence ``wait a grace → cancel → wait``. Nothing else
in the package calls ``create_task`` / ``ensure_future`` (checked by
``tests/test_architecture.py``). Each owner of work holds a :class:`Jobs` of
its own (the runner, its claim scheduler, the worker), the way each use of
the backoff holds its own :class:`~pullwake.lifecycle.backoff.Backoff`.

Rules:

- **A job's outcome is the job's business.** A job that raises (anything but
  its own cancellation) has failed: the failure is wrapped in one typed error,
  :class:`~pullwake.errors.JobError` (``job`` names it, ``__cause__`` is what
  it raised), and handed to the group's ``on_error`` (which only reports; one
  that raises is logged and ignored), or logged at ERROR without one: never
  lost, never a "Task exception was never retrieved". A job whose result
  matters to someone returns it instead of raising.
- **Graces run on the injected clock** (:class:`~pullwake.io.clock.Clock`):
  a test moves a :class:`~pullwake.testing.clock.ManualClock` and never sleeps.
- **The stop sequence** (:meth:`Jobs.settle`) waits up to a grace for the jobs
  to end by themselves (cut short by :meth:`Jobs.end_grace`), cancels the
  rest, then waits for them (optionally bounded: a job that ignores its
  cancellation is then abandoned, and said to be). It spawns nothing and needs
  no task of its own; it never waits for the task that calls it.
- **Cheap on the per-wake path**: a spawn is one task and one done callback;
  a settle is one future and at most one timer.
- **A job's work may be handed over** (:meth:`Jobs.hand_over`): when a job is
  stuck in code that ignores its cancellation (an application's handler), the
  rest of its work goes on in a new job and the stuck task is abandoned: no
  group waits for it any more, and a wait in progress for it waits for the
  new job instead.
- A thread that needs a coroutine's answer (a sync handler resolving the
  worker's credentials) uses :func:`run_from_thread`: the thread waits for it,
  so that task is the thread's call, not a background job.

Why not aiojobs (the shape this follows: spawn, a close timeout, an exception
handler that only reports): its timeouts run on the loop's real clock, not on
an injected one, and its per-job wrapper costs an object per wake.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from pullwake.errors import JobError
from pullwake.io.clock import Clock, TimerHandle

__all__ = ["Jobs", "run_from_thread"]

log = logging.getLogger("pullwake.jobs")

T = TypeVar("T")


class Jobs:
    """A set of named background jobs with one error path and one stop sequence.

    ``label`` is appended to every job's task name as ``name[label]`` (the
    runner's id, so a test or a task dump can tell whose a task is).
    """

    __slots__ = ("__weakref__", "_clock", "_cut", "_gate", "_label", "_on_error", "_tasks",
                 "_waits", "failed")

    #: Every group, for :meth:`hand_over` (a claim task is the runner's job, the
    #: work it hands over the worker's).
    _groups: weakref.WeakSet[Jobs] = weakref.WeakSet()

    def __init__(self, *, clock: Clock, label: str = "",
                 on_error: Callable[[JobError], Any] | None = None) -> None:
        self._clock = clock
        self._label = label
        self._on_error = on_error
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cut = False
        self._gate: asyncio.Future[None] | None = None
        self._waits: list[_Waiting] = []  # waits in progress (a settle's)
        #: Jobs that ended by raising (each one reported).
        self.failed = 0
        Jobs._groups.add(self)

    # ------------------------------------------------------------------ spawn

    def spawn(self, coro: Coroutine[Any, Any, T], name: str, *,
              context: contextvars.Context | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a job named ``name``; the task is returned (cancel it freely)."""
        label = self._label
        task = asyncio.get_running_loop().create_task(
            coro, name=f"{name}[{label}]" if label else name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def hand_over(self, stuck: asyncio.Task[Any], coro: Coroutine[Any, Any, T], name: str
                  ) -> asyncio.Task[T]:
        """Go on with ``stuck``'s work in ``coro``, a new job of this group, returned.

        ``stuck`` (a task that ignored its cancellation) is abandoned: no group
        tracks it any more (no settle or cancel waits for it, :func:`len`
        leaves it out), and every wait in progress for it waits for the new
        job instead. If it ever ends by raising, that is still reported.
        """
        task = self.spawn(coro, name)
        for group in Jobs._groups:
            group._tasks.discard(stuck)
            for waiting in group._waits:
                waiting.swap(stuck, task)
        return task

    def __len__(self) -> int:
        """Jobs not yet ended."""
        return sum(1 for t in self._tasks if not t.done())

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        """The jobs not yet ended (a snapshot: spawning meanwhile is safe)."""
        return iter([t for t in self._tasks if not t.done()])

    def __contains__(self, task: object) -> bool:
        """``task`` is one of these jobs and has not ended."""
        return isinstance(task, asyncio.Task) and task in self._tasks and not task.done()

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._report(task.get_name(), exc)

    def _report(self, name: str, exc: BaseException) -> None:
        self.failed += 1
        error = JobError(f"job {name} failed: {type(exc).__name__}: {exc}", job=name)
        error.__cause__ = exc
        reporter = self._on_error
        if reporter is None:
            log.error("%s", error, exc_info=exc)
            return
        try:
            reporter(error)
        except Exception:
            log.exception("the error reporter of job %s raised; ignoring", name)
            log.error("%s", error, exc_info=exc)

    # ------------------------------------------------------------------- stop

    def end_grace(self) -> None:
        """End the grace of a :meth:`settle` now (and of any later one, until
        :meth:`reopen`): what is left is cancelled at once."""
        self._cut = True
        gate = self._gate
        if gate is not None and not gate.done():
            gate.set_result(None)

    def reopen(self) -> None:
        """A new run: :meth:`end_grace` is forgotten."""
        self._cut = False

    async def settle(self, grace: float | None, *, jobs: Iterable[asyncio.Task[Any]] | None = None,
                     abandon_after: float | None = None,
                     cancel: Callable[[asyncio.Task[Any]], object] | None = None
                     ) -> list[asyncio.Task[Any]]:
        """Wait up to ``grace`` seconds for ``jobs`` (default: all of them), cancel the
        rest, then wait for those; returns the ones it cancelled.

        ``grace`` ``None`` waits without a limit (nothing is cancelled unless
        :meth:`end_grace` is called), ``0`` cancels at once. ``abandon_after``
        bounds the wait after cancelling (``None``: until they end); a job
        still running then is abandoned, logged, and stays tracked. The
        calling task is never waited for, even when it is one of the jobs.
        ``cancel(task)`` cancels one (default: ``task.cancel()``), for an
        owner that must know (the worker's handler attempts). A job handed
        over meanwhile (:meth:`hand_over`) is waited for in its new task.
        """
        me = asyncio.current_task()
        tasks = [t for t in (self._tasks if jobs is None else jobs) if t is not me and not t.done()]
        if not tasks:
            return []
        if (grace is None or grace > 0) and not self._cut:
            tasks = await self._wait(tasks, grace, cuttable=True)
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            if cancel is None:
                t.cancel()
            else:
                cancel(t)
        if pending:
            left = await self._wait(pending, abandon_after, cuttable=False)
            stuck = [t.get_name() for t in left if not t.done()]
            if stuck:
                log.warning("%d job(s) did not end within %.3gs of being cancelled: "
                            "abandoned: %s", len(stuck), abandon_after, ", ".join(stuck))
        return pending

    async def cancel(self, jobs: Iterable[asyncio.Task[Any]] | None = None
                     ) -> list[asyncio.Task[Any]]:
        """Cancel ``jobs`` (default: all but the caller) and wait for them to end."""
        return await self.settle(0, jobs=jobs)

    async def _wait(self, tasks: list[asyncio.Task[Any]], seconds: float | None, *,
                    cuttable: bool) -> list[asyncio.Task[Any]]:
        """Until every task is done, ``seconds`` pass on the clock, or (``cuttable``)
        the grace is ended; the tasks waited for (handed-over ones replaced).
        Shielded from nothing: a cancelled caller stops waiting."""
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[None] = loop.create_future()
        waiting = _Waiting(gate, tasks)

        def ring() -> None:
            if not gate.done():
                gate.set_result(None)

        handle: TimerHandle | None = None
        if seconds is not None:
            handle = self._clock.call_later(seconds, ring)
        if cuttable:
            self._gate = gate
        self._waits.append(waiting)
        try:
            await gate
        finally:
            self._waits.remove(waiting)
            if cuttable and self._gate is gate:
                self._gate = None
            if handle is not None:
                handle.cancel()
            waiting.close()
        return list(waiting.tasks)


class _Waiting:
    """One wait of :meth:`Jobs._wait`: the tasks not yet done (in order), and the
    gate it opens when the last one is."""

    __slots__ = ("gate", "tasks")

    def __init__(self, gate: asyncio.Future[None], tasks: list[asyncio.Task[Any]]) -> None:
        self.gate = gate
        self.tasks: dict[asyncio.Task[Any], None] = {}
        for t in tasks:
            self.add(t)

    def add(self, task: asyncio.Task[Any]) -> None:
        self.tasks[task] = None
        task.add_done_callback(self.ended)

    def ended(self, task: asyncio.Task[Any]) -> None:
        self.tasks.pop(task, None)
        if not self.tasks and not self.gate.done():
            self.gate.set_result(None)

    def swap(self, stuck: asyncio.Task[Any], task: asyncio.Task[Any]) -> None:
        """Wait for ``task`` instead of ``stuck`` (if this wait was waiting for it)."""
        if stuck in self.tasks:
            stuck.remove_done_callback(self.ended)
            del self.tasks[stuck]
            self.add(task)

    def close(self) -> None:
        for t in self.tasks:
            t.remove_done_callback(self.ended)


def run_from_thread(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop
                    ) -> concurrent.futures.Future[T]:
    """Run ``coro`` on ``loop`` for a thread that waits for its result (``.result(timeout)``).

    Call it from a thread other than the loop's; the caller owns the answer
    (and its error), so this is a call, not a job of any group.
    """
    return asyncio.run_coroutine_threadsafe(coro, loop)
