"""The content of a lifecycle review: what changed between two valid specs (no I/O).

This module owns the comparison :func:`pullwake.lifecycle.review.review`
reports:

- :func:`table_diff`: the transition-table diff, cell by cell (a (leaf state x
  event) cell is *added* or *removed* when its state or event is, or
  *changed* in its kind, target, guard, hooks, ignore reason or list of
  branches), as :class:`CellChange`;
- :func:`renames`: events that look renamed (removed and added with the same
  decision in every state);
- :func:`other_changes`: the spec changes that are not table cells (states,
  owned work, what work reports, events and payloads, the backoff policy,
  properties), in words;
- :func:`merged_drawing`: one :class:`~pullwake.lifecycle.drawing.Drawing` of
  both machines with the changes marked (added / removed / changed).

Rendering the report is :mod:`.review`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from pullwake.lifecycle.drawing import Drawing, DrawnBranch, DrawnState
from pullwake.lifecycle.model import LifecycleSpec
from pullwake.lifecycle.table import Cell, TransitionTable

__all__ = ["NONE", "CellChange", "merged_drawing", "other_changes", "renames", "table_diff"]

#: How a report shows "nothing" (no guard, no hooks, no value).
NONE = "—"


@dataclass(frozen=True)
class CellChange:
    """One table cell that differs; ``fields`` are (name, before, after) for a change."""

    state: str
    state_path: str
    event: str
    change: str  # added | removed | changed
    before: str = ""
    after: str = ""
    fields: tuple[tuple[str, str, str], ...] = ()


def _cell_text(c: Cell) -> str:
    if c.kind == "transition":
        out = f"→ {c.target}"
    elif c.kind == "internal":
        out = "internal"
    else:
        out = f"ignored ({c.reason})"
    if c.guard:
        out += f" [{c.guard}]"
    hooks = _hooks_text(c)
    if hooks != NONE:
        out += f" / {hooks}"
    if c.inherited_from:
        out += f" @{c.inherited_from}"
    return out


def _hooks_text(c: Cell) -> str:
    chosen = next((b for b in c.branches if b.kind == c.kind and b.guard == c.guard
                   and b.reason == c.reason and b.target == c.target), None)
    if chosen is None:
        return NONE
    parts = [f"{k}: {', '.join(v)}" for k, v in (("before", chosen.before),
                                                  ("after", chosen.after)) if v]
    return "; ".join(parts) or NONE


def _whole_cell(c: Cell) -> str:
    """A cell that exists on one side only: its decision, then any further branches."""
    if len(c.branches) == 1:
        return _cell_text(c)
    return _cell_text(c) + "; branches: " + _branches_text(c)


def _branches_text(c: Cell) -> str:
    return " | ".join(b.describe(c.state_path) for b in c.branches)


def table_diff(old: TransitionTable, new: TransitionTable) -> list[CellChange]:
    old_cells = {(c.state_path, c.event): c for c in old.cells}
    new_cells = {(c.state_path, c.event): c for c in new.cells}
    events = list(new.events) + [e for e in old.events if e not in new.events]
    paths = [c.state_path for c in new.cells] + [c.state_path for c in old.cells]
    order = list(dict.fromkeys(paths))
    out: list[CellChange] = []
    for path in order:
        for event in events:
            a, b = old_cells.get((path, event)), new_cells.get((path, event))
            if a is None and b is None:
                continue
            if a is None:
                assert b is not None
                out.append(CellChange(b.state, path, event, "added", after=_whole_cell(b)))
            elif b is None:
                out.append(CellChange(a.state, path, event, "removed", before=_whole_cell(a)))
            else:
                fields = _cell_fields(a, b)
                if fields:
                    out.append(CellChange(b.state, path, event, "changed", before=_cell_text(a),
                                          after=_cell_text(b), fields=tuple(fields)))
    return out


def _cell_fields(a: Cell, b: Cell) -> list[tuple[str, str, str]]:
    pairs = [
        ("kind", a.kind, b.kind),
        ("target", a.target, b.target),
        ("guard", a.guard or NONE, b.guard or NONE),
        ("hooks", _hooks_text(a), _hooks_text(b)),
        ("ignore reason", a.reason or NONE, b.reason or NONE),
    ]
    fields = [p for p in pairs if p[1] != p[2]]
    ba, bb = _branches_text(a), _branches_text(b)
    if ba != bb and (not fields or len(a.branches) > 1 or len(b.branches) > 1):
        fields.append(("branches", ba, bb))
    return fields


def _event_columns(table: TransitionTable, event: str) -> dict[tuple[str, str], tuple[object, ...]]:
    """The decisions of one event (all its columns), keyed by (state, column suffix)."""
    out: dict[tuple[str, str], tuple[object, ...]] = {}
    for c in table.cells:
        if c.trigger == event:
            suffix = c.event[len(event):]
            out[(c.state_path, suffix)] = (c.kind, c.target_path, c.guard, c.reason,
                                           tuple((b.kind, b.target, b.guard, b.reason, b.before,
                                                  b.after) for b in c.branches))
    return out


def renames(old: LifecycleSpec, new: LifecycleSpec, old_t: TransitionTable,
             new_t: TransitionTable) -> list[tuple[str, str]]:
    gone = [e for e in old.events if e not in new.events]
    came = [e for e in new.events if e not in old.events]
    out: list[tuple[str, str]] = []
    for g in gone:
        for n in came:
            if n in (x for _, x in out):
                continue
            if _event_columns(old_t, g) == _event_columns(new_t, n):
                out.append((g, n))
                break
    return out


def _listed(names: Iterable[str]) -> str:
    items = [f"`{n}`" for n in names]
    return ", ".join(items) if items else NONE


def other_changes(old: LifecycleSpec, new: LifecycleSpec,
                   renamed: list[tuple[str, str]]) -> list[str]:
    out: list[str] = []
    if old.initial != new.initial:
        out.append(f"initial state: `{old.initial}` → `{new.initial}`")
    for path in new.states:
        if path not in old.states:
            s = new.states[path]
            owns = f", owns `{s.owns}`" if s.owns else ""
            out.append(f"state added: `{path}`{owns}")
    for path in old.states:
        if path not in new.states:
            out.append(f"state removed: `{path}`")
    for path, s in new.states.items():
        o = old.states.get(path)
        if o is None:
            continue
        for attr, name in (("owns", "owns"), ("initial", "initial child"),
                           ("on_enter", "entry hooks"), ("on_exit", "exit hooks")):
            a, b = getattr(o, attr), getattr(s, attr)
            if a != b:
                out.append(f"state `{path}`: {name} {_value(a)} → {_value(b)}")
    renames = dict(renamed)
    for old_name, new_name in renamed:
        out.append(f"event renamed: `{old_name}` → `{new_name}` (the same decision in every "
                   "state)")
    for name in new.events:
        if name not in old.events and name not in renames.values():
            out.append(f"event added: `{name}`")
    for name in old.events:
        if name not in new.events and name not in renames:
            out.append(f"event removed: `{name}`")
    for name, e in new.events.items():
        o_e = old.events.get(name)
        if o_e is not None and (o_e.payload, o_e.optional) != (e.payload, e.optional):
            out.append(f"event `{name}`: payload {_payload(o_e.payload, o_e.optional)} → "
                       f"{_payload(e.payload, e.optional)}")
    for name, w in new.work.items():
        o_w = old.work.get(name)
        if o_w is None:
            out.append(f"work added: `{name}` ({w.kind}, starts with `{w.start}`, reports "
                       f"{_listed(w.reports)})")
            continue
        for attr in ("kind", "start", "reports", "delay", "fails"):
            a, b = getattr(o_w, attr), getattr(w, attr)
            if a != b:
                out.append(f"work `{name}`: {attr} {_value(a)} → {_value(b)}")
    for name in old.work:
        if name not in new.work:
            out.append(f"work removed: `{name}`")
    for attr in ("initial_s", "factor", "cap_s", "jitter", "reset_on"):
        a, b = getattr(old.backoff, attr), getattr(new.backoff, attr)
        if a != b:
            out.append(f"backoff {attr}: {_value(a)} → {_value(b)}")
    old_p = {p.name: p for p in old.properties}
    new_p = {p.name: p for p in new.properties}
    for name, p in new_p.items():
        if name not in old_p:
            out.append(f"property added: `{name}`: {p.text}")
        elif old_p[name].text != p.text:
            out.append(f"property `{name}`: {old_p[name].text} → {p.text}")
    for name, p in old_p.items():
        if name not in new_p:
            out.append(f"property removed: `{name}`: {p.text}")
    return out


def _payload(payload: tuple[str, ...], optional: tuple[str, ...]) -> str:
    return _listed(p + ("?" if p in optional else "") for p in payload)


def _value(v: object) -> str:
    if v is None or v == ():
        return NONE
    if isinstance(v, tuple):
        return _listed(str(x) for x in v)
    return f"`{v}`"


# ---------------------------------------------------------- merged drawing


def _branch_note(a: DrawnBranch, b: DrawnBranch) -> str:
    parts = []
    if a.kind != b.kind:
        parts.append(f"was {a.kind}" + (f" ({a.reason})" if a.kind == "ignored" else ""))
    if a.dest != b.dest and a.kind == b.kind == "transition":
        parts.append(f"was → {(a.dest or '').rsplit('.', 1)[-1]}")
    if a.guard != b.guard:
        parts.append(f"was [{a.guard}]" if a.guard else "was unguarded")
    if (a.before, a.after) != (b.before, b.after):
        hooks = [f"{k}: {', '.join(v)}" for k, v in (("before", a.before), ("after", a.after))
                 if v]
        parts.append("hooks were " + ("; ".join(hooks) if hooks else "none"))
    if a.reason != b.reason and a.kind == b.kind == "ignored":
        parts.append(f"reason was {a.reason}")
    return ", ".join(parts)


def _state_note(a: DrawnState, b: DrawnState) -> str:
    parts = []
    wa, wb = a.work, b.work
    if (wa.name if wa else None) != (wb.name if wb else None):
        parts.append(f"owned {wa.name if wa else 'nothing'}")
    elif wa is not None and wb is not None and wa != wb:
        parts.append(f"{wa.name} was: reports {', '.join(wa.reports)}"
                     + (f", cannot start: {wa.fails}" if wa.fails else ""))
    if a.backoff != b.backoff and a.backoff and b.backoff:
        parts.append(f"was {a.backoff}")
    if a.on_enter != b.on_enter:
        parts.append(f"entry was {', '.join(a.on_enter) or 'none'}")
    if a.on_exit != b.on_exit:
        parts.append(f"exit was {', '.join(a.on_exit) or 'none'}")
    if a.initial != b.initial:
        parts.append(f"initial child was {a.initial}")
    return "; ".join(parts)


def merged_drawing(old: Drawing, new: Drawing, base_label: str, head_label: str) -> Drawing:
    old_states = {s.path: s for s in old.states}
    new_paths = {s.path for s in new.states}
    states: list[DrawnState] = []
    for s in new.states:
        o = old_states.get(s.path)
        if o is None:
            states.append(replace(s, status="added"))
        elif o.content != s.content:
            states.append(replace(s, status="changed", note=_state_note(o, s)))
        else:
            states.append(s)
    for s in old.states:
        if s.path not in new_paths:
            states.append(replace(s, status="removed"))

    groups: dict[tuple[str, str], tuple[list[DrawnBranch], list[DrawnBranch]]] = {}
    for b in old.branches:
        groups.setdefault((b.source, b.event), ([], []))[0].append(b)
    for b in new.branches:
        groups.setdefault((b.source, b.event), ([], []))[1].append(b)
    state_order = {s.path: i for i, s in enumerate(states)}
    event_order = {e: i for i, e in enumerate(dict.fromkeys(
        [b.event for b in new.branches] + [b.event for b in old.branches]))}
    branches: list[DrawnBranch] = []
    for key in sorted(groups, key=lambda k: (state_order[k[0]], event_order[k[1]])):
        was, now = groups[key]
        branches.extend(_match_branches(was, now))
    return Drawing(name=new.name, source=f"{base_label} → {head_label}", initial=new.initial,
                   states=tuple(states), branches=tuple(branches), review=True)


def _match_branches(was: list[DrawnBranch], now: list[DrawnBranch]) -> list[DrawnBranch]:
    """Mark one decision's branches: equal ones unchanged, then pair the rest in order."""
    left = list(was)
    status: dict[int, tuple[str, str]] = {}
    for i, b in enumerate(now):
        same = next((a for a in left if a.content == b.content), None)
        if same is not None:
            left.remove(same)
            status[i] = ("", "")
    unmatched = [i for i in range(len(now)) if i not in status]
    for i in unmatched:
        # an edge pairs with an edge, a row inside the state with a row: a transition
        # that replaces an ignore is an added edge (and a removed ignore)
        edge = now[i].kind == "transition"
        a = next((x for x in left if (x.kind == "transition") == edge), None)
        if a is not None:
            left.remove(a)
            status[i] = ("changed", _branch_note(a, now[i]))
        else:
            status[i] = ("added", "")
    out = [replace(b, status=status[i][0], note=status[i][1]) for i, b in enumerate(now)]
    out += [replace(a, status="removed", index=len(now) + j) for j, a in enumerate(left)]
    return out
