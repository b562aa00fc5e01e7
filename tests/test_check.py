"""``pullwake check``: each model check fails on a spec planted with its defect and
names the counterexample path; the shipped spec and the small test spec pass.

Specs are the small ``MINI`` spec (tests/mini_spec.py) edited in memory or in a
temp dir; the shipped spec is only read.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from mini_spec import MINI, edit

from pullwake.cli.main import main
from pullwake.errors import SpecErrors
from pullwake.lifecycle.check import run_checks
from pullwake.lifecycle.effects import effect_hook_names
from pullwake.lifecycle.machine import Lifecycle
from pullwake.lifecycle.model import LifecycleSpec
from pullwake.lifecycle.spec import load_spec, parse_spec

HOOKS = effect_hook_names()


def spec_of(text: str) -> LifecycleSpec:
    return parse_spec(text, path="mini.yaml", hooks=HOOKS)


def failures(spec: LifecycleSpec, **kw: Any) -> dict[str, list[tuple[str, str]]]:
    result = run_checks(spec, **kw)
    out: dict[str, list[tuple[str, str]]] = {}
    for name, _, findings in result.checks:
        if findings:
            out[name] = [(f.message, f.trace(spec.leaf_name)) for f in findings]
    return out


# ------------------------------------------------------------------ passes


def test_the_shipped_spec_passes_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_checks(load_spec())
    assert result.ok, result.report()
    assert result.configurations >= 5
    assert [name for name, _, _ in result.checks][:5] == [
        "stop", "reach-rest", "dead-end", "reports-decided", "cancel-on-exit"]
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"all {len(result.checks)} checks passed"


def test_the_small_spec_passes() -> None:
    assert failures(spec_of(MINI)) == {}


# ----------------------------------------------------------- planted defects


def test_stop_that_does_not_stop_is_found_with_its_cycle() -> None:
    # waiting ignores STOP: the retry loop carries on forever
    spec = spec_of(edit(MINI, ("          stale_result: [DONE, FAIL]\n",
                               "          stale_result: [DONE, FAIL]\n          busy: [STOP]\n")))
    found = failures(spec)
    assert list(found) == ["stop"]
    [(message, trace)] = found["stop"]
    # the retry brings back working, whose DONE re-enters it (its job restarts) forever
    assert message == ("STOP in waiting does not always reach stopped: then cycles back to "
                       "working without reaching stopped")
    assert trace == ("stopped --START--> working --FAIL--> waiting --STOP--> waiting "
                     "--RETRY--> working --DONE--> working")


def test_stop_that_waits_forever_is_found() -> None:
    # stopping's work reports HALTED, which stopping now ignores
    spec = spec_of(edit(MINI, ("      HALTED: {to: stopped}\n", "      START: {to: running}\n"),
                        ("      already_stopping: [START, STOP]\n",
                         "      already_stopping: [STOP, HALTED]\n")))
    found = failures(spec)
    assert found["stop"] == [(
        "STOP in working does not always reach stopped: then waits in stopping forever: every "
        "event its work can report (HALTED) leaves it there",
        "stopped --START--> working --STOP--> stopping")]


def test_stop_that_restarts_its_shutdown_forever_is_found() -> None:
    # stopping re-enters itself on HALTED: its work restarts, stopped is never reached
    spec = spec_of(edit(MINI, ("      HALTED: {to: stopped}\n", "      HALTED: {to: stopping}\n")))
    found = failures(spec)
    assert found["stop"] == [(
        "STOP in working does not always reach stopped: then cycles back to stopping without "
        "reaching stopped", "stopped --START--> working --STOP--> stopping --HALTED--> stopping")]


TRAP = """\
  trap:
    transitions:
      START: {to: trap2}
    ignore:
      trapped: [STOP, DONE, FAIL, RETRY, HALTED]
  trap2:
    transitions:
      START: {to: trap}
    ignore:
      trapped: [STOP, DONE, FAIL, RETRY, HALTED]
