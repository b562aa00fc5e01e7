"""``pullwake review``: golden reports (Markdown and Mermaid) for a set of spec edits.

Every test builds its own small spec (``MINI``, a stopped/running/stopping
lifecycle with owned work) in a temp dir and edits a copy; the shipped spec is
never touched. The goldens are real files under ``tests/__snapshots__/
test_review/`` (``.md`` renders on GitHub, ``.mmd`` is the highlighted diagram):
read them as a reviewer would; ``pytest tests/test_review.py --snapshot-update``
rewrites them after a deliberate change of the report.

Exit codes: 0 no transition changed, 1 transitions changed, 2 usage, 3 a spec
does not validate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from mini_spec import MINI, edit
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from pullwake.cli.main import main
from pullwake.lifecycle.review import ReviewSide, review
from pullwake.lifecycle.spec import load_spec

HAVE_DOT = shutil.which("dot") is not None

def add_transition(t: str) -> str:
    return edit(t, ("      RETRY: {to: working}\n",
                    "      RETRY: {to: working}\n"
                    "          DONE: {to: stopped, after: [report_stream_end]}\n"),
                ("          stale_result: [DONE, FAIL]\n", "          stale_result: [FAIL]\n"))


def remove_transition(t: str) -> str:
    return edit(t, ("          RETRY: {to: working}\n", ""),
                ("          stale_result: [DONE, FAIL]\n",
                 "          stale_result: [DONE, FAIL, RETRY]\n"))


def change_target(t: str) -> str:
    return edit(t, ("RETRY: {to: working}", "RETRY: {to: stopping}"))


def add_guard(t: str) -> str:
    return edit(t, ("          FAIL: {to: waiting, after: [report_connect_failure]}\n",
                    "          FAIL:\n"
                    "            - {to: waiting, unless: reset_pending, "
                    "after: [report_connect_failure]}\n"
                    "            - {to: stopping, after: [report_connect_failure]}\n"))


def add_state_with_work(t: str) -> str:
    return edit(
        t,
        ("  HALTED: {}\n", "  HALTED: {}\n  COOLED: {}\n"),
        ("work:\n", "work:\n  cool: {kind: task, start: start_stream_consumer, reports: [COOLED],"
                    " fails: COOLED}\n"),
        ("RETRY: {to: working}", "RETRY: {to: cooling}"),
        ("      stale_result: [DONE, FAIL, RETRY, HALTED]\n",
         "      stale_result: [DONE, FAIL, RETRY, HALTED, COOLED]\n"),
        ("      stale_result: [HALTED]\n", "      stale_result: [HALTED, COOLED]\n"),
        ("      stale_result: [DONE, FAIL, RETRY]\n",
         "      stale_result: [DONE, FAIL, RETRY, COOLED]\n"),
        ("  stopping:\n", "      cooling:\n"
                          "        owns: cool\n"
                          "        transitions:\n"
                          "          COOLED: {to: working}\n"
                          "        ignore:\n"
                          "          stale_result: [DONE, FAIL, RETRY]\n"
                          "  stopping:\n"),
    )


def rename_event(t: str) -> str:
    assert "RESUME" not in t
    return t.replace("RETRY", "RESUME")


def invalid_spec(t: str) -> str:
    return edit(t, ("after: [report_connect_failure]", "after: [report_connect_failur]"),
                ("          stale_result: [RETRY]\n", ""))


EDITS: dict[str, Callable[[str], str]] = {
    "add_transition": add_transition,
    "remove_transition": remove_transition,
    "change_target": change_target,
    "add_guard": add_guard,
    "add_state_with_work": add_state_with_work,
    "rename_event": rename_event,
    "invalid_spec": invalid_spec,
}
EXPECTED_EXIT = {name: 1 for name in EDITS} | {"invalid_spec": 3}


class MarkdownGolden(SingleFileSnapshotExtension):
    file_extension = "md"
    _write_mode = WriteMode.TEXT


class MermaidGolden(SingleFileSnapshotExtension):
    file_extension = "mmd"
    _write_mode = WriteMode.TEXT


@pytest.fixture
def specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[str]]:
    """Write base.yaml and head.yaml (the edited copy) and chdir there: labels are stable."""
    monkeypatch.chdir(tmp_path)

    def write(name: str) -> list[str]:
        Path("base.yaml").write_text(MINI, encoding="utf-8")
        Path("head.yaml").write_text(EDITS[name](MINI), encoding="utf-8")
        return ["base.yaml", "head.yaml"]

    return write


def test_the_base_spec_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "mini.yaml"
    path.write_text(MINI, encoding="utf-8")
    assert len(load_spec(path).leaf_states) == 4


@pytest.mark.parametrize("name", list(EDITS))
def test_golden_review(name: str, specs: Callable[[str], list[str]],
                       capsys: pytest.CaptureFixture[str], snapshot) -> None:  # type: ignore[no-untyped-def]
    rc = main(["review", *specs(name), "--out", "out"])
    markdown = capsys.readouterr().out
    assert rc == EXPECTED_EXIT[name], markdown
    stable = markdown.replace(str(Path("out/review.svg")), "out/review.svg")
    assert stable == snapshot(extension_class=MarkdownGolden)
    mermaid = Path("out/review.mmd").read_text(encoding="utf-8")
    assert mermaid == snapshot(extension_class=MermaidGolden)
    assert f"```mermaid\n{mermaid}```\n" in markdown
    assert Path("out/review.md").read_text(encoding="utf-8") == markdown
    if HAVE_DOT:
        svg = Path("out/review.svg").read_text(encoding="utf-8")
        assert svg.startswith("<?xml") and "</svg>" in svg


# ------------------------------------------------------ what each edit says


def _review(name: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    base, head = tmp_path / "base.yaml", tmp_path / "head.yaml"
    base.write_text(MINI, encoding="utf-8")
    head.write_text(EDITS[name](MINI), encoding="utf-8")
    return review(ReviewSide.of("base.yaml", load_spec(base)),
                  ReviewSide.of("head.yaml", load_spec(head)))


def test_change_target_is_one_changed_cell_and_an_orange_edge(tmp_path: Path) -> None:
    r = _review("change_target", tmp_path)
    assert [(c.state, c.event, c.change, c.fields) for c in r.cells] == [
        ("waiting", "RETRY", "changed", (("target", "working", "stopping"),))]
    assert r.counts() == {"added": 0, "removed": 0, "changed": 1}
    edge = next(b for b in r.drawing.branches if b.event == "RETRY" and b.kind == "transition")
    assert (edge.status, edge.dest, edge.note) == ("changed", "stopping", "was → working")
    assert 'color="#d1680a"' in r.dot() and "(~) RETRY (was → working)" in r.mermaid()


def test_added_and_removed_edges_are_green_and_red_dashed(tmp_path: Path) -> None:
    added = _review("add_transition", tmp_path)
    assert [(c.state, c.event, c.fields) for c in added.cells] == [
        ("waiting", "DONE", (("kind", "ignored", "transition"), ("target", "waiting", "stopped"),
                             ("hooks", "—", "after: report_stream_end"),
                             ("ignore reason", "stale_result", "—")))]
    edge = next(b for b in added.drawing.branches if b.status)
    assert (edge.source, edge.event, edge.status) == ("running.waiting", "DONE", "added")
    assert 'color="#1a7f37"' in added.dot()
    removed = _review("remove_transition", tmp_path)
    marks = sorted((b.event, b.kind, b.status) for b in removed.drawing.branches if b.status)
    assert marks == [("RETRY", "ignored", "added"), ("RETRY", "transition", "removed")]
    dot = removed.dot()
    assert 'color="#cf222e"' in dot and "style=dashed" in dot


def test_rename_is_recognised_and_cells_move_columns(tmp_path: Path) -> None:
    r = _review("rename_event", tmp_path)
    assert r.renamed == (("RETRY", "RESUME"),)
    assert "event renamed: `RETRY` → `RESUME` (the same decision in every state)" in r.other
    assert r.counts() == {"added": 4, "removed": 4, "changed": 0}
    assert {c.event for c in r.cells if c.change == "added"} == {"RESUME"}


def test_added_state_brings_its_row_column_and_work(tmp_path: Path) -> None:
    r = _review("add_state_with_work", tmp_path)
    counts = r.counts()
    assert counts["added"] == 7 + 4  # the cooling row (7 events) + the COOLED column (4 states)
    assert counts["changed"] == 1  # waiting RETRY now goes to cooling
    assert "state added: `running.cooling`, owns `cool`" in r.other
    assert any(x.startswith("work added: `cool` (task") for x in r.other)
    cooling = r.drawing.state("running.cooling")
    assert cooling.status == "added" and cooling.work is not None


def test_invalid_head_shows_errors_and_the_valid_side(tmp_path: Path) -> None:
    base, head = tmp_path / "base.yaml", tmp_path / "head.yaml"
    base.write_text(MINI, encoding="utf-8")
    head.write_text(invalid_spec(MINI), encoding="utf-8")
    from pullwake.errors import SpecError

    with pytest.raises(SpecError) as info:
        load_spec(head)
    r = review(ReviewSide.of("base.yaml", load_spec(base)),
               ReviewSide.of("head.yaml", error=info.value))
    assert r.exit_code == 3 and not r.valid and r.cells == ()
    md = r.markdown()
    assert "**`head.yaml` does not validate** (2 problems)" in md
    assert "report_connect_failur" in md and "[undecided]" in md
    assert "showing the before spec only - head.yaml does not validate" in r.mermaid()
    assert "showing the before spec only: head.yaml does not validate" in r.dot()


def test_identical_specs_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(MINI, encoding="utf-8")
    assert main(["review", str(path), str(path)]) == 0
    out = capsys.readouterr().out
    assert "**No transition changed**: all 24 cells of the table decide the same." in out
    assert "(+)" not in out.split("```mermaid", 1)[1] and "s_changed\n" not in out


def test_non_table_changes_are_listed_but_exit_0(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(MINI, encoding="utf-8")
    b.write_text(edit(MINI, ("cap_s: 8", "cap_s: 16"),
                      ("reports: [DONE, FAIL], fails: FAIL", "reports: [DONE, FAIL]")),
                 encoding="utf-8")
    assert main(["review", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "- backoff cap_s: `8.0` → `16.0`" in out
    assert "- work `job`: fails `FAIL` → —" in out
    # both states' drawings changed (job's fails:, pause's backoff): orange in the diagram
    assert "  class running__working,running__waiting s_changed\n" in out


# ------------------------------------------------------------ command line


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                    "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_base_revision_against_the_working_tree(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / "conf").mkdir(parents=True)
    spec = repo / "conf" / "lifecycle.yaml"
    spec.write_text(MINI, encoding="utf-8")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    spec.write_text(change_target(MINI), encoding="utf-8")
    monkeypatch.chdir(repo)
    assert main(["review", "--base", "HEAD", "conf/lifecycle.yaml"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("## Lifecycle review: `HEAD:conf/lifecycle.yaml` → "
                          "`conf/lifecycle.yaml`\n")
    assert "| `waiting` | `RETRY` | changed | target | `working` | `stopping` |" in out
    # a revision git does not know is a usage error, said plainly
    assert main(["review", "--base", "no-such-rev", "conf/lifecycle.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pullwake review: cannot read conf/lifecycle.yaml at no-such-rev: ")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["review", "only-one.yaml"]) == 2
    assert "give two specs (OLD NEW) or --base REV [SPEC]" in capsys.readouterr().err
    outside = tmp_path / "x.yaml"
    outside.write_text(MINI, encoding="utf-8")
    env_git_dir = os.environ.get("GIT_DIR")
    if env_git_dir is None:
        assert main(["review", "--base", "HEAD", str(outside)]) == 2
        assert "is not in a git checkout" in capsys.readouterr().err


def test_unreadable_spec_is_an_invalid_side(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "a.yaml"
    good.write_text(MINI, encoding="utf-8")
    assert main(["review", str(good), str(tmp_path / "missing.yaml")]) == 3
    assert "[io] cannot read spec" in capsys.readouterr().out


# --------------------------------------------------- for the layout test


def edited_review_dot() -> str:
    """A review diagram with every kind of mark at once (used by test_diagram)."""
    text = add_guard(add_state_with_work(MINI))
    text = edit(text, ("          DONE: {to: working, after: [report_stream_end]}\n", ""),
                ("          stale_result: [RETRY]\n", "          stale_result: [RETRY, DONE]\n"))
    from pullwake.lifecycle.effects import effect_hook_names
    from pullwake.lifecycle.spec import parse_spec

    hooks = effect_hook_names()
    r = review(ReviewSide.of("base.yaml", parse_spec(MINI, path="base.yaml", hooks=hooks)),
               ReviewSide.of("head.yaml", parse_spec(text, path="head.yaml", hooks=hooks)))
    return r.dot()
