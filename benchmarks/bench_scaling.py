"""Benchmark of record: pullwake.Worker against a bare aiohttp loop, on the reference server.

Everything runs against the real Durable Streams reference server
(``pullwake.testing.RealServer``, in memory, 127.0.0.1). A producer child
process (``benchmarks/_producer.py``) keeps every subscription busy, so its CPU
is neither the client's nor the server's. Client CPU is this process's, server
CPU the node process's, both from ``/proc/<pid>/stat``.

1. **Scaling**: N = 1, 4, 16, 64 subscriptions (one stream each) on one wake
   stream. The two sides do the same protocol work per wake: claim ->
   catch-up read of the claimed range (JSON-decoded) -> ack ``done``.

   - bare: one aiohttp session, one SSE read of the wake stream, a hand-written
     claim/read/ack per wake, one wake per subscription at a time;
   - worker: ``pullwake.Worker`` with a trivial async handler that iterates
     ``wake.messages(path)``, ``max_concurrency = N``.

   Runs alternate (bare, worker, worker, bare, ...) with fresh streams and
   subscriptions each; each run warms up, then counts acked wakes and CPU over
   a fixed window. Medians over the rounds; the ratios are what to read on a
   shared machine (both sides share its noise), with the per-round ratios'
   median beside the ratio of medians.
2. **Reads**: one stream of small JSON messages read whole by an async handler
   (``wake.messages()``), by ``pullwake.read_stream`` (sync), and by a bare
   aiohttp + ``json.loads`` loop (the floor); alternating rounds, client CPU
   per message.
3. **Latency**: append -> handler (``time.monotonic()`` stamped by the
   producer; CLOCK_MONOTONIC is shared by all processes) at a low append rate,
   worker vs bare, p50 / p99.
4. ``--soak``: the worker alone at N = 16 for ``--soak-wakes`` wakes (bounded
   by ``--soak-seconds``): CPU per wake, RSS and the number of secrets it
   scrubs, per window of wakes. Must stay flat; it deletes the streams it retires
   so claims stay short (the section's prose says why).

Prints the tables; ``--write-docs`` also rewrites this benchmark's sections of
docs/performance.md (and only those). ``--quick`` is a smoke run (seconds).

    python benchmarks/bench_scaling.py [--quick] [--write-docs] [--ns 1,4,16,64]
    python benchmarks/bench_scaling.py --soak [--soak-wakes 100000] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import mmap
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import REPO, cpu_seconds, rss_bytes, table  # noqa: E402
from _report import machine_line, write_section  # noqa: E402

JSON = {"content-type": "application/json"}
SCALING_TITLE = "Scaling: worker vs bare loop (reference server)"
SOAK_TITLE = "Worker soak: CPU per wake and RSS over a long run"


# ================================================================ processes


class ProducerProcess:
    """benchmarks/_producer.py in a child process, driven by JSON lines."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_producer.py")], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, cwd=str(REPO))

    def _call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the producer process died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def produce(self, urls: Sequence[str], rate: float, inflight: int = 32) -> None:
        """Append at ``rate`` per second in total."""
        self._call({"cmd": "produce", "urls": list(urls), "rate": rate, "inflight": inflight})

    def keep_busy(self, urls: Sequence[str], backlog: int, counters: Counters) -> None:
        """Keep at most ``backlog`` unconsumed messages per stream, appending one at a time."""
        self._call({"cmd": "produce", "urls": list(urls), "backlog": backlog,
                    "counters": counters.path})

    def stop(self) -> dict[str, Any]:
        return self._call({"cmd": "stop"})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class StreamIndex(dict[str, int]):
    """Stream path -> its subscription's counter slot (``bench/<run>/s<i>[/e<k>]``)."""

    def __missing__(self, path: str) -> int:
        i = self[path] = int(path.split("/")[2][1:])
        return i


class Counters:
    """Messages consumed per stream, shared with the producer (an mmap'd file of int64)."""

    def __init__(self, path: str, n: int) -> None:
        self.path = path
        with open(path, "wb") as fh:
            fh.write(b"\0" * 8 * max(1, n))
        self._fh = open(path, "r+b")  # noqa: SIM115 - closed in close()
        self._mem = mmap.mmap(self._fh.fileno(), 8 * max(1, n))
        self.view = memoryview(self._mem).cast("q")

    def close(self) -> None:
        self.view.release()
        self._mem.close()
        self._fh.close()
        os.unlink(self.path)


# ================================================================ consumers


@dataclass
class Layout:
    """Fresh names for one run: N streams, N subscriptions, one wake stream."""

    root: str
    prefix: str
    n: int

    @property
    def wake_stream(self) -> str:
        return f"wake/{self.prefix}"

    #: ``None``: one stream per subscription; else the soak's epoch (pattern mode).
    epoch: int | None = None

    def stream(self, i: int) -> str:
        if self.epoch is None:
            return f"bench/{self.prefix}/s{i}"
        return f"bench/{self.prefix}/s{i}/e{self.epoch}"

    def pattern(self, i: int) -> str:
        return f"bench/{self.prefix}/s{i}/*"

    def sub(self, i: int) -> str:
        return f"{self.prefix}-s{i}"

    def url(self, path: str) -> str:
        return f"{self.root}/{path}"

    @property
    def stream_urls(self) -> list[str]:
        return [self.url(self.stream(i)) for i in range(self.n)]


class Consumer:
    """What a run needs from either side."""

    wakes: int
    messages: int
    latencies: list[float] | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def create_streams(session: Any, layout: Layout) -> None:
    for i in range(layout.n):
        async with session.put(layout.url(layout.stream(i)), headers=JSON) as r:
            assert r.status in (200, 201), r.status


