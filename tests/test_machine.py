"""The live Lifecycle: owned work, tickets, run-to-completion, hook order, backoff.

The owned-work rule is the heart of this module: entering a state that owns
work starts exactly one piece of it, leaving the state cancels exactly that
piece, on every exit path the table contains (STOP from every child
included), and work owned by a parent (``running``'s heartbeat) survives moves
between its children. The effects are :class:`machine_helpers.RecordingEffects`;
time is a :class:`machine_helpers.FakeClock` (no sleeping, no asyncio).
Random interleavings are covered by ``tests/test_stateful.py``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
from machine_helpers import (
    FakeClock,
    RecordingEffects,
    drive_to,
    fire_or_report,
    payload_for,
)

from pullwake.errors import SpecError
from pullwake.lifecycle.effects import WorkTicket
from pullwake.lifecycle.machine import Lifecycle
from pullwake.lifecycle.model import LifecycleSpec
from pullwake.lifecycle.spec import load_spec
from pullwake.lifecycle.table import Cell, compute_table

SPEC = load_spec()
TABLE = compute_table(SPEC)
RUNNING_CHILDREN = [SPEC.states[p].name for p in SPEC.states["running"].children]


def expected_owned(spec: LifecycleSpec, state_path: str) -> dict[str, str]:
    """{state: work} for every active state that owns work (the leaf and its parents)."""
    return {p: spec.states[p].owns for p in spec.ancestry(state_path)  # type: ignore[misc]
            if spec.states[p].owns}


def make(clock: FakeClock | None = None, spec: LifecycleSpec = SPEC,
         **kwargs: Any) -> tuple[Lifecycle, RecordingEffects]:
    """A Lifecycle whose backoff rng is pinned to 1.0: each delay is the jitter's bound."""
    effects = RecordingEffects(clock=clock, **kwargs)
    return Lifecycle(effects, spec, rng=lambda: 1.0), effects


def assert_owned_consistent(lc: Lifecycle, effects: RecordingEffects) -> None:
    assert lc.owned_work == expected_owned(lc.spec, lc.state_path)
    live = [h for h in effects.handles if h.cancels == 0 and h.ticket.current]
    assert {id(h.ticket) for h in live} == {id(t) for t in lc._owned.values()}
    for h in effects.handles:
        assert h.cancels == (0 if h.ticket.current else 1), h


# ------------------------------------------------------------ owned work


def test_stopped_owns_nothing() -> None:
    lc, effects = make()
    assert (lc.state, lc.owned_work, effects.handles) == ("stopped", {}, [])


@pytest.mark.parametrize("cell", TABLE.cells, ids=[f"{c.state}-{c.event}" for c in TABLE.cells])
def test_every_exit_path_cancels_what_it_leaves(cell: Cell) -> None:
    """For every cell: exited states' work is cancelled once, entered states' work is
    started once, work of states that stay active is untouched."""
    lc, effects = make()
    drive_to(lc, cell.state_path)
    before = {p: lc.owned(p) for p in lc._owned}
    handles_before = list(effects.handles)
    present = dict(SPEC.events[cell.trigger].variants)[cell.event]
    fire_or_report(lc, cell.trigger, **payload_for(SPEC, cell.trigger, present))
    assert lc.state_path == cell.target_path

    old, new = SPEC.ancestry(cell.state_path), SPEC.ancestry(cell.target_path)
    exited = [p for p in old if p not in new] if cell.kind == "transition" else []
    entered = [p for p in new if p not in old] if cell.kind == "transition" else []
    for path, ticket in before.items():
        assert ticket is not None and ticket.handle is not None
        if path in exited:
            assert ticket.cancelled and not ticket.current
            assert ticket.handle.cancels == 1, (path, ticket)
        else:
            assert ticket.current and ticket.handle.cancels == 0, (path, ticket)
            assert lc.owned(path) is ticket
    started = effects.handles[len(handles_before):]
    assert sorted(h.work for h in started) == sorted(
        SPEC.states[p].owns for p in entered if SPEC.states[p].owns)
    assert all(h.cancels == 0 and h.ticket.current for h in started)
    assert_owned_consistent(lc, effects)


