"""benchmarks/bench_scaling.py runs: ``--help`` runs nothing, ``--quick`` is a smoke run.

The smoke runs start the real reference server (127.0.0.1 only) and a
producer child; they must print every table and leave docs/performance.md
untouched (only ``--write-docs`` writes it). No figure is asserted: timing
goals live in the benchmark's own output, never in tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_servers import _skip_or_fail_real

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "bench_scaling.py"
DOCS = REPO / "docs" / "performance.md"


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)


def docs_digest() -> str:
    return hashlib.sha256(DOCS.read_bytes()).hexdigest() if DOCS.exists() else ""


@pytest.mark.timeout(60)
def test_help_runs_nothing() -> None:
    before = docs_digest()
    proc = run("--help", timeout=50)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:") and "--write-docs" in proc.stdout
    assert "wakes/s" not in proc.stdout  # nothing was measured
    assert docs_digest() == before


@pytest.mark.realserver
@pytest.mark.timeout(240)
def test_quick_mode_prints_every_table_and_writes_no_docs() -> None:
    _skip_or_fail_real()
    before = docs_digest()
    proc = run("--quick", timeout=220)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    for needle in ("| N subscriptions | bare wakes/s | worker wakes/s",
                   "| reader ", "`pullwake.read_stream`", "bare aiohttp + `json.loads`",
                   "p50 ms bare / worker", "Worst over N:", "| per wake, N = 16",
                   "asyncio tasks created"):
        assert needle in out, needle
    assert "\n| 1 " in out and "\n| 4 " in out  # one row per N of the quick mode
    assert docs_digest() == before


@pytest.mark.realserver
@pytest.mark.timeout(240)
def test_quick_soak_reports_windows_and_writes_no_docs() -> None:
    _skip_or_fail_real()
    before = docs_digest()
    proc = run("--quick", "--soak", timeout=220)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| wakes so far | client CPU ms/wake (window)" in proc.stdout
    assert "streams/claim" in proc.stdout and "streams per claim" in proc.stdout
    assert "client CPU per wake" in proc.stdout and "RSS" in proc.stdout
    assert docs_digest() == before


@pytest.mark.realserver
@pytest.mark.timeout(240)
def test_the_layer_diagnostic_runs_on_the_current_internals_and_writes_no_docs() -> None:
    """bench_features patches worker internals by name (mock.patch.object refuses a
    name that no longer exists): it must follow their changes."""
    _skip_or_fail_real()
    before = docs_digest()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_features.py"),
                           "--rounds", "1", "--duration", "0.5", "--warmup", "0.3"],
                          cwd=REPO, capture_output=True, text=True, timeout=220, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for side in ("| bare ", "| io ", "| lean ", "| worker "):
        assert side in proc.stdout, side
    assert docs_digest() == before


@pytest.mark.realserver
@pytest.mark.timeout(300)
def test_the_instruction_count_diagnostic_counts_only_its_window_and_writes_no_docs() -> None:
    """bench_instructions runs each side under callgrind, counting only the window."""
    _skip_or_fail_real()
    if shutil.which("valgrind") is None:
        if os.environ.get("CI"):
            pytest.fail("valgrind is missing: .ci/setup installs it")
        pytest.skip("valgrind is not installed")
    before = docs_digest()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_instructions.py"),
                           "--ns", "1", "--sides", "bare,worker", "--duration", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    per_wake = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] == "1":
            per_wake[cells[1]] = float(cells[4])
    assert set(per_wake) == {"bare", "worker"}, proc.stdout[-2000:]
    # Counted over the window only: a wake is millions of instructions, the
    # interpreter's start-up (not counted) billions.
    assert all(0.2 < v < 50 for v in per_wake.values()), per_wake
    assert docs_digest() == before
