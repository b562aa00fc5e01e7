"""The health snapshot: what a runner reports to operators and in heartbeats.

Owns the :class:`Health` frozen dataclass (the original's fields plus a few
extras) and :class:`Stats`, the mutable counters a runner updates. ``status``
is always the lifecycle machine's state. Nothing here holds a secret: errors
are stored as scrubbed text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .clock import iso

__all__ = ["Health", "Stats"]


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

    @classmethod
    def build(cls, *, running: bool, status: str, offset: str | None, stats: Stats,
              runner_id: str, claims_in_flight: int) -> Health:
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
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def diagnostics(self) -> dict[str, Any]:
        """The heartbeat's ``diagnostics``: the snapshot minus running and offset."""
        d = self.to_dict()
        d.pop("running")
        d.pop("offset")
        return d
