"""Lease keeping: a claimed wake's lease extended while its job runs.

This module owns the extensions of claim leases (an ``ack`` without offsets
every third of the TTL, on the injected clock) and the extensions cut short
when a job ends (awaited at stop). It decides only "held" or "lost": the job
(:mod:`.dispatch`) cancels the handler when the lease is lost.
"""

from __future__ import annotations

import asyncio
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
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ttl = claim.lease_ttl_ms / 1000
        interval = max(0.2, ttl / 3)
        retry = max(0.05, ttl / 10)
        clock = self._clock
        held_until = clock.monotonic() + ttl  # as of the claim answer
        timer: TimerHandle | None = None
        task: asyncio.Task[bool | LeaseLost] | None = None

        def extend() -> None:
            nonlocal timer, task
            timer = None
            if not lost.done():
                started = clock.monotonic()
                left = max(retry, held_until - started)
                task = self._jobs.spawn(self._extend(claim, left),
                                        f"pullwake-lease[{claim.subscription_id}]")
                task.add_done_callback(lambda t: extended(t, started))

        def extended(t: asyncio.Task[bool | LeaseLost], started: float) -> None:
            nonlocal timer, task, held_until
            task = None
            if lost.done() or t.cancelled() or t.exception() is not None:
                return  # (an extension that raised is a bug, reported by the jobs)
            result = t.result()
            if isinstance(result, LeaseLost):
                lost.set_exception(result)
            elif result:
                held_until = started + ttl
                timer = clock.call_later(interval, extend)
            else:
                timer = clock.call_later(retry, extend)

        def stop(_f: asyncio.Future[None]) -> None:
            if timer is not None:
                timer.cancel()
            if task is not None:  # an extension in flight: cancelled, awaited at stop
                task.cancel()
                self._strays.add(task)
                task.add_done_callback(self._strays.discard)

        lost.add_done_callback(stop)
        timer = self._clock.call_later(interval, extend)
        return lost

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
