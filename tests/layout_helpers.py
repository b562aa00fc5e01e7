"""Read Graphviz's own layout (``dot -Tjson``) and find colliding labels.

A label's box is the union of the text runs dot drew for it (``_ldraw_`` text
operations: baseline point, alignment, width, font size); a node's box is its
position and size. ``collisions`` lists every pair of edge labels whose boxes
overlap, and every edge label or cluster label that overlaps a node.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

#: boxes may touch; they must not overlap by more than this (points)
TOLERANCE = 0.5


@dataclass(frozen=True)
class Box:
    name: str
    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: Box) -> bool:
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return w > TOLERANCE and h > TOLERANCE


def _text_box(name: str, ops: list[dict[str, Any]]) -> Box | None:
    size = 14.0
    xs: list[float] = []
    ys: list[float] = []
    for op in ops:
        if op["op"] == "F":
            size = float(op["size"])
        elif op["op"] == "T" and op["text"].strip():
            x, y = op["pt"]
            w = float(op["width"])
            left = {"l": x, "c": x - w / 2, "r": x - w}[op["align"]]
            xs += [left, left + w]
            ys += [y - 0.25 * size, y + 0.8 * size]  # descender .. ascender
    if not xs:
        return None
    return Box(name, min(xs), min(ys), max(xs), max(ys))


def layout(dot_source: str) -> dict[str, Any]:
    out = subprocess.run(["dot", "-Tjson"], input=dot_source.encode(), capture_output=True,
                         check=True, timeout=120)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def boxes(data: dict[str, Any]) -> tuple[list[Box], list[Box], list[Box]]:
    """(edge label boxes, node boxes, cluster label boxes) of a laid-out graph."""
    objects = data.get("objects", [])
    nodes: list[Box] = []
    clusters: list[Box] = []
    for o in objects:
        if "pos" in o:
            x, y = (float(v) for v in o["pos"].split(","))
            w, h = float(o["width"]) * 36, float(o["height"]) * 36
            nodes.append(Box(o["name"], x - w, y - h, x + w, y + h))
        elif o.get("_ldraw_"):
            b = _text_box(o["name"], o["_ldraw_"])
            if b is not None:
                clusters.append(b)
    labels: list[Box] = []
    for e in data.get("edges", []):
        for key in ("_ldraw_", "_hldraw_", "_tldraw_"):
            if e.get(key):
                tail = objects[e["tail"]]["name"]
                head = objects[e["head"]]["name"]
                text = " ".join(op["text"] for op in e[key] if op["op"] == "T")
                b = _text_box(f"{tail} -> {head} {key[1:-6] or 'label'}: {text}", e[key])
                if b is not None:
                    labels.append(b)
    return labels, nodes, clusters


def collisions(dot_source: str) -> list[str]:
    labels, nodes, clusters = boxes(layout(dot_source))
    found = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if a.overlaps(b):
                found.append(f"edge label {a.name!r} overlaps edge label {b.name!r}")
        for n in nodes:
            if a.overlaps(n):
                found.append(f"edge label {a.name!r} overlaps node {n.name!r}")
        for c in clusters:
            if a.overlaps(c):
                found.append(f"edge label {a.name!r} overlaps the label of {c.name!r}")
    for c in clusters:
        for n in nodes:
            if c.overlaps(n):
                found.append(f"the label of {c.name!r} overlaps node {n.name!r}")
    return found
