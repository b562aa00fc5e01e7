"""Run every benchmark in sequence and print their figures.

    python benchmarks/run_all.py [--quick] [--write-docs]

With ``--write-docs`` each benchmark also replaces its own section of
docs/performance.md (other sections are kept); without it nothing is written.

Benchmarks (each also runs alone):
  bench_machine.py  spec load + build, event rates vs a dict-dispatch machine
  bench_runner.py   recovery/bound ratios, wakes/s vs a bare loop, 1,000 runners
  bench_worker.py   worker wake cycles/s vs a bare loop on the reference server
  bench_scaling.py  worker vs bare loop at N = 1..64 subscriptions, reads, latency
  bench_features.py diagnostic: the worker/bare CPU ratio split by layer (N = 16)
  bench_instructions.py diagnostic: the same split in instructions (callgrind)
  bench_cache.py    fetch cache: cached vs uncached, miss overhead
The soak under faults is separate: benchmarks/soak.py (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ("bench_machine.py", [], ["--quick"]),
    ("bench_runner.py", [], ["--quick"]),
    ("bench_worker.py", [], ["--cycles", "100"]),
    ("bench_scaling.py", [], ["--quick"]),
    ("bench_features.py", [], ["--rounds", "1", "--duration", "1"]),
    ("bench_instructions.py", [], ["--ns", "1", "--duration", "5"]),
    ("bench_cache.py", [], []),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 epilog="Benchmarks: " + ", ".join(b[0] for b in BENCHES))
    ap.add_argument("--quick", action="store_true", help="the smaller, shorter run of each")
    ap.add_argument("--write-docs", action="store_true",
                    help="let each benchmark replace its section of docs/performance.md")
    args = ap.parse_args(argv)
    failed = []
    for script, full_args, quick_args in BENCHES:
        cmd = [sys.executable, str(HERE / script), *(quick_args if args.quick else full_args),
               *(["--write-docs"] if args.write_docs else [])]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        t = time.monotonic()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        print(f"=== {script}: exit {rc} in {time.monotonic() - t:.1f}s", flush=True)
        if rc:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