class BareLoop(Consumer):
    """The floor: hand-written claim -> catch-up read -> ack done per wake."""

    def __init__(self, layout: Layout, counters: Counters, *,
                 record_latency: bool = False) -> None:
        self.layout = layout
        self.consumed = counters.view
        self.index = StreamIndex()
        self.subs = {layout.sub(i): layout.stream(i) for i in range(layout.n)}
        self.wakes = 0
        self.messages = 0
        self.latencies = [] if record_latency else None
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self.offset = "-1"
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        import aiohttp

        lay = self.layout
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        s = self.session
        await create_streams(s, lay)
        async with s.put(lay.url(lay.wake_stream), headers=JSON) as r:
            assert r.status in (200, 201), r.status
        for sub, path in self.subs.items():
            async with s.put(f"{lay.root}/__ds/subscriptions/{sub}",
                             json={"type": "pull-wake", "streams": [path],
                                   "wake_stream": lay.wake_stream,
                                   "lease_ttl_ms": 30000}) as r:
                assert r.status in (200, 201), await r.text()
        self._reader = asyncio.ensure_future(self._read_wakes())

    async def _read_wakes(self) -> None:
        url = self.layout.url(self.layout.wake_stream)
        async with self.session.get(url, params={"offset": "-1", "live": "sse"}) as resp:
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                *events, buf = buf.split(b"\n\n")
                for ev in events:
                    data = b"\n".join(ln[5:] for ln in ev.split(b"\n")[1:]
                                      if ln.startswith(b"data:"))
                    if ev.startswith(b"event: control"):
                        # Where to resume after a reconnect: the worker tracks it too.
                        self.offset = json.loads(data).get("streamNextOffset", self.offset)
                        continue
                    if not ev.startswith(b"event: data"):
                        continue
                    for msg in json.loads(data):
                        sub = msg.get("subscription_id")
                        if sub in self.subs:
                            self._wake(sub)

    def _wake(self, sub: str) -> None:
        if sub in self._busy:
            self._again.add(sub)
            return
        self._busy.add(sub)
        task = asyncio.ensure_future(self._serve(sub))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, sub: str) -> None:
        while True:
            await self._cycle(sub)
            if sub not in self._again:
                self._busy.discard(sub)
                return
            self._again.discard(sub)

    async def _cycle(self, sub: str) -> None:
        s, root = self.session, self.layout.root
        async with s.post(f"{root}/__ds/subscriptions/{sub}/claim",
                          json={"worker": "bare"}) as r:
            body = await r.read()
            if r.status != 200:
                return  # 409 NO_PENDING_WORK / ALREADY_CLAIMED: nothing to do
        claim = json.loads(body)
        acks = []
        for st in claim["streams"]:
            offset, tail = st["acked_offset"], st["tail_offset"]
            url = self.layout.url(st["path"])
            while offset < tail:
                async with s.get(url, params={"offset": offset}) as r:
                    data = await r.read()
                    nxt = r.headers["Stream-Next-Offset"]
                msgs = json.loads(data) if data else []
                self.messages += len(msgs)
                self.consumed[self.index[st["path"]]] += len(msgs)
                if self.latencies is not None:
                    now = time.monotonic()
                    self.latencies += [now - m["t"] for m in msgs]
                if nxt == offset:
                    break
                offset = nxt
            acks.append({"stream": st["path"], "offset": max(offset, tail)})
        async with s.post(f"{root}/__ds/subscriptions/{sub}/ack",
                          headers={"Authorization": f"Bearer {claim['token']}"},
                          json={"wake_id": claim["wake_id"], "generation": claim["generation"],
                                "acks": acks, "done": True}) as r:
            await r.read()
            if r.status == 200:
                self.wakes += 1

    async def stop(self) -> None:
        self._reader.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(self._reader, *self._tasks, return_exceptions=True)
        await self.session.close()


class IoLoop(BareLoop):
    """The bare loop's wakes on pullwake's io layer: its HTTP client and control-plane
    calls (claim, ack), its read shell (``AsyncShell`` over a ``ReadCore``), no
    runner or worker. Shows how the worker's extra cost splits between the io
    layer and the runtime (the calls table)."""

    async def start(self) -> None:
        from pullwake.io.clock import LoopClock
        from pullwake.io.http import HttpClient
        from pullwake.runtime.subscriptions import SubscriptionClient

        await super().start()
        self.http = HttpClient(headers=None, clock=LoopClock(), request_timeout=30.0)
        self.client = SubscriptionClient(self.layout.root)

    async def _cycle(self, sub: str) -> None:
        from pullwake.io.areader import AsyncShell
        from pullwake.protocol import Batch, ReadCore
        from pullwake.runtime.subscriptions import Claim

        http, client = self.http, self.client
        claim = await client.claim(http, sub, "bare")
        if not isinstance(claim, Claim):
            return  # NO_PENDING_WORK / ALREADY_CLAIMED
        acks = []
        with http.hold_secrets(claim.token):
            for st in claim.streams:
                url = client.stream_url(st.path)
                core = ReadCore(offset=st.acked_offset, live="catch-up", until=st.tail_offset,
                                url=url)
                shell = AsyncShell(http.session, url, core, headers=http.resolve_headers,
                                   clock=http._clock, connect_timeout=30.0, idle_timeout=30.0,
                                   secrets=lambda: http.secrets)
                n = 0
                async for event in shell.events():
                    if type(event) is Batch:
                        n += len(event.values)
                self.messages += n
                self.consumed[self.index[st.path]] += n
                acks.append((st.path, max(core.offset, st.tail_offset)))
            await client.ack(http, claim, acks=acks, done=True)
        self.wakes += 1

    async def stop(self) -> None:
        await super().stop()
        await self.http.close()


