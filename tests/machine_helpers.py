"""Test doubles for the lifecycle machine: recording effects, a fake clock, routes.

Nothing here sleeps or touches asyncio. :class:`RecordingEffects` implements
every hook :class:`pullwake.lifecycle.machine.LifecycleEffects` declares (read from the
protocol, so a new hook is picked up without editing this file): ``start_*``
hooks return a :class:`FakeHandle` that counts ``cancel()`` calls, the other
hooks append ``(name, payload)`` to ``calls``. With a :class:`FakeClock`, the
backoff timer is a real scheduled callback that reports ``BACKOFF_ELAPSED``
through its ticket when the clock is advanced past the delay.

:func:`drive_to` moves a real :class:`~pullwake.lifecycle.machine.Lifecycle` into a leaf
state through real events only (START, ticket reports, ...), along the
shortest route the spec's own transitions allow.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pullwake.lifecycle.effects import WorkTicket, effect_hook_names
from pullwake.lifecycle.machine import Lifecycle
from pullwake.lifecycle.model import LifecycleSpec

__all__ = [
    "FakeClock",
    "FakeHandle",
    "FakeTimer",
    "RecordingEffects",
    "drive_to",
    "fire_or_report",
    "payload_for",
    "route_to",
]


# ---------------------------------------------------------------------- clock


@dataclass
class FakeTimer:
    """What :meth:`FakeClock.call_later` returns: cancellable, like a TimerHandle."""

    deadline: float
    callback: Callable[[], Any]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A manual clock: ``call_later`` records, ``advance`` runs what fell due, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], Any]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        heapq.heappush(self._heap, (timer.deadline, next(self._seq), timer))
        return timer

    @property
    def pending(self) -> list[FakeTimer]:
        return sorted((t for _, _, t in self._heap if not t.cancelled),
                      key=lambda t: t.deadline)

    def advance(self, dt: float) -> None:
        target = self.now + dt
        while self._heap and self._heap[0][0] <= target + 1e-12:
            deadline, _, timer = heapq.heappop(self._heap)
            self.now = max(self.now, deadline)
            if not timer.cancelled:
                timer.callback()
        self.now = target


# -------------------------------------------------------------------- effects


@dataclass
class FakeHandle:
    """What a ``start_*`` hook returns: records how often it was cancelled."""

    work: str
    ticket: WorkTicket
    cancels: int = 0
    timer: FakeTimer | None = None
    log: list[tuple[Any, ...]] | None = None

    def cancel(self) -> None:
        self.cancels += 1
        if self.log is not None:
            self.log.append(("cancel", self.work))
        if self.timer is not None:
            self.timer.cancel()


@dataclass
class RecordingEffects:
    """Effects that record everything. ``raising`` names hooks that raise RuntimeError;
    ``when_hook(name, payload)`` / ``when_started(ticket)`` let a test act from inside a hook.

    ``log`` interleaves every observable step in order: ``("start", work)``,
    ``("cancel", work)``, ``("hook", name)`` and ``("transition", src, ev, dst, kind)``.
    """

    clock: FakeClock | None = None
    raising: set[str] = field(default_factory=set)
    when_hook: Callable[[str, Mapping[str, Any]], None] | None = None
    when_started: Callable[[WorkTicket], None] | None = None
    handles: list[FakeHandle] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    transitions: list[tuple[str, str, str, str]] = field(default_factory=list)
    log: list[tuple[Any, ...]] = field(default_factory=list)

    _HOOKS = effect_hook_names()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._HOOKS:
            raise AttributeError(name)
        if name.startswith("start_"):
            return lambda ticket: self._start(name, ticket)
        return lambda payload: self._hook(name, payload)

    def _start(self, name: str, ticket: WorkTicket) -> FakeHandle:
        self.log.append(("start", ticket.work))
        if self.when_started is not None:
            self.when_started(ticket)
        if name in self.raising:
            raise RuntimeError(f"{name} failed")
        handle = FakeHandle(ticket.work, ticket, log=self.log)
        if ticket.delay is not None and self.clock is not None:
            event = next(iter(ticket.reports))  # a timer reports one event
            handle.timer = self.clock.call_later(ticket.delay, lambda: ticket.report(event))
        self.handles.append(handle)
        return handle

    def _hook(self, name: str, payload: Mapping[str, Any]) -> None:
        self.log.append(("hook", name))
        self.calls.append((name, dict(payload)))
        if self.when_hook is not None:
            self.when_hook(name, payload)
        if name in self.raising:
            raise RuntimeError(f"{name} failed")

    def on_transition(self, source: str, event: str, dest: str, kind: str) -> None:
        self.log.append(("transition", source, event, dest, kind))
        self.transitions.append((source, event, dest, kind))
        if "on_transition" in self.raising:
            raise RuntimeError("on_transition failed")

    # conveniences for assertions

    def started(self, work: str | None = None) -> list[FakeHandle]:
        return [h for h in self.handles if work is None or h.work == work]

    def hook_names(self) -> list[str]:
        return [name for name, _ in self.calls]


# --------------------------------------------------------------------- events


def payload_for(spec: LifecycleSpec, event: str, present: Iterable[str] = ()) -> dict[str, Any]:
    """A payload for ``event``: every required keyword, plus the optional ones in ``present``."""
    ev = spec.events[event]
    keys = [k for k in ev.payload if k not in ev.optional or k in set(present)]
    values: dict[str, Any] = {"error": RuntimeError(f"{event} error"), "wake": {"path": "/s"},
                              "offset": "0_42", "stream": object()}
    return {k: values.get(k, f"{event}.{k}") for k in keys}


def fire_or_report(lc: Lifecycle, event: str, **payload: Any) -> None:
    """Deliver ``event`` the way the runner would: through the owning work's ticket
    when the current state's work reports it, else as a direct ``fire``."""
    for path in lc.spec.ancestry(lc.state_path):
        ticket = lc.owned(path)
        if ticket is not None and event in ticket.reports:
            assert ticket.report(event, **payload), f"{ticket!r} could not report {event}"
            return
    lc.fire(event, **payload)


def route_to(spec: LifecycleSpec, leaf_path: str) -> list[str]:
    """The shortest event sequence from the initial state to ``leaf_path``.

    Computed from the spec's decisions (the first unguarded branch of each pair,
    innermost state first), so the route tracks the spec as it changes.
    """
    start = spec.resolve_initial(spec.initial)
    prev: dict[str, tuple[str, str] | None] = {start: None}
    todo = deque([start])
    while todo:
        here = todo.popleft()
        if here == leaf_path:
            break
        for event in spec.events:
            for t in spec.decisions(here, event):
                if t.guarded:
                    continue
                if t.kind == "transition" and t.dest is not None:
                    nxt = spec.resolve_initial(t.dest)
                    if nxt not in prev:
                        prev[nxt] = (here, event)
                        todo.append(nxt)
                break  # the first unguarded branch decides
    if leaf_path not in prev:
        raise AssertionError(f"no route to {leaf_path}")
    events: list[str] = []
    node = leaf_path
    while prev[node] is not None:
        node, event = prev[node]  # type: ignore[misc]
        events.append(event)
    return events[::-1]


def drive_to(lc: Lifecycle, leaf: str) -> None:
    """Move ``lc`` into ``leaf`` (short name or dotted path) through real events."""
    spec = lc.spec
    path = leaf if leaf in spec.states else next(
        p for p in spec.leaf_states if spec.states[p].name == leaf)
    for event in route_to(spec, path):
        fire_or_report(lc, event, **payload_for(spec, event))
    assert lc.state_path == path, (lc.state_path, path)
