"""The wake-stream transport, SSE and long-poll, through a real runner.

Every test runs a PullWakeRunner against an EmbeddedServer on 127.0.0.1 (port
0) over real sockets, parametrized over ``live`` where both modes apply.
Checked here: offsets (``-1`` at start, ``Stream-Next-Offset`` followed), cursor
echo, non-wake messages skipped, bad messages (malformed, wrong shape,
oversized) reported as typed errors and skipped with the offset moving past
them and no reconnect, responses that cannot be framed ending the session and
reconnecting from the last good offset, a closed stream stopping the runner,
and unexpected statuses / content types as typed errors with backoff.

Timers (backoff, deadlines) run on a ManualClock where the test depends on
them, so nothing sleeps to make time pass.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import pytest
from runner_helpers import RecordingRuntime, eventually, make_runner, started, wake, wake_requests

from pullwake import (
    InvalidMessage,
    MalformedMessage,
    MessageError,
    OversizedMessage,
    ProtocolError,
    PullWakeRunner,
    StreamStatusError,
    TransportError,
)
from pullwake.testing import EmbeddedServer
from pullwake.testing import _stream_routes as stream_routes
from pullwake.testing._streams import js_stringify
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(20)

WAKE_PATH = "/runners/r1/wake"
LIVE = pytest.mark.parametrize("live", ["sse", "long-poll"])


@pytest.fixture
async def server():
    async with EmbeddedServer() as srv:
        yield srv


@pytest.fixture
def cursors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the server's cursors predictable: c1, c2, … (every one it hands out)."""
    issued: list[str] = []
    counter = itertools.count(1)

    def fake(client_cursor: str | None, interval: int = 20) -> str:
        issued.append(f"c{next(counter)}")
        return issued[-1]

    monkeypatch.setattr(stream_routes, "response_cursor", fake)
    return issued


def runner_for(server: EmbeddedServer, live: str, *, errors: list[BaseException] | None = None,
               runtime: RecordingRuntime | None = None, **overrides: Any) -> PullWakeRunner:
    overrides.setdefault("heartbeat_interval", None)
    if errors is not None:
        overrides["on_error"] = errors.append
    return make_runner(server, runtime or RecordingRuntime(), live=live, **overrides)


def live_reads(server: EmbeddedServer) -> list[Any]:
    return [r for r in wake_requests(server) if r.query.get("live")]


async def close_stream(server: EmbeddedServer, path: str = WAKE_PATH) -> None:
    """Close a stream the way a producer does: POST with ``Stream-Closed: true``."""
    async with aiohttp.ClientSession() as session, session.post(
            server.url + path, headers={"Stream-Closed": "true"}) as resp:
        assert resp.status == 204
        assert resp.headers["Stream-Closed"] == "true"


def sse_data_event_len(value: Any) -> int:
    """Bytes of the SSE ``data`` event the server writes for one JSON message."""
    return len(("event: data\ndata:[" + js_stringify(value) + "]\n\n").encode())


# ---------------------------------------------------------------- offsets, cursor


@LIVE
async def test_reads_from_beginning_and_follows_next_offset(server: EmbeddedServer,
                                                            live: str) -> None:
    rt = RecordingRuntime()
    runner = runner_for(server, live, runtime=rt)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        first = wake_requests(server)[0]
        assert first.query["offset"] == "-1"
        o1 = await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: runner.offset == o1)
        o2 = await server.append_runner_wake("r1", wake("s2"))
        await eventually(lambda: runner.offset == o2)
        await eventually(lambda: len(rt.dispatched) == 2)
    if live == "sse":
        assert first.query["live"] == "sse"
        assert len(wake_requests(server)) == 1  # one open response throughout
    else:
        # The connect is a catch-up read (answered at once); then long-polls
        # chain, each from the previous answer's Stream-Next-Offset.
        assert "live" not in first.query
        polls = live_reads(server)
        assert {p.query["live"] for p in polls} == {"long-poll"}
        assert [p.query["offset"] for p in polls[-2:]] == [o1, o2]
    assert runner.health().reconnect_count == 0


