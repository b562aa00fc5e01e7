"""Install, start and control the Durable Streams reference server for tests.

This module owns the node side of pullwake's end-to-end tests: starting
``@durable-streams/server`` (pinned to :data:`DS_SERVER_VERSION`) through the
shipped ``ds_server_launch.mjs`` on 127.0.0.1, the :class:`RealServer` handle
(url, restart on the same port, kill, fault injection through the server's own
``/_test/inject-error`` route, producer-side helpers) and the command line.
Installing it with npm is :mod:`pullwake.testing._install`'s
(:func:`ensure_installed`, :func:`find_installed`, :func:`install_dir`, ...),
re-exported here, where tests, CI and the docs import them.

It must not import pullwake's runtime modules, and importing it must not need
node: node and npm are looked up only when something is installed or started.

Command line (used by CI)::

    python -m pullwake.testing.realserver install   # npm install into install_dir()
    python -m pullwake.testing.realserver where     # print the entry path, exit 1 if absent
    python -m pullwake.testing.realserver serve [--port N] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from pullwake.testing._faults import inject_body
from pullwake.testing._install import (
    DS_SERVER_VERSION,
    PACKAGE,
    STDERR_TAIL_LINES,
    RealServerError,
    ensure_installed,
    find_installed,
    install_dir,
    launcher_path,
    node_executable,
)

__all__ = [
    "DS_SERVER_VERSION",
    "RealServer",
    "RealServerError",
    "ensure_installed",
    "find_installed",
    "install_dir",
    "launcher_path",
    "node_executable",
]

#: Route of the reference server's built-in fault injection (POST adds, DELETE clears).
INJECT_ERROR_ROUTE = "/_test/inject-error"


class RealServer:
    """One ``@durable-streams/server`` process on 127.0.0.1.

    Use it as ``async with RealServer(data_dir=tmp_path) as srv:`` (or call
    :meth:`start_sync` / :meth:`stop_sync` from synchronous code). Without
    ``data_dir`` streams live in memory and are lost on :meth:`restart`; with it
    they are file-backed and survive. Subscriptions never survive a restart.
    """

    kind = "real"

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        port: int = 0,
        long_poll_timeout: float | None = None,
        cursor_interval_seconds: int | None = None,
        compression: bool | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 6.0,
        server_module: str | os.PathLike[str] | None = None,
        node: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.long_poll_timeout = long_poll_timeout
        self.cursor_interval_seconds = cursor_interval_seconds
        self.compression = compression
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._port = port
        self._server_module = Path(server_module) if server_module else None
        self._node = node
        self._extra_env = dict(env or {})
        self._proc: subprocess.Popen[str] | None = None
        self._url: str | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stdout_lines: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        if self._url is None:
            raise RealServerError("the reference server is not started")
        return self._url

    @property
    def stream_root(self) -> str:
        return self.url + "/v1/stream"

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    # -------------------------------------------------------------- sync lifecycle

    def start_sync(self) -> str:
        """Start node and wait for its ready line; return the base URL."""
        with self._lock:
            if self.running:
                raise RealServerError("the reference server is already running")
            node = self._node or node_executable()
            if node is None:
                raise RealServerError("node is not on PATH (set PULLWAKE_NODE)")
            module = self._server_module or find_installed()
            if module is None:
                raise RealServerError(
                    f"{PACKAGE}@{DS_SERVER_VERSION} is not installed in {install_dir()}; run "
                    "`python -m pullwake.testing.realserver install`"
                )
            env = dict(os.environ)
            env.update(self._extra_env)
            env["PULLWAKE_DS_SERVER_MODULE"] = str(module)
            args = [node, str(launcher_path()), "--host=127.0.0.1", f"--port={self._port}"]
            if self.data_dir is not None:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                args.append(f"--data-dir={self.data_dir}")
            if self.long_poll_timeout is not None:
                args.append(f"--long-poll-timeout-ms={round(self.long_poll_timeout * 1000)}")
            if self.cursor_interval_seconds is not None:
                args.append(f"--cursor-interval-seconds={self.cursor_interval_seconds}")
            if self.compression is not None:
                args.append(f"--compression={'1' if self.compression else '0'}")
            self._stderr_tail.clear()
            self._stdout_lines = queue.Queue()
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,
            )
            self._proc = proc
            # each pump writes to its own process's queue: the previous process's
            # pump may reach EOF after a restart began and must not signal this one
            threading.Thread(target=self._pump_stdout, args=(proc, self._stdout_lines),
                             daemon=True).start()
            threading.Thread(target=self._pump_stderr, args=(proc,), daemon=True).start()
            try:
                ready = self._wait_ready(proc)
            except BaseException:
                self._terminate(proc, graceful=False)
                self._proc = None
                raise
            self._url = str(ready["url"])
            self._port = int(ready["port"])
            return self._url

    def _wait_ready(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        deadline = time.monotonic() + self.start_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RealServerError(
                    f"reference server did not start within {self.start_timeout:.1f} s; "
                    f"node stderr:\n{self.stderr_tail()}"
                )
            try:
                line = self._stdout_lines.get(timeout=min(remaining, 0.1))
            except queue.Empty:
                continue
            if line is None:
                proc.wait(timeout=2)
                time.sleep(0.05)  # let the stderr pump catch up
                raise RealServerError(
                    f"reference server exited during start-up (code {proc.returncode}); "
                    f"node stderr:\n{self.stderr_tail()}"
                )
            try:
                ready = json.loads(line)
            except ValueError:
                continue
            if isinstance(ready, dict) and "url" in ready and "port" in ready:
                return ready

    def _pump_stdout(self, proc: subprocess.Popen[str],
                     lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        with proc.stdout:  # closed at EOF: the pipe dies with the process
            for line in proc.stdout:
                lines.put(line.strip())
        lines.put(None)

    def _pump_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                self._stderr_tail.append(line.rstrip("\n"))

    def _terminate(self, proc: subprocess.Popen[str], *, graceful: bool) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                proc.wait(timeout=self.stop_timeout if graceful else 5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def stop_sync(self) -> None:
        """SIGTERM (the launcher calls the server's stop()), wait, then SIGKILL."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                self._terminate(proc, graceful=True)

    def kill_sync(self) -> None:
        """SIGKILL: connections drop mid-body, nothing is flushed."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                self._terminate(proc, graceful=False)

    def restart_sync(self, *, graceful: bool = True) -> str:
        """Stop (or kill) and start again on the same port with the same data_dir."""
        if self._url is None:
            raise RealServerError("restart() before start()")
        (self.stop_sync if graceful else self.kill_sync)()
        deadline = time.monotonic() + 5.0
        while True:  # the old socket may linger for a moment after a kill
            try:
                return self.start_sync()
            except RealServerError as exc:
                if "EADDRINUSE" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    # ------------------------------------------------------------- async lifecycle

    async def start(self) -> str:
        return await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    async def kill(self) -> None:
        await asyncio.to_thread(self.kill_sync)

    async def restart(self, *, graceful: bool = True) -> str:
        return await asyncio.to_thread(self.restart_sync, graceful=graceful)

    async def __aenter__(self) -> RealServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __enter__(self) -> RealServer:
        self.start_sync()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_sync()

    # ------------------------------------------------------------- fault injection

    async def inject_error(self, path: str, **opts: Any) -> None:
        """Make the next ``count`` (default 1) requests to exactly ``path`` fail.

        ``path`` is the URL path without query, e.g. ``/v1/stream/wake/pool`` or
        ``/v1/stream/__ds/subscriptions/sub1/claim``. Options (python or camelCase):
        ``status``, ``retry_after``, ``count``, ``delay_ms``, ``jitter_ms``,
        ``drop_connection``, ``truncate_body_bytes``, ``corrupt_body``,
        ``probability``, ``method``, ``inject_sse_event``. One fault per path: a
        second call for the same path replaces the first.
        """
        body = inject_body(path, opts)
        async with aiohttp.ClientSession() as session, session.post(
            self.url + INJECT_ERROR_ROUTE, json=body
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RealServerError(f"inject-error answered {resp.status}: {text}")

    async def clear_injected_errors(self) -> None:
        """Forget every injected fault (``DELETE /_test/inject-error``)."""
        async with aiohttp.ClientSession() as session, session.delete(
            self.url + INJECT_ERROR_ROUTE
        ) as resp:
            if resp.status != 200:
                raise RealServerError(f"clearing faults answered {resp.status}")


    # ---------------------------------------------------------- producer helpers

    def _stream_url(self, path: str) -> str:
        return self.url + path if path.startswith("/") else f"{self.stream_root}/{path}"

    async def create_stream(self, path: str, content_type: str = "application/json") -> None:
        async with aiohttp.ClientSession() as session, session.put(
            self._stream_url(path), headers={"Content-Type": content_type}
        ) as resp:
            if resp.status not in (200, 201):
                raise RealServerError(f"create {path}: {resp.status} {await resp.text()}")

    async def append(self, path: str, value: Any) -> str:
        """POST a JSON value (an array is one message of its elements); return its offset."""
        async with aiohttp.ClientSession() as session, session.post(
            self._stream_url(path), data=json.dumps(value),
            headers={"Content-Type": "application/json"},
        ) as resp:
            if resp.status != 204:
                raise RealServerError(f"append {path}: {resp.status} {await resp.text()}")
            return resp.headers["Stream-Next-Offset"]

    async def read_all(self, path: str) -> list[Any]:
        async with aiohttp.ClientSession() as session, session.get(
            self._stream_url(path), params={"offset": "-1"}
        ) as resp:
            if resp.status != 200:
                raise RealServerError(f"read {path}: {resp.status} {await resp.text()}")
            return list(await resp.json())

    async def tail_offset(self, path: str) -> str:
        async with aiohttp.ClientSession() as session, session.head(
            self._stream_url(path)
        ) as resp:
            if resp.status != 200:
                raise RealServerError(f"head {path}: {resp.status}")
            return resp.headers["Stream-Next-Offset"]

    async def subscription_state(self, sub_id: str) -> dict[str, Any] | None:
        """The ``GET`` body of a subscription, or None if it does not exist."""
        async with aiohttp.ClientSession() as session, session.get(
            f"{self.stream_root}/__ds/subscriptions/{sub_id}"
        ) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise RealServerError(f"subscription {sub_id}: {resp.status}")
            body = await resp.json()
            return dict(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pullwake.testing.realserver")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help=f"npm install {PACKAGE}@{DS_SERVER_VERSION}")
    sub.add_parser("where", help="print the installed entry point")
    serve = sub.add_parser("serve", help="run a server in the foreground")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--data-dir", default=None)
    serve.add_argument("--long-poll-timeout", type=float, default=None, help="seconds")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print(ensure_installed())
        elif args.command == "where":
            found = find_installed()
            if found is None:
                print(f"not installed in {install_dir()}", file=sys.stderr)
                return 1
            print(found)
        else:
            srv = RealServer(port=args.port, data_dir=args.data_dir,
                             long_poll_timeout=args.long_poll_timeout)
            with srv:
                print(json.dumps({"url": srv.url, "stream_root": srv.stream_root}), flush=True)
                try:
                    while srv.running:
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    pass
    except RealServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
