"""The (leaf state x event) table: snapshot, the original's matrix, and the real machine.

Three things pin the lifecycle, and each checks the others:

* ``test_table_snapshot`` stores ``compute_table(spec).to_lines()`` (one cell
  per line) in ``__snapshots__/test_table.ambr``. Changing any transition in
  ``machine_spec.yaml`` fails it until the snapshot is deliberately updated
  (``pytest --snapshot-update``), so the change shows up as a readable diff.
* ``test_user_events_match_the_original`` holds the TypeScript original's
  matrix for the six user events, copied by hand from its behaviour notes.
* ``test_machine_reaches_the_table_target`` drives a real Lifecycle into each
  leaf state through real events and fires each event, so the snapshot cannot
  say one thing while the machine does another.

Pure tests: no sockets, no sleeping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from machine_helpers import RecordingEffects, drive_to, fire_or_report, payload_for

from pullwake.lifecycle.machine import Lifecycle
from pullwake.lifecycle.spec import load_spec, parse_spec
from pullwake.lifecycle.table import Cell, compute_table

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT_FILE = Path(__file__).resolve().parent / "__snapshots__" / "test_table.ambr"
LIFECYCLE_DOC = REPO / "docs" / "lifecycle.md"

SPEC = load_spec()
TABLE = compute_table(SPEC)

#: The original runner's matrix (its behaviour notes, original-behaviors.md), as
#: leaf state -> target for START, STOP, STREAM_RESET, WAKE, OFFSET,
#: STREAM_END, STREAM_END(error).
ORIGINAL_EVENTS = ("START", "STOP", "STREAM_RESET", "WAKE", "OFFSET", "STREAM_END",
                   "STREAM_END(error)")
ORIGINAL_MATRIX = {
    "stopped": ("connecting", "stopped", "stopped", "stopped", "stopped", "stopped",
                "stopped"),
    "connecting": ("connecting", "stopping", "reconnecting", "connecting", "connecting",
                   "connecting", "connecting"),
    "streaming": ("streaming", "stopping", "streaming", "streaming", "streaming",
                  "reconnecting", "reconnecting"),
    "reconnecting": ("reconnecting", "stopping", "reconnecting", "reconnecting",
                     "reconnecting", "reconnecting", "reconnecting"),
    "stopping": ("stopping", "stopping", "stopping", "stopping", "stopping", "stopping",
                 "stopping"),
}
#: Cells the original handles in place (internal transitions, no exit/enter).
ORIGINAL_IN_PLACE = {("streaming", "STREAM_RESET"), ("streaming", "WAKE"),
                     ("streaming", "OFFSET")}


def _variant_payload(cell: Cell) -> dict[str, object]:
    """The payload for a table column: ``STREAM_END(error)`` carries ``error``."""
    for label, present in SPEC.events[cell.trigger].variants:
        if label == cell.event:
            return payload_for(SPEC, cell.trigger, present)
    raise AssertionError(cell.event)


# ------------------------------------------------------------------ snapshot


def test_table_snapshot(snapshot) -> None:  # type: ignore[no-untyped-def]
    assert load_spec() is SPEC
    assert TABLE.to_lines() == snapshot


def test_snapshot_is_one_cell_per_line() -> None:
    lines = TABLE.to_lines().splitlines()
    assert len(lines) == len(TABLE.states) * len(TABLE.events) == len(TABLE.cells)
    for cell, line in zip(TABLE.cells, lines, strict=True):
        assert line.split()[:4] == [cell.state, cell.event, cell.kind, cell.target]


def test_snapshot_file_holds_the_current_table() -> None:
    """The stored .ambr text is this table, line for line (what a reviewer reads)."""
    stored = SNAPSHOT_FILE.read_text(encoding="utf-8")
    for line in TABLE.to_lines().splitlines():
        assert f"\n  {line}\n" in stored, line


def _spec_with_one_transition_changed(tmp_path: Path) -> Path:
    text = Path(SPEC.path).read_text(encoding="utf-8")
    old = "CONNECT_FAILED: {to: reconnecting, after: [report_connect_failure]}"
    new = "CONNECT_FAILED: {to: stopping, after: [report_connect_failure]}"
    assert text.count(old) == 1
    path = tmp_path / "changed.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_a_changed_transition_changes_exactly_its_cell(tmp_path: Path) -> None:
    changed = compute_table(load_spec(_spec_with_one_transition_changed(tmp_path)))
    before = TABLE.to_lines().splitlines()
    after = changed.to_lines().splitlines()
    assert len(before) == len(after)
    diff = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(diff) == 1
    assert diff[0][0].split()[:4] == ["connecting", "CONNECT_FAILED", "transition",
                                      "reconnecting"]
    assert diff[0][1].split()[:4] == ["connecting", "CONNECT_FAILED", "transition", "stopping"]
    # and the stored snapshot holds the old line, not the new one
    stored = SNAPSHOT_FILE.read_text(encoding="utf-8")
    assert f"\n  {diff[0][0]}\n" in stored
    assert f"\n  {diff[0][1]}\n" not in stored


def test_snapshot_gate_fails_the_suite_on_a_spec_change(tmp_path: Path) -> None:
    """Run the snapshot test in a child pytest against a changed spec: it must fail."""
    env = {**os.environ, "PULLWAKE_SPEC": str(_spec_with_one_transition_changed(tmp_path))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "--no-header",
         f"{Path(__file__).resolve()}::test_table_snapshot"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 snapshot failed" in proc.stdout, proc.stdout
    assert "connecting    CONNECT_FAILED" in proc.stdout  # the diff names the cell


# ------------------------------------------------------- the original matrix


def test_user_events_match_the_original() -> None:
    assert set(TABLE.states) == set(ORIGINAL_MATRIX)
    got = {s: tuple(TABLE.cell(s, e).target for e in ORIGINAL_EVENTS) for s in TABLE.states}
    assert got == ORIGINAL_MATRIX
    for (state, event) in ORIGINAL_IN_PLACE:
        assert TABLE.cell(state, event).kind == "internal", (state, event)


def test_every_pair_is_decided_on_purpose() -> None:
    """No cell is decided by accident: every non-transition cell is internal or a named
    ignore, and every cell's target is a leaf state."""
    assert len(TABLE.cells) == len(SPEC.leaf_states) * sum(
        len(ev.variants) for ev in SPEC.events.values())
    for cell in TABLE.cells:
        assert cell.kind in ("transition", "internal", "ignored")
        assert cell.target in TABLE.states
        if cell.kind == "ignored":
            assert cell.reason, cell
        if cell.kind != "transition":
            assert cell.target == cell.state


