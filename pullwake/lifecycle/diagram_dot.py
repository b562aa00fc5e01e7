"""The Graphviz engine: a :class:`~pullwake.lifecycle.drawing.Drawing` as DOT source.

This module owns how a lifecycle diagram looks in Graphviz, through
``transitions``' nested Graphviz engine
(``transitions.extensions.diagrams_graphviz.NestedGraph``), subclassed where
a reviewer needs more than the stock output: nested states are clusters, and
the graph is ``compound``, so an edge declared on a composite state starts or
ends at the cluster border (``START`` enters ``running``, ``STOP`` leaves all
of it); a filled dot marks the initial state (and each composite's initial
child); every branch of a decision is its own edge, labelled ``EVENT [guard]``
with its ``before:``/``after:`` hooks (``[else]`` for the unguarded branch
after guarded ones); internal transitions and deliberate ignores are listed
inside their state (UML's internal compartment), so there are no self-loops;
each state shows the work it owns, the events that work reports, and a
timer's backoff; a legend says how to read it. Edge labels are ``label``
(laid out by dot as part of the graph), never head/tail labels, and lines are
broken at a fixed width, so labels do not collide (``tests/test_diagram.py``
checks it from dot's own layout output). Review marks: added green, removed
red and dashed, changed orange.

Output depends on the Drawing only: deterministic, byte for byte. Running
``dot`` and gating the files is :mod:`.diagram`'s.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Iterable
from typing import Any

from transitions.extensions.diagrams import HierarchicalGraphMachine
from transitions.extensions.diagrams_graphviz import NestedGraph as _GraphvizNestedGraph

from pullwake.lifecycle.drawing import (
    COLORS,
    Drawing,
    DrawnBranch,
    DrawnState,
    graph_of,
    ignore_groups,
    is_edge,
    listed_inside,
    reenters,
)
from pullwake.lifecycle.machine import _State
from pullwake.lifecycle.model import SEPARATOR

__all__ = ["INITIAL_NODE", "LEGEND_NODE", "dot_of"]

_WRAP = 46
_FONT = "Helvetica"
INITIAL_NODE = "__initial__"
LEGEND_NODE = "__legend__"


# ------------------------------------------------------------------ labels


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _wrap(text: str, width: int = _WRAP) -> list[str]:
    return textwrap.wrap(text, width=width, break_on_hyphens=False) or [""]


def _names_lines(prefix: str, names: Iterable[str], width: int = _WRAP) -> list[str]:
    return textwrap.wrap(prefix + ", ".join(names), width=width, subsequent_indent="    ",
                         break_on_hyphens=False, break_long_words=False)


def _mark(text: str, status: str, *, bold: bool = False) -> str:
    """HTML-like markup for one text run, coloured by review status."""
    out = f"<B>{text}</B>" if bold else text
    if status == "removed":
        out = f"<S>{out}</S>"
    if status:
        out = f'<FONT COLOR="{COLORS[status]}">{out}</FONT>'
    return out


def _lines_cell(lines: list[tuple[str, str]], *, size: int | None = None) -> str:
    """One left-aligned table cell of (escaped text, status) lines."""
    body = "".join(f"{_mark(text, status)}<BR ALIGN=\"LEFT\"/>" for text, status in lines)
    if size is not None:
        body = f'<FONT POINT-SIZE="{size}">{body}</FONT>'
    return f'<TR><TD ALIGN="LEFT" BALIGN="LEFT">{body}</TD></TR>'


def _branch_lines(b: DrawnBranch, *, with_event: bool = True) -> list[str]:
    """The label of a branch, escaped, one entry per line."""
    head = f"<B>{_esc(b.event)}</B>" if with_event else ""
    if b.guard:
        head += f" [{_esc(b.guard)}]"
    lines = [head.strip()]
    if b.kind == "ignored":
        lines[0] += f" ignored: {_esc(b.reason or '')}"
    for key, hooks in (("before", b.before), ("after", b.after)):
        if hooks:
            lines += [_esc(x) for x in _names_lines(f"{key}: ", hooks, _WRAP - 8)]
    if b.note:
        lines += [f"<I>{_esc(x)}</I>" for x in _wrap(b.note, _WRAP - 8)]
    return lines


def _wrap_marked(prefix: str, items: list[tuple[str, str]], width: int = _WRAP) -> list[str]:
    """``prefix`` then comma-separated names, each marked by its own review status,
    broken into lines of at most ``width`` plain characters (escaped markup)."""
    lines: list[str] = []
    current, plain = _esc(prefix), len(prefix)
    for i, (name, status) in enumerate(items):
        piece = name + ("," if i < len(items) - 1 else "")
        if plain + len(piece) + 1 > width and plain > len(prefix):
            lines.append(current.rstrip())
            current, plain = "    ", 4
        current += _mark(_esc(name), status) + piece[len(name):] + " "
        plain += len(piece) + 1
    lines.append(current.rstrip())
    return lines


def _work_lines(s: DrawnState) -> list[str]:
    w = s.work
    if w is None:
        return []
    lines = [f"owns <B>{_esc(w.name)}</B> ({_esc(w.kind)}), reports:"]
    lines += [_esc(x) for x in _names_lines("    ", w.reports)]
    if w.fails:
        lines.append(f"    cannot start: {_esc(w.fails)}")
    if s.backoff:
        lines += [_esc(x) for x in _wrap(s.backoff)]
    return lines


def _hook_lines(s: DrawnState) -> list[str]:
    enter = [*s.on_enter, *([f"start {s.work.name}"] if s.work else [])]
    leave = [*([f"cancel {s.work.name}"] if s.work else []), *s.on_exit]
    lines = []
    if enter:
        lines += [_esc(x) for x in _names_lines("entry / ", enter)]
    if leave:
        lines += [_esc(x) for x in _names_lines("exit / ", leave)]
    return lines


def _state_rows(drawing: Drawing, s: DrawnState) -> list[str]:
    """Table rows (after the title) describing a state."""
    rows: list[str] = []
    own = drawing.branches_from(s.path)
    sections: list[list[tuple[str, str]]] = []
    work = _work_lines(s)
    if work:
        sections.append([(x, "") for x in work])
    hooks = _hook_lines(s)
    if hooks:
        sections.append([(x, "") for x in hooks])
    inside = listed_inside(own)
    if inside:
        lines: list[tuple[str, str]] = []
        for b in inside:
            text = _branch_lines(b)
            if b.kind == "internal":
                text[0] += " (internal)"
            elif reenters(b):
                text[0] += " (re-enters)"
            lines += [(x, b.status) for x in text]
        sections.append(lines)
    ignores = ignore_groups(own)
    if ignores:
        lines = []
        for reason, bs in ignores:
            lines += [(x, "") for x in _wrap_marked(f"ignores {reason}: ",
                                                    [(b.event, b.status) for b in bs])]
        sections.append(lines)
    for section in sections:
        rows.append("<HR/>")
        rows.append(_lines_cell(section, size=10 if section is sections[-1] and ignores
                                else None))
    return rows


def _state_color(status: str) -> str:
    return COLORS.get(status, "black")


def _state_title(s: DrawnState) -> str:
    title = _mark(_esc(s.name), s.status, bold=True)
    if s.note:
        title += f'<BR/><FONT POINT-SIZE="10">{_mark(_esc(s.note), s.status)}</FONT>'
    return f'<TR><TD ALIGN="CENTER">{title}</TD></TR>'


def _node_label(drawing: Drawing, s: DrawnState) -> str:
    style = ' STYLE="ROUNDED"' if s.status != "removed" else ' STYLE="ROUNDED,DASHED"'
    return (f'<<TABLE BORDER="{2 if s.status else 1}" CELLBORDER="0" CELLSPACING="0" '
            f'CELLPADDING="4" COLOR="{_state_color(s.status)}" BGCOLOR="white"{style}>'
            + _state_title(s) + "".join(_state_rows(drawing, s)) + "</TABLE>>")


def _cluster_label(drawing: Drawing, s: DrawnState) -> str:
    return ('<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">'
            + _state_title(s) + "".join(_state_rows(drawing, s)) + "</TABLE>>")


def _legend_label(review: bool) -> str:
    rows = [
        ("filled dot →", "the initial state; inside a composite state, its initial child"),
        ("EVENT [guard]", "one branch of a decision; branches are tried in order; [!g]: g is "
                          "false; [else]: the guards above failed"),
        ("before: / after:", "hooks run before leaving the source / after entering the "
                             "target"),
        ("edge at a box border", "declared on the composite state: it applies in every child "
                                 "(STOP), or enters at the initial child (START)"),
        ("owns W (task|timer)", "started on entry, cancelled on every exit; only its current "
                                "ticket may report the listed events; cannot start: reported "
                                "when its start hook raises"),
        ("EVENT (internal)", "listed inside a state: handled in place, no exit, no entry, "
                             "owned work untouched"),
        ("EVENT (re-enters)", "listed inside a state: a transition back to it: exit and "
                              "entry run, its owned work restarts"),
        ("ignores R: EVENTS", "deliberate no-ops with their reason (not drawn as edges; "
                              "`pullwake table` has every cell)"),
    ]
    if review:
        rows += [
            (_mark("added", "added"), "in the new spec only"),
            (_mark("removed", "removed"), "in the old spec only (dashed)"),
            (_mark("changed", "changed"), "in both, different: the note says what it was"),
        ]
    br = '<BR ALIGN="LEFT"/>'
    small = '<FONT POINT-SIZE="10">'
    body = "".join(
        f'<TR><TD ALIGN="LEFT" VALIGN="TOP" BALIGN="LEFT">{small}'
        f'{k if k.startswith("<") else _esc(k)}</FONT></TD>'
        f'<TD ALIGN="LEFT" BALIGN="LEFT">{small}{br.join(_esc(x) for x in _wrap(v, 52))}{br}'
        '</FONT></TD></TR>'
        for k, v in rows)
    return ('<<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" COLOR="gray50">'
            '<TR><TD COLSPAN="2"><B>How to read this diagram</B></TD></TR>'
            f'{body}</TABLE>>')


# ------------------------------------------------------------------ engine


class _ReviewGraph(_GraphvizNestedGraph):
    """transitions' nested Graphviz engine, drawing a :class:`Drawing` for review."""

    def _drawing(self) -> Drawing:
        drawing: Drawing = self.machine.drawing
        return drawing

    def _add_nested_nodes(self, states: list[dict[str, Any]], container: Any, prefix: str,
                          default_style: str) -> None:
        drawing = self._drawing()
        for state in states:
            path = prefix + state["name"]
            s = drawing.state(path)
            if state.get("children") is not None:
                cluster = "cluster_" + path
                attrs = {"label": _cluster_label(drawing, s), "labeljust": "l",
                         "color": _state_color(s.status), "style": "rounded",
                         "penwidth": "2" if s.status else "1"}
                if s.status == "removed":
                    attrs["style"] = "rounded,dashed"
                with container.subgraph(name=cluster, graph_attr=attrs) as sub:
                    self._cluster_states.append(path)
                    with sub.subgraph(name=cluster + "_root",
                                      graph_attr={"label": "", "color": "none",
                                                  "style": "invis"}) as root:
                        root.node(path, label="", shape="point", width="0.12",
                                  fillcolor="black", style="filled")
                    self._add_nested_nodes(state["children"], sub, path + SEPARATOR,
                                           default_style)
            else:
                container.node(path, label=_node_label(drawing, s), shape="plain")

    def _add_edges(self, transitions: list[dict[str, Any]], container: Any) -> None:
        drawing = self._drawing()
        # the initial child of each composite state (transitions' markup: trigger "")
        for t in transitions:
            if t.get("trigger") == "" and t.get("dest"):
                container.edge(t["source"], t["dest"], arrowsize="0.7")
        for b in drawing.branches:
            if not is_edge(b) or b.dest is None:
                continue
            attrs: dict[str, str] = {
                "label": "<" + '<BR ALIGN="LEFT"/>'.join(_branch_lines(b)) + '<BR ALIGN="LEFT"/>>',
            }
            if b.source in self._cluster_states and not b.dest.startswith(b.source + SEPARATOR):
                attrs["ltail"] = "cluster_" + b.source
            if b.dest in self._cluster_states and not b.source.startswith(b.dest + SEPARATOR):
                attrs["lhead"] = "cluster_" + b.dest
            if b.status:
                attrs.update(color=COLORS[b.status], fontcolor=COLORS[b.status], penwidth="2")
                if b.status == "removed":
                    attrs["style"] = "dashed"
            container.edge(b.source, b.dest, **attrs)

    def get_graph(self, title: str | None = None, roi_state: Any = None) -> Any:
        graph = super().get_graph(title=title)
        drawing = self._drawing()
        banner = "".join(f"<BR/>{_esc(x)}" for x in drawing.banner)
        graph.graph_attr["label"] = (f"<<B>{_esc(drawing.name)}</B> ({_esc(drawing.source)})"
                                     f"{banner}>")
        # Post-process what the stock engine does not do: mark the initial state
        # and add the legend.
        graph.node(INITIAL_NODE, label="", shape="point", width="0.18", style="filled",
                   fillcolor="black")
        graph.edge(INITIAL_NODE, drawing.initial, arrowsize="0.7")
        graph.node(LEGEND_NODE, label=_legend_label(drawing.review), shape="plain")
        return graph


class _DotMachine(HierarchicalGraphMachine):
    state_cls = _State
    drawing: Drawing

    machine_attributes = {
        "directed": "true",
        "strict": "false",
        "rankdir": "LR",
        "compound": "true",
        "newrank": "true",
        "nodesep": "0.35",
        "ranksep": "0.6",
        "fontname": _FONT,
        "labelloc": "t",
    }
    style_attributes = {
        "node": {"default": {"fontname": _FONT, "fontsize": "11", "shape": "plain"}},
        "edge": {"default": {"fontname": _FONT, "fontsize": "10", "color": "black"}},
        "graph": {"default": {"fontname": _FONT, "fontsize": "12"}},
    }

    def _init_graphviz_engine(self, graph_engine: str) -> type:
        return _ReviewGraph


def dot_of(drawing: Drawing) -> str:
    """DOT source for a Drawing (needs no ``dot`` binary)."""
    source: str = graph_of(drawing, _DotMachine, "graphviz").source
    return source if source.endswith("\n") else source + "\n"
