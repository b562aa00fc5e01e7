"""The per-wake fast paths give exactly what the general paths give.

Each fast path here is compared with the general path it short-cuts, on the
same inputs, observing everything the general path makes observable:

- the lifecycle's compiled decisions (``Lifecycle._plan``: ``WAKE`` and
  ``OFFSET`` while streaming, every ignore) against ``transitions``' own
  trigger, for every (leaf state, event), with hooks that raise, with an
  observer that raises, and with events fired from inside a hook (queued);
- the runner's observer (``on_transition``) with debug logging off and on;
- the subscription claim's first attempt (made inline) against the retrying
  claim, for scripts of answers from a real aiohttp route on 127.0.0.1;
- an SSE event's JSON decoded by the C scanner alone (``whole_json``)
  against ``json.loads``/``frame_sse_data`` (Hypothesis, exact types).

The machine runs on recording effects (no asyncio); the claim route is a real
socket; every retry waits 0 s (rng pinned), nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from machine_helpers import RecordingEffects, drive_to, fire_or_report, payload_for
from runner_helpers import RecordingRuntime, raw_server

import pullwake.protocol.read as read
from pullwake import PullWakeRunner, RunnerConfig
from pullwake.io.clock import LoopClock
from pullwake.io.http import HttpClient
from pullwake.lifecycle.machine import Lifecycle
from pullwake.lifecycle.spec import load_spec
from pullwake.protocol.framing import Rejected, frame_sse_data
from pullwake.protocol.jsontext import NOT_WHOLE, whole_json
from pullwake.protocol.read import ReadCore
from pullwake.protocol.sse import SSEEvent
from pullwake.runtime.control import WakeEvent
from pullwake.runtime.subscriptions import (
    SubscriptionClient,
    SubscriptionConfig,
    SubscriptionControlPlane,
)
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


# ------------------------------------------------- the claim's first attempt

#: How the scripted claim route answers each step.
_ANSWERS: dict[str, tuple[int, Any]] = {
    "grant": (200, {"wake_id": "w-2", "generation": 2, "token": "tok", "lease_ttl_ms": 2000,
                    "streams": [{"path": "e/a", "acked_offset": "0_1", "tail_offset": "0_2"}]}),
    "503": (503, {"error": {"code": "UNAVAILABLE"}}),
    "429": (429, {"error": {"code": "RATE_LIMITED"}}),
    "404": (404, {"error": {"code": "SUBSCRIPTION_NOT_FOUND"}}),
    "400": (400, {"error": {"code": "BAD_REQUEST"}}),
    "no-work": (409, {"error": {"code": "NO_PENDING_WORK"}}),
    "held-by:w1": (409, {"error": {"code": "ALREADY_CLAIMED", "current_holder": "w1"}}),
    "held-by:w2": (409, {"error": {"code": "ALREADY_CLAIMED", "current_holder": "w2"}}),
    "not-an-object": (200, [1, 2]),
    "bad-field": (200, {"wake_id": 7, "generation": 2, "token": "tok"}),
}

SCRIPTS = [["grant"], ["503", "grant"], ["429", "503", "held-by:w2"], ["404", "grant"],
           ["404", "503", "grant"], ["400"], ["no-work"], ["held-by:w1"], ["not-an-object"],
           ["bad-field"], ["503", "400"], ["lost", "held-by:w1", "grant"],
           ["lost", "held-by:w2"]]


@pytest.fixture
async def scripted_claims() -> Any:
    """A claim route answering a script of steps (``lost``: never answered)."""
    script: list[str] = []
    seen: list[str] = []
    release = asyncio.Event()

    async def claim(request: web.Request) -> web.StreamResponse:
        step = script.pop(0) if script else "grant"
        seen.append(step)
        if step == "lost":
            await release.wait()
            step = "grant"
        status, body = _ANSWERS[step]
        return web.json_response(body, status=status)

    routes = {("POST", "/v1/stream/__ds/subscriptions/sub1/claim"): claim}
    async with raw_server(routes, handler_cancellation=True) as url:
        try:
            yield f"{url}/v1/stream", script, seen
        finally:
            release.set()


class _Port:
    """The runner port and keeper of a control plane: records what it is told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str]] = []

    def claim_failed(self, error: BaseException) -> None:
        self.told.append(("claim_failed", f"{type(error).__name__}: {error}"))

    async def recreate(self, http: Any, sub: Any) -> None:
        self.told.append(("recreate", sub.id))


