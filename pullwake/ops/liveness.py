"""The event-loop watchdog behind ``/livez``, and the readiness rule behind ``/readyz``.

This module owns what "alive" and "ready" mean for a worker process:

- :class:`LoopWatch` ticks every ``interval`` seconds on the injectable clock
  and measures how late each tick ran (the loop's lag). The loop is *not
  live* when the last tick is older than ``interval + max_lag`` (the watchdog
  stopped running) or a tick ran more than ``max_lag`` late within the last
  ``hold`` seconds (something blocked the loop: a sync call in an async
  handler, a CPU-bound callback). While the loop is blocked nothing on it can
  answer, so a probe times out, which a kubelet counts as a failure too.
- :func:`readiness` decides from a health snapshot: ready means streaming
  (the wake stream is open) and the control plane answering (no liveness
  failure since the last success), i.e. able to take work.

No I/O here: the health server (:mod:`pullwake.ops.healthserver`) serves both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pullwake.io.clock import Clock, TimerHandle

__all__ = ["LoopWatch", "readiness"]


class LoopWatch:
    def __init__(self, clock: Clock, *, interval: float = 1.0, max_lag: float = 5.0,
                 hold: float | None = None) -> None:
        if interval <= 0 or max_lag <= 0:
            raise ValueError("LoopWatch interval and max_lag must be > 0")
        self._clock = clock
        self.interval = interval
        self.max_lag = max_lag
        self.hold = hold if hold is not None else max(max_lag, 3 * interval)
        self.lag = 0.0
        self.worst_lag = 0.0
        self.stalls = 0
        self.last_tick: float | None = None
        self.last_stall_at: float | None = None
        self._due = 0.0
        self._handle: TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        if self._handle is not None:
            return
        now = self._clock.monotonic()
        self.last_tick = now
        self._schedule(now)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        self._due = now + self.interval
        self._handle = self._clock.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        now = self._clock.monotonic()
        self.lag = max(0.0, now - self._due)
        self.worst_lag = max(self.worst_lag, self.lag)
        if self.lag > self.max_lag:
            self.stalls += 1
            self.last_stall_at = now
        self.last_tick = now
        self._schedule(now)

    def check(self) -> dict[str, Any]:
        """``{"live": bool, "reason": str | None, ...figures}`` as of now."""
        now = self._clock.monotonic()
        reason = None
        if self._handle is None or self.last_tick is None:
            reason = "the event-loop watchdog is not running"
        elif now - self.last_tick > self.interval + self.max_lag:
            reason = (f"the event-loop watchdog last ran {now - self.last_tick:.3g}s ago "
                      f"(limit {self.interval + self.max_lag:.3g}s)")
        elif self.last_stall_at is not None and now - self.last_stall_at <= self.hold:
            reason = (f"the event loop was blocked: a watchdog tick ran {self.lag:.3g}s late "
                      f"(limit {self.max_lag:.3g}s)" if self.lag > self.max_lag else
                      f"the event loop was blocked {now - self.last_stall_at:.3g}s ago "
                      f"(limit {self.max_lag:.3g}s late)")
        return {
            "live": reason is None,
            "reason": reason,
            "loop_lag_s": round(self.lag, 4),
            "worst_loop_lag_s": round(self.worst_lag, 4),
            "loop_stalls": self.stalls,
            "max_loop_lag_s": self.max_lag,
        }


def readiness(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """``{"ready": bool, "status": str, "reasons": [...]}`` for a health snapshot."""
    reasons: list[str] = []
    status = snapshot.get("status")
    if status != "streaming":
        reasons.append(f"lifecycle state is {status!r}, not 'streaming'")
    elif not snapshot.get("stream_connected"):
        reasons.append("the wake stream is not connected")
    failures = snapshot.get("heartbeat_failures") or 0
    if failures:
        reasons.append(f"{failures} liveness call(s) to the control plane failed in a row")
    return {"ready": not reasons, "status": status, "reasons": reasons}
