"""Diagnostic: where the worker's extra client CPU per wake lies, layer by layer.

Same harness, server and producer as ``bench_scaling.py`` (N subscriptions,
each kept busy; claim -> catch-up read -> ack ``done`` per wake), four sides
alternating in one run:

- ``bare``: the hand-written aiohttp loop (the floor);
- ``io``: the bare loop's wakes made with pullwake's io layer (HTTP client,
  claim and ack calls, read shell), no runner or worker;
- ``lean``: ``pullwake.Worker`` with its per-wake bookkeeping switched off for
  the run (patched out with ``unittest.mock.patch.object``; NOT a
  configuration, and NOT safe outside this measurement): the log context, the
  handler duration histogram, the per-subscription health counters and
  timestamps, the heartbeat's change notices, the recovery ledger, and the
  retry history's reset;
- ``worker``: ``pullwake.Worker`` as shipped.

``io`` - ``bare`` is what the io layer adds; ``lean`` - ``io`` what the
runtime's structure adds (the wake stream's parser and lifecycle events,
claims, the wake's job, its attempt and lease, the handler's read API);
``worker`` - ``lean`` what the bookkeeping costs. Each ratio is to the bare
loop of the same round (median over rounds). It prints; ``--write-docs``
rewrites its section of docs/performance.md.

    python benchmarks/bench_features.py [--n 16] [--rounds 5] [--duration 4] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_scaling as scaling  # noqa: E402
from _common import table  # noqa: E402
from _report import machine_line, write_section  # noqa: E402

TITLE = "Worker's extra CPU by layer (diagnostic)"
SIDES = ("bare", "io", "lean", "worker")
#: Each side in a table's "what" column.
SIDE_WHAT = {
    "bare": "hand-written aiohttp loop",
    "io": "pullwake's io layer, no runtime",
    "lean": "Worker, per-wake bookkeeping patched out",
    "worker": "Worker as shipped",
}


@contextlib.contextmanager
def bookkeeping_off() -> Iterator[None]:
    """The worker's per-wake bookkeeping patched out (for one measured run only)."""
    from pullwake.runtime import attempts, dispatch, failures, health, heartbeat, recovery, wakejob

    def none(*_a: Any, **_k: Any) -> None:
        return None

    with contextlib.ExitStack() as stack:
        patches: list[tuple[Any, str, Any]] = [
            (wakejob, "log_context", lambda **_k: contextlib.nullcontext()),
            (attempts.Attempt, "_observe", none),
            (dispatch.WorkerRuntime, "wake_received", none),
            (heartbeat.Heartbeater, "notify", none),
            (recovery.Recovery, "learn", none),
            (recovery.Recovery, "acked", none),
            (failures.WakeFailures, "begin", lambda *_a: True),
            *((health.SubscriptionStats, name, none)
              for name in ("wake_seen", "claimed", "acked", "ended")),
        ]
        for target, name, value in patches:
            stack.enter_context(mock.patch.object(target, name, value))
        yield


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    per_wake: dict[str, list[float]] = {side: [] for side in SIDES}
    ratio: dict[str, list[float]] = {side: [] for side in SIDES}
    async with scaling.Bench(scaling.parse([])) as bench:
        for r in range(args.rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            got: dict[str, float] = {}
            for side in order:
                ctx = bookkeeping_off() if side == "lean" else contextlib.nullcontext()
                with ctx:
                    run = await bench.run("worker" if side == "lean" else side, args.n,
                                          seconds=args.duration, warmup=args.warmup)
                got[side] = run.client_per_wake
                print(f"  round {r + 1}/{args.rounds} {side:7s} {run.rate:6.1f} wakes/s  "
                      f"client {run.client_per_wake * 1e3:.3f} ms/wake", flush=True)
            for side in SIDES:
                per_wake[side].append(got[side])
                ratio[side].append(got[side] / got["bare"])
    return {"per_wake": [statistics.median(per_wake[s]) for s in SIDES],
            "ratio": [statistics.median(ratio[s]) for s in SIDES]}


def report(result: dict[str, list[float]], args: argparse.Namespace, argv: Sequence[str]) -> str:
    per_wake, ratio = result["per_wake"], result["ratio"]
    rows = []
    for i, side in enumerate(SIDES):
        step = "" if i == 0 else f"{ratio[i] - ratio[i - 1]:+.3f}"
        rows.append([side, SIDE_WHAT[side], f"{per_wake[i] * 1e3:.3f}", f"**{ratio[i]:.3f}**",
                     step])
    tab = table([f"side (N = {args.n})", "what", "client CPU ms/wake (median)",
                 "CPU per wake / bare (median of rounds)", "step from the row above"], rows)
    cmd = " ".join(["python", "benchmarks/bench_features.py", *argv])
    return "\n\n".join([
        f"Command: `{cmd}`. {machine_line()} Reference server, {args.rounds} alternating "
        f"rounds of {args.duration:g} s per side. A diagnostic, not a target: it splits "
        "the worker/bare ratio of the scaling table into the io layer's step, the "
        "runtime's structure, and the per-wake bookkeeping (see the script's docstring "
        "for what `lean` patches out; it is not a configuration).",
        tab,
    ])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--n", type=int, default=16, help="subscriptions (16)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per side (5)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds counted per run (4)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before counting (1)")
    p.add_argument("--write-docs", action="store_true", help="rewrite this section of the docs")
    args = p.parse_args(argv)
    result = asyncio.run(measure(args))
    body = report(result, args, [a for a in argv if a != "--write-docs"])
    print(body)
    if args.write_docs:
        write_section(TITLE, body)
        print(f"updated docs/performance.md (## {TITLE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
