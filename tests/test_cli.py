"""``pullwake validate | table | diagram``: as processes and through ``cli.main``.

The process tests run ``python -m pullwake`` from an unrelated working
directory with ``PULLWAKE_SPEC`` unset, as a fresh clone would. Exit codes:
0 success, 1 a failed check (invalid spec, stale diagrams), 2 usage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pullwake.cli.main import main
from pullwake.lifecycle.spec import load_spec
from pullwake.lifecycle.table import compute_table

SPEC = load_spec()
TABLE = compute_table(SPEC)
PAIRS = len(SPEC.leaf_states) * len(SPEC.events)
VALID = (f"{SPEC.path}: valid ({len(SPEC.states)} states, {len(SPEC.leaf_states)} leaf "
         f"states, {len(SPEC.events)} events, {PAIRS} pairs decided)\n")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PULLWAKE_SPEC"}
    return subprocess.run([sys.executable, "-m", "pullwake", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=60)


def bad_spec(tmp_path: Path) -> Path:
    # The tests' own frozen copy, not the shipped spec (a lifecycle edit cannot break this).
    base = Path(__file__).resolve().parent / "specs" / "lifecycle_base.yaml"
    text = base.read_text(encoding="utf-8")
    old = "after: [report_connect_failure]"
    assert text.count(old) == 1
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(old, "after: [report_connect_failur]"), encoding="utf-8")
    return path


# ---------------------------------------------------------------- processes


def test_process_validate(tmp_path: Path) -> None:
    proc = run("validate", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, VALID, "")


def test_process_validate_refuses_a_bad_spec(tmp_path: Path) -> None:
    proc = run("validate", "--spec", str(bad_spec(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines()[0] == "invalid spec: 1 problem(s)"
    assert "[unknown-hook] after hook 'report_connect_failur' is provided by nothing " \
           "(state 'running.connecting', event 'CONNECT_FAILED')" in proc.stderr


def test_process_table_json(tmp_path: Path) -> None:
    proc = run("table", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data == json.loads(TABLE.to_json())
    assert data["states"] == list(TABLE.states) and data["events"] == list(TABLE.events)
    for cell in data["cells"]:
        assert {"state", "event", "target", "kind"} <= set(cell)


def test_process_diagram_check(tmp_path: Path) -> None:
    proc = run("diagram", "--check", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("diagrams match the spec\n")


def test_process_usage_error(tmp_path: Path) -> None:
    proc = run("tabel", cwd=tmp_path)
    assert proc.returncode == 2
    assert "invalid choice: 'tabel'" in proc.stderr


# ----------------------------------------------------------------- in process


def test_main_validate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    assert capsys.readouterr().out == VALID


def test_main_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["validate", "--spec", str(missing)]) == 1
    assert capsys.readouterr().err == (
        "invalid spec: 1 problem(s)\n"
        f"  {missing}: [io] cannot read spec: No such file or directory\n")


@pytest.mark.parametrize(("fmt", "render"), [
    (None, TABLE.to_markdown), ("markdown", TABLE.to_markdown), ("lines", TABLE.to_lines),
    ("json", lambda: TABLE.to_json() + "\n"),
])
def test_main_table_formats(fmt: str | None, render, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    args = ["table"] + (["--format", fmt] if fmt else [])
    assert main(args) == 0
    assert capsys.readouterr().out == render()


@pytest.mark.parametrize("command", ["table", "diagram"])
def test_main_refuses_a_bad_spec_everywhere(command: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--spec", str(bad_spec(tmp_path)), *(
        ["--out", str(tmp_path / "out")] if command == "diagram" else [])]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "invalid spec: 1 problem(s)" in captured.err and "report_connect_failur" in captured.err
    assert not (tmp_path / "out").exists()


def test_main_diagram_writes_into_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d"
    assert main(["diagram", "--out", str(out)]) == 0
    written = capsys.readouterr().out.splitlines()
    assert written[0] == str(out / "lifecycle.dot")
    assert all(Path(p).is_file() for p in written)
    assert main(["diagram", "--check", "--out", str(out)]) == 0


def test_main_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["table", "--format", "yaml"])
    assert info.value.code == 2
