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
                async with s.get(f"http://127.0.0.1:{port}/health") as r:
                    health = await r.json()
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
