"""Model checks over the loaded lifecycle machine, each failure with a counterexample.

This module owns ``pullwake check``. It drives real :class:`~pullwake.lifecycle.machine.
Lifecycle` instances (no I/O: the effects only record which work was started
and cancelled) through every reachable configuration, and checks:

``stop``
    from every reachable configuration, ``STOP`` followed only by events that
    the owned work reports reaches the rest state (the spec's ``initial``,
    ``stopped``) on every continuation: no cycle and no wait avoids it;
``reach-rest``
    from every reachable configuration some sequence of events reaches the
    rest state;
``dead-end``
    no reachable state is a dead end: some event it can receive leaves it;
``reports-decided``
    every event a piece of work ``reports`` is decided, in the state that
    owns the work and in each of its children, by a decision written in that
    state or below it (not by an ancestor's catch-all), and is acted on
    (a transition or an internal transition) somewhere there: a live result
    is never dropped by accident;
``cancel-on-exit``
    on every step, work owned by a state that was left is cancelled (its
    ticket stale, its handle's ``cancel()`` called), and every active state
    that owns work has a current ticket;

plus the spec's own ``properties:`` (:class:`~pullwake.lifecycle.spec.PropertySpec`).

A *configuration* is the active leaf state and the values of the machine's
guards (``reset_pending``). From a configuration the machine can receive the
*user* events (those no work reports: ``START``, ``STOP``) and the events that
the work it owns now reports: a result of work that is not running cannot
arrive (tickets drop it). Configurations are explored breadth first
(:mod:`.explore` builds the graph), so each counterexample starts with a
shortest path from the initial state. This module owns the checks and their
report.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pullwake.lifecycle.explore import Config, Edge, Explorer, Factory, Graph, Step
from pullwake.lifecycle.machine import Lifecycle
from pullwake.lifecycle.model import SEPARATOR, LifecycleSpec, PropertySpec

__all__ = ["BUILT_IN", "CheckResult", "Finding", "Step", "run_checks"]

STOP_EVENT = "STOP"

#: name -> what it verifies (the report prints these)
BUILT_IN = {
    "stop": "STOP, then only events of owned work, always reaches the rest state",
    "reach-rest": "every reachable state can reach the rest state",
    "dead-end": "no reachable state is a dead end",
    "reports-decided": "every event a work reports is decided where it can arrive",
    "cancel-on-exit": "owned work is cancelled on every exit and running in every owner",
}

@dataclass(frozen=True)
class Finding:
    check: str
    message: str
    path: tuple[Step, ...] = ()
    start: Config | None = None

    def trace(self, leaf: Callable[[str], str]) -> str:
        """``stopped --START--> connecting --STOP--> stopping``."""
        if self.start is None:
            return ""
        out = _config_text(self.start, leaf)
        for s in self.path:
            out += f" --{s.event}--> {_config_text(s.config, leaf)}"
        return out


@dataclass(frozen=True)
class CheckResult:
    """Every check that ran, with its findings (none: it passed)."""

    spec: LifecycleSpec
    checks: tuple[tuple[str, str, tuple[Finding, ...]], ...]
    configurations: int
    steps: int

    @property
    def ok(self) -> bool:
        return not any(findings for _, _, findings in self.checks)

    def findings(self, check: str | None = None) -> list[Finding]:
        return [f for name, _, fs in self.checks for f in fs if check in (None, name)]

    def report(self) -> str:
        leaf = self.spec.leaf_name
        lines = [f"{self.spec.path}: {self.configurations} configurations, {self.steps} steps "
                 "explored"]
        for name, what, findings in self.checks:
            mark = "ok  " if not findings else "FAIL"
            lines.append(f"{mark} {name}: {what}")
            for f in findings:
                lines.append(f"     {f.message}")
                trace = f.trace(leaf)
                if trace:
                    lines.append(f"       counterexample: {trace}")
        failed = sum(1 for _, _, fs in self.checks if fs)
        lines.append(f"{len(self.checks) - failed} of {len(self.checks)} checks passed"
                     if failed else f"all {len(self.checks)} checks passed")
        return "\n".join(lines) + "\n"


def _config_text(c: Config, leaf: Callable[[str], str]) -> str:
    flags = [g for g, v in c[1] if v]
    return leaf(c[0]) + (f"{{{','.join(flags)}}}" if flags else "")


# ------------------------------------------------------------------ checks


def _within(path: str, scope: str | None) -> bool:
    return scope in (None, "*") or path == scope or path.startswith(f"{scope}{SEPARATOR}")


def _eventually(g: Graph, spec: LifecycleSpec, explorer: Explorer, start: Config,
                event: str, goal: str) -> tuple[list[Step], str] | None:
    """Fire ``event`` in ``start``; then, using only events of owned work, must every
    continuation reach ``goal``? Returns (steps after start, why) for a counterexample."""
    first = next((e for e in g.edges[start] if e.event == event), None)
    if first is None:
        return None  # the event cannot arrive here
    prefix = [Step(event, start, first.target, first.kind)]

    def successors(c: Config) -> list[Edge]:
        allowed = {e for w in g.owned[c].values() for e in explorer.reports[w]}
        # an internal or ignored event that changes nothing is no progress (it may
        # repeat forever: WAKE while streaming); a transition back to the same
        # state is a step (exit and entry run, its work restarts)
        return [e for e in g.edges[c] if e.event in allowed
                and (e.target != c or e.kind == "transition")]

    # depth-first search for a reachable non-goal config that waits forever, or a cycle
    color: dict[Config, int] = {}
    stack: list[Step] = []

    def visit(c: Config) -> tuple[list[Step], str] | None:
        if _within(c[0], goal):
            return None
        color[c] = 1
        succ = successors(c)
        if not succ:
            waits = ", ".join(sorted({e for w in g.owned[c].values()
                                      for e in explorer.reports[w]})) or "nothing"
            return (list(stack), f"then waits in {spec.leaf_name(c[0])} forever: every "
                    f"event its work can report ({waits}) leaves it there")
        for e in succ:
            stack.append(Step(e.event, c, e.target, e.kind))
            if color.get(e.target) == 1:
                return (list(stack), f"then cycles back to {spec.leaf_name(e.target[0])} "
                        f"without reaching {spec.leaf_name(goal) if goal in spec.states else goal}")
            if color.get(e.target) is None:
                found = visit(e.target)
                if found is not None:
                    return found
            stack.pop()
        color[c] = 2
        return None

    found = visit(first.target)
    if found is None:
        return None
    return prefix + found[0], found[1]


def _check_stop(g: Graph, spec: LifecycleSpec, ex: Explorer) -> list[Finding]:
    if STOP_EVENT not in spec.events:
        return [Finding("stop", f"the spec declares no {STOP_EVENT} event")]
    out = []
    for c in g.edges:
        found = _eventually(g, spec, ex, c, STOP_EVENT, spec.initial)
        if found is not None:
            steps, why = found
            out.append(Finding("stop", f"{STOP_EVENT} in {spec.leaf_name(c[0])} does not "
                               f"always reach {spec.initial}: {why}",
                               tuple(g.path_to(c) + steps), g.initial))
            break  # one counterexample per check: the shortest
    return out


def _check_reach_rest(g: Graph, spec: LifecycleSpec) -> list[Finding]:
    reaches = {c for c in g.edges if _within(c[0], spec.initial)}
    changed = True
    while changed:
        changed = False
        for c, edges in g.edges.items():
            if c not in reaches and any(e.target in reaches for e in edges):
                reaches.add(c)
                changed = True
    out = []
    for c in g.edges:
        if c not in reaches:
            closure = _closure(g, c)
            # lead into the smallest closed set reachable from c: where it gets stuck
            bottom = min(closure, key=lambda x: (len(_closure(g, x)), _order(g, x)))
            trapped = sorted({spec.leaf_name(x[0]) for x in _closure(g, bottom)})
            out.append(Finding("reach-rest", f"{spec.leaf_name(c[0])} can never reach "
                               f"{spec.initial}: every path from it ends among "
                               f"{', '.join(trapped)}",
                               tuple(g.path_to(c) + _path_between(g, c, bottom)), g.initial))
            break
    return out


def _order(g: Graph, c: Config) -> int:
    return list(g.edges).index(c)


def _path_between(g: Graph, a: Config, b: Config) -> list[Step]:
    """A shortest path of steps from ``a`` to ``b`` (breadth first, spec order)."""
    prev: dict[Config, Step | None] = {a: None}
    todo = deque([a])
    while todo:
        c = todo.popleft()
        if c == b:
            break
        for e in g.edges[c]:
            if e.target not in prev:
                prev[e.target] = Step(e.event, c, e.target, e.kind)
                todo.append(e.target)
    steps: list[Step] = []
    c = b
    while (step := prev.get(c)) is not None:
        steps.append(step)
        c = step.source
    return steps[::-1]


def _closure(g: Graph, c: Config) -> set[Config]:
    seen = {c}
    todo = [c]
    while todo:
        for e in g.edges[todo.pop()]:
            if e.target not in seen:
                seen.add(e.target)
                todo.append(e.target)
    return seen


def _check_dead_end(g: Graph, spec: LifecycleSpec) -> list[Finding]:
    out = []
    for c, edges in g.edges.items():
        if not any(e.target[0] != c[0] for e in edges):
            events = ", ".join(e.event for e in edges) or "none"
            out.append(Finding("dead-end", f"{spec.leaf_name(c[0])} is a dead end: every "
                               f"event it can receive ({events}) leaves it where it is",
                               tuple(g.path_to(c)), g.initial))
            break
    return out


def _check_reports_decided(g: Graph, spec: LifecycleSpec) -> list[Finding]:
    out: list[Finding] = []
    reached: dict[str, Config] = {}
    for c in g.parent:
        reached.setdefault(c[0], c)
    for owner_path, owner in spec.states.items():
        if owner.owns is None:
            continue
        work = spec.work[owner.owns]
        leaves = [p for p in spec.leaf_states if _within(p, owner_path)]
        for event in work.reports:
            acted = False
            for leaf in leaves:
                branches = spec.decisions(leaf, event)
                own = [b for b in branches if _within(b.source, owner_path)]
                acted = acted or any(b.kind != "ignored" for b in own)
                if branches and not own:
                    at = reached.get(leaf)
                    out.append(Finding(
                        "reports-decided",
                        f"{event}, reported by {work.name} (owned by {owner_path}), is decided "
                        f"in {spec.leaf_name(leaf)} only by {branches[0].source}'s "
                        + (f"ignore ({branches[0].reason})" if branches[0].kind == "ignored"
                           else "decision")
                        + f", outside {owner_path}: a live result falls to a catch-all",
                        tuple(g.path_to(at)) if at else (), g.initial if at else None))
            if not acted:
                at = reached.get(leaves[0])
                reasons = sorted({b.reason or "" for leaf in leaves
                                  for b in spec.decisions(leaf, event) if b.kind == "ignored"})
                out.append(Finding(
                    "reports-decided",
                    f"{event}, reported by {work.name} (owned by {owner_path}), is ignored "
                    f"({', '.join(reasons)}) wherever that work runs: its result is always "
                    "dropped (handle it, or stop reporting it)",
                    tuple(g.path_to(at)) if at else (), g.initial if at else None))
    return out


def _check_cancel(g: Graph, spec: LifecycleSpec) -> list[Finding]:
    out = []
    for c, event, _path, message in g.leaks[:1]:
        target = next(e.target for e in g.edges[c] if e.event == event)
        step = Step(event, c, target, next(e.kind for e in g.edges[c] if e.event == event))
        out.append(Finding("cancel-on-exit", message, tuple([*g.path_to(c), step]), g.initial))
    return out


def _check_property(g: Graph, spec: LifecycleSpec, ex: Explorer,
                    prop: PropertySpec) -> list[Finding]:
    name = f"property {prop.name}"
    if prop.kind == "eventually":
        assert prop.event is not None and prop.state is not None
        for c in g.edges:
            if not _within(c[0], prop.within):
                continue
            found = _eventually(g, spec, ex, c, prop.event, prop.state)
            if found is not None:
                steps, why = found
                return [Finding(name, f"{prop.event} in {spec.leaf_name(c[0])} does not always "
                                f"reach {prop.state}: {why}", tuple(g.path_to(c) + steps),
                                g.initial)]
        return []
    for c, edges in g.edges.items():
        if not _within(c[0], prop.source):
            continue
        for e in edges:
            if e.kind != "transition" or not _within(e.target[0], prop.target):
                continue
            if e.event in prop.allowed:
                continue
            return [Finding(name, f"{spec.leaf_name(c[0])} --{e.event}--> "
                            f"{spec.leaf_name(e.target[0])} breaks \"{prop.text}\"",
                            tuple([*g.path_to(c), Step(e.event, c, e.target, e.kind)]),
                            g.initial)]
    return []


def run_checks(spec: LifecycleSpec, *, factory: Factory | None = None) -> CheckResult:
    """Explore ``spec``'s machine (built by ``factory``, default :class:`Lifecycle`)."""
    make: Factory = factory or (lambda effects, s: Lifecycle(effects, s))
    ex = Explorer(spec, make)
    g = ex.explore()
    checks: list[tuple[str, str, tuple[Finding, ...]]] = [
        ("stop", BUILT_IN["stop"], tuple(_check_stop(g, spec, ex))),
        ("reach-rest", BUILT_IN["reach-rest"], tuple(_check_reach_rest(g, spec))),
        ("dead-end", BUILT_IN["dead-end"], tuple(_check_dead_end(g, spec))),
        ("reports-decided", BUILT_IN["reports-decided"], tuple(_check_reports_decided(g, spec))),
        ("cancel-on-exit", BUILT_IN["cancel-on-exit"], tuple(_check_cancel(g, spec))),
    ]
    for prop in spec.properties:
        checks.append((f"property {prop.name}", prop.text,
                       tuple(_check_property(g, spec, ex, prop))))
    steps = sum(len(v) for v in g.edges.values())
    return CheckResult(spec, tuple(checks), configurations=len(g.edges), steps=steps)