class WorkerLoop(Consumer):
    """pullwake.Worker with a trivial handler that reads its messages."""

    def __init__(self, layout: Layout, counters: Counters, *,
                 record_latency: bool = False) -> None:
        self.layout = layout
        self.consumed = counters.view
        self.index = StreamIndex()
        self.messages = 0
        #: Streams listed by the claims handled (the soak's check that they stay few).
        self.streams_listed = 0
        self.latencies = [] if record_latency else None

    @property
    def wakes(self) -> int:  # type: ignore[override]
        return self.worker.stats.wakes_acked

    async def handle(self, wake: Any) -> None:
        lat = self.latencies
        self.streams_listed += len(wake.streams)
        for s in wake.streams:
            n = 0
            async for m in wake.messages(s.path):
                n += 1
                if lat is not None:
                    lat.append(time.monotonic() - m["t"])
            self.messages += n
            self.consumed[self.index[s.path]] += n

    async def start(self) -> None:
        import aiohttp

        from pullwake import SubscriptionConfig, Worker

        lay = self.layout
        async with aiohttp.ClientSession() as s:
            await create_streams(s, lay)
        if lay.epoch is None:
            subs = [SubscriptionConfig(id=lay.sub(i), wake_stream=lay.wake_stream,
                                       streams=(lay.stream(i),)) for i in range(lay.n)]
        else:  # the soak: each subscription follows its streams' epochs by a pattern
            subs = [SubscriptionConfig(id=lay.sub(i), wake_stream=lay.wake_stream,
                                       pattern=lay.pattern(i)) for i in range(lay.n)]
        self.worker = Worker(server=lay.root, subscriptions=subs, handler=self.handle,
                             worker_name="bench", max_concurrency=max(1, lay.n))
        await self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()


# ================================================================== a run


@dataclass
class Run:
    side: str
    n: int
    seconds: float
    wakes: int
    messages: int
    client_cpu: float
    server_cpu: float
    appended: int
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.wakes / self.seconds

    @property
    def client_per_wake(self) -> float:
        return self.client_cpu / max(1, self.wakes)

    @property
    def server_per_wake(self) -> float:
        return self.server_cpu / max(1, self.wakes)

    @property
    def per_wake_messages(self) -> float:
        return self.messages / max(1, self.wakes)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runs = 0

    async def __aenter__(self) -> Bench:
        from pullwake.testing import RealServer

        self._tmp = tempfile.TemporaryDirectory(prefix="pullwake-bench-")
        self.tmp = self._tmp.name
        self.server = RealServer()
        await self.server.start()
        self.producer = ProducerProcess()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.producer.close()
        await self.server.stop()
        self._tmp.cleanup()

    def layout(self, n: int) -> Layout:
        self.runs += 1
        return Layout(self.server.stream_root, f"r{self.runs}", n)

    async def run(self, side: str, n: int, *, seconds: float, warmup: float,
                  rate: float | None = None, record_latency: bool = False,
                  profile: cProfile.Profile | None = None) -> Run:
        """One measured run; ``rate`` None: keep every stream busy (backlog mode)."""
        layout = self.layout(n)
        cls: type[BareLoop] | type[WorkerLoop] = {"bare": BareLoop, "io": IoLoop}.get(
            side, WorkerLoop)
        counters = Counters(os.path.join(self.tmp, f"{layout.prefix}.counters"), n)
        consumer = cls(layout, counters, record_latency=record_latency)
        gc.collect()
        await consumer.start()
        if rate is None:
            self.producer.keep_busy(layout.stream_urls, self.args.backlog, counters)
        else:
            self.producer.produce(layout.stream_urls, rate)
        try:
            await asyncio.sleep(warmup)
            server_pid = self.server.pid
            assert server_pid is not None
            w0, m0 = consumer.wakes, consumer.messages
            l0 = len(consumer.latencies or ())
            c0, s0, t0 = cpu_seconds(), cpu_seconds(server_pid), time.perf_counter()
            if profile is not None:
                profile.enable()
            await asyncio.sleep(seconds)
            if profile is not None:
                profile.disable()
            c1, s1, t1 = cpu_seconds(), cpu_seconds(server_pid), time.perf_counter()
            w1, m1 = consumer.wakes, consumer.messages
            lat = list((consumer.latencies or [])[l0:])
        finally:
            produced = self.producer.stop()
            await consumer.stop()
            counters.close()
        return Run(side, n, t1 - t0, w1 - w0, m1 - m0, c1 - c0, s1 - s0,
                   int(produced["appended"]), lat)


# ============================================================ 1. scaling


def pct(xs: Sequence[float], q: float) -> float:
    ys = sorted(xs)
    if not ys:
        return float("nan")
    k = min(len(ys) - 1, max(0, round(q * (len(ys) - 1))))
    return ys[k]


