"""Validation of ``machine_spec.yaml``: one test per kind of SpecError.

Every bad spec here is a spec of the tests' own with one deliberate edit (a
text replacement anchored on one of its lines): ``tests/specs/lifecycle_base.yaml``
(a frozen copy of the shipped spec) or a small inline one, never the shipped
``machine_spec.yaml``, so a legitimate lifecycle change cannot break them. Each
test asserts the error's kind, the state and event it names, its line (the
line of the edit, looked up in the edited text) and its message.

Pure tests: no sockets, no sleeping.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pullwake.lifecycle.spec as spec_module
from pullwake.errors import SpecError, SpecErrors
from pullwake.lifecycle.effects import effect_hook_names
from pullwake.lifecycle.spec import default_spec_path, load_spec, parse_spec

REPO = Path(__file__).resolve().parent.parent
SPEC_FILE = REPO / "machine_spec.yaml"
SPEC_TEXT = SPEC_FILE.read_text(encoding="utf-8")
#: What the validator tests edit (a frozen copy of the shipped spec).
BASE_TEXT = (REPO / "tests" / "specs" / "lifecycle_base.yaml").read_text(encoding="utf-8")
HOOKS = effect_hook_names()


# ------------------------------------------------------------------- helpers


def edit(old: str, new: str, text: str = BASE_TEXT) -> str:
    """The base spec text with the one occurrence of ``old`` replaced by ``new``."""
    assert text.count(old) == 1, f"edit anchor not found exactly once in the spec: {old!r}"
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    """1-based line of the one line of ``text`` that contains ``needle``."""
    hits = [i for i, ln in enumerate(text.splitlines(), 1) if needle in ln]
    assert len(hits) == 1, f"{needle!r} is on lines {hits}"
    return hits[0]


def problems(text: str, path: str = "bad.yaml") -> list[SpecError]:
    """Every SpecError ``text`` raises (it must raise)."""
    with pytest.raises(SpecErrors) as info:
        parse_spec(text, path=path, hooks=HOOKS)
    errs = info.value.errors
    assert errs, "SpecErrors with no errors"
    assert all(isinstance(e, SpecError) for e in errs)
    return errs


def only(text: str, kind: str) -> SpecError:
    """The single problem of ``text``; it must be of ``kind``."""
    errs = problems(text)
    assert [e.kind for e in errs] == [kind], [str(e) for e in errs]
    return errs[0]


def check(err: SpecError, *, kind: str, state: str | None, event: str | None,
          line: int | None, message: str) -> None:
    assert (err.kind, err.state, err.event, err.line) == (kind, state, event, line), str(err)
    assert err.problem == message
    where = f"bad.yaml:{line}: " if line else "bad.yaml: "
    ctx = [f"state {state!r}"] if state is not None else []
    ctx += [f"event {event!r}"] if event is not None else []
    suffix = f" ({', '.join(ctx)})" if ctx else ""
    assert str(err) == f"{where}[{kind}] {message}{suffix}"


def all_events() -> list[str]:
    return list(yaml.safe_load(BASE_TEXT)["events"])


# ------------------------------------------------------------ the real spec


def test_the_real_spec_is_valid() -> None:
    spec = parse_spec(SPEC_TEXT, path=str(SPEC_FILE), hooks=HOOKS)
    assert spec.initial == "stopped"
    assert set(spec.leaf_states) == {"stopped", "running.connecting", "running.streaming",
                                     "running.reconnecting", "stopping"}
    # every (leaf, event) pair is decided by at least one unguarded branch
    for leaf in spec.leaf_states:
        for event in spec.events:
            branches = spec.decisions(leaf, event)
            assert any(not b.guarded for b in branches), (leaf, event)


def test_the_base_the_validator_tests_edit_is_valid() -> None:
    assert parse_spec(BASE_TEXT, path="lifecycle_base.yaml", hooks=HOOKS).leaf_states


def test_load_spec_caches_per_content(tmp_path: Path) -> None:
    assert load_spec() is load_spec()
    copy = tmp_path / "copy.yaml"
    copy.write_text(SPEC_TEXT, encoding="utf-8")
    assert load_spec(copy) is load_spec(copy)
    assert load_spec(copy) is not load_spec()  # the path is part of the key (messages name it)


def test_hooks_argument_limits_what_a_spec_may_name() -> None:
    with pytest.raises(SpecErrors) as info:
        parse_spec(BASE_TEXT, path="bad.yaml", hooks=HOOKS - {"claim_wake"})
    (err,) = info.value.errors
    check(err, kind="unknown-hook", state="running.streaming", event="WAKE",
          line=line_of(BASE_TEXT, "before: [claim_wake]"),
          message="before hook 'claim_wake' is provided by nothing")


# ------------------------------------------------------- one test per kind


def test_yaml() -> None:
    text = edit("initial: stopped\n", "initial: stopped: again\n")
    err = only(text, "yaml")
    assert err.line == line_of(text, "initial: stopped: again")
    assert err.problem == "not valid YAML: mapping values are not allowed here"
    assert err.problem.startswith("not valid YAML: ")
    assert str(err).startswith(f"bad.yaml:{err.line}: [yaml] not valid YAML: ")


def test_yaml_that_is_not_a_mapping() -> None:
    err = only("- just\n- a list\n", "schema")
    check(err, kind="schema", state=None, event=None, line=None,
          message="the spec must be a YAML mapping")


def test_schema_unknown_state_key() -> None:
    text = edit("        owns: connect_attempt", "        owned: connect_attempt")
    check(only(text, "schema"), kind="schema", state="running.connecting", event=None,
          line=line_of(text, "owned: connect_attempt"),
          message="unknown state key 'owned'")


def test_schema_branch_needs_exactly_one_mode() -> None:
    text = edit("STREAM_RESET: {to: reconnecting,",
                "STREAM_RESET: {to: reconnecting, internal: true,")
    err = only(text, "schema")  # and no cascade into [undecided] for the same pair
    check(err, kind="schema", state="running.connecting", event="STREAM_RESET",
          line=line_of(text, "{to: reconnecting, internal: true,"),
          message="a transition needs exactly one of 'to', 'internal: true', 'ignore'")


def test_unknown_state_in_a_transition() -> None:
    text = edit("STREAM_RESET: {to: reconnecting,", "STREAM_RESET: {to: reconecting,")
    # One typo, one problem: the pair it was meant to decide is not also
    # reported as undecided.
    check(only(text, "unknown-state"), kind="unknown-state", state="running.connecting",
          event="STREAM_RESET", line=line_of(text, "{to: reconecting,"),
          message="transition to unknown state 'reconecting'")


def test_unknown_state_as_initial() -> None:
    text = edit("initial: stopped\n", "initial: stoped\n")
    check(only(text, "unknown-state"), kind="unknown-state", state="stoped", event=None,
          line=line_of(text, "initial: stoped"),
          message="initial state 'stoped' is not a top-level state")


def test_unknown_state_as_initial_child() -> None:
    text = edit("    initial: connecting\n", "    initial: conecting\n")
    check(only(text, "unknown-state"), kind="unknown-state", state="running", event=None,
          line=line_of(text, "initial: conecting"),
          message="initial child 'conecting' is not a child of 'running'")


def test_unknown_event_in_a_transition() -> None:
    text = edit("          CONNECTED: {to: streaming}\n",
                "          CONNECTED: {to: streaming}\n          WAKEUP: {to: streaming}\n")
    check(only(text, "unknown-event"), kind="unknown-event", state="running.connecting",
          event="WAKEUP", line=line_of(text, "WAKEUP: {to: streaming}"),
          message="transition on unknown event 'WAKEUP'")


def test_unknown_event_in_backoff_reset_on() -> None:
    text = edit("reset_on: [START, CONNECTED]", "reset_on: [START, CONNECTD]")
    check(only(text, "unknown-event"), kind="unknown-event", state=None, event="CONNECTD",
          line=line_of(text, "reset_on: [START, CONNECTD]"),
          message="backoff resets on unknown event 'CONNECTD'")


def test_unknown_event_as_a_work_failure() -> None:
    text = edit("    fails: CONNECT_FAILED", "    fails: WAKE")
    check(only(text, "unknown-event"), kind="unknown-event", state=None, event="WAKE",
          line=line_of(text, "fails: WAKE"),
          message="work 'connect_attempt' fails with 'WAKE', which it does not report")


def test_unknown_work() -> None:
    text = edit("        owns: connect_attempt", "        owns: connect_atempt")
    check(only(text, "unknown-work"), kind="unknown-work", state="running.connecting",
          event=None, line=line_of(text, "owns: connect_atempt"),
          message="state owns unknown work 'connect_atempt'")


def test_unknown_hook_misspelled_in_a_transition() -> None:
    text = edit("after: [report_stream_reset]", "after: [report_stream_rest]")
    check(only(text, "unknown-hook"), kind="unknown-hook", state="running.connecting",
          event="STREAM_RESET", line=line_of(text, "report_stream_rest"),
          message="after hook 'report_stream_rest' is provided by nothing")


def test_unknown_hook_misspelled_on_enter() -> None:
    text = edit("on_enter: [on_stopped]", "on_enter: [on_stoped]")
    check(only(text, "unknown-hook"), kind="unknown-hook", state="stopped", event=None,
          line=line_of(text, "on_enter: [on_stoped]"),
          message="on_enter hook 'on_stoped' is provided by nothing")


def test_unknown_hook_misspelled_as_work_start() -> None:
    text = edit("start: start_shutdown", "start: start_shutdwn")
    check(only(text, "unknown-hook"), kind="unknown-hook", state=None, event=None,
          line=line_of(text, "start: start_shutdwn"),
          message="work 'shutdown' starts with hook 'start_shutdwn', which the runner "
                  "does not provide")


def test_unknown_guard() -> None:
    text = edit("if: reset_pending", "if: reset_pendng")
    check(only(text, "unknown-guard"), kind="unknown-guard", state="running.streaming",
          event="STREAM_END", line=line_of(text, "if: reset_pendng"),
          message="guard 'reset_pendng' is provided by nothing (known: reset_pending)")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("cap_s: 30.0", "cap_s: 0.5", "cap_s (0.5) must be >= initial_s (1.0)"),
        ("initial_s: 1.0", "initial_s: 0", "initial_s must be > 0, got 0.0"),
        ("factor: 2.0", "factor: 0.5", "factor must be >= 1, got 0.5"),
        ("factor: 2.0", "factor: fast", "factor must be a number, got 'fast'"),
        ("jitter: none", "jitter: some",
         "jitter must be one of ('none', 'full', 'equal'), got 'some'"),
        ("  factor: 2.0\n", "  factor: 2.0\n  ceiling: 3\n", "unknown backoff key 'ceiling'"),
    ],
    ids=["cap-below-initial", "initial-zero", "factor-below-1", "factor-not-number",
         "jitter", "unknown-key"],
)
def test_backoff(old: str, new: str, message: str) -> None:
    text = edit(old, new)
    check(only(text, "backoff"), kind="backoff", state=None, event=None,
          line=line_of(text, new.strip().splitlines()[-1]), message=message)


def test_unreachable() -> None:
    # A new top-level state that decides every event (so only reachability
    # is wrong) but that no transition enters.
    events = ", ".join(all_events())
    text = BASE_TEXT.rstrip("\n") + f"\n\n  limbo:\n    ignore:\n      never: [{events}]\n"
    check(only(text, "unreachable"), kind="unreachable", state="limbo", event=None,
          line=line_of(text, "  limbo:"), message="no transition reaches this state")


def test_undecided_missing_pair() -> None:
    text = edit("          WAKE: {internal: true, before: [claim_wake]}\n", "")
    check(only(text, "undecided"), kind="undecided", state="running.streaming",
          event="WAKE", line=line_of(text, "      streaming:"),
          message="no transition, internal transition or named ignore decides this pair")


def test_undecided_every_branch_guarded() -> None:
    text = edit("            - {ignore: reset_pending}\n", "")
    check(only(text, "undecided"), kind="undecided", state="running.streaming",
          event="STREAM_RESET", line=line_of(text, "      streaming:"),
          message="every branch is guarded: when the guards fail the event would be "
                  "dropped by accident; add an unguarded branch or an ignore")


#: A small spec of its own (not the shipped one), so a legitimate lifecycle
#: change (a new child of ``running``, say) cannot break the test below.
SMALL_SPEC = """\
version: 1
name: small
initial: idle
backoff: {reset_on: [GO]}
events:
  GO: {doc: "go"}
  PAUSE: {doc: "pause"}
  STOP: {doc: "stop"}
