"""Producer child for bench_scaling.py: appends small JSON messages on command.

Runs in its own process so its CPU is neither the client's nor the server's.
Commands are JSON lines on stdin, each answered by one JSON line on stdout:

- ``{"cmd": "produce", "urls": [...], "rate": R, "inflight": K}``: append
  ``{"t": <time.monotonic()>, "n": n}`` round-robin to the stream URLs at ``R``
  appends/s in total, at most ``K`` requests in flight (a slow server slows
  it down, never queues without bound); answers ``{"ok": true}`` at once;
- ``{"cmd": "produce", "urls": [...], "backlog": B, "counters": FILE}``: keep
  every stream busy at the least cost to the server: append to stream ``i``
  (one request at a time per stream) whenever fewer than ``B`` of its
  messages are unconsumed. ``FILE`` holds one int64 per stream, the messages
  the consumer has read (it writes, this process only reads);
- ``{"cmd": "stop"}``: stop and wait for the requests in flight; answers
  ``{"appended": n, "failed": f, "cpu": seconds}``.

It exits when stdin closes. ``time.monotonic()`` is CLOCK_MONOTONIC, shared by
every process on Linux, so a consumer can compute append -> handler latency.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import sys
import time
from typing import Any

import aiohttp

JSON = {"content-type": "application/json"}


class Producer:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.task: asyncio.Task[None] | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self.appended = 0
        self.failed = 0

    async def _one(self, url: str, body: bytes, sem: asyncio.Semaphore) -> None:
        try:
            async with self.session.post(url, data=body, headers=JSON) as resp:
                await resp.read()
                if resp.status == 204:
                    self.appended += 1
                else:
                    self.failed += 1
        except (aiohttp.ClientError, OSError):
            self.failed += 1
        finally:
            sem.release()

    async def _run(self, urls: list[str], rate: float, inflight: int) -> None:
        sem = asyncio.Semaphore(inflight)
        start = time.monotonic()
        n = 0
        while True:
            due = start + n / rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 1.0:  # fell behind (slow server): do not burst to catch up
                start += now - due
            await sem.acquire()
            body = json.dumps({"t": time.monotonic(), "n": n}).encode()
            task = asyncio.ensure_future(self._one(urls[n % len(urls)], body, sem))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
            n += 1

    async def _keep_busy(self, urls: list[str], backlog: int, counters: str) -> None:
        with open(counters, "r+b") as fh, mmap.mmap(fh.fileno(), 8 * len(urls)) as mem:  # noqa: ASYNC230 - opened once per run
            consumed = memoryview(mem).cast("q")
            try:
                appended = [0] * len(urls)
                busy = [False] * len(urls)
                sem = asyncio.Semaphore(len(urls))

                def done(i: int) -> None:
                    busy[i] = False

                while True:
                    for i, url in enumerate(urls):
                        if not busy[i] and appended[i] - consumed[i] < backlog:
                            busy[i] = True
                            appended[i] += 1
                            await sem.acquire()
                            body = json.dumps({"t": time.monotonic(), "n": appended[i]}).encode()
                            task = asyncio.ensure_future(self._one(url, body, sem))
                            self.pending.add(task)
                            task.add_done_callback(self.pending.discard)
                            task.add_done_callback(lambda _t, i=i: done(i))
                    await asyncio.sleep(0.001)
            finally:
                consumed.release()

    def start(self, urls: list[str], rate: float, inflight: int,
              backlog: int | None = None, counters: str | None = None) -> None:
        self.appended = self.failed = 0
        if backlog is not None and counters is not None:
            self.task = asyncio.ensure_future(self._keep_busy(urls, backlog, counters))
        else:
            self.task = asyncio.ensure_future(self._run(urls, rate, inflight))

    async def stop(self) -> dict[str, Any]:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
        return {"appended": self.appended, "failed": self.failed, "cpu": time.process_time()}


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as session:
        producer = Producer(session)
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            answer: dict[str, Any]
            if cmd["cmd"] == "produce":
                await producer.stop()
                producer.start(list(cmd["urls"]), float(cmd.get("rate", 0)),
                               int(cmd.get("inflight", 32)), cmd.get("backlog"),
                               cmd.get("counters"))
                answer = {"ok": True}
            elif cmd["cmd"] == "stop":
                answer = await producer.stop()
            else:
                answer = {"error": f"unknown command {cmd['cmd']!r}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main())
