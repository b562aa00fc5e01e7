"""Load and validate ``machine_spec.yaml`` into an immutable :class:`LifecycleSpec`.

This module owns the spec's schema and every rule a spec must satisfy before a
machine is built from it. It reads YAML with PyYAML's safe loader (libyaml's
``CSafeLoader`` when installed, the pure-Python one for error messages) and knows
nothing of ``transitions``, asyncio or HTTP. Every problem becomes a
:class:`~pullwake.errors.SpecError` naming the file, state, event and line;
validation collects all problems and raises them together as
:class:`~pullwake.errors.SpecErrors`.

Rules checked (the ``kind`` of each SpecError in brackets):

- [yaml] the file parses and is a mapping; [schema] unknown or missing keys,
  wrong types;
- [unknown-state] / [unknown-event] / [unknown-work] names that are not declared;
- [unknown-hook] / [unknown-guard] hooks and guards that nothing provides;
- [backoff] a malformed backoff policy;
- [unreachable] a state no transition can reach;
- [undecided] a (leaf state, event) pair with no decision, or whose every
  branch is guarded (the pair would do nothing by accident);
- [conflict] an event both ignored and handled in the same state;
- [property] a malformed ``properties:`` entry (the model-checked claims
  ``pullwake check`` verifies; see :class:`PropertySpec`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pullwake.errors import SpecError, SpecErrors

__all__ = [
    "MACHINE_GUARDS",
    "MACHINE_HOOKS",
    "BackoffSpec",
    "EventSpec",
    "LifecycleSpec",
    "PropertySpec",
    "StateSpec",
    "TransitionSpec",
    "WorkSpec",
    "default_spec_path",
    "load_spec",
    "parse_spec",
]

#: Hooks the machine implements itself (pure context updates, no I/O).
MACHINE_HOOKS = frozenset({"record_reset", "clear_reset"})
#: Guards the machine implements (they read machine context only).
MACHINE_GUARDS = frozenset({"reset_pending"})

SEPARATOR = "."
_JITTER = ("none", "full", "equal")
_WORK_KINDS = ("task", "timer")
_TOP_KEYS = {"version", "name", "initial", "backoff", "events", "work", "states", "properties"}
_PROPERTY_KEYS = {"doc", "after", "in", "eventually", "never", "without"}
_STATE_KEYS = {"doc", "initial", "states", "owns", "on_enter", "on_exit", "transitions", "ignore"}
_BRANCH_KEYS = {"to", "internal", "ignore", "if", "unless", "before", "after", "doc"}
_EVENT_KEYS = {"payload", "doc"}
_WORK_KEYS = {"kind", "start", "reports", "delay", "fails", "doc"}
_BACKOFF_KEYS = {"initial_s", "factor", "cap_s", "jitter", "reset_on"}


# ------------------------------------------------------------------ the model


@dataclass(frozen=True)
class EventSpec:
    """One event: its name and payload keywords (``optional`` ones may be absent)."""

    name: str
    payload: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    doc: str = ""

    @property
    def variants(self) -> tuple[tuple[str, dict[str, bool]], ...]:
        """Table columns: the plain event, and one with its optional payload present."""
        plain: tuple[str, dict[str, bool]] = (self.name, {})
        if not self.optional:
            return (plain,)
        present = {k: True for k in self.optional}
        return (plain, (f"{self.name}({','.join(self.optional)})", present))


@dataclass(frozen=True)
class WorkSpec:
    """Work a state owns: started on entry by the ``start`` hook, cancelled on exit."""

    name: str
    kind: str
    start: str
    reports: tuple[str, ...]
    delay: str | None = None
    #: reported (with ``error=``) when the start hook itself raises
    fails: str | None = None


@dataclass(frozen=True)
class StateSpec:
    """A state; ``path`` is dotted (``running.connecting``), ``name`` its last part."""

    path: str
    name: str
    parent: str | None
    children: tuple[str, ...]
    initial: str | None
    owns: str | None
    on_enter: tuple[str, ...]
    on_exit: tuple[str, ...]
    doc: str = ""

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass(frozen=True)
class TransitionSpec:
    """One branch of a decision: ``kind`` is transition, internal or ignored."""

    event: str
    source: str
    kind: str
    dest: str | None
    conditions: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    reason: str | None = None
    line: int | None = None

    @property
    def guarded(self) -> bool:
        return bool(self.conditions or self.unless)


@dataclass(frozen=True)
class BackoffSpec:
    """Reconnect delay policy: ``initial_s * factor**attempt`` capped at ``cap_s``."""

    initial_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0
    jitter: str = "none"
    reset_on: tuple[str, ...] = ("START", "CONNECTED")


@dataclass(frozen=True)
class PropertySpec:
    """A claim about every run of the machine, checked by ``pullwake check``.

    Two forms (state names are paths or unique short names; ``*`` is any state):

    - ``eventually``: ``{after: EVENT, eventually: STATE, in: STATE?}`` — whenever
      EVENT is decided (in a state within ``in``, default anywhere), the machine
      reaches STATE on every continuation made only of events reported by the
      work it owns (no user events): no cycle and no wait avoids STATE;
    - ``never``: ``{never: "FROM -> TO", without: [EVENT, ...]?}`` — no
      transition goes from a state within FROM to a state within TO, except on
      one of the ``without`` events.
    """

    name: str
    kind: str  # eventually | never
    event: str | None = None
    state: str | None = None  # eventually: the state reached
    within: str | None = None  # eventually: where the event is decided ("*": anywhere)
    source: str | None = None  # never: FROM ("*": any)
    target: str | None = None  # never: TO
    allowed: tuple[str, ...] = ()  # never: the "without" events
    doc: str = ""
    line: int | None = None

    @property
    def text(self) -> str:
        if self.kind == "eventually":
            where = f" in {self.within}" if self.within and self.within != "*" else ""
            return f"after {self.event}{where}, eventually {self.state}"
        unless = f" without {', '.join(self.allowed)}" if self.allowed else ""
        return f"never {self.source} -> {self.target}{unless}"


@dataclass(frozen=True)
class LifecycleSpec:
    """A validated lifecycle spec. Immutable; :mod:`pullwake.lifecycle.machine` builds machines."""

    path: str
    name: str
    initial: str
    states: Mapping[str, StateSpec]
    events: Mapping[str, EventSpec]
    work: Mapping[str, WorkSpec]
    transitions: tuple[TransitionSpec, ...]
    backoff: BackoffSpec
    hooks: frozenset[str] = field(default_factory=frozenset)
    properties: tuple[PropertySpec, ...] = ()

    @property
    def leaf_states(self) -> tuple[str, ...]:
        return tuple(p for p, s in self.states.items() if s.is_leaf)

    def leaf_name(self, path: str) -> str:
        return self.states[path].name

    def resolve_initial(self, path: str) -> str:
        """Follow ``initial`` children down to the leaf a transition to ``path`` enters."""
        state = self.states[path]
        while state.initial is not None:
            state = self.states[f"{state.path}{SEPARATOR}{state.initial}"]
        return state.path

    def ancestry(self, path: str) -> list[str]:
        """``path`` then each of its parents, innermost first."""
        out = [path]
        parent = self.states[path].parent
        while parent is not None:
            out.append(parent)
            parent = self.states[parent].parent
        return out

    def decisions(self, leaf: str, event: str) -> list[TransitionSpec]:
        """Branches that apply to (leaf, event), innermost state first, in spec order."""
        by_source: dict[str, list[TransitionSpec]] = {}
        for t in self.transitions:
            if t.event == event:
                by_source.setdefault(t.source, []).append(t)
        out: list[TransitionSpec] = []
        for p in self.ancestry(leaf):
            out.extend(by_source.get(p, []))
        return out


# ---------------------------------------------------------------- line lookup


class _Lines:
    """Maps key paths of the YAML document to line numbers (read off the composed node)."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root
        self._map: dict[tuple[str, ...], int] | None = None

    def _build(self) -> dict[tuple[str, ...], int]:
        out: dict[tuple[str, ...], int] = {}
        root = self._root

        def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
            out.setdefault(path, node.start_mark.line + 1)
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    key = str(k.value)
                    out[(*path, key)] = k.start_mark.line + 1
                    walk(v, (*path, key))
            elif isinstance(node, yaml.SequenceNode):
                for i, v in enumerate(node.value):
                    walk(v, (*path, str(i)))

        if root is not None:
            walk(root, ())
        return out

    def __call__(self, *path: str) -> int | None:
        if self._map is None:
            self._map = self._build()
        p = tuple(path)
        while p:
            if p in self._map:
                return self._map[p]
            p = p[:-1]
        return None


