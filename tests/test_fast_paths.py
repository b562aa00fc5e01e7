"""The per-wake fast paths give exactly what the general paths give.

Each fast path here is compared with the general path it short-cuts, on the
same inputs, observing everything the general path makes observable:

- the lifecycle's compiled decisions (``Lifecycle._plan``: ``WAKE`` and
  ``OFFSET`` while streaming, every ignore) against ``transitions``' own
  trigger, for every (leaf state, event), with hooks that raise, with an
  observer that raises, and with events fired from inside a hook (queued);
- the runner's observer (``on_transition``) with debug logging off and on.

No sockets, no sleeping (the machine runs on recording effects).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from machine_helpers import RecordingEffects, drive_to, fire_or_report, payload_for
from runner_helpers import RecordingRuntime

from pullwake import PullWakeRunner, RunnerConfig
from pullwake.lifecycle.machine import Lifecycle
from pullwake.lifecycle.spec import load_spec
from pullwake.testing.clock import ManualClock

SPEC = load_spec()
HOT_HOOKS = ("claim_wake", "record_offset")
#: One payload per event, shared by both sides (an error compares by identity).
PAYLOADS = {event: payload_for(SPEC, event) for event in SPEC.events}


def _pair(raising: set[str]) -> tuple[tuple[Lifecycle, RecordingEffects],
                                      tuple[Lifecycle, RecordingEffects]]:
    """The same machine twice: one as built, one with every shortcut turned off."""
    fast_fx, slow_fx = RecordingEffects(raising=set(raising)), RecordingEffects(
        raising=set(raising))
    fast = Lifecycle(fast_fx, SPEC, rng=lambda: 1.0, name="w")
    slow = Lifecycle(slow_fx, SPEC, rng=lambda: 1.0, name="w")
    slow._shortcut = lambda state_path, ev: None  # type: ignore[method-assign]
    return (fast, fast_fx), (slow, slow_fx)


def _observed(lc: Lifecycle, fx: RecordingEffects, records: list[logging.LogRecord]
              ) -> dict[str, Any]:
    return {"state": lc.state_path, "kind": lc.last_kind, "log": list(fx.log),
            "calls": list(fx.calls), "owned": lc.owned_work,
            "backoff": lc.backoff.attempt, "queue": len(lc._queue), "busy": lc._busy,
            "records": [(r.name, r.levelname, r.getMessage(),
                         r.exc_info[0] if r.exc_info else None) for r in records]}


def _run(lc: Lifecycle, fx: RecordingEffects, leaf: str, events: list[str],
         caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    drive_to(lc, leaf)
    fx.log.clear()
    fx.calls.clear()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="pullwake.machine"):
        for event in events:
            fire_or_report(lc, event, **PAYLOADS[event])
    return _observed(lc, fx, [r for r in caplog.records if r.name == "pullwake.machine"])


@pytest.mark.parametrize("raising", [(), HOT_HOOKS, ("on_transition",)],
                         ids=["plain", "hooks-raise", "observer-raises"])
@pytest.mark.parametrize("leaf", SPEC.leaf_states)
@pytest.mark.parametrize("event", list(SPEC.events))
def test_compiled_decision_is_the_trigger(leaf: str, event: str, raising: tuple[str, ...],
                                          caplog: pytest.LogCaptureFixture) -> None:
    """For every (leaf, event): state, kind, hooks and payloads, observer calls, owned
    work, backoff and log records are those of transitions' own trigger."""
    (fast, fast_fx), (slow, slow_fx) = _pair(set(raising))
    got = _run(fast, fast_fx, leaf, [event], caplog)
    want = _run(slow, slow_fx, leaf, [event], caplog)
    assert got == want


def test_the_hot_decisions_are_compiled() -> None:
    """WAKE and OFFSET while streaming take the compiled path (else the test above
    would compare the general path with itself)."""
    (fast, _), _ = _pair(set())
    drive_to(fast, "streaming")
    plans = fast._plans_for("running.streaming")
    assert plans["WAKE"] is not None and plans["WAKE"].hooks[0][0] == "claim_wake"
    assert plans["OFFSET"] is not None and plans["OFFSET"].hooks[0][0] == "record_offset"
    assert plans["STREAM_END"] is None  # a guarded transition: transitions decides it
    assert plans["STREAM_RESET"] is None  # a machine hook (record_reset) reads the event