async def test_long_poll_connect_at_a_quiet_tail_does_not_time_out(
        server: EmbeddedServer) -> None:
    """Regression: the connect attempt used to be a long-poll, which the server
    legitimately holds for its long-poll timeout (30 s) at the tail, longer
    than connect_timeout: every reconnect on a quiet stream failed."""
    tail = await server.append_runner_wake("r1", wake("s0"))
    clock = ManualClock()
    errors: list[BaseException] = []
    runner = runner_for(server, "long-poll", errors=errors, offset=tail, clock=clock,
                        connect_timeout=5)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await eventually(lambda: len(live_reads(server)) == 1)  # the poll is held open
        await clock.advance(5)  # past connect_timeout: the poll is a read, not a connect
        assert runner.status == "streaming" and errors == []
        o1 = await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: runner.offset == o1)
    assert errors == []


async def test_long_poll_echoes_the_cursor(server: EmbeddedServer, cursors: list[str]) -> None:
    clock = ManualClock()
    runner = runner_for(server, "long-poll", clock=clock)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await eventually(lambda: len(live_reads(server)) == 1)
        for n in range(3):
            await server.append_runner_wake("r1", wake(f"s{n}"))
            await eventually(lambda n=n: len(live_reads(server)) == n + 2)
        polls = live_reads(server)
        assert "cursor" not in polls[0].query  # nothing to echo yet
        # Each poll carries the cursor of the answer before it.
        assert [p.query.get("cursor") for p in polls[1:4]] == cursors[:3]
        # A reconnect keeps the last cursor: the next long-poll echoes it.
        assert len(cursors) == 3
        before = len(wake_requests(server))
        runner.lifecycle.fire("STREAM_RESET", error=RuntimeError("test reset"))
        await eventually(lambda: runner.status == "reconnecting")
        await clock.advance(1)
        await eventually(lambda: len(wake_requests(server)) >= before + 2)
        catch_up, poll = wake_requests(server)[before:before + 2]
        assert "live" not in catch_up.query
        assert poll.query["live"] == "long-poll"
        assert poll.query["cursor"] == cursors[2]  # the newest cursor seen before the reset


async def test_sse_reconnect_sends_the_last_control_cursor(server: EmbeddedServer,
                                                          cursors: list[str]) -> None:
    clock = ManualClock()
    runner = runner_for(server, "sse", clock=clock)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        o1 = await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: runner.offset == o1)
        await eventually(lambda: len(cursors) >= 2)
        last = cursors[-1]
        runner.lifecycle.fire("STREAM_RESET", error=RuntimeError("test reset"))
        await eventually(lambda: runner.status == "reconnecting")
        await clock.advance(1)
        await eventually(lambda: len(wake_requests(server)) == 2)
    again = wake_requests(server)[1]
    assert again.query["offset"] == o1
    assert again.query["cursor"] == last


@LIVE
async def test_non_wake_messages_are_skipped(server: EmbeddedServer, live: str) -> None:
    rt = RecordingRuntime()
    errors: list[BaseException] = []
    runner = runner_for(server, live, runtime=rt, errors=errors)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        for value in ({"type": "not-a-wake", "stream": "x"}, {"no": "type"}, 17, "text",
                      [1, 2], None, {"type": "WAKE", "stream": "x"}):
            off = await server.append_runner_wake("r1", value)
        await eventually(lambda: runner.offset == off)
        last = await server.append_runner_wake("r1", wake("real"))
        await eventually(lambda: len(rt.dispatched) == 1)
        await eventually(lambda: runner.offset == last)
        h = runner.health()
        assert (h.events_received, h.messages_rejected, h.reconnect_count) == (1, 0, 0)
    assert server.claims("r1") == [wake("real")]
    assert errors == []


# ----------------------------------------------------------------- bad messages