"""


def test_a_state_that_cannot_reach_stopped_is_named() -> None:
    spec = spec_of(edit(MINI, ("      HALTED: {to: stopped}\n", "      HALTED: {to: trap}\n"))
                   + TRAP)
    found = failures(spec)
    # once started, the machine can never return: the first such state, and where it ends
    assert found["reach-rest"] == [(
        "working can never reach stopped: every path from it ends among trap, trap2",
        "stopped --START--> working --STOP--> stopping --HALTED--> trap")]
    assert "dead-end" not in found  # trap and trap2 do leave each other


def test_a_dead_end_is_named() -> None:
    spec = spec_of(edit(MINI, ("      HALTED: {to: stopped}\n", "      HALTED: {to: done}\n"))
                   + "  done:\n    ignore:\n      finished: [START, STOP, DONE, FAIL, RETRY, "
                     "HALTED]\n")
    found = failures(spec)
    assert found["dead-end"] == [(
        "done is a dead end: every event it can receive (START, STOP) leaves it where it is",
        "stopped --START--> working --STOP--> stopping --HALTED--> done")]


def test_a_report_decided_by_an_outer_catch_all_is_found() -> None:
    # working no longer decides DONE itself; running's ignore swallows it
    spec = spec_of(edit(MINI, ("          DONE: {to: working, after: [report_stream_end]}\n", ""),
                        ("      stale_result: [HALTED]\n", "      stale_result: [HALTED, DONE]\n")))
    found = failures(spec)
    assert found["reports-decided"][0] == (
        "DONE, reported by job (owned by running.working), is decided in working only by "
        "running's ignore (stale_result), outside running.working: a live result falls to a "
        "catch-all", "stopped --START--> working")


def test_a_report_its_owner_always_ignores_is_found() -> None:
    spec = spec_of(edit(MINI, ("          DONE: {to: working, after: [report_stream_end]}\n", ""),
                        ("          stale_result: [RETRY]\n",
                         "          stale_result: [RETRY, DONE]\n")))
    found = failures(spec)
    assert found == {"reports-decided": [(
        "DONE, reported by job (owned by running.working), is ignored (stale_result) wherever "
        "that work runs: its result is always dropped (handle it, or stop reporting it)",
        "stopped --START--> working")]}


class LeakyLifecycle(Lifecycle):
    """A machine wiring with a planted defect: leaving ``waiting`` forgets its timer.

    The spec cannot express this (owned work is cancelled by construction); the
    check exists so that no construction change, and no ``transitions`` exit
    semantics, can break it unnoticed."""

    def _owned_hooks(self, path: str, key: str) -> list[Any]:
        if path == "running.waiting" and key == "on_exit":
            return []
        return super()._owned_hooks(path, key)


def test_work_left_running_after_an_exit_is_found() -> None:
    spec = spec_of(MINI)
    found = failures(spec, factory=LeakyLifecycle)
    assert found["cancel-on-exit"] == [(
        "work 'pause' owned by 'running.waiting' is still running after STOP left it",
        "stopped --START--> working --FAIL--> waiting --STOP--> stopping")]
    assert failures(spec, factory=Lifecycle) == {}


def test_work_not_started_in_its_owner_is_found() -> None:
    class Lazy(Lifecycle):
        def _owned_hooks(self, path: str, key: str) -> list[Any]:
            return [] if path == "stopping" and key == "on_enter" else super()._owned_hooks(
                path, key)

    found = failures(spec_of(MINI), factory=Lazy)
    assert found["cancel-on-exit"] == [(
        "'stopping' is active but its work 'halt' is not running after STOP",
        "stopped --START--> working --STOP--> stopping")]


# --------------------------------------------------------------- properties


PROPS = """\
properties:
  failure_is_retried:
    doc: "a failed job is retried after the backoff"
    in: working
    after: FAIL
    eventually: working
  stopping_is_final:
    never: "stopping -> running"
  waiting_only_on_failure:
    never: "* -> waiting"
    without: [FAIL]
