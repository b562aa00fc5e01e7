"""Benchmark: what observability costs (health snapshot, /metrics, log lines, per wake).

Run from a checkout (prints only; no docs are rewritten)::

    python benchmarks/bench_observe.py [--quick]

Four measurements, each compared in the same run:

1. ``worker.health()`` and ``worker.metrics.render()`` (a /metrics scrape) for
   a worker with 1, 16 and 64 subscriptions (no server needed: the snapshot
   is read, not fetched).
2. One log record formatted by the stdlib's default formatter, pullwake's
   text format and its JSON format (with the context filter), as a ratio.
3. The per-wake bookkeeping the worker adds (a job context for log fields,
   per-subscription stats, one histogram observation) against an empty
   coroutine task: microseconds per wake.
4. The /health and /metrics endpoints of a HealthServer over 127.0.0.1:
   requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from typing import Any

import _common  # noqa: F401 - puts the checkout on sys.path
import aiohttp

from pullwake import HealthServer, Worker
from pullwake.runtime.health import SubscriptionStats
from pullwake.runtime.logs import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    job_context,
    log_context,
)
from pullwake.runtime.subscriptions import SubscriptionConfig


def _worker(n_subs: int) -> Worker:
    async def handle(wake: Any) -> None:
        return None

    subs = [SubscriptionConfig(id=f"sub{i}", wake_stream="wake/pool", pattern=f"e{i}/*")
            for i in range(n_subs)]
    return Worker(server="http://127.0.0.1:9/v1/stream", handler=handle, subscriptions=subs,
                  worker_name="bench")


def _per_call(fn: Any, n: int) -> float:
    """Median seconds per call over 5 batches of ``n``."""
    out = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t) / n)
    return statistics.median(out)


async def snapshot_costs(quick: bool) -> None:
    print("1. snapshot and scrape (no server involved)")
    print(f"   {'subscriptions':>13}  {'health() us':>11}  {'render() us':>11}  {'bytes':>7}")
    for n in (1, 16, 64):
        w = _worker(n)
        for i in range(n):  # some history, so every per-subscription sample exists
            w._runtime.sub_stats[f"sub{i}"].wake_seen(0.0)
        reps = 50 if quick else 300
        h = _per_call(w.health, reps)
        r = _per_call(w.metrics.render, reps // 3)
        print(f"   {n:>13}  {h * 1e6:>11.1f}  {r * 1e6:>11.1f}  {len(w.metrics.render()):>7}")


def log_costs(quick: bool) -> None:
    print("2. one log record, formatted")
    record = logging.LogRecord("pullwake.runner", logging.WARNING, __file__, 1,
                               "[w1] reconnecting in %.3gs (attempt %d)", (2.0, 2), None)
    plain = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    text, js = TextFormatter(), JsonFormatter()
    filt = ContextFilter({"worker": "w1"})
    n = 2000 if quick else 20000
    with log_context(worker="w1", subscription="sub1", wake=3, state=lambda: "streaming"):
        base = _per_call(lambda: plain.format(record), n)
        t = _per_call(lambda: (filt.filter(record), text.format(record)), n)
        j = _per_call(lambda: (filt.filter(record), js.format(record)), n)
    print(f"   stdlib default {base * 1e6:6.2f} us; pullwake text {t * 1e6:6.2f} us "
          f"({t / base:.2f}x); json {j * 1e6:6.2f} us ({j / base:.2f}x)")


async def per_wake_costs(quick: bool) -> None:
    print("3. per-wake bookkeeping vs an empty task")
    w = _worker(1)
    st = SubscriptionStats()
    loop = asyncio.get_running_loop()
    n = 2000 if quick else 20000

    async def empty() -> None:
        return None

    async def observed() -> None:
        with w.metrics.time_handler("sub1"):
            return None

    async def bare_batch() -> float:
        t = time.perf_counter()
        for _ in range(n):
            await loop.create_task(empty())
        return (time.perf_counter() - t) / n

    async def observed_batch() -> float:
        t = time.perf_counter()
        for i in range(n):
            st.wake_seen(float(i))
            st.claimed(float(i), i, ("s",))
            await loop.create_task(observed(), context=job_context(subscription="sub1", wake=i))
            st.acked(i)
            st.ended(i)
        return (time.perf_counter() - t) / n

    bare, obs = [], []
    for _ in range(5):  # interleaved, so load changes hit both alike
        bare.append(await bare_batch())
        obs.append(await observed_batch())
    b, o = statistics.median(bare), statistics.median(obs)
    print(f"   empty task {b * 1e6:.2f} us; with bookkeeping {o * 1e6:.2f} us "
          f"(+{(o - b) * 1e6:.2f} us per wake)")


async def endpoint_rates(quick: bool) -> None:
    print("4. health server endpoints over 127.0.0.1 (one client, sequential)")
    w = _worker(4)
    n = 100 if quick else 500
    async with HealthServer(w, port=0) as health, aiohttp.ClientSession() as s:
        for path in ("/livez", "/health", "/metrics"):
            t = time.perf_counter()
            for _ in range(n):
                async with s.get(health.url + path) as r:
                    await r.read()
            dt = time.perf_counter() - t
            print(f"   {path:<9} {n / dt:8.0f} requests/s ({dt / n * 1e3:.2f} ms each)")


async def main_async(quick: bool) -> None:
    await snapshot_costs(quick)
    log_costs(quick)
    await per_wake_costs(quick)
    await endpoint_rates(quick)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    asyncio.run(main_async(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
