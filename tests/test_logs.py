"""Logs: context fields on every line, JSON format, outage rate-limiting, order.

Workers and runners talk to an EmbeddedServer on 127.0.0.1. Timer-driven
behaviour (heartbeats, backoff, reminders) runs on a ManualClock.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from observe_helpers import make_worker
from runner_helpers import eventually, make_runner, started

from pullwake.runtime.logs import (
    ContextFilter,
    JsonFormatter,
    OutageLog,
    TextFormatter,
    log_context,
)
from pullwake.testing import EmbeddedServer
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def json_lines(level: int = logging.DEBUG) -> Iterator[io.StringIO]:
    """Capture every record as a JSON line (the format `--log-format json` installs)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def records(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


async def test_lines_carry_worker_subscription_wake_and_state_per_worker() -> None:
    app = logging.getLogger("app")

    async def handler(wake: Any) -> None:
        app.info("handling %d stream(s)", len(wake.streams))

    def sync_handler(wake: Any) -> None:  # runs in a thread: the context follows it
        app.info("sync handling")

    async with EmbeddedServer(long_poll_timeout=1.0) as srv:
        a = make_worker(srv, name="wa", sub="suba", pattern="a/*", handler=handler)
        b = make_worker(srv, name="wb", sub="subb", pattern="b/*", handler=sync_handler)
        with json_lines() as buf:
            await a.start()
            await b.start()
            try:
                await eventually(lambda: a.runner.status == b.runner.status == "streaming",
                                 timeout=10)
                await srv.create_stream("a/1")
                await srv.create_stream("b/1")
                await srv.append("a/1", {"n": 1})
                await srv.append("b/1", {"n": 1})
                await eventually(lambda: a.stats.wakes_acked >= 1 and b.stats.wakes_acked >= 1,
                                 timeout=20)
            finally:
                await a.stop()
                await b.stop()
    lines = records(buf)
    mine = [x for x in lines if x["logger"].startswith(("pullwake", "app"))]
    assert mine and all(x["worker"] in ("wa", "wb") for x in mine), \
        [x for x in mine if x["worker"] not in ("wa", "wb")]
    got_a = [x for x in lines if x["message"].startswith("handling")]
    got_b = [x for x in lines if x["message"] == "sync handling"]
    assert got_a and got_b  # at least once each (creating a stream may wake too)
    assert {(x["worker"], x["subscription"], x["state"]) for x in got_a} == \
        {("wa", "suba", "streaming")}
    assert {(x["worker"], x["subscription"]) for x in got_b} == {("wb", "subb")}
    assert all(isinstance(x["wake"], int) for x in got_a + got_b)
    # pullwake's own "[worker] " prefix is not repeated inside the JSON message.
    assert not any(x["message"].startswith("[w") for x in mine)
    starting = [x for x in mine if x["message"].startswith("starting (wake stream")]
    assert {x["worker"] for x in starting} == {"wa", "wb"}


def test_text_format_prefixes_the_worker_once() -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(TextFormatter())
    handler.addFilter(ContextFilter({"worker": "cli-default"}))
    log = logging.getLogger("pullwake.test.text")
    log.addHandler(handler)
    log.propagate = False
    try:
        with log_context(worker="w9", subscription="s", wake=3):
            log.warning("[w9] already prefixed")
            log.warning("plain")
        log.warning("outside")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    out = buf.getvalue().splitlines()
    assert out[0].endswith("pullwake.test.text: [w9] [s#3] already prefixed")
    assert out[1].endswith("pullwake.test.text: [w9] [s#3] plain")
    assert out[2].endswith("pullwake.test.text: [cli-default] outside")


async def test_outage_log_one_line_per_outage_a_reminder_and_a_summary(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    log = logging.getLogger("pullwake.test.outage")
    outage = OutageLog(log, "heartbeat", clock, prefix="[w] ", remind_every=60.0)
    caplog.set_level(logging.DEBUG, logger="pullwake.test.outage")
    for _ in range(90):
        outage.failure("ConnectError: refused")
        await clock.advance(1.0)
    outage.success()
    outage.success()  # nothing more to say
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debugs = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert warnings[0] == ("[w] heartbeat failed: ConnectError: refused (repeats are logged at "
                           "DEBUG until one succeeds)")
    assert len(warnings) == 2 and warnings[1].startswith("[w] heartbeat still failing: 61 ")
    assert infos == ["[w] heartbeat recovered after 90 failure(s) in 90s"]
    assert len(debugs) == 88
    outage.failure("again")  # a new outage warns again
    assert caplog.records[-1].levelno == logging.WARNING


async def test_heartbeat_failures_while_reconnecting_are_one_line_then_a_summary(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pullwake")
    clock = ManualClock()
    async with EmbeddedServer() as server:
        runner = make_runner(server, clock=clock, heartbeat_interval=1.0, request_timeout=0.5)
        async with started(runner):
            await eventually(lambda: runner.status == "streaming")
            await clock.advance(0.1)
            await eventually(lambda: runner.health().heartbeats_ok >= 1)
            outage = server.fail("/", 503)  # everything: heartbeats and reconnects
            for _ in range(40):
                await clock.advance(1.0)
            await eventually(lambda: runner.health().heartbeats_failed >= 10)
            assert runner.status in ("reconnecting", "connecting")
            server.remove_fault(outage)
            for _ in range(40):
                await clock.advance(1.0)
                if runner.status == "streaming" and runner.health().last_heartbeat_ok:
                    break
            await eventually(lambda: runner.status == "streaming"
                             and runner.health().last_heartbeat_ok)
    failed = runner.health().heartbeats_failed
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    hb = [m for m in warned if "heartbeat failed" in m or "heartbeat still failing" in m]
    assert len(hb) == 1, hb
    assert len([m for m in warned if "resetting the wake stream" in m]) <= 1
    recovered = [r.getMessage() for r in caplog.records
                 if "heartbeat recovered after" in r.getMessage()]
    assert len(recovered) == 1 and f"after {failed} failure(s)" in recovered[0], \
        (recovered, failed)
    # health still records every failure
    assert runner.health().last_error is not None


async def test_the_error_is_logged_before_the_reconnect_it_causes(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pullwake")
    clock = ManualClock()
    async with EmbeddedServer() as server:
        server.fail("/runners/r1/wake", 503, count=1)
        runner = make_runner(server, clock=clock, heartbeat_interval=None)
        async with started(runner):
            await eventually(lambda: runner.status == "reconnecting")
            await clock.advance(1.0)
            await eventually(lambda: runner.status == "streaming")
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("pullwake")]
    err = next(i for i, m in enumerate(messages) if "connect error" in m)
    again = next(i for i, m in enumerate(messages) if "reconnecting in 1s (attempt 1)" in m)
    assert err < again, messages


HANDLER = textwrap.dedent('''
    import logging
    log = logging.getLogger("my_handlers")

    async def handle(wake):
        for stream in wake.streams:
            async for message in wake.messages(stream.path):
                log.info("got %s", message)
''')


async def test_run_log_format_json_every_line_an_object_with_the_worker(
        tmp_path: Path) -> None:
    (tmp_path / "my_handlers.py").write_text(HANDLER)
    async with EmbeddedServer(long_poll_timeout=1.0) as srv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pullwake", "run", "--server", srv.stream_root,
            "--subscription", "sub1", "--wake-stream", "wake/pool", "--pattern", "events/*",
            "--handler", "my_handlers:handle", "--worker", "w1", "--log-format", "json",
            "--log-level", "debug", cwd=str(tmp_path), env=dict(os.environ),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await eventually(lambda: srv.subscriptions.subscriptions.get("sub1") is not None,
                             timeout=15)
            await srv.create_stream("events/a")
            await srv.append("events/a", {"n": 7})
            state = None
            for _ in range(300):
                state = await srv.subscription_state("sub1")
                streams = (state or {}).get("streams", [])
                if streams and streams[0]["acked_offset"] == await srv.tail_offset("events/a"):
                    break
                await asyncio.sleep(0.05)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(x) for x in err.decode().splitlines()]
    assert lines, "no log lines"
    assert all(x["worker"] == "w1" for x in lines), [x for x in lines if x["worker"] != "w1"]
    assert all(set(x) >= {"ts", "level", "logger", "message", "worker", "subscription",
                          "wake", "state"} for x in lines)
    got = [x for x in lines if x["logger"] == "my_handlers"]
    assert got and {x["message"] for x in got} == {"got {'n': 7}"}  # at least once
    assert all(x["subscription"] == "sub1" and isinstance(x["wake"], int) for x in got)
    assert any(x["level"] == "DEBUG" for x in lines)  # --log-level is case-insensitive
    assert any(x["message"] == "lifecycle: stopped --START--> connecting" for x in lines)
