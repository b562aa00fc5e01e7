"""Diagnostic: machine instructions per wake, worker vs bare loop, layer by layer.

CPU seconds on a shared VM swing by +-15 % from one run to the next, more than
most of what separates the worker from the bare loop. This counts
instructions instead: each side runs in its own process under valgrind's
callgrind, which counts only while the measured window is open (switched with
``callgrind_control``), and the count repeats to within 1-2 % run to run
(the wakes in the window do not all carry exactly one message, and a
periodic timer may or may not fall in it).

The sides are ``bench_features.py``'s (``bare``, ``io``, ``lean``, ``worker``;
its docstring says what each is; ``lean`` is ``worker`` less its per-wake
bookkeeping), on the same harness as ``bench_scaling.py``
(the reference server, a producer child process, claim -> catch-up read -> ack
``done`` per wake). The producer appends at a fixed low total rate (default
4 messages/s), so a wake carries about one message whichever side runs and
however slowly valgrind makes it run (the table gives the wakes and messages
counted): the counts compare the same work.
At a low rate, work done per unit of time (a periodic heartbeat) is also
counted per wake; at the scaling table's saturation it is spread over many
more wakes.

Instructions are a proxy, not CPU time: a cache miss costs more than an add, so
read the ratios beside the scaling table's CPU ratios, not instead of them.
Needs valgrind (Debian package ``valgrind``, installed by ``.ci/setup``).
It prints; ``--write-docs`` rewrites its section of docs/performance.md.

    python benchmarks/bench_instructions.py [--ns 1,16] [--rate 4] [--duration 20] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_features  # noqa: E402
from _common import REPO, table  # noqa: E402
from _report import machine_line, write_section  # noqa: E402

TITLE = "Instructions per wake by layer (diagnostic, callgrind)"
SIDES = bench_features.SIDES
_COLLECTED = re.compile(r"Collected : (\d+)")


class _Window:
    """``Bench.run``'s profile hook: switches callgrind's counting on and off."""

    def _switch(self, state: str) -> None:
        subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def enable(self) -> None:
        self._switch("on")

    def disable(self) -> None:
        self._switch("off")


async def _child(side: str, n: int, rate: float, seconds: float) -> None:
    """In the valgrind child: one run of ``side``, counted over its window."""
    import bench_scaling as scaling

    async with scaling.Bench(scaling.parse([])) as bench:
        ctx = bench_features.bookkeeping_off() if side == "lean" else contextlib.nullcontext()
        with ctx:
            run = await bench.run("worker" if side == "lean" else side, n, seconds=seconds,
                                  warmup=3.0, rate=rate, profile=_Window())  # type: ignore[arg-type]
    print(f"WAKES {run.wakes} MESSAGES {run.messages}", flush=True)


def measure_one(side: str, n: int, rate: float, seconds: float) -> tuple[int, int, int]:
    """(instructions, wakes, messages) of one side in a valgrind child process."""
    with tempfile.TemporaryDirectory(prefix="pullwake-cg-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}", sys.executable, str(Path(__file__).resolve()),
               "--child", side, str(n), str(rate), str(seconds)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800)
    found = re.search(r"WAKES (\d+) MESSAGES (\d+)", proc.stdout)
    collected = _COLLECTED.search(proc.stderr)
    if proc.returncode or found is None or collected is None:
        raise RuntimeError(f"{side} N={n} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    wakes, messages = int(found.group(1)), int(found.group(2))
    if wakes == 0:
        raise RuntimeError(f"{side} N={n}: no wake in the window")
    return int(collected.group(1)), wakes, messages


def measure(ns: Sequence[int], sides: Sequence[str], rate: float, seconds: float,
            jobs: int) -> dict[tuple[str, int], tuple[int, int, int]]:
    """Every (side, N), ``jobs`` at a time (each child is one busy core)."""
    cases = [(side, n) for n in ns for side in sides]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {case: pool.submit(measure_one, *case, rate, seconds) for case in cases}
        results = {}
        for case, fut in futures.items():
            results[case] = fut.result()
            ins, wakes, messages = results[case]
            print(f"  {case[0]:7s} N={case[1]:<3d} {wakes} wakes, {messages} messages, "
                  f"{ins / wakes / 1e6:.3f} M instructions/wake", flush=True)
    return results


def report(results: dict[tuple[str, int], tuple[int, int, int]], args: argparse.Namespace,
           argv: Sequence[str]) -> str:
    rows = []
    for n in args.ns:
        base = results[("bare", n)]
        base_per = base[0] / base[1]
        prev = 1.0
        for side in args.sides:
            ins, wakes, messages = results[(side, n)]
            ratio = ins / wakes / base_per
            rows.append([str(n), side, bench_features.SIDE_WHAT[side], f"{wakes} / {messages}",
                         f"{ins / wakes / 1e6:.3f}", f"**{ratio:.3f}**",
                         "" if side == "bare" else f"{ratio - prev:+.3f}"])
            prev = ratio
    tab = table(["N", "side", "what", "wakes / messages counted",
                 "M instructions per wake", "/ bare", "step from the row above"], rows)
    cmd = " ".join(["python", "benchmarks/bench_instructions.py", *argv])
    return "\n\n".join([
        f"Command: `{cmd}`. {machine_line()} Reference server, the producer appending "
        f"{args.rate:g} messages/s in all (about one per wake), {args.duration:g} s counted "
        "per side, each side in its own process under valgrind's callgrind (counting only "
        "in the window). A diagnostic, not a target: instruction counts repeat to 1-2 % "
        "where CPU seconds swing by 15 %, so this is where a step of a few per cent "
        "can be seen; it is a proxy for CPU time, not CPU time (see the script's "
        "docstring). The sides are `bench_features.py`'s.",
        tab,
    ])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        side, n, rate, seconds = argv[1], int(argv[2]), float(argv[3]), float(argv[4])
        asyncio.run(_child(side, n, rate, seconds))
        return 0
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--ns", default="1,16", help="subscription counts (1,16)")
    p.add_argument("--rate", type=float, default=4.0,
                   help="messages/s appended in all (4: below what a side does under valgrind)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds counted per side (20)")
    p.add_argument("--jobs", type=int, default=2, help="sides measured at once (2)")
    p.add_argument("--sides", default=",".join(SIDES), help="which sides (all four; bare first)")
    p.add_argument("--write-docs", action="store_true", help="rewrite this section of the docs")
    args = p.parse_args(argv)
    args.ns = [int(x) for x in args.ns.split(",")]
    args.sides = args.sides.split(",")
    if args.sides[0] != "bare" or not set(args.sides) <= set(SIDES):
        p.error(f"--sides: bare first, then any of {', '.join(SIDES[1:])}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench_instructions: skipped, valgrind is not installed "
              "(Debian: apt-get install valgrind; .ci/setup installs it)")
        return 0
    results = measure(args.ns, args.sides, args.rate, args.duration, args.jobs)
    body = report(results, args, [a for a in argv if a != "--write-docs"])
    print(body)
    if args.write_docs:
        write_section(TITLE, body)
        print(f"updated docs/performance.md (## {TITLE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
