"""Recovery: what a worker does when the server forgot its wake stream or subscriptions.

This module owns the worker's ledger (per subscription, the acked offset of
each stream it knows of, bounded), re-creating a forgotten wake stream or
subscription, and handing the ranges a re-created subscription skipped to
the handler as *recovered* wakes (at least once: retried like wakes until
handled or dead-lettered, never dropped without a record). It runs the
handler and writes dead-letter records through its :class:`RecoveryHost`
(the worker's runtime, :mod:`.dispatch`), so a recovered wake fails, cools
down and is dead-lettered exactly like a claimed one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pullwake.errors import PullwakeError
from pullwake.io.clock import Clock, sleep
from pullwake.io.http import HttpClient
from pullwake.runtime.bounded import BoundedTable
from pullwake.runtime.failures import FailurePolicy, WakeFailures
from pullwake.runtime.jobs import Jobs
from pullwake.runtime.logs import LabelledLog, job_context
from pullwake.runtime.subscriptions import ClaimedStream, SubscriptionClient, SubscriptionConfig
from pullwake.runtime.wake import Wake, WakeReader

if TYPE_CHECKING:
    from pullwake.runtime.health import WorkerStats

__all__ = ["Recovery", "RecoveryHost"]


class RecoveryHost(Protocol):
    """What recovery needs of the runtime: run the handler, count failures, dead-letter."""

    async def attempt(self, wake: Wake) -> BaseException | None: ...

    def handler_failed(self, wake: Wake, fails: WakeFailures, error: BaseException) -> float: ...

    async def dead_letter(self, wake: Wake, fails: WakeFailures, *, reason: str) -> bool: ...

    def report(self, error: BaseException) -> None: ...


class Recovery:
    """The ledger and the re-creations of one worker (see the module docstring)."""

    def __init__(self, host: RecoveryHost, client: SubscriptionClient, *,
                 subscriptions: Mapping[str, SubscriptionConfig], wake_stream: str,
                 reader: WakeReader, failure_policy: FailurePolicy, clock: Clock,
                 stats: WorkerStats, log: LabelledLog, max_tracked_streams: int,
                 jobs: Jobs) -> None:
        self._host = host
        self._jobs = jobs
        self._client = client
        self.subscriptions = subscriptions
        self.wake_stream = wake_stream
        self._reader = reader
        self.failure_policy = failure_policy
        self._clock = clock
        self.stats = stats
        self._log = log
        self._recoveries: set[asyncio.Task[Any]] = set()
        #: Subscriptions this worker created or found: one missing later was forgotten.
        self.confirmed: set[str] = set()
        #: Per subscription, the acked offset of each stream we know of (for
        #: recovery after a server restart). Keyed by server-chosen paths, so
        #: bounded (issue 14, class 8): a forgotten stream is recovered from
        #: its beginning (more repeats, never a loss).
        self._ledger_capacity = max_tracked_streams
        self.ledger: dict[str, BoundedTable[str, str]] = {
            s: BoundedTable(max_tracked_streams) for s in subscriptions}

    @property
    def tasks(self) -> set[asyncio.Task[Any]]:
        """The recoveries running (a stop gives them the jobs' grace)."""
        return self._recoveries

    # ================================================================ ledger

    def ledger_of(self, sub_id: str) -> BoundedTable[str, str]:
        ledger = self.ledger.get(sub_id)
        if ledger is None:  # only configured subscriptions are claimed: bounded too
            ledger = self.ledger[sub_id] = BoundedTable(self._ledger_capacity)
        return ledger

    def learn(self, sub_id: str, streams: Sequence[ClaimedStream]) -> None:
        ledger = self.ledger_of(sub_id)
        for s in streams:
            if s.acked_offset > ledger.get(s.path, "-1"):
                ledger[s.path] = s.acked_offset

    def acked(self, sub_id: str, acks: Sequence[tuple[str, str]]) -> None:
        ledger = self.ledger[sub_id]
        for path, offset in acks:
            if offset > ledger.get(path, "-1"):
                ledger[path] = offset

    def _advance_ledger(self, wake: Wake, *, read: bool) -> None:
        ledger = self.ledger_of(wake.subscription_id)
        for s in wake.streams:
            end = max(s.tail_offset, wake._read.get(s.path, "")) if read else s.tail_offset
            if end > ledger.get(s.path, "-1"):
                ledger[s.path] = end

    # ============================================================ re-creation

    async def recreate_wake_stream(self, http: HttpClient) -> bool:
        """The server forgot the wake stream (404): it is ours, so create it again.

        The subscriptions are re-created (and recovered) once the stream is
        connected again (:meth:`on_connected`).
        """
        created = await self._client.ensure_stream(http, self.wake_stream)
        if created:
            self.stats.wake_streams_recreated += 1
            self._log.warning("wake stream %r was gone (server restart?): re-created",
                              self.wake_stream)
        return created

    async def on_connected(self, http: HttpClient) -> None:
        """After every (re)connect: the server may have restarted and forgotten us."""
        for sub in self.subscriptions.values():
            await self.recreate(http, sub)

    async def recreate(self, http: HttpClient, sub: SubscriptionConfig) -> None:
        # What we knew acked *before* the PUT: once the new subscription
        # exists, claims on it teach the ledger its fresh (skipped-to) offsets.
        known = dict(self.ledger_of(sub.id))
        created = await self._client.ensure_subscription(http, sub)
        if not created:
            return
        if sub.id in self.confirmed:
            self.stats.subscriptions_recreated += 1
            self._log.warning("subscription %r was gone (server restart?): re-created",
                              sub.id)
            task = self._jobs.spawn(self._recover(http, sub, known), f"pullwake-recover[{sub.id}]",
                                    context=job_context(subscription=sub.id))
            self._recoveries.add(task)
            task.add_done_callback(self._recoveries.discard)
        self.confirmed.add(sub.id)

    async def cancel(self) -> None:
        if self._recoveries:
            await self._jobs.cancel(list(self._recoveries))

    # ============================================================== recovery

    async def _recover(self, http: HttpClient, sub: SubscriptionConfig,
                       known: Mapping[str, str]) -> None:
        """Hand over ranges the re-created subscription skipped (at least once).

        The new subscription starts every stream at its tail, so
        ``(known, acked now]`` may never have reached a handler, and nothing
        else will ever hand it over. So the range, once looked up, is handed
        to the handler until an attempt succeeds or the retry policy gives it
        up to the dead-letter stream, whatever the handler raised (a
        ``BaseException`` or ``CancelledError`` of its own included), cooling
        down between attempts like a wake. A failed look-up is retried the
        same way. A subscription listing more streams than one look-up
        returns is recovered in rounds (``streams_deferred``), each its own
        recovered wake. If the worker stops first, the range is dead-lettered
        (``reason: "stopped"``) or, without a dead-letter stream, logged at
        ERROR: never dropped without a record.
        """
        host = self._host
        lookups = self.failure_policy.backoff()
        known = dict(known)  # rounds: a subscription may list more than one wake holds

        def skipped(s: Mapping[str, Any]) -> bool:
            return str(s.get("acked_offset")) > known.get(str(s.get("path")), "-1")

        fails = WakeFailures(backoff=self.failure_policy.backoff())
        wake: Wake | None = None
        more = False
        delay = 0.0
        try:
            while True:
                if delay:
                    await sleep(self._clock, delay)
                    delay = 0.0
                if wake is None:
                    try:
                        body = await self._client.get_subscription(http, sub.id, select=skipped)
                    except PullwakeError as exc:
                        delay = lookups.next_delay()
                        host.report(exc)
                        continue
                    if body is None:  # gone again: it will be re-created; keep our range
                        delay = lookups.next_delay()
                        continue
                    lookups.reset()
                    streams = []
                    for s in body.get("streams", []):
                        path, server_acked = str(s.get("path")), str(s.get("acked_offset"))
                        start = known.get(path, "-1")
                        if server_acked > start:
                            streams.append(ClaimedStream(path=path, acked_offset=start,
                                                         tail_offset=server_acked))
                    if not streams:
                        return
                    more = bool(body.get("streams_deferred"))
                    wake = Wake(subscription_id=sub.id, wake_id=None, generation=None,
                                streams=tuple(streams), recovered=True, _reader=self._reader)
                    fails = WakeFailures(backoff=self.failure_policy.backoff())
                if not fails.dead:
                    error = await host.attempt(wake)
                    if error is None:
                        self.stats.recovered_wakes += 1
                        self._advance_ledger(wake, read=True)
                    else:
                        delay = host.handler_failed(wake, fails, error)
                        if not self.failure_policy.exhausted(fails.attempts):
                            continue
                        fails.dead = True
                if fails.dead:
                    if not await host.dead_letter(wake, fails, reason="max_attempts"):
                        delay = fails.cool(self._clock.monotonic())
                        continue
                    self._advance_ledger(wake, read=False)
                    delay = 0.0
                for s in wake.streams:  # this round is done: the next starts after it
                    known[s.path] = s.tail_offset
                wake = None
                if not more:
                    return
        except asyncio.CancelledError:
            await self._recovery_unfinished(sub, wake, fails, known)
            raise

    async def _recovery_unfinished(self, sub: SubscriptionConfig, wake: Wake | None,
                                   fails: WakeFailures, known: Mapping[str, str]) -> None:
        """A recovery cut short by stop: dead-letter its range, or say so at ERROR."""
        if wake is None:
            self._log.error("stopped before the range the re-created subscription %r "
                            "skipped was looked up: messages after %s were not handed over",
                            sub.id, dict(known) or "the start of each stream")
            return
        if self.failure_policy.dead_letter_stream is not None and \
                await self._host.dead_letter(wake, fails, reason="stopped"):
            return
        ranges = ", ".join(f"{s.path} ({s.acked_offset}, {s.tail_offset}]" for s in wake.streams)
        self._log.error("stopped before the recovered range of %r was handled (%d failed "
                        "attempt(s)); the server counts it as acked, so nothing will hand it "
                        "over again: %s", sub.id, fails.attempts, ranges)
