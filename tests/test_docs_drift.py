"""Docs that must not drift from the code: environment variables, the snapshot command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_VAR = re.compile(r"\bPULLWAKE_[A-Z][A-Z0-9_]*[A-Z0-9]\b")


def _docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in DOCS)


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    from pullwake.cli.options import option_table

    sources = [*(REPO / "pullwake").rglob("*.py"), *(REPO / "pullwake").rglob("*.mjs"),
               *(REPO / ".ci").iterdir(), *(REPO / "benchmarks").glob("*.py")]
    used = set()
    for path in sources:
        used |= set(_VAR.findall(path.read_text(encoding="utf-8")))
    used |= {var for _, var, _, _ in option_table() if var}
    documented = set(_VAR.findall(_docs_text()))
    assert used, "found no PULLWAKE_* variables in the code"
    assert used - documented == set(), "undocumented (docs/development.md, docs/cli.md)"


def test_one_snapshot_update_command_everywhere() -> None:
    commands = {m.group(0) for m in re.finditer(r"python -m pytest[^`\n]*--snapshot-update",
                                                _docs_text())}
    assert commands == {"python -m pytest tests/test_table.py --snapshot-update"}, commands


_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_in_the_docs_points_at_a_file() -> None:
    """README and docs/ link into the tree (modules, the spec, diagrams): a move must follow."""
    broken = []
    for doc in DOCS:
        for target in _LINK.findall(doc.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)