async def _bad_message_is_skipped(server: EmbeddedServer, live: str, bad: Any,
                                  expected: type[MessageError], **overrides: Any) -> None:
    rt = RecordingRuntime()
    errors: list[BaseException] = []
    runner = runner_for(server, live, runtime=rt, errors=errors, **overrides)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        o1 = await server.append_runner_wake("r1", wake("before"))
        await eventually(lambda: runner.offset == o1)
        requests_before = len(wake_requests(server))
        ob = await server.append_runner_wake("r1", bad)
        await eventually(lambda: len(errors) == 1)
        assert isinstance(errors[0], expected), errors
        await eventually(lambda: runner.offset == ob)  # the offset moved past it
        o2 = await server.append_runner_wake("r1", wake("after"))
        await eventually(lambda: runner.offset == o2)
        await eventually(lambda: len(rt.dispatched) == 2)
        h = runner.health()
        assert runner.status == "streaming"
        assert (h.messages_rejected, h.reconnect_count) == (1, 0)
        assert h.last_error is not None and expected.__name__ in h.last_error
        if live == "sse":
            assert len(wake_requests(server)) == requests_before == 1  # no reconnect
        else:
            assert all("live" in r.query for r in wake_requests(server)[1:])  # no new connect
    assert [c["stream"] for c in server.claims("r1")] == ["before", "after"]
    assert len(errors) == 1


@LIVE
@pytest.mark.parametrize(
    "bad",
    [{"type": "wake"}, {"type": "wake", "stream": 5}, {"type": "wake", "stream": ""},
     {"type": "wake", "stream": "s", "generation": "1"},
     {"type": "wake", "stream": "s", "subscription_id": 3}],
    ids=["no-stream", "stream-not-str", "stream-empty", "generation-str", "sub-id-int"],
)
async def test_wrong_shape_wake_is_invalid_and_skipped(server: EmbeddedServer, live: str,
                                                       bad: Any) -> None:
    await _bad_message_is_skipped(server, live, bad, InvalidMessage)


@LIVE
async def test_oversized_message_is_reported_and_skipped(server: EmbeddedServer,
                                                         live: str) -> None:
    big = {**wake("huge"), "pad": "x" * 2000}
    await _bad_message_is_skipped(server, live, big, OversizedMessage, max_message_bytes=512)


async def test_oversized_default_limit_is_one_mib(server: EmbeddedServer) -> None:
    runner = runner_for(server, "sse")
    assert runner.config.max_message_bytes == 1024 * 1024
    big = {**wake("huge"), "pad": "x" * (1024 * 1024 + 10)}
    await _bad_message_is_skipped(server, "sse", big, OversizedMessage)


async def test_malformed_sse_data_is_reported_and_skipped(server: EmbeddedServer) -> None:
    await server.inject_error(WAKE_PATH, inject_sse_event={"eventType": "data",
                                                           "data": "[{not json"})
    rt = RecordingRuntime()
    errors: list[BaseException] = []
    runner = runner_for(server, "sse", runtime=rt, errors=errors)
    async with started(runner):
        await eventually(lambda: len(errors) == 1)
        assert isinstance(errors[0], MalformedMessage)
        o1 = await server.append_runner_wake("r1", wake("after"))
        await eventually(lambda: runner.offset == o1)
        await eventually(lambda: len(rt.dispatched) == 1)
        assert runner.status == "streaming"
        assert runner.health().messages_rejected == 1
    assert len(wake_requests(server)) == 1  # never reconnected


async def test_malformed_sse_control_is_reported_and_skipped(server: EmbeddedServer) -> None:
    await server.inject_error(WAKE_PATH, inject_sse_event={"eventType": "control",
                                                           "data": "{oops"})
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    runner = runner_for(server, "sse", runtime=rt, errors=errors)
    async with started(runner):
        await eventually(lambda: len(errors) == 1)
        assert isinstance(errors[0], MalformedMessage)
        await server.append_runner_wake("r1", wake("after"))
        await eventually(lambda: len(rt.dispatched) == 1)
    assert len(wake_requests(server)) == 1