@pytest.mark.parametrize("inner", ["WAKE", "OFFSET", "STREAM_RESET", "STREAM_END", "STOP"])
def test_events_fired_from_a_compiled_hook_queue_like_the_trigger(
        inner: str, caplog: pytest.LogCaptureFixture) -> None:
    """An event delivered from inside claim_wake runs after it, as with the trigger."""
    results = []
    for lc, fx in _pair(set()):
        sent: list[str] = []

        def when_hook(name: str, payload: Any, lc: Lifecycle = lc, sent: list[str] = sent,
                      fx: RecordingEffects = fx) -> None:
            if name == "claim_wake" and not sent:
                sent.append(inner)
                fire_or_report(lc, inner, **PAYLOADS[inner])
                fx.log.append(("returned", name))

        fx.when_hook = when_hook
        results.append(_run(lc, fx, "streaming", ["WAKE", "OFFSET"], caplog))
    assert results[0] == results[1]
    assert ("returned", "claim_wake") in results[0]["log"]


# ------------------------------------------------- the runner's observer


def _reference_on_transition(runner: Any, source: str, event: str, dest: str,
                             kind: str) -> None:
    """The observer as it was before its cheap checks: every step, always."""
    if kind == "ignored":
        runner.log.debug("%s ignored in %s", event, source)
    else:
        runner.log.debug("%s --%s--> %s", source, event, dest)
    if kind == "transition":
        runner._stats.note_transition(runner._clock.time(), source, event, dest)
    for listener in runner._listeners:
        try:
            listener(source, event, dest, kind)
        except Exception:
            runner.log.exception("transition listener raised; ignoring")
    note, runner._backoff_note = runner._backoff_note, None
    if note is not None:
        runner.log.warning("reconnecting in %.3gs (attempt %d)", *note)


CALLS = [("streaming", "WAKE", "streaming", "internal"),
         ("streaming", "OFFSET", "streaming", "internal"),
         ("connecting", "WAKE", "connecting", "ignored"),
         ("streaming", "STREAM_END", "reconnecting", "transition")]


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
@pytest.mark.parametrize("listening", ["none", "ok", "raises"])
@pytest.mark.parametrize("note", [None, (1.5, 2)])
def test_runner_observer_is_the_reference(level: int, listening: str,
                                          note: tuple[float, int] | None,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """Log lines, transition records, listener calls and the backoff note are those of
    the observer that logs every decision (with debug logging off: none of its lines)."""
    seen: list[dict[str, Any]] = []
    for observe in ("fast", "reference"):
        runner = PullWakeRunner(RunnerConfig(base_url="http://127.0.0.1:9", runner_id="r1",
                                             clock=ManualClock()), RecordingRuntime())
        heard: list[tuple[str, ...]] = []
        if listening != "none":
            def listener(*args: str, heard: list[tuple[str, ...]] = heard) -> None:
                heard.append(args)
                if listening == "raises":
                    raise RuntimeError("listener failed")
            runner.observe(listener)
        caplog.clear()
        with caplog.at_level(level, logger="pullwake.runner"):
            for i, call in enumerate(CALLS):
                runner._backoff_note = note if i == 1 else None
                if observe == "fast":
                    runner.on_transition(*call)
                else:
                    _reference_on_transition(runner, *call)
        seen.append({"records": [(r.levelname, r.getMessage(), r.exc_info is not None)
                                 for r in caplog.records if r.name == "pullwake.runner"],
                     "heard": heard, "note": runner._backoff_note,
                     "transitions": list(runner._stats.recent_transitions)})
    assert seen[0] == seen[1]
    if level == logging.DEBUG:
        assert any("--WAKE-->" in m for _, m, _ in seen[0]["records"])
