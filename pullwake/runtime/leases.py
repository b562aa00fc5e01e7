"""Lease keeping: a claimed wake's lease extended while its job runs.

This module owns the extensions of claim leases (an ``ack`` without offsets
every third of the TTL, on the injected clock) and the extensions cut short
when a job ends (awaited at stop). It decides only "held" or "lost": the job
(:mod:`.dispatch`) cancels the handler when the lease is lost.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pullwake.errors import LeaseLost, PullwakeError, SubscriptionError
from pullwake.io.clock import Clock, TimerHandle
from pullwake.io.http import HttpClient
from pullwake.runtime.jobs import Jobs
from pullwake.runtime.subscriptions import NOT_FOUND, Claim, SubscriptionClient

if TYPE_CHECKING:
    from pullwake.runtime.health import WorkerStats

__all__ = ["LeaseKeeper"]


class LeaseKeeper:
    """Keeps claim leases: :meth:`keep` per claim, :meth:`wait` at stop.

    ``liveness(ok, error)`` counts each extension's result like a heartbeat
    (the runner's :meth:`~pullwake.runtime.runner.PullWakeRunner.record_liveness`).
    """

    def __init__(self, client: SubscriptionClient, http: HttpClient, *, clock: Clock,
                 request_timeout: float, stats: WorkerStats,
                 liveness: Callable[[bool, BaseException | None], None], jobs: Jobs) -> None:
        self._jobs = jobs
        self._client = client
        self._http = http
        self._clock = clock
        self._request_timeout = request_timeout
        self._stats = stats
        self._liveness = liveness
        self._strays: set[asyncio.Task[Any]] = set()  # lease extensions cut short

    async def wait(self) -> None:
        """Await the extensions cut short by ended jobs (at stop)."""
        if self._strays:
            await self._jobs.settle(None, jobs=list(self._strays))

    def keep(self, claim: Claim) -> asyncio.Future[None]:
        """Extend the lease every third of its TTL; the future fails when the lease is lost.

        Cancelling the future stops the extensions. Between extensions nothing
        runs but a timer on the clock (no task per wake): most wakes end before
        the first extension is due. An extension may take as long as the lease
        has left (a slow or loaded server is not a lost lease); one that failed
        is tried again after a tenth of the TTL, not a third, so a single slow
        answer does not let the lease run out.
        """
        return _Lease(self, claim).lost

    async def _extend(self, claim: Claim, left: float) -> bool | LeaseLost:
        """One lease extension, bounded by the lease time ``left``; True when it held.

        Answers the LeaseLost when the lease is gone (a job's result, not its
        failure); any other failure is reported to the runner's liveness and
        answers False (the keeper tries again).
        """
        try:
            await self._client.ack(self._http, claim, timeout=min(self._request_timeout, left))
        except LeaseLost as exc:
            return exc
        except SubscriptionError as exc:
            if exc.code == NOT_FOUND:
                gone = LeaseLost("the subscription is gone (server restarted?)",
                                 operation="extend lease", status=404, code=NOT_FOUND)
                gone.__cause__ = exc
                return gone
            self._liveness(False, exc)
        except PullwakeError as exc:
            self._liveness(False, exc)
        else:
            self._stats.lease_extensions += 1
            self._liveness(True, None)
            return True
        return False


class _Lease:
    """One claim's extensions (:meth:`LeaseKeeper.keep`): a timer, at most one
    extension in flight, and the ``lost`` future its job holds.

    An object, not closures calling each other: those would be a reference
    cycle per wake, left to the garbage collector. Its references to itself
    (through the timer, the extension's callback, ``lost``'s callback) all end
    when the lease does: a fired or cancelled timer, a done task and a done
    future drop their callbacks.
    """

    __slots__ = ("claim", "held_until", "interval", "keeper", "lost", "retry", "task", "timer",
                 "ttl")

    def __init__(self, keeper: LeaseKeeper, claim: Claim) -> None:
        self.keeper = keeper
        self.claim = claim
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ttl = ttl = claim.lease_ttl_ms / 1000
        self.interval = max(0.2, ttl / 3)
        self.retry = max(0.05, ttl / 10)
        clock = keeper._clock
        self.held_until = clock.monotonic() + ttl  # as of the claim answer
        self.task: asyncio.Task[bool | LeaseLost] | None = None
        self.lost.add_done_callback(self._stop)
        self.timer: TimerHandle | None = clock.call_later(self.interval, self._extend)

    def _extend(self) -> None:
        self.timer = None
        if self.lost.done():
            return
        keeper = self.keeper
        started = keeper._clock.monotonic()
        left = max(self.retry, self.held_until - started)
        task = self.task = keeper._jobs.spawn(keeper._extend(self.claim, left),
                                              f"pullwake-lease[{self.claim.subscription_id}]")
        task.add_done_callback(functools.partial(self._extended, started=started))

    def _extended(self, t: asyncio.Task[bool | LeaseLost], *, started: float) -> None:
        self.task = None
        lost = self.lost
        if lost.done() or t.cancelled() or t.exception() is not None:
            return  # (an extension that raised is a bug, reported by the jobs)
        result = t.result()
        clock = self.keeper._clock
        if isinstance(result, LeaseLost):
            lost.set_exception(result)
        elif result:
            self.held_until = started + self.ttl
            self.timer = clock.call_later(self.interval, self._extend)
        else:
            self.timer = clock.call_later(self.retry, self._extend)

    def _stop(self, _f: asyncio.Future[None]) -> None:
        timer, task = self.timer, self.task
        self.timer = self.task = None
        if timer is not None:
            timer.cancel()
        if task is not None:  # an extension in flight: cancelled, awaited at stop
            task.cancel()
            strays = self.keeper._strays
            strays.add(task)
            task.add_done_callback(strays.discard)
