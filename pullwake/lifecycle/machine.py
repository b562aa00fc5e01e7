"""The lifecycle machine: ``machine_spec.yaml`` built into a ``transitions`` machine.

This module owns *when*: which state the runner is in, which work each state
owns, and which events are dropped as stale. It does no I/O and imports no
asyncio or aiohttp. Every callback is synchronous and never blocks; the
owner of the machine (the runner) implements
:class:`~pullwake.lifecycle.effects.LifecycleEffects` (the hooks protocol, in
:mod:`.effects`, with :class:`~pullwake.lifecycle.effects.WorkTicket`; both
are re-exported here), which starts and cancels the real work and feeds its
results back as events. The machine implements the hooks and guards of
:data:`~pullwake.lifecycle.effects.MACHINE_HOOKS` and ``MACHINE_GUARDS``
itself, and asks its :class:`~pullwake.lifecycle.backoff.Backoff` (the spec's
reconnect policy) for each timer's delay.

The owned-work rule is enforced here, by construction: for every state that
``owns`` work, the machine adds an ``on_enter`` callback that asks the owner
to start it (handing over a :class:`WorkTicket`) and an ``on_exit`` callback
that cancels it. Only the current ticket can :meth:`WorkTicket.report`
events; a result from cancelled or replaced work is dropped before it
reaches the machine.

Internal and ignored decisions without guards (``WAKE`` and ``OFFSET`` while
streaming, every named ignore) are the hot path. For those, :class:`Lifecycle`
runs the callbacks of the machine's own transition object directly — exactly
what ``Transition.execute`` runs for an internal transition (before, after,
the machine's after_state_change) — without the nested trigger machinery. The
decision still comes from the loaded machine: the shortcut is looked up with
``get_transitions(event, source, delegate=True)`` and used only when the first
applicable transition is internal and unguarded. Such a decision whose hooks are
all the owner's is compiled once per (state, event) into a :class:`_Plan` (the
owner's hooks, in order, and what ``_after`` reports), and an event that
arrives while nothing else runs is decided at once, without the queue: the
cost of a wake's ``WAKE`` and ``OFFSET`` is their hooks and one observer call.

The machine class is the plain synchronous ``HierarchicalMachine``
(``auto_transitions`` off): the async machines cancel unrelated in-flight
triggers on every transition (see docs/lifecycle.md). Events fired from inside
a callback are queued and run after the current one finishes (run-to-completion).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from transitions.extensions.nesting import HierarchicalMachine, NestedState, NestedTransition

from pullwake.lifecycle.backoff import Backoff
from pullwake.lifecycle.effects import (
    MACHINE_GUARDS,
    MACHINE_HOOKS,
    Cancellable,
    LifecycleEffects,
    WorkTicket,
    effect_hook_names,
)
from pullwake.lifecycle.model import SEPARATOR, LifecycleSpec
from pullwake.lifecycle.spec import load_spec

__all__ = [
    "Cancellable",
    "Lifecycle",
    "LifecycleEffects",
    "WorkTicket",
    "build_machine",
    "effect_hook_names",
]

log = logging.getLogger("pullwake.machine")

#: transitions logs every state change at INFO (~25 lines per wake): quiet unless
#: the application chose a level for it (``logging.getLogger("transitions")``);
#: pullwake's own ``pullwake.*`` loggers report the lifecycle instead.
_transitions_log = logging.getLogger("transitions")
if _transitions_log.level == logging.NOTSET:
    _transitions_log.setLevel(logging.WARNING)

class _State(NestedState):
    separator = SEPARATOR


class _Transition(NestedTransition):
    """A transitions Transition that remembers the spec's kind and ignore reason."""

    def __init__(
        self, source: str, dest: str | None, conditions: Any = None, unless: Any = None,
        before: Any = None, after: Any = None, prepare: Any = None,
        kind: str = "transition", reason: str | None = None,
    ) -> None:
        super().__init__(source, dest, conditions, unless, before, after, prepare)  # type: ignore[arg-type]
        self.kind = kind
        self.reason = reason


class _Machine(HierarchicalMachine):
    state_cls = _State
    transition_cls = _Transition