async def test_unknown_sse_event_types_are_ignored(server: EmbeddedServer) -> None:
    await server.inject_error(WAKE_PATH, inject_sse_event={"eventType": "future-thing",
                                                           "data": "{}"})
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    runner = runner_for(server, "sse", runtime=rt, errors=errors)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: len(rt.dispatched) == 1)
    assert errors == []


async def test_poison_message_at_resume_offset_does_not_wedge(server: EmbeddedServer) -> None:
    """A bad message right after the resume offset is skipped on every mode's
    first read, so a restart never loops on it."""
    o0 = await server.append_runner_wake("r1", wake("s0"))
    await server.append_runner_wake("r1", {"type": "wake", "stream": 9})
    await server.append_runner_wake("r1", {**wake("big"), "pad": "y" * 1000})
    tail = await server.append_runner_wake("r1", wake("ok"))
    for live in ("sse", "long-poll"):
        rt = RecordingRuntime()
        errors: list[BaseException] = []
        runner = runner_for(server, live, runtime=rt, errors=errors, offset=o0,
                            max_message_bytes=512)
        async with started(runner):
            await eventually(lambda r=runner: r.offset == tail)
            await eventually(lambda rt=rt: len(rt.dispatched) == 1)
            assert runner.health().reconnect_count == 0
        assert sorted(type(e).__name__ for e in errors) == ["InvalidMessage",
                                                            "OversizedMessage"]


# ------------------------------------------------------ unframeable responses


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
async def test_broken_long_poll_body_reconnects_from_last_good_offset(
        server: EmbeddedServer, fault: str) -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    errors: list[BaseException] = []
    runner = runner_for(server, "long-poll", runtime=rt, errors=errors, clock=clock)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        good = await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: runner.offset == good)
        await eventually(lambda: len(live_reads(server)) == 2)  # a poll from `good` waits
        # The waiting poll was matched before the fault existed; the next one breaks.
        if fault == "corrupt":
            server.corrupt(WAKE_PATH, count=1)
        else:
            server.truncate(WAKE_PATH, 10, count=1)
        o2 = await server.append_runner_wake("r1", wake("s2"))
        await eventually(lambda: runner.offset == o2)
        o3 = await server.append_runner_wake("r1", wake("s3"))  # answered broken
        await eventually(lambda: runner.status == "reconnecting")
        assert isinstance(errors[-1], ProtocolError)
        assert runner.offset == o2
        n = len(wake_requests(server))
        await clock.advance(1)
        await eventually(lambda: len(wake_requests(server)) > n)
        assert wake_requests(server)[n].query == {"offset": o2}  # from the last good offset
        await eventually(lambda: runner.offset == o3)
        await eventually(lambda: [d["streamPath"] for d in rt.dispatched][-1:] == ["/s3"])
    assert [type(e) for e in errors] == [ProtocolError]


async def test_cut_mid_sse_event_reconnects_from_last_good_offset(
        server: EmbeddedServer) -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    errors: list[BaseException] = []
    runner = runner_for(server, "sse", runtime=rt, errors=errors, clock=clock)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        o0 = await server.append_runner_wake("r1", wake("s0"))
        await eventually(lambda: runner.offset == o0)
        # The next connection: data(w1), then a cut 15 bytes into data(w2).
        w1, w2 = wake("s1"), wake("s2")
        server.drop(WAKE_PATH, after_bytes=sse_data_event_len(w1) + 15, count=1)
        runner.lifecycle.fire("STREAM_RESET", error=RuntimeError("test reset"))
        await eventually(lambda: runner.status == "reconnecting")
        await server.append_runner_wake("r1", w1)
        o2 = await server.append_runner_wake("r1", w2)
        await clock.advance(1)
        await eventually(lambda: len(wake_requests(server)) == 2)
        await eventually(lambda: len(errors) == 1)
        assert isinstance(errors[0], ProtocolError)
        await eventually(lambda: runner.status == "reconnecting")
        assert runner.offset == o0  # w1 arrived but no checkpoint did
        await clock.advance(2)
        await eventually(lambda: len(wake_requests(server)) == 3)
        assert wake_requests(server)[2].query["offset"] == o0
        await eventually(lambda: runner.offset == o2)
        await eventually(lambda: "/s2" in [d["streamPath"] for d in rt.dispatched])
    assert len(errors) == 1


