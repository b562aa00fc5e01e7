"""Diagram drift: the committed diagrams/lifecycle.* are what the spec renders now.

The DOT source needs no Graphviz binary and is compared byte for byte; SVG and
PNG are compared when ``dot`` is installed (it is in CI). ``pullwake diagram
--check`` is exercised against a copy of the diagrams in a temp dir, so the
committed files are never touched. When these tests fail after a spec edit,
run ``pullwake diagram`` and commit the result (docs/lifecycle.md).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pullwake import diagram as diagram_module
from pullwake.cli import main
from pullwake.diagram import check_diagrams, render_dot, render_with_dot
from pullwake.spec import LifecycleSpec, load_spec

REPO = Path(__file__).resolve().parent.parent
DIAGRAMS = REPO / "diagrams"
SPEC = load_spec()
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz 'dot' is not installed")
STALE = "diagrams/ are stale: run `pullwake diagram` and commit the result"


@functools.cache
def fresh(fmt: str) -> bytes:
    source = render_dot(SPEC)
    return source.encode() if fmt == "dot" else render_with_dot(source, fmt)


def changed_spec(tmp_path: Path) -> Path:
    text = Path(SPEC.path).read_text(encoding="utf-8")
    old = "BACKOFF_ELAPSED: {to: connecting}"
    assert text.count(old) == 1
    path = tmp_path / "changed.yaml"
    path.write_text(text.replace(old, "BACKOFF_ELAPSED: {to: streaming}"), encoding="utf-8")
    return path


# ------------------------------------------------------- committed == fresh


def test_committed_dot_equals_a_fresh_render() -> None:
    assert (DIAGRAMS / "lifecycle.dot").read_text(encoding="utf-8") == render_dot(SPEC), STALE


@needs_dot
@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_committed_image_equals_a_fresh_render(fmt: str) -> None:
    assert (DIAGRAMS / f"lifecycle.{fmt}").read_bytes() == fresh(fmt), STALE


def test_diagram_check_passes_on_the_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "--check"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == f"{DIAGRAMS}: diagrams match the spec\n"


# -------------------------------------------------------------- the check


def test_check_fails_after_a_spec_change_until_rendered(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "diagrams"
    shutil.copytree(DIAGRAMS, out)
    spec = changed_spec(tmp_path)
    formats = ["dot", "svg", "png"] if HAVE_DOT else ["dot"]

    assert main(["diagram", "--check", "--spec", str(spec), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{out / f'lifecycle.{f}'}: differs from what the spec renders now"
                   for f in formats] + [
        "diagrams are stale: run `pullwake diagram` and commit the result"]

    assert main(["diagram", "--spec", str(spec), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out / f"lifecycle.{f}")
                                                     for f in formats]
    assert '"running.reconnecting" -> "running.streaming" [label=BACKOFF_ELAPSED]' in (
        out / "lifecycle.dot").read_text(encoding="utf-8")
    assert main(["diagram", "--check", "--spec", str(spec), "--out", str(out)]) == 0
    # the checkout's diagrams are untouched
    assert (DIAGRAMS / "lifecycle.dot").read_bytes() != (out / "lifecycle.dot").read_bytes()


def test_check_reports_missing_files(tmp_path: Path) -> None:
    drift = check_diagrams(SPEC, tmp_path, formats=("dot",))
    assert [(d.path, d.problem) for d in drift] == [(tmp_path / "lifecycle.dot", "missing")]


def test_without_dot_only_the_dot_source_is_checked_and_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(diagram_module.shutil, "which", lambda name: None)
    assert main(["diagram", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [str(tmp_path / "lifecycle.dot")]
    assert "Graphviz 'dot' not found" in captured.err and "wrote DOT only" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lifecycle.dot"]
    assert main(["diagram", "--check", "--out", str(tmp_path)]) == 0
    with pytest.raises(FileNotFoundError, match="apt-get install graphviz"):
        render_with_dot("digraph {}", "svg")


# ---------------------------------------------------------------- content


def _spec_facts(spec: LifecycleSpec) -> tuple[set[str], set[str]]:
    drawn = {t.event for t in spec.transitions if t.kind != "ignored"}
    ignored_only = {t.event for t in spec.transitions if t.kind == "ignored"} - drawn
    return drawn, ignored_only


def test_dot_draws_transitions_not_ignores_and_shows_owned_work() -> None:
    dot = render_dot(SPEC)
    drawn, ignored_only = _spec_facts(SPEC)
    for event in drawn:
        assert event in dot, event
    for event in ignored_only:
        assert event not in dot.split("->", 1)[1], f"ignored {event} is drawn"
    for path, state in SPEC.states.items():
        if state.owns:
            assert f"start {state.owns} (owned)" in dot, path
            assert f"cancel {state.owns} (owned)" in dot, path
    assert "[internal]" in dot and "[reset_pending]" in dot and "[!reset_pending]" in dot
    # no runtime styling: nothing is highlighted as active or previous
    for marker in ("darksalmon", "red", "azure", "blue", "peripheries=2"):
        assert marker not in dot


def test_dot_is_identical_across_processes_and_hash_seeds() -> None:
    code = "import sys; from pullwake.diagram import render_dot; " \
           "from pullwake.spec import load_spec; sys.stdout.write(render_dot(load_spec()))"
    outs = []
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        env.pop("PULLWAKE_SPEC", None)
        outs.append(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                   text=True, check=True, env=env, timeout=60).stdout)
    assert outs[0] == outs[1] == render_dot(SPEC)
