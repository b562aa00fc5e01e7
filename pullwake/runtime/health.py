"""The health snapshot: what a runner reports to operators and in heartbeats.

Owns the :class:`Health` frozen dataclass (the original's fields plus a few
extras), :class:`Stats`, the mutable counters a runner updates, and
:class:`SubscriptionStats`, a worker's per-subscription counters and lag.
``status`` is always the lifecycle machine's state. Nothing here holds a
secret: errors are stored as scrubbed text.

One snapshot feeds every view: ``/health`` serves it as JSON, ``/readyz``
and ``/livez`` decide from it, ``/metrics`` (:mod:`pullwake.ops.metrics`) reads
its counters, and the status page renders it. A counter added here and to
the snapshot is exported by adding one row to :data:`pullwake.ops.metrics.METRICS`.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pullwake.io.clock import iso

__all__ = ["RECENT_ERRORS", "RECENT_TRANSITIONS", "Health", "Stats", "SubscriptionStats",
           "WorkerStats"]

#: How many recent lifecycle transitions and errors a snapshot keeps.
RECENT_TRANSITIONS = 40
RECENT_ERRORS = 20


@dataclass
class Stats:
    """Mutable counters and timestamps (epoch seconds) owned by one runner."""

    started_at: float | None = None
    stream_connected: bool = False
    stream_connected_since: float | None = None
    reconnect_count: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_heartbeat_at: float | None = None
    last_heartbeat_ok: bool = False
    heartbeat_failures: int = 0
    last_claim_at: float | None = None
    last_claim_result: str | None = None
    last_dispatch_at: float | None = None
    events_received: int = 0
    claims_succeeded: int = 0
    claims_skipped: int = 0
    claims_failed: int = 0
    messages_rejected: int = 0
    heartbeats_ok: int = 0
    heartbeats_failed: int = 0
    #: claims_skipped split by reason: ``in_flight`` (a claim for the key is
    #: running), ``busy`` (the runtime still works on the key), ``no_work``
    #: (the server answered that there is nothing to claim).
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    #: claims_failed split by reason: ``timeout``, ``transport`` (no answer),
    #: ``http_4xx``, ``http_5xx``, ``other``.
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    transitions: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT_TRANSITIONS))
    errors: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))

    def count_skip(self, reason: str) -> None:
        self.claims_skipped += 1
        self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1

    def count_claim_failure(self, reason: str) -> None:
        self.claims_failed += 1
        self.failed_by_reason[reason] = self.failed_by_reason.get(reason, 0) + 1

    def note_transition(self, at: float, source: str, event: str, dest: str) -> None:
        self.transitions.append({"at": iso(at), "source": source, "event": event, "dest": dest})

    def note_error(self, at: float, where: str, text: str) -> None:
        """Record one (already scrubbed) error: last_error and the recent list."""
        self.last_error = text
        self.last_error_at = at
        self.errors.append({"at": iso(at), "where": where, "error": text})

    def reset_for_start(self, now: float) -> None:
        """A new run: heartbeat failure state resets (counters are cumulative)."""
        self.started_at = now
        self.heartbeat_failures = 0
        self.last_heartbeat_ok = False
        self.stream_connected = False
        self.stream_connected_since = None


@dataclass(frozen=True)
class Health:
    """A point-in-time snapshot of a runner. ``status`` is the machine's state."""

    running: bool
    status: str
    offset: str | None
    started_at: str | None
    stream_connected: bool
    stream_connected_since: str | None
    reconnect_count: int
    last_error: str | None
    last_error_at: str | None
    last_heartbeat_at: str | None
    last_heartbeat_ok: bool
    last_claim_at: str | None
    last_claim_result: str | None
    last_dispatch_at: str | None
    events_received: int
    claims_succeeded: int
    claims_skipped: int
    claims_failed: int
    runner_id: str = ""
    claims_in_flight: int = 0
    messages_rejected: int = 0
    heartbeat_failures: int = 0
    state_path: str = ""
    heartbeats_ok: int = 0
    heartbeats_failed: int = 0
    claims_skipped_by_reason: dict[str, int] = field(default_factory=dict)
    claims_failed_by_reason: dict[str, int] = field(default_factory=dict)
    recent_transitions: tuple[dict[str, Any], ...] = ()
    recent_errors: tuple[dict[str, Any], ...] = ()

    @classmethod
    def build(cls, *, running: bool, status: str, offset: str | None, stats: Stats,
              runner_id: str, claims_in_flight: int, state_path: str = "") -> Health:
        return cls(
            running=running,
            status=status,
            offset=offset,
            started_at=iso(stats.started_at),
            stream_connected=stats.stream_connected,
            stream_connected_since=iso(stats.stream_connected_since),
            reconnect_count=stats.reconnect_count,
            last_error=stats.last_error,
            last_error_at=iso(stats.last_error_at),
            last_heartbeat_at=iso(stats.last_heartbeat_at),
            last_heartbeat_ok=stats.last_heartbeat_ok,
            last_claim_at=iso(stats.last_claim_at),
            last_claim_result=stats.last_claim_result,
            last_dispatch_at=iso(stats.last_dispatch_at),
            events_received=stats.events_received,
            claims_succeeded=stats.claims_succeeded,
            claims_skipped=stats.claims_skipped,
            claims_failed=stats.claims_failed,
            runner_id=runner_id,
            claims_in_flight=claims_in_flight,
            messages_rejected=stats.messages_rejected,
            heartbeat_failures=stats.heartbeat_failures,
            state_path=state_path or status,
            heartbeats_ok=stats.heartbeats_ok,
            heartbeats_failed=stats.heartbeats_failed,
            claims_skipped_by_reason=dict(stats.skipped_by_reason),
            claims_failed_by_reason=dict(stats.failed_by_reason),
            recent_transitions=tuple(stats.transitions),
            recent_errors=tuple(stats.errors),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def diagnostics(self) -> dict[str, Any]:
        """The heartbeat's ``diagnostics``: the snapshot minus running, offset and the
        recent transition/error lists (those are for operators, not the server)."""
        d = self.to_dict()
        for key in ("running", "offset", "recent_transitions", "recent_errors"):
            d.pop(key)
        return d


@dataclass
class WorkerStats:
    """A worker's counters (``health()["worker"]``), cumulative across restarts."""

    wakes_claimed: int = 0
    wakes_handled: int = 0
    wakes_acked: int = 0
    wakes_released: int = 0
    handler_errors: int = 0
    handler_timeouts: int = 0
    handlers_abandoned: int = 0
    dead_lettered: int = 0
    dead_letter_failures: int = 0
    leases_lost: int = 0
    lease_extensions: int = 0
    recovered_wakes: int = 0
    subscriptions_recreated: int = 0
    wake_streams_recreated: int = 0
    jobs_active: int = 0


@dataclass
class SubscriptionStats:
    """One subscription of a worker: counters, the wake in hand, and its lag.

    Times are on the worker's clock (``monotonic``). A subscription has unacked
    work from the first wake seen for it until a handled wake is acked; a wake
    that arrives while a claimed wake is being handled starts the next period.
    """

    wakes_seen: int = 0
    wakes_claimed: int = 0
    wakes_handled: int = 0
    wakes_acked: int = 0
    wakes_released: int = 0
    handler_errors: int = 0
    handler_timeouts: int = 0
    dead_lettered: int = 0
    dead_letter_failures: int = 0
    leases_lost: int = 0
    #: The last handler failure (scrubbed text) and when (epoch seconds).
    last_error: str | None = None
    last_error_at: float | None = None
    generation: int | None = None
    handling_since: float | None = None
    unacked_since: float | None = None
    pending_streams: tuple[str, ...] = ()
    _next_since: float | None = field(default=None, repr=False)

    def wake_seen(self, now: float) -> None:
        self.wakes_seen += 1
        if self.unacked_since is None:
            self.unacked_since = now
        elif self.handling_since is not None and self._next_since is None:
            self._next_since = now

    def claimed(self, now: float, generation: int | None, pending: Iterable[str]) -> None:
        self.wakes_claimed += 1
        self.generation = generation
        self.handling_since = now
        self.pending_streams = tuple(pending)
        self._next_since = None
        if self.unacked_since is None:
            self.unacked_since = now

    def acked(self, generation: int | None) -> None:
        """The wake of ``generation`` was acked: its streams are done; later wakes stay unacked.

        A key is freed at its done-ack answer, so the next wake may already be
        claimed when an earlier one's bookkeeping runs: that never clears the
        newer wake's state.
        """
        self.wakes_acked += 1
        if generation != self.generation:
            return
        self.pending_streams = ()
        self.unacked_since = self._next_since
        self._next_since = None

    def ended(self, generation: int | None) -> None:
        """The wake of ``generation`` is over (acked, released, or its lease lost)."""
        if generation == self.generation:
            self.handling_since = None

    def snapshot(self, now: float, *, cooling_down_s: float = 0.0,
                 consecutive_failures: int = 0, failed_attempts: int = 0) -> dict[str, Any]:
        if self.handling_since is not None:
            state = "handling"
        elif cooling_down_s > 0:
            state = "cooling_down"
        elif self.unacked_since is not None:
            state = "waiting"
        else:
            state = "idle"
        return {
            "state": state,
            "generation": self.generation,
            "wakes_seen": self.wakes_seen,
            "wakes_claimed": self.wakes_claimed,
            "wakes_handled": self.wakes_handled,
            "wakes_acked": self.wakes_acked,
            "wakes_released": self.wakes_released,
            "handler_errors": self.handler_errors,
            "handler_timeouts": self.handler_timeouts,
            "dead_lettered": self.dead_lettered,
            "dead_letter_failures": self.dead_letter_failures,
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "leases_lost": self.leases_lost,
            "consecutive_failures": consecutive_failures,
            "failed_attempts": failed_attempts,
            "cooling_down_s": round(cooling_down_s, 3),
            "handling_for_s": (None if self.handling_since is None
                               else round(max(0.0, now - self.handling_since), 3)),
            "oldest_unacked_age_s": (None if self.unacked_since is None
                                     else round(max(0.0, now - self.unacked_since), 3)),
            "pending_streams": len(self.pending_streams),
        }
