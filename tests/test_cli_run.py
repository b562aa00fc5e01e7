"""`pullwake run` and `pullwake demo` as an operator runs them: real processes.

The worker runs in a child process (`python -m pullwake run ...`) against an
EmbeddedServer in this process, over 127.0.0.1; it is stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest
from runner_helpers import eventually

from pullwake.testing import EmbeddedServer

pytestmark = pytest.mark.timeout(60)

HANDLER = textwrap.dedent('''
    import json, os

    OUT = os.environ["PULLWAKE_TEST_OUT"]

    async def handle(wake):
        with open(OUT, "a") as f:
            for stream in wake.streams:
                async for message in wake.messages(stream.path):
                    f.write(json.dumps({"stream": stream.path, "m": message}) + "\\n")
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _spawn(args: list[str], cwd: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pullwake", *args, cwd=str(cwd), env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_run_handles_messages_serves_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "my_handlers.py").write_text(HANDLER)
    out = tmp_path / "handled.jsonl"
    port = _free_port()
    async with EmbeddedServer() as srv:
        proc = await _spawn(
            ["run", "--server", srv.stream_root, "--subscription", "sub1",
             "--wake-stream", "wake/pool", "--pattern", "events/*",
             "--handler", "my_handlers:handle", "--worker", "w1", "--lease-ms", "2000",
             "--health-port", str(port), "--token-env", "PULLWAKE_TEST_TOKEN"],
            tmp_path, {"PULLWAKE_TEST_OUT": str(out), "PULLWAKE_TEST_TOKEN": "tok-SECRET-123"})
        try:
            await eventually(lambda: srv.subscriptions.subscriptions.get("sub1") is not None,
                             timeout=15)
            for name in ("events/s0", "events/s1"):
                await srv.create_stream(name)
            for i in range(10):
                await srv.append(f"events/s{i % 2}", {"n": i})

            def lines() -> list[dict]:
                return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []

            await eventually(lambda: len(lines()) >= 10, timeout=15)
            assert sorted(x["m"]["n"] for x in lines()) == list(range(10))
            async with aiohttp.ClientSession() as s:
                # The handler wrote its lines before its wake's ack: wait for the ack.
                loop = asyncio.get_running_loop()
                give_up = loop.time() + 15
                while True:
                    async with s.get(f"http://127.0.0.1:{port}/health") as r:
                        health = await r.json()
                    if health["worker"]["wakes_acked"] >= 1 or loop.time() > give_up:
                        break
                    await asyncio.sleep(0.05)
                async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                    assert r.status == 200
            assert health["status"] == "streaming"
            assert health["worker"]["wakes_acked"] >= 1
            assert "tok-SECRET-123" not in json.dumps(health)
            assert srv.requests_matching("/wake/pool")[0].headers["Authorization"] == \
                "Bearer tok-SECRET-123"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        state = await srv.subscription_state("sub1")
        assert state is not None
        for s in state["streams"]:
            assert s["acked_offset"] == await srv.tail_offset(s["path"])
        text = err.decode()
        assert "stopping (signal)" in text
        assert "lifecycle: stopped --START--> connecting" in text
        assert "lifecycle: connecting --CONNECTED--> streaming" in text
        assert "tok-SECRET-123" not in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--handler", "nope_module:fn", "--pattern", "e/*"], "cannot import handler module"),
        (["--handler", "no-colon", "--pattern", "e/*"], "module:function"),
        (["--handler", "os:path", "--pattern", "e/*", "--stream", "x"], "exactly one of"),
    ],
)
async def test_run_rejects_bad_arguments(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = await _spawn(["run", "--server", "http://127.0.0.1:9/v1/stream", "--subscription",
                         "s", "--wake-stream", "w", *args], tmp_path, {})
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert needle in err.decode()


async def test_run_exits_1_on_conflicting_subscription(tmp_path: Path) -> None:
    (tmp_path / "my_handlers.py").write_text(HANDLER)
    async with EmbeddedServer() as srv:
        async with aiohttp.ClientSession() as s:
            await s.put(srv.stream_root + "/__ds/subscriptions/sub1",
                        json={"type": "pull-wake", "pattern": "other/*",
                              "wake_stream": "wake/pool", "lease_ttl_ms": 5000})
        proc = await _spawn(["run", "--server", srv.stream_root, "--subscription", "sub1",
                             "--wake-stream", "wake/pool", "--pattern", "events/*",
                             "--handler", "my_handlers:handle"], tmp_path,
                            {"PULLWAKE_TEST_OUT": str(tmp_path / "o")})
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert "SUBSCRIPTION_ALREADY_EXISTS" in err.decode() or "different configuration" in \
        err.decode()


async def test_demo_runs_the_story_and_exits_0(tmp_path: Path) -> None:
    proc = await _spawn(["demo"], tmp_path, {})
    out, err = await asyncio.wait_for(proc.communicate(), 45)
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    for needle in ("stopped --START--> connecting", "connecting --CONNECTED--> streaming",
                   "--> reconnecting", "Act 2", "Act 3", "lost       0",
                   "OK: nothing was lost"):
        assert needle in text, needle


# ------------------------------------------------------------------ failing and stuck handlers

FAILING_HANDLERS = textwrap.dedent('''
    import json, os, threading

    OUT = os.environ["PULLWAKE_TEST_OUT"]
    calls = []

    def stuck(wake):
        open(OUT, "a").write("entered\\n")
        threading.Event().wait()  # never returns; a thread cannot be interrupted

    async def raises_base_exceptions(wake):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt("from the handler")
        if len(calls) == 2:
            raise SystemExit(3)
        with open(OUT, "a") as f:
            for stream in wake.streams:
                async for message in wake.messages(stream.path):
                    f.write(json.dumps(message) + "\\n")

    async def always_fails(wake):
        raise RuntimeError("cannot use this wake, token " + os.environ["PULLWAKE_TEST_TOKEN"])
''')


def _run_args(srv: EmbeddedServer, handler: str, *extra: str) -> list[str]:
    return ["run", "--server", srv.stream_root, "--subscription", "sub1",
            "--wake-stream", "wake/pool", "--pattern", "events/*", "--handler", handler,
            "--worker", "w1", "--lease-ms", "2000", *extra]


async def test_run_exits_after_the_stop_grace_with_a_stuck_sync_handler(tmp_path: Path) -> None:
    (tmp_path / "failing.py").write_text(FAILING_HANDLERS)
    out = tmp_path / "out.txt"
    async with EmbeddedServer() as srv:
        proc = await _spawn(_run_args(srv, "failing:stuck", "--stop-grace", "0.5"), tmp_path,
                            {"PULLWAKE_TEST_OUT": str(out)})
        try:
            await eventually(lambda: srv.subscriptions.subscriptions.get("sub1") is not None,
                             timeout=15)
            await srv.create_stream("events/a")
            await srv.append("events/a", {"n": 1})
            await eventually(lambda: out.exists() and "entered" in out.read_text(), timeout=15)
            proc.send_signal(signal.SIGTERM)
            # A hang detector: before the fix the process never exited.
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        text = err.decode()
        assert proc.returncode == 0, text
        assert "still running after the stop grace" in text
        assert "a stuck sync handler thread" in text
        # The wake was released, not left to expire: claimable again at once.
        status, body = srv.subscriptions.claim("sub1", "probe")
        assert status == 200, body


async def test_run_keeps_running_when_a_handler_raises_keyboard_interrupt_or_system_exit(
        tmp_path: Path) -> None:
    (tmp_path / "failing.py").write_text(FAILING_HANDLERS)
    out = tmp_path / "out.txt"
    async with EmbeddedServer() as srv:
        proc = await _spawn(_run_args(srv, "failing:raises_base_exceptions"), tmp_path,
                            {"PULLWAKE_TEST_OUT": str(out)})
        try:
            await eventually(lambda: srv.subscriptions.subscriptions.get("sub1") is not None,
                             timeout=15)
            await srv.create_stream("events/a")
            for i in range(3):
                await srv.append("events/a", {"n": i})
            # Two failed attempts (cool-downs of at most 1 s and 2 s), then handled.
            await eventually(lambda: out.exists() and len(out.read_text().splitlines()) >= 3,
                             timeout=30)
            assert proc.returncode is None  # still alive
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        text = err.decode()
        assert proc.returncode == 0, text
        # The first failure of the wake at WARNING with its traceback; the repeat
        # (SystemExit) within the log interval only at DEBUG.
        assert "(attempt 1): KeyboardInterrupt: from the handler" in text
        assert 'raise KeyboardInterrupt("from the handler")' in text
        assert sorted(json.loads(x)["n"] for x in out.read_text().splitlines()) == [0, 1, 2]


async def test_run_dead_letters_with_max_attempts_and_dead_letter_stream(tmp_path: Path) -> None:
    (tmp_path / "failing.py").write_text(FAILING_HANDLERS)
    token = "tok-DLS-SECRET-77"
    async with EmbeddedServer() as srv:
        proc = await _spawn(
            _run_args(srv, "failing:always_fails", "--max-attempts", "2",
                      "--dead-letter-stream", "dead/letters", "--handler-timeout", "5",
                      "--token-env", "PULLWAKE_TEST_TOKEN"),
            tmp_path, {"PULLWAKE_TEST_OUT": str(tmp_path / "o"), "PULLWAKE_TEST_TOKEN": token})
        try:
            await eventually(lambda: srv.subscriptions.subscriptions.get("sub1") is not None,
                             timeout=15)
            await srv.create_stream("events/a")
            await srv.append("events/a", {"n": 1})

            async def records() -> list[dict]:
                return await srv.read_all("dead/letters")  # created by the worker's start

            for _ in range(2000):  # bounded by the test's timeout too
                if await records():
                    break
                await asyncio.sleep(0.01)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        (record,) = await records()
        assert record["attempts"] == 2 and record["subscription"] == "sub1"
        assert "cannot use this wake" in record["error"]["message"]
        assert token not in json.dumps(record)
        text = err.decode()
        assert proc.returncode == 0, text
        assert token not in text and "dead-lettered to dead/letters" in text
        state = await srv.subscription_state("sub1")
        assert state is not None
        assert state["streams"][0]["acked_offset"] == await srv.tail_offset("events/a")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-attempts", "0"], "--max-attempts: must be an integer from 1"),
        (["--max-attempts", "two"], "--max-attempts: must be an integer from 1"),
        (["--handler-timeout", "-1"], "--handler-timeout: must be a number from 0.001"),
        (["--handler-timeout", "nan"], "--handler-timeout: must be a number from 0.001"),
        (["--max-attempts", "3"], "needs a dead_letter_stream"),
    ],
)
async def test_run_rejects_bad_failure_policy_arguments(tmp_path: Path, args: list[str],
                                                       needle: str) -> None:
    proc = await _spawn(["run", "--server", "http://127.0.0.1:9/v1/stream", "--subscription",
                         "s", "--wake-stream", "w", "--pattern", "e/*", "--handler", "os:getcwd",
                         *args], tmp_path, {})
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert needle in err.decode()