@pytest.mark.parametrize("child", RUNNING_CHILDREN)
def test_stop_from_every_child_cancels_its_work_and_the_heartbeat(child: str) -> None:
    lc, effects = make()
    drive_to(lc, child)
    leaf_work, heartbeat = lc.owned(), lc.owned("running")
    assert leaf_work is not None and heartbeat is not None
    lc.fire("STOP")
    assert lc.state == "stopping"
    for ticket in (leaf_work, heartbeat):
        assert ticket.cancelled and ticket.handle.cancels == 1  # type: ignore[union-attr]
    # the leaf's work is cancelled before its parent's, then shutdown starts
    assert effects.log[-4:] == [("cancel", leaf_work.work), ("cancel", "heartbeat"),
                                ("start", "shutdown"),
                                ("transition", child, "STOP", "stopping", "transition")]
    assert lc.owned_work == {"stopping": "shutdown"}


def test_stream_reset_from_connecting_cancels_the_attempt_not_the_heartbeat() -> None:
    lc, effects = make()
    drive_to(lc, "connecting")
    attempt, heartbeat = lc.owned(), lc.owned("running")
    assert attempt is not None and heartbeat is not None
    assert heartbeat.report("STREAM_RESET", error=RuntimeError("heartbeats failed"))
    assert lc.state == "reconnecting"
    assert attempt.cancelled and attempt.handle.cancels == 1  # type: ignore[union-attr]
    assert heartbeat.current and heartbeat.handle.cancels == 0  # type: ignore[union-attr]
    assert lc.owned_work == {"running": "heartbeat", "running.reconnecting": "backoff_timer"}
    assert effects.hook_names() == ["on_start", "report_stream_reset"]


def test_owned_work_tracks_a_long_run() -> None:
    clock = FakeClock()
    lc, effects = make(clock)
    script = ["START", "CONNECT_FAILED", "TICK", "CONNECTED", "WAKE", "OFFSET",
              "STREAM_RESET", "STREAM_RESET", "STREAM_END", "TICK", "STREAM_RESET", "TICK",
              "CONNECTED", "STREAM_CLOSED", "START", "SHUTDOWN_DONE", "START", "STOP",
              "STOP", "SHUTDOWN_FAILED", "STOP"]
    for step in script:
        if step == "TICK":
            clock.advance(60.0)
        else:
            fire_or_report(lc, step, **payload_for(SPEC, step))
        assert_owned_consistent(lc, effects)
    assert lc.state == "stopped" and lc.owned_work == {}
    assert clock.pending == []


def test_a_start_hook_gets_a_ticket_with_the_entering_payload() -> None:
    lc, effects = make()
    drive_to(lc, "connecting")
    stream = object()
    assert lc.owned().report("CONNECTED", stream=stream)  # type: ignore[union-attr]
    consumer = effects.started("stream_consumer")[-1].ticket
    assert isinstance(consumer, WorkTicket)
    assert (consumer.work, consumer.state, consumer.delay) == (
        "stream_consumer", "running.streaming", None)
    assert consumer.payload["stream"] is stream
    assert consumer.reports == frozenset(SPEC.work["stream_consumer"].reports)
    assert "current" in repr(consumer)


# --------------------------------------------------------------- tickets


def test_stale_ticket_reports_are_dropped() -> None:
    lc, effects = make()
    drive_to(lc, "connecting")
    first = lc.owned()
    assert first is not None
    lc.owned("running").report("STREAM_RESET", error=RuntimeError("x"))  # type: ignore[union-attr]
    assert lc.state == "reconnecting" and not first.current
    decided = len(effects.transitions)
    assert first.report("CONNECTED", stream=object()) is False
    assert (lc.state, len(effects.transitions)) == ("reconnecting", decided)
    assert "stale" in repr(first)

    assert lc.owned().report("BACKOFF_ELAPSED")  # type: ignore[union-attr]
    second = lc.owned()
    assert lc.state == "connecting" and second is not None and second is not first
    assert second.epoch > first.epoch
    assert first.report("CONNECT_FAILED", error=RuntimeError("late")) is False  # still stale
    assert lc.state == "connecting"
    assert second.report("CONNECTED", stream=object()) is True
    assert lc.state == "streaming"
    assert "report_connect_failure" not in effects.hook_names()


def test_report_of_an_undeclared_event_is_a_bug() -> None:
    lc, _ = make()
    drive_to(lc, "connecting")
    with pytest.raises(ValueError, match="work 'connect_attempt' does not report 'WAKE'"):
        lc.owned().report("WAKE", wake={})  # type: ignore[union-attr]
    assert lc.state == "connecting"


