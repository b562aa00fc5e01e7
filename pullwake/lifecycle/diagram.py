"""Render lifecycle diagrams: Graphviz DOT (SVG/PNG when ``dot`` exists) and Mermaid.

This module owns the files under ``diagrams/`` and the gate that checks them.
The content comes from :mod:`pullwake.lifecycle.drawing` (read off the loaded machine);
the rendering goes through ``transitions``' own diagram engines, subclassed
where a reviewer needs more than the stock output:

- Graphviz (``transitions.extensions.diagrams_graphviz.NestedGraph``): nested
  states are clusters, and the graph is ``compound``, so an edge declared on a
  composite state starts or ends at the cluster border (``START`` enters
  ``running``, ``STOP`` leaves all of it); a filled dot marks the initial state
  (and each composite's initial child); every branch of a decision is its own
  edge, labelled ``EVENT [guard]`` with its ``before:``/``after:`` hooks
  (``[else]`` for the unguarded branch after guarded ones); internal
  transitions and deliberate ignores are listed inside their state (UML's
  internal compartment), so there are no self-loops; each state shows the work
  it owns, the events that work reports, and a timer's backoff; a legend says
  how to read it. Edge labels are ``label`` (laid out by dot as part of the
  graph), never head/tail labels, and lines are broken at a fixed width, so
  labels do not collide (``tests/test_diagram.py`` checks it from dot's own
  layout output).
- Mermaid (``transitions.extensions.diagrams_mermaid.NestedGraph``):
  ``stateDiagram-v2`` with the same content, for GitHub/GitLab to render inline.

Review diagrams (:mod:`pullwake.lifecycle.review`) are Drawings with marks: added green,
removed red and dashed, changed orange. Output depends on the Drawing only:
deterministic, byte for byte.
"""

from __future__ import annotations

import hashlib
import html
import re
import shutil
import struct
import subprocess
import textwrap
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transitions.extensions.diagrams import HierarchicalGraphMachine
from transitions.extensions.diagrams_graphviz import NestedGraph as _GraphvizNestedGraph
from transitions.extensions.diagrams_mermaid import NestedGraph as _MermaidNestedGraph

from pullwake.lifecycle.drawing import Drawing, DrawnBranch, DrawnState, drawing_of
from pullwake.lifecycle.machine import _State
from pullwake.lifecycle.spec import SEPARATOR, LifecycleSpec

__all__ = [
    "DiagramDrift",
    "check_advice",
    "check_diagrams",
    "dot_fingerprint",
    "dot_of",
    "graphviz_version",
    "image_fingerprint",
    "mermaid_of",
    "render_diagrams",
    "render_dot",
    "render_mermaid",
    "render_with_dot",
]

BASENAME = "lifecycle"
TEXT_FORMATS = ("dot", "mmd")
IMAGE_FORMATS = ("svg", "png")
FORMATS = (*TEXT_FORMATS, *IMAGE_FORMATS)

#: colours of review marks (GitHub's palette: readable on white)
COLORS = {"added": "#1a7f37", "removed": "#cf222e", "changed": "#d1680a"}
_WRAP = 46
_FONT = "Helvetica"
INITIAL_NODE = "__initial__"
LEGEND_NODE = "__legend__"


# ------------------------------------------------------------------ helpers


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


def _ignore_groups(branches: list[DrawnBranch]) -> list[tuple[str, list[DrawnBranch]]]:
    """Unguarded ignores of a state, grouped by reason (spec order)."""
    groups: dict[str, list[DrawnBranch]] = {}
    decided_otherwise = {b.event for b in branches if b.kind != "ignored"}
    for b in branches:
        if b.kind == "ignored" and b.event not in decided_otherwise:
            groups.setdefault(b.reason or "", []).append(b)
    return list(groups.items())


def _reenters(b: DrawnBranch) -> bool:
    """A transition back to its own source: drawn inside the state, not as a loop."""
    return b.kind == "transition" and b.dest == b.source


def _is_edge(b: DrawnBranch) -> bool:
    return b.kind == "transition" and b.dest is not None and not _reenters(b)


def _inside(branches: list[DrawnBranch]) -> list[DrawnBranch]:
    """Branches listed inside the state: internal ones, transitions back to the
    state itself (exit and entry run), and ignores that are one branch of a
    decision with other branches."""
    decided_otherwise = {b.event for b in branches if b.kind != "ignored"}
    return [b for b in branches if b.kind == "internal" or _reenters(b)
            or (b.kind == "ignored" and b.event in decided_otherwise)]


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
    inside = _inside(own)
    if inside:
        lines: list[tuple[str, str]] = []
        for b in inside:
            text = _branch_lines(b)
            if b.kind == "internal":
                text[0] += " (internal)"
            elif _reenters(b):
                text[0] += " (re-enters)"
            lines += [(x, b.status) for x in text]
        sections.append(lines)
    ignores = _ignore_groups(own)
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


# ---------------------------------------------------------- Graphviz engine


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
            if not _is_edge(b) or b.dest is None:
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


