"""Stateful property tests: random interleavings against the machine and the runner.

Two Hypothesis ``RuleBasedStateMachine`` s:

* :class:`LifecycleMachine` drives the pure :class:`~pullwake.lifecycle.machine.Lifecycle`
  with recording fake effects. Rules fire every event of ``machine_spec.yaml``
  (with and without optional payloads) and report results through the current
  ticket or a stale one. Every decision is checked against the spec's own
  table (``LifecycleSpec.decisions``), so the rules need no hand-written copy
  of the lifecycle.
* :class:`RunnerMachine` drives a real :class:`~pullwake.runtime.runner.PullWakeRunner`
  on a :class:`~pullwake.testing.clock.ManualClock` with a scripted transport
  (each connection attempt succeeds, fails or hangs as a rule decides; each
  stream yields wakes, checkpoints, bad messages, an end, an error, or
  nothing), a scripted control plane (claims answer claimed / skip / error or
  hang; heartbeats succeed, fail or hang) and a recording runtime.

Rules for this module: no sockets, no sleeping; every timer and timeout runs
on the manual clock; each runner example owns a fresh event loop, created in
``__init__`` and closed in ``teardown``; Hypothesis is derandomized so CI runs
the same examples every time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pullwake import PullWakeRunner, RunnerConfig
from pullwake.errors import (
    ConnectError,
    ControlPlaneError,
    IdleTimeout,
    InvalidMessage,
    ProtocolError,
    RequestTimeout,
)
from pullwake.io.clock import deadline
from pullwake.io.http import HttpClient
from pullwake.io.transport import BadMessage, Checkpoint, Message, StreamRequest
from pullwake.lifecycle.effects import WorkTicket, effect_hook_names
from pullwake.lifecycle.machine import Lifecycle
from pullwake.lifecycle.model import LifecycleSpec
from pullwake.lifecycle.spec import load_spec
from pullwake.runtime.control import ClaimOutcome, WakeEvent
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(120)

SPEC: LifecycleSpec = load_spec()
EVENTS = tuple(SPEC.events)
RUNNING_LEAVES = frozenset({"connecting", "streaming", "reconnecting"})


# =========================================================== (a) the pure machine


class FakeHandle:
    """What a fake ``start_*`` hook returns: counts ``cancel()`` calls."""

    def __init__(self, hook: str, ticket: WorkTicket) -> None:
        self.hook = hook
        self.ticket = ticket
        self.cancels = 0

    def cancel(self) -> None:
        self.cancels += 1


class RecordingEffects:
    """Every hook of LifecycleEffects (read from the protocol), recording its calls."""

    def __init__(self) -> None:
        self.handles: list[FakeHandle] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.decided: list[tuple[str, str, str, str]] = []

    def on_transition(self, source: str, event: str, dest: str, kind: str) -> None:
        self.decided.append((source, event, dest, kind))

    def __getattr__(self, name: str) -> Any:
        if name not in effect_hook_names():
            raise AttributeError(name)
        if name.startswith("start_"):
            def start(ticket: WorkTicket) -> FakeHandle:
                handle = FakeHandle(name, ticket)
                self.handles.append(handle)
                return handle

            return start

        def hook(payload: Any) -> None:
            self.calls.append((name, dict(payload)))

        return hook


def payload_for(event: str, with_optional: bool) -> dict[str, Any]:
    spec = SPEC.events[event]
    return {name: f"<{event}.{name}>" for name in spec.payload
            if with_optional or name not in spec.optional}


def expected_decision(lc: Lifecycle, event: str) -> tuple[str, str]:
    """(kind, leaf path after the event) according to the spec's table alone."""
    guards = {"reset_pending": lc.reset_pending}
    for branch in SPEC.decisions(lc.state_path, event):
        if all(guards[g] for g in branch.conditions) and not any(
                guards[g] for g in branch.unless):
            if branch.kind == "transition":
                assert branch.dest is not None
                return branch.kind, SPEC.resolve_initial(branch.dest)
            return branch.kind, lc.state_path
    raise AssertionError(f"the spec decides nothing for {lc.state_path} x {event}")


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.effects = RecordingEffects()
        self.lc = Lifecycle(self.effects, SPEC)

    # ------------------------------------------------------------------ helpers

    def _current_tickets(self) -> list[WorkTicket]:
        return [self.lc._owned[p] for p in sorted(self.lc._owned)]

    def _stale_tickets(self) -> list[WorkTicket]:
        return [h.ticket for h in self.effects.handles if not h.ticket.current][-12:]

    def _check_decision(self, event: str, act: Any) -> None:
        kind, dest = expected_decision(self.lc, event)
        before = len(self.effects.decided)
        act()
        assert self.lc.state_path == dest, (event, kind)
        assert len(self.effects.decided) == before + 1
        assert self.effects.decided[-1][1:] == (event, SPEC.leaf_name(dest), kind)

    # -------------------------------------------------------------------- rules

    @rule(event=st.sampled_from(EVENTS), with_optional=st.booleans())
    def fire(self, event: str, with_optional: bool) -> None:
        payload = payload_for(event, with_optional)
        self._check_decision(event, lambda: self.lc.fire(event, **payload))

    @precondition(lambda self: bool(self.lc._owned))
    @rule(data=st.data(), with_optional=st.booleans())
    def report_current(self, data: st.DataObject, with_optional: bool) -> None:
        ticket = data.draw(st.sampled_from(self._current_tickets()), label="ticket")
        event = data.draw(st.sampled_from(sorted(ticket.reports)), label="event")
        payload = payload_for(event, with_optional)
        self._check_decision(event, lambda: self._report(ticket, event, payload, True))

    @precondition(lambda self: bool(self._stale_tickets()))
    @rule(data=st.data(), with_optional=st.booleans())
    def report_stale(self, data: st.DataObject, with_optional: bool) -> None:
        ticket = data.draw(st.sampled_from(self._stale_tickets()), label="stale ticket")
        event = data.draw(st.sampled_from(sorted(ticket.reports)), label="event")
        state, owned = self.lc.state_path, dict(self.lc.owned_work)
        calls, decided = len(self.effects.calls), len(self.effects.decided)
        handles, reset = len(self.effects.handles), self.lc.reset_pending
        self._report(ticket, event, payload_for(event, with_optional), False)
        assert (self.lc.state_path, self.lc.owned_work) == (state, owned)
        assert (len(self.effects.calls), len(self.effects.decided)) == (calls, decided)
        assert (len(self.effects.handles), self.lc.reset_pending) == (handles, reset)

    @precondition(lambda self: bool(self.effects.handles))
    @rule(data=st.data(), event=st.sampled_from(EVENTS))
    def report_undeclared(self, data: st.DataObject, event: str) -> None:
        ticket = data.draw(st.sampled_from([h.ticket for h in self.effects.handles[-12:]]))
        if event in ticket.reports:
            return
        state = self.lc.state_path
        with pytest.raises(ValueError, match="does not report"):
            ticket.report(event)
        assert self.lc.state_path == state

    @staticmethod
    def _report(ticket: WorkTicket, event: str, payload: dict[str, Any], fresh: bool) -> None:
        assert ticket.report(event, **payload) is fresh

    # --------------------------------------------------------------- invariants

    @invariant()
    def state_is_a_leaf(self) -> None:
        assert self.lc.state_path in SPEC.leaf_states
        assert self.lc.state == SPEC.leaf_name(self.lc.state_path)

    @invariant()
    def owned_work_is_exactly_the_active_owning_states(self) -> None:
        expected = {p: SPEC.states[p].owns for p in SPEC.ancestry(self.lc.state_path)
                    if SPEC.states[p].owns}
        assert self.lc.owned_work == expected

    @invariant()
    def cancelled_exactly_when_not_current(self) -> None:
        owned = {id(t) for t in self.lc._owned.values()}
        current = {id(h.ticket) for h in self.effects.handles if h.ticket.current}
        assert owned == current
        for h in self.effects.handles:
            assert h.cancels == (0 if h.ticket.current else 1), (h.hook, h.ticket)
            assert h.ticket.handle is h


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow])


