"""Claims: turning wake hints into dispatched work, one claim per key at a time.

Owns the claim tasks of one runner. A wake is a hint; the claim decides.

- Wakes with the same claim key (the stream path; the subscription in the
  Durable Streams profile) are claimed one at a time: a wake arriving while
  one is in flight is counted as skipped and deferred, then claimed again
  when the first settles (keeping only the latest deferred wake).
- If the runtime reports that key as still active, the wake is held back
  (the latest one per key) and claimed the moment the runtime says the key
  is free (:meth:`ClaimScheduler.runtime_free`, an event). A runtime that
  says so (``notifies_wake_free``, the Worker) is never polled: a held wake
  costs no timer and waits for that event. Only a runtime that cannot say so
  is asked again every ``busy_retry`` seconds (on the injectable clock), as
  the original runner does.
- Claims run concurrently with reading the stream and with each other.
- Every per-key table is bounded: at most ``max_keys`` keys have a claim in
  flight or a wake held back; a wake for one more key is dropped with a
  record (a reported ``ControlPlaneError``, counted as a failed claim).
- :meth:`close` (stop began) stops all dispatching: a claim that completes
  afterwards is not dispatched. :meth:`settle` gives in-flight claims a
  grace period, then cancels them.
- Each claim is one job of the runner's :class:`~pullwake.runtime.jobs.Jobs`
  (its grace, cancellation and failure go through it). An awaitable that the
  runtime's ``dispatch_wake`` returns runs on in that same job once the claim
  is settled: one task per wake, however the runtime does its work. A wake
  held back for a key that its own work frees (the runtime says so from that
  work's task, when it acks) is claimed next in that same task once the work
  is over, as a bare loop would: no new task per wake while a key stays busy.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any, Protocol

from pullwake.errors import ControlPlaneError, RequestTimeout
from pullwake.io.clock import Clock, TimerHandle
from pullwake.io.http import HttpClient
from pullwake.runtime.control import ControlPlane, WakeEvent
from pullwake.runtime.health import Stats
from pullwake.runtime.jobs import Jobs
from pullwake.runtime.logs import LabelledLog
from pullwake.runtime.ports import RuntimeHooks

__all__ = ["ClaimOwner", "ClaimScheduler", "failure_reason"]

log = logging.getLogger("pullwake.claims")

#: Distinct keys with a claim in flight or held back, at most (every per-key
#: table here is a subset of those keys, so each is bounded by it).
MAX_CLAIM_KEYS = 10_000


def failure_reason(error: BaseException) -> str:
    """A bounded label for a failed claim: timeout, transport, http_4xx, http_5xx, other."""
    if isinstance(error, RequestTimeout | TimeoutError):
        return "timeout"
    if isinstance(error, ControlPlaneError):
        if error.status is None:
            return "transport"
        return "http_5xx" if error.status >= 500 else "http_4xx"
    return "other"


class ClaimOwner(Protocol):
    """What a :class:`ClaimScheduler` needs of the runner that owns it (the runner is one).

    ``report`` records an error (health, log, ``on_error``); ``activity``
    says something a heartbeat reports has changed; ``jobs`` owns the
    runner's tasks (each claim is one); ``claim_headers``/``claim_token_header`` go with each
    dispatched wake; ``log`` carries the runner's id.
    """

    @property
    def http(self) -> HttpClient: ...

    @property
    def claim_token_header(self) -> str | None: ...

    @property
    def log(self) -> LabelledLog: ...

    async def claim_headers(self) -> dict[str, str]: ...

    def report(self, error: object, *, where: str = ..., quiet: bool = ...) -> None: ...

    def activity(self) -> None: ...

    @property
    def jobs(self) -> Jobs: ...


class ClaimScheduler:
    """The claims of one runner (see the module docstring).

    ``owner`` is the runner (:class:`ClaimOwner`); ``runtime`` the runtime's
    resolved hooks (:class:`~pullwake.runtime.ports.RuntimeHooks`). Results go
    to ``stats`` and, through the owner, to health and the log.
    """

    def __init__(
        self,
        owner: ClaimOwner,
        *,
        control: ControlPlane,
        runtime: RuntimeHooks,
        clock: Clock,
        stats: Stats,
        busy_retry: float,
        max_keys: int = MAX_CLAIM_KEYS,
        activity: Callable[[], None] | None = None,
    ) -> None:
        self.max_keys = max_keys
        #: Wakes dropped because ``max_keys`` keys were already busy (each reported).
        self.dropped = 0
        self._owner = owner
        self._control = control
        self._runtime = runtime.runtime
        self._is_active = runtime.is_wake_active
        self._clock = clock
        self._stats = stats
        #: How often a held wake re-asks a runtime that never announces free keys.
        self._busy_retry: float | None = None if runtime.notifies_wake_free else busy_retry
        self._log = LabelledLog(log, owner.log.label)  # the runner's id, this module's logger
        #: Says something a heartbeat reports changed (default: ``owner.activity``).
        self._notify = activity if activity is not None else owner.activity
        self._jobs = owner.jobs
        self._in_flight: dict[str, asyncio.Task[Any]] = {}
        self._held: dict[str, WakeEvent] = {}  # keys waiting for the runtime, each's wake
        self._retries: dict[str, TimerHandle] = {}  # their re-ask timers (busy_retry only)
        self._deferred: dict[str, WakeEvent] = {}
        #: Keys whose dispatched work runs on in its claim's task, and that task.
        self._working: dict[str, asyncio.Task[Any]] = {}
        #: The wake each of those tasks claims next, once its work is over.
        self._next: dict[str, WakeEvent] = {}
        self._open = False
        #: Held-back wakes re-checked because the retry timer fired (not an event).
        self.busy_retries = 0

    # ------------------------------------------------------------------ public

    def open(self) -> None:
        """A new run: dispatching allowed again."""
        self._open = True

    def close(self) -> None:
        """Stop began: nothing is dispatched any more; pending retries are dropped."""
        self._open = False
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        self._held.clear()
        self._deferred.clear()
        for key in self._next:  # freed wakes a job's task was to claim next: dropped too
            if self._in_flight.get(key) is self._working.get(key):
                del self._in_flight[key]
        self._next.clear()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight) + len(self._held)

    def submit(self, wake: WakeEvent) -> None:
        """Claim ``wake`` now, or defer it behind the claim already running for its key."""
        if not self._open:
            return
        key = self._control.claim_key(wake)
        if key in self._in_flight or key in self._held:
            self._stats.count_skip("in_flight")
            self._deferred[key] = wake
            self._notify()
            return
        if len(self._in_flight) + len(self._held) >= self.max_keys:
            # A flood of distinct keys (thousands of never-seen stream names)
            # must not grow memory without bound: this hint is dropped, with a
            # record. The server keeps the work; its next wake is claimed.
            self.dropped += 1
            self.record_failure(ControlPlaneError(
                f"{self.max_keys} keys already have a claim in flight or held back: "
                f"the wake for {key[:200]!r} is dropped (its work stays on the server)",
                operation="claim"))
            return
        self._start(key, wake)

    def runtime_free(self, key: str | None = None) -> None:
        """The runtime finished with ``key`` (None: any key may be free): claim what
        was held back for it now, instead of at the next retry."""
        if not self._open or not self._held:
            return
        for k in [key] if key is not None else list(self._held):
            if k not in self._held or self._runtime_busy(k):
                continue
            handle = self._retries.pop(k, None)
            if handle is not None:
                handle.cancel()
            task = self._working.get(k)
            if task is not None and task is asyncio.current_task():
                # Freed by its own work (it acked): that task claims it next, once
                # the work is over; in flight from now on, as a spawned claim is.
                self._in_flight[k] = task
                self._next[k] = self._take_held(k)
            else:
                self._spawn_claim(k, self._take_held(k))

    def record_failure(self, error: BaseException) -> None:
        """Count and report one failed claim attempt (final, or about to be retried)."""
        self._stats.count_claim_failure(failure_reason(error))
        self._stats.last_claim_result = "error"
        self._notify()
        self._owner.report(error)

    async def settle(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for in-flight claims, then cancel the rest.

        The grace runs on the injectable clock, like every other timeout.
        """
        pending = await self._jobs.settle(grace, jobs=list(self._in_flight.values()))
        if pending:
            self._log.warning("abandoned %d claim(s) still unanswered after the %.3gs grace",
                        len(pending), grace)

    # ---------------------------------------------------------------- internals

    def _start(self, key: str, wake: WakeEvent) -> None:
        if self._runtime_busy(key):
            self._stats.count_skip("busy")
            self._notify()
            self._wait_for_runtime(key, wake)
            return
        self._spawn_claim(key, wake)

    def _spawn_claim(self, key: str, wake: WakeEvent) -> None:
        self._in_flight[key] = self._jobs.spawn(self._claim(key, wake),
                                                f"pullwake-claim:{key[:64]}")

    def _take_held(self, key: str) -> WakeEvent:
        """The latest wake for a waiting key (a deferred one is newer than the held one)."""
        held = self._held.pop(key)
        return self._deferred.pop(key, held)

    def _runtime_busy(self, key: str) -> bool:
        check = self._is_active
        if check is None:
            return False
        try:
            return bool(check(key))
        except Exception:  # noqa: BLE001 - logged with its traceback; the key counts as free
            self._log.exception("runtime.is_wake_active raised; treating %r as free", key)
            return False

    def _wait_for_runtime(self, key: str, wake: WakeEvent) -> None:
        self._held[key] = wake
        if self._busy_retry is not None:  # a runtime that never says: ask again later
            self._retries[key] = self._clock.call_later(self._busy_retry, self._retry, key)

    def _retry(self, key: str) -> None:
        """The re-ask timer fired (a runtime that does not announce free keys)."""
        if self._retries.pop(key, None) is None or not self._open:
            return
        self.busy_retries += 1
        wake = self._take_held(key)
        if self._runtime_busy(key):
            self._wait_for_runtime(key, wake)
        else:
            self._spawn_claim(key, wake)

    async def _claim(self, key: str, wake: WakeEvent) -> None:
        task = asyncio.current_task()
        assert task is not None
        stats = self._stats
        while True:
            work: Awaitable[Any] | None = None
            try:
                stats.last_claim_at = self._clock.time()
                try:
                    outcome = await self._control.claim(self._owner.http, wake)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported, never raised
                    self.record_failure(exc)
                    return
                if not outcome.claimed:
                    stats.count_skip("no_work")
                    stats.last_claim_result = "no_work"
                    self._notify()
                    return
                stats.claims_succeeded += 1
                stats.last_claim_result = "claimed"
                if not self._open:
                    self._log.info("claim for %r completed after stop began: not dispatched",
                                   key)
                    self._notify()
                    return
                work = self._dispatch(outcome.notification or {})
                # The job runs on in this frame: what it no longer needs goes now, not
                # when the job ends (fewer objects alive for the collector to visit).
                del outcome, wake
            finally:
                if self._in_flight.get(key) is task:
                    del self._in_flight[key]
                deferred = self._deferred.pop(key, None)
                if deferred is not None and self._open:
                    self._start(key, deferred)
            if work is None:
                return
            # The runtime's work for this wake runs on in this job (one task per
            # wake, not one more). The claim is settled: the key is the runtime's
            # now (``is_wake_active``), and stop drains it (``drain_wakes``).
            self._working[key] = task
            over = False
            try:
                await work
                over = True
            finally:
                del work
                if self._working.get(key) is task:
                    del self._working[key]
                after = self._next.pop(key, None)
                if after is not None and not (over and self._open):
                    # The work ended otherwise (cancelled, a stop began): the wake
                    # it freed is not claimed here; a claim of its own, if still open.
                    if self._in_flight.get(key) is task:
                        del self._in_flight[key]
                    if self._open:
                        self._spawn_claim(key, after)
                    after = None
            if after is None:
                return
            wake = after  # freed by the work just over (runtime_free): claim it here
            task.set_name(f"pullwake-claim:{key[:64]}")

    def _dispatch(self, notification: Any) -> Awaitable[Any] | None:
        try:
            result = self._runtime.dispatch_wake(
                notification,
                claim_headers=self._owner.claim_headers,
                claim_token_header=self._owner.claim_token_header,
            )
        except Exception as exc:  # noqa: BLE001 - a runtime bug must not kill the runner
            self._owner.report(exc)
            return None
        self._stats.last_dispatch_at = self._clock.time()
        self._notify()
        if result is None:
            return None
        return result if type(result) is CoroutineType or inspect.isawaitable(result) else None
