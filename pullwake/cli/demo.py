"""``pullwake demo``: a scripted story a newcomer can watch, with no node needed.

This module owns the demo only. It starts the embedded Durable Streams server
(:mod:`pullwake.testing.server`), one :class:`~pullwake.worker.Worker` and a
producer, then plays three acts — normal work, a hung server, a restarted
server — printing every lifecycle transition as it happens, and ends with a
summary that checks nothing was lost: every appended message was handled and
every stream's acked offset reached its tail. Exit status 0 means it held.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, TextIO

from pullwake.testing.server import EmbeddedServer
from pullwake.worker import Wake, Worker

__all__ = ["run_demo"]

STREAMS = [f"events/{name}" for name in ("orders", "payments", "emails", "audit")]


class _Story:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def say(self, who: str, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f}s] {who:<8} {text}", file=self.out, flush=True)

    def act(self, title: str) -> None:
        print(f"\n== {title}", file=self.out, flush=True)


async def _wait(predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def run_demo(*, verbose: bool = False, out: TextIO = sys.stdout) -> int:
    story = _Story(out)
    appended: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    duplicates = 0

    async def handle(wake: Wake) -> None:
        nonlocal duplicates
        count = 0
        for stream in wake.streams:
            async for message in wake.messages(stream.path):
                key = (stream.path, int(message["n"]))
                if key in seen:
                    duplicates += 1
                seen.add(key)
                count += 1
        kind = "recovered range" if wake.recovered else f"wake #{wake.generation}"
        story.say("handler", f"{kind}: {count} message(s) from "
                             f"{', '.join(s.path for s in wake.streams)}")

    async def produce(n: int) -> None:
        for i in range(n):
            path = STREAMS[i % len(STREAMS)]
            seq = appended.get(path, 0)
            appended[path] = seq + 1
            await server.append(path, {"n": seq, "at": time.time()})

    def all_handled() -> bool:
        return all((p, i) in seen for p, c in appended.items() for i in range(c))

    print("pullwake demo: an embedded Durable Streams server, one worker, one producer.\n"
          "Watch the lifecycle: stopped -> connecting -> streaming, then a hang and a restart.",
          file=out)
    server = EmbeddedServer(long_poll_timeout=1.0)
    await server.start()
    story.say("server", f"listening on {server.url} (embedded; streams under /v1/stream)")
    worker = Worker(
        server=server.stream_root, subscription="demo", wake_stream="wake/pool",
        pattern="events/*", worker_name="demo-worker", handler=handle, claim_lease=3.0,
        heartbeat_interval=1.0, request_timeout=0.5, connect_timeout=1.0,
        read_idle_timeout=2.0,
        on_error=lambda e: story.say("error", f"{type(e).__name__}: {e}"),
    )

    def transition(source: str, event: str, dest: str, kind: str) -> None:
        if kind != "ignored" and (kind == "transition" or verbose):
            story.say("worker", f"{source} --{event}--> {dest}")

    worker.runner.observe(transition)
    ok = False
    try:
        for path in STREAMS:
            await server.create_stream(path)
        await worker.start()
        await _wait(lambda: worker.runner.status == "streaming", 5)

        story.act("Act 1: the producer appends 40 messages to 4 streams")
        await produce(40)
        await _wait(all_handled, 10)
        story.say("check", f"handled {len(seen)}/{sum(appended.values())} messages")

        story.act("Act 2: the server hangs (it accepts connections and answers nothing)")
        server.pause()
        await produce(20)
        story.say("producer", "appended 20 more while the server is hung")
        await _wait(lambda: worker.runner.status != "streaming", 6)
        story.say("health", f"status={worker.runner.status}, last_error="
                            f"{worker.runner.health().last_error}")
        await asyncio.sleep(1.0)
        server.resume()
        story.say("server", "answers again")
        await _wait(lambda: worker.runner.status == "streaming", 10)
        await _wait(all_handled, 10)
        story.say("check", f"handled {len(seen)}/{sum(appended.values())} messages")

        story.act("Act 3: the server restarts (streams kept, subscriptions forgotten)")
        await server.restart()
        await produce(20)
        story.say("producer", "appended 20 more right after the restart")
        await _wait(lambda: worker.stats.subscriptions_recreated >= 1, 10)
        await _wait(lambda: worker.runner.status == "streaming", 10)
        await produce(20)
        await _wait(all_handled, 10)
        await _wait(lambda: worker.stats.jobs_active == 0, 5)

        story.act("Summary")
        state = await server.subscription_state("demo") or {}
        acked = {s["path"]: s["acked_offset"] for s in state.get("streams", [])}
        tails = {p: await server.tail_offset(p) for p in STREAMS}
        lost = [(p, i) for p, c in appended.items() for i in range(c) if (p, i) not in seen]
        behind = [p for p in STREAMS if acked.get(p, "-1") < tails[p]]
        h = worker.health()
        print(f"  appended   {sum(appended.values())} messages to {len(STREAMS)} streams", file=out)
        print(f"  handled    {len(seen)} distinct ({duplicates} repeated, at-least-once)", file=out)
        print(f"  lost       {len(lost)}", file=out)
        print(f"  acked      {len(STREAMS) - len(behind)}/{len(STREAMS)} streams up to their tail",
              file=out)
        print(f"  reconnects {h['reconnect_count']}, subscriptions re-created "
              f"{h['worker']['subscriptions_recreated']}, elapsed "
              f"{time.monotonic() - story.t0:.1f}s", file=out)
        ok = not lost and not behind
        print("  result     " + ("OK: nothing was lost" if ok else "FAILED"), file=out)
    finally:
        try:
            await asyncio.wait_for(worker.stop(), 10)
        finally:
            await server.stop()
    return 0 if ok else 1
