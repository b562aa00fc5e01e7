"""Validation of a spec's declarations: events, owned work, the backoff, properties.

This module owns the problem collector every rule reports to (:class:`Collector`:
each problem a :class:`~pullwake.errors.SpecError` naming file, state, event
and line) and the rules for everything a spec declares beside its state tree:
``events:`` [schema], ``work:`` [schema, unknown-hook, unknown-event],
``backoff:`` [backoff] (the reconnect policy, checked against
:data:`~pullwake.lifecycle.backoff.JITTERS`) and ``properties:`` [property].
The state tree and its decisions are :mod:`.validate_states`'; :mod:`.spec`
runs both. Pure functions of the parsed YAML data: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pullwake.errors import SpecError
from pullwake.lifecycle.backoff import JITTERS
from pullwake.lifecycle.model import (
    SEPARATOR,
    BackoffSpec,
    EventSpec,
    PropertySpec,
    StateSpec,
    WorkSpec,
)

__all__ = [
    "Collector",
    "names_of",
    "parse_backoff",
    "parse_events",
    "parse_properties",
    "parse_work",
    "state_at",
]

_WORK_KINDS = ("task", "timer")
_PROPERTY_KEYS = {"doc", "after", "in", "eventually", "never", "without"}
_EVENT_KEYS = {"payload", "doc"}
_WORK_KEYS = {"kind", "start", "reports", "delay", "fails", "doc"}
#: the keys of the spec's ``backoff:`` mapping (the reconnect policy)
_RECONNECT_POLICY_KEYS = {"initial_s", "factor", "cap_s", "jitter", "reset_on"}

#: A key path of the YAML document -> its line (1-based), or None.
LineOf = Callable[..., int | None]


class Collector:
    """Every problem found in one spec, and the (state, event) pairs already broken."""

    def __init__(self, path: str, lines: LineOf) -> None:
        self.path = path
        self.lines = lines
        self.errors: list[SpecError] = []
        #: (state, event) pairs whose branch was dropped by an error already reported
        self.broken: set[tuple[str, str]] = set()

    def add(
        self,
        kind: str,
        problem: str,
        *,
        at: Sequence[str] = (),
        state: str | None = None,
        event: str | None = None,
    ) -> None:
        self.errors.append(
            SpecError(problem, path=self.path, state=state, event=event,
                      line=self.lines(*at), kind=kind)
        )


def names_of(value: Any) -> tuple[str, ...] | None:
    """A hook/guard list: a string or a list of strings, else None."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def state_at(path: str) -> tuple[str, ...]:
    out: list[str] = ["states"]
    for i, part in enumerate(path.split(SEPARATOR)):
        if i:
            out.append("states")
        out.append(part)
    return tuple(out)


def parse_events(raw: Any, c: Collector) -> dict[str, EventSpec]:
    out: dict[str, EventSpec] = {}
    if not isinstance(raw, dict) or not raw:
        c.add("schema", "'events' must be a non-empty mapping", at=("events",))
        return out
    for name, body in raw.items():
        at = ("events", str(name))
        if not isinstance(name, str) or not name.isupper() or not name.replace("_", "").isalnum():
            c.add("schema", f"event name {name!r} must be UPPER_SNAKE", at=at, event=str(name))
            continue
        body = body or {}
        if not isinstance(body, dict):
            c.add("schema", "an event must be a mapping", at=at, event=name)
            continue
        for key in body:
            if key not in _EVENT_KEYS:
                c.add("schema", f"unknown event key {key!r}", at=(*at, str(key)), event=name)
        payload = names_of(body.get("payload"))
        if payload is None:
            c.add("schema", "payload must be a list of names", at=(*at, "payload"), event=name)
            payload = ()
        out[name] = EventSpec(
            name=name,
            payload=tuple(p.rstrip("?") for p in payload),
            optional=tuple(p.rstrip("?") for p in payload if p.endswith("?")),
            doc=str(body.get("doc", "")),
        )
    return out


