"""docs/lifecycle.md's review workflow cannot go stale.

- The rendered example of a review (between the ``pullwake review example``
  markers) is exactly what ``pullwake review`` prints today for the documented
  edit of the shipped spec, and ``docs/review-example.svg`` was rendered from
  that review's DOT (its stamp). ``python tests/test_docs_review.py``
  regenerates both (the SVG needs Graphviz ``dot``).
- The CI recipe is valid YAML whose ``pullwake`` command the CLI accepts.
- ``.pre-commit-hooks.yaml`` exposes validate, check and diagram --check, and
  each hook's entry passes on the checkout.

The shipped spec is only read; the edit is applied to a copy in memory.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from pullwake.cli.main import build_parser, main
from pullwake.lifecycle.diagram import (
    dot_fingerprint,
    image_fingerprint,
    render_with_dot,
    stamp_image,
)
from pullwake.lifecycle.effects import effect_hook_names
from pullwake.lifecycle.review import Review, ReviewSide, review
from pullwake.lifecycle.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent

DOC = REPO / "docs" / "lifecycle.md"
SVG = REPO / "docs" / "review-example.svg"
BEGIN = "<!-- pullwake review example: begin -->\n"
END = "<!-- pullwake review example: end -->\n"
EDIT = ("STREAM_RESET: {to: reconnecting, after: [report_stream_reset]}",
        "STREAM_RESET: {to: connecting, after: [report_stream_reset]}")
STALE = "the review example is stale: run `python tests/test_docs_review.py` and commit"


def example() -> Review:
    text = (REPO / "machine_spec.yaml").read_text(encoding="utf-8")
    old, new = EDIT
    assert text.count(old) == 1, "the documented edit no longer applies to machine_spec.yaml"
    hooks = effect_hook_names()
    base = parse_spec(text, path="origin/main:machine_spec.yaml", hooks=hooks)
    head = parse_spec(text.replace(old, new), path="machine_spec.yaml", hooks=hooks)
    return review(ReviewSide.of("origin/main:machine_spec.yaml", base),
                  ReviewSide.of("machine_spec.yaml", head))


def example_block(r: Review) -> str:
    return r.markdown(level=4, svg="review-example.svg").replace(
        "The same as SVG, with the legend: `review-example.svg`.",
        "The same as SVG, with the legend: [review-example.svg](review-example.svg).")


def doc_block() -> str:
    doc = DOC.read_text(encoding="utf-8")
    return doc[doc.index(BEGIN) + len(BEGIN):doc.index(END)]


def test_the_documented_review_is_what_pullwake_prints_now() -> None:
    r = example()
    assert r.exit_code == 1 and len(r.cells) == 1
    assert doc_block() == example_block(r), STALE


def test_the_example_svg_was_rendered_from_that_review() -> None:
    assert image_fingerprint("svg", SVG.read_bytes()) == dot_fingerprint(example().dot()), STALE


def test_the_ci_recipe_is_valid_and_its_command_parses() -> None:
    doc = DOC.read_text(encoding="utf-8")
    block = doc[doc.index("<!-- pullwake review ci: begin -->"):
                doc.index("<!-- pullwake review ci: end -->")]
    workflow = yaml.safe_load(block.split("```yaml\n", 1)[1].split("```", 1)[0])
    steps = workflow["jobs"]["review"]["steps"]
    assert workflow["permissions"]["pull-requests"] == "write"
    runs = "\n".join(step.get("run", "") for step in steps)
    [line] = [x.strip() for x in runs.splitlines() if x.strip().startswith("pullwake review")]
    argv = shlex.split(line.replace("${{ github.base_ref }}", "main"))
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.base, args.out) == ("review", "origin/main", "review")
    assert "review/review.md" in runs  # what --out writes


def test_pre_commit_hooks_expose_the_three_gates_and_pass_here(
        capsys: pytest.CaptureFixture[str]) -> None:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    by_id = {h["id"]: h for h in hooks}
    assert {k: v["entry"] for k, v in by_id.items()} == {
        "pullwake-validate": "pullwake validate",
        "pullwake-check": "pullwake check",
        "pullwake-diagram-check": "pullwake diagram --check",
    }
    for hook in hooks:
        assert hook["language"] == "python" and hook["pass_filenames"] is False
        assert main(shlex.split(hook["entry"])[1:]) == 0, capsys.readouterr().err


def _regenerate() -> None:
    r = example()
    doc = DOC.read_text(encoding="utf-8")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + BEGIN + example_block(r) + END + tail, encoding="utf-8")
    dot = r.dot()
    SVG.write_bytes(stamp_image("svg", render_with_dot(dot, "svg"), dot_fingerprint(dot)))
    print(f"wrote {DOC} and {SVG}")


if __name__ == "__main__":
    _regenerate()
