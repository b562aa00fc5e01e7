"""Secrets stay secret: tokens and Authorization values never leave the request.

A runner is given ``Authorization: Bearer s3cr3t-tok3n-value`` (as a mapping, and
from an async provider) and driven through faults that produce every kind of
error: claim answers that echo the token back (in the message, in the error
code, as plain text, cut at the detail limit), heartbeat failures and
timeouts, refused and timed-out connects, wake-stream statuses echoing the
token. Everything an operator could see is collected and searched for the
token: all log records at DEBUG from every logger, every exception passed to
``on_error`` (str, repr, args and string attributes, along the whole
``__cause__`` / ``__context__`` chain), ``health().to_dict()`` as JSON, and the
heartbeat bodies (diagnostics) the server received.

Hostile runner ids must stay inside their one path segment on every URL.

Sockets only on 127.0.0.1, port 0; timeouts on a ManualClock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from runner_helpers import RecordingRuntime, eventually, make_runner, started, wake, wake_requests

from pullwake import (
    ConnectError,
    ControlPlaneError,
    PullWakeRunner,
    RequestTimeout,
    StreamStatusError,
    WakeEvent,
)
from pullwake.testing import ClaimAnswer, EmbeddedServer
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(30)

TOKEN = "s3cr3t-tok3n-value"
AUTH = f"Bearer {TOKEN}"
NEEDLES = (TOKEN, "s3cr3t", "tok3n")
WAKE_PATH = "/runners/r1/wake"
HEARTBEAT_PATH = "/_electric/runners/r1/heartbeat"
CLAIM_PATH = "/_electric/runners/r1/claim"


@pytest.fixture
async def server():
    async with EmbeddedServer() as srv:
        yield srv


def _static() -> dict[str, str]:
    return {"Authorization": AUTH}


async def _async_provider() -> dict[str, str]:
    return {"Authorization": AUTH, "X-Api-Key": TOKEN}


def _sync_provider() -> dict[str, str]:
    return {"Authorization": AUTH}


HEADERS: dict[str, Callable[[], Any]] = {
    "mapping": lambda: _static(),
    "async-provider": lambda: _async_provider,
    "sync-provider": lambda: _sync_provider,
}


def exception_texts(exc: BaseException) -> Iterator[str]:
    """Every text an exception (and its cause / context chain) can show."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield str(e)
        yield repr(e)
        yield from (repr(a) for a in e.args)
        yield from (repr(v) for v in vars(e).values() if isinstance(v, (str, int, type(None))))
        todo += [e.__cause__, e.__context__]


def assert_clean(texts: list[str], where: str) -> None:
    for text in texts:
        for needle in NEEDLES:
            assert needle not in text, f"{needle!r} leaked in {where}: {text[:300]!r}"


def everything_visible(runner: PullWakeRunner, server: EmbeddedServer,
                       errors: list[BaseException], caplog: pytest.LogCaptureFixture,
                       ) -> dict[str, list[str]]:
    return {
        "logs": [caplog.text] + [r.getMessage() for r in caplog.records]
        + [str(r.args) for r in caplog.records],
        "on_error": [t for e in errors for t in exception_texts(e)],
        "health": [json.dumps(runner.health().to_dict())],
        "heartbeat bodies": [r.body.decode("utf-8", "replace")
                             for r in server.requests_matching("/heartbeat")],
        "claim bodies": [r.body.decode("utf-8", "replace")
                         for r in server.requests_matching("/claim")],
        "request urls": [r.path + "?" + json.dumps(r.query) for r in server.requests],
    }


def check_everything(runner: PullWakeRunner, server: EmbeddedServer,
                     errors: list[BaseException], caplog: pytest.LogCaptureFixture) -> None:
    for where, texts in everything_visible(runner, server, errors, caplog).items():
        assert_clean(texts, where)


def echo(status: int, shape: str) -> ClaimAnswer:
    """An error answer whose body echoes the token back in ``shape``."""
    if shape == "message":
        return ClaimAnswer(status, {"message": f"bad credentials: Authorization: {AUTH}"})
    if shape == "code":
        return ClaimAnswer(status, {"error": {"code": TOKEN, "message": "x"}})
    if shape == "top-code":
        return ClaimAnswer(status, {"code": AUTH})
    if shape == "text":
        return ClaimAnswer(status, f"you sent {TOKEN}")
    if shape == "cut":  # the token straddles the 200-character detail limit
        return ClaimAnswer(status, "x" * 190 + TOKEN + "y" * 50)
    raise AssertionError(shape)


SHAPES = ["message", "code", "top-code", "text", "cut"]


# --------------------------------------------------------------------- claims


