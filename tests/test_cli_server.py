"""`pullwake run` and `pullwake subscriptions` mistakes that need a server: real processes.

The worker runs as a child process against a server in this process (the
embedded one, or the reference server where the answer depends on it), on
127.0.0.1. Every wait is for an event (a log line, a file, a server state).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from runner_helpers import eventually

from pullwake.testing import EmbeddedServer
from pullwake.testing.interface import DurableStreamsServer

pytestmark = pytest.mark.timeout(60)

HANDLER = textwrap.dedent('''
    import asyncio, json, os
    from pathlib import Path

    OUT = Path(os.environ["PW_OUT"])

    async def handle(wake):
        with OUT.open("a") as f:
            for stream in wake.streams:
                async for message in wake.messages(stream.path):
                    f.write(json.dumps({"sub": wake.subscription_id, "m": message}) + "\\n")

    async def stuck(wake):
        OUT.write_text("started")
        await asyncio.Event().wait()   # never finishes by itself
''')


class Child:
    """A `python -m pullwake ...` process whose stderr is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._pump = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def saw(self, needle: str, timeout: float = 30) -> None:
        await eventually(lambda: needle in self.text or self.proc.returncode is not None,
                         timeout=timeout, message=needle)
        assert needle in self.text, self.text

    async def wait(self, timeout: float = 40) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._pump, 10)
        return rc

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)


@contextlib.asynccontextmanager
async def child(args: list[str], cwd: Path, env: dict[str, str] | None = None
                ) -> AsyncIterator[Child]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PULLWAKE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pullwake", *args, cwd=str(cwd), env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    c = Child(proc)
    try:
        yield c
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        c._pump.cancel()


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "my_handlers.py").write_text(HANDLER)
    return tmp_path