# ======================================================= (b) the runner, scripted

GRACE = 1.0
REQUEST_TIMEOUT = 2.0
CONNECT_TIMEOUT = 3.0
READ_IDLE_TIMEOUT = 10.0
HEARTBEAT_INTERVAL = 5.0
BUSY_RETRY = 0.5
#: stop() must finish within the claim grace plus one request timeout (the
#: runtime's drain finishes at once). Measured from the STOP (or STREAM_CLOSED)
#: that entered ``stopping``, on the manual clock.
STOP_BOUND = GRACE + REQUEST_TIMEOUT
KEYS = ("s1", "s2")
STREAM_ITEMS = ("wake", "wake", "wake", "wake", "checkpoint", "checkpoint", "checkpoint",
                "not_a_wake", "invalid_wake", "bad_message", "end", "error", "closed")
#: Everything the world around the runner can do, as (action, argument).
SERVER_ACTIONS: tuple[tuple[str, Any], ...] = (
    *(("connect_mode", m) for m in ("manual", "connect", "connect", "refused", "factory_bug")),
    *(("resolve_connect", o) for o in ("connect", "connect", "refused", "factory_bug")),
    *(("claim_mode", m) for m in ("manual", "black_hole", "claimed", "skip", "error", "bug")),
    *(("answer_claim", o) for o in ("claimed", "claimed", "skip", "error", "bug")),
    *(("heartbeat_mode", m) for m in ("ok", "ok", "fail", "hang")),
    *(("runtime_busy", k) for k in KEYS),
    ("drain_fails", True), ("drain_fails", False),
    ("liveness", True), ("liveness", False),
)
SETTLE_ROUNDS = 25