def _claim_result(outcome: Any) -> Any:
    if not outcome.claimed:
        return ("skip", str(outcome.reason))
    return ("claimed", outcome.notification["claim"])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("keeper", [True, False], ids=["keeper", "no-keeper"])
@pytest.mark.parametrize("script", SCRIPTS, ids=["+".join(s) for s in SCRIPTS])
async def test_claim_first_attempt_is_the_retrying_claim(
        scripted_claims: Any, script: list[str], keeper: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    """claim() (its first attempt inline) answers, raises, retries, reports, re-creates
    and logs exactly what the retrying claim does from its first attempt on."""
    root, steps, seen = scripted_claims
    sub = SubscriptionConfig(id="sub1", wake_stream="wake/pool", pattern="e/*",
                             claim_lease=1.0)
    results = []
    for side in ("fast", "general"):
        steps[:] = script
        seen.clear()
        port = _Port()
        plane = SubscriptionControlPlane(
            SubscriptionClient(root), worker="w1", subscriptions={"sub1": sub},
            wake_stream_url=f"{root}/wake/pool", keeper=port if keeper else None,  # type: ignore[arg-type]
            clock=LoopClock(), rng=lambda: 0.0)  # every retry at once
        plane.attach(port)  # type: ignore[arg-type]
        http = HttpClient(headers=None, clock=LoopClock(), request_timeout=0.3)
        caplog.clear()
        try:
            with caplog.at_level(logging.DEBUG, logger="pullwake.subscriptions"):
                if side == "fast":
                    got: Any = _claim_result(await plane.claim(
                        http, WakeEvent(stream="e/a", subscription_id="sub1")))
                else:
                    raw = await plane._claim_retrying(http, sub)
                    got = ("skip", str(raw)) if isinstance(raw, str) else ("claimed", raw)
        except Exception as exc:  # noqa: BLE001 - compared below
            got = ("raised", type(exc).__name__, str(exc), getattr(exc, "status", None),
                   getattr(exc, "code", None))
        finally:
            await http.close()
        results.append({"result": got, "seen": list(seen), "told": port.told,
                        "log": [(r.levelname, r.getMessage()) for r in caplog.records]})
    assert results[0] == results[1]


# ------------------------------------------------- an SSE event's JSON

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12)
_JUNK = st.sampled_from(["", " ", "\n", "\ufeff", "x", "]", ",", "\u00e9", "\x00", "\t",
                         "NaN", "1", "{", "\ud800", "\\"])


@st.composite
def _json_texts(draw: st.DrawFn) -> str:
    """JSON texts as a server might send them, and ways they can be wrong."""
    value = draw(_JSON_VALUES)
    sep = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    text = json.dumps(value, separators=sep, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        cut = draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:cut] + draw(_JUNK) + text[cut:]
    return draw(_JUNK) + text + draw(_JUNK) if draw(st.booleans()) else text


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (1 == 1.0 == True is not enough;
    NaN is itself)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b)


@settings(max_examples=400, deadline=None, database=None)
@given(text=_json_texts())
def test_whole_json_is_json_loads(text: str) -> None:
    """whole_json answers json.loads's value, or leaves the text to json.loads."""
    got = whole_json(text)
    if got is NOT_WHOLE:
        return
    assert _same(got, json.loads(text))


@settings(max_examples=200, deadline=None, database=None)
@given(value=_JSON_VALUES)
def test_whole_json_takes_a_compact_value(value: Any) -> None:
    text = json.dumps(value, separators=(",", ":"))
    got = whole_json(text)
    assert got is not NOT_WHOLE and _same(got, json.loads(text))


def _rejected_or_value(item: Any) -> Any:
    if isinstance(item, Rejected):
        return ("rejected", type(item.error).__name__, str(item.error),
                getattr(item.error, "size", None), item.damaged)
    return ("value", item)


def _sse_core(limit: int, kind: Any = "json") -> Any:
    core = ReadCore(offset="-1", live="sse", kind="json", max_message_bytes=limit)
    core.request()
    core.head(200, {"Content-Type": "text/event-stream"})
    core.kind = kind  # None: not known (read as JSON)
    return core