"""


def test_declared_properties_pass_on_the_small_spec() -> None:
    spec = spec_of(MINI + PROPS)
    assert [p.text for p in spec.properties] == [
        "after FAIL in running.working, eventually running.working",
        "never stopping -> running",
        "never * -> running.waiting without FAIL"]
    result = run_checks(spec)
    assert result.ok, result.report()
    assert [n for n, _, _ in result.checks][5:] == [
        "property failure_is_retried", "property stopping_is_final",
        "property waiting_only_on_failure"]


def test_an_eventually_property_fails_with_its_counterexample() -> None:
    spec = spec_of(edit(MINI, ("RETRY: {to: working}", "RETRY: {to: stopping}")) + PROPS)
    found = failures(spec)
    assert found == {"property failure_is_retried": [(
        "FAIL in working does not always reach running.working: then waits in stopped "
        "forever: every event its work can report (nothing) leaves it there",
        "stopped --START--> working --FAIL--> waiting --RETRY--> stopping --HALTED--> "
        "stopped")]}


def test_a_never_property_fails_with_the_offending_step() -> None:
    spec = spec_of(edit(MINI, ("      HALTED: {to: stopped}\n",
                               "      HALTED: {to: stopped}\n      START: {to: running}\n"),
                        ("      already_stopping: [START, STOP]\n",
                         "      already_stopping: [STOP]\n")) + PROPS)
    found = failures(spec)
    assert found == {"property stopping_is_final": [(
        'stopping --START--> working breaks "never stopping -> running"',
        "stopped --START--> working --STOP--> stopping --START--> working")]}


@pytest.mark.parametrize(("body", "message"), [
    ("  p:\n    after: FAIL\n", "property 'p': missing 'eventually'"),
    ("  p:\n    after: NOPE\n    eventually: working\n",
     "property 'p': after names unknown event 'NOPE'"),
    ("  p:\n    after: FAIL\n    eventually: nowhere\n",
     "property 'p': eventually names unknown or ambiguous state 'nowhere' (use its path, e.g. "
     "running.streaming)"),
    ("  p:\n    never: stopping to running\n",
     "property 'p': never must read 'FROM -> TO', got 'stopping to running'"),
    ("  p:\n    never: stopping -> running\n    after: FAIL\n",
     "property 'p' must be either {after: EVENT, eventually: STATE, in: STATE?} or "
     "{never: 'FROM -> TO', without: [EVENTS]?}"),
    ("  p:\n    never: '* -> waiting'\n    without: [FAIL, OOPS]\n",
     "property 'p': without names unknown event 'OOPS'"),
    ("  p:\n    never: '* -> waiting'\n    unles: [FAIL]\n",
     "property 'p': unknown key 'unles' (known: after, doc, eventually, in, never, without)"),
    ("  p: [after, FAIL]\n",
     "property 'p' must be a mapping: {after: EVENT, eventually: STATE} or "
     "{never: 'FROM -> TO'}"),
])
def test_malformed_properties_are_spec_errors_with_lines(body: str, message: str) -> None:
    text = MINI + "properties:\n" + body
    with pytest.raises(SpecErrors) as info:
        spec_of(text)
    [error] = info.value.errors
    assert error.kind == "property"
    assert message in str(error)
    name_line = len(MINI.splitlines()) + 2  # "properties:" is the line before
    assert error.line in (name_line, name_line + 1, name_line + 2), str(error)
    assert str(error).startswith(f"mini.yaml:{error.line}: [property] ")


# --------------------------------------------------------------- the command


@functools.cache
def _planted_file(tmp: str) -> Path:
    path = Path(tmp) / "planted.yaml"
    path.write_text(edit(MINI, ("          stale_result: [DONE, FAIL]\n",
                                "          stale_result: [DONE, FAIL]\n          busy: [STOP]\n")),
                    encoding="utf-8")
    return path


def test_cli_exit_1_prints_each_counterexample(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--spec", str(_planted_file(str(tmp_path)))]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert "FAIL stop: STOP, then only events of owned work, always reaches the rest state" in lines
    assert ("       counterexample: stopped --START--> working --FAIL--> waiting --STOP--> "
            "waiting --RETRY--> working --DONE--> working") in lines
    assert lines[-1] == "4 of 5 checks passed"


def test_cli_refuses_an_invalid_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINI + "properties:\n  p: {after: NOPE, eventually: working}\n",
                   encoding="utf-8")
    assert main(["check", "--spec", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("invalid spec: 1 problem(s)") and "[property]" in err
