"""The health model: one typed snapshot of a runner, and of the worker around it.

Owns the mutable counters and the frozen snapshot built from them, one pair
per level, and the one function that builds the snapshot, :func:`snapshot`:

==========================  =========================  ==========================
counters (updated live)     frozen snapshot            JSON (``to_dict()``)
==========================  =========================  ==========================
:class:`Stats` (runner)     :class:`Health`            the top-level fields
:class:`WorkerStats`        :class:`WorkerHealth`      ``"worker": {...}``
:class:`SubscriptionStats`  :class:`SubscriptionHealth` ``"subscriptions": {id: ...}``
==========================  =========================  ==========================

Every counter field is copied into its snapshot by name (times as ISO-8601
text), so the two cannot drift: a counter added to :class:`Stats` or
:class:`WorkerStats` is a field of the snapshot by the same name
(``tests/test_health_model.py`` checks it). A runner's
:meth:`~pullwake.runtime.runner.PullWakeRunner.health` and a worker's
``snapshot()`` are the same :class:`Health`; a worker's runtime adds the
``worker`` and ``subscriptions`` parts (a bare runner has none).
``status`` is always the lifecycle machine's state. Nothing here holds a
secret: errors are stored as scrubbed text.

One snapshot feeds every view: ``/health`` serves it as JSON, ``/readyz``
and ``/livez`` decide from it, ``/metrics`` (:mod:`pullwake.ops.metrics`) reads
its counters, heartbeats carry its :meth:`Health.diagnostics`, and the status
page renders it. A counter added here is exported by adding one row to
:data:`pullwake.ops.metrics.METRICS`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

from pullwake.io.clock import iso

__all__ = ["RECENT_ERRORS", "RECENT_TRANSITIONS", "Health", "Stats", "SubscriptionHealth",
           "SubscriptionStats", "WorkerHealth", "WorkerStats", "snapshot"]

#: How many recent lifecycle transitions and errors a snapshot keeps.
RECENT_TRANSITIONS = 40
RECENT_ERRORS = 20


@dataclass
class Stats:
    """Mutable counters and timestamps (epoch seconds) owned by one runner.

    Each field is the :class:`Health` field of the same name.
    """

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
    claims_skipped_by_reason: dict[str, int] = field(default_factory=dict)
    #: claims_failed split by reason: ``timeout``, ``transport`` (no answer),
    #: ``http_4xx``, ``http_5xx``, ``other``.
    claims_failed_by_reason: dict[str, int] = field(default_factory=dict)
    recent_transitions: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT_TRANSITIONS))
    recent_errors: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT_ERRORS))

    def count_skip(self, reason: str) -> None:
        self.claims_skipped += 1
        by = self.claims_skipped_by_reason
        by[reason] = by.get(reason, 0) + 1

    def count_claim_failure(self, reason: str) -> None:
        self.claims_failed += 1
        by = self.claims_failed_by_reason
        by[reason] = by.get(reason, 0) + 1

    def note_transition(self, at: float, source: str, event: str, dest: str) -> None:
        self.recent_transitions.append(
            {"at": iso(at), "source": source, "event": event, "dest": dest})

    def note_error(self, at: float, where: str, text: str) -> None:
        """Record one (already scrubbed) error: last_error and the recent list."""
        self.last_error = text
        self.last_error_at = at
        self.recent_errors.append({"at": iso(at), "where": where, "error": text})

    def reset_for_start(self, now: float) -> None:
        """A new run: heartbeat failure state resets (counters are cumulative)."""
        self.started_at = now
        self.heartbeat_failures = 0
        self.last_heartbeat_ok = False
        self.stream_connected = False
        self.stream_connected_since = None


#: Stats fields that are epoch seconds: ISO-8601 text in the snapshot.
_TIMES = frozenset({"started_at", "stream_connected_since", "last_error_at",
                    "last_heartbeat_at", "last_claim_at", "last_dispatch_at"})


def _frozen(name: str, value: Any) -> Any:
    if name in _TIMES:
        return iso(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, deque):
        return tuple(value)
    return value


@dataclass
class WorkerStats:
    """A worker's counters (``health()["worker"]``), cumulative across restarts.

    Each field is the :class:`WorkerHealth` field of the same name.
    """

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
    #: Wakes being handled now (a job per subscription at most).
    jobs_active: int = 0


@dataclass(frozen=True)
class WorkerHealth:
    """A worker's counters at one moment, plus ``handlers_stuck`` (abandoned runs going on)."""

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
    handlers_stuck: int = 0

    @classmethod
    def of(cls, stats: WorkerStats, *, handlers_stuck: int) -> WorkerHealth:
        return cls(**vars(stats), handlers_stuck=handlers_stuck)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _WORKER_FIELDS}


