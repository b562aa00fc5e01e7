"""The health server: probes that mean what they say, binding, the CLI's use of it.

Real sockets on 127.0.0.1, port 0, an EmbeddedServer; every test has a hard
timeout. Waiting is on conditions (``eventually``), never on elapsed time.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from observe_helpers import acked_to_tail, get, make_worker, serving
from prometheus_client.parser import text_string_to_metric_families
from runner_helpers import eventually

from pullwake import HealthServer, HealthServerError
from pullwake.ops.liveness import LoopWatch, readiness
from pullwake.testing import EmbeddedServer
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(60)


async def test_probes_follow_a_hang_livez_stays_up_readyz_does_not() -> None:
    async with EmbeddedServer(long_poll_timeout=1.0) as srv:
        worker = make_worker(srv)
        async with serving(worker, start=False) as health:
            base = health.url
            assert health.port and health.port > 0
            # Bound before the worker started: alive, not ready.
            assert (await get(base + "/livez"))[0] == 200
            status, body = await get(base + "/readyz")
            assert status == 503 and body["status"] == "stopped"
            await worker.start()
            await eventually(lambda: worker.runner.status == "streaming", timeout=10)
            status, body = await get(base + "/readyz")
            assert (status, body["ready"], body["reasons"]) == (200, True, [])
            assert (await get(base + "/healthz"))[0] == 200  # the kept alias

            srv.pause()  # accepts, answers nothing
            ready_states: list[int] = []

            async def not_ready() -> bool:
                status, _ = await get(base + "/readyz")
                ready_states.append(status)
                return status == 503

            await _until(not_ready, timeout=20)
            # The outage is upstream: the process is fine, a liveness probe must not
            # restart it (and throw away its recovery state).
            status, live = await get(base + "/livez")
            assert status == 200 and live["live"] is True
            status, body = await get(base + "/health")
            assert status == 200
            assert body["readiness"]["ready"] is False and body["liveness"]["live"] is True
            assert body["status"] != "streaming" or body["heartbeat_failures"] > 0

            srv.resume()

            async def ready_again() -> bool:
                return (await get(base + "/readyz"))[0] == 200

            await _until(ready_again, timeout=20)
            assert (await get(base + "/livez"))[0] == 200


async def _until(check, *, timeout: float) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        if loop.time() > end:
            raise AssertionError(f"not reached in {timeout}s")
        await asyncio.sleep(0.05)


async def test_livez_fails_after_the_loop_was_blocked_then_recovers() -> None:
    async with EmbeddedServer() as srv:
        worker = make_worker(srv)
        async with serving(worker, start=False, watch_interval=0.05,
                           max_loop_lag=0.2) as health:
            health.watch.hold = 60.0  # keep the verdict until the probe has read it
            await eventually(lambda: health.watch.last_tick is not None)
            before = health.watch.stalls  # a loaded machine may have stalled already
            time.sleep(0.6)  # noqa: ASYNC251 - the point: a handler blocking the loop
            await eventually(lambda: health.watch.stalls > before)
            status, body = await get(health.url + "/livez")
            assert status == 503 and body["live"] is False
            assert "blocked" in body["reason"] and body["worst_loop_lag_s"] >= 0.3
            health.watch.hold = 0.1

            async def live() -> bool:
                return (await get(health.url + "/livez"))[0] == 200

            await _until(live, timeout=20)


async def test_loop_watch_on_a_manual_clock() -> None:
    clock = ManualClock()
    watch = LoopWatch(clock, interval=1.0, max_lag=2.0)
    assert watch.check()["live"] is False  # not started: nothing proves the loop runs
    watch.start()
    await clock.advance(5.0)
    check = watch.check()
    assert check["live"] is True and check["loop_lag_s"] == 0.0
    watch.stop()
    assert watch.check()["live"] is False
    with pytest.raises(ValueError, match="interval"):
        LoopWatch(clock, interval=0)


def test_readiness_names_its_reasons() -> None:
    assert readiness({"status": "streaming", "stream_connected": True,
                      "heartbeat_failures": 0}) == {"ready": True, "status": "streaming",
                                                    "reasons": []}
    r = readiness({"status": "reconnecting", "stream_connected": False,
                   "heartbeat_failures": 2})
    assert r["ready"] is False
    assert any("reconnecting" in x for x in r["reasons"])
    assert any("2 liveness call" in x for x in r["reasons"])


def _listening_socket() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


async def test_bind_failure_is_a_typed_error_and_serves_nothing() -> None:
    async with EmbeddedServer() as srv:
        worker = make_worker(srv)
        with _listening_socket() as taken:
            port = taken.getsockname()[1]
            health = HealthServer(worker, port=port)
            with pytest.raises(HealthServerError, match=rf"127\.0\.0\.1:{port}: .*in use"):
                await health.start()
            await health.stop()  # idempotent after a failed start
        with pytest.raises(HealthServerError, match=r"0\.\.65535"):
            HealthServer(worker, port=70000)
        assert srv.requests_matching("") == []  # nothing was started


HANDLER = textwrap.dedent('''
    async def handle(wake):
        for stream in wake.streams:
            async for message in wake.messages(stream.path):
                pass
''')


async def _spawn(args: list[str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pullwake", *args, cwd=str(cwd), env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


def _run_args(srv: EmbeddedServer, *extra: str) -> list[str]:
    return ["run", "--server", srv.stream_root, "--subscription", "sub1", "--wake-stream",
            "wake/pool", "--pattern", "events/*", "--handler", "my_handlers:handle",
            "--worker", "w1", *extra]


async def test_run_with_its_port_in_use_exits_2_with_one_line_and_starts_nothing(
        tmp_path: Path) -> None:
    (tmp_path / "my_handlers.py").write_text(HANDLER)
    async with EmbeddedServer() as srv:
        with _listening_socket() as taken:
            port = taken.getsockname()[1]
            proc = await _spawn(_run_args(srv, "--health-port", str(port)), tmp_path)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        text = err.decode()
        assert proc.returncode == 2, text
        lines = text.splitlines()
        assert len(lines) == 1, text
        assert re.fullmatch(rf"pullwake run: cannot serve health on 127\.0\.0\.1:{port}: "
                            r"[Aa]ddress already in use", lines[0]), lines[0]
        assert "Traceback" not in text
        # No half-started worker: the server never heard from it.
        assert srv.requests_matching("") == []
        assert srv.subscriptions.subscriptions.get("sub1") is None


async def test_run_logs_the_real_port_and_serves_every_endpoint(tmp_path: Path) -> None:
    (tmp_path / "my_handlers.py").write_text(HANDLER)
    async with EmbeddedServer() as srv:
        proc = await _spawn(_run_args(srv, "--health-port", "0", "--health-host", "127.0.0.1"),
                            tmp_path)
        try:
            assert proc.stderr is not None
            port = None
            seen = []
            while port is None:
                line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
                assert line, "".join(seen)
                seen.append(line)
                m = re.search(r"health on http://127\.0\.0\.1:(\d+)/", line)
                if m:
                    port = int(m.group(1))
            assert port != 0
            base = f"http://127.0.0.1:{port}"
            # Logged before the worker starts (bound first).
            assert not any("starting (wake stream" in x for x in seen)

            async def ready() -> bool:
                return (await get(base + "/readyz"))[0] == 200

            await _until(ready, timeout=20)
            assert (await get(base + "/livez"))[0] == 200
            status, page = await get(base + "/")
            assert status == 200 and "<title>pullwake worker</title>" in page
            status, svg = await get(base + "/lifecycle.svg")
            assert status == 200 and "<title>running.streaming</title>" in svg
            status, metrics = await get(base + "/metrics")
            assert status == 200 and 'pullwake_lifecycle_state{state="streaming"} 1.0' in metrics
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0


@pytest.mark.parametrize(("args", "needle"), [
    (["--health-port", "99999"], "argument --health-port: must be an integer from 0 to 65535"),
    (["--health-port", "http"], "argument --health-port: must be an integer from 0 to 65535"),
    (["--log-level", "LOUD"], "argument --log-level: must be one of DEBUG, INFO, WARNING"),
    (["--log-format", "xml"], "argument --log-format: must be one of text, json, got 'xml'"),
])
async def test_run_rejects_bad_observability_arguments(tmp_path: Path, args: list[str],
                                                       needle: str) -> None:
    proc = await _spawn(["run", "--server", "http://127.0.0.1:9/v1/stream", "--subscription",
                         "s", "--wake-stream", "w", "--pattern", "e/*", "--handler", "m:f",
                         *args], tmp_path)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert needle in err.decode()
    assert "Traceback" not in err.decode()


@pytest.mark.ds_server_options(long_poll_timeout=1.0)
async def test_probes_and_metrics_while_the_reference_server_stops_and_restarts(
        real_ds_server: Any) -> None:
    srv = real_ds_server
    seen: set[int] = set()

    async def record(wake: Any) -> None:
        for stream in wake.streams:
            async for message in wake.messages(stream.path):
                seen.add(message["n"])

    worker = make_worker(srv, handler=record)
    async with serving(worker) as health:
        base = health.url

        async def ready() -> bool:
            return (await get(base + "/readyz"))[0] == 200

        async def not_ready() -> bool:
            return not await ready()

        await _until(ready, timeout=20)
        await srv.create_stream("events/a")
        await srv.append("events/a", {"n": 1})
        await acked_to_tail(srv, "events/a")

        await srv.stop()
        await _until(not_ready, timeout=20)
        status, live = await get(base + "/livez")
        assert status == 200 and live["live"] is True  # the outage is not ours
        await srv.start()  # same port, same data directory
        await _until(ready, timeout=30)
        await srv.append("events/a", {"n": 2})  # handled after the restart
        await eventually(lambda: 2 in seen, timeout=30)
        assert 1 in seen

        status, text = await get(base + "/metrics")
    m = {(s.name, tuple(sorted(s.labels.items()))): s.value
         for f in text_string_to_metric_families(text) for s in f.samples}
    assert m[("pullwake_reconnects_total", ())] >= 1
    assert m[("pullwake_lifecycle_state", (("state", "streaming"),))] == 1
    assert 1 <= m[("pullwake_acks_total", ())] <= worker.stats.wakes_acked
    # After the restart the message comes by a claim or, if the server forgot the
    # subscription, as a recovered range: either way it is counted.
    assert (m[("pullwake_wakes_handled_total", ())]
            + m[("pullwake_recovered_wakes_total", ())]) >= 2
    failed = sum(v for (name, labels), v in m.items()
                 if name == "pullwake_heartbeats_total" and ("result", "failed") in labels)
    assert failed >= 1
