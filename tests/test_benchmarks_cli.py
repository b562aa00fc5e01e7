"""Every script in benchmarks/ answers ``--help`` without running anything, and
benchmarks write tracked docs only when asked (``--write-docs``)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))
DOCS = [REPO / "docs" / "performance.md", REPO / "docs" / "reliability.md"]


def _digests() -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in DOCS if p.exists()}


def test_there_are_benchmarks() -> None:
    assert {"run_all.py", "bench_machine.py", "soak.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_runs_nothing_and_writes_nothing(script: Path) -> None:
    before = _digests()
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:"), done.stdout[:400]
    source = script.read_text(encoding="utf-8")
    if any(w in source for w in ("replace_section", "write_section", "run_all")):
        assert "--write-docs" in done.stdout  # it can write docs: only when asked
    assert "===" not in done.stdout  # run_all prints "=== script" per benchmark it starts
    assert _digests() == before


@pytest.mark.timeout(120)
def test_a_benchmark_prints_by_default_and_leaves_docs_alone() -> None:
    before = _digests()
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_machine.py"),
                           "--quick"], cwd=REPO, capture_output=True, text=True, timeout=110,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "parse + validate" in done.stdout
    assert "wrote the" not in done.stdout
    assert _digests() == before


@pytest.mark.timeout(120)
def test_the_observability_benchmark_runs_on_the_current_api() -> None:
    """bench_observe drives health/metrics/log APIs directly: it must follow their changes."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_observe.py"),
                           "--quick"], cwd=REPO, capture_output=True, text=True, timeout=110,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "/metrics" in done.stdout