def _decoded(text: str) -> bool:
    """A text the SSE parser can hand over (it decodes with errors="replace")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=400, deadline=None, database=None)
@given(text=(_json_texts() | st.text(max_size=40)).filter(_decoded),
       limit=st.sampled_from([4, 16, 40, 1 << 20]), kind=st.sampled_from([None, "json"]))
def test_sse_data_event_values_are_frame_sse_datas(text: str, limit: int, kind: Any) -> None:
    """A data event's values (or rejections) are frame_sse_data's, at any size limit."""
    core = _sse_core(limit, kind)
    assert list(core._sse_event(SSEEvent("data", text))) == []
    want = frame_sse_data(text, "json", base64=False, limit=limit)
    got = core._pending
    assert [_rejected_or_value(v) for v in got] == [_rejected_or_value(v) for v in want]
    assert all(_same(a, b) for a, b in zip(got, want, strict=True)
               if _rejected_or_value(a)[0] != "rejected")


def test_sse_data_event_at_the_limit_in_multibyte_text() -> None:
    """Near the limit, the size that counts is the encoded one (é is two bytes)."""
    for n in range(1, 12):
        text = '["' + "\u00e9" * n + '"]'
        for limit in range(len(text), 2 * len(text) + 2):
            core = _sse_core(limit)
            core._sse_event(SSEEvent("data", text))
            want = frame_sse_data(text, "json", base64=False, limit=limit)
            assert [_rejected_or_value(v) for v in core._pending] == \
                [_rejected_or_value(v) for v in want], (n, limit)


@settings(max_examples=300, deadline=None, database=None)
@given(text=(_json_texts() | st.sampled_from(['{"streamNextOffset":"0_5"}',
                                             ' {"streamNextOffset":"0_5"} ',
                                             '{"streamNextOffset":"0_5","upToDate":true}',
                                             '\ufeff{"streamNextOffset":"0_5"}'])).filter(_decoded))
def test_sse_control_event_reads_like_json_loads(text: str) -> None:
    """A control event decoded by whole_json is decided as json.loads's value is."""
    def decide(core: Any) -> Any:
        try:
            return [_rejected_or_value(e) if not hasattr(e, "next_offset") else
                    ("checkpoint", e.next_offset, e.cursor, e.up_to_date, e.closed)
                    for e in core._sse_event(SSEEvent("control", text))]
        except Exception as exc:  # noqa: BLE001 - compared
            return ("raised", type(exc).__name__, str(exc))

    fast = decide(_sse_core(1 << 20))
    general = _sse_core(1 << 20)
    def general_loads(text: str) -> Any:  # what the control event decoded before
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            return None

    original = read.loads_or_none
    read.loads_or_none = general_loads  # type: ignore[assignment]
    try:
        slow = decide(general)
    finally:
        read.loads_or_none = original
    assert fast == slow
    try:
        json.loads(text)
    except ValueError:
        assert fast[0] == ("rejected", "MalformedMessage",
                           "SSE control event is not a JSON object", None, False) \
            or fast[0] == "raised"


# ------------------------------------------------- a small claim answer


def _claim_bodies() -> list[bytes]:
    """Claim answers: well-formed ones and every way a field can be wrong (seeded)."""
    import random

    rng = random.Random(15)
    entry = {"path": "e/a", "acked_offset": "0_1", "tail_offset": "0_2", "has_pending": True}
    base: dict[str, Any] = {"wake_id": "w-2", "generation": 2, "token": "tok",
                            "lease_ttl_ms": 2000, "streams": [entry]}
    odd: list[Any] = ["x", 7, 7.5, True, False, None, {"a": 1}, [1], "", -1, 2**70, "\u00e9"]
    bodies = [json.dumps(base).encode(), json.dumps(base, indent=1).encode(),
              b" " + json.dumps(base).encode() + b"\n", b"[]", b"{}", b"not json",
              b'{"wake_id":"w","generation":1,"token":"t","streams":[],"streams":[]}',
              b'{"wake_id":"w\\u00e9","generation":1,"token":"t"}',
              b'{"wake_id":"w","generation":NaN,"token":"t"}',
              b'{"wake_id":"w","generation":1,"token":"t","lease_ttl_ms":1e400}',
              json.dumps({**base, "streams": {"item": 1}}).encode()]
    for _ in range(300):
        body: dict[str, Any] = json.loads(json.dumps(base))
        body["streams"] = [dict(entry, path=f"e/{i}", has_pending=rng.random() < 0.7)
                           for i in range(rng.choice([0, 1, 2, 3, 4, 6]))]
        for _ in range(rng.choice([0, 1, 1, 2])):
            what = rng.random()
            if what < 0.3:
                body[rng.choice(["wake_id", "generation", "token", "lease_ttl_ms",
                                 "streams"])] = rng.choice(odd)
            elif what < 0.5 and isinstance(body.get("streams"), list) and body["streams"]:
                s = rng.choice(body["streams"])
                if rng.random() < 0.2:
                    body["streams"][body["streams"].index(s)] = rng.choice(odd)
                else:
                    s[rng.choice(["path", "acked_offset", "tail_offset", "has_pending",
                                  "extra", "a.b"])] = rng.choice(odd)
            elif what < 0.7:
                body.pop(rng.choice(["wake_id", "generation", "token", "lease_ttl_ms",
                                     "streams"]), None)
            else:
                body[rng.choice(["extra", "a.b", "", "item"])] = rng.choice(odd)
        bodies.append(json.dumps(body).encode())
    return bodies


