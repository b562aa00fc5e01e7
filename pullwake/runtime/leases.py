"""Lease keeping: a claimed wake's lease extended while its job runs.

This module owns the extensions of claim leases (an ``ack`` without offsets
every third of the TTL, on the injected clock) and the extensions cut short
when a job ends (awaited at stop). It decides only "held" or "lost": the job
(:mod:`.dispatch`) is called back when the lease is lost, and cancels the
handler.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pullwake.errors import LeaseLost, PullwakeError, SubscriptionError
from pullwake.io.clock import Clock, TimerHandle
from pullwake.io.http import HttpClient
from pullwake.runtime.jobs import Jobs
from pullwake.runtime.logs import job_context
from pullwake.runtime.subscriptions import NOT_FOUND, Claim, SubscriptionClient

if TYPE_CHECKING:
    from pullwake.runtime.health import WorkerStats

__all__ = ["Lease", "LeaseKeeper"]

#: An extension this close to due when the keeper's timer fires is sent now
#: (a timer may fire a hair early; sending it a millisecond early is harmless).
_EARLY_S = 0.001


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
        #: Leases waiting for their next extension, and when it is due. One
        #: timer for all of them (the soonest), not one per wake: a wake that
        #: ends before its first extension costs two dict operations.
        self._due: dict[Lease, float] = {}
        self._tick: TimerHandle | None = None
        self._tick_at = math.inf

    async def wait(self) -> None:
        """Await the extensions cut short by ended jobs (at stop); no timer is left."""
        if not self._due and self._tick is not None:
            self._tick.cancel()
            self._tick, self._tick_at = None, math.inf
        if self._strays:
            await self._jobs.settle(None, jobs=list(self._strays))

    def _due_at(self, lease: Lease, when: float) -> None:
        """``lease``'s next extension is due at ``when`` (on the clock)."""
        self._due[lease] = when
        if when < self._tick_at:  # sooner than the timer: (re)arm it
            if self._tick is not None:
                self._tick.cancel()
            self._arm(when)

    def _arm(self, when: float) -> None:
        self._tick_at = when
        self._tick = self._clock.call_later(max(0.0, when - self._clock.monotonic()), self._fire)

    def _fire(self) -> None:
        """The timer: extend the leases now due, arm it for the next one (if any).

        It may find none: a lease stopped since does not cancel it (that
        would cost a timer per wake); it then fires once for nothing.
        """
        self._tick, self._tick_at = None, math.inf
        due = self._due
        if not due:
            return
        now = self._clock.monotonic() + _EARLY_S
        for lease in [lease for lease, when in due.items() if when <= now]:
            del due[lease]
            lease._extend()
        if due:
            self._arm(min(due.values()))

    def keep(self, claim: Claim, lost: Callable[[LeaseLost], object]) -> Lease:
        """Extend the lease every third of its TTL; ``lost(error)`` once it is lost.

        :meth:`Lease.stop` stops the extensions. Between extensions nothing
        runs but the keeper's one timer (no task, no timer per wake): most wakes end before
        the first extension is due. An extension may take as long as the lease
        has left (a slow or loaded server is not a lost lease); one that failed
        is tried again after a tenth of the TTL, not a third, so a single slow
        answer does not let the lease run out.
        """
        return Lease(self, claim, lost)

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


class Lease:
    """One claim's extensions (:meth:`LeaseKeeper.keep`): its due time at the
    keeper, at most one extension in flight, and the job's ``lost`` callback,
    called only when the lease is lost.

    A plain object, not a future, nor a timer of its own: the common wake ends
    before the first extension is due, and :meth:`stop` then takes it off the
    keeper's due list, nothing more (no future, no timer, no callback
    scheduled). Nor closures calling each other: those would be a reference
    cycle per wake, left to the garbage collector. Its references to itself
    (the keeper's due list, the extension's callback) and to its job
    (``lost``) all end when it stops or is lost.
    """

    __slots__ = ("_claim", "_held_until", "_interval", "_keeper", "_lost", "_retry", "_task",
                 "_ttl")

    def __init__(self, keeper: LeaseKeeper, claim: Claim,
                 lost: Callable[[LeaseLost], object]) -> None:
        self._keeper = keeper
        self._claim = claim
        self._lost: Callable[[LeaseLost], object] | None = lost
        self._ttl = ttl = claim.lease_ttl_ms / 1000
        self._interval = max(0.2, ttl / 3)
        self._retry = max(0.05, ttl / 10)
        now = keeper._clock.monotonic()
        self._held_until = now + ttl  # as of the claim answer
        self._task: asyncio.Task[bool | LeaseLost] | None = None
        keeper._due_at(self, now + self._interval)

    def stop(self) -> None:
        """No more extensions (the job is over, or acks or releases now); idempotent.

        An extension in flight is cancelled and awaited at stop
        (:meth:`LeaseKeeper.wait`); ``lost`` is never called after this.
        """
        if self._lost is None and self._task is None:
            return
        keeper, task = self._keeper, self._task
        self._task = None
        self._lost = None
        keeper._due.pop(self, None)
        if task is not None:
            task.cancel()
            strays = keeper._strays
            strays.add(task)
            task.add_done_callback(strays.discard)

    def _extend(self) -> None:
        """Due: send one extension (the keeper's timer calls it)."""
        keeper = self._keeper
        started = keeper._clock.monotonic()
        left = max(self._retry, self._held_until - started)
        claim = self._claim
        task = self._task = keeper._jobs.spawn(
            keeper._extend(claim, left), f"pullwake-lease[{claim.subscription_id}]",
            context=job_context(subscription=claim.subscription_id, wake=claim.generation))
        task.add_done_callback(functools.partial(self._extended, started=started))

    def _extended(self, t: asyncio.Task[bool | LeaseLost], *, started: float) -> None:
        if self._task is not t:
            return  # stopped meanwhile (and cancelled)
        self._task = None
        lost = self._lost
        if lost is None or t.cancelled() or t.exception() is not None:
            return  # (an extension that raised is a bug, reported by the jobs)
        result = t.result()
        keeper = self._keeper
        if isinstance(result, LeaseLost):
            self._lost = None
            lost(result)
        elif result:
            self._held_until = started + self._ttl
            keeper._due_at(self, keeper._clock.monotonic() + self._interval)
        else:
            keeper._due_at(self, keeper._clock.monotonic() + self._retry)