states:
  idle:
    transitions:
      GO: {to: busy}
    ignore:
      not_busy: [PAUSE, STOP]
  busy:
    initial: working
    transitions:
      STOP: {to: idle}
    ignore:
      already_busy: [GO]
    states:
      working:
        transitions:
          PAUSE: {to: paused}
      paused:
        transitions:
          PAUSE: {to: working}
"""


def test_undecided_names_every_missing_pair() -> None:
    # Deleting a parent's decision leaves it undecided in every child.
    assert parse_spec(SMALL_SPEC, path="small.yaml", hooks=HOOKS).leaf_states == (
        "idle", "busy.working", "busy.paused")
    text = edit("      STOP: {to: idle}\n", "", SMALL_SPEC)
    errs = problems(text)
    assert {(e.kind, e.state, e.event, e.line) for e in errs} == {
        ("undecided", "busy.working", "STOP", line_of(text, "      working:")),
        ("undecided", "busy.paused", "STOP", line_of(text, "      paused:"))}


def test_conflict_handled_and_ignored() -> None:
    text = edit("stale_result: [CONNECTED, CONNECT_FAILED, BACKOFF_ELAPSED]\n",
                "stale_result: [CONNECTED, CONNECT_FAILED, BACKOFF_ELAPSED, WAKE]\n")
    check(only(text, "conflict"), kind="conflict", state="running.streaming", event="WAKE",
          line=line_of(text, "BACKOFF_ELAPSED, WAKE]"),
          message="event 'WAKE' is both handled and ignored (stale_result)")


def test_conflict_work_owned_twice() -> None:
    text = edit("        owns: backoff_timer", "        owns: connect_attempt")
    errs = problems(text)
    conflict = next(e for e in errs if e.kind == "conflict")
    check(conflict, kind="conflict", state="running.reconnecting", event=None,
          line=line_of(text, "      reconnecting:") + 2,
          message="work 'connect_attempt' is already owned by 'running.connecting'")
    assert text.splitlines()[conflict.line - 1].strip() == "owns: connect_attempt"


def test_io_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(missing)
    err = info.value
    assert (err.kind, err.path, err.state, err.event, err.line) == (
        "io", str(missing), None, None, None)
    assert err.problem == "cannot read spec: No such file or directory"
    assert str(err) == f"{missing}: [io] cannot read spec: No such file or directory"


# ------------------------------------------------------- reporting together


def test_every_problem_is_reported_at_once() -> None:
    text = edit("after: [report_stream_reset]", "after: [report_stream_rest]")
    text = edit("          WAKE: {internal: true, before: [claim_wake]}\n", "", text)
    text = edit("if: reset_pending", "if: reset_pendng", text)
    errs = problems(text)
    assert sorted((e.kind, e.state, e.event) for e in errs) == [
        ("undecided", "running.streaming", "WAKE"),
        ("unknown-guard", "running.streaming", "STREAM_END"),
        ("unknown-hook", "running.connecting", "STREAM_RESET"),
    ]
    with pytest.raises(SpecErrors) as info:
        parse_spec(text, path="bad.yaml", hooks=HOOKS)
    message = str(info.value)
    assert message.startswith("3 problem(s) in bad.yaml:\n")
    for e in errs:
        assert f"  {e}" in message


def test_validate_command_exits_1_printing_every_problem(tmp_path: Path) -> None:
    text = edit("after: [report_stream_reset]", "after: [report_stream_rest]")
    text = edit("            - {ignore: reset_pending}\n", "", text)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pullwake", "validate", "--spec", str(bad)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == "invalid spec: 2 problem(s)"
    assert sorted(lines[1:]) == sorted([
        f"  {bad}:{line_of(text, 'report_stream_rest')}: [unknown-hook] after hook "
        "'report_stream_rest' is provided by nothing "
        "(state 'running.connecting', event 'STREAM_RESET')",
        f"  {bad}:{line_of(text, '      streaming:')}: [undecided] every branch is guarded: "
        "when the guards fail the event would be dropped by accident; add an unguarded "
        "branch or an ignore (state 'running.streaming', event 'STREAM_RESET')",
    ])


def test_malformed_specs_raise_spec_errors_only() -> None:
    """Odd shapes anywhere in the document are reported, never a crash."""
    raw = yaml.safe_load(BASE_TEXT)
    odd_values: list[object] = [None, 1, "x", [1], {"a": 1}]
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    targets = [("states", "running", "initial"), ("states", "running", "owns"),
               ("states", "running", "states", "connecting"), ("states", "stopped"),
               ("states", "running", "states", "streaming", "transitions", "STREAM_END"),
               ("work", "backoff_timer"), ("events", "WAKE"), ("backoff",), ("events",),
               ("states", "running", "states", "streaming", "ignore")]
    for target in targets:
        for value in odd_values:
            doc = yaml.safe_load(BASE_TEXT)
            node = doc
            for key in target[:-1]:
                node = node[key]
            node[target[-1]] = value
            try:
                parse_spec(yaml.dump(doc, Dumper=dumper), path="odd.yaml", hooks=HOOKS)
            except SpecErrors as exc:
                assert all(e.kind and e.problem for e in exc.errors)
    assert raw == yaml.safe_load(BASE_TEXT)


# ------------------------------------------------------------ default path


def test_default_spec_path_env_override(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    monkeypatch.setenv("PULLWAKE_SPEC", str(other))
    assert default_spec_path() == other


def test_default_spec_path_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PULLWAKE_SPEC", raising=False)
    packaged = Path(spec_module.__file__).resolve().parent / "machine_spec.yaml"
    expected = packaged if packaged.is_file() else SPEC_FILE
    assert default_spec_path() == expected
    assert load_spec().path == str(expected)


def test_default_spec_path_prefers_the_packaged_copy(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.delenv("PULLWAKE_SPEC", raising=False)
    site = tmp_path / "site"
    pkg = site / "pullwake"
    pkg.mkdir(parents=True)
    (pkg / "lifecycle").mkdir()
    monkeypatch.setattr(spec_module, "__file__", str(pkg / "lifecycle" / "spec.py"))
    # no packaged copy: the checkout's top-level file (the package's parent dir)
    assert default_spec_path() == site / "machine_spec.yaml"
    # a wheel install: the copy at the package's top wins
    (pkg / "machine_spec.yaml").write_text(SPEC_TEXT, encoding="utf-8")
    assert default_spec_path() == pkg / "machine_spec.yaml"


def test_the_wheel_packages_the_spec_next_to_the_module() -> None:
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    include = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert include["machine_spec.yaml"] == "pullwake/machine_spec.yaml"


def test_env_spec_is_used_by_the_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from pullwake.cli.main import main

    bad = tmp_path / "env.yaml"
    bad.write_text(edit("if: reset_pending", "if: reset_pendng"), encoding="utf-8")
    monkeypatch.setenv("PULLWAKE_SPEC", str(bad))
    assert main(["validate"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "[unknown-guard]" in err
