"""Review a lifecycle change: two specs in, a pull-request report out (no I/O).

This module owns ``pullwake review``'s report: the :class:`Review` of two
:class:`ReviewSide` (each a loaded spec, or the errors that stopped it
loading) and its rendering as Markdown. The comparison itself is
:mod:`.review_diff`'s:

- the transition-table diff, cell by cell: a (leaf state x event) cell is
  *added* or *removed* when its state or event is, or *changed* in its kind,
  target, guard, hooks, ignore reason or list of branches; with counts;
- the other spec changes that are not table cells (states, owned work, what
  work reports, events and payloads, the backoff policy, properties), and
  events that look renamed (removed and added with the same decision in
  every state);
- one merged :class:`~pullwake.lifecycle.drawing.Drawing` of both machines with the
  changes marked (added / removed / changed), which :mod:`.diagram_dot` and
  :mod:`.diagram_mermaid` render (SVG via DOT, and Mermaid).

:meth:`Review.markdown` is ready to paste into a pull request (the Mermaid
diagram renders inline on GitHub and GitLab). :attr:`Review.exit_code`:
0 no transition changed, 1 transitions changed, 3 a spec does not validate
(2, usage, is the command line's).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pullwake.errors import SpecError
from pullwake.lifecycle.diagram_dot import dot_of
from pullwake.lifecycle.diagram_mermaid import mermaid_of
from pullwake.lifecycle.drawing import Drawing, drawing_of
from pullwake.lifecycle.model import LifecycleSpec
from pullwake.lifecycle.review_diff import (
    NONE,
    CellChange,
    merged_drawing,
    other_changes,
    renames,
    table_diff,
)
from pullwake.lifecycle.table import compute_table

__all__ = [
    "EXIT_CHANGED",
    "EXIT_INVALID",
    "EXIT_UNCHANGED",
    "CellChange",
    "Review",
    "ReviewSide",
    "review",
]

EXIT_UNCHANGED = 0
EXIT_CHANGED = 1
EXIT_INVALID = 3


@dataclass(frozen=True)
class ReviewSide:
    """One side of a review: where the spec came from, and the spec or its errors."""

    label: str
    spec: LifecycleSpec | None
    errors: tuple[SpecError, ...] = ()

    @classmethod
    def of(cls, label: str, spec: LifecycleSpec | None = None,
           error: SpecError | None = None) -> ReviewSide:
        if error is None:
            return cls(label, spec)
        errors = tuple(getattr(error, "errors", None) or [error])
        return cls(label, None, errors)


@dataclass(frozen=True)
class Review:
    base: ReviewSide
    head: ReviewSide
    cells: tuple[CellChange, ...] = ()
    other: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()
    drawing: Drawing | None = None
    cell_counts: tuple[int, int] = (0, 0)  # cells before, after

    @property
    def valid(self) -> bool:
        return self.base.spec is not None and self.head.spec is not None

    @property
    def transitions_changed(self) -> bool:
        return bool(self.cells)

    @property
    def exit_code(self) -> int:
        if not self.valid:
            return EXIT_INVALID
        return EXIT_CHANGED if self.cells else EXIT_UNCHANGED

    def counts(self) -> dict[str, int]:
        out = {"added": 0, "removed": 0, "changed": 0}
        for c in self.cells:
            out[c.change] += 1
        return out

    def field_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cells:
            for name, _, _ in c.fields:
                out[name] = out.get(name, 0) + 1
        return out

    def mermaid(self) -> str:
        return mermaid_of(self.drawing) if self.drawing is not None else ""

    def dot(self) -> str:
        return dot_of(self.drawing) if self.drawing is not None else ""

    def markdown(self, *, svg: str | None = None, level: int = 2) -> str:
        """The report; ``level`` is its heading level (2: ``##``), sections one deeper."""
        return _markdown(self, svg=svg, level=level)


# ----------------------------------------------------------------- compute


def review(base: ReviewSide, head: ReviewSide) -> Review:
    """Compare two sides. Either may carry validation errors instead of a spec."""
    if base.spec is None or head.spec is None:
        valid = head.spec or base.spec
        drawing = None
        if valid is not None:
            which = "before" if valid is base.spec else "after"
            broken = head if valid is base.spec else base
            drawing = replace(drawing_of(valid), banner=(
                f"showing the {which} spec only: {broken.label} does not validate",))
        return Review(base, head, drawing=drawing)
    old_t, new_t = compute_table(base.spec), compute_table(head.spec)
    cells = table_diff(old_t, new_t)
    renamed = renames(base.spec, head.spec, old_t, new_t)
    other = other_changes(base.spec, head.spec, renamed)
    drawing = merged_drawing(drawing_of(base.spec, source=base.label),
                              drawing_of(head.spec, source=head.label), base.label, head.label)
    return Review(base, head, cells=tuple(cells), other=tuple(other), renamed=tuple(renamed),
                  drawing=drawing, cell_counts=(len(old_t.cells), len(new_t.cells)))


# ---------------------------------------------------------------- markdown


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text and text != NONE else NONE


def _markdown(r: Review, *, svg: str | None, level: int) -> str:
    h = "#" * level
    lines = [f"{h} Lifecycle review: `{r.base.label}` → `{r.head.label}`", ""]
    if not r.valid:
        for side in (r.base, r.head):
            if side.spec is None:
                lines.append(f"**`{side.label}` does not validate** ({len(side.errors)} "
                             f"problem{'s' if len(side.errors) != 1 else ''}), so there is no "
                             "table to compare:")
                lines.append("")
                lines += [f"- `{_md(str(e))}`" for e in side.errors]
                lines.append("")
        lines.append("Fix the spec (`pullwake validate` lists the same problems) and run the "
                     "review again.")
        lines.append("")
        if r.drawing is not None:
            lines += _diagram_section(r, svg=svg, title=f"{h}# Diagram of the spec that validates")
        return "\n".join(lines).rstrip("\n") + "\n"
    counts = r.counts()
    before, after = r.cell_counts
    if r.cells:
        total = len(r.cells)
        fields = ", ".join(f"{name} ×{n}" for name, n in r.field_counts().items())
        lines.append(f"**{total} transition table cell{'s' if total != 1 else ''} changed**: "
                     f"{counts['added']} added, {counts['removed']} removed, "
                     f"{counts['changed']} changed" + (f" ({fields})" if fields else "")
                     + f"; {before} cells before, {after} after.")
    else:
        lines.append(f"**No transition changed**: all {after} cells of the table decide the "
                     "same.")
    lines.append("")
    if r.cells:
        groups = _groups(r)
        lines.append("| state | event | change | field | before | after |")
        lines.append("|---|---|---|---|---|---|")
        shown: set[tuple[str, str, str]] = set()
        details: list[str] = []
        for c in r.cells:
            key = _group_key(r, c)
            if key is not None and len(groups[key]) > 1:
                if key in shown:
                    continue
                shown.add(key)
                lines.append(_group_row(r, key, groups[key]))
                details += _group_details(r, key, groups[key])
            elif c.change == "changed":
                for i, (name, a, b) in enumerate(c.fields):
                    lead = (f"`{c.state}` | `{c.event}` | changed" if i == 0 else " | | ")
                    lines.append(f"| {lead} | {name} | {_md(_code(a))} | {_md(_code(b))} |")
            else:
                lines.append(f"| `{c.state}` | `{c.event}` | {c.change} | {NONE} | "
                             f"{_md(_code(c.before))} | {_md(_code(c.after))} |")
        lines.append("")
        lines += details
    if r.other:
        lines.append("Other spec changes (not table cells):")
        lines.append("")
        lines += [f"- {_md(x)}" for x in r.other]
        lines.append("")
    lines += _diagram_section(r, svg=svg, title=f"{h}# Diagram, changes highlighted")
    return "\n".join(lines).rstrip("\n") + "\n"


GroupKey = tuple[str, str, str]  # ("state" | "event", name, added | removed)


def _columns(spec: LifecycleSpec) -> set[str]:
    return {label for ev in spec.events.values() for label, _ in ev.variants}


def _group_key(r: Review, c: CellChange) -> GroupKey | None:
    """Cells that came or went with their whole state (row) or event (column)."""
    assert r.base.spec is not None and r.head.spec is not None
    if c.change == "changed":
        return None
    other = r.base.spec if c.change == "added" else r.head.spec
    if c.state_path not in other.leaf_states:
        return ("state", c.state_path, c.change)
    if c.event not in _columns(other):
        return ("event", c.event, c.change)
    return None


def _groups(r: Review) -> dict[GroupKey, list[CellChange]]:
    out: dict[GroupKey, list[CellChange]] = {}
    for c in r.cells:
        key = _group_key(r, c)
        if key is not None:
            out.setdefault(key, []).append(c)
    return out


def _group_title(r: Review, key: GroupKey) -> str:
    kind, name, change = key
    renamed = dict(r.renamed) if change == "removed" else {v: k for k, v in r.renamed}
    base = name.split("(", 1)[0]
    if kind == "event" and base in renamed:
        return f"{change} with the event (renamed {'to' if change == 'removed' else 'from'} " \
               f"`{renamed[base]}`)"
    return f"{change} with the {kind}"


def _group_row(r: Review, key: GroupKey, cells: list[CellChange]) -> str:
    kind, name, _ = key
    where = (f"`{cells[0].state}` | all {len(cells)} events" if kind == "state"
             else f"all {len(cells)} states | `{name}`")
    return f"| {where} | {_group_title(r, key)} | {NONE} | {NONE} | listed below |"


def _group_details(r: Review, key: GroupKey, cells: list[CellChange]) -> list[str]:
    kind, name, change = key
    label = cells[0].state if kind == "state" else name
    head = "event" if kind == "state" else "state"
    out = [f"<details><summary><code>{label}</code>: {len(cells)} cells "
           f"{_group_title(r, key).replace('`', '')}</summary>", "",
           f"| {head} | decision |", "|---|---|"]
    for c in cells:
        which = c.event if kind == "state" else c.state
        out.append(f"| `{which}` | {_md(_code(c.after if change == 'added' else c.before))} |")
    return [*out, "", "</details>", ""]


def _diagram_section(r: Review, *, svg: str | None, title: str) -> list[str]:
    lines = [title, ""]
    if r.drawing is not None and r.drawing.review:
        lines.append("Transitions: `(+)` added, `(-)` removed, `(~)` changed (with what it "
                     "was). States: green added, red dashed removed, orange changed.")
        lines.append("")
    lines += ["```mermaid", r.mermaid().rstrip("\n"), "```", ""]
    if svg:
        lines.append(f"The same as SVG, with the legend: `{svg}`.")
        lines.append("")
    return lines

