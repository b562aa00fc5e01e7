"""A wake's job: one claimed wake, from its lease to its ack or release.

This module owns :class:`WakeJob`, what the worker's runtime (:mod:`.dispatch`)
runs for each claimed wake, in the claim's own task: it keeps the lease
(:mod:`.leases`), runs the handler there (:mod:`.attempts`: an async handler
in this very task, no task or future of its own), then acks ``done``,
dead-letters after ``max_attempts`` or releases the claim. A lost lease
cancels the handler; so does a stop (:meth:`WakeJob.cancel`).

A handler that ignores its cancellation keeps this task; after
:data:`~pullwake.runtime.attempts.CANCEL_GRACE_S` the attempt hands the
rest of the job over (:meth:`~pullwake.runtime.jobs.Jobs.hand_over`): a new
job releases or dead-letters the wake and frees its key, stop waits for that
one, and the stubborn handler's eventual return does nothing.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from pullwake.errors import LeaseLost
from pullwake.io.clock import Clock
from pullwake.runtime.logs import log_context
from pullwake.runtime.subscriptions import Claim
from pullwake.runtime.wake import Wake, WakeReader

if TYPE_CHECKING:
    from pullwake.runtime.attempts import Attempt, HandlerAttempts
    from pullwake.runtime.failures import FailurePolicy, WakeFailures
    from pullwake.runtime.health import SubscriptionStats, WorkerStats
    from pullwake.runtime.jobs import Jobs
    from pullwake.runtime.leases import Lease, LeaseKeeper
    from pullwake.runtime.recovery import Recovery

__all__ = ["JobHost", "WakeJob"]


class JobHost(Protocol):
    """What a wake's job needs of its runtime (the worker's,
    :class:`~pullwake.runtime.dispatch.WorkerRuntime`)."""

    attempts: HandlerAttempts
    leases: LeaseKeeper
    jobs: Jobs
    recovery: Recovery
    stats: WorkerStats
    failure_policy: FailurePolicy

    @property
    def clock(self) -> Clock: ...

    @property
    def reader(self) -> WakeReader: ...

    def sub_of(self, sub_id: str) -> SubscriptionStats: ...

    def failures_of(self, sub_id: str) -> WakeFailures: ...

    def handler_failed(self, wake: Wake, fails: WakeFailures, error: BaseException) -> float: ...

    def free_after(self, delay: float, sub_id: str, fails: WakeFailures) -> None: ...

    async def dead_letter(self, wake: Wake, fails: WakeFailures, *, reason: str) -> bool: ...

    async def finish(self, job: WakeJob, acks: list[tuple[str, str]] | None = None) -> bool: ...

    async def release(self, claim: Claim, *, why: str) -> None: ...

    def report(self, error: BaseException) -> None: ...

    def job_over(self, job: WakeJob) -> None:
        """``job``'s key is free (it acked, or ended); again is nothing."""
        ...