def parse_work(
    raw: Any, c: Collector, events: Mapping[str, EventSpec], hooks: frozenset[str]
) -> dict[str, WorkSpec]:
    out: dict[str, WorkSpec] = {}
    if not isinstance(raw, dict):
        c.add("schema", "'work' must be a mapping", at=("work",))
        return out
    for name, body in raw.items():
        at = ("work", str(name))
        if not isinstance(body, dict):
            c.add("schema", "work must be a mapping", at=at)
            continue
        for key in body:
            if key not in _WORK_KEYS:
                c.add("schema", f"unknown key {key!r} in work {name!r}", at=(*at, str(key)))
        kind = body.get("kind")
        if kind not in _WORK_KINDS:
            c.add("schema", f"work {name!r}: kind must be one of {_WORK_KINDS}", at=(*at, "kind"))
        start = body.get("start")
        if not isinstance(start, str):
            c.add("schema", f"work {name!r}: 'start' must name a hook", at=(*at, "start"))
            start = ""
        elif start not in hooks:
            c.add("unknown-hook", f"work {name!r} starts with hook {start!r}, "
                  "which the runner does not provide", at=(*at, "start"))
        reports = names_of(body.get("reports")) or ()
        for ev in reports:
            if ev not in events:
                c.add("unknown-event", f"work {name!r} reports unknown event {ev!r}",
                      at=(*at, "reports"), event=ev)
        delay = body.get("delay")
        if kind == "timer" and delay != "backoff":
            c.add("schema", f"timer {name!r} needs 'delay: backoff'", at=(*at, "delay"))
        fails = body.get("fails")
        if fails is not None and fails not in reports:
            c.add("unknown-event", f"work {name!r} fails with {fails!r}, which it does not "
                  "report", at=(*at, "fails"), event=str(fails))
            fails = None
        out[str(name)] = WorkSpec(name=str(name), kind=str(kind), start=start,
                                  reports=reports, delay=delay, fails=fails)
    return out


def parse_backoff(raw: Any, c: Collector, events: Mapping[str, EventSpec]) -> BackoffSpec:
    at = ("backoff",)
    if not isinstance(raw, dict):
        c.add("backoff", "'backoff' must be a mapping", at=at)
        return BackoffSpec()
    for key in raw:
        if key not in _RECONNECT_POLICY_KEYS:
            c.add("backoff", f"unknown backoff key {key!r}", at=(*at, str(key)))
    d = BackoffSpec()
    vals: dict[str, float] = {}
    for key in ("initial_s", "factor", "cap_s"):
        v = raw.get(key, getattr(d, key))
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            c.add("backoff", f"{key} must be a number, got {v!r}", at=(*at, key))
            v = getattr(d, key)
        elif not math.isfinite(v):
            c.add("backoff", f"{key} must be finite, got {v!r}", at=(*at, key))
            v = getattr(d, key)
        vals[key] = float(v)
    if vals["initial_s"] <= 0:
        c.add("backoff", f"initial_s must be > 0, got {vals['initial_s']}", at=(*at, "initial_s"))
    if vals["factor"] < 1:
        c.add("backoff", f"factor must be >= 1, got {vals['factor']}", at=(*at, "factor"))
    if vals["cap_s"] < vals["initial_s"]:
        c.add("backoff", f"cap_s ({vals['cap_s']}) must be >= initial_s ({vals['initial_s']})",
              at=(*at, "cap_s"))
    jitter = raw.get("jitter", d.jitter)
    if jitter not in JITTERS:
        c.add("backoff", f"jitter must be one of {JITTERS}, got {jitter!r}", at=(*at, "jitter"))
        jitter = d.jitter
    reset_on = names_of(raw.get("reset_on", list(d.reset_on)))
    if reset_on is None:
        c.add("backoff", "reset_on must be a list of events", at=(*at, "reset_on"))
        reset_on = ()
    for ev in reset_on:
        if ev not in events:
            c.add("unknown-event", f"backoff resets on unknown event {ev!r}",
                  at=(*at, "reset_on"), event=ev)
    return BackoffSpec(initial_s=vals["initial_s"], factor=vals["factor"], cap_s=vals["cap_s"],
                       jitter=jitter, reset_on=reset_on)