_WORKER_FIELDS = tuple(f.name for f in fields(WorkerHealth))


class SubscriptionHealth(TypedDict):
    """One subscription of a worker at one moment (:meth:`SubscriptionStats.snapshot`).

    ``state``: ``handling``, ``cooling_down``, ``waiting`` (unacked work, no
    wake in hand) or ``idle``. Durations in seconds, rounded to milliseconds.
    A typed dict, not a dataclass: it already is its JSON form, and a worker
    builds one per subscription per snapshot, so a scrape of many
    subscriptions costs no conversion (:meth:`Health.to_dict` copies it).
    """

    state: str
    generation: int | None
    wakes_seen: int
    wakes_claimed: int
    wakes_handled: int
    wakes_acked: int
    wakes_released: int
    handler_errors: int
    handler_timeouts: int
    dead_lettered: int
    dead_letter_failures: int
    last_error: str | None
    last_error_at: str | None
    leases_lost: int
    consecutive_failures: int
    failed_attempts: int
    cooling_down_s: float
    handling_for_s: float | None
    oldest_unacked_age_s: float | None
    pending_streams: int


@dataclass(frozen=True)
class Health:
    """A point-in-time snapshot of a runner (and of its worker). ``status`` is the
    machine's state. Built by :func:`snapshot`; ``to_dict()`` is the JSON form."""

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
    #: A worker's counters (None for a bare runner: then not in the JSON).
    worker: WorkerHealth | None = None
    #: A worker's subscriptions by id (None for a bare runner: then not in the JSON).
    subscriptions: Mapping[str, SubscriptionHealth] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {name: getattr(self, name) for name in _RUNNER_FIELDS}
        d["claims_skipped_by_reason"] = dict(self.claims_skipped_by_reason)
        d["claims_failed_by_reason"] = dict(self.claims_failed_by_reason)
        d["recent_transitions"] = tuple(dict(t) for t in self.recent_transitions)
        d["recent_errors"] = tuple(dict(e) for e in self.recent_errors)
        if self.worker is not None:
            d["worker"] = self.worker.to_dict()
        if self.subscriptions is not None:
            d["subscriptions"] = {k: dict(v) for k, v in self.subscriptions.items()}
        return d

    def diagnostics(self) -> dict[str, Any]:
        """The heartbeat's ``diagnostics``: the runner's snapshot minus running, offset
        and the recent transition/error lists (those are for operators, not the
        server), and without a worker's parts."""
        d = self.to_dict()
        for key in ("running", "offset", "recent_transitions", "recent_errors"):
            d.pop(key)
        d.pop("worker", None)
        d.pop("subscriptions", None)
        return d


_RUNNER_FIELDS = tuple(f.name for f in fields(Health)
                       if f.name not in ("worker", "subscriptions"))
_STATS_FIELDS = tuple(f.name for f in fields(Stats))


def snapshot(stats: Stats, *, running: bool, status: str, offset: str | None,
             runner_id: str, claims_in_flight: int, state_path: str = "",
             worker: WorkerHealth | None = None,
             subscriptions: Mapping[str, SubscriptionHealth] | None = None) -> Health:
    """The one snapshot builder: ``stats`` copied by name, plus what only the runner
    (and a worker's runtime) knows."""
    return Health(running=running, status=status, offset=offset, runner_id=runner_id,
                  claims_in_flight=claims_in_flight, state_path=state_path or status,
                  worker=worker, subscriptions=subscriptions,
                  **{name: _frozen(name, getattr(stats, name)) for name in _STATS_FIELDS})


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
    #: Streams of the wake in hand with work to do (claimed, not yet acked).
    pending_streams: int = 0
    _next_since: float | None = field(default=None, repr=False)

    def wake_seen(self, now: float) -> None:
        self.wakes_seen += 1
        if self.unacked_since is None:
            self.unacked_since = now
        elif self.handling_since is not None and self._next_since is None:
            self._next_since = now

    def claimed(self, now: float, generation: int | None, pending: int) -> None:
        self.wakes_claimed += 1
        self.generation = generation
        self.handling_since = now
        self.pending_streams = pending
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
        self.pending_streams = 0
        self.unacked_since = self._next_since
        self._next_since = None

    def ended(self, generation: int | None) -> None:
        """The wake of ``generation`` is over (acked, released, or its lease lost)."""
        if generation == self.generation:
            self.handling_since = None

    def snapshot(self, now: float, *, cooling_down_s: float = 0.0,
                 consecutive_failures: int = 0, failed_attempts: int = 0) -> SubscriptionHealth:
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
            "pending_streams": self.pending_streams,
        }

