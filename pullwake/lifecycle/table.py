"""The full (leaf state x event) transition table, read off a loaded machine.

This module owns the table's computation and its renderings (markdown, JSON,
the one-cell-per-line text the snapshot test stores). It asks the built
``transitions`` machine which transitions apply to each leaf state (its own,
then those inherited from its parents, in the order the machine tries them),
so the table shows what the running machine will do, not a second reading of
the YAML.

A cell's ``kind``/``target`` are those of the branch taken in a fresh
context (no reset pending); ``branches`` lists every branch with its guard.
Events with an optional payload get a second column (``STREAM_END(error)``)
computed by evaluating the same branches with that payload present.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pullwake.lifecycle.machine import Lifecycle
from pullwake.lifecycle.model import LifecycleSpec

__all__ = ["Branch", "Cell", "TransitionTable", "compute_table"]


@dataclass(frozen=True)
class Branch:
    kind: str
    target: str
    guard: str
    reason: str | None
    before: tuple[str, ...]
    after: tuple[str, ...]
    declared_in: str

    def describe(self, leaf: str | None = None) -> str:
        out = f"{self.kind} -> {self.target}"
        if self.reason:
            out = f"ignored({self.reason})"
        if leaf is not None and self.declared_in != leaf:
            out += f" @{self.declared_in}"
        if self.guard:
            out += f" [{self.guard}]"
        hooks = [*(f"before:{h}" for h in self.before), *(f"after:{h}" for h in self.after)]
        if hooks:
            out += " {" + ", ".join(hooks) + "}"
        return out


@dataclass(frozen=True)
class Cell:
    state: str
    state_path: str
    event: str
    trigger: str
    target: str
    target_path: str
    kind: str
    guard: str
    reason: str | None
    inherited_from: str | None
    branches: tuple[Branch, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "event": self.event,
            "target": self.target,
            "kind": self.kind,
            "guard": self.guard or None,
            "reason": self.reason,
            "trigger": self.trigger,
            "state_path": self.state_path,
            "target_path": self.target_path,
            "inherited_from": self.inherited_from,
            "branches": [
                {"kind": b.kind, "target": b.target, "guard": b.guard or None,
                 "reason": b.reason, "before": list(b.before), "after": list(b.after),
                 "declared_in": b.declared_in}
                for b in self.branches
            ],
        }


@dataclass(frozen=True)
class TransitionTable:
    spec_path: str
    states: tuple[str, ...]
    events: tuple[str, ...]
    cells: tuple[Cell, ...]

    def cell(self, state: str, event: str) -> Cell:
        for c in self.cells:
            if c.state == state and c.event == event:
                return c
        raise KeyError((state, event))

    def to_json(self) -> str:
        return json.dumps(
            {"spec": self.spec_path, "states": list(self.states), "events": list(self.events),
             "cells": [c.as_dict() for c in self.cells]},
            indent=2,
        )

    def to_lines(self) -> str:
        """One cell per line, fixed columns: the reviewed snapshot format."""
        w_s = max(len(s) for s in self.states)
        w_e = max(len(e) for e in self.events)
        rows = []
        for c in self.cells:
            alts = " | ".join(b.describe(c.state_path) for b in c.branches)
            rows.append(f"{c.state:<{w_s}}  {c.event:<{w_e}}  {c.kind:<10}  "
                        f"{c.target:<{w_s}}  {alts}")
        return "\n".join(rows) + "\n"

    def to_markdown(self) -> str:
        head = "| from \\ event | " + " | ".join(self.events) + " |"
        sep = "|" + "---|" * (len(self.events) + 1)
        lines = [head, sep]
        for s in self.states:
            row = []
            for e in self.events:
                c = self.cell(s, e)
                mark = {"transition": "", "internal": " (internal)", "ignored": " (ignored)"}
                row.append(c.target + mark[c.kind])
            lines.append(f"| {s} | " + " | ".join(row) + " |")
        lines.append("")
        lines.append("| state | event | kind | target | branches (in order; guard in []) |")
        lines.append("|---|---|---|---|---|")
        for c in self.cells:
            alts = "<br>".join(b.describe(c.state_path) for b in c.branches)
            lines.append(f"| {c.state} | {c.event} | {c.kind} | {c.target} | {alts} |")
        return "\n".join(lines) + "\n"


class _NullEffects:
    """Effects that do nothing: a table only inspects the machine."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("start_"):
            return lambda ticket: None
        return lambda *args: None


def compute_table(spec: LifecycleSpec, lifecycle: Lifecycle | None = None) -> TransitionTable:
    """Read the table off a machine built from ``spec`` (a fresh one by default)."""
    lc = lifecycle if lifecycle is not None else Lifecycle(_NullEffects(), spec)
    machine = lc.machine
    names = {p: s.name for p, s in spec.states.items()}
    columns: list[tuple[str, str]] = []
    for ev in spec.events.values():
        for label, _ in ev.variants:
            columns.append((label, ev.name))
    cells: list[Cell] = []
    for leaf in spec.leaf_states:
        for label, trigger in columns:
            transitions = machine.get_transitions(trigger, source=leaf, delegate=True)
            branches: list[Branch] = []
            chosen: Branch | None = None
            chosen_path = leaf
            for t in transitions:
                guard = _guard_text(t)
                if t.dest is None:
                    target_path = leaf
                else:
                    target_path = spec.resolve_initial(t.dest)
                b = Branch(
                    kind=t.kind,
                    target=names[target_path],
                    guard=guard,
                    reason=t.reason,
                    before=tuple(_cb_names(t.before)),
                    after=tuple(_cb_names(t.after)),
                    declared_in=t.source,
                )
                branches.append(b)
                if chosen is None and _passes(t):
                    chosen = b
                    chosen_path = target_path
            if chosen is None:  # unreachable for a validated spec
                raise RuntimeError(f"no branch decides ({leaf}, {label})")
            cells.append(Cell(
                state=names[leaf], state_path=leaf, event=label, trigger=trigger,
                target=chosen.target, target_path=chosen_path, kind=chosen.kind,
                guard=chosen.guard, reason=chosen.reason,
                inherited_from=chosen.declared_in if chosen.declared_in != leaf else None,
                branches=tuple(branches),
            ))
    return TransitionTable(
        spec_path=spec.path,
        states=tuple(names[p] for p in spec.leaf_states),
        events=tuple(label for label, _ in columns),
        cells=tuple(cells),
    )


def _cb_names(cbs: Sequence[Any]) -> list[str]:
    return [getattr(cb, "__name__", str(cb)) for cb in cbs]


def _guard_text(t: Any) -> str:
    parts = []
    for cond in t.conditions:
        name = getattr(cond.func, "__name__", str(cond.func))
        parts.append(name if cond.target else f"!{name}")
    return " & ".join(parts)


def _passes(t: Any) -> bool:
    return all(bool(cond.func(None)) == cond.target for cond in t.conditions)
