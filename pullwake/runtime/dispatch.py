"""The worker's runtime: what the runner drives for each claimed wake.

This module owns :class:`WorkerRuntime`, the :class:`~pullwake.runtime.runner.Runtime`
a :class:`~pullwake.worker.Worker` gives its runner (a private object of the
worker, not its public surface): each claimed wake becomes a job
(:class:`~pullwake.runtime.wakejob.WakeJob`), one per subscription at a
time, that keeps the lease (:mod:`.leases`), runs the handler
(:mod:`.attempts`), and acks ``done`` or releases. The job runs on in the
claim's own task (``dispatch_wake`` returns it to the runner), an async
handler too, so a wake costs that one task; every other task of the worker
(a job handed over by a handler ignoring its cancellation, lease
extensions, recoveries and their handlers) is a job of its
:class:`~pullwake.runtime.jobs.Jobs`, whose failures are reported like any
worker error. Failures follow the
retry policy (:mod:`.failures`: cool-down, dead letter after
``max_attempts``); ranges a re-created subscription skipped are handed over by
:mod:`.recovery`; at stop running jobs get ``stop_grace``, then are cancelled
and release their claims. The runtime tells the runner when a key is free
(:meth:`~pullwake.runtime.runner.PullWakeRunner.wake_free`), so held-back
wakes are claimed then, never polled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from pullwake.errors import (
    ControlPlaneError,
    DeadLetterError,
    HandlerError,
    HandlerTimeout,
    JobError,
    LeaseLost,
    PullwakeError,
    SubscriptionError,
)
from pullwake.io.clock import Clock
from pullwake.io.http import HttpClient, raise_for_answer
from pullwake.runtime.attempts import HandlerAttempts, HandlerTimer, describe
from pullwake.runtime.failures import FailureLog, FailurePolicy, WakeFailures, dead_letter_record
from pullwake.runtime.health import (
    SubscriptionHealth,
    SubscriptionStats,
    WorkerHealth,
    WorkerStats,
)
from pullwake.runtime.jobs import Jobs
from pullwake.runtime.leases import LeaseKeeper
from pullwake.runtime.logs import LabelledLog
from pullwake.runtime.recovery import Recovery
from pullwake.runtime.subscriptions import (
    INVALID_OFFSET,
    Claim,
    SubscriptionClient,
    SubscriptionConfig,
)
from pullwake.runtime.wake import Wake, WakeReader
from pullwake.runtime.wakejob import WakeJob

if TYPE_CHECKING:
    from pullwake.runtime.ports import RunnerPort

__all__ = ["WorkerRuntime"]



class WorkerRuntime:
    """Jobs, attempts, acks and releases of one worker (see the module docstring).

    A :class:`~pullwake.runtime.ports.Runtime` with the optional hooks
    ``attach`` (the runner's port: free keys, liveness and errors go up
    through it), ``is_wake_active``, ``notifies_wake_free``,
    ``wake_received`` and ``health_parts``. The worker calls ``begin()`` at each start and
    ``close()`` after each stop; handler durations go to ``timer``.
    """

    #: The runtime calls ``runner.wake_free`` when a job ends or a cool-down
    #: runs out, so a held-back wake is claimed then, never by polling.
    notifies_wake_free = True

    def __init__(self, handler: Callable[[Wake], Any], *, client: SubscriptionClient,
                 http: HttpClient, reader: WakeReader,
                 subscriptions: Mapping[str, SubscriptionConfig], wake_stream: str,
                 log: LabelledLog, max_concurrency: int, stop_grace: float,
                 failure_policy: FailurePolicy, stats: WorkerStats, clock: Clock,
                 request_timeout: float, on_error: Callable[[BaseException], Any] | None,
                 max_tracked_streams: int, timer: HandlerTimer | None = None) -> None:
        self._client = client
        self._http = http
        self._reader = reader
        #: The worker's log: every line carries its name (``[name] ``, ``worker``).
        self.log = log
        self._label = log.label
        self.max_concurrency = max_concurrency
        self.stop_grace = stop_grace
        self.failure_policy = failure_policy
        self.stats = stats
        self._clock = clock
        self._request_timeout = request_timeout
        self._on_error = on_error
        self._runner: RunnerPort | None = None
        self._jobs: dict[str, WakeJob] = {}  # per subscription, until acked or ended
        #: Per subscription: the current wake's failures and the cool-down.
        self._failures: dict[str, WakeFailures] = {}
        self._failure_log = FailureLog(log, failure_policy.log_interval)
        #: Handler runs, lease extensions and recoveries (the wake jobs are the runner's).
        self.jobs = Jobs(clock=clock, on_error=self._job_failed)
        self.sub_stats = {s: SubscriptionStats() for s in subscriptions}
        self.attempts = HandlerAttempts(
            handler, max_concurrency=max_concurrency, clock=clock,
            handler_timeout=failure_policy.handler_timeout, log=log, stats=stats,
            freed=self._slot_freed, timer=timer, jobs=self.jobs)
        self.leases = LeaseKeeper(client, http, clock=clock, request_timeout=request_timeout,
                                  stats=stats, liveness=self._liveness, jobs=self.jobs)
        self.recovery = Recovery(
            self, client, subscriptions=subscriptions, wake_stream=wake_stream, reader=reader,
            failure_policy=failure_policy, clock=clock, stats=stats, log=log,
            max_tracked_streams=max_tracked_streams, jobs=self.jobs)

    def attach(self, runner: RunnerPort) -> None:
        """The runner this runtime reports to (it attaches itself when it is built)."""
        self._runner = runner

    @property
    def runner(self) -> RunnerPort:
        if self._runner is None:  # pragma: no cover - a runner attaches at its construction
            raise RuntimeError("no runner is attached to this runtime")
        return self._runner

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def reader(self) -> WakeReader:
        return self._reader

    def begin(self) -> None:
        """A new run: the stop grace of an earlier stop is forgotten."""
        self.jobs.reopen()

    def end_grace(self) -> None:
        self.jobs.end_grace()

    async def close(self) -> None:
        """After the runner stopped: recoveries cancelled, cut-short extensions awaited."""
        await self.recovery.cancel()
        await self.leases.wait()

    def abandoned(self) -> int:
        return self.attempts.abandoned()

    @property
    def jobs_active(self) -> int:
        return len(self._jobs)

    def health_parts(self) -> tuple[WorkerHealth, dict[str, SubscriptionHealth]]:
        """The worker's part of the runner's health: its counters and subscriptions."""
        worker = WorkerHealth.of(self.stats, handlers_stuck=self.abandoned())
        now = self._clock.monotonic()
        subs: dict[str, SubscriptionHealth] = {}
        for sub_id, st in self.sub_stats.items():
            fails = self._failures.get(sub_id)
            until = fails.cooldown_until if fails is not None else None
            subs[sub_id] = st.snapshot(
                now, cooling_down_s=0.0 if until is None else max(0.0, until - now),
                consecutive_failures=fails.backoff.attempt if fails is not None else 0,
                failed_attempts=fails.attempts if fails is not None else 0)
        return worker, subs

    # ============================================== Runtime (for the runner)

    def wake_received(self, wake: Any) -> None:
        st = self.sub_stats.get(getattr(wake, "subscription_id", None) or "")
        if st is not None:
            st.wake_seen(self._clock.monotonic())

    def is_wake_active(self, key: str) -> bool:
        if key in self._jobs or \
                len(self._jobs) + self.attempts.outliving >= self.max_concurrency:
            return True
        fails = self._failures.get(key)
        until = fails.cooldown_until if fails is not None else None
        return until is not None and self._clock.monotonic() < until

    def dispatch_wake(self, notification: Any, *, claim_headers: Any,
                      claim_token_header: str | None) -> Awaitable[None]:
        """The wake's job (:class:`WakeJob`), for the runner to run on in the claim's task."""
        claim: Claim = notification["claim"]
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - the runner calls it from the claim's task
            raise RuntimeError("dispatch_wake is called from the runner's claim task")
        self.stats.wakes_claimed += 1
        key = claim.subscription_id
        sub = self.sub_of(key)
        pending = 0
        for s in claim.streams:
            if s.tail_offset > s.acked_offset:
                pending += 1
        sub.claimed(self._clock.monotonic(), claim.generation, pending)
        # The claim token is scrubbed from any text while, and only while, its job runs.
        scope = self._http.hold_secrets(claim.token)
        scope.__enter__()
        job = self._jobs[key] = WakeJob(self, claim, task, scope, sub)  # busy from now on
        self.stats.jobs_active = len(self._jobs)  # (is_wake_active), until acked or ended
        return job.run()

    def job_over(self, job: WakeJob) -> None:
        """``job``'s key is free once it acked (or ended): tell the runner at once."""
        key = job.claim.subscription_id
        if self._jobs.get(key) is not job:
            return
        full = len(self._jobs) + self.attempts.outliving >= self.max_concurrency
        del self._jobs[key]
        self.stats.jobs_active = len(self._jobs)
        self.runner.wake_free(None if full else key)  # a full worker frees any key

    def abort_wakes(self) -> None:
        """Stop began: nothing to do here (claims stop dispatching; jobs get their grace)."""

    async def drain_wakes(self) -> None:
        # Recovered wakes get the same grace: nothing else would hand them over.
        wakes = {job.task: job for job in self._jobs.values()}
        jobs = [*wakes, *self.recovery.tasks]

        def cancel(task: asyncio.Task[Any]) -> None:
            job = wakes.get(task)
            if job is None:  # a recovery, or a job handed over meanwhile
                task.cancel()
            else:
                job.cancel()  # its handler gets CANCEL_GRACE_S (then is abandoned)

        # The grace (cut short by end_grace), then cancel: a job releases its
        # claim on the way out; then wait for them.
        pending = await self.jobs.settle(max(0.0, self.stop_grace), jobs=jobs, cancel=cancel)
        if pending:
            self.log.warning("%d handler(s) still running after %.3gs: released",
                             len(pending), self.stop_grace)

    # ================================================================= jobs

    async def attempt(self, wake: Wake) -> BaseException | None:
        """Run the handler once, in a task of its own (a recovery's; see
        :meth:`HandlerAttempts.attempt`)."""
        return await self.attempts.attempt(wake)

    async def finish(self, job: WakeJob, acks: list[tuple[str, str]] | None = None) -> bool:
        """Ack ``done`` (default: what was handed over or read); True if the server took it."""
        claim, wake = job.claim, job.wake
        assert wake is not None
        if acks is None:
            acks = []
            for s in claim.streams:
                end = max(s.tail_offset, wake._read.get(s.path, ""))
                if end > s.acked_offset:
                    acks.append((s.path, end))
        try:
            try:
                await self._client.ack(self._http, claim, acks=acks, done=True)
            except ControlPlaneError as exc:
                # A file-backed server can serve a read past the tail it checks
                # acks against (the append is on disk, its offset not yet
                # committed): ack what the claim handed over instead. Messages
                # read past it come again in the next wake.
                clamped = [(p, min(o, self._tail_of(claim, p))) for p, o in acks]
                if exc.code != INVALID_OFFSET or clamped == acks:
                    raise
                acks = clamped
                await self._client.ack(self._http, claim, acks=acks, done=True)
        except (LeaseLost, SubscriptionError) as exc:
            self.stats.leases_lost += 1
            self.report(exc)
            return False
        except PullwakeError as exc:
            self.report(exc)  # not acked: the lease expires and the wake comes back
            return False
        self.stats.wakes_acked += 1
        job.sub.acked(claim.generation)
        self.recovery.acked(claim.subscription_id, acks)
        self.job_over(job)  # acked: the next wake may be claimed before this job ends
        return True

    @staticmethod
    def _tail_of(claim: Claim, path: str) -> str:
        return next(s.tail_offset for s in claim.streams if s.path == path)

    async def release(self, claim: Claim, *, why: str) -> None:
        try:
            await asyncio.shield(self._client.release(self._http, claim,
                                                      timeout=min(self._request_timeout, 5.0)))
        except (PullwakeError, asyncio.CancelledError) as exc:
            self.log.info("release of %s#%d (%s) failed: %s",
                          claim.subscription_id, claim.generation, why, exc)
            return
        self.stats.wakes_released += 1
        self._sub(claim).wakes_released += 1

    def _sub(self, claim: Claim) -> SubscriptionStats:
        return self.sub_of(claim.subscription_id)

    def sub_of(self, sub_id: str) -> SubscriptionStats:
        stats = self.sub_stats.get(sub_id)  # (not setdefault: no new stats per call)
        if stats is None:
            stats = self.sub_stats[sub_id] = SubscriptionStats()
        return stats

    # ============================================================ failures

    def _slot_freed(self) -> None:
        self.runner.wake_free(None)

    def free_after(self, delay: float, sub_id: str, fails: WakeFailures) -> None:
        """A cool-down of ``fails``: tell the runner when it ends (held wakes are not polled).

        The cool-down ends when its timer fires (not at a later clock reading),
        so the wake held for it is claimed on that event whatever the clock says.
        """
        until = fails.cooldown_until

        def over() -> None:
            if fails.cooldown_until == until:  # not started again meanwhile
                fails.cooldown_until = None
            self.runner.wake_free(sub_id)

        self._clock.call_later(delay, over)

    def handler_failed(self, wake: Wake, fails: WakeFailures, error: BaseException) -> float:
        """Count, log (traceback, rate-limited) and report one failed attempt; the cool-down."""
        now, wall = self._clock.monotonic(), self._clock.time()
        delay = fails.failed(error, now, wall)
        self.free_after(delay, wake.subscription_id, fails)
        self.stats.handler_errors += 1
        errs = self.sub_of(wake.subscription_id)
        errs.handler_errors += 1
        if isinstance(error, HandlerTimeout):
            self.stats.handler_timeouts += 1
            errs.handler_timeouts += 1
        text = f"{type(error).__name__}: {self._http.scrub(str(error))}"
        errs.last_error, errs.last_error_at = text, wall
        limit = self.failure_policy.max_attempts
        of = f"/{limit}" if limit is not None else ""
        then = ("giving up: dead-lettering it" if self.failure_policy.exhausted(fails.attempts)
                else f"retried after a {delay:.3g}s cool-down")
        self._failure_log.log(
            wake.subscription_id, first=fails.attempts == 1, now=now, error=error,
            scrub=self._http.scrub,
            message=f"handler failed on {describe(wake)} (attempt "
                    f"{fails.attempts}{of}): {text}; {then}")
        if isinstance(error, HandlerTimeout):
            herr: HandlerError = error
        else:
            herr = HandlerError(f"handler failed on {describe(wake)}: {text}")
            herr.__cause__ = error
        self._notify(herr, "handler")
        return delay

    def failures_of(self, sub_id: str) -> WakeFailures:
        fails = self._failures.get(sub_id)
        if fails is None:
            fails = self._failures[sub_id] = WakeFailures(backoff=self.failure_policy.backoff())
        return fails

    async def dead_letter(self, wake: Wake, fails: WakeFailures, *, reason: str) -> bool:
        """Append the wake's record to the dead-letter stream; True once it is written."""
        stream = self.failure_policy.dead_letter_stream
        errs = self.sub_of(wake.subscription_id)
        if stream is None:  # pragma: no cover - FailurePolicy never exhausts without one
            return False
        record = dead_letter_record(
            subscription=wake.subscription_id, worker=self._label, streams=wake.streams,
            attempts=fails.attempts, error=fails.last_error, scrub=self._http.scrub,
            reason=reason, wake_id=wake.wake_id, generation=wake.generation,
            recovered=wake.recovered, first_failed_at=fails.first_failed_at,
            now=self._clock.time())
        try:
            await asyncio.shield(self._append_record(stream, record))
        except PullwakeError as exc:
            self.stats.dead_letter_failures += 1
            errs.dead_letter_failures += 1
            err = exc if isinstance(exc, DeadLetterError) else DeadLetterError(
                f"cannot append to {stream!r}: {self._http.scrub(str(exc))}",
                operation="dead-letter append", status=getattr(exc, "status", None))
            if err is not exc:
                err.__cause__ = exc
            self.log.warning("dead-letter record of %s not written, so it is not acked "
                             "(released, retried later): %s", describe(wake),
                             self._http.scrub(str(err)))
            self._notify(err)
            return False
        fails.recorded = tuple(wake.streams)
        self.stats.dead_lettered += 1
        errs.dead_lettered += 1
        self.log.warning("%s dead-lettered to %s after %d attempt(s) (%s)",
                         describe(wake), stream, fails.attempts, reason)
        return True

    async def _append_record(self, stream: str, record: Mapping[str, Any]) -> None:
        url = self._client.stream_url(stream)
        answer = await self._http.request("POST", url, operation="dead-letter append",
                                          json_body=record)
        if answer.status == 404:  # an in-memory server forgot it: re-create, once
            await self._client.ensure_stream(self._http, stream)
            answer = await self._http.request("POST", url, operation="dead-letter append",
                                              json_body=record)
        raise_for_answer(answer, operation="dead-letter append", url=url,
                         scrub=self._http.scrub, cls=DeadLetterError)

    # ============================================================ reporting

    def _job_failed(self, error: JobError) -> None:
        """A worker job raised (a bug: handler failures are contained): reported."""
        self.log.error("%s", self._http.scrub(str(error)), exc_info=error.__cause__)
        self._notify(error, "internal")

    def _liveness(self, ok: bool, error: BaseException | None) -> None:
        self.runner.record_liveness(ok, error)

    def report(self, error: BaseException) -> None:
        self.log.warning("%s: %s", type(error).__name__, self._http.scrub(str(error)))
        self._notify(error)

    def _notify(self, error: BaseException, where: str = "worker") -> None:
        """Record ``error`` in health and hand it to ``on_error`` (which only reports)."""
        self.runner.note_error(where, error)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                self.log.exception("on_error raised; ignoring")