_END = object()


async def settle(rounds: int = SETTLE_ROUNDS) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def hang(clock: ManualClock, operation: str) -> Any:
    """Never answer; like an HttpClient request, give up after ``request_timeout``."""
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    try:
        async with deadline(clock, REQUEST_TIMEOUT):
            return await never
    except TimeoutError as exc:
        raise RequestTimeout("no answer", operation=operation) from exc


class FakeStream:
    """A WakeStream fed through a queue; reads are bounded by the idle timeout."""

    def __init__(self, request: StreamRequest) -> None:
        self.request = request
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.close_calls = 0

    @property
    def closed(self) -> bool:
        return self.close_calls > 0

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> Any:
        req = self.request
        assert req.clock is not None
        try:
            async with deadline(req.clock, req.read_idle_timeout):
                item = await self.queue.get()
        except TimeoutError as exc:
            raise IdleTimeout("stream silent", url=req.url) from exc
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.close_calls += 1


class ScriptedTransport:
    """A stream factory. In ``manual`` mode an attempt waits until a rule resolves it
    (or forever); otherwise every attempt is answered at once as the mode says."""

    def __init__(self) -> None:
        self.runner: PullWakeRunner | None = None
        self.mode = "connect"
        self.active = 0
        self.max_active = 0
        self.pending: list[tuple[StreamRequest, asyncio.Future[FakeStream]]] = []
        self.streams: list[FakeStream] = []
        self.requests: list[StreamRequest] = []
        self.problems: list[str] = []

    async def __call__(self, request: StreamRequest) -> FakeStream:
        assert self.runner is not None
        if request.offset != (self.runner.offset or "-1"):
            self.problems.append(f"connected at {request.offset}, not {self.runner.offset}")
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.requests.append(request)
        fut: asyncio.Future[FakeStream] = asyncio.get_running_loop().create_future()
        entry = (request, fut)
        self.pending.append(entry)
        if self.mode != "manual":
            self.resolve(self.mode)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result().close()  # answered, then cancelled before we returned it
            raise
        finally:
            self.active -= 1
            self.pending.remove(entry)

    def resolve(self, outcome: str) -> None:
        open_ = [(r, f) for r, f in self.pending if not f.done()]
        if not open_:
            return
        request, fut = open_[0]
        if outcome == "connect":
            stream = FakeStream(request)
            self.streams.append(stream)
            fut.set_result(stream)
        elif outcome == "refused":
            fut.set_exception(ConnectError("connection refused", url=request.url))
        elif outcome == "factory_bug":
            fut.set_exception(RuntimeError("the factory broke"))
        # "hang": leave it; connect_timeout (or a reset, or stop) ends it