# ------------------------------------------------------------------- parsing


class _Collector:
    def __init__(self, path: str, lines: _Lines) -> None:
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


def _names(value: Any) -> tuple[str, ...] | None:
    """A hook/guard list: a string or a list of strings, else None."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def default_spec_path() -> Path:
    """The spec the package loads: packaged copy (wheel) or the checkout's top-level file.

    ``PULLWAKE_SPEC`` overrides both.
    """
    env = os.environ.get("PULLWAKE_SPEC")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent.parent  # pullwake/
    packaged = package / "machine_spec.yaml"
    if packaged.is_file():
        return packaged
    return package.parent / "machine_spec.yaml"


def load_spec(
    path: str | os.PathLike[str] | None = None, *, hooks: Iterable[str] | None = None
) -> LifecycleSpec:
    """Read, parse and validate a spec file (the default spec when ``path`` is None).

    ``hooks`` are the names the machine's owner provides; by default those of
    :class:`pullwake.lifecycle.machine.LifecycleEffects`. Results are cached per file
    content, so many runners in one process parse the file once.
    """
    p = Path(path) if path is not None else default_spec_path()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror or exc}", path=str(p), kind="io") from exc
    if hooks is None:
        from pullwake.lifecycle.machine import effect_hook_names

        hooks = effect_hook_names()
    return _parse_cached(text, str(p), frozenset(hooks))


@functools.lru_cache(maxsize=32)
def _parse_cached(text: str, path: str, hooks: frozenset[str]) -> LifecycleSpec:
    return parse_spec(text, path=path, hooks=hooks)


#: libyaml's safe loader when PyYAML was built with it (about 10x faster here)
_FAST_LOADER: type[Any] | None = getattr(yaml, "CSafeLoader", None)


def _compose_with(loader_cls: type[Any], text: str) -> tuple[yaml.Node | None, Any]:
    # Parse once: the node gives line numbers, the data is constructed from it
    # (what yaml.safe_load does, without composing the text a second time).
    loader = loader_cls(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def _compose(text: str) -> tuple[yaml.Node | None, Any]:
    """The YAML node and data of ``text``: libyaml's loader when present.

    When the fast loader fails, the text is parsed again by PyYAML's
    pure-Python ``SafeLoader``, whose error (wording, line, column) is what the
    SpecError reports, so messages are the same with and without libyaml.
    Both use the same SafeConstructor and resolver, so the data is the same.
    """
    if _FAST_LOADER is not None:
        try:
            return _compose_with(_FAST_LOADER, text)
        except yaml.YAMLError:
            pass  # re-parse below: the pure-Python parser words the error
    return _compose_with(yaml.SafeLoader, text)


def parse_spec(text: str, *, path: str = "<spec>", hooks: Iterable[str]) -> LifecycleSpec:
    """Parse and validate spec text. Raises SpecErrors listing every problem."""
    try:
        root, raw = _compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecErrors([SpecError(f"not valid YAML: {getattr(exc, 'problem', exc)}",
                                    path=path, line=(mark.line + 1) if mark else None,
                                    kind="yaml")]) from exc
    if not isinstance(raw, dict):
        raise SpecErrors([SpecError("the spec must be a YAML mapping", path=path, kind="schema")])
    c = _Collector(path, _Lines(root))
    spec = _build(raw, c, frozenset(hooks))
    if c.errors or spec is None:
        raise SpecErrors(c.errors)
    return spec


def _build(raw: dict[str, Any], c: _Collector, hooks: frozenset[str]) -> LifecycleSpec | None:
    for key in raw:
        if key not in _TOP_KEYS:
            c.add("schema", f"unknown top-level key {key!r}", at=(str(key),))
    for key in ("initial", "events", "states"):
        if key not in raw:
            c.add("schema", f"missing top-level key {key!r}")
    if raw.get("version", 1) != 1:
        c.add("schema", f"unsupported spec version {raw.get('version')!r}", at=("version",))

    events = _parse_events(raw.get("events"), c)
    work = _parse_work(raw.get("work") or {}, c, events, hooks)
    backoff = _parse_backoff(raw.get("backoff") or {}, c, events)
    states: dict[str, StateSpec] = {}
    transitions: list[TransitionSpec] = []
    raw_states = raw.get("states")
    if not isinstance(raw_states, dict) or not raw_states:
        c.add("schema", "'states' must be a non-empty mapping", at=("states",))
        return None
    _parse_states(raw_states, None, ("states",), c, states, transitions, events, work, hooks)

    initial = raw.get("initial")
    top = [p for p, s in states.items() if s.parent is None]
    if not isinstance(initial, str) or initial not in top:
        c.add("unknown-state", f"initial state {initial!r} is not a top-level state",
              at=("initial",), state=str(initial))
        return None

    # Destinations must exist (checked after all states are known).
    checked: list[TransitionSpec] = []
    for t in transitions:
        if t.kind == "transition":
            dest = _resolve_dest(t.dest or "", t.source, states)
            if dest is None:
                c.add("unknown-state", f"transition to unknown state {t.dest!r}",
                      at=(*_state_at(t.source), "transitions", t.event),
                      state=t.source, event=t.event)
                c.broken.add((t.source, t.event))
                continue
            t = TransitionSpec(**{**t.__dict__, "dest": dest})
        checked.append(t)

    spec = LifecycleSpec(
        path=c.path,
        name=str(raw.get("name", "lifecycle")),
        initial=initial,
        states=states,
        events=events,
        work=work,
        transitions=tuple(checked),
        backoff=backoff,
        hooks=hooks,
        properties=_parse_properties(raw.get("properties"), c, states, events),
    )
    _check_decided(spec, c)
    _check_reachable(spec, c)
    return spec


def _resolve_state_name(name: str, states: Mapping[str, StateSpec]) -> str | None:
    """A state named by its path or by a short name no other state has."""
    if name in states:
        return name
    matches = [p for p, s in states.items() if s.name == name]
    return matches[0] if len(matches) == 1 else None


def _parse_properties(raw: Any, c: _Collector, states: Mapping[str, StateSpec],
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
        allowed = _names(allowed_raw)
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


def _state_at(path: str) -> tuple[str, ...]:
    out: list[str] = ["states"]
    for i, part in enumerate(path.split(SEPARATOR)):
        if i:
            out.append("states")
        out.append(part)
    return tuple(out)


def _parse_events(raw: Any, c: _Collector) -> dict[str, EventSpec]:
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
        payload = _names(body.get("payload"))
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


def _parse_work(
    raw: Any, c: _Collector, events: Mapping[str, EventSpec], hooks: frozenset[str]
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
        reports = _names(body.get("reports")) or ()
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


def _parse_backoff(raw: Any, c: _Collector, events: Mapping[str, EventSpec]) -> BackoffSpec:
    at = ("backoff",)
    if not isinstance(raw, dict):
        c.add("backoff", "'backoff' must be a mapping", at=at)
        return BackoffSpec()
    for key in raw:
        if key not in _BACKOFF_KEYS:
            c.add("backoff", f"unknown backoff key {key!r}", at=(*at, str(key)))
    d = BackoffSpec()
    vals: dict[str, float] = {}
    for key in ("initial_s", "factor", "cap_s"):
        v = raw.get(key, getattr(d, key))
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            c.add("backoff", f"{key} must be a number, got {v!r}", at=(*at, key))
            v = getattr(d, key)
        vals[key] = float(v)
    if vals["initial_s"] <= 0:
        c.add("backoff", f"initial_s must be > 0, got {vals['initial_s']}", at=(*at, "initial_s"))
    if vals["factor"] < 1:
        c.add("backoff", f"factor must be >= 1, got {vals['factor']}", at=(*at, "factor"))
    if vals["cap_s"] < vals["initial_s"]:
        c.add("backoff", f"cap_s ({vals['cap_s']}) must be >= initial_s ({vals['initial_s']})",
              at=(*at, "cap_s"))
    jitter = raw.get("jitter", "none")
    if jitter not in _JITTER:
        c.add("backoff", f"jitter must be one of {_JITTER}, got {jitter!r}", at=(*at, "jitter"))
        jitter = "none"
    reset_on = _names(raw.get("reset_on", list(d.reset_on)))
    if reset_on is None:
        c.add("backoff", "reset_on must be a list of events", at=(*at, "reset_on"))
        reset_on = ()
    for ev in reset_on:
        if ev not in events:
            c.add("unknown-event", f"backoff resets on unknown event {ev!r}",
                  at=(*at, "reset_on"), event=ev)
    return BackoffSpec(initial_s=vals["initial_s"], factor=vals["factor"], cap_s=vals["cap_s"],
                       jitter=str(jitter), reset_on=reset_on)


def _parse_states(
    raw: dict[Any, Any],
    parent: str | None,
    at: tuple[str, ...],
    c: _Collector,
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
            names = _names(body.get(key))
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
            _parse_states(children_raw, path, (*sat, "states"), c, states, transitions,
                          events, work, hooks)


def _parse_decisions(
    body: dict[str, Any],
    path: str,
    sat: tuple[str, ...],
    c: _Collector,
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
        names = _names(evs)
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
    b: Any, path: str, event: str, at: tuple[str, ...], c: _Collector, hooks: frozenset[str]
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
        names = _names(b.get(key))
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


def _resolve_dest(dest: str, source: str, states: Mapping[str, StateSpec]) -> str | None:
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


def _check_decided(spec: LifecycleSpec, c: _Collector) -> None:
    for leaf in spec.leaf_states:
        for event in spec.events:
            branches = spec.decisions(leaf, event)
            line_at = _state_at(leaf)
            if any((p, event) in c.broken for p in spec.ancestry(leaf)):
                continue  # a decision was written but is invalid: already reported
            if not branches:
                c.add("undecided", "no transition, internal transition or named ignore "
                      "decides this pair", at=line_at, state=leaf, event=event)
            elif all(b.guarded for b in branches):
                c.add("undecided", "every branch is guarded: when the guards fail the "
                      "event would be dropped by accident; add an unguarded branch or an "
                      "ignore", at=line_at, state=leaf, event=event)


def _check_reachable(spec: LifecycleSpec, c: _Collector) -> None:
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
            c.add("unreachable", "no transition reaches this state", at=_state_at(path),
                  state=path)