def test_a_report_queued_before_its_state_was_left_is_dropped() -> None:
    """Current when reported, stale when its turn comes: checked again at dequeue."""
    def when_started(ticket: WorkTicket) -> None:
        if ticket.work == "connect_attempt":
            lc.fire("STOP")  # queued first
            assert ticket.report("CONNECTED", stream=object()) is True  # queued, current now

    lc, effects = make(when_started=when_started)
    lc.fire("START")
    assert lc.state == "stopping"  # STOP ran first; the CONNECTED ticket was stale by then
    assert [t[1] for t in effects.transitions] == ["START", "STOP"]
    assert effects.started("stream_consumer") == []


# ------------------------------------------------------- run to completion


def test_events_fired_from_callbacks_are_queued() -> None:
    seen: list[tuple[str, str]] = []

    def when_hook(name: str, payload: Any) -> None:
        if name == "claim_wake":
            lc.fire("STOP")
            lc.fire("OFFSET", offset="9")
            seen.append((name, lc.state))  # nothing ran yet: still inside WAKE

    lc, effects = make(when_hook=when_hook)
    drive_to(lc, "streaming")
    lc.fire("WAKE", wake={"path": "/s"})
    assert seen == [("claim_wake", "streaming")]
    assert effects.transitions[-3:] == [
        ("streaming", "WAKE", "streaming", "internal"),
        ("streaming", "STOP", "stopping", "transition"),
        ("stopping", "OFFSET", "stopping", "ignored"),
    ]
    assert "record_offset" not in effects.hook_names()  # OFFSET arrived after STOP


# ------------------------------------------------------------- hook order


def test_hook_order_over_a_full_cycle() -> None:
    """prepare -> conditions -> before -> on_exit (owned work cancelled first) ->
    on_enter (spec hooks, then owned work started) -> after -> after_state_change."""
    clock = FakeClock()
    lc, effects = make(clock)
    lc.fire("START")
    fire_or_report(lc, "CONNECT_FAILED", error=RuntimeError("refused"))
    clock.advance(1.0)
    fire_or_report(lc, "CONNECTED", stream=object())
    fire_or_report(lc, "STREAM_END")
    lc.fire("STOP")
    fire_or_report(lc, "SHUTDOWN_FAILED", error=RuntimeError("drain"))
    assert effects.log == [
        ("hook", "on_start"),                      # before
        ("start", "heartbeat"),                    # enter running
        ("start", "connect_attempt"),             # enter running.connecting
        ("transition", "stopped", "START", "connecting", "transition"),
        ("cancel", "connect_attempt"),             # exit
        ("start", "backoff_timer"),                # enter
        ("hook", "report_connect_failure"),        # after
        ("transition", "connecting", "CONNECT_FAILED", "reconnecting", "transition"),
        ("cancel", "backoff_timer"),               # (the timer fired; cancel is a no-op)
        ("start", "connect_attempt"),
        ("transition", "reconnecting", "BACKOFF_ELAPSED", "connecting", "transition"),
        ("cancel", "connect_attempt"),
        ("start", "stream_consumer"),              # after clear_reset (machine hook)
        ("transition", "connecting", "CONNECTED", "streaming", "transition"),
        ("cancel", "stream_consumer"),
        ("start", "backoff_timer"),
        ("hook", "report_stream_end"),
        ("transition", "streaming", "STREAM_END", "reconnecting", "transition"),
        ("cancel", "backoff_timer"),               # leaf first
        ("cancel", "heartbeat"),                   # then its parent
        ("start", "shutdown"),
        ("transition", "reconnecting", "STOP", "stopping", "transition"),
        ("hook", "record_shutdown_error"),         # before: recorded before stopped
        ("cancel", "shutdown"),
        ("hook", "on_stopped"),                    # spec on_enter of stopped
        ("transition", "stopping", "SHUTDOWN_FAILED", "stopped", "transition"),
    ]


def test_streaming_clears_the_reset_before_its_consumer_starts() -> None:
    seen: list[bool] = []

    def when_started(ticket: WorkTicket) -> None:
        if ticket.work == "stream_consumer":
            seen.append(lc.reset_pending)

    lc, _ = make(when_started=when_started)
    drive_to(lc, "streaming")
    lc.fire("STREAM_RESET", error=RuntimeError("x"))
    fire_or_report(lc, "STREAM_END")
    assert lc.reset_pending  # kept while reconnecting (report_reset_error may read it)
    fire_or_report(lc, "BACKOFF_ELAPSED")
    fire_or_report(lc, "CONNECTED", stream=object())
    assert seen == [False, False]


