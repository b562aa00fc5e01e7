"""The state space behind ``pullwake check``: every reachable configuration of a machine.

This module owns the exploration :mod:`.check` runs its checks over. A
*configuration* (:data:`Config`) is the active leaf state and the values of
the machine's guards. :class:`Explorer` drives real
:class:`~pullwake.lifecycle.machine.Lifecycle` instances, each replaying the
shortest path to a configuration, with :class:`RecordingEffects` (every hook a
no-op, every ``start_*`` handing out a :class:`Handle` that records its
cancel), and fires each event that can arrive there: the *user* events (those
no work reports) and the events of the work owned now. The result is a
:class:`Graph`: edges per configuration, the breadth-first parent of each
(shortest counterexamples), the work owned in each, and every step that
leaked owned work. No I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pullwake.lifecycle.effects import WorkTicket
from pullwake.lifecycle.machine import Lifecycle
from pullwake.lifecycle.model import LifecycleSpec

__all__ = ["Config", "Edge", "Explorer", "Factory", "Graph", "Handle", "RecordingEffects",
           "Step"]

#: (active leaf state path, ((guard, value), ...))
Config = tuple[str, tuple[tuple[str, bool], ...]]


@dataclass(frozen=True)
class Step:
    """One decided event on a counterexample path: ``event`` took ``source`` to ``config``."""

    event: str
    source: Config
    config: Config
    kind: str


class Handle:
    """What a ``start_*`` hook returns here: it records whether it was cancelled."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class RecordingEffects:
    """Every runner hook as a no-op; ``start_*`` hooks hand out recording handles."""

    def __init__(self) -> None:
        self.tickets: list[WorkTicket] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("start_"):
            def start(ticket: WorkTicket) -> Handle:
                self.tickets.append(ticket)
                return Handle()
            return start
        return lambda *args: None

    def on_transition(self, source: str, event: str, dest: str, kind: str) -> None:
        return None


# ---------------------------------------------------------------- explorer


@dataclass
class Edge:
    """One decided event out of a configuration: where it led, and its kind."""

    event: str
    target: Config
    kind: str


@dataclass
class Graph:
    """Every reachable configuration: its edges, BFS parent, owned work; and the leaks."""

    initial: Config
    edges: dict[Config, list[Edge]] = field(default_factory=dict)
    parent: dict[Config, tuple[Config, str, str] | None] = field(default_factory=dict)
    owned: dict[Config, dict[str, str]] = field(default_factory=dict)
    leaks: list[tuple[Config, str, str, str]] = field(default_factory=list)

    def path_to(self, c: Config) -> list[Step]:
        steps: list[Step] = []
        while True:
            p = self.parent[c]
            if p is None:
                break
            src, event, kind = p
            steps.append(Step(event, src, c, kind))
            c = src
        return steps[::-1]


Factory = Callable[[Any, LifecycleSpec], Lifecycle]


class Explorer:
    def __init__(self, spec: LifecycleSpec, factory: Factory) -> None:
        self.spec = spec
        self.factory = factory
        reported = {e for w in spec.work.values() for e in w.reports}
        self.user_events = [e for e in spec.events if e not in reported]
        self.reports = {w.name: w.reports for w in spec.work.values()}

    def _payload(self, event: str) -> dict[str, Any]:
        ev = self.spec.events[event]
        return {k: None for k in ev.payload if k not in ev.optional}

    def _run(self, events: Iterable[str]) -> tuple[Lifecycle, RecordingEffects]:
        effects = RecordingEffects()
        lc = self.factory(effects, self.spec)
        for e in events:
            lc.fire(e, **self._payload(e))
        return lc, effects

    @staticmethod
    def config(lc: Lifecycle) -> Config:
        return (lc.state_path, tuple(sorted(lc.guard_values().items())))

    def enabled(self, owned: Mapping[str, str]) -> list[str]:
        events = list(self.user_events)
        for work in owned.values():
            events += [e for e in self.reports[work] if e not in events]
        return [e for e in self.spec.events if e in events]

    def explore(self) -> Graph:
        lc, _ = self._run(())
        start = self.config(lc)
        g = Graph(initial=start)
        g.parent[start] = None
        g.owned[start] = dict(lc.owned_work)
        paths: dict[Config, list[str]] = {start: []}
        todo = deque([start])
        while todo:
            c = todo.popleft()
            g.edges[c] = []
            for event in self.enabled(g.owned[c]):
                lc, effects = self._run(paths[c])
                before = {p: t for p in self.spec.ancestry(lc.state_path)
                          if (t := lc.owned(p)) is not None}
                lc.fire(event, **self._payload(event))
                kind = lc.last_kind or "transition"
                nxt = self.config(lc)
                self._check_tickets(g, c, event, lc, before, effects)
                g.edges[c].append(Edge(event, nxt, kind))
                if nxt not in g.parent:
                    g.parent[nxt] = (c, event, kind)
                    g.owned[nxt] = dict(lc.owned_work)
                    paths[nxt] = [*paths[c], event]
                    todo.append(nxt)
        return g

    def _check_tickets(self, g: Graph, c: Config, event: str, lc: Lifecycle,
                       before: dict[str, WorkTicket], effects: RecordingEffects) -> None:
        active = set(self.spec.ancestry(lc.state_path))
        for path, ticket in before.items():
            current = lc.owned(path)
            if path in active and current is ticket:
                continue
            handle = ticket.handle
            cancelled = isinstance(handle, Handle) and handle.cancelled
            if not (ticket.cancelled and cancelled):
                g.leaks.append((c, event, path, f"work {ticket.work!r} owned by {path!r} is "
                                f"still running after {event} left it"))
        for path in active:
            work = self.spec.states[path].owns
            if work is None:
                continue
            current = lc.owned(path)
            if current is None or current.cancelled:
                g.leaks.append((c, event, path, f"{path!r} is active but its work {work!r} "
                                f"is not running after {event}"))
