"""The hooks protocol between the lifecycle machine and the runtime that owns it.

This module owns the *vocabulary* a spec may use and nothing that decides a
transition: the hooks a machine owner implements (:class:`LifecycleEffects`),
what a ``start_*`` hook hands back (:class:`Cancellable`), the right to
report a result of owned work (:class:`WorkTicket`), and the hook and guard
names the machine provides itself (:data:`MACHINE_HOOKS`,
:data:`MACHINE_GUARDS`). Spec validation (:mod:`.validate`) reads the names
from here; the machine (:mod:`.machine`) implements the machine's own and
calls the owner's. It imports nothing else of the package, so neither of
them depends on the other.

All hooks are synchronous and must not block: the runtime starts the real
work (tasks, timers) and feeds its results back as events through the ticket.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = [
    "MACHINE_GUARDS",
    "MACHINE_HOOKS",
    "Cancellable",
    "LifecycleEffects",
    "Payload",
    "WorkTicket",
    "effect_hook_names",
]

log = logging.getLogger("pullwake.machine")

#: Hooks the machine implements itself (pure context updates, no I/O).
MACHINE_HOOKS = frozenset({"record_reset", "clear_reset"})
#: Guards the machine implements (they read machine context only).
MACHINE_GUARDS = frozenset({"reset_pending"})

Payload = Mapping[str, Any]


class Cancellable(Protocol):
    """What a ``start_*`` hook returns: an asyncio Task, a TimerHandle, …"""

    def cancel(self) -> Any: ...


class LifecycleEffects(Protocol):
    """The hooks a machine owner provides. ``machine_spec.yaml`` may name only these.

    All are synchronous and must not block. ``start_*`` hooks start the work a
    state owns and return something cancellable; the rest receive the event's
    payload (its keyword arguments).
    """

    def start_heartbeat(self, ticket: WorkTicket) -> Cancellable: ...
    def start_connect_attempt(self, ticket: WorkTicket) -> Cancellable: ...
    def start_stream_consumer(self, ticket: WorkTicket) -> Cancellable: ...
    def start_backoff_timer(self, ticket: WorkTicket) -> Cancellable: ...
    def start_shutdown(self, ticket: WorkTicket) -> Cancellable: ...

    def on_start(self, payload: Payload) -> None: ...
    def on_stopped(self, payload: Payload) -> None: ...
    def claim_wake(self, payload: Payload) -> None: ...
    def record_offset(self, payload: Payload) -> None: ...
    def interrupt_stream(self, payload: Payload) -> None: ...
    def report_connect_failure(self, payload: Payload) -> None: ...
    def report_stream_reset(self, payload: Payload) -> None: ...
    def report_stream_end(self, payload: Payload) -> None: ...
    def report_reset_error(self, payload: Payload) -> None: ...
    def report_stream_closed(self, payload: Payload) -> None: ...
    def record_shutdown_error(self, payload: Payload) -> None: ...

    def on_transition(self, source: str, event: str, dest: str, kind: str) -> None:
        """Observer: called after every decided event (kind: transition/internal/ignored)."""


_OBSERVER_HOOKS = frozenset({"on_transition"})


@functools.cache
def effect_hook_names() -> frozenset[str]:
    """Names a spec may use as hooks: the public methods of :class:`LifecycleEffects`."""
    return frozenset(
        n for n in vars(LifecycleEffects)
        if not n.startswith("_") and callable(getattr(LifecycleEffects, n))
    ) - _OBSERVER_HOOKS


class _TicketIssuer(Protocol):
    """The side of the machine a ticket reports to (:class:`~.machine.Lifecycle`)."""

    def _enqueue(self, event: str, payload: Payload, ticket: WorkTicket | None) -> None: ...


class WorkTicket:
    """The right to report results for one start of a state's owned work.

    ``delay`` is set for timers (the backoff delay); ``payload`` is the payload
    of the event that entered the state (e.g. ``stream`` for the consumer).
    ``cancelled`` turns True, for good, once the ticket stops being current:
    the machine sets it when the state is left (the work is cancelled) and
    when the work is started again (the ticket replaced), so a hot loop can
    read the attribute rather than :attr:`current`.
    """

    __slots__ = ("_lifecycle", "cancelled", "delay", "epoch", "handle", "payload", "reports",
                 "state", "work")

    def __init__(
        self,
        lifecycle: _TicketIssuer,
        work: str,
        reports: frozenset[str],
        state: str,
        epoch: int,
        delay: float | None,
        payload: Payload,
    ) -> None:
        self._lifecycle = lifecycle
        self.work = work
        self.reports = reports
        self.state = state
        self.epoch = epoch
        self.delay = delay
        self.payload = payload
        self.handle: Cancellable | None = None
        self.cancelled = False

    @property
    def current(self) -> bool:
        """True while the owning state is active and this is its latest start."""
        return not self.cancelled

    def report(self, event: str, **payload: Any) -> bool:
        """Fire ``event`` if this ticket is still current; drop it otherwise.

        Returns False when the result was stale (the state was left, the work
        replaced). Reporting an event the work does not declare is a bug.
        """
        if event not in self.reports:
            raise ValueError(f"work {self.work!r} does not report {event!r}")
        if self.cancelled:  # not current
            log.debug("dropped stale %s from %s#%d", event, self.work, self.epoch)
            return False
        self._lifecycle._enqueue(event, payload, self)
        return True

    def __repr__(self) -> str:
        return f"<WorkTicket {self.work}#{self.epoch} {'current' if self.current else 'stale'}>"