def run_args(server: str, *extra: str, handler: str = "my_handlers:handle") -> list[str]:
    return ["run", "--server", server, "--subscription", "sub1", "--pattern", "events/*",
            "--handler", handler, "--worker", "w1", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ server root


@pytest.mark.parametrize("suffix", ["", "/", "/v1"])
async def test_run_refuses_a_wrong_server_root(ds_server: DurableStreamsServer, cwd: Path,
                                               suffix: str) -> None:
    async with child(run_args(ds_server.url + suffix), cwd, {"PW_OUT": str(cwd / "o")}) as c:
        rc = await c.wait()
    assert rc == 2, c.text
    assert "--server:" in c.text and "not a Durable Streams stream root" in c.text
    assert f"the stream root is usually {ds_server.stream_root}" in c.text
    assert "Traceback" not in c.text
    assert await ds_server.subscription_state("sub1") is None


async def test_subscriptions_commands_refuse_a_wrong_server_root(cwd: Path) -> None:
    async with EmbeddedServer() as srv:
        for cmd in (["list", "--subscription", "s", "--pattern", "e/*"], ["show", "s"],
                    ["delete", "s"]):
            async with child(["subscriptions", *cmd, "--server", srv.url + "/v1"], cwd) as c:
                assert await c.wait() == 2, c.text
            assert f"the stream root is usually {srv.stream_root}" in c.text, cmd


# ------------------------------------------------------------- start-up errors


async def test_conflicting_subscription_names_the_delete_command(cwd: Path) -> None:
    async with EmbeddedServer() as srv:
        async with aiohttp.ClientSession() as s:
            await s.put(srv.stream_root + "/__ds/subscriptions/sub1",
                        json={"type": "pull-wake", "pattern": "other/*",
                              "wake_stream": "wake/pool", "lease_ttl_ms": 5000})
        async with child(run_args(srv.stream_root), cwd, {"PW_OUT": str(cwd / "o")}) as c:
            assert await c.wait() == 1, c.text
        assert "SUBSCRIPTION_ALREADY_EXISTS" in c.text
        assert f"pullwake subscriptions delete --server {srv.stream_root} sub1" in c.text


async def test_a_closed_wake_stream_is_reported_as_closed(ds_server: DurableStreamsServer,
                                                          cwd: Path) -> None:
    async with aiohttp.ClientSession() as s:
        url = ds_server.stream_root + "/wake/pool"
        async with s.put(url, headers={"content-type": "application/json"}) as r:
            assert r.status in (200, 201)
        async with s.post(url, headers={"content-type": "application/json",
                                        "Stream-Closed": "true"}) as r:
            assert r.status in (200, 204)
    async with child(run_args(ds_server.stream_root), cwd, {"PW_OUT": str(cwd / "o")}) as c:
        assert await c.wait() == 1, c.text
    assert "stream 'wake/pool' is closed" in c.text, c.text
    assert "different configuration" not in c.text


async def test_a_wake_stream_closed_while_running_is_reported_and_exits_1(cwd: Path) -> None:
    async with EmbeddedServer() as srv:
        async with child(run_args(srv.stream_root), cwd, {"PW_OUT": str(cwd / "o")}) as c:
            await c.saw("connecting --CONNECTED--> streaming")
            async with aiohttp.ClientSession() as s:
                async with s.post(srv.stream_root + "/wake/pool",
                                  headers={"content-type": "application/json",
                                           "Stream-Closed": "true"}) as r:
                    assert r.status in (200, 204)
            assert await c.wait() == 1, c.text
    assert "stopping (runner stopped itself)" in c.text
    assert "the wake stream was closed by the server" in c.text
    assert "Traceback" not in c.text


async def test_run_waits_for_a_server_that_is_not_up_yet(cwd: Path) -> None:
    port = _free_port()
    out = cwd / "handled.jsonl"
    async with child(run_args(f"http://127.0.0.1:{port}/v1/stream", "--start-timeout", "60"),
                     cwd, {"PW_OUT": str(out)}) as c:
        await c.saw("waiting for the server")
        assert "--start-timeout" in c.text
        async with EmbeddedServer(port=port) as srv:
            await eventually(lambda: srv.subscriptions.subscriptions.get("sub1") is not None,
                             timeout=40)
            await srv.create_stream("events/a")
            await srv.append("events/a", {"n": 1})
            await eventually(lambda: out.exists() and out.read_text(), timeout=20)
            c.signal(signal.SIGTERM)
            assert await c.wait() == 0, c.text
    assert json.loads(out.read_text().splitlines()[0])["m"] == {"n": 1}


async def test_run_gives_up_after_start_timeout(cwd: Path) -> None:
    port = _free_port()
    async with child(run_args(f"http://127.0.0.1:{port}/v1/stream", "--start-timeout", "1"),
                     cwd, {"PW_OUT": str(cwd / "o")}) as c:
        assert await c.wait() == 1, c.text
    assert "waiting for the server" in c.text
    assert "did not answer within --start-timeout 1 s" in c.text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_aborts_start_up_against_a_server_that_never_answers(
        cwd: Path, sig: signal.Signals) -> None:
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        accepted.set()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with child(run_args(f"http://127.0.0.1:{port}/v1/stream"), cwd,
                         {"PW_OUT": str(cwd / "o")}) as c:
            await asyncio.wait_for(accepted.wait(), 30)
            c.signal(sig)
            rc = await c.wait()
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
    assert rc == 0, c.text
    # Stopped by the signal, not by the request timing out first.
    assert f"stopped during start-up (signal {sig.name})" in c.text, c.text
    assert "cannot start" not in c.text and "timed out" not in c.text
    assert "Traceback" not in c.text


async def test_stop_announces_the_grace_and_a_second_signal_ends_it(cwd: Path) -> None:
    marker = cwd / "started"
    async with EmbeddedServer() as srv:
        async with child(run_args(srv.stream_root, "--stop-grace", "600",
                                  handler="my_handlers:stuck"), cwd, {"PW_OUT": str(marker)}) as c:
            await c.saw("connecting --CONNECTED--> streaming")
            await srv.create_stream("events/a")
            await srv.append("events/a", {"n": 1})
            await eventually(marker.exists, timeout=20)
            c.signal(signal.SIGTERM)
            await c.saw("waiting up to 600 s for 1 running handler(s)")
            assert "signal again to stop them now" in c.text
            c.signal(signal.SIGINT)
            assert await c.wait() == 0, c.text
        assert "second signal: ending the stop grace" in c.text
        internals = srv.subscription_internals("sub1")
        assert internals is not None and internals["holder"] is None  # the claim was released
        state = await srv.subscription_state("sub1")
        assert state is not None
        assert state["streams"][0]["acked_offset"] != await srv.tail_offset("events/a")


# ------------------------------------------------------- several subscriptions


async def test_config_file_runs_several_subscriptions_in_one_worker(cwd: Path) -> None:
    out = cwd / "handled.jsonl"
    async with EmbeddedServer() as srv:
        (cwd / "run.toml").write_text(textwrap.dedent(f"""\
            server = "{srv.stream_root}"
            handler = "my_handlers:handle"
            worker = "w-file"

            [[subscription]]
            id = "orders"
            pattern = "orders/*"

            [[subscription]]
            id = "audit"
            streams = ["audit/main"]
            claim_lease = 120
        """))
        async with child(["run", "--config", "run.toml"], cwd, {"PW_OUT": str(out)}) as c:
            await c.saw("connecting --CONNECTED--> streaming")
            for path in ("orders/1", "audit/main"):
                await srv.create_stream(path)
            await srv.append("orders/1", {"o": 1})
            await srv.append("audit/main", {"a": 1})
            await eventually(lambda: out.exists() and len(out.read_text().splitlines()) >= 2,
                             timeout=20)
            c.signal(signal.SIGTERM)
            assert await c.wait() == 0, c.text
        audit = await srv.subscription_state("audit")
        assert audit is not None and audit["lease_ttl_ms"] == 120_000
    handled = {json.loads(x)["sub"] for x in out.read_text().splitlines()}
    assert handled == {"orders", "audit"}


# --------------------------------------------------------- subscriptions CLI


async def test_subscriptions_list_show_delete(cwd: Path) -> None:
    async with EmbeddedServer() as srv:
        await srv.create_stream("orders/1")  # linked (at its tail) when the subscription is made
        async with aiohttp.ClientSession() as s:
            for sub_id, lease in (("orders", 30_000), ("audit", 60_000)):
                async with s.put(srv.stream_root + f"/__ds/subscriptions/{sub_id}",
                                 json={"type": "pull-wake", "pattern": f"{sub_id}/*",
                                       "wake_stream": "wake/pool", "lease_ttl_ms": lease}) as r:
                    assert r.status == 201
        (cwd / "run.toml").write_text(textwrap.dedent(f"""\
            server = "{srv.stream_root}"
            handler = "my_handlers:handle"
            [[subscription]]
            id = "orders"
            pattern = "orders/*"
            [[subscription]]
            id = "audit"
            pattern = "audit/*"
            [[subscription]]
            id = "billing"
            pattern = "billing/*"
        """))
        async with child(["subscriptions", "list", "--config", "run.toml"], cwd) as c:
            assert await c.wait() == 0, c.text
            out = (await c.proc.stdout.read()).decode() if c.proc.stdout else ""
        lines = {line.split(":", 1)[0]: line for line in out.splitlines()}
        assert "matches this configuration" in lines["orders"], out
        assert "DIFFERS" in lines["audit"] and "claim lease 60 s on the server, 30 s here" in \
            lines["audit"], out
        assert "not on the server" in lines["billing"], out

        async with child(["subscriptions", "show", "orders", "--server", srv.stream_root],
                         cwd) as c:
            assert await c.wait() == 0, c.text
            shown = json.loads((await c.proc.stdout.read()).decode()) if c.proc.stdout else {}
        assert shown["id"] == "orders" and shown["pattern"] == "orders/*"

        async with child(["subscriptions", "show", "nope", "--server", srv.stream_root],
                         cwd) as c:
            assert await c.wait() == 1
        assert "no subscription 'nope'" in c.text

        async with child(["subscriptions", "delete", "orders", "nope"], cwd,
                         {"PULLWAKE_SERVER": srv.stream_root}) as c:
            assert await c.wait() == 0, c.text
            out = (await c.proc.stdout.read()).decode() if c.proc.stdout else ""
        assert "deleted orders" in out and "orders/1@" in out, out
        assert "nope: not on the server (nothing to delete)" in out
        assert await srv.subscription_state("orders") is None
        assert await srv.subscription_state("audit") is not None
