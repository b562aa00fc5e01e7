"""Handler failures: seen (traceback, health), bounded (timeout, attempts, dead letters).

Also issue 14's hostile-handler classes: 3 (poison data ends in the
dead-letter stream), 6 (a recovered range whose handler raised is handed over
again), 7 (``BaseException`` from a handler is contained; stop is bounded), 9
(a handler raising or swallowing ``CancelledError``).

Same rules as test_worker_e2e.py: real sockets on 127.0.0.1 only, port 0, a
hard timeout on every test; tests taking ``ds_server`` run against the
embedded server and the file-backed reference server. The dead-letter stream
is a real Durable Stream: every dead-letter test reads it back over HTTP. A
test that needs time to pass without sleeping runs the worker on a ManualClock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import traceback
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from test_worker_e2e import (
    JSON,
    PATTERN,
    SUB,
    Seen,
    append,
    expected,
    make_worker,
    produce_at_once,
    reading_handler,
    running,
    settle,
    wait_all_acked,
    wait_until,
)

from pullwake import ConfigError, FailurePolicy, HandlerError, HandlerTimeout
from pullwake.errors import DeadLetterError
from pullwake.runtime.failures import (
    FailureLog,
    dead_letter_record,
    scrubbed_exception,
    traceback_text,
)
from pullwake.runtime.subscriptions import ClaimedStream
from pullwake.testing.clock import ManualClock
from pullwake.testing.interface import DurableStreamsServer
from pullwake.testing.server import EmbeddedServer
from pullwake.worker import CANCEL_GRACE_S, Wake, Worker

pytestmark = [pytest.mark.timeout(60), pytest.mark.ds_server_options(long_poll_timeout=1.0)]

DLS = "dead/letters"
DLS_PATH = f"/v1/stream/{DLS}"
TOKEN = "tok-SECRET-12a-9f3"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Short cool-downs so a few attempts take well under a second.
RETRY: dict[str, Any] = {"cooldown": 0.05, "cooldown_cap": 0.1}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def dead_letters(srv: DurableStreamsServer) -> list[dict[str, Any]]:
    return [r for r in await srv.read_all(DLS) if isinstance(r, dict)]


def failing(calls: list[Wake], exc: BaseException | type[BaseException]) -> Any:
    async def handle(wake: Wake) -> None:
        calls.append(wake)
        raise exc

    return handle


# ------------------------------------------------------------------ seen


async def test_handler_failure_is_logged_with_its_traceback_and_shown_in_health(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Seen()
    calls: list[Wake] = []

    async def handle(wake: Wake) -> None:
        calls.append(wake)
        if len(calls) <= 3:
            fail_deep_inside(TOKEN)
        await reading_handler(seen, "w1")(wake)

    worker = make_worker(ds_server, handle, headers=AUTH, **RETRY)
    paths = ["events/a"]
    with caplog.at_level(logging.DEBUG, logger="pullwake.worker"):
        async with worker:
            await produce_at_once(http, ds_server, "events/a", 3)
            await settle(ds_server, seen, paths, expected(paths, 3))
            health = worker.health()
    failures = [r for r in caplog.records if "handler failed on" in r.getMessage()]
    assert len(failures) == 3
    first, *repeats = failures
    # The first failure of a wake: WARNING with the traceback (the raising frame).
    assert first.levelno == logging.WARNING and first.exc_info is not None
    assert "(attempt 1)" in first.getMessage()
    # Repeats of the same wake within the log interval: DEBUG, still with it.
    assert [r.levelno for r in repeats] == [logging.DEBUG, logging.DEBUG]
    text = caplog.text
    assert "Traceback (most recent call last)" in text
    assert "fail_deep_inside" in text and "ValueError: upstream refused" in text
    assert TOKEN not in text
    # Health: the last error with its time, and per-subscription counts.
    assert health["last_error"] is not None and "upstream refused" in health["last_error"]
    assert TOKEN not in json.dumps(health)
    assert health["last_error_at"] is not None
    per = health["subscriptions"][SUB]
    assert per["handler_errors"] == 3 and per["dead_lettered"] == 0
    assert per["last_error_at"] is not None and "upstream refused" in per["last_error"]
    assert any(e["where"] == "handler" for e in health["recent_errors"])
    assert health["worker"]["handler_errors"] == 3
    assert per["failed_attempts"] == 0  # handled in the end: the history is reset


def fail_deep_inside(token: str) -> None:
    raise ValueError(f"upstream refused the call made with {token}")


def test_failure_log_rate_limits_repeats_on_the_injected_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flog = FailureLog(logging.getLogger("pullwake.test.flog"), interval=60.0)
    err = RuntimeError("x")
    with caplog.at_level(logging.DEBUG, logger="pullwake.test.flog"):
        assert flog.log("s", first=True, now=0.0, message="m1", error=err, scrub=str)
        assert not flog.log("s", first=False, now=59.9, message="m2", error=err, scrub=str)
        assert flog.log("s", first=False, now=60.0, message="m3", error=err, scrub=str)
        assert flog.log("s", first=True, now=60.1, message="m4", error=err, scrub=str)
        assert flog.log("other", first=False, now=60.2, message="m5", error=err, scrub=str)
    levels = [(r.getMessage().split(" ")[0], r.levelno) for r in caplog.records]
    assert levels == [("m1", logging.WARNING), ("m2", logging.DEBUG), ("m3", logging.WARNING),
                      ("m4", logging.WARNING), ("m5", logging.WARNING)]
    assert "1 more failure(s)" in caplog.records[2].getMessage()


def test_scrubbed_exception_formats_like_the_original_without_secrets() -> None:
    def inner() -> None:
        raise KeyError(f"key {TOKEN}")

    try:
        try:
            inner()
        except KeyError as exc:
            raise RuntimeError(f"wrapped Bearer {TOKEN}") from exc
    except RuntimeError as exc:
        error = exc

    def scrub(text: str) -> str:
        return text.replace(TOKEN, "***")

    original = "".join(traceback.format_exception(error))
    copy = "".join(traceback.format_exception(scrubbed_exception(error, scrub)))
    assert TOKEN in original and TOKEN not in copy
    assert copy == scrub(original)  # same types, frames and chain
    text = traceback_text(error, scrub)
    assert "in inner" in text and "KeyError" in text and TOKEN not in text


def test_dead_letter_record_is_json_and_bounded() -> None:
    error = RuntimeError("x" * 10_000)
    record = dead_letter_record(
        subscription="s", worker="w", attempts=3, error=error, scrub=str, reason="max_attempts",
        streams=[ClaimedStream("a", "0_1", "0_9"), ClaimedStream("b", "0_5", "0_5")], now=0.0)
    assert json.loads(json.dumps(record)) == record
    assert record["streams"] == [{"path": "a", "after": "0_1", "through": "0_9"}]
    assert len(record["error"]["message"]) <= 2_000


@pytest.mark.parametrize(("opts", "needle"), [
    ({"max_attempts": 3}, "needs a dead_letter_stream"),
    ({"max_attempts": 0, "dead_letter_stream": "d"}, "max_attempts must be an int >= 1"),
    ({"max_attempts": True, "dead_letter_stream": "d"}, "max_attempts must be an int"),
    ({"handler_timeout": 0}, "handler_timeout must be > 0"),
    ({"handler_timeout": float("inf")}, "handler_timeout must be > 0 and finite"),
    ({"dead_letter_stream": "/"}, "dead_letter_stream must be a non-empty"),
    ({"cooldown": 2.0, "cooldown_cap": 1.0}, "cooldown_cap"),
])
def test_retry_policy_rejects_bad_values_by_name(opts: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        FailurePolicy(**opts)


def test_retry_policy_defaults() -> None:
    assert FailurePolicy().max_attempts is None  # no dead-letter stream: retried forever
    assert FailurePolicy(dead_letter_stream="/dl/x/").max_attempts == 5
    assert FailurePolicy(dead_letter_stream="/dl/x/").dead_letter_stream == "dl/x"
    backoff = FailurePolicy(cooldown=1.0, cooldown_cap=4.0).backoff(rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    low = FailurePolicy(cooldown=1.0, cooldown_cap=4.0).backoff(rng=lambda: 0.0)
    assert [low.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]  # equal jitter


# ------------------------------------------------------------------ bounded: dead letters


async def test_wake_failing_every_attempt_is_dead_lettered_then_acked(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession,
) -> None:
    calls: list[Wake] = []
    errors: list[BaseException] = []
    worker = make_worker(ds_server, failing(calls, RuntimeError(f"bad payload, key={TOKEN}")),
                         headers=AUTH, max_attempts=3, dead_letter_stream=DLS,
                         on_error=errors.append, **RETRY)
    async with worker:
        await produce_at_once(http, ds_server, "events/a", 4)
        tail = await ds_server.tail_offset("events/a")
        await wait_all_acked(ds_server, ["events/a"])
        await wait_until(lambda: worker.stats.dead_lettered == 1, timeout=10,
                         what="the wake was dead-lettered")
    assert len(calls) == 3  # exactly max_attempts handler runs, then given up
    (record,) = await dead_letters(ds_server)
    raw = json.dumps(record)
    assert TOKEN not in raw  # the token reached neither message nor traceback
    assert record["type"] == "pullwake.dead_letter" and record["reason"] == "max_attempts"
    assert record["subscription"] == SUB and record["worker"] == "w1"
    assert record["attempts"] == 3 and record["recovered"] is False
    assert record["generation"] == calls[-1].generation
    handed = calls[-1].streams[0]
    assert record["streams"] == [{"path": "events/a", "after": handed.acked_offset,
                                  "through": tail}]
    assert record["error"]["type"] == "builtins.RuntimeError"
    assert "bad payload, key=***" in record["error"]["message"]
    assert "Traceback" in record["error"]["traceback"]
    assert "in handle" in record["error"]["traceback"]
    stats = worker.stats
    assert stats.handler_errors == 3 and stats.wakes_acked == 1 and stats.wakes_released == 2
    assert worker.health()["subscriptions"][SUB]["dead_lettered"] == 1
    assert sum(isinstance(e, HandlerError) for e in errors) == 3


async def test_dead_letter_append_failing_keeps_the_wake_until_it_is_written(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[Wake] = []
    errors: list[BaseException] = []
    worker = make_worker(ds_server, failing(calls, RuntimeError("always")), max_attempts=2,
                         dead_letter_stream=DLS, on_error=errors.append, **RETRY)
    async with worker:
        await ds_server.inject_error(DLS_PATH, status=503, count=2, method="POST")
        with caplog.at_level(logging.WARNING, logger="pullwake.worker"):
            await produce_at_once(http, ds_server, "events/a", 2)
            await wait_until(lambda: worker.stats.dead_lettered == 1, timeout=15,
                             what="the record was written in the end")
            await wait_all_acked(ds_server, ["events/a"])
    stats = worker.stats
    assert stats.dead_letter_failures == 2
    # Not acked while the record could not be written: released each time.
    assert stats.wakes_released == 1 + 2 and stats.wakes_acked == 1
    assert len(calls) == 2  # given up once; the retries only retry the record
    assert len(await dead_letters(ds_server)) == 1
    failures = [e for e in errors if isinstance(e, DeadLetterError)]
    assert len(failures) == 2 and all(e.status == 503 for e in failures)
    assert "dead-letter record of" in caplog.text and "not acked" in caplog.text
    assert worker.health()["subscriptions"][SUB]["dead_letter_failures"] == 2


async def test_worker_without_dead_letter_stream_retries_forever_and_drops_nothing(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession,
) -> None:
    seen = Seen()
    calls: list[Wake] = []

    async def handle(wake: Wake) -> None:
        calls.append(wake)
        if len(calls) <= 6:  # more than the default attempt limit
            raise RuntimeError("not yet")
        await reading_handler(seen, "w1")(wake)

    worker = make_worker(ds_server, handle, **RETRY)
    assert worker.failure_policy.max_attempts is None
    async with worker:
        await produce_at_once(http, ds_server, "events/a", 3)
        await settle(ds_server, seen, ["events/a"], expected(["events/a"], 3))
    assert worker.stats.handler_errors == 6 and worker.stats.dead_lettered == 0


# ------------------------------------------------------------------ bounded: timeouts


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_handler_timeout_is_a_failure_and_ends_in_the_dead_letter_stream(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession, kind: str,
) -> None:
    entered: list[int] = []
    release = threading.Event()

    async def stuck_async(wake: Wake) -> None:
        entered.append(1)
        await asyncio.Event().wait()

    def stuck_sync(wake: Wake) -> None:
        entered.append(1)
        release.wait(30)

    handler = stuck_async if kind == "async" else stuck_sync
    errors: list[BaseException] = []
    worker = make_worker(ds_server, handler, handler_timeout=0.2, max_attempts=2,
                         dead_letter_stream=DLS, on_error=errors.append, max_concurrency=4,
                         **RETRY)
    try:
        async with worker:
            await produce_at_once(http, ds_server, "events/a", 2)
            await wait_until(lambda: worker.stats.dead_lettered == 1, timeout=15,
                             what="the timed-out wake was dead-lettered")
            await wait_all_acked(ds_server, ["events/a"])
            if kind == "sync":  # the threads cannot be interrupted: abandoned, counted
                assert worker.stats.handlers_abandoned == 2
                assert worker.health()["worker"]["handlers_stuck"] == 2
    finally:
        release.set()
    assert len(entered) == 2
    assert worker.stats.handler_timeouts == 2
    timeouts = [e for e in errors if isinstance(e, HandlerTimeout)]
    assert len(timeouts) == 2 and "handler_timeout" in str(timeouts[0])
    (record,) = await dead_letters(ds_server)
    assert record["error"]["type"] == "pullwake.errors.HandlerTimeout"
    await wait_until(lambda: worker.abandoned_handlers() == 0, timeout=10,
                     what="released threads ended")


# ------------------------------------------------------------------ class 7: BaseException


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit],
                         ids=lambda e: e.__name__)
async def test_base_exception_in_a_handler_is_a_contained_failure(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession,
    exc: type[BaseException], kind: str,
) -> None:
    seen = Seen()
    calls: list[int] = []
    errors: list[BaseException] = []

    def first_raises() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise exc("from the handler")

    async def handle_async(wake: Wake) -> None:
        first_raises()
        await reading_handler(seen, "w1")(wake)

    def handle_sync(wake: Wake) -> None:
        first_raises()
        for s in wake.streams:
            for m in wake.messages(s.path):
                seen.message_record("w1", s.path, m)

    worker = make_worker(ds_server, handle_async if kind == "async" else handle_sync,
                         on_error=errors.append, **RETRY)
    async with running(worker) as task:
        await produce_at_once(http, ds_server, "events/a", 3)
        await settle(ds_server, seen, ["events/a"], expected(["events/a"], 3))
        assert not task.done() and worker.runner.status == "streaming"
    (herr,) = [e for e in errors if isinstance(e, HandlerError)]
    assert isinstance(herr.__cause__, exc)
    assert worker.stats.handler_errors == 1 and worker.stats.wakes_released == 1


# ------------------------------------------------------------------ class 9: cancellation


async def test_handler_raising_cancelled_error_cools_down_like_any_failure(
    embedded_ds_server: DurableStreamsServer, http: aiohttp.ClientSession,
) -> None:
    """No release loop: the released wake is read back and held until the cool-down ends."""
    srv = embedded_ds_server
    clock = ManualClock()
    seen = Seen()
    calls: list[int] = []
    errors: list[BaseException] = []
    called = asyncio.Event()

    async def handle(wake: Wake) -> None:
        calls.append(1)
        called.set()
        if len(calls) <= 2:
            raise asyncio.CancelledError("the handler's own")
        await reading_handler(seen, "w1")(wake)

    worker = make_worker(srv, handle, clock=clock, claim_lease=30.0, cooldown=1.0,
                         cooldown_cap=4.0, on_error=errors.append)
    async with running(worker) as task:
        await produce_at_once(http, srv, "events/a", 3)
        for n in (1, 2):
            await asyncio.wait_for(called.wait(), 10)
            called.clear()
            # Released; the server wrote a new wake, the runner read it and holds it back.
            await wait_until(lambda n=n: worker.stats.wakes_released == n and
                             worker.runner.health().events_received >= n + 1, timeout=10,
                             what="the released wake was read back")
            assert len(calls) == n and worker.runner.runtime.is_wake_active(SUB)
            assert worker.runner.health().claims_succeeded == n
            await clock.advance(0.5 * 2 ** (n - 1) - 0.01)  # below the shortest jittered delay
            assert len(calls) == n and worker.runner.runtime.is_wake_active(SUB)
            await clock.advance(2 ** (n - 1))  # past the longest
        await settle(srv, seen, ["events/a"], expected(["events/a"], 3))
        assert not task.done()
    causes = [type(e.__cause__) for e in errors if isinstance(e, HandlerError)]
    assert causes == [asyncio.CancelledError, asyncio.CancelledError]


@pytest.mark.parametrize("where", ["stop", "timeout"])
async def test_handler_swallowing_cancellation_does_not_hang_stop(
    embedded_ds_server: DurableStreamsServer, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture, where: str,
) -> None:
    srv = embedded_ds_server
    entered = asyncio.Event()
    swallowed = asyncio.Event()
    done = asyncio.Event()

    async def stubborn(wake: Wake) -> None:
        entered.set()
        while not done.is_set():
            try:
                await done.wait()
            except asyncio.CancelledError:
                swallowed.set()  # and carry on

    opts: dict[str, Any] = {"stop_grace": 0.2}
    if where == "timeout":
        opts.update(handler_timeout=0.2, max_attempts=1, dead_letter_stream=DLS)
    worker = make_worker(srv, stubborn, **opts)
    try:
        with caplog.at_level(logging.INFO, logger="pullwake.worker"):
            await worker.start()
            await produce_at_once(http, srv, "events/a", 2)
            await asyncio.wait_for(entered.wait(), 10)
            if where == "timeout":
                await wait_until(lambda: worker.stats.dead_lettered == 1, timeout=10,
                                 what="the timed-out wake was dead-lettered")
            # A hang detector, not a timing goal: the bound is stop_grace + CANCEL_GRACE_S.
            await asyncio.wait_for(worker.stop(), 10 + CANCEL_GRACE_S)
        assert swallowed.is_set() and not worker.runner.running
        assert worker.stats.handlers_abandoned == 1
        assert worker.abandoned_handlers() == 1
        assert "did not end when cancelled" in caplog.text
        assert "stopped with 1 handler(s) still running" in caplog.text
        if where == "stop":
            assert worker.stats.wakes_released == 1
    finally:
        done.set()
    await wait_until(lambda: worker.abandoned_handlers() == 0, timeout=5,
                     what="the stubborn handler ended once told to")


# ------------------------------------------------------------------ class 6: recovered ranges


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, asyncio.CancelledError],
                         ids=lambda e: e.__name__)
async def test_recovered_range_whose_handler_raised_is_handed_over_again(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession, exc: type[BaseException],
) -> None:
    seen = Seen()
    hold = asyncio.Event()
    holding = asyncio.Event()
    recovered_tries: list[int] = []

    async def handle(wake: Wake) -> None:
        if not wake.recovered and not hold.is_set():
            holding.set()
            await hold.wait()  # hold the wake across the restart: nothing acked
        if wake.recovered:
            recovered_tries.append(1)
            if len(recovered_tries) <= 2:
                raise exc("recovered wake fails")
        await reading_handler(seen, "w1")(wake)

    paths = ["events/a"]
    worker = make_worker(ds_server, handle, **RETRY)
    async with worker:
        await produce_at_once(http, ds_server, "events/a", 5)
        await asyncio.wait_for(holding.wait(), 10)
        # The server forgets the subscription; the re-created one starts at the tail,
        # so the held range is only ever handed over again by the worker's recovery.
        await ds_server.restart()
        await wait_until(lambda: worker.stats.subscriptions_recreated >= 1, timeout=15,
                         what="the worker re-created its subscription")
        hold.set()
        await wait_until(lambda: worker.stats.recovered_wakes == 1, timeout=15,
                         what="the recovered range was handled in the end")
        await settle(ds_server, seen, paths, expected(paths, 5))
    assert len(recovered_tries) == 3
    assert worker.stats.handler_errors == 2


async def test_recovered_range_failing_every_attempt_is_dead_lettered(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession,
) -> None:
    hold = asyncio.Event()
    holding = asyncio.Event()
    recovered: list[Wake] = []

    async def handle(wake: Wake) -> None:
        if wake.recovered:
            recovered.append(wake)
            raise asyncio.CancelledError("never works")
        holding.set()
        await hold.wait()

    worker = make_worker(ds_server, handle, max_attempts=2, dead_letter_stream=DLS, **RETRY)
    async with worker:
        await produce_at_once(http, ds_server, "events/a", 3)
        await asyncio.wait_for(holding.wait(), 10)
        await ds_server.restart()
        await wait_until(lambda: worker.stats.dead_lettered == 1, timeout=20,
                         what="the recovered range was dead-lettered")
        hold.set()
    assert len(recovered) == 2 and worker.stats.recovered_wakes == 0
    (record,) = await dead_letters(ds_server)
    assert record["recovered"] is True and record["attempts"] == 2
    assert record["wake_id"] is None
    (stream,) = record["streams"]
    assert stream["path"] == "events/a"
    assert stream["through"] == await ds_server.tail_offset("events/a")
    assert record["error"]["type"] == "asyncio.exceptions.CancelledError"


async def test_recovered_range_unfinished_at_stop_is_dead_lettered(
    embedded_ds_server: DurableStreamsServer, http: aiohttp.ClientSession,
) -> None:
    srv = embedded_ds_server
    hold = asyncio.Event()
    recovering = asyncio.Event()

    async def handle(wake: Wake) -> None:
        if wake.recovered:
            recovering.set()
        await hold.wait()  # never finishes: neither the wake nor its recovery

    worker = make_worker(srv, handle, dead_letter_stream=DLS, stop_grace=0.2, **RETRY)
    await worker.start()
    try:
        await produce_at_once(http, srv, "events/a", 3)
        await wait_until(lambda: worker.stats.wakes_claimed == 1, timeout=10,
                         what="the wake was claimed")
        await srv.restart()
        await asyncio.wait_for(recovering.wait(), 15)
    finally:
        await asyncio.wait_for(worker.stop(), 15)
        hold.set()
    (record,) = await dead_letters(srv)
    assert record["reason"] == "stopped" and record["recovered"] is True
    assert record["attempts"] == 0 and record["error"] is None
    assert record["streams"][0]["through"] == await srv.tail_offset("events/a")


# ------------------------------------------------------------------ class 3: poison data


@pytest.mark.parametrize("poison", ["undecodable", "nested"])
async def test_poison_data_message_ends_in_the_dead_letter_stream(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession, poison: str,
) -> None:
    decoded: list[int] = []
    tries: list[int] = []

    async def handle(wake: Wake) -> None:
        tries.append(1)
        for s in wake.streams:
            async for m in wake.messages(s.path):
                decoded.append(int(m["n"]))  # the application's decode

    worker = make_worker(ds_server, handle, max_attempts=3, dead_letter_stream=DLS, **RETRY)
    async with worker:
        async with http.put(f"{ds_server.stream_root}/events/p", headers=JSON) as resp:
            assert resp.status in (200, 201)
        await append(http, ds_server, "events/p", {"n": 1})
        if poison == "undecodable":
            await append(http, ds_server, "events/p", {"n": "not a number"})
        elif isinstance(ds_server, EmbeddedServer):
            pytest.skip("the embedded server parses appends and refuses this nesting itself")
        else:  # valid JSON (the reference server stores it) that a reader cannot decode
            body = "[" * 3_000 + "]" * 3_000
            async with http.post(f"{ds_server.stream_root}/events/p", data=body,
                                 headers=JSON) as resp:
                assert resp.status == 204, await resp.text()
        await wait_until(lambda: worker.stats.dead_lettered == 1, timeout=20,
                         what="the poison wake was dead-lettered")
        await wait_all_acked(ds_server, ["events/p"])
        # The stream is not wedged: what comes after the poison is handled.
        await append(http, ds_server, "events/p", {"n": 2})
        await wait_until(lambda: 2 in decoded, timeout=10, what="the next message handled")
        await wait_all_acked(ds_server, ["events/p"])
    (record,) = await dead_letters(ds_server)
    assert record["attempts"] == 3 and record["streams"][0]["path"] == "events/p"
    assert len(tries) >= 4


# ------------------------------------------------------------------ config


def test_worker_rejects_an_attempt_limit_without_a_dead_letter_stream() -> None:
    with pytest.raises(ConfigError, match="dead_letter_stream"):
        Worker(server="http://127.0.0.1:9/v1/stream", subscription=SUB, pattern=PATTERN,
               handler=lambda w: None, max_attempts=3)


async def test_worker_creates_its_dead_letter_stream_at_start(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession,
) -> None:
    worker = make_worker(ds_server, reading_handler(Seen(), "w1"), dead_letter_stream=DLS)
    async with worker:
        async with http.head(f"{ds_server.stream_root}/{DLS}") as resp:
            assert resp.status == 200
    assert await dead_letters(ds_server) == []
