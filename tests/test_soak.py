"""The soak under faults (benchmarks/soak.py), shortened: opt-in with ``-m soak``.

    python -m pytest -m soak

Runs ``python benchmarks/soak.py --duration 60`` as a child process: the real
Durable Streams server, three ``pullwake run`` worker processes, producers and
a seeded chaos loop (503 on claims, slow acks, dropped wake-stream
connections, graceful and SIGKILL server restarts, a worker SIGKILLed and
replaced). The soak checks itself and exits 1 on any failed check; this test
also asserts the figures it reports, so a silently skipped fault kind fails too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_servers import real_server_problem

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"
KINDS = ("claim_503", "ack_delay", "wake_drop", "worker_kill", "restart", "server_kill")

pytestmark = [pytest.mark.soak, pytest.mark.realserver, pytest.mark.timeout(300)]


def test_soak_under_faults(tmp_path: Path) -> None:
    problem = real_server_problem()
    if problem is not None:
        if os.environ.get("PULLWAKE_REQUIRE_REAL_SERVER") == "1":
            pytest.fail(f"PULLWAKE_REQUIRE_REAL_SERVER=1 but the reference server cannot run: "
                        f"{problem}", pytrace=False)
        pytest.skip(f"reference server unavailable: {problem}")
    out = tmp_path / "soak.json"
    try:
        done = subprocess.run(
            [sys.executable, str(SOAK), "--duration", "60", "--seed", "7",
             "--json", str(out)],
            capture_output=True, text=True, timeout=280, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:  # the soak bounds itself well below this
        pytest.fail(f"soak did not finish within 280 s:\n{(exc.stdout or '')[-4000:]}")
    log = done.stdout[-6000:] + "\n" + done.stderr[-3000:]
    assert done.returncode == 0, log
    r = json.loads(out.read_text())

    failed = [c for c in r["checks"] if not c["ok"]]
    assert not failed, failed
    assert {c["name"] for c in r["checks"]} >= {
        "every message handled at least once", "acked == tail on every stream",
        "each wake_id handled by one worker", "workers exit 0 on SIGTERM",
        "RSS did not grow (median last quarter vs second quarter)", "no task leaked"}

    # the soak did what it claims: load, every fault kind, restarts and a kill
    assert r["appended_confirmed"] >= 500, log
    assert r["handled_unique"] == r["messages_in_streams"] >= r["appended_confirmed"]
    for kind in KINDS:
        assert r["faults"].get(kind, 0) >= 1, (kind, r["faults"], log)
    assert r["subscriptions_recreated"] >= 1   # a restart made a worker re-create it
    assert r["recovered_wakes"] >= 1            # ... and hand over the skipped range
    assert r["reconnects"] >= 3                 # every worker reconnected after a restart
    killed = [w for w in r["workers"] if w["killed_by_chaos"]]
    stopped = [w for w in r["workers"] if not w["killed_by_chaos"]]
    assert killed and len(stopped) == 3
    assert all(w["exit_code"] == 0 for w in stopped), stopped
    assert all(w["idle_tasks_after"] is not None for w in stopped), stopped