async def test_long_poll_answer_without_next_offset_is_a_protocol_error(
        server: EmbeddedServer) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    server.fail(WAKE_PATH, 200, body=[wake("s1")], count=1)  # 200 JSON, no offset header
    runner = runner_for(server, "long-poll", errors=errors, clock=clock)
    async with started(runner):
        await eventually(lambda: runner.status == "reconnecting")
        assert isinstance(errors[0], ProtocolError)
        assert "Stream-Next-Offset" in str(errors[0])
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")
        assert wake_requests(server)[1].query["offset"] == "-1"


# ---------------------------------------------------------------- closed stream


@LIVE
async def test_closed_stream_stops_the_runner(server: EmbeddedServer, live: str) -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    errors: list[BaseException] = []
    runner = runner_for(server, live, runtime=rt, errors=errors, clock=clock)
    runner.start()
    await eventually(lambda: runner.status == "streaming")
    o1 = await server.append_runner_wake("r1", wake("s1"))
    await eventually(lambda: runner.offset == o1)
    await close_stream(server)
    await eventually(lambda: runner.status == "stopped")
    await runner.wait_for_stopped()
    assert not runner.running
    assert [type(e) for e in errors] == [TransportError]
    assert "closed" in str(errors[0])
    assert rt.calls == ["dispatch", "abort", "drain"]
    count = len(wake_requests(server))
    assert clock.pending == []  # no backoff timer: nothing will reconnect
    await clock.advance(120)
    assert len(wake_requests(server)) == count
    assert runner.health().reconnect_count == 0
    await runner.stop()  # already stopped: a no-op


@LIVE
async def test_already_closed_stream_at_connect_stops_the_runner(server: EmbeddedServer,
                                                                 live: str) -> None:
    # A plain Durable Streams stream as the wake stream (the embedded server's
    # /runners/<id>/wake route re-creates its stream on every GET, so it
    # cannot be read once closed).
    await server.create_stream("wake/pool")
    tail = await server.append("wake/pool", wake("s1"))
    await close_stream(server, "/v1/stream/wake/pool")
    errors: list[BaseException] = []
    runner = runner_for(server, live, errors=errors, offset=tail,
                        wake_stream_path="/v1/stream/wake/pool")
    async with started(runner):
        await eventually(lambda: runner.status == "stopped")
    reads = server.requests_matching("/v1/stream/wake/pool", method="GET")
    assert len(reads) == 1
    assert [type(e) for e in errors] == [TransportError]
    assert runner.offset == tail


# --------------------------------------------------------- statuses, content type


@LIVE
@pytest.mark.parametrize(
    ("status", "body", "retry_after", "code"),
    [(404, {"error": {"code": "STREAM_NOT_FOUND", "message": "nope"}}, None, "STREAM_NOT_FOUND"),
     (500, None, None, None),
     (429, {"code": "RATE_LIMITED"}, 7, "RATE_LIMITED"),
     (503, "plain text", None, None)],
    ids=["404", "500", "429", "503-text"],
)
async def test_unexpected_status_is_typed_and_backs_off(server: EmbeddedServer, live: str,
                                                        status: int, body: Any,
                                                        retry_after: float | None,
                                                        code: str | None) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    server.fail(WAKE_PATH, status, body=body, retry_after=retry_after, count=2)
    runner = runner_for(server, live, errors=errors, clock=clock)
    async with started(runner):
        await eventually(lambda: runner.status == "reconnecting")
        err = errors[0]
        assert isinstance(err, StreamStatusError)
        assert (err.status, err.code) == (status, code)
        assert str(status) in str(err)
        assert clock.pending == [1.0]
        await clock.advance(1)
        await eventually(lambda: len(errors) == 2)
        await eventually(lambda: runner.status == "reconnecting")
        assert clock.pending == [2.0]  # backing off, not spinning
        await clock.advance(2)
        await eventually(lambda: runner.status == "streaming")  # the fault is used up
    connects = [r for r in wake_requests(server) if r.query.get("live") != "long-poll"]
    assert len(connects) == 3