def _resolve_state_name(name: str, states: Mapping[str, StateSpec]) -> str | None:
    """A state named by its path or by a short name no other state has."""
    if name in states:
        return name
    matches = [p for p, s in states.items() if s.name == name]
    return matches[0] if len(matches) == 1 else None


def parse_properties(raw: Any, c: Collector, states: Mapping[str, StateSpec],
                      events: Mapping[str, EventSpec]) -> tuple[PropertySpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        c.add("property", "'properties' must map a property name to its claim",
              at=("properties",))
        return ()
    out: list[PropertySpec] = []
    for name, body in raw.items():
        at = ("properties", str(name))
        if not isinstance(name, str) or not name.isidentifier():
            c.add("property", f"property name {name!r} must be lower_snake", at=at)
            continue
        if not isinstance(body, dict):
            c.add("property", f"property {name!r} must be a mapping: {{after: EVENT, "
                  "eventually: STATE} or {never: 'FROM -> TO'}", at=at)
            continue
        bad = [k for k in body if k not in _PROPERTY_KEYS]
        for key in bad:
            c.add("property", f"property {name!r}: unknown key {key!r} (known: "
                  f"{', '.join(sorted(_PROPERTY_KEYS))})", at=(*at, str(key)))
        n_errors = len(c.errors)

        def state(key: str, value: Any, *, star: bool, name: str = name,
                  at: tuple[str, ...] = at) -> str | None:
            if star and value == "*":
                return "*"
            if not isinstance(value, str):
                c.add("property", f"property {name!r}: {key} must name a state, got {value!r}",
                      at=(*at, key))
                return None
            found = _resolve_state_name(value.strip(), states)
            if found is None:
                c.add("property", f"property {name!r}: {key} names unknown or ambiguous state "
                      f"{value.strip()!r} (use its path, e.g. running.streaming"
                      + (", or *" if star else "") + ")", at=(*at, key), state=value.strip())
            return found

        def event(key: str, value: Any, name: str = name,
                  at: tuple[str, ...] = at) -> str | None:
            if not isinstance(value, str) or value not in events:
                c.add("property", f"property {name!r}: {key} names unknown event {value!r}",
                      at=(*at, key), event=str(value))
                return None
            return value

        doc = str(body.get("doc", ""))
        line = c.lines(*at)
        eventually = "after" in body or "eventually" in body or "in" in body
        never = "never" in body or "without" in body
        if eventually == never:
            c.add("property", f"property {name!r} must be either {{after: EVENT, eventually: "
                  "STATE, in: STATE?} or {never: 'FROM -> TO', without: [EVENTS]?}", at=at)
            continue
        if eventually:
            missing = [k for k in ("after", "eventually") if k not in body]
            for key in missing:
                c.add("property", f"property {name!r}: missing {key!r}", at=at)
            ev = event("after", body.get("after")) if "after" in body else None
            target = (state("eventually", body.get("eventually"), star=False)
                      if "eventually" in body else None)
            within = state("in", body.get("in"), star=True) if "in" in body else "*"
            if len(c.errors) == n_errors:
                out.append(PropertySpec(name=name, kind="eventually", event=ev, state=target,
                                        within=within, doc=doc, line=line))
            continue
        text = body.get("never")
        parts = text.split("->") if isinstance(text, str) else []
        if len(parts) != 2:
            c.add("property", f"property {name!r}: never must read 'FROM -> TO', got {text!r}",
                  at=(*at, "never"))
            continue
        source = state("never", parts[0].strip(), star=True)
        target = state("never", parts[1].strip(), star=True)
        allowed_raw = body.get("without", [])
        allowed = names_of(allowed_raw)
        if allowed is None:
            c.add("property", f"property {name!r}: without must be an event or a list of "
                  "events", at=(*at, "without"))
            allowed = ()
        for ev_name in allowed:
            event("without", ev_name)
        if len(c.errors) == n_errors:
            out.append(PropertySpec(name=name, kind="never", source=source, target=target,
                                    allowed=allowed, doc=doc, line=line))
    return tuple(out)
