"""The lifecycle spec's model: the frozen dataclasses a validated ``machine_spec.yaml`` becomes.

This module owns the shape of a :class:`LifecycleSpec` (states, events, owned
work, transitions, the reconnect backoff, the model-checked properties) and
the questions it answers about itself (ancestry, a leaf's decisions, the leaf
an ``initial`` chain enters). It parses nothing and validates nothing
(:mod:`.spec` loads, :mod:`.validate` and :mod:`.validate_states` check) and
knows nothing of ``transitions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pullwake.lifecycle.backoff import BackoffPolicy, Jitter

__all__ = [
    "SEPARATOR",
    "BackoffSpec",
    "EventSpec",
    "LifecycleSpec",
    "PropertySpec",
    "StateSpec",
    "TransitionSpec",
    "WorkSpec",
]

#: Between the parts of a state path: ``running.connecting``.
SEPARATOR = "."


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
    """The spec's ``backoff:``: the reconnect policy, and the events that reset it.

    The delay arithmetic is :class:`~pullwake.lifecycle.backoff.Backoff`'s on
    :attr:`policy` (``min(cap_s, initial_s * factor**attempt)``, jittered);
    the defaults are :class:`~pullwake.lifecycle.backoff.BackoffPolicy`'s
    (full jitter: many runners dropped by one outage must not reconnect in
    lock-step).
    """

    initial_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0
    jitter: Jitter = "full"
    reset_on: tuple[str, ...] = ("START", "CONNECTED")

    @property
    def policy(self) -> BackoffPolicy:
        """The delay policy alone, for :class:`~pullwake.lifecycle.backoff.Backoff`."""
        return BackoffPolicy(initial_s=self.initial_s, factor=self.factor, cap_s=self.cap_s,
                             jitter=self.jitter)


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