async def test_status_error_mid_long_poll_chain_ends_the_session(
        server: EmbeddedServer) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    runner = runner_for(server, "long-poll", errors=errors, clock=clock)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await eventually(lambda: len(live_reads(server)) == 1)
        server.fail(WAKE_PATH, 500, count=1)
        o1 = await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: runner.status == "reconnecting")
        assert isinstance(errors[0], StreamStatusError) and errors[0].status == 500
        assert runner.offset == o1
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")
        assert wake_requests(server)[-1].query["offset"] == o1


@pytest.mark.parametrize("ctype", ["application/json", "text/plain"])
async def test_sse_with_wrong_content_type_is_a_protocol_error(server: EmbeddedServer,
                                                               ctype: str) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    body: Any = {"not": "sse"} if ctype == "application/json" else "data: x\n\n"
    server.fail(WAKE_PATH, 200, body=body, count=1)  # 200, but JSON / text/plain
    runner = runner_for(server, "sse", errors=errors, clock=clock)
    async with started(runner):
        await eventually(lambda: runner.status == "reconnecting")
        assert isinstance(errors[0], ProtocolError)
        assert "content-type" in str(errors[0])
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")


async def test_long_poll_answer_over_max_response_bytes_is_skipped_not_a_wedge(
        server: EmbeddedServer) -> None:
    """Regression: a long-poll answer larger than max_response_bytes used to be
    a ProtocolError, so the runner reconnected to the same offset, got the same
    answer, and looped forever. It is now skipped whole (reported as
    OversizedMessage) and the offset moves to its Stream-Next-Offset."""
    clock = ManualClock()
    rt = RecordingRuntime()
    errors: list[BaseException] = []
    runner = runner_for(server, "long-poll", runtime=rt, errors=errors, clock=clock,
                        max_message_bytes=256, max_response_bytes=1024)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await eventually(lambda: len(live_reads(server)) == 1)
        ob = await server.append_runner_wake("r1", {**wake("huge"), "pad": "z" * 4000})
        await eventually(lambda: len(errors) == 1)
        assert isinstance(errors[0], OversizedMessage)
        await eventually(lambda: runner.offset == ob)
        o2 = await server.append_runner_wake("r1", wake("after"))
        await eventually(lambda: runner.offset == o2)
        await eventually(lambda: len(rt.dispatched) == 1)
        assert runner.status == "streaming"
        assert runner.health().reconnect_count == 0
    assert len(errors) == 1


@LIVE
async def test_callers_session_total_timeout_never_cuts_a_live_stream(
        server: EmbeddedServer, live: str) -> None:
    """Regression: with a caller's session, aiohttp's cumulative ``total``
    (300 s by default; 0.2 s here) ended every live read early, so a healthy
    stream was reported as IdleTimeout and reconnected every ``total``."""
    errors: list[BaseException] = []
    rt = RecordingRuntime()
    timeout = aiohttp.ClientTimeout(total=0.2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        runner = runner_for(server, live, runtime=rt, errors=errors, session=session)
        async with started(runner):
            await eventually(lambda: runner.status == "streaming")
            await asyncio.sleep(0.6)  # real time: aiohttp's own timer is what is tested
            await server.append_runner_wake("r1", wake("s1"))
            await eventually(lambda: len(rt.dispatched) == 1)
            assert runner.health().reconnect_count == 0
        assert not session.closed  # the caller's session is the caller's to close
    assert errors == []