# ----------------------------------------------------------- Mermaid engine

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
    out += [_mermaid_branch(b, internal=True) for b in _inside(own)]
    for reason, bs in _ignore_groups(own):
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
            if not _is_edge(b) or b.dest is None:
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


def _graph_of(drawing: Drawing, base: type) -> Any:
    """Build a transitions graph machine holding the Drawing's states; return its graph."""
    cls = type("_Machine", (base,), {"drawing": drawing})
    model = _GraphModel()
    cls(model=model, states=_graph_states(drawing), transitions=[], initial=drawing.initial,
        auto_transitions=False, model_attribute="state_path", title=drawing.name,
        graph_engine="graphviz" if base is _DotMachine else "mermaid")
    return model.get_graph(force_new=True)  # type: ignore[attr-defined]


def dot_of(drawing: Drawing) -> str:
    """DOT source for a Drawing (needs no ``dot`` binary)."""
    source: str = _graph_of(drawing, _DotMachine).source
    return source if source.endswith("\n") else source + "\n"


def mermaid_of(drawing: Drawing) -> str:
    """Mermaid ``stateDiagram-v2`` source for a Drawing."""
    source: str = _graph_of(drawing, _MermaidMachine).source
    return source if source.endswith("\n") else source + "\n"


def render_mermaid(spec: LifecycleSpec) -> str:
    """The Mermaid source of the lifecycle diagram of ``spec``."""
    return mermaid_of(drawing_of(spec))


def render_dot(spec: LifecycleSpec) -> str:
    """The DOT source of the lifecycle diagram of ``spec``."""
    return dot_of(drawing_of(spec))


