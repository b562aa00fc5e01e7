"""Heartbeats: periodic, event-driven (throttled), coalesced, failure-counted.

Owns the heartbeat schedule of one runner while it is ``running`` (the spec's
``heartbeat`` work): one immediately at start, then every ``interval``; an
extra one at most every ``throttle`` seconds when diagnostics change (also
with ``interval`` 0, which turns off only the periodic ones; ``None`` turns
off both). While a
heartbeat is in flight, further requests coalesce into one follow-up. A
failure is retried at once (so a hung or failing server is confirmed quickly);
``events`` False turns the event-driven ones off (a control plane whose
heartbeat carries no diagnostics: an extra one would tell the server nothing).
``failures_before_reset`` consecutive failures call the owner's
``heartbeat_reset`` (the runner then fires ``STREAM_RESET``) and the count
starts again. Its owner (:class:`HeartbeatOwner`, the runner) sends each
heartbeat and is told each result.

Every timer goes through the injectable clock; :meth:`cancel` stops timers
and the in-flight request. The send function bounds each request itself
(``request_timeout``), so a hung heartbeat counts as a failure.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from pullwake.io.clock import Clock, TimerHandle
from pullwake.runtime.jobs import Jobs

__all__ = ["HeartbeatOwner", "Heartbeater"]


class HeartbeatOwner(Protocol):
    """What a :class:`Heartbeater` needs of the runner that owns it (the runner is one)."""

    async def send_heartbeat(self) -> None:
        """Send one heartbeat (bounded by the request timeout); raise if it failed."""
        ...

    def heartbeat_result(self, ok: bool, error: BaseException | None) -> None:
        """Each heartbeat's (or outside liveness check's) result."""
        ...

    def heartbeat_reset(self, error: BaseException) -> None:
        """``failures_before_reset`` failures in a row."""
        ...

    @property
    def jobs(self) -> Jobs: ...


class Heartbeater:
    def __init__(
        self,
        owner: HeartbeatOwner,
        *,
        clock: Clock,
        interval: float | None,
        throttle: float,
        failures_before_reset: int,
        events: bool = True,
    ) -> None:
        self._send = owner.send_heartbeat
        self._clock = clock
        self.interval = interval
        self.throttle = throttle
        self.failures_before_reset = failures_before_reset
        self._on_result = owner.heartbeat_result
        self._on_reset = owner.heartbeat_reset
        self._jobs = owner.jobs
        #: Event-driven heartbeats at all (see :meth:`notify`).
        self.events = events
        self._in_flight: asyncio.Task[Any] | None = None
        self._follow_up = False
        self._periodic: TimerHandle | None = None
        self._throttled: TimerHandle | None = None
        self._last_sent: float | None = None
        self.failures = 0
        self.active = False

    @property
    def enabled(self) -> bool:
        """Periodic heartbeats (``interval > 0``); event-driven ones unless ``None``."""
        return self.interval is not None and self.interval > 0

    def start(self) -> Heartbeater:
        """Begin: a heartbeat now, then every ``interval``. Returns self (cancellable).

        With ``interval`` 0 there is no periodic heartbeat, but diagnostics
        changes still send one (throttled), as the original runner does.
        """
        self.failures = 0
        self.active = self.interval is not None
        if self.enabled:
            self._request_now()
            self._schedule_periodic()
        return self

    def cancel(self) -> None:
        """Stop timers and the in-flight heartbeat."""
        self.active = False
        self._follow_up = False
        for handle in (self._periodic, self._throttled):
            if handle is not None:
                handle.cancel()
        self._periodic = self._throttled = None
        if self._in_flight is not None:
            self._in_flight.cancel()
            self._in_flight = None

    def notify(self) -> None:
        """Diagnostics changed: heartbeat soon, at most once per ``throttle`` window."""
        if not self.events or not self.active or self._throttled is not None:
            return
        now = self._clock.monotonic()
        delay = 0.0 if self._last_sent is None else max(0.0, self._last_sent + self.throttle - now)
        self._throttled = self._clock.call_later(delay, self._fire_throttled)

    def record(self, ok: bool, error: BaseException | None = None) -> bool:
        """Count one liveness result (a heartbeat, or a lease extension).

        Returns True when this failure completed a run of
        ``failures_before_reset`` and the owner's ``heartbeat_reset`` was called.
        """
        if ok:
            self.failures = 0
            self._on_result(True, None)
            return False
        self.failures += 1
        self._on_result(False, error)
        if self.failures >= self.failures_before_reset and error is not None:
            self.failures = 0
            self._on_reset(error)
            return True
        return False

    # ---------------------------------------------------------------- internals

    def _fire_throttled(self) -> None:
        self._throttled = None
        self._request_now()

    def _schedule_periodic(self) -> None:
        assert self.interval is not None
        self._periodic = self._clock.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        if not self.active:
            return
        self._request_now()
        self._schedule_periodic()

    def _request_now(self) -> None:
        if not self.active:
            return
        if self._in_flight is not None:
            self._follow_up = True
            return
        self._last_sent = self._clock.monotonic()
        self._in_flight = self._jobs.spawn(self._run(), "pullwake-heartbeat")

    async def _run(self) -> None:
        task = asyncio.current_task()
        try:
            await self._send()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure counts
            if not self.record(False, exc):
                self._follow_up = True  # confirm at once rather than an interval later
        else:
            self.record(True)
        finally:
            if self._in_flight is task:
                self._in_flight = None
        if self._follow_up and self.active:
            self._follow_up = False
            self._request_now()
