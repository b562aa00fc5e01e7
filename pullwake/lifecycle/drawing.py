"""What a lifecycle diagram shows, read off the loaded machine (no rendering, no I/O).

This module owns the *content* of the diagrams: a :class:`Drawing` lists every
state (with the work it owns, the events that work reports, its entry/exit
hooks, the backoff policy of a timer, its deliberate ignores) and every branch
of every decision (kind, target, guard, hooks), in spec order. The branches
are read off a ``transitions`` machine built from the spec, the same machine
the runner drives, so the picture cannot drift from the behaviour. It also
owns what both engines agree on: where a branch is drawn (an edge, or listed
inside its state: :func:`is_edge`, :func:`listed_inside`,
:func:`ignore_groups`), the review marks' :data:`COLORS`, and
:func:`graph_of`, the bridge to ``transitions``' diagram engines.
:mod:`.diagram_dot` and :mod:`.diagram_mermaid` render a Drawing,
:mod:`.diagram` writes and gates the files, and :mod:`.review` merges two
Drawings and marks what changed.

Branch identity: ``(source, event, n)`` where ``n`` counts the branches of
``event`` declared in ``source``, in the order the machine tries them. A branch
guarded by nothing that follows guarded branches of the same decision is shown
as ``[else]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pullwake.lifecycle.machine import build_machine
from pullwake.lifecycle.model import LifecycleSpec, WorkSpec

__all__ = [
    "COLORS",
    "Drawing",
    "DrawnBranch",
    "DrawnState",
    "backoff_text",
    "drawing_of",
    "graph_of",
    "ignore_groups",
    "is_edge",
    "listed_inside",
    "reenters",
]

#: review status of a state or branch ("" = unchanged or not a review)
STATUSES = ("", "added", "removed", "changed")
#: colours of review marks (GitHub's palette: readable on white), in both engines
COLORS = {"added": "#1a7f37", "removed": "#cf222e", "changed": "#d1680a"}


@dataclass(frozen=True)
class DrawnBranch:
    """One branch of one decision, as the machine holds it."""

    source: str
    event: str
    index: int
    kind: str  # transition | internal | ignored
    dest: str | None  # the declared target (a state path); None unless kind == transition
    guard: str = ""  # "reset_pending", "!reset_pending", "else" or ""
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    reason: str | None = None
    status: str = ""
    note: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.source, self.event, self.index)

    @property
    def content(self) -> tuple[Any, ...]:
        """What a reviewer compares: everything but position and review marks."""
        return (self.kind, self.dest, self.guard, self.before, self.after, self.reason)

    def text(self) -> str:
        """``EVENT [guard] -> target / before: a; after: b`` (one line, for reports)."""
        out = self.event + (f" [{self.guard}]" if self.guard else "")
        if self.kind == "transition":
            out += f" -> {self.dest}"
        elif self.kind == "internal":
            out += " (internal)"
        else:
            out += f" ignored ({self.reason})"
        hooks = [part for part in (
            f"before: {', '.join(self.before)}" if self.before else "",
            f"after: {', '.join(self.after)}" if self.after else "") if part]
        return out + (" / " + "; ".join(hooks) if hooks else "")


@dataclass(frozen=True)
class DrawnState:
    """A state and what it owns; ``children`` are paths, spec order."""

    path: str
    name: str
    parent: str | None
    children: tuple[str, ...]
    initial: str | None
    work: WorkSpec | None
    backoff: str | None  # the policy text, for a timer whose delay is the backoff
    on_enter: tuple[str, ...]
    on_exit: tuple[str, ...]
    doc: str = ""
    status: str = ""
    note: str = ""

    @property
    def content(self) -> tuple[Any, ...]:
        w = self.work
        work = None if w is None else (w.name, w.kind, w.start, w.reports, w.delay, w.fails)
        return (self.parent, self.initial, work, self.backoff, self.on_enter, self.on_exit)


@dataclass(frozen=True)
class Drawing:
    """Everything a lifecycle diagram shows. ``review`` adds the change legend."""

    name: str
    source: str  # file name shown in the title
    initial: str
    states: tuple[DrawnState, ...]
    branches: tuple[DrawnBranch, ...]
    review: bool = False
    banner: tuple[str, ...] = field(default=())

    def state(self, path: str) -> DrawnState:
        for s in self.states:
            if s.path == path:
                return s
        raise KeyError(path)

    def branches_from(self, source: str) -> list[DrawnBranch]:
        return [b for b in self.branches if b.source == source]

    def with_marks(self, **changes: Any) -> Drawing:
        return replace(self, **changes)


def backoff_text(spec: LifecycleSpec) -> str:
    """The reconnect policy in words.

    ``backoff 1 s ×2 per attempt, cap 30 s, full jitter: up to 1, 2, 4 … 30 s; reset by …``
    """
    b = spec.backoff
    seq: list[str] = []
    d = b.initial_s
    while len(seq) < 6:
        seq.append(_seconds(min(d, b.cap_s)))
        if d >= b.cap_s:
            break
        d *= b.factor
    tail = " …" if d < b.cap_s or len(seq) == 6 else ""
    jitter = _JITTER_WORDS.get(b.jitter, f"{b.jitter} jitter:")
    resets = ", ".join(b.reset_on) or "nothing"
    return (f"backoff {_seconds(b.initial_s)} s ×{_number(b.factor)} per attempt, "
            f"cap {_seconds(b.cap_s)} s, {jitter} {', '.join(seq)}{tail} s; "
            f"reset by {resets}")


#: How each jitter reads before the sequence of bounds.
_JITTER_WORDS = {"none": "no jitter:", "full": "full jitter: up to", "equal":
                 "equal jitter: half to all of"}


def _number(x: float) -> str:
    return f"{x:g}"


def _seconds(x: float) -> str:
    return f"{x:g}"


def _name_only(name: str) -> Callable[..., Any]:
    def cb(*args: Any) -> None:
        return None

    cb.__name__ = cb.__qualname__ = name
    return cb


class _Model:
    state_path: str


def drawing_of(spec: LifecycleSpec, *, source: str | None = None) -> Drawing:
    """Read a Drawing off a machine built from ``spec`` (callbacks by name only)."""
    machine = build_machine(_Model(), spec, _name_only, _name_only)
    backoff = backoff_text(spec)
    states = tuple(
        DrawnState(
            path=s.path, name=s.name, parent=s.parent, children=s.children,
            initial=s.initial,
            work=spec.work[s.owns] if s.owns else None,
            backoff=backoff if s.owns and spec.work[s.owns].delay == "backoff" else None,
            on_enter=s.on_enter, on_exit=s.on_exit, doc=s.doc,
        )
        for s in spec.states.values()
    )
    branches: list[DrawnBranch] = []
    for path in spec.states:
        for event in spec.events:
            ev = machine.events.get(event)
            if ev is None:
                continue
            declared: Sequence[Any] = ev.transitions.get(path, [])
            guarded_before = False
            for i, t in enumerate(declared):
                guard = _guard_text(t)
                if not guard and guarded_before:
                    guard = "else"
                guarded_before = guarded_before or bool(t.conditions)
                branches.append(DrawnBranch(
                    source=path, event=event, index=i, kind=t.kind,
                    dest=t.dest if t.kind == "transition" else None,
                    guard=guard,
                    before=tuple(_cb_name(cb) for cb in t.before),
                    after=tuple(_cb_name(cb) for cb in t.after),
                    reason=t.reason,
                ))
    return Drawing(name=spec.name, source=source or _file_name(spec.path),
                   initial=spec.initial, states=states, branches=tuple(branches))


def _file_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _cb_name(cb: Any) -> str:
    return str(getattr(cb, "__name__", cb))


def _guard_text(t: Any) -> str:
    parts = []
    for cond in t.conditions:
        name = _cb_name(cond.func)
        parts.append(name if cond.target else f"!{name}")
    return " & ".join(parts)


# ------------------------------------------------- where a branch is drawn


def ignore_groups(branches: list[DrawnBranch]) -> list[tuple[str, list[DrawnBranch]]]:
    """Unguarded ignores of a state, grouped by reason (spec order)."""
    groups: dict[str, list[DrawnBranch]] = {}
    decided_otherwise = {b.event for b in branches if b.kind != "ignored"}
    for b in branches:
        if b.kind == "ignored" and b.event not in decided_otherwise:
            groups.setdefault(b.reason or "", []).append(b)
    return list(groups.items())


def reenters(b: DrawnBranch) -> bool:
    """A transition back to its own source: drawn inside the state, not as a loop."""
    return b.kind == "transition" and b.dest == b.source


def is_edge(b: DrawnBranch) -> bool:
    return b.kind == "transition" and b.dest is not None and not reenters(b)


def listed_inside(branches: list[DrawnBranch]) -> list[DrawnBranch]:
    """Branches listed inside the state: internal ones, transitions back to the
    state itself (exit and entry run), and ignores that are one branch of a
    decision with other branches."""
    decided_otherwise = {b.event for b in branches if b.kind != "ignored"}
    return [b for b in branches if b.kind == "internal" or reenters(b)
            or (b.kind == "ignored" and b.event in decided_otherwise)]


# -------------------------------------------- the bridge to the engines


def _graph_states(drawing: Drawing, parent: str | None = None) -> list[dict[str, Any]]:
    out = []
    for s in drawing.states:
        if s.parent != parent:
            continue
        d: dict[str, Any] = {"name": s.name}
        if s.children:
            d["children"] = _graph_states(drawing, s.path)
            d["initial"] = s.initial
        out.append(d)
    return out


class _GraphModel:
    state_path: str


def graph_of(drawing: Drawing, base: type, engine: str) -> Any:
    """The graph of a ``transitions`` graph machine (``base``, engine ``graphviz`` or
    ``mermaid``) holding the Drawing's states: the entry to both diagram engines."""
    cls = type("_Machine", (base,), {"drawing": drawing})
    model = _GraphModel()
    cls(model=model, states=_graph_states(drawing), transitions=[], initial=drawing.initial,
        auto_transitions=False, model_attribute="state_path", title=drawing.name,
        graph_engine=engine)
    return model.get_graph(force_new=True)  # type: ignore[attr-defined]