async def scaling(bench: Bench, ns: Sequence[int], rounds: int, seconds: float,
                  warmup: float, rate: float | None) -> tuple[str, list[dict[str, Any]]]:
    rows, data = [], []
    for n in ns:
        runs: dict[str, list[Run]] = {"bare": [], "worker": []}
        for r in range(rounds):
            order = ("bare", "worker") if r % 2 == 0 else ("worker", "bare")
            for side in order:
                run = await bench.run(side, n, seconds=seconds, warmup=warmup, rate=rate)
                runs[side].append(run)
                print(f"  N={n:<3} round {r + 1}/{rounds} {side:<6} {run.rate:7.1f} wakes/s  "
                      f"client {run.client_per_wake * 1e3:6.3f} ms/wake  "
                      f"server {run.server_per_wake * 1e3:6.3f} ms/wake  "
                      f"{run.per_wake_messages:5.2f} msgs/wake", flush=True)
        b, w = runs["bare"], runs["worker"]
        b_rate = statistics.median(x.rate for x in b)
        w_rate = statistics.median(x.rate for x in w)
        b_cpu = statistics.median(x.client_per_wake for x in b)
        w_cpu = statistics.median(x.client_per_wake for x in w)
        rate_pairs = statistics.median(wr.rate / br.rate for wr, br in zip(w, b, strict=True))
        cpu_pairs = statistics.median(wr.client_per_wake / br.client_per_wake
                                      for wr, br in zip(w, b, strict=True))
        share_b = statistics.median(x.client_cpu / (x.client_cpu + x.server_cpu) for x in b)
        share_w = statistics.median(x.client_cpu / (x.client_cpu + x.server_cpu) for x in w)
        d = {"n": n, "bare_rate": b_rate, "worker_rate": w_rate, "rate_ratio": w_rate / b_rate,
             "rate_pairs": rate_pairs, "bare_cpu": b_cpu, "worker_cpu": w_cpu,
             "cpu_ratio": w_cpu / b_cpu, "cpu_pairs": cpu_pairs,
             "bare_server": statistics.median(x.server_per_wake for x in b),
             "worker_server": statistics.median(x.server_per_wake for x in w),
             "bare_msgs": statistics.median(x.per_wake_messages for x in b),
             "worker_msgs": statistics.median(x.per_wake_messages for x in w),
             "share_b": share_b, "share_w": share_w,
             "appended": statistics.median(x.appended / (x.seconds + warmup) for x in b + w)}
        data.append(d)
        rows.append([
            n, f"{b_rate:.0f}", f"{w_rate:.0f}",
            f"**{d['rate_ratio']:.2f}** ({rate_pairs:.2f})",
            f"{b_cpu * 1e3:.3f} / {w_cpu * 1e3:.3f}",
            f"**{d['cpu_ratio']:.2f}** ({cpu_pairs:.2f})",
            f"{d['bare_server'] * 1e3:.3f} / {d['worker_server'] * 1e3:.3f}",
            f"{share_b:.0%} / {share_w:.0%}",
            f"{d['bare_msgs']:.1f} / {d['worker_msgs']:.1f}",
        ])
    text = table(["N subscriptions", "bare wakes/s", "worker wakes/s",
                  "worker/bare wakes/s (median of round pairs)",
                  "client CPU ms/wake bare / worker",
                  "client CPU per wake worker/bare (pairs)",
                  "server CPU ms/wake bare / worker",
                  "client share of client+server CPU bare / worker",
                  "messages/wake bare / worker"], rows)
    return text, data


# ===================================================== 1b. calls per wake


def _package(filename: str) -> str:
    if filename == "~":
        return "C built-ins"
    for name in ("pullwake", "aiohttp", "yarl", "multidict", "asyncio", "json",
                 "prometheus_client"):
        if f"/{name}/" in filename:
            return name
    if filename.endswith("bench_scaling.py"):
        return "the benchmark's own loop"
    return "other Python"


async def calls(bench: Bench, n: int, seconds: float) -> str:
    """Function calls per wake under cProfile, by package: a noise-free view of where
    the worker's extra CPU goes (the profiler inflates time, not call counts)."""
    counts: dict[str, dict[str, float]] = {}
    for side in ("bare", "io", "worker"):
        prof = cProfile.Profile()
        run = await bench.run(side, n, seconds=seconds, warmup=0.5, profile=prof)
        wakes = max(1, run.wakes)
        per: dict[str, float] = {}
        for (filename, _line, fn), (_cc, nc, *_rest) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
            pkg = _package(filename)
            per[pkg] = per.get(pkg, 0.0) + nc / wakes
            if filename.endswith("base_events.py") and fn in ("create_task", "call_at",
                                                               "_call_soon"):
                per[f"({fn})"] = nc / wakes
        counts[side] = per
        print(f"  calls: {side} {sum(v for k, v in per.items() if not k.startswith('(')):.0f}"
              " calls/wake", flush=True)
    b, io, w = counts["bare"], counts["io"], counts["worker"]
    keys = sorted({*b, *io, *w} - {"(create_task)", "(call_at)", "(_call_soon)"},
                  key=lambda k: -(w.get(k, 0) - b.get(k, 0)))
    rows = [[k, f"{b.get(k, 0):.0f}", f"{io.get(k, 0):.0f}", f"{w.get(k, 0):.0f}",
             f"{w.get(k, 0) - b.get(k, 0):+.0f}"] for k in keys]
    tb, ti, tw = (sum(c.get(k, 0) for k in keys) for c in (b, io, w))
    rows.append(["**all**", f"**{tb:.0f}**", f"**{ti:.0f}**", f"**{tw:.0f}**",
                 f"**{tw - tb:+.0f}**"])
    for key, label in (("(create_task)", "asyncio tasks created"),
                       ("(call_at)", "timers armed"),
                       ("(_call_soon)", "loop callbacks scheduled")):
        rows.append([label, f"{b.get(key, 0):.1f}", f"{io.get(key, 0):.1f}",
                     f"{w.get(key, 0):.1f}", f"{w.get(key, 0) - b.get(key, 0):+.1f}"])
    return table(["per wake, N = " + str(n), "bare", "bare on pullwake's io layer", "worker",
                  "worker - bare"], rows)


# ============================================================== 2. reads