def _named(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a callback the spec name it implements (tables and diagrams show it)."""
    if not inspect.isfunction(fn):
        inner = fn

        def fn(*args: Any) -> Any:
            return inner(*args)

    fn.__name__ = fn.__qualname__ = name
    return fn


def build_machine(
    model: Any,
    spec: LifecycleSpec,
    callback: Callable[[str], Callable[..., Any]],
    guard: Callable[[str], Callable[..., Any]],
    *,
    machine_cls: type = _Machine,
    include_ignores: bool = True,
    state_hooks: Callable[[str, str], list[Callable[..., Any]]] | None = None,
    **machine_kwargs: Any,
) -> Any:
    """Build a ``transitions`` machine for ``model`` from ``spec``.

    ``callback(name)`` and ``guard(name)`` turn spec names into callables;
    ``state_hooks(path, "on_enter"|"on_exit")`` adds the owned-work callbacks.
    Used for the live machine (:class:`Lifecycle`) and for diagrams.
    """

    def state_dict(path: str) -> dict[str, Any]:
        s = spec.states[path]
        d: dict[str, Any] = {"name": s.name}
        for key in ("on_enter", "on_exit"):
            cbs = [callback(n) for n in getattr(s, key)]
            if state_hooks is not None:
                extra = state_hooks(path, key)
                cbs = cbs + extra if key == "on_enter" else extra + cbs
            if cbs:
                d[key] = cbs
        if s.children:
            d["children"] = [state_dict(ch) for ch in s.children]
            d["initial"] = s.initial
        return d

    states = [state_dict(p) for p, s in spec.states.items() if s.parent is None]
    transitions: list[dict[str, Any]] = []
    for t in spec.transitions:
        if t.kind == "ignored" and not include_ignores:
            continue
        td: dict[str, Any] = {
            "trigger": t.event,
            "source": t.source,
            "dest": t.dest if t.kind == "transition" else None,
            "kind": t.kind,
            "reason": t.reason,
        }
        if t.conditions:
            td["conditions"] = [guard(n) for n in t.conditions]
        if t.unless:
            td["unless"] = [guard(n) for n in t.unless]
        if t.before:
            td["before"] = [callback(n) for n in t.before]
        if t.after:
            td["after"] = [callback(n) for n in t.after]
        transitions.append(td)
    return machine_cls(
        model=model,
        states=states,
        transitions=transitions,
        initial=spec.initial,
        auto_transitions=False,
        send_event=True,
        model_attribute="state_path",
        **machine_kwargs,
    )


class Lifecycle:
    """One runner's lifecycle: a live machine, its context, and its owned work.

    ``fire(event, **payload)`` feeds an event; ``state`` is the leaf state's
    short name (``connecting``), ``state_path`` the dotted path.
    """

    state_path: str  # maintained by transitions

    def __init__(
        self,
        effects: LifecycleEffects,
        spec: LifecycleSpec | None = None,
        *,
        rng: Callable[[], float] | None = None,
        name: str = "",
    ) -> None:
        self.spec = spec if spec is not None else load_spec()
        self.effects = effects
        self.name = name
        self.backoff = Backoff(self.spec.backoff.policy, rng=rng)
        self.reset_pending = False
        self.reset_error: BaseException | None = None
        self.last_kind: str | None = None
        self._owned: dict[str, WorkTicket] = {}
        self._epoch = 0
        self._queue: deque[tuple[str, Mapping[str, Any], WorkTicket | None]] = deque()
        self._busy = False
        self._source = self.spec.initial
        self._reset_on = frozenset(self.spec.backoff.reset_on)
        self._shortcuts: dict[tuple[str, str], Any] = {}
        #: {state path: {event: compiled decision or None}} (see _plan).
        self._plans: dict[str, dict[str, _Plan | None]] = {}
        #: {spec hook callback: (name, the owner's hook)}, filled as the machine is built.
        self._raw_hooks: dict[Callable[..., Any], tuple[str, Callable[..., Any]]] = {}
        self._leaf_names = {p: s.name for p, s in self.spec.states.items()}
        self._check_effects(effects)
        self.machine = build_machine(
            self, self.spec, self._callback, self._guard,
            state_hooks=self._owned_hooks,
            after_state_change=[self._after],
        )

    # ------------------------------------------------------------------ public

    @property
    def state(self) -> str:
        """The leaf state's short name: stopped, connecting, streaming, …"""
        return self._leaf_names[self.state_path]

    def fire(self, event: str, **payload: Any) -> None:
        """Feed ``event``. Events fired from inside a callback run after it finishes."""
        self._enqueue(event, payload, None)

    def owned(self, state_path: str | None = None) -> WorkTicket | None:
        """The current ticket of the work owned by ``state_path`` (default: the leaf)."""
        return self._owned.get(state_path or self.state_path)

    @property
    def owned_work(self) -> dict[str, str]:
        """{state path: work name} for every piece of work running now."""
        return {p: t.work for p, t in self._owned.items()}

    def guard_values(self) -> dict[str, bool]:
        """Each machine guard's value now: the context a guarded decision reads."""
        return {g: bool(getattr(self, "_guard_" + g)()) for g in sorted(MACHINE_GUARDS)}

    # ---------------------------------------------------------------- internals

    def _check_effects(self, effects: object) -> None:
        from pullwake.errors import SpecError

        needed = set(self.spec.hooks) & _used_hooks(self.spec)
        missing = sorted(n for n in needed if not callable(getattr(effects, n, None)))
        if missing:
            raise SpecError(
                f"{type(effects).__name__} does not provide hook(s) {', '.join(missing)}",
                path=self.spec.path, kind="unknown-hook",
            )

    def _enqueue(self, event: str, payload: Mapping[str, Any], ticket: WorkTicket | None) -> None:
        if not self._busy and not self._queue:
            # The hot path: nothing is running, so this event runs now. A
            # compiled decision (see _plan) runs without the queue; the rest
            # go through it as usual.
            plans = self._plans.get(self.state_path)
            if plans is None:
                plans = self._plans_for(self.state_path)
            plan = plans.get(event)
            if plan is not None and (ticket is None or not ticket.cancelled):
                self._busy = True
                try:
                    self._run_plan(plan, payload)
                finally:
                    self._busy = False
                if self._queue:  # fired by its hooks: run now, in order
                    self._drain()
                return
        self._queue.append((event, payload, ticket))
        if not self._busy:
            self._drain()

    def _drain(self) -> None:
        """Run queued events until none is left (run-to-completion)."""
        self._busy = True
        first_error: BaseException | None = None
        try:
            while self._queue:
                ev, pl, t = self._queue.popleft()
                if t is not None and t.cancelled:  # stale since it was queued
                    log.debug("dropped stale %s from %s#%d", ev, t.work, t.epoch)
                    continue
                self._source = self.state_path
                try:
                    plan = self._plans_for(self._source).get(ev)
                    if plan is not None:
                        self._run_plan(plan, pl)
                        continue
                    fast = self._shortcut(self._source, ev)
                    if fast is not None:
                        self._run_internal(fast, ev, pl)
                    else:
                        self.trigger(ev, **pl)  # type: ignore[attr-defined]
                except Exception as exc:
                    # One bad event must not drop the events queued behind it.
                    if first_error is None:
                        first_error = exc
                    else:
                        log.exception("%sevent %s raised", self._prefix, ev)
        finally:
            self._busy = False
        if first_error is not None:
            raise first_error

    def _plans_for(self, state_path: str) -> dict[str, _Plan | None]:
        """The compiled decisions of every event in ``state_path`` (see :class:`_Plan`)."""
        plans = self._plans.get(state_path)
        if plans is None:
            plans = self._plans[state_path] = {ev: self._plan(state_path, ev)
                                               for ev in self.spec.events}
        return plans

    def _plan(self, state_path: str, event: str) -> _Plan | None:
        """The shortcut transition of (state, event) compiled, if all its hooks are the
        owner's (a machine hook reads the event data: those run the transition)."""
        transition = self._shortcut(state_path, event)
        if transition is None:
            return None
        hooks = []
        for cb in [*transition.before, *transition.after]:
            raw = self._raw_hooks.get(cb)
            if raw is None:
                return None
            hooks.append(raw)
        kind = transition.kind
        return _Plan(event, tuple(hooks), self._leaf_names[state_path], kind,
                     kind != "ignored" and event in self._reset_on)

    def _run_plan(self, plan: _Plan, payload: Mapping[str, Any]) -> None:
        """What :meth:`_run_internal` does for ``plan``'s transition: its hooks with the
        payload (each guarded like :meth:`_callback`'s), then :meth:`_after`'s report."""
        for name, fn in plan.hooks:
            try:
                fn(payload)
            except Exception:
                log.exception("%shook %s raised; the lifecycle continues", self._prefix, name)
        kind = plan.kind
        self.last_kind = kind
        if plan.resets:
            self.backoff.reset()
        try:
            self.effects.on_transition(plan.source, plan.event, plan.source, kind)
        except Exception:
            log.exception("%son_transition raised", self._prefix)

    def _shortcut(self, state_path: str, event: str) -> Any:
        """The machine's transition for (state, event) if it is internal and unguarded."""
        key = (state_path, event)
        try:
            return self._shortcuts[key]
        except KeyError:
            pass
        found = None
        if event in self.machine.events:
            applicable = self.machine.get_transitions(event, source=state_path, delegate=True)
            first = applicable[0] if applicable else None
            if (first is not None and first.dest is None and not first.conditions
                    and not first.prepare):
                found = first
        self._shortcuts[key] = found
        return found

    def _run_internal(self, transition: Any, event: str, payload: Mapping[str, Any]) -> None:
        ev = _InternalEvent(transition, self.machine.events[event], payload)
        for cb in transition.before:
            cb(ev)
        for cb in transition.after:
            cb(ev)
        self._after(ev)

    def _callback(self, name: str) -> Callable[..., Any]:
        if name in MACHINE_HOOKS:
            return _named(name, getattr(self, "_hook_" + name))
        fn = getattr(self.effects, name)

        def call(ev: Any) -> None:
            try:
                fn(ev.kwargs)
            except Exception:
                log.exception("%shook %s raised; the lifecycle continues", self._prefix, name)

        named = _named(name, call)
        self._raw_hooks[named] = (name, fn)  # what a compiled decision calls (see _plan)
        return named

    def _guard(self, name: str) -> Callable[..., Any]:
        return _named(name, getattr(self, "_guard_" + name))

    def _owned_hooks(self, path: str, key: str) -> list[Callable[..., Any]]:
        work = self.spec.states[path].owns
        if work is None:
            return []
        if key == "on_enter":
            return [_named(f"start:{work}", functools.partial(self._start_owned, path))]
        return [_named(f"cancel:{work}", functools.partial(self._cancel_owned, path))]

    def _start_owned(self, path: str, ev: Any) -> None:
        work = self.spec.work[self.spec.states[path].owns or ""]
        self._epoch += 1
        delay = self.backoff.next_delay() if work.delay == "backoff" else None
        ticket = WorkTicket(self, work.name, frozenset(work.reports), path, self._epoch,
                            delay, dict(ev.kwargs))
        replaced = self._owned.get(path)
        if replaced is not None:
            replaced.cancelled = True  # stale (its results are dropped): not current
        self._owned[path] = ticket
        try:
            ticket.handle = getattr(self.effects, work.start)(ticket)
        except Exception as exc:
            # Work that never started must not leave the state waiting forever:
            # report the failure event the spec declares for it.
            log.exception("%sstarting %s raised", self._prefix, work.name)
            if work.fails is not None:
                self._enqueue(work.fails, {"error": exc}, ticket)

    def _cancel_owned(self, path: str, ev: Any) -> None:
        ticket = self._owned.pop(path, None)
        if ticket is None:
            return
        ticket.cancelled = True
        if ticket.handle is not None:
            try:
                ticket.handle.cancel()
            except Exception:
                log.exception("%scancelling %s raised", self._prefix, ticket.work)

    def _after(self, ev: Any) -> None:
        kind = ev.transition.kind
        self.last_kind = kind
        event = ev.event.name
        if kind != "ignored" and event in self._reset_on:
            self.backoff.reset()
        try:
            self.effects.on_transition(self._leaf_names[self._source], event, self.state, kind)
        except Exception:
            log.exception("%son_transition raised", self._prefix)

    @property
    def _prefix(self) -> str:
        return f"[{self.name}] " if self.name else ""

    # machine-provided hooks and guards (named in the spec)

    def _hook_record_reset(self, ev: Any) -> None:
        self.reset_pending = True
        self.reset_error = ev.kwargs.get("error")

    def _hook_clear_reset(self, ev: Any) -> None:
        self.reset_pending = False
        self.reset_error = None

    def _guard_reset_pending(self, ev: Any = None) -> bool:
        return self.reset_pending


class _Plan(NamedTuple):
    """A compiled internal or ignored decision without guards (the hot path):
    ``hooks`` are ``(name, hook)`` of the transition's ``before`` then ``after``
    callbacks, all the owner's; ``source`` the leaf's name (an internal or
    ignored event stays in it); ``resets`` whether it resets the backoff."""

    event: str
    hooks: tuple[tuple[str, Callable[..., Any]], ...]
    source: str
    kind: str
    resets: bool


class _InternalEvent:
    """The EventData fields pullwake's callbacks read, for the internal shortcut."""

    __slots__ = ("event", "kwargs", "transition")

    def __init__(self, transition: Any, event: Any, kwargs: Mapping[str, Any]) -> None:
        self.transition = transition
        self.event = event
        self.kwargs = kwargs


def _used_hooks(spec: LifecycleSpec) -> set[str]:
    used: set[str] = set()
    for s in spec.states.values():
        used.update(s.on_enter, s.on_exit)
    for t in spec.transitions:
        used.update(t.before, t.after)
    for w in spec.work.values():
        used.add(w.start)
    return used