@pytest.mark.parametrize("headers", list(HEADERS))
@pytest.mark.parametrize("shape", SHAPES)
async def test_claim_errors_echoing_the_token(server: EmbeddedServer,
                                              caplog: pytest.LogCaptureFixture,
                                              shape: str, headers: str) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    server.program_claims(echo(500, shape), echo(401, shape), echo(409, shape))
    runner = make_runner(server, RecordingRuntime(), headers=HEADERS[headers](),
                         claim_headers={"Authorization": AUTH}, on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        for n in range(3):
            await server.append_runner_wake("r1", wake(f"s{n}"))
        await eventually(lambda: runner.health().claims_failed == 3)
        assert wake_requests(server)[0].headers["Authorization"] == AUTH  # it was sent
        assert server.requests_matching("/claim")[0].headers["Authorization"] == AUTH
    assert len([e for e in errors if isinstance(e, ControlPlaneError)]) == 3
    assert {e.status for e in errors if isinstance(e, ControlPlaneError)} == {500, 401, 409}
    check_everything(runner, server, errors, caplog)


# ------------------------------------------------------------------ heartbeats


@pytest.mark.parametrize("shape", SHAPES)
async def test_heartbeat_failures_echoing_the_token(server: EmbeddedServer,
                                                    caplog: pytest.LogCaptureFixture,
                                                    shape: str) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock()
    errors: list[BaseException] = []
    server.heartbeat_answer = echo(503, shape)
    runner = make_runner(server, clock=clock, headers=_async_provider, heartbeat_interval=10,
                         on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.health().reconnect_count >= 1)  # two failures: reset
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")
        await clock.advance(10)  # more heartbeats, carrying the last error as diagnostics
        await eventually(lambda: len(server.heartbeats()) >= 4)
    hb_errors = [e for e in errors if isinstance(e, ControlPlaneError)]
    assert len(hb_errors) >= 2 and all(e.operation == "heartbeat" for e in hb_errors)
    assert any(hb["diagnostics"]["last_error"] for hb in server.heartbeats())
    check_everything(runner, server, errors, caplog)


async def test_hung_heartbeat_timeouts(server: EmbeddedServer,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock()
    errors: list[BaseException] = []
    hang = server.hang(HEARTBEAT_PATH)
    runner = make_runner(server, clock=clock, headers=_async_provider, heartbeat_interval=10,
                         request_timeout=2, on_error=errors.append)
    async with started(runner):
        for _ in range(2):
            await eventually(lambda: 2.0 in clock.pending)
            await clock.advance(2)
        await eventually(lambda: runner.status == "reconnecting")
        server.remove_fault(hang)
        await clock.advance(1)
        await eventually(lambda: runner.health().last_heartbeat_ok)
    assert [type(e) for e in errors][:2] == [RequestTimeout, RequestTimeout]
    check_everything(runner, server, errors, caplog)


# ------------------------------------------------------------------- wake stream


@pytest.mark.parametrize("live", ["sse", "long-poll"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_wake_stream_statuses_echoing_the_token(server: EmbeddedServer,
                                                      caplog: pytest.LogCaptureFixture,
                                                      shape: str, live: str) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock()
    errors: list[BaseException] = []
    answer = echo(401, shape)
    server.fail(WAKE_PATH, 401, body=answer.body, count=1)
    runner = make_runner(server, clock=clock, live=live, headers=_async_provider,
                         heartbeat_interval=None, on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.status == "reconnecting")
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")
    assert isinstance(errors[0], StreamStatusError) and errors[0].status == 401
    check_everything(runner, server, errors, caplog)


async def test_connect_failures_refused_and_timed_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock()
    errors: list[BaseException] = []
    async with EmbeddedServer() as server:
        server.hang(WAKE_PATH)
        runner = make_runner(server, clock=clock, headers={"Authorization": AUTH},
                             heartbeat_interval=10, connect_timeout=3, request_timeout=2,
                             heartbeat_failures_before_reset=100, on_error=errors.append)
        runner.start()
        await eventually(lambda: 3.0 in clock.pending)
        await clock.advance(3)  # connect timeout (the heartbeat times out on the way)
        await eventually(lambda: runner.status == "reconnecting")
        await server.kill()  # now refused
        await clock.advance(1)
        await eventually(lambda: any(type(e) is ConnectError for e in errors))
        await runner.stop()
        check_everything(runner, server, errors, caplog)
    kinds = {type(e).__name__ for e in errors}
    assert {"ConnectTimeout", "ConnectError"} <= kinds


async def test_on_error_raising_with_the_token_is_not_logged_with_it(
        server: EmbeddedServer, caplog: pytest.LogCaptureFixture) -> None:
    """The reporter's own failure is logged; the runner's text stays scrubbed."""
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []

    def reporter(err: BaseException) -> None:
        errors.append(err)

    server.program_claims(echo(500, "message"))
    runner = make_runner(server, headers={"Authorization": AUTH}, on_error=reporter)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: runner.health().claims_failed == 1)
    check_everything(runner, server, errors, caplog)


async def test_health_and_diagnostics_after_every_kind_of_error(
        server: EmbeddedServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock()
    errors: list[BaseException] = []
    server.program_claims(echo(500, "code"))
    server.fail(WAKE_PATH, 503, body={"code": TOKEN}, count=1)
    server.heartbeat_answer = echo(500, "text")
    runner = make_runner(server, clock=clock, headers=_async_provider, heartbeat_interval=10,
                         heartbeat_failures_before_reset=100, on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.status == "reconnecting")
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1"))
        await eventually(lambda: runner.health().claims_failed == 1)
        await clock.advance(10)
        await eventually(lambda: len(server.heartbeats()) >= 3)
        h = runner.health().to_dict()
        assert h["last_error"] is not None
    kinds = {type(e).__name__ for e in errors}
    assert {"StreamStatusError", "ControlPlaneError"} <= kinds
    check_everything(runner, server, errors, caplog)


# ------------------------------------------------------------ hostile runner ids


HOSTILE = {
    "/": "%2F",
    "..": "%2E%2E",
    ".": "%2E",
    "%": "%25",
    "%2F": "%252F",
    "a b": "a%20b",
    "ünï€": "%C3%BCn%C3%AF%E2%82%AC",
    "?#": "%3F%23",
    "x?offset=0&live=no#f": "x%3Foffset%3D0%26live%3Dno%23f",
    "../../_electric/x": "..%2F..%2F_electric%2Fx",
}


@pytest.mark.parametrize("runner_id", list(HOSTILE), ids=list(HOSTILE.values()))
async def test_hostile_runner_ids_stay_in_their_segment(server: EmbeddedServer,
                                                        runner_id: str) -> None:
    seg = HOSTILE[runner_id]
    rt = RecordingRuntime()
    runner = make_runner(server, rt, runner_id=runner_id)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        runner.lifecycle.fire("WAKE", wake=WakeEvent.parse(wake("s1")))
        await eventually(lambda: len(rt.dispatched) == 1)
        await eventually(lambda: len(server.requests_matching("/heartbeat")) >= 1)
    paths = {(r.method, r.path) for r in server.requests}
    assert paths == {("GET", f"/runners/{seg}/wake"),
                     ("POST", f"/_electric/runners/{seg}/heartbeat"),
                     ("POST", f"/_electric/runners/{seg}/claim")}
    for r in server.requests:
        parts = r.path.split("/")
        segment = parts[2] if r.method == "GET" else parts[3]
        assert unquote(segment) == runner_id
        assert set(r.query) <= {"offset", "live", "cursor"}
    (read,) = wake_requests(server)
    assert read.query == {"offset": "-1", "live": "sse"}
    assert rt.claim_headers  # the runner id header travels as a header, not in a path
    claim_headers = await rt.claim_headers[0]()
    assert claim_headers["electric-runner-id"] == runner_id



async def test_url_credentials_never_logged(server: EmbeddedServer,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Userinfo in base_url becomes a Basic Authorization header: a secret too."""
    caplog.set_level(logging.DEBUG)
    clock = ManualClock()
    errors: list[BaseException] = []
    base = server.url.replace("http://", f"http://runner:{TOKEN}@")
    server.fail(WAKE_PATH, 500, count=1)
    server.heartbeat_answer = ClaimAnswer.error(503)
    runner = make_runner(server, clock=clock, base_url=base, heartbeat_interval=10,
                         heartbeat_failures_before_reset=100, on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.status == "reconnecting")
        await clock.advance(1)
        await eventually(lambda: runner.status == "streaming")
        await eventually(lambda: len(errors) >= 2)
    assert wake_requests(server)[0].headers["Authorization"].startswith("Basic ")
    check_everything(runner, server, errors, caplog)


# ------------------------------------------------- reprs and cause chains (issue 14, class 11)


def test_runner_config_repr_hides_headers_and_url_credentials() -> None:
    from pullwake import RunnerConfig

    for headers in (_static(), _async_provider):
        cfg = RunnerConfig(base_url=f"http://user:{TOKEN}@127.0.0.1:1/x", runner_id="r1",
                           headers=headers, claim_headers={"X-Api-Key": TOKEN})
        assert_clean([repr(cfg), str(cfg)], "repr(RunnerConfig)")
        assert "runner_id='r1'" in repr(cfg) and "127.0.0.1:1/x" in repr(cfg)


def test_claim_and_answer_reprs_hide_the_token() -> None:
    from pullwake.io.http import HttpAnswer
    from pullwake.protocol.answers import ItemsAnswer
    from pullwake.runtime.subscriptions import Claim

    claim = Claim.parse("sub1", {"wake_id": "w1", "generation": 1, "token": TOKEN,
                                 "streams": [], "lease_ttl_ms": 5000})
    assert claim.token == TOKEN
    body = json.dumps({"token": TOKEN}).encode()
    answer = HttpAnswer(200, {"Set-Cookie": TOKEN}, body,
                        ItemsAnswer(fields={"token": TOKEN}))
    assert_clean([repr(claim), str(claim), repr(answer), repr(answer.streamed)], "repr")
    assert "wake_id='w1'" in repr(claim)


async def _broken_proxy(token_line: bytes) -> Any:
    """A TCP server whose every answer has a malformed header line echoing the token."""
    import asyncio

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\n" + token_line + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("line", [b"X-Echo " + AUTH.encode(), b"Authorization " + AUTH.encode()],
                         ids=["echoed-bearer", "echoed-authorization"])
async def test_broken_proxy_answer_echoing_the_token_is_scrubbed_in_the_cause_chain(
        line: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp's ClientResponseError carries the request headers and the answer's
    bad line; it stays in the cause chain, scrubbed, for connect and control calls."""
    import aiohttp

    srv = await _broken_proxy(line)
    port = srv.sockets[0].getsockname()[1]
    errors: list[BaseException] = []
    clock = ManualClock()
    try:
        runner = PullWakeRunner(
            __import__("pullwake").RunnerConfig(
                base_url=f"http://127.0.0.1:{port}", runner_id="r1", headers=_static(),
                heartbeat_interval=30, clock=clock, on_error=errors.append),
            RecordingRuntime())
        with caplog.at_level(logging.DEBUG):
            async with started(runner):
                await eventually(lambda: any(isinstance(e, ConnectError) for e in errors)
                                 and any(isinstance(e, ControlPlaneError) for e in errors))
    finally:
        srv.close()
        await srv.wait_closed()
    chained = [e.__cause__ for e in errors if e.__cause__ is not None]
    assert any(isinstance(c, aiohttp.ClientResponseError) for c in chained), chained
    assert_clean([t for e in errors for t in exception_texts(e)], "on_error cause chain")
    assert_clean([caplog.text], "logs")
    assert_clean([json.dumps(runner.health().to_dict())], "health")


def test_run_help_warns_header_values_are_visible_and_offers_header_env(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from pullwake.cli.options import UsageError, resolve
    from pullwake.cli.run import add_run_commands

    parser = argparse.ArgumentParser()
    add_run_commands(parser.add_subparsers())
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    text = " ".join(run.format_help().split())
    assert "/proc/PID/cmdline" in text and "--header-env NAME=ENVVAR" in text
    argv = ["--server", "http://127.0.0.1:1/v1/stream", "--subscription", "s",
            "--wake-stream", "w", "--handler", "m:f", "--stream", "a"]
    opts = resolve(run.parse_args([*argv, "--header-env", "X-Api-Key=PULLWAKE_TEST_KEY"]),
                   environ={"PULLWAKE_TEST_KEY": TOKEN})
    assert opts.headers == {"X-Api-Key": TOKEN}
    assert opts.config is not None and opts.config.runner.headers == {"X-Api-Key": TOKEN}
    assert TOKEN not in repr(opts)
    with pytest.raises(UsageError, match="--header-env"):
        resolve(run.parse_args([*argv, "--header-env", "X-Api-Key=PULLWAKE_TEST_UNSET_VAR"]),
                environ={})
    for bad in ("X-Api-Key", "=PULLWAKE_TEST_KEY", "X-Api-Key="):
        with pytest.raises(SystemExit):
            run.parse_args([*argv, "--header-env", bad])
        assert "--header-env" in capsys.readouterr().err


async def test_run_with_header_env_sends_the_header_and_keeps_it_out_of_argv(
        tmp_path: Any) -> None:
    """A real `pullwake run` process: the header reaches the server; argv has no secret."""
    import asyncio
    import os
    import signal
    import sys

    (tmp_path / "h14.py").write_text("async def handle(wake):\n    pass\n")
    async with EmbeddedServer() as srv:
        env = {**os.environ, "PULLWAKE_TEST_KEY": TOKEN}
        argv = ["-m", "pullwake", "run", "--server", srv.stream_root, "--subscription", "sub1",
                "--wake-stream", "wake/pool", "--pattern", "events/*", "--handler", "h14:handle",
                "--worker", "w1", "--header-env", "X-Api-Key=PULLWAKE_TEST_KEY"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, cwd=str(tmp_path), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await eventually(lambda: any(r.headers.get("X-Api-Key") == TOKEN
                                         for r in srv.requests_matching("/wake/pool")),
                             timeout=30)
            from pathlib import Path

            cmdline = await asyncio.to_thread(Path(f"/proc/{proc.pid}/cmdline").read_bytes)
            assert TOKEN.encode() not in cmdline
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert TOKEN not in err.decode()