async def reads(bench: Bench, count: int, rounds: int) -> tuple[str, dict[str, float]]:
    import aiohttp

    from pullwake import SubscriptionConfig, Worker, read_stream

    root = bench.server.stream_root
    path = f"bench/read{bench.runs}"
    bench.runs += 1
    url = f"{root}/{path}"
    subs = [f"read{bench.runs}-{k}" for k in range(rounds)]
    async with aiohttp.ClientSession() as s:
        async with s.put(url, headers=JSON) as r:
            assert r.status in (200, 201)
        # Subscriptions first: each then has the whole stream pending, one wake each.
        for sub in subs:
            async with s.put(f"{root}/wake/{sub}", headers=JSON) as r:
                assert r.status in (200, 201)
            async with s.put(f"{root}/__ds/subscriptions/{sub}",
                             json={"type": "pull-wake", "streams": [path],
                                   "wake_stream": f"wake/{sub}", "lease_ttl_ms": 60000}) as r:
                assert r.status in (200, 201), await r.text()
        batch = 1000
        for start in range(0, count, batch):
            msgs = [{"i": i, "v": "abcdefgh"} for i in range(start, min(count, start + batch))]
            async with s.post(url, data=json.dumps(msgs), headers=JSON) as r:
                assert r.status == 204, await r.text()
            tail = r.headers["Stream-Next-Offset"]

    async def async_read(k: int) -> tuple[int, float, float]:
        done: asyncio.Future[tuple[int, float, float]] = asyncio.get_running_loop().create_future()

        async def handle(wake: Any) -> None:
            n = 0
            c, t = time.process_time(), time.perf_counter()
            async for _ in wake.messages(path):
                n += 1
            done.set_result((n, time.process_time() - c, time.perf_counter() - t))

        worker = Worker(server=root, subscriptions=[SubscriptionConfig(
            id=subs[k], wake_stream=f"wake/{subs[k]}", streams=(path,), claim_lease=60.0)],
            handler=handle, worker_name="bench-read", request_timeout=60)
        await worker.start()
        try:
            return await asyncio.wait_for(done, 120)
        finally:
            await worker.stop()

    def sync_read() -> tuple[int, float, float]:
        c, t = time.process_time(), time.perf_counter()
        result = read_stream(url, "-1", until=tail, timeout=60)
        return len(result.messages), time.process_time() - c, time.perf_counter() - t

    async def bare_read() -> tuple[int, float, float]:
        async with aiohttp.ClientSession() as s:
            c, t = time.process_time(), time.perf_counter()
            n, offset = 0, "-1"
            while True:
                async with s.get(url, params={"offset": offset}) as r:
                    body = await r.read()
                    nxt = r.headers["Stream-Next-Offset"]
                    up = r.headers.get("Stream-Up-To-Date") == "true"
                n += len(json.loads(body)) if body else 0
                if up or nxt == offset or nxt >= tail:
                    break
                offset = nxt
            return n, time.process_time() - c, time.perf_counter() - t

    methods: dict[str, Callable[[int], Awaitable[tuple[int, float, float]]]] = {
        "async: `wake.messages()` in an async handler": async_read,
        "sync: `pullwake.read_stream`": lambda k: asyncio.to_thread(sync_read),
        "floor: bare aiohttp + `json.loads`": lambda k: bare_read(),
    }
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    names = list(methods)
    for k in range(rounds):
        for name in names[k % 3:] + names[:k % 3]:
            gc.collect()
            n, cpu, wall = await methods[name](k)
            assert n == count, f"{name} read {n} of {count} messages"
            results[name].append((cpu / n * 1e6, wall / n * 1e6))
            print(f"  read round {k + 1}/{rounds} {name}: {cpu / n * 1e6:.2f} us CPU/message",
                  flush=True)
    floor = statistics.median(c for c, _ in results[names[2]])
    sync = statistics.median(c for c, _ in results[names[1]])
    rows, out = [], {}
    for name in names:
        cpu = statistics.median(c for c, _ in results[name])
        wall = statistics.median(w for _, w in results[name])
        out[name] = cpu
        rows.append([name, f"{cpu:.2f}", f"{wall:.2f}", f"{cpu / sync:.2f}", f"{cpu / floor:.2f}"])
    text = table(["reader", "client CPU us/message", "wall us/message", "vs sync", "vs floor"],
                 rows)
    return text, out


# ============================================================ 3. latency


async def latency(bench: Bench, ns: Sequence[int], rounds: int, seconds: float,
                  rate: float) -> str:
    rows = []
    for n in ns:
        lat: dict[str, list[float]] = {"bare": [], "worker": []}
        for r in range(rounds):
            for side in (("bare", "worker") if r % 2 == 0 else ("worker", "bare")):
                run = await bench.run(side, n, seconds=seconds, warmup=0.3, rate=rate,
                                      record_latency=True)
                lat[side] += run.latencies
        b, w = lat["bare"], lat["worker"]
        rows.append([n, f"{rate:g}", f"{len(b)} / {len(w)}",
                     f"{pct(b, 0.5) * 1e3:.2f} / {pct(w, 0.5) * 1e3:.2f}",
                     f"{pct(b, 0.99) * 1e3:.2f} / {pct(w, 0.99) * 1e3:.2f}"])
        print(f"  latency N={n}: p50 bare {pct(b, 0.5) * 1e3:.2f} ms, "
              f"worker {pct(w, 0.5) * 1e3:.2f} ms", flush=True)
    return table(["N subscriptions", "appends/s (total)", "messages bare / worker",
                  "p50 ms bare / worker", "p99 ms bare / worker"], rows)


# =============================================================== 4. soak