# ----------------------------------------------------------- the real machine


@pytest.mark.parametrize("cell", TABLE.cells, ids=[f"{c.state}-{c.event}" for c in TABLE.cells])
def test_machine_reaches_the_table_target(cell: Cell) -> None:
    effects = RecordingEffects()
    lc = Lifecycle(effects, SPEC)
    drive_to(lc, cell.state_path)
    assert lc.reset_pending is False  # the context the table's cells assume
    effects.calls.clear()
    lc.fire(cell.trigger, **_variant_payload(cell))
    assert (lc.state, lc.state_path, lc.last_kind) == (cell.target, cell.target_path, cell.kind)
    assert effects.transitions[-1] == (cell.state, cell.trigger, cell.target, cell.kind)
    # the hooks of the branch the table chose ran, in order: before ..., after ...
    chosen = next(b for b in cell.branches
                  if (b.kind, b.target, b.guard) == (cell.kind, cell.target, cell.guard))
    wanted = [h for h in (*chosen.before, *chosen.after) if h in effects._HOOKS]
    ran = [h for h in effects.hook_names() if h in wanted]
    assert ran == wanted


def test_reset_pending_second_reset_is_ignored_and_end_reports_the_reset() -> None:
    """The guarded branches: STREAM_RESET records once; STREAM_END reports that error."""
    effects = RecordingEffects()
    lc = Lifecycle(effects, SPEC)
    drive_to(lc, "streaming")
    consumer = lc.owned()
    assert consumer is not None and consumer.work == "stream_consumer"
    first, second = RuntimeError("heartbeat failed twice"), RuntimeError("again")

    fire_or_report(lc, "STREAM_RESET", error=first)
    assert (lc.state, lc.last_kind, lc.reset_pending, lc.reset_error) == (
        "streaming", "internal", True, first)
    fire_or_report(lc, "STREAM_RESET", error=second)
    assert (lc.state, lc.last_kind, lc.reset_error) == ("streaming", "ignored", first)
    assert effects.hook_names().count("interrupt_stream") == 1  # response cancelled once
    assert consumer.current  # still streaming: the consumer ends the stream itself

    assert consumer.report("STREAM_END")
    assert lc.state == "reconnecting"
    assert "report_reset_error" in effects.hook_names()
    assert "report_stream_end" not in effects.hook_names()
    assert lc.reset_error is first

    # back to streaming: the reset is cleared, a plain end reports itself
    assert lc.owned().report("BACKOFF_ELAPSED")  # type: ignore[union-attr]
    assert lc.owned().report("CONNECTED", stream=object())  # type: ignore[union-attr]
    assert (lc.state, lc.reset_pending, lc.reset_error) == ("streaming", False, None)
    effects.calls.clear()
    assert lc.owned().report("STREAM_END", error=RuntimeError("idle"))  # type: ignore[union-attr]
    assert lc.state == "reconnecting"
    assert effects.hook_names() == ["report_stream_end"]