class ScriptedControlPlane:
    """Claims and heartbeats answer as their current mode says.

    Claim modes: ``manual`` (wait for a rule's answer, up to request_timeout),
    ``black_hole`` (never answer, unbounded: only the claim grace ends it), or
    an outcome given at once. Heartbeat modes: ok, fail, hang.
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.runner: PullWakeRunner | None = None
        self.pending: list[tuple[WakeEvent, asyncio.Future[ClaimOutcome]]] = []
        self.claims_active: collections.Counter[str] = collections.Counter()
        self.claims_max_per_key = 0
        self.claim_mode = "claimed"
        self.claims_answered = 0
        self.heartbeat_mode = "ok"
        self.heartbeats_active = 0
        self.heartbeats_max = 0
        self.heartbeats = 0
        self.problems: list[str] = []

    def claim_key(self, wake: WakeEvent) -> str:
        return wake.stream

    async def claim(self, http: HttpClient, wake: WakeEvent) -> ClaimOutcome:
        key = wake.stream
        self.claims_active[key] += 1
        self.claims_max_per_key = max(self.claims_max_per_key, self.claims_active[key])
        fut: asyncio.Future[ClaimOutcome] = asyncio.get_running_loop().create_future()
        entry = (wake, fut)
        self.pending.append(entry)
        mode = self.claim_mode
        if mode not in ("manual", "black_hole"):
            self.answer(mode)
        try:
            if mode == "black_hole":
                return await fut  # answers nothing, ever: only the grace ends it
            try:
                async with deadline(self.clock, REQUEST_TIMEOUT):
                    return await fut
            except TimeoutError as exc:
                raise RequestTimeout("no answer", operation="claim") from exc
        finally:
            self.claims_active[key] -= 1
            self.pending.remove(entry)

    def answer(self, outcome: str) -> None:
        open_ = [f for _, f in self.pending if not f.done()]
        if not open_:
            return
        fut = open_[0]
        self.claims_answered += 1
        if outcome == "claimed":
            fut.set_result(ClaimOutcome(True, {"n": self.claims_answered}))
        elif outcome == "skip":
            fut.set_result(ClaimOutcome.skip("NO_PENDING_WORK"))
        elif outcome == "error":
            fut.set_exception(ControlPlaneError("refused", operation="claim", status=500))
        elif outcome == "bug":
            fut.set_exception(RuntimeError("control plane bug"))

    async def heartbeat(self, http: HttpClient, *, lease_ms: int, offset: str | None,
                        diagnostics: Any) -> None:
        runner = self.runner
        assert runner is not None
        if diagnostics["status"] != runner.lifecycle.state:
            self.problems.append(f"heartbeat says {diagnostics['status']}, "
                                 f"machine is {runner.lifecycle.state}")
        if offset != runner.offset:
            self.problems.append(f"heartbeat offset {offset} != {runner.offset}")
        self.heartbeats += 1
        self.heartbeats_active += 1
        self.heartbeats_max = max(self.heartbeats_max, self.heartbeats_active)
        try:
            if self.heartbeat_mode == "fail":
                raise ControlPlaneError("heartbeat refused", operation="heartbeat", status=503)
            if self.heartbeat_mode == "hang":
                await hang(self.clock, "heartbeat")
        finally:
            self.heartbeats_active -= 1


class ScriptedRuntime:
    """Records dispatches with what the runner looked like at that moment."""

    def __init__(self) -> None:
        self.machine: RunnerMachine | None = None
        self.dispatched: list[Any] = []
        self.calls: list[str] = []
        self.active: set[str] = set()
        self.drain_error: BaseException | None = None
        self.drain_raised: list[BaseException] = []
        self.problems: list[str] = []

    def dispatch_wake(self, notification: Any, *, claim_headers: Any,
                      claim_token_header: str | None) -> None:
        m = self.machine
        assert m is not None
        state = m.runner.lifecycle.state
        if m.stop_began or state not in RUNNING_LEAVES:
            self.problems.append(f"dispatch of {notification} in {state} "
                                 f"(stop began: {m.stop_began})")
        self.calls.append("dispatch")
        self.dispatched.append(notification)

    def abort_wakes(self) -> None:
        self.calls.append("abort")

    async def drain_wakes(self) -> None:
        self.calls.append("drain")
        if self.drain_error is not None:
            self.drain_raised.append(self.drain_error)
            raise self.drain_error

    def is_wake_active(self, key: str) -> bool:
        return key in self.active


def _task_kind(task: asyncio.Task[Any]) -> str:
    return task.get_name().split("[", 1)[0]


class RunnerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.transport = ScriptedTransport()
        self.control = ScriptedControlPlane(self.clock)
        self.runtime = ScriptedRuntime()
        self.runtime.machine = self
        self.errors: list[BaseException] = []
        self.stop_began = False
        self.stop_task: asyncio.Task[Any] | None = None
        self.stop_errors: list[BaseException] = []
        self.stopping_since: float | None = None
        self.max_offset: str | None = None
        self.next_offset = 0
        self.decided: list[tuple[str, str, str, str]] = []
        self.runner = self.run(self._build())

    async def _build(self) -> PullWakeRunner:
        config = RunnerConfig(
            base_url="http://127.0.0.1:9", runner_id="r1", clock=self.clock,
            stream_factory=self.transport, on_error=self.errors.append,
            claim_grace=GRACE, request_timeout=REQUEST_TIMEOUT,
            connect_timeout=CONNECT_TIMEOUT, read_idle_timeout=READ_IDLE_TIMEOUT,
            heartbeat_interval=HEARTBEAT_INTERVAL, event_heartbeat_throttle=1.0,
            runtime_busy_retry=BUSY_RETRY)
        runner = PullWakeRunner(config, self.runtime, control_plane=self.control)
        runner.observe(self._observe)
        self.transport.runner = runner
        self.control.runner = runner
        return runner

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def _observe(self, source: str, event: str, dest: str, kind: str) -> None:
        self.decided.append((source, event, dest, kind))
        if kind == "transition" and dest == "stopping":
            self.stopping_since = self.clock.monotonic()

    @property
    def state(self) -> str:
        return self.runner.lifecycle.state

    def _current_stream(self) -> FakeStream | None:
        ticket = self.runner.lifecycle.owned("running.streaming")
        return None if ticket is None else ticket.payload["stream"]

    async def _advance(self, seconds: float) -> None:
        await self.clock.advance(seconds)
        await settle()

    async def _stop(self) -> None:
        self.stop_began = True
        try:
            await self.runner.stop()
        except Exception as exc:  # noqa: BLE001 - checked by the rules
            self.stop_errors.append(exc)

    async def _finish_stop(self) -> None:
        """Advance time until stop() returns; it must within STOP_BOUND of stopping."""
        assert self.stop_task is not None
        await settle()
        while not self.stop_task.done():
            assert self.stopping_since is not None
            elapsed = self.clock.monotonic() - self.stopping_since
            assert elapsed < STOP_BOUND, f"stop() still running {elapsed:g}s after STOP"
            await self._advance(min(0.25, STOP_BOUND - elapsed))
        for error in self.stop_errors:  # only the drain's own error is re-raised
            assert any(error is e for e in self.runtime.drain_raised), error
        self.stop_errors.clear()
        assert self.state == "stopped"

    # -------------------------------------------------------------------- rules

    @rule()
    def start(self) -> None:
        async def go() -> None:
            if self.state == "stopped":
                self.stop_began = False
            self.runner.start()
            await settle()

        self.run(go())

    @rule(wait=st.booleans())
    def stop(self, wait: bool) -> None:
        """Call stop() as a task; with ``wait``, advance time until it returns."""
        async def go() -> None:
            if self.stop_task is None or self.stop_task.done():
                self.stop_task = asyncio.ensure_future(self._stop())
            await settle()
            if wait:
                await self._finish_stop()

        self.run(go())

    @rule(seconds=st.sampled_from([0.05, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.run(self._advance(seconds))

    @rule(items=st.lists(st.sampled_from(STREAM_ITEMS), min_size=1, max_size=4),
          key=st.sampled_from(KEYS))
    def push(self, items: list[str], key: str) -> None:
        """The server sends ``items`` on the open stream (if there is one)."""
        stream = self._current_stream()
        if stream is None:
            return
        for item in items:
            if item == "wake":
                stream.queue.put_nowait(Message({"type": "wake", "stream": key}))
            elif item == "not_a_wake":
                stream.queue.put_nowait(Message({"type": "something-else"}))
            elif item == "invalid_wake":
                stream.queue.put_nowait(Message({"type": "wake", "stream": 7}))
            elif item == "bad_message":
                stream.queue.put_nowait(BadMessage(InvalidMessage("not a message")))
            elif item in ("checkpoint", "closed"):
                self.next_offset += 1
                stream.queue.put_nowait(Checkpoint(f"{self.next_offset:010d}_0",
                                                   cursor=f"c{self.next_offset}",
                                                   closed=item == "closed"))
            elif item == "end":
                stream.queue.put_nowait(_END)
            elif item == "error":
                stream.queue.put_nowait(ProtocolError("cut mid-event"))
        self.run(settle())

    @rule(action=st.sampled_from(SERVER_ACTIONS))
    def server(self, action: tuple[str, Any]) -> None:
        """The world changes: connects and claims answered, modes, faults, liveness."""
        what, arg = action
        if what == "connect_mode":
            self.transport.mode = arg
        elif what == "resolve_connect":
            self.transport.resolve(arg)
        elif what == "claim_mode":
            self.control.claim_mode = arg
        elif what == "answer_claim":
            self.control.answer(arg)
        elif what == "heartbeat_mode":
            self.control.heartbeat_mode = arg
        elif what == "runtime_busy":
            self.runtime.active ^= {arg}
        elif what == "drain_fails":
            self.runtime.drain_error = ValueError("drain") if arg else None
        elif what == "liveness":  # (the runner ignores it unless running)
            self.runner.record_liveness(arg, None if arg else ControlPlaneError(
                "lease extension failed", operation="extend lease"))
        self.run(settle())

    # --------------------------------------------------------------- invariants

    @invariant()
    def at_most_one_connection_attempt(self) -> None:
        assert self.transport.max_active <= 1
        assert self.transport.active == (1 if self.state == "connecting" else 0)

    @invariant()
    def owned_work_matches_state(self) -> None:
        lc = self.runner.lifecycle
        expected = {p: SPEC.states[p].owns for p in SPEC.ancestry(lc.state_path)
                    if SPEC.states[p].owns}
        assert lc.owned_work == expected
        alive = collections.Counter(_task_kind(t) for t in self.runner.jobs if not t.done())
        state = self.state
        assert alive["pullwake-connect"] == (state == "connecting")
        assert alive["pullwake-consume"] == (state == "streaming")
        assert alive["pullwake-shutdown"] == (state == "stopping")
        pending = self.clock.pending_callbacks()
        backoff = [cb for _, cb in pending
                   if getattr(getattr(cb, "__self__", None), "work", None) == "backoff_timer"]
        assert len(backoff) == (state == "reconnecting")
        if state not in RUNNING_LEAVES:
            assert alive["pullwake-heartbeat"] == 0
            assert not [cb for _, cb in pending
                        if getattr(cb, "__self__", None) is self.runner._heartbeat]
        if state == "stopped":
            assert self.clock.pending == []
            assert not self.runner.jobs

    @invariant()
    def streams_closed_unless_current(self) -> None:
        current = self._current_stream()
        for stream in self.transport.streams:
            if stream is current:
                assert not stream.closed
            else:
                assert stream.closed

    @invariant()
    def health_reports_the_machine(self) -> None:
        h = self.runner.health()
        assert h.status == self.state == self.runner.status
        assert h.running == (self.state != "stopped") == self.runner.running
        assert h.stream_connected == (self.state == "streaming")

    @invariant()
    def offset_never_moves_backwards(self) -> None:
        offset = self.runner.offset
        if self.max_offset is not None:
            assert offset is not None and offset >= self.max_offset
        self.max_offset = offset

    @invariant()
    def one_claim_per_key_and_one_heartbeat_in_flight(self) -> None:
        assert self.control.claims_max_per_key <= 1
        assert self.control.heartbeats_max <= 1

    @invariant()
    def no_dispatch_after_stopping_began(self) -> None:
        assert self.runtime.problems == []
        assert self.transport.problems == []
        assert self.control.problems == []

    @invariant()
    def stop_completes_within_its_bound(self) -> None:
        if self.state == "stopping":
            assert self.stopping_since is not None
            assert self.clock.monotonic() - self.stopping_since < STOP_BOUND
        if self.state == "stopped" and self.stop_task is not None:
            assert self.stop_task.done()

    # ----------------------------------------------------------------- teardown

    def teardown(self) -> None:
        try:
            self.run(self._teardown())
        finally:
            leftover = asyncio.all_tasks(self.loop)
            for task in leftover:
                task.cancel()
            if leftover:
                self.loop.run_until_complete(
                    asyncio.gather(*leftover, return_exceptions=True))
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _teardown(self) -> None:
        if self.state != "stopped" or (self.stop_task and not self.stop_task.done()):
            self.stop_task = asyncio.ensure_future(self._stop())
            await self._finish_stop()
        await settle()
        me = asyncio.current_task()
        left = [t.get_name() for t in asyncio.all_tasks() if t is not me]
        assert left == [], f"tasks left after stop: {left}"
        assert not self.runner.jobs
        assert self.clock.pending == []
        assert self.transport.active == 0
        assert all(s.closed for s in self.transport.streams)
        assert sum(self.control.claims_active.values()) == 0
        assert self.control.heartbeats_active == 0


async def test_claim_grace_runs_on_the_injected_clock() -> None:
    """Found by RunnerMachine: a claim that never answers held stop() for a *real* grace.

    ``ClaimScheduler.settle`` waited with ``asyncio.wait(timeout=grace)`` (the
    loop's clock), so on a ManualClock ``stop()`` ignored the clock entirely.
    """
    clock = ManualClock()
    transport, control, runtime = ScriptedTransport(), ScriptedControlPlane(clock), \
        ScriptedRuntime()
    control.claim_mode = "black_hole"
    runner = PullWakeRunner(RunnerConfig(
        base_url="http://127.0.0.1:9", runner_id="r1", clock=clock, stream_factory=transport,
        claim_grace=GRACE, heartbeat_interval=None), runtime, control_plane=control)
    transport.runner = control.runner = runner
    runner.start()
    await settle()
    transport.resolve("connect")
    await settle()
    assert runner.status == "streaming"
    transport.streams[0].queue.put_nowait(Message({"type": "wake", "stream": "s1"}))
    await settle()
    assert len(control.pending) == 1
    stop = asyncio.ensure_future(runner.stop())
    await clock.advance(GRACE)
    await settle()
    try:
        assert stop.done(), "stop() did not finish after the claim grace on the runner's clock"
    finally:
        await asyncio.wait_for(stop, 5)  # (the real-time grace ends it anyway)
    assert runner.status == "stopped" and runtime.dispatched == []
    assert control.pending == [] and clock.pending == []


TestRunnerMachine = RunnerMachine.TestCase
TestRunnerMachine.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow])