async def soak(bench: Bench, n: int, wakes: int, limit_s: float, window: int,
               rate: float | None = None) -> tuple[str, dict[str, Any]]:
    """The soak; ``rate`` (appends/s in total) None: keep every stream busy (backlog)."""
    import aiohttp

    layout = bench.layout(n)
    layout.epoch = 0
    counters = Counters(os.path.join(bench.tmp, f"{layout.prefix}.e0"), n)
    consumer = WorkerLoop(layout, counters)
    await consumer.start()

    def produce() -> None:
        if rate is None:
            bench.producer.keep_busy(layout.stream_urls, bench.args.backlog, counters)
        else:
            bench.producer.produce(layout.stream_urls, rate)

    produce()
    session = aiohttp.ClientSession()

    async def next_epoch() -> None:
        """Fresh streams for every window: the reference server slows down as its
        streams grow (its cost, not the worker's), so the soak keeps them short.

        A pattern subscription keeps every stream it has linked and every claim
        answer lists them all, so retired streams are deleted (the server then
        unlinks them): the epoch before the one just left, idle for a whole
        window, so no wake is still reading it. Claims list at most two streams."""
        nonlocal counters
        assert layout.epoch is not None
        layout.epoch += 1
        await create_streams(session, layout)
        old, counters = counters, Counters(
            os.path.join(bench.tmp, f"{layout.prefix}.e{layout.epoch}"), n)
        consumer.consumed = counters.view
        produce()
        old.close()
        if layout.epoch >= 2:
            retired = Layout(layout.root, layout.prefix, n, epoch=layout.epoch - 2)
            for url in retired.stream_urls:
                async with session.delete(url) as r:
                    assert r.status in (200, 204), r.status

    def events_claims() -> tuple[int, int]:
        """Wake events read and claims tried so far (the runner's counters)."""
        h = consumer.worker.runner.health()
        return h.events_received, h.claims_succeeded + h.claims_skipped + h.claims_failed

    samples: list[dict[str, float]] = []
    t_start = time.perf_counter()
    try:
        await asyncio.sleep(0.5)
        server = bench.server.pid
        assert server is not None
        w0, c0, t0 = consumer.wakes, cpu_seconds(), time.perf_counter()
        s0, m0, l0 = cpu_seconds(server), consumer.messages, consumer.streams_listed
        e0, k0 = events_claims()
        start_wakes = w0
        last_wakes, last_progress = consumer.wakes, time.perf_counter()
        while consumer.wakes - start_wakes < wakes and time.perf_counter() - t_start < limit_s:
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            if consumer.wakes != last_wakes:
                last_wakes, last_progress = consumer.wakes, now
            elif now - last_progress > 60:  # a stall: say what the worker reports
                print(f"  soak: no wake acked for {now - last_progress:.0f} s; worker health: "
                      f"{json.dumps(consumer.worker.health(), default=str)}", flush=True)
                last_progress = now
            if consumer.wakes - w0 >= window:
                w1, c1, t1 = consumer.wakes, cpu_seconds(), time.perf_counter()
                s1, m1, l1 = cpu_seconds(server), consumer.messages, consumer.streams_listed
                e1, k1 = events_claims()
                samples.append({"wakes": w1 - start_wakes, "cpu_ms": (c1 - c0) / (w1 - w0) * 1e3,
                                "server_ms": (s1 - s0) / (w1 - w0) * 1e3,
                                "msgs": (m1 - m0) / (w1 - w0),
                                "streams": (l1 - l0) / (w1 - w0),
                                "events": (e1 - e0) / (w1 - w0), "claims": (k1 - k0) / (w1 - w0),
                                "rate": (w1 - w0) / (t1 - t0), "rss": rss_bytes() / 2**20,
                                "secrets": len(consumer.worker.runner.http.secrets),
                                "load": os.getloadavg()[0]})
                s = samples[-1]
                print(f"  soak {s['wakes']:>7.0f} wakes: {s['cpu_ms']:.3f} ms CPU/wake "
                      f"(server {s['server_ms']:.3f}), {s['streams']:.2f} streams/claim, "
                      f"{s['events']:.2f} events and {s['claims']:.2f} claims per wake, "
                      f"{s['rate']:.0f} wakes/s, RSS "
                      f"{s['rss']:.1f} MiB, {s['secrets']:.0f} secrets, load "
                      f"{s['load']:.1f}", flush=True)
                await next_epoch()
                w0, c0, t0 = consumer.wakes, cpu_seconds(), time.perf_counter()
                s0, m0, l0 = cpu_seconds(server), consumer.messages, consumer.streams_listed
                e0, k0 = e1, k1
        total = consumer.wakes - start_wakes
        elapsed = time.perf_counter() - t_start
        stats = consumer.worker.stats
        errors = {"handler errors": stats.handler_errors, "wakes released": stats.wakes_released,
                  "leases lost": stats.leases_lost,
                  "claims failed": consumer.worker.runner.health().claims_failed}
    finally:
        bench.producer.stop()
        await consumer.stop()
        await session.close()
        counters.close()
    if not samples:
        raise RuntimeError("the soak ran too short for one window")
    step = max(1, len(samples) // 10)
    shown = samples[::step] if samples[-1] in samples[::step] else [*samples[::step], samples[-1]]
    rows = [[f"{s['wakes']:.0f}", f"{s['cpu_ms']:.3f}", f"{s['server_ms']:.3f}",
             f"{s['msgs']:.2f}", f"{s['streams']:.2f}", f"{s['events']:.2f}",
             f"{s['claims']:.2f}", f"{s['rate']:.0f}", f"{s['rss']:.1f}",
             f"{s['secrets']:.0f}", f"{s['load']:.1f}"] for s in shown]
    text = table(["wakes so far", "client CPU ms/wake (window)", "server CPU ms/wake",
                  "messages/wake", "streams/claim", "wake events/wake",
                  "claims/wake (incl. skipped)", "wakes/s (window)", "RSS MiB", "secrets held",
                  "machine load (1 min)"], rows)
    k = max(1, len(samples) // 5)
    first = statistics.median(s["cpu_ms"] for s in samples[:k])
    last = statistics.median(s["cpu_ms"] for s in samples[-k:])
    server_first = statistics.median(s["server_ms"] for s in samples[:k])
    server_last = statistics.median(s["server_ms"] for s in samples[-k:])
    summary = {"wakes": total, "seconds": elapsed, "windows": len(samples), "first_cpu": first,
               "last_cpu": last, "server_first": server_first, "server_last": server_last,
               "streams_max": max(s["streams"] for s in samples), "errors": errors,
               "rss_first": samples[0]["rss"], "rss_last": samples[-1]["rss"],
               "rss_max": max(s["rss"] for s in samples),
               "secrets_max": max(s["secrets"] for s in samples)}
    return text, summary


# ================================================================= main


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"


def command(argv: Sequence[str]) -> str:
    return " ".join(["python", "benchmarks/bench_scaling.py", *argv])


async def main_scaling(args: argparse.Namespace, argv: Sequence[str]) -> None:
    ns = [int(x) for x in args.ns.split(",")]
    load0, t0 = load(), time.perf_counter()
    async with Bench(args) as bench:
        scale_text, scale, read_text, lat_text = "", [], "", ""
        if "scaling" in args.parts:
            print(f"scaling: N = {ns}, {args.rounds} rounds of {args.duration:g} s per side",
                  flush=True)
            scale_text, scale = await scaling(bench, ns, args.rounds, args.duration,
                                              args.warmup, args.append_rate)
            print(scale_text, flush=True)
        calls_text = ""
        if "calls" in args.parts:
            print(f"calls per wake at N = {args.calls_n} (cProfile)", flush=True)
            calls_text = await calls(bench, args.calls_n, min(args.duration, 3.0))
            print(calls_text, flush=True)
        if "reads" in args.parts:
            print(f"reads: {args.read_messages} messages, {args.read_rounds} rounds",
                  flush=True)
            read_text, _ = await reads(bench, args.read_messages, args.read_rounds)
            print(read_text, flush=True)
        if "latency" in args.parts:
            lat_ns = [int(x) for x in args.latency_ns.split(",")]
            print(f"latency: N = {lat_ns} at {args.latency_rate:g} appends/s", flush=True)
            lat_text = await latency(bench, lat_ns, args.latency_rounds, args.duration,
                                     args.latency_rate)
            print(lat_text, flush=True)
    elapsed = time.perf_counter() - t0
    if not scale:
        return
    from pullwake.testing.realserver import DS_SERVER_VERSION

    worst_rate = min(d["rate_ratio"] for d in scale)
    worst_cpu = max(d["cpu_ratio"] for d in scale)
    verdict = (f"Worst over N: worker/bare wakes/s **{worst_rate:.2f}** (target >= 0.95: "
               f"{'met' if worst_rate >= 0.95 else 'MISSED'}), client CPU per wake "
               f"worker/bare **{worst_cpu:.2f}** (target <= 1.10: "
               f"{'met' if worst_cpu <= 1.10 else 'MISSED'}).")
    print(verdict)
    producing = (f"appends {args.append_rate:g} small JSON messages/s round-robin over the "
                 "N streams" if args.append_rate else
                 "keeps every stream busy: it appends to a stream, one request at a time, "
                 f"while fewer than {args.backlog} of its messages are unconsumed (the "
                 "consumers count what they read in a shared file), so there is work "
                 "pending whenever a wake is acked, at the least cost to the server")
    body = f"""Command: `{command(argv)}` ({elapsed:.0f} s). {machine_line()} Reference server
@durable-streams/server {DS_SERVER_VERSION} (in memory) on 127.0.0.1; load average
{load0} at the start and {load()} at the end: the machine is shared with other
work, so absolute rates move by tens of percent between runs. Read the ratios:
both sides run alternately in the same process against the same server, so they
share the noise.

### Worker vs bare loop, N subscriptions each kept busy by a producer

Each run: fresh streams and subscriptions, and a producer child that {producing},
{args.warmup:g} s warm-up, then {args.duration:g} s counted. {args.rounds} rounds per
side, alternating; medians (and, in parentheses, the median of per-round
worker/bare ratios). Client CPU is this process's, server CPU node's, both from
`/proc`; server CPU includes serving the producer's appends.

{scale_text}

{verdict}

### Where the worker's extra client CPU goes

One run per side at N = {args.calls_n} under cProfile: Python function calls
per wake, by package (call counts do not depend on the machine's load; the
profiler's own overhead inflates time, so no times are shown). The middle
column is the bare loop's wakes made with pullwake's io layer (its HTTP
client, claim and ack calls, and read shell) and no runner or worker: what
lies between it and the worker is the runtime's (runner, claims, jobs).

{calls_text}

### Async vs sync reads

{args.read_messages} small JSON messages (`{{"i": n, "v": "abcdefgh"}}`) in one
stream, read whole; {args.read_rounds} alternating rounds, medians. Client CPU
is `time.process_time()` around the read.

{read_text}

### Append -> handler latency

The producer stamps each message with `time.monotonic()` (CLOCK_MONOTONIC,
shared by all processes); the handler (bare: the loop, right after decoding)
subtracts it. {args.latency_rate:g} appends/s in total, {args.latency_rounds} rounds
of {args.duration:g} s per side, alternating; percentiles over all messages.

{lat_text}
"""
    if args.write_docs:
        write_section(SCALING_TITLE, body)
        print(f"wrote section {SCALING_TITLE!r} of docs/performance.md")


async def main_soak(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from pullwake.testing.realserver import DS_SERVER_VERSION

    load0 = load()
    async with Bench(args) as bench:
        print(f"soak: N = {args.soak_n}, {args.soak_wakes} wakes "
              f"(at most {args.soak_seconds:g} s)", flush=True)
        text, s = await soak(bench, args.soak_n, args.soak_wakes, args.soak_seconds,
                             args.soak_window, args.soak_rate)
    print(text)
    reached = (f"{s['wakes']} wakes in {s['seconds']:.0f} s"
               + ("" if s["wakes"] >= args.soak_wakes
                  else f" (the {args.soak_seconds:g} s bound ended it before "
                       f"{args.soak_wakes} wakes)"))
    summary = (f"{reached}: client CPU per wake {s['first_cpu']:.3f} ms (median of the first "
               f"fifth of windows) -> {s['last_cpu']:.3f} ms (last fifth), ratio "
               f"**{s['last_cpu'] / s['first_cpu']:.2f}**; RSS {s['rss_first']:.1f} MiB "
               f"(first window) -> {s['rss_last']:.1f} MiB (last), at most "
               f"{s['rss_max']:.1f} MiB; at most {s['secrets_max']:.0f} secrets held. Server "
               f"CPU per wake {s['server_first']:.3f} -> {s['server_last']:.3f} ms; at most "
               f"{s['streams_max']:.2f} streams per claim (window mean); "
               + ", ".join(f"{v} {k}" for k, v in s["errors"].items()) + ".")
    print(summary)
    if args.soak_rate is None:
        feed = (f"kept busy by a producer (at most {args.backlog} unconsumed messages per "
                "stream)")
        pace = ("Kept busy, the wake rate falls with it, and the client's CPU per wake rises "
                "as the rate falls, while the work it does per wake (wake events, claims, "
                "streams per claim, messages) and its RSS stay flat: the same work costs "
                "more per wake at a lower rate (fewer wakes share each turn of the event "
                "loop; the bare loop too), not state the worker accumulates. `--soak-rate` "
                "measures every window at the same rate instead.")
    else:
        feed = (f"fed by a producer appending at a fixed {args.soak_rate:g} messages/s in "
                "total")
        pace = ("So the producer appends at a fixed rate the server sustains to the end: "
                "every window runs at the same wake rate and the client's CPU per wake "
                "compares like with like. (Kept busy instead, the wake rate falls as the "
                "server slows, and the client's cost per wake rises with the falling rate, "
                "the bare loop's too: fewer wakes share each turn of the event loop.)")
    body = f"""Command: `{command(argv)}`. {machine_line()} Load average {load0} at the start,
{load()} at the end (a shared machine: window-to-window rates are noisy).

A `Worker` at N = {args.soak_n} subscriptions (by pattern) {feed} against the
reference server; after every window the producer moves to fresh streams (so no
stream grows long: the reference server's cost per read grows with a stream's
length), while the worker, its subscriptions and its wake stream run on.

Two costs of the reference server grow over such a run, neither of them the
worker's. Each pattern subscription keeps every stream it has linked, and every
claim answer lists them all, so without more the claims grow by one stream per
window and subscription, and with them the server's and the client's cost per
wake (an earlier version of this soak: client 1.03 -> 1.90 ms and server
1.2 -> 9.7 ms per wake over 35k wakes, 7 streams per claim by its end). So the
soak deletes the streams it has retired: the reference server unlinks a deleted
stream from the subscriptions (the next claim no longer lists it). It deletes
the epoch before the one just left, idle for a whole window, so no wake still
reads it, and claims list at most two streams (the `streams/claim` column).
Deleting, rather than reusing a fixed set of streams, keeps every stream short;
pattern subscriptions, rather than explicit ones, keep the worker's
subscriptions fixed while the streams change under them.

The other is the wake stream, which gains a wake event per wake and cannot be
rotated under a running worker: the reference server (@durable-streams/server
{DS_SERVER_VERSION}, in-memory store) finds a read's offset by scanning the stream's
messages from its start (`findOffsetIndex`), so each wake event it sends on the
worker's SSE read costs it time in proportion to the wake stream's length. Its
CPU per wake grows with the wakes so far. {pace}

Measured per window of {args.soak_window} wakes: client CPU per wake (`/proc`), the
server's beside it, RSS, and the number of secrets the worker's HTTP client
scrubs (bounded: configured headers plus the claim tokens of the wakes running
now).

{text}

{summary}
"""
    if args.write_docs:
        write_section(SOAK_TITLE, body)
        print(f"wrote section {SOAK_TITLE!r} of docs/performance.md")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: N = 1, 4, one short round, small reads (seconds)")
    p.add_argument("--write-docs", action="store_true",
                   help="also rewrite this benchmark's sections of docs/performance.md")
    p.add_argument("--ns", default=None, help="subscription counts (default 1,4,16,64)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per side (default 3)")
    p.add_argument("--duration", type=float, default=None,
                   help="counted seconds per run (default 4)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before counting (1)")
    p.add_argument("--backlog", type=int, default=4,
                   help="keep each stream busy: append while fewer than this many of its "
                        "messages are unconsumed (4)")
    p.add_argument("--append-rate", type=float, default=None,
                   help="instead of --backlog: a fixed total append rate while measuring "
                        "throughput")
    p.add_argument("--read-messages", type=int, default=None,
                   help="messages in the read benchmark (default 100000)")
    p.add_argument("--read-rounds", type=int, default=None, help="rounds per reader (3)")
    p.add_argument("--latency-ns", default=None, help="N for the latency table (1,16)")
    p.add_argument("--latency-rate", type=float, default=50.0,
                   help="appends/s in total for the latency table (50)")
    p.add_argument("--latency-rounds", type=int, default=None, help="rounds per side (2)")
    p.add_argument("--parts", default="scaling,calls,reads,latency",
                   help="which tables to measure (default all: scaling,calls,reads,"
                        "latency); --write-docs needs all of them")
    p.add_argument("--calls-n", type=int, default=16,
                   help="subscriptions for the calls-per-wake profile (16)")
    p.add_argument("--soak", action="store_true",
                   help="run the soak instead: the worker alone for --soak-wakes wakes")
    p.add_argument("--soak-wakes", type=int, default=None, help="wakes to run (100000)")
    p.add_argument("--soak-seconds", type=float, default=None,
                   help="bound on the soak's duration (900)")
    p.add_argument("--soak-window", type=int, default=None, help="wakes per sample (5000)")
    p.add_argument("--soak-n", type=int, default=16, help="subscriptions in the soak (16)")
    p.add_argument("--soak-rate", type=float, default=None,
                   help="instead of --backlog: append at this fixed total rate (appends/s), "
                        "one the server sustains to the end, so every window is measured "
                        "at the same wake rate")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    every = {"scaling", "calls", "reads", "latency"}
    if parts - every:
        p.error(f"unknown --parts: {sorted(parts - every)}")
    if args.write_docs and not args.soak and parts != every:
        p.error("--write-docs writes the whole section: run every part")
    args.parts = parts
    quick = args.quick
    defaults = {
        "ns": "1,4" if quick else "1,4,16,64",
        "rounds": 1 if quick else 3,
        "duration": 0.5 if quick else 4.0,
        "warmup": 0.3 if quick else 1.0,
        "read_messages": 2000 if quick else 100_000,
        "read_rounds": 1 if quick else 3,
        "latency_ns": "1" if quick else "1,16",
        "latency_rounds": 1 if quick else 2,
        "soak_wakes": 1000 if quick else 100_000,
        "soak_seconds": 30.0 if quick else 900.0,
        "soak_window": 250 if quick else 5000,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    asyncio.run(main_soak(args, argv) if args.soak else main_scaling(args, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
