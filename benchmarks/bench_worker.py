"""Worker throughput against the real Durable Streams server, beside a bare aiohttp loop.

One subscription has one wake in flight at a time, so a wake cycle is
sequential: append → wake event on the wake stream (SSE) → claim → catch-up
read → handler → ack done. Both sides below do exactly those requests, one
cycle after another, against the same server in the same run:

- bare: one keep-alive aiohttp session, an open SSE read of the wake stream,
  and hand-written claim / read / ack calls — the floor a worker pays;
- worker: ``pullwake.Worker`` (runner, claims, lease keeper, job, handler).

The ratio worker/bare is what matters (target ≥ 0.80). Chunks of cycles
alternate (bare, worker, bare, worker, …) so both share the machine's noise.

    python benchmarks/bench_worker.py [--cycles 300] [--embedded] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section

from pullwake import Wake, Worker


async def _server(embedded: bool, tmp: Path) -> Any:
    if embedded:
        from pullwake.testing import EmbeddedServer

        srv = EmbeddedServer()
    else:
        from pullwake.testing import RealServer

        srv = RealServer(data_dir=str(tmp / "ds"))
    await srv.start()
    return srv


class BareLoop:
    """The hand-written cycle: one keep-alive session, an open SSE wake read."""

    def __init__(self, root: str, sub: str, stream: str) -> None:
        self.root, self.sub, self.stream = root, sub, stream
        self.n = 0
        self._buf = b""

    async def setup(self, s: aiohttp.ClientSession) -> None:
        self.s = s
        root, sub = self.root, self.sub
        await s.put(f"{root}/{self.stream}", headers={"content-type": "application/json"})
        await s.put(f"{root}/wake/{sub}", headers={"content-type": "application/json"})
        r = await s.put(f"{root}/__ds/subscriptions/{sub}",
                        json={"type": "pull-wake", "streams": [self.stream],
                              "wake_stream": f"wake/{sub}", "lease_ttl_ms": 30000})
        assert r.status in (200, 201), r.status
        self.sse = await s.get(f"{root}/wake/{sub}", params={"offset": "now", "live": "sse"})

    async def _next_wake(self) -> None:
        while True:
            while b"\n\n" in self._buf:
                event, self._buf = self._buf.split(b"\n\n", 1)
                if b"event: data" in event and b'"wake"' in event:
                    return
            self._buf += await self.sse.content.readany()

    async def cycle(self) -> None:
        s, root, sub, stream = self.s, self.root, self.sub, self.stream
        self.n += 1
        async with s.post(f"{root}/{stream}", json={"n": self.n}) as r:
            assert r.status == 204
        await self._next_wake()
        async with s.post(f"{root}/__ds/subscriptions/{sub}/claim",
                          json={"worker": "bare"}) as r:
            claim = await r.json()
            assert r.status == 200, claim
        st = claim["streams"][0]
        async with s.get(f"{root}/{stream}", params={"offset": st["acked_offset"]}) as r:
            assert await r.json()
        async with s.post(f"{root}/__ds/subscriptions/{sub}/ack",
                          headers={"Authorization": f"Bearer {claim['token']}"},
                          json={"wake_id": claim["wake_id"], "generation": claim["generation"],
                                "acks": [{"stream": st["path"], "offset": st["tail_offset"]}],
                                "done": True}) as r:
            assert r.status == 200, await r.text()

    async def close(self) -> None:
        self.sse.close()


class WorkerLoop:
    """The same cycle through pullwake.Worker: append, wait for handler + ack."""

    def __init__(self, root: str, sub: str, stream: str) -> None:
        self.root, self.sub, self.stream = root, sub, stream
        self.n = 0
        self.seen = asyncio.Event()

    async def handle(self, wake: Wake) -> None:
        for st in wake.streams:
            async for _ in wake.messages(st.path):
                pass
        self.seen.set()

    async def setup(self, s: aiohttp.ClientSession) -> None:
        self.s = s
        await s.put(f"{self.root}/{self.stream}", headers={"content-type": "application/json"})
        self.worker = Worker(server=self.root, subscription=self.sub,
                             wake_stream=f"wake/{self.sub}", streams=[self.stream],
                             worker_name="bench", handler=self.handle, heartbeat_interval=30)
        await self.worker.start()
        while self.worker.runner.status != "streaming":
            await asyncio.sleep(0.01)

    async def cycle(self) -> None:
        self.n += 1
        acked = self.worker.stats.wakes_acked
        self.seen.clear()
        async with self.s.post(f"{self.root}/{self.stream}", json={"n": self.n}) as r:
            assert r.status == 204
        await self.seen.wait()
        while self.worker.stats.wakes_acked == acked:
            await asyncio.sleep(0)

    async def close(self) -> None:
        await self.worker.stop()


async def main(args: argparse.Namespace) -> None:
    import tempfile

    logging.getLogger("pullwake").setLevel(logging.ERROR)
    chunk = 20
    bare_rates: list[float] = []
    work_rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        srv = await _server(args.embedded, Path(tmp))
        try:
            root = srv.stream_root
            async with aiohttp.ClientSession() as s:
                bare = BareLoop(root, "bare", "bench/bare")
                work = WorkerLoop(root, "work", "bench/work")
                await bare.setup(s)
                await work.setup(s)
                for _ in range(5):  # warm up both
                    await bare.cycle()
                    await work.cycle()
                # Alternate chunks of cycles so both sides share the machine's noise.
                for _ in range(max(1, args.cycles // chunk)):
                    for side, rates in ((bare, bare_rates), (work, work_rates)):
                        t = time.perf_counter()
                        for _ in range(chunk):
                            await side.cycle()
                        rates.append(chunk / (time.perf_counter() - t))
                await work.close()
                await bare.close()
        finally:
            await srv.stop()
    b, w = statistics.median(bare_rates), statistics.median(work_rates)
    pairs = sorted(wr / br for wr, br in zip(work_rates, bare_rates, strict=True))
    ratio = w / b
    kind = "embedded server" if args.embedded else "reference server @durable-streams/server 0.3.7"
    verdict = "meets" if ratio >= 0.8 else "MISSES"
    body = (
        f"Command: `python benchmarks/bench_worker.py --cycles {args.cycles}"
        f"{' --embedded' if args.embedded else ''}` against the {kind} on 127.0.0.1. "
        f"{machine_line()}\n\n"
        "One subscription, sequential wake cycles (append → wake via SSE → claim → "
        "catch-up read → handler → ack done); the bare loop does the same requests by hand "
        f"on one keep-alive session. Chunks of {chunk} cycles alternate bare/worker; "
        f"{len(bare_rates)} chunks each.\n\n"
        "| side | cycles/s (median chunk) | min | max |\n|---|---|---|---|\n"
        f"| bare aiohttp loop | {b:.1f} | {min(bare_rates):.0f} | {max(bare_rates):.0f} |\n"
        f"| pullwake.Worker | {w:.1f} | {min(work_rates):.0f} | {max(work_rates):.0f} |\n\n"
        f"Ratio worker/bare: **{ratio:.2f}** (median of per-chunk ratios "
        f"{statistics.median(pairs):.2f}; target ≥ 0.80: {verdict} the target).\n"
    )
    print(body)
    if args.write_docs:
        write_section("Worker throughput", body)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=300)
    p.add_argument("--embedded", action="store_true", help="use the embedded server (no node)")
    p.add_argument("--write-docs", action="store_true",
                   help="also replace this section of docs/performance.md")
    asyncio.run(main(p.parse_args()))
