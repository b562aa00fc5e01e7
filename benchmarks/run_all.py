"""Run every benchmark in sequence; each rewrites its own section of docs/performance.md.

    python benchmarks/run_all.py [--quick]

Benchmarks (each also runs alone):
  bench_machine.py  spec load + build, event rates vs a dict-dispatch machine
  bench_runner.py   recovery/bound ratios, wakes/s vs a bare loop, 1,000 runners
  bench_worker.py   worker wake cycles/s vs a bare loop on the reference server
  bench_scaling.py  worker vs bare loop at N = 1..64 subscriptions, reads, latency
  bench_cache.py    fetch cache: cached vs uncached, miss overhead
The soak under faults is separate: benchmarks/soak.py (docs/reliability.md).
"""

from __future__ import annotations

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
    ("bench_cache.py", [], []),
]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for script, args, quick_args in BENCHES:
        cmd = [sys.executable, str(HERE / script), *(quick_args if quick else args)]
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