@pytest.mark.timeout(120)
async def test_small_claim_answer_read_at_once_is_the_item_by_item_claim(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer gives the same Claim (or the same error) read at once as item by
    item (claim_fields off): real HTTP on 127.0.0.1, the client's own reader."""
    import pullwake.runtime.subscriptions as subscriptions

    current: list[bytes] = [b""]

    async def claim(request: web.Request) -> web.StreamResponse:
        return web.Response(body=current[0], content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/stream/__ds/subscriptions/sub1/claim", claim)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = SubscriptionClient(f"http://127.0.0.1:{port}/v1/stream", max_claim_streams=3)
    http = HttpClient(headers=None, clock=LoopClock(), request_timeout=10.0)

    async def outcome() -> Any:
        try:
            got = await client.claim(http, "sub1", "w1")
        except Exception as exc:  # noqa: BLE001 - compared
            return ("raised", type(exc).__name__, str(exc), getattr(exc, "status", None),
                    getattr(exc, "code", None))
        return ("claim", got, type(got).__name__)

    read_at_once = 0
    try:
        original = subscriptions.claim_fields
        for body in _claim_bodies():
            current[0] = body
            fields = subscriptions.claim_fields
            fast = await outcome()
            monkeypatch.setattr(subscriptions, "claim_fields", lambda value, n: None)
            general = await outcome()
            monkeypatch.setattr(subscriptions, "claim_fields", fields)
            assert fast == general, body
            read_at_once += original(subscriptions.decode_small(body), 3) is not None
    finally:
        await http.close()
        await runner.cleanup()
    assert read_at_once > 50  # the fast path was taken, not only the general one


# ------------------------------------------------- what a dispatch returns


class _Awaitable:
    def __await__(self) -> Any:
        return iter(())


async def _nothing() -> None:
    return None


@pytest.mark.parametrize("returns", ["none", "coroutine", "future", "awaitable", "value"])
async def test_dispatch_runs_on_what_inspect_calls_awaitable(returns: str) -> None:
    """The claim runs on exactly what inspect.isawaitable accepts (a coroutine is
    recognised by its type first)."""
    import inspect

    from runner_helpers import ClaimsOwner

    from pullwake.runtime.claims import ClaimScheduler
    from pullwake.runtime.health import Stats
    from pullwake.runtime.ports import RuntimeHooks

    made: list[Any] = []

    class Runtime:
        def dispatch_wake(self, notification: Any, **kw: Any) -> Any:
            value: Any = {"none": lambda: None, "coroutine": _nothing,
                          "future": asyncio.get_running_loop().create_future,
                          "awaitable": _Awaitable, "value": lambda: 42}[returns]()
            if returns == "future":
                value.set_result(None)
            made.append(value)
            return value

    claims = ClaimScheduler(ClaimsOwner(ManualClock()), control=None,  # type: ignore[arg-type]
                            runtime=RuntimeHooks.of(Runtime()),  # type: ignore[arg-type]
                            clock=ManualClock(), stats=Stats(), busy_retry=1.0)
    work = claims._dispatch({})
    assert work is (made[0] if inspect.isawaitable(made[0]) else None)
    if work is not None:
        await work