# ---------------------------------------------------------- raising hooks


@pytest.mark.parametrize("hook", ["claim_wake", "on_transition"])
def test_a_raising_hook_is_logged_and_the_machine_stays_consistent(
        hook: str, caplog: pytest.LogCaptureFixture) -> None:
    lc, _ = make(raising={hook})
    drive_to(lc, "connecting")
    caplog.set_level(logging.ERROR, logger="pullwake.machine")
    fire_or_report(lc, "CONNECTED", stream=object())
    lc.fire("WAKE", wake={"path": "/s"})
    assert lc.state == "streaming"
    assert lc.owned_work == expected_owned(SPEC, "running.streaming")
    assert caplog.records, "nothing logged"
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records)
    assert any(hook.removeprefix("start_") in r.getMessage() for r in caplog.records)
    lc.fire("STOP")  # and it keeps working
    assert lc.state == "stopping" and lc.owned_work == {"stopping": "shutdown"}


@pytest.mark.parametrize(
    ("hook", "state", "event", "reached"),
    [
        ("start_connect_attempt", "stopped", "START", "reconnecting"),
        ("start_stream_consumer", "connecting", "CONNECTED", "reconnecting"),
        ("start_backoff_timer", "streaming", "STREAM_END", "connecting"),
        ("start_shutdown", "streaming", "STOP", "stopped"),
    ],
)
def test_work_whose_start_raises_reports_its_declared_failure_event(
        hook: str, state: str, event: str, reached: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """A state never waits on work that never began: the spec's `fails` event fires."""
    work = next(w for w in SPEC.work.values() if w.start == hook)
    assert work.fails is not None
    lc, _ = make(raising={hook})
    drive_to(lc, state)
    caplog.set_level(logging.ERROR, logger="pullwake.machine")
    fire_or_report(lc, event, **payload_for(SPEC, event))
    assert lc.state == reached
    assert any(f"starting {work.name} raised" in r.getMessage() for r in caplog.records)


def test_a_raising_cancel_is_logged_and_the_state_is_still_left(
        caplog: pytest.LogCaptureFixture) -> None:
    lc, _ = make()
    drive_to(lc, "connecting")

    def boom() -> None:
        raise RuntimeError("cancel failed")

    lc.owned().handle.cancel = boom  # type: ignore[union-attr]
    caplog.set_level(logging.ERROR, logger="pullwake.machine")
    lc.fire("STOP")
    assert lc.state == "stopping" and lc.owned_work == {"stopping": "shutdown"}
    assert any("cancelling connect_attempt raised" in r.getMessage() for r in caplog.records)


def test_an_unknown_event_raises_and_leaves_the_machine_usable() -> None:
    lc, _ = make()
    drive_to(lc, "streaming")
    with pytest.raises(AttributeError, match="NOPE"):
        lc.fire("NOPE")
    lc.fire("WAKE", wake={})
    assert lc.state == "streaming" and lc.last_kind == "internal"


def test_effects_missing_a_hook_are_refused() -> None:
    class Partial:
        def start_connect_attempt(self, ticket: WorkTicket) -> None: ...

    with pytest.raises(SpecError) as info:
        Lifecycle(Partial(), SPEC)  # type: ignore[arg-type]
    assert info.value.kind == "unknown-hook"
    assert "Partial does not provide hook(s) claim_wake," in str(info.value)


# ---------------------------------------------------------------- backoff


def fail_connect(lc: Lifecycle) -> None:
    assert lc.state == "connecting"
    assert lc.owned().report("CONNECT_FAILED", error=RuntimeError("refused"))  # type: ignore[union-attr]


def delays_of(effects: RecordingEffects) -> list[float]:
    return [h.ticket.delay for h in effects.started("backoff_timer")]  # type: ignore[misc]


def test_backoff_sequence_on_the_clock() -> None:
    clock = FakeClock()
    lc, effects = make(clock)
    lc.fire("START")
    for expected in (1, 2, 4, 8, 16, 30, 30):
        fail_connect(lc)
        assert lc.state == "reconnecting"
        clock.advance(expected - 0.001)
        assert lc.state == "reconnecting", f"fired before {expected}s"
        clock.advance(0.001)
        assert lc.state == "connecting", f"did not fire at {expected}s"
    assert delays_of(effects) == [1, 2, 4, 8, 16, 30, 30]
    assert clock.now == pytest.approx(91.0)


def test_backoff_resets_on_connected() -> None:
    clock = FakeClock()
    lc, effects = make(clock)
    lc.fire("START")
    for _ in range(3):
        fail_connect(lc)
        clock.advance(60)
    fire_or_report(lc, "CONNECTED", stream=object())
    fire_or_report(lc, "STREAM_END")
    assert delays_of(effects) == [1, 2, 4, 1]


def test_backoff_resets_on_start_but_not_on_an_ignored_start() -> None:
    clock = FakeClock()
    lc, effects = make(clock)
    lc.fire("START")
    fail_connect(lc)
    clock.advance(60)
    lc.fire("START")  # ignored: already running
    assert lc.last_kind == "ignored"
    fail_connect(lc)
    assert delays_of(effects) == [1, 2]  # not reset
    lc.fire("STOP")
    fire_or_report(lc, "SHUTDOWN_DONE")
    lc.fire("START")  # executed: resets
    assert lc.last_kind == "transition"
    fail_connect(lc)
    assert delays_of(effects) == [1, 2, 1]


def test_leaving_reconnecting_early_cancels_the_timer() -> None:
    clock = FakeClock()
    lc, effects = make(clock)
    lc.fire("START")
    fail_connect(lc)
    timer_handle = effects.started("backoff_timer")[-1]
    lc.fire("STOP")
    assert timer_handle.cancels == 1 and timer_handle.timer.cancelled  # type: ignore[union-attr]
    assert clock.pending == []
    clock.advance(60)
    assert lc.state == "stopping"


def test_a_late_timer_that_fires_anyway_is_dropped() -> None:
    clock = FakeClock()
    lc, effects = make(clock)
    lc.fire("START")
    fail_connect(lc)
    timer = effects.started("backoff_timer")[-1].timer
    assert timer is not None
    timer.cancel = lambda: None  # type: ignore[method-assign]  # a timer that ignores cancel
    lc.fire("STOP")
    decided = len(effects.transitions)
    clock.advance(60)  # the timer fires: its ticket is stale, the report is dropped
    assert lc.state == "stopping" and len(effects.transitions) == decided


@pytest.mark.parametrize(("jitter", "factor"), [("full", 0.25), ("equal", 0.625), ("none", 1.0)])
def test_backoff_jitter_with_an_injected_rng(jitter: str, factor: float) -> None:
    spec = dataclasses.replace(SPEC, backoff=dataclasses.replace(SPEC.backoff, jitter=jitter))
    effects = RecordingEffects(clock=FakeClock())
    lc = Lifecycle(effects, spec, rng=lambda: 0.25)
    lc.fire("START")
    for _ in range(7):
        fail_connect(lc)
        effects.clock.advance(60)  # type: ignore[union-attr]
    assert delays_of(effects) == [b * factor for b in (1, 2, 4, 8, 16, 30, 30)]


def test_an_event_that_raises_does_not_drop_the_events_queued_behind_it() -> None:
    lc, _ = make()
    drive_to(lc, "streaming")

    def fire_two(payload: object) -> None:
        lc.fire("NOT_AN_EVENT")  # raises when processed
        lc.fire("STOP")  # queued behind it: must still run

    # the spec's WAKE branch in streaming runs claim_wake: swap in fire_two
    lc.machine.events["WAKE"].transitions["running.streaming"][0].before[0] = (
        lambda ev: fire_two(ev.kwargs))
    with pytest.raises(AttributeError):
        lc.fire("WAKE", wake={"path": "/s"})
    assert lc.state == "stopping"


@pytest.mark.parametrize("leaf", SPEC.leaf_states)
@pytest.mark.parametrize("event", list(SPEC.events))
def test_internal_shortcut_runs_exactly_what_the_full_trigger_runs(leaf: str,
                                                                   event: str) -> None:
    """The hot-path shortcut for internal/ignored decisions equals transitions' own run."""
    fast, fast_fx = make()
    slow, slow_fx = make()
    slow._shortcut = lambda state_path, ev: None  # type: ignore[method-assign]
    for lc in (fast, slow):
        drive_to(lc, leaf)
    fast_fx.log.clear()
    slow_fx.log.clear()
    payload = payload_for(SPEC, event)
    fire_or_report(fast, event, **payload)
    fire_or_report(slow, event, **payload)
    assert fast.state_path == slow.state_path
    assert fast.last_kind == slow.last_kind
    assert fast_fx.log == slow_fx.log
    assert fast.owned_work == slow.owned_work