# ------------------------------------------------------------------- formats


def test_json_shape() -> None:
    data = json.loads(TABLE.to_json())
    assert data["states"] == ["stopped", "connecting", "streaming", "reconnecting", "stopping"]
    assert data["events"][:7] == list(ORIGINAL_EVENTS)
    assert len(data["cells"]) == len(data["states"]) * len(data["events"])
    pairs = [(c["state"], c["event"]) for c in data["cells"]]
    assert pairs == [(s, e) for s in data["states"] for e in data["events"]]
    for c in data["cells"]:
        assert {"state", "event", "target", "kind"} <= set(c)
        assert c["kind"] in ("transition", "internal", "ignored")
        assert c["target"] in data["states"]
        if c["kind"] in ("internal", "ignored"):
            assert c["target"] == c["state"], c
        assert c["branches"], c


def test_markdown_matrix_has_every_cell() -> None:
    md = TABLE.to_markdown().splitlines()
    assert md[0] == "| from \\ event | " + " | ".join(TABLE.events) + " |"
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in md[2:2 + len(TABLE.states)]}
    assert set(rows) == set(TABLE.states)
    assert rows["streaming"].startswith("| streaming | streaming (ignored) | stopping | "
                                        "streaming (internal) |")


def test_lifecycle_doc_shows_the_current_table() -> None:
    """docs/lifecycle.md embeds the matrix part of `pullwake table` between markers."""
    doc = LIFECYCLE_DOC.read_text(encoding="utf-8")
    begin, end = "<!-- pullwake table: begin -->\n", "<!-- pullwake table: end -->"
    assert begin in doc and end in doc
    embedded = doc.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    matrix = TABLE.to_markdown().split("\n\n", 1)[0]
    assert embedded == matrix, (
        "docs/lifecycle.md is stale: paste the first table of `pullwake table` "
        "between the markers")


def test_table_is_independent_of_the_spec_location(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere.yaml"
    copy.write_text(Path(SPEC.path).read_text(encoding="utf-8"), encoding="utf-8")
    assert compute_table(load_spec(copy)).to_lines() == TABLE.to_lines()
    text = Path(SPEC.path).read_text(encoding="utf-8")
    from pullwake.lifecycle.effects import effect_hook_names

    assert compute_table(parse_spec(text, hooks=effect_hook_names())).to_lines() == \
        TABLE.to_lines()
