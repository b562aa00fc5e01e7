"""Validation of a spec's state tree and its decisions.

This module owns the rules for ``states:`` and what the spec builds from
them: state names and keys, ``initial`` children, ``owns`` (one owner per
piece of work), ``on_enter``/``on_exit`` hooks, every ``transitions:``
branch and named ``ignore`` [schema, unknown-state, unknown-event,
unknown-hook, unknown-guard, conflict], the resolution of ``to:`` names, and
the whole-spec checks run once the tree is known: every (leaf state, event)
pair decided [undecided] and every state reachable [unreachable]. Hook and
guard names are checked against what the owner provides and what the machine
provides itself (:data:`~pullwake.lifecycle.effects.MACHINE_HOOKS`,
:data:`~pullwake.lifecycle.effects.MACHINE_GUARDS`). No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pullwake.lifecycle.effects import MACHINE_GUARDS, MACHINE_HOOKS
from pullwake.lifecycle.model import (
    SEPARATOR,
    EventSpec,
    LifecycleSpec,
    StateSpec,
    TransitionSpec,
    WorkSpec,
)
from pullwake.lifecycle.validate import Collector, names_of, state_at

__all__ = ["check_decided", "check_reachable", "parse_states", "resolve_dest"]

_STATE_KEYS = {"doc", "initial", "states", "owns", "on_enter", "on_exit", "transitions", "ignore"}
_BRANCH_KEYS = {"to", "internal", "ignore", "if", "unless", "before", "after", "doc"}


def parse_states(
    raw: dict[Any, Any],
    parent: str | None,
    at: tuple[str, ...],
    c: Collector,
    states: dict[str, StateSpec],
    transitions: list[TransitionSpec],
    events: Mapping[str, EventSpec],
    work: Mapping[str, WorkSpec],
    hooks: frozenset[str],
) -> None:
    owned_by: dict[str, str] = {s.owns: s.path for s in states.values() if s.owns}
    for name, body in raw.items():
        sat = (*at, str(name))
        if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
            c.add("schema", f"state name {name!r} must be lower_snake", at=sat, state=str(name))
            continue
        path = f"{parent}{SEPARATOR}{name}" if parent else name
        body = body or {}
        if not isinstance(body, dict):
            c.add("schema", "a state must be a mapping", at=sat, state=path)
            continue
        for key in body:
            if key not in _STATE_KEYS:
                c.add("schema", f"unknown state key {key!r}", at=(*sat, str(key)), state=path)
        children_raw = body.get("states") or {}
        if not isinstance(children_raw, dict):
            c.add("schema", "'states' must be a mapping", at=(*sat, "states"), state=path)
            children_raw = {}
        initial = body.get("initial")
        if children_raw and (not isinstance(initial, str) or initial not in children_raw):
            c.add("unknown-state", f"initial child {initial!r} is not a child of {path!r}",
                  at=(*sat, "initial"), state=path)
            initial = None
        if not children_raw and initial is not None:
            c.add("schema", "'initial' on a state without children", at=(*sat, "initial"),
                  state=path)
            initial = None
        owns = body.get("owns")
        if owns is not None:
            if not isinstance(owns, str):
                c.add("schema", "'owns' must name one piece of work", at=(*sat, "owns"),
                      state=path)
                owns = None
            elif owns not in work:
                c.add("unknown-work", f"state owns unknown work {owns!r}", at=(*sat, "owns"),
                      state=path)
                owns = None
            elif owns in owned_by:
                c.add("conflict", f"work {owns!r} is already owned by {owned_by[owns]!r}",
                      at=(*sat, "owns"), state=path)
            else:
                owned_by[owns] = path
        hook_lists: dict[str, tuple[str, ...]] = {}
        for key in ("on_enter", "on_exit"):
            names = names_of(body.get(key))
            if names is None:
                c.add("schema", f"{key} must be a list of hook names", at=(*sat, key), state=path)
                names = ()
            for h in names:
                if h not in hooks and h not in MACHINE_HOOKS:
                    c.add("unknown-hook", f"{key} hook {h!r} is provided by nothing",
                          at=(*sat, key), state=path)
            hook_lists[key] = names
        states[path] = StateSpec(
            path=path, name=name, parent=parent,
            children=tuple(f"{path}{SEPARATOR}{k}" for k in children_raw),
            initial=initial if children_raw else None,
            owns=owns if isinstance(owns, str) else None,
            on_enter=hook_lists["on_enter"], on_exit=hook_lists["on_exit"],
            doc=str(body.get("doc", "")),
        )
        _parse_decisions(body, path, sat, c, transitions, events, hooks)
        if children_raw:
            parse_states(children_raw, path, (*sat, "states"), c, states, transitions,
                          events, work, hooks)


def _parse_decisions(
    body: dict[str, Any],
    path: str,
    sat: tuple[str, ...],
    c: Collector,
    transitions: list[TransitionSpec],
    events: Mapping[str, EventSpec],
    hooks: frozenset[str],
) -> None:
    handled: set[str] = set()
    raw_t = body.get("transitions") or {}
    if not isinstance(raw_t, dict):
        c.add("schema", "'transitions' must be a mapping", at=(*sat, "transitions"), state=path)
        raw_t = {}
    for event, branches in raw_t.items():
        tat = (*sat, "transitions", str(event))
        if event not in events:
            c.add("unknown-event", f"transition on unknown event {event!r}", at=tat,
                  state=path, event=str(event))
            continue
        handled.add(event)
        blist = branches if isinstance(branches, list) else [branches]
        for i, b in enumerate(blist):
            bat = (*tat, str(i)) if isinstance(branches, list) else tat
            t = _parse_branch(b, path, event, bat, c, hooks)
            if t is not None:
                transitions.append(t)
            else:
                c.broken.add((path, event))
    raw_i = body.get("ignore") or {}
    if not isinstance(raw_i, dict):
        c.add("schema", "'ignore' must map a reason to a list of events", at=(*sat, "ignore"),
              state=path)
        raw_i = {}
    for reason, evs in raw_i.items():
        iat = (*sat, "ignore", str(reason))
        names = names_of(evs)
        if names is None or not isinstance(reason, str):
            c.add("schema", "'ignore' must map a reason to a list of events", at=iat, state=path)
            continue
        for ev in names:
            if ev not in events:
                c.add("unknown-event", f"ignore of unknown event {ev!r}", at=iat,
                      state=path, event=ev)
            elif ev in handled:
                c.add("conflict", f"event {ev!r} is both handled and ignored ({reason})",
                      at=iat, state=path, event=ev)
            else:
                handled.add(ev)
                transitions.append(TransitionSpec(event=ev, source=path, kind="ignored",
                                                  dest=None, reason=reason, line=c.lines(*iat)))


def _parse_branch(
    b: Any, path: str, event: str, at: tuple[str, ...], c: Collector, hooks: frozenset[str]
) -> TransitionSpec | None:
    if not isinstance(b, dict):
        c.add("schema", "a transition must be a mapping", at=at, state=path, event=event)
        return None
    for key in b:
        if key not in _BRANCH_KEYS:
            c.add("schema", f"unknown transition key {key!r}", at=(*at, str(key)),
                  state=path, event=event)
    modes = [k for k in ("to", "internal", "ignore") if k in b]
    if len(modes) != 1:
        c.add("schema", "a transition needs exactly one of 'to', 'internal: true', 'ignore'",
              at=at, state=path, event=event)
        return None
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("if", "unless", "before", "after"):
        names = names_of(b.get(key))
        if names is None:
            c.add("schema", f"'{key}' must be a name or a list of names", at=(*at, key),
                  state=path, event=event)
            names = ()
        for n in names:
            if key in ("if", "unless"):
                if n not in MACHINE_GUARDS:
                    c.add("unknown-guard", f"guard {n!r} is provided by nothing "
                          f"(known: {', '.join(sorted(MACHINE_GUARDS))})", at=(*at, key),
                          state=path, event=event)
            elif n not in hooks and n not in MACHINE_HOOKS:
                c.add("unknown-hook", f"{key} hook {n!r} is provided by nothing",
                      at=(*at, key), state=path, event=event)
        lists[key] = names
    mode = modes[0]
    line = c.lines(*at)
    if mode == "ignore":
        if lists["before"] or lists["after"]:
            c.add("schema", "an ignore runs no hooks", at=at, state=path, event=event)
        return TransitionSpec(event=event, source=path, kind="ignored", dest=None,
                              conditions=lists["if"], unless=lists["unless"],
                              reason=str(b["ignore"]), line=line)
    if mode == "internal":
        if b["internal"] is not True:
            c.add("schema", "'internal' must be true", at=at, state=path, event=event)
        return TransitionSpec(event=event, source=path, kind="internal", dest=None,
                              conditions=lists["if"], unless=lists["unless"],
                              before=lists["before"], after=lists["after"], line=line)
    if not isinstance(b["to"], str):
        c.add("schema", "'to' must name a state", at=at, state=path, event=event)
        return None
    return TransitionSpec(event=event, source=path, kind="transition", dest=b["to"],
                          conditions=lists["if"], unless=lists["unless"],
                          before=lists["before"], after=lists["after"], line=line)


def resolve_dest(dest: str, source: str, states: Mapping[str, StateSpec]) -> str | None:
    """Resolve a ``to:`` name: a full path, a sibling, or a sibling of an ancestor."""
    if dest in states:
        return dest
    scope: str | None = source
    while scope is not None:
        parent = states[scope].parent if scope in states else None
        candidate = f"{parent}{SEPARATOR}{dest}" if parent else dest
        if candidate in states:
            return candidate
        scope = parent
    return None


def check_decided(spec: LifecycleSpec, c: Collector) -> None:
    for leaf in spec.leaf_states:
        for event in spec.events:
            branches = spec.decisions(leaf, event)
            line_at = state_at(leaf)
            if any((p, event) in c.broken for p in spec.ancestry(leaf)):
                continue  # a decision was written but is invalid: already reported
            if not branches:
                c.add("undecided", "no transition, internal transition or named ignore "
                      "decides this pair", at=line_at, state=leaf, event=event)
            elif all(b.guarded for b in branches):
                c.add("undecided", "every branch is guarded: when the guards fail the "
                      "event would be dropped by accident; add an unguarded branch or an "
                      "ignore", at=line_at, state=leaf, event=event)


def check_reachable(spec: LifecycleSpec, c: Collector) -> None:
    seen: set[str] = set()
    todo = [spec.initial]
    while todo:
        p = todo.pop()
        if p in seen or p not in spec.states:  # not in states: already reported
            continue
        seen.add(p)
        state = spec.states[p]
        if state.parent:
            todo.append(state.parent)
        if state.initial:
            todo.append(f"{p}{SEPARATOR}{state.initial}")
        elif state.children:  # its bad 'initial' is already reported; no cascade
            todo.extend(state.children)
        # Entering p means being in p's subtree: transitions of p's ancestors
        # apply, and so do those of any leaf of p we are in.
        for t in spec.transitions:
            if t.kind == "transition" and t.dest and (
                t.source == p or p.startswith(t.source + SEPARATOR)
            ):
                todo.append(t.dest)
    for path in spec.states:
        if path not in seen:
            c.add("unreachable", "no transition reaches this state", at=state_at(path),
                  state=path)
