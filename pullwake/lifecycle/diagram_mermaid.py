"""The Mermaid engine: a :class:`~pullwake.lifecycle.drawing.Drawing` as ``stateDiagram-v2``.

This module owns how a lifecycle diagram reads in Mermaid (for GitHub and
GitLab to render inline, e.g. in the README), through ``transitions``' nested
Mermaid engine (``transitions.extensions.diagrams_mermaid.NestedGraph``),
with the same content as the Graphviz drawing (:mod:`.diagram_dot`): each
state's owned work, the events it reports, the backoff, entry/exit hooks,
internal transitions and ignores as descriptions, one edge per branch.
stateDiagram-v2 styles states only, so a review marks changed transitions in
their label (``(+)``, ``(-)``, ``(~)``) and changed states with classes.
Output depends on the Drawing only: deterministic, byte for byte.
"""

from __future__ import annotations

import re
from typing import Any

from transitions.extensions.diagrams import HierarchicalGraphMachine
from transitions.extensions.diagrams_mermaid import NestedGraph as _MermaidNestedGraph

from pullwake.lifecycle.drawing import (
    COLORS,
    Drawing,
    DrawnBranch,
    DrawnState,
    graph_of,
    ignore_groups,
    is_edge,
    listed_inside,
)
from pullwake.lifecycle.machine import _State
from pullwake.lifecycle.model import SEPARATOR

__all__ = ["MERMAID_CLASSES", "MERMAID_MARKS", "mermaid_of"]

#: Mermaid marks changed transitions in their label (stateDiagram-v2 styles states only)
MERMAID_MARKS = {"added": "(+) ", "removed": "(-) ", "changed": "(~) "}
MERMAID_CLASSES = {
    "added": {"fillcolor": "#dafbe1", "stroke": COLORS["added"], "stroke-width": "2px"},
    "removed": {"fillcolor": "#ffebe9", "stroke": COLORS["removed"], "stroke-width": "2px",
                "stroke-dasharray": "5 5"},
    "changed": {"fillcolor": "#fff1e5", "stroke": COLORS["changed"], "stroke-width": "2px"},
}


def _mermaid_id(path: str) -> str:
    return path.replace(SEPARATOR, "__")


def _mermaid_text(text: str) -> str:
    """Mermaid labels end at a newline and must not hold ``;``, ``:`` or ``#``."""
    return re.sub(r"\s+", " ", text.replace(";", ",").replace(":", " -").replace("#", ""))


def _mermaid_branch(b: DrawnBranch, *, internal: bool = False) -> str:
    out = b.event + (f" [{b.guard}]" if b.guard else "")
    if internal:
        out += {"internal": " (internal)", "transition": " (re-enters)"}.get(
            b.kind, f" ignored ({b.reason})")
    hooks = [f"{k} {', '.join(v)}" for k, v in (("before", b.before), ("after", b.after)) if v]
    if hooks:
        out += " / " + ", ".join(hooks)
    if b.note:
        out += f" ({b.note})"
    return _mermaid_text(MERMAID_MARKS.get(b.status, "") + out)


def _mermaid_descriptions(drawing: Drawing, s: DrawnState) -> list[str]:
    own = drawing.branches_from(s.path)
    lines: list[str] = []
    if s.note:
        lines.append(MERMAID_MARKS.get(s.status, "") + s.note)
    if s.work is not None:
        w = s.work
        lines.append(f"owns {w.name} ({w.kind}), reports {', '.join(w.reports)}")
        if w.fails:
            lines.append(f"cannot start - {w.fails}")
    if s.backoff:
        lines.append(s.backoff)
    enter = [*s.on_enter, *([f"start {s.work.name}"] if s.work else [])]
    leave = [*([f"cancel {s.work.name}"] if s.work else []), *s.on_exit]
    if enter:
        lines.append("entry / " + ", ".join(enter))
    if leave:
        lines.append("exit / " + ", ".join(leave))
    out = [_mermaid_text(x) for x in lines]
    out += [_mermaid_branch(b, internal=True) for b in listed_inside(own)]
    for reason, bs in ignore_groups(own):
        names = ", ".join(MERMAID_MARKS.get(b.status, "") + b.event for b in bs)
        out.append(_mermaid_text(f"ignores ({reason}) {names}"))
    return out


class _MermaidGraph(_MermaidNestedGraph):
    """transitions' nested Mermaid engine, drawing a :class:`Drawing` (stateDiagram-v2)."""

    def _add_nested_nodes(self, states: list[dict[str, Any]], container: list[str],
                          prefix: str, default_style: str) -> None:
        drawing: Drawing = self.machine.drawing
        for state in states:
            path = prefix + state["name"]
            s = drawing.state(path)
            sid = _mermaid_id(path)
            if state.get("children") is not None:
                title = s.name
                if s.work is not None:
                    title += (f" - owns {s.work.name} ({s.work.kind}), reports "
                              f"{', '.join(s.work.reports)}")
                container.append(f'state "{_mermaid_text(title)}" as {sid}')
                container.append(f"state {sid} {{")
                self._cluster_states.append(path)
                if state.get("initial"):
                    container.append(f"[*] --> {_mermaid_id(path + SEPARATOR + state['initial'])}")
                self._add_nested_nodes(state["children"], container, path + SEPARATOR,
                                       default_style)
                container.append("}")
            else:
                container.append(f'state "{_mermaid_text(s.name)}" as {sid}')
                container.extend(f"{sid} : {line}" for line in _mermaid_descriptions(drawing, s))

    def _add_edges(self, transitions: list[dict[str, Any]], container: list[str]) -> None:
        drawing: Drawing = self.machine.drawing
        for b in drawing.branches:
            if not is_edge(b) or b.dest is None:
                continue
            container.append(f"{_mermaid_id(b.source)} --> {_mermaid_id(b.dest)} : "
                             f"{_mermaid_branch(b)}")
        for status in MERMAID_CLASSES:
            marked = [_mermaid_id(s.path) for s in drawing.states if s.status == status]
            if marked:
                container.append(f"class {','.join(marked)} s_{status}")

    def get_graph(self, title: str | None = None, roi_state: Any = None) -> Any:
        drawing: Drawing = self.machine.drawing
        banner = "".join(f" - {x}" for x in drawing.banner)
        return super().get_graph(
            title=f"title: {_mermaid_text(drawing.name)} ({drawing.source}){_mermaid_text(banner)}")


class _MermaidMachine(HierarchicalGraphMachine):
    state_cls = _State
    drawing: Drawing
    machine_attributes = {"rankdir": "LR"}
    style_attributes = {"node": {k: dict(v) for k, v in MERMAID_CLASSES.items()},
                        "edge": {}, "graph": {}}

    def _init_graphviz_engine(self, graph_engine: str) -> type:
        return _MermaidGraph


def mermaid_of(drawing: Drawing) -> str:
    """Mermaid ``stateDiagram-v2`` source for a Drawing."""
    source: str = graph_of(drawing, _MermaidMachine, "mermaid").source
    return source if source.endswith("\n") else source + "\n"