def graphviz_version() -> str | None:
    """The local Graphviz version (``2.43.0``), or None without a ``dot`` binary."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    out = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False, timeout=60)
    found = _VERSION.search(out.stderr + out.stdout)
    return found.group(1) if found else "unknown"


def render_with_dot(dot_source: str, fmt: str) -> bytes:
    """Run Graphviz ``dot`` on DOT source. Raises FileNotFoundError without ``dot``."""
    exe = shutil.which("dot")
    if exe is None:
        raise FileNotFoundError(
            "Graphviz 'dot' not found: install the Debian package 'graphviz' "
            "(apt-get install graphviz; brew/dnf install graphviz)"
        )
    out = subprocess.run([exe, f"-T{fmt}"], input=dot_source.encode(), capture_output=True,
                         check=True, timeout=60)
    return out.stdout


# ------------------------------------------------------------ fingerprints
#
# SVG and PNG are derived from the DOT source and depend on the Graphviz
# version and the fonts installed, so they are never compared byte for byte.
# Each image carries the SHA-256 of the DOT it was rendered from (an XML
# comment in SVG, a tEXt chunk in PNG); the gate compares that fingerprint with
# the committed DOT, which it compares with a fresh render of the spec.

_VERSION = re.compile(r"graphviz version (\S+)")
_SVG_MARK = re.compile(r"<!-- pullwake: rendered from DOT sha256=([0-9a-f]{64}) -->")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEY = b"pullwake-dot-sha256"


def dot_fingerprint(dot_source: str | bytes) -> str:
    """SHA-256 (hex) of DOT source: what an image records as its origin."""
    data = dot_source.encode() if isinstance(dot_source, str) else dot_source
    return hashlib.sha256(data).hexdigest()


def stamp_image(fmt: str, data: bytes, fingerprint: str) -> bytes:
    """Record ``fingerprint`` inside a rendered SVG or PNG."""
    if fmt == "svg":
        text = data.decode("utf-8")
        head, sep, rest = text.partition("\n")
        mark = f"<!-- pullwake: rendered from DOT sha256={fingerprint} -->"
        return (head + sep + mark + "\n" + rest).encode("utf-8")
    if fmt == "png":
        if not data.startswith(_PNG_SIGNATURE):
            raise ValueError("not a PNG")
        ihdr_end = len(_PNG_SIGNATURE) + 8 + struct.unpack(">I", data[8:12])[0] + 4
        body = _PNG_KEY + b"\x00" + fingerprint.encode()
        chunk = (struct.pack(">I", len(body)) + b"tEXt" + body
                 + struct.pack(">I", zlib.crc32(b"tEXt" + body)))
        return data[:ihdr_end] + chunk + data[ihdr_end:]
    raise ValueError(f"cannot stamp {fmt!r}")


def image_fingerprint(fmt: str, data: bytes) -> str | None:
    """The DOT fingerprint an image records, or None (not stamped, not parseable)."""
    if fmt == "svg":
        found = _SVG_MARK.search(data[:4096].decode("utf-8", "replace"))
        return found.group(1) if found else None
    if fmt == "png":
        if not data.startswith(_PNG_SIGNATURE):
            return None
        pos = len(_PNG_SIGNATURE)
        while pos + 8 <= len(data):
            length = struct.unpack(">I", data[pos:pos + 4])[0]
            kind = data[pos + 4:pos + 8]
            body = data[pos + 8:pos + 8 + length]
            if kind == b"tEXt" and body.startswith(_PNG_KEY + b"\x00"):
                return body[len(_PNG_KEY) + 1:].decode("ascii", "replace")
            if kind == b"IDAT":
                return None
            pos += 12 + length
    return None


def image_graphviz_version(fmt: str, data: bytes) -> str | None:
    """The Graphviz version an SVG says rendered it (PNG does not say)."""
    if fmt != "svg":
        return None
    found = _VERSION.search(data[:4096].decode("utf-8", "replace"))
    return found.group(1) if found else None


# ------------------------------------------------------------ write, check


def render_diagrams(spec: LifecycleSpec, out_dir: Path, *, formats: tuple[str, ...] = FORMATS,
                    ) -> list[Path]:
    """Write ``lifecycle.{dot,mmd,svg,png}`` into ``out_dir``; return the paths written.

    Raises FileNotFoundError (nothing written) when an image format is asked
    for and Graphviz ``dot`` is missing.
    """
    rendered = _render_all(spec, formats)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, data in rendered.items():
        path = out_dir / f"{BASENAME}.{fmt}"
        path.write_bytes(data)
        written.append(path)
    return written


@dataclass(frozen=True)
class DiagramDrift:
    """One finding of :func:`check_diagrams`; ``fails`` is False for a note."""

    path: Path
    problem: str
    fails: bool = True


def check_diagrams(spec: LifecycleSpec, out_dir: Path, *,
                   formats: tuple[str, ...] = FORMATS) -> list[DiagramDrift]:
    """Gate the committed diagrams; needs no Graphviz and no particular version.

    Text sources (DOT, Mermaid) must equal a fresh render of the spec, byte for byte.
    Images must be stamped with the fingerprint of the committed DOT: they are
    derived files, never compared across Graphviz versions or fonts. A note
    (``fails=False``) says when the images came from another Graphviz version.
    """
    findings: list[DiagramDrift] = []
    fresh = _render_all(spec, tuple(f for f in formats if f in TEXT_FORMATS))
    for fmt, data in fresh.items():
        path = out_dir / f"{BASENAME}.{fmt}"
        if not path.is_file():
            findings.append(DiagramDrift(path, "missing"))
        elif path.read_bytes() != data:
            findings.append(DiagramDrift(path, "differs from what the spec renders now"))
    dot_path = out_dir / f"{BASENAME}.dot"
    committed = dot_path.read_bytes() if dot_path.is_file() else None
    local: str | bool | None = False  # not asked yet
    for fmt in (f for f in formats if f in IMAGE_FORMATS):
        path = out_dir / f"{BASENAME}.{fmt}"
        if not path.is_file():
            findings.append(DiagramDrift(path, "missing"))
            continue
        data = path.read_bytes()
        stamp = image_fingerprint(fmt, data)
        if committed is None:
            continue  # the missing DOT is already reported
        if stamp is None:
            findings.append(DiagramDrift(path, "carries no DOT fingerprint (not rendered by "
                                         "this version of `pullwake diagram`)"))
        elif stamp != dot_fingerprint(committed):
            findings.append(DiagramDrift(path, f"was rendered from another DOT source than "
                                         f"the committed {dot_path.name}"))
        made_by = image_graphviz_version(fmt, data)
        if made_by is not None:
            if local is False:
                local = graphviz_version()
            if isinstance(local, str) and local != made_by:
                findings.append(DiagramDrift(
                    path, f"rendered by Graphviz {made_by}, this machine has {local}: images "
                    "are not compared byte for byte, so this is fine", fails=False))
    return findings


def check_advice(findings: list[DiagramDrift], *, have_dot: bool) -> str | None:
    """What to do about failing findings (None when nothing fails)."""
    failing = [f for f in findings if f.fails]
    if not failing:
        return None
    install = ("" if have_dot else " (Graphviz 'dot' is not installed here: install it first, "
               "e.g. apt-get install graphviz, brew install graphviz, dnf install graphviz)")
    if any(f.path.suffix.lstrip(".") in TEXT_FORMATS for f in failing):
        return ("diagrams are stale: the spec renders a different diagram now; run "
                f"`pullwake diagram` and commit diagrams/{install}")
    return ("images are out of date with the committed DOT source: run `pullwake diagram` "
            f"and commit diagrams/{install}")


def _render_all(spec: LifecycleSpec, formats: tuple[str, ...]) -> dict[str, bytes]:
    drawing = drawing_of(spec)
    dot_source = dot_of(drawing)
    fingerprint = dot_fingerprint(dot_source)
    out: dict[str, bytes] = {}
    for fmt in formats:
        if fmt == "dot":
            out[fmt] = dot_source.encode()
        elif fmt == "mmd":
            out[fmt] = mermaid_of(drawing).encode()
        else:
            out[fmt] = stamp_image(fmt, render_with_dot(dot_source, fmt), fingerprint)
    return out
