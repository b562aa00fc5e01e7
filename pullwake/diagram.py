"""Render the lifecycle spec to Graphviz (DOT always; SVG/PNG when ``dot`` exists).

This module owns the diagram files under ``diagrams/``. It builds a
``transitions`` graph machine from the same spec (through
:func:`pullwake.machine.build_machine`), with runtime styling removed (no
highlighted active or previous state), so the output depends on the spec
only and is byte-for-byte stable. Ignored events are not drawn (they are in
the table); internal transitions appear as ``[internal]`` self-loops and guards
as ``[guard]`` / ``[!guard]``.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transitions.extensions.diagrams import HierarchicalGraphMachine

from .machine import _State, _Transition, build_machine
from .spec import LifecycleSpec

__all__ = ["DiagramDrift", "check_diagrams", "render_diagrams", "render_dot", "render_with_dot"]

BASENAME = "lifecycle"
FORMATS = ("dot", "svg", "png")


class _GraphMachine(HierarchicalGraphMachine):
    state_cls = _State
    transition_cls = _Transition  # type: ignore[assignment]


class _Model:
    state_path: str


def _name_only(name: str) -> Callable[..., Any]:
    def cb(*args: Any) -> None:
        return None

    cb.__name__ = cb.__qualname__ = name
    return cb


def render_dot(spec: LifecycleSpec) -> str:
    """The DOT source of the lifecycle diagram (needs no ``dot`` binary)."""

    def owned(path: str, key: str) -> list[Callable[..., Any]]:
        work = spec.states[path].owns
        if work is None:
            return []
        verb = "start" if key == "on_enter" else "cancel"
        return [_name_only(f"{verb} {work} (owned)")]

    machine = build_machine(
        _Model(), spec, _name_only, _name_only,
        state_hooks=owned,
        machine_cls=_GraphMachine,
        include_ignores=False,
        graph_engine="graphviz",
        show_conditions=True,
        show_state_attributes=True,
        title=f"{spec.name} (machine_spec.yaml)",
    )
    styles = copy.deepcopy(machine.style_attributes)
    for kind in ("node", "graph", "edge"):
        default = styles[kind]["default"]
        for key in list(styles[kind]):
            if key in ("active", "previous"):
                styles[kind][key] = {k: v for k, v in default.items()
                                     if k in styles[kind][key]}
    styles["node"]["active"]["peripheries"] = "1"
    machine.style_attributes = styles
    graph = machine.get_graph(force_new=True)
    source: str = graph.source
    return source if source.endswith("\n") else source + "\n"


def render_with_dot(dot_source: str, fmt: str) -> bytes:
    """Run Graphviz ``dot`` on DOT source. Raises FileNotFoundError without ``dot``."""
    exe = shutil.which("dot")
    if exe is None:
        raise FileNotFoundError(
            "Graphviz 'dot' not found: install the Debian package 'graphviz' "
            "(apt-get install graphviz)"
        )
    out = subprocess.run([exe, f"-T{fmt}"], input=dot_source.encode(), capture_output=True,
                         check=True, timeout=60)
    return out.stdout


def render_diagrams(spec: LifecycleSpec, out_dir: Path, *, formats: tuple[str, ...] = FORMATS,
                    ) -> list[Path]:
    """Write ``lifecycle.{dot,svg,png}`` into ``out_dir``; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = _render_all(spec, formats)
    written = []
    for fmt, data in rendered.items():
        path = out_dir / f"{BASENAME}.{fmt}"
        path.write_bytes(data)
        written.append(path)
    return written


@dataclass(frozen=True)
class DiagramDrift:
    path: Path
    problem: str


def check_diagrams(spec: LifecycleSpec, out_dir: Path, *,
                   formats: tuple[str, ...] = FORMATS) -> list[DiagramDrift]:
    """Compare committed diagrams with a fresh render. SVG/PNG only when ``dot`` exists."""
    if shutil.which("dot") is None:
        formats = tuple(f for f in formats if f == "dot")
    drift = []
    for fmt, data in _render_all(spec, formats).items():
        path = out_dir / f"{BASENAME}.{fmt}"
        if not path.is_file():
            drift.append(DiagramDrift(path, "missing"))
        elif path.read_bytes() != data:
            drift.append(DiagramDrift(path, "differs from what the spec renders now"))
    return drift


def _render_all(spec: LifecycleSpec, formats: tuple[str, ...]) -> dict[str, bytes]:
    dot_source = render_dot(spec)
    out: dict[str, bytes] = {}
    for fmt in formats:
        out[fmt] = dot_source.encode() if fmt == "dot" else render_with_dot(dot_source, fmt)
    return out