class WakeJob:
    """One claimed wake's job: :meth:`run` it in the claim's task; :meth:`cancel` at stop.

    ``task`` is the task running it: the claim's, or the one the job was
    handed over to. ``scope`` holds the claim token among the secrets
    scrubbed while the job runs.
    """

    __slots__ = ("_attempt", "_fails", "_host", "_lease", "_lost", "claim", "scope", "sub",
                 "task", "wake")

    def __init__(self, host: JobHost, claim: Claim, task: asyncio.Task[Any],
                 scope: AbstractContextManager[Any], sub: SubscriptionStats) -> None:
        self._host = host
        self.claim = claim
        self.sub = sub  # its subscription's stats (health)
        self.task = task
        self.scope = scope
        self.wake: Wake | None = None
        self._fails: WakeFailures | None = None
        self._lease: Lease | None = None
        self._attempt: Attempt | None = None
        self._lost: LeaseLost | None = None  # the lease was lost while the handler ran

    def cancel(self) -> None:
        """Stop: cancel the handler (it gets its grace), or the job's task."""
        if self._attempt is not None:
            self._attempt.cancel()
        else:
            self.task.cancel()

    async def run(self) -> None:
        """The job, in the claim's task (``dispatch_wake`` returns it to the runner)."""
        host, claim = self._host, self.claim
        sub = claim.subscription_id
        self.task.set_name(f"pullwake-job[{sub}#{claim.generation}]")
        handed_over = False
        try:
            with log_context(subscription=sub, wake=claim.generation):
                host.recovery.learn(sub, claim.streams)
                fails = self._fails = host.failures_of(sub)
                fails.begin(claim.streams)
                wake = self.wake = Wake(subscription_id=sub, wake_id=claim.wake_id,
                                        generation=claim.generation, streams=claim.streams,
                                        _reader=host.reader)
                self._lease = host.leases.keep(claim, self._lease_lost)
                if fails.dead:
                    # Given up on earlier (attempts exhausted) but its record or ack
                    # did not get through: do not run the handler again.
                    await self._then(None, ran=False)
                    return
                attempt = self._attempt = host.attempts.start(wake, self._hand_over)
                try:
                    error = await attempt.run()
                except asyncio.CancelledError:
                    handed_over = attempt.handed_over
                    if not handed_over:
                        await self._cancelled(self.task)
                    return
                finally:
                    self._attempt = None
                handed_over = attempt.handed_over
                if not handed_over:
                    await self._then(error)
        finally:
            if not handed_over:
                self._end()

    def _lease_lost(self, error: LeaseLost) -> None:
        attempt = self._attempt
        if attempt is not None:  # (lost after the handler: the ack says so)
            self._lost = error
            attempt.cancel("lost its lease")  # the handler gets CANCEL_GRACE_S

    def _hand_over(self, error: BaseException | None, cancelled: bool) -> None:
        """The handler ignored its cancellation: the rest of the job goes on in a new job."""
        stuck = self.task
        self._attempt = None  # a stop now cancels the new job, not the handler
        self.task = self._host.jobs.hand_over(stuck, self._go_on(stuck, error, cancelled),
                                              stuck.get_name())

    async def _go_on(self, stuck: asyncio.Task[Any], error: BaseException | None,
                     cancelled: bool) -> None:
        claim = self.claim
        try:
            with log_context(subscription=claim.subscription_id, wake=claim.generation):
                if cancelled:
                    await self._cancelled(stuck)
                else:
                    await self._then(error)
        finally:
            self._end()

    async def _cancelled(self, tried_in: asyncio.Task[Any]) -> None:
        """The attempt (in ``tried_in``) was cancelled: the lease was lost, or a stop."""
        host = self._host
        if self._lost is not None and tried_in.cancelling() <= 1:
            if tried_in is asyncio.current_task():
                tried_in.uncancel()  # ours, not a stop: the job ends here
            host.stats.leases_lost += 1  # the lease is gone: nothing to release
            self.sub.leases_lost += 1
            host.report(self._lost)
            return
        await self._stopped()
        raise asyncio.CancelledError

    async def _stopped(self) -> None:
        assert self._lease is not None
        self._lease.stop()
        await self._host.release(self.claim, why="stopped")

    async def _then(self, error: BaseException | None, *, ran: bool = True) -> None:
        """After the attempt (or none, ``ran`` False): ack ``done``, dead-letter or release."""
        host, claim, fails, wake, lease = self._host, self.claim, self._fails, self.wake, \
            self._lease
        assert fails is not None and wake is not None and lease is not None
        try:
            if ran:
                if error is None:
                    lease.stop()
                    host.stats.wakes_handled += 1
                    self.sub.wakes_handled += 1
                    fails.succeeded()
                    await host.finish(self)
                    return
                host.handler_failed(wake, fails, error)
                if host.failure_policy.exhausted(fails.attempts):
                    fails.dead = True
            if fails.dead and (fails.recorded is not None
                               or await host.dead_letter(wake, fails, reason="max_attempts")):
                lease.stop()
                recorded = fails.recorded or claim.streams
                if await host.finish(self, acks=[(s.path, s.tail_offset) for s in recorded
                                                 if s.tail_offset > s.acked_offset]):
                    fails.succeeded()
                return
            if fails.dead:  # the record could not be written: retry it after a cool-down
                host.free_after(fails.cool(host.clock.monotonic()), claim.subscription_id,
                                fails)
            lease.stop()
            await host.release(claim, why="handler failed")
        except asyncio.CancelledError:
            await self._stopped()
            raise

    def _end(self) -> None:
        """The job is over (acked, released, its lease lost, or it failed)."""
        if self._lease is not None:
            self._lease.stop()  # (already, but for a bug raising: no lease kept forever)
        self.scope.__exit__(None, None, None)
        claim = self.claim
        self.sub.ended(claim.generation)
        self._host.job_over(self)
