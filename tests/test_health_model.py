"""One health model: counters copied into their snapshot by name, one builder for
runner and worker, the typed snapshot and its JSON form agreeing.

Pure tests read the dataclasses; the worker tests run against the embedded
Durable Streams server on 127.0.0.1 (fixtures in ``fixtures_servers.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
from runner_helpers import eventually, make_runner
from test_worker_e2e import make_worker, produce_at_once, running

from pullwake import Wake
from pullwake.runtime.health import (
    Health,
    Stats,
    SubscriptionHealth,
    WorkerHealth,
    WorkerStats,
    snapshot,
)
from pullwake.testing import EmbeddedServer

#: The runner's JSON, as it was before the health model was unified (issue 10):
#: the health server, heartbeats and the status page read these keys.
RUNNER_KEYS = [
    "running", "status", "offset", "started_at", "stream_connected",
    "stream_connected_since", "reconnect_count", "last_error", "last_error_at",
    "last_heartbeat_at", "last_heartbeat_ok", "last_claim_at", "last_claim_result",
    "last_dispatch_at", "events_received", "claims_succeeded", "claims_skipped",
    "claims_failed", "runner_id", "claims_in_flight", "messages_rejected",
    "heartbeat_failures", "state_path", "heartbeats_ok", "heartbeats_failed",
    "claims_skipped_by_reason", "claims_failed_by_reason", "recent_transitions",
    "recent_errors",
]


def test_every_counter_is_the_snapshot_field_of_the_same_name() -> None:
    health = {f.name for f in dataclasses.fields(Health)}
    assert {f.name for f in dataclasses.fields(Stats)} <= health
    assert {f.name for f in dataclasses.fields(WorkerStats)} <= {
        f.name for f in dataclasses.fields(WorkerHealth)}


def test_the_snapshot_copies_every_counter_and_shows_times_as_iso() -> None:
    stats = Stats()
    for n, f in enumerate(dataclasses.fields(Stats), start=1):
        if f.type in ("int", "int | float"):
            setattr(stats, f.name, n)
    stats.started_at = 0.0
    stats.count_skip("busy")
    stats.count_claim_failure("timeout")
    stats.note_error(1.5, "stream", "TransportError: cut")
    h = snapshot(stats, running=True, status="streaming", offset="5", runner_id="r1",
                 claims_in_flight=2)
    for f in dataclasses.fields(Stats):
        if f.type == "int":
            assert getattr(h, f.name) == getattr(stats, f.name), f.name
    assert h.started_at == "1970-01-01T00:00:00.000+00:00"
    assert h.last_error_at == "1970-01-01T00:00:01.500+00:00"
    assert h.claims_skipped_by_reason == {"busy": 1}
    assert h.recent_errors[-1]["error"] == "TransportError: cut"
    assert h.state_path == "streaming" and h.worker is None and h.subscriptions is None
    stats.count_skip("busy")  # a snapshot is a copy: later counting does not change it
    assert h.claims_skipped_by_reason == {"busy": 1}


async def test_a_bare_runners_json_keeps_its_keys_and_heartbeats_their_diagnostics() -> None:
    async with EmbeddedServer() as server:
        runner = make_runner(server)
        d = runner.health().to_dict()
        assert list(d) == RUNNER_KEYS
        assert "worker" not in runner.health().diagnostics()
        assert set(runner.health().diagnostics()) == set(RUNNER_KEYS) - {
            "running", "offset", "recent_transitions", "recent_errors"}


async def test_a_workers_snapshot_is_typed_and_its_health_is_that_snapshots_json(
        embedded_ds_server: EmbeddedServer) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handle(wake: Wake) -> None:
        entered.set()
        await release.wait()

    worker = make_worker(embedded_ds_server, handle)
    snap = worker.snapshot()
    assert isinstance(snap, Health) and isinstance(snap.worker, WorkerHealth)
    assert set(snap.subscriptions or {}) == {"sub1"}
    assert set((snap.subscriptions or {})["sub1"]) == set(SubscriptionHealth.__annotations__)
    d = worker.health()
    assert list(d) == [*RUNNER_KEYS, "worker", "subscriptions"]
    assert d["worker"] == dataclasses.asdict(snap.worker)
    assert d["subscriptions"]["sub1"] == (snap.subscriptions or {})["sub1"]
    assert worker.runner.health().worker is not None  # the runner's snapshot is the same model

    async with aiohttp.ClientSession() as http, running(worker):
        await produce_at_once(http, embedded_ds_server, "events/a", 1)
        await asyncio.wait_for(entered.wait(), 10)
        # jobs_active is a maintained counter now, not only computed in health()
        assert worker.stats.jobs_active == 1
        h: Any = worker.snapshot()
        assert h.worker.jobs_active == 1 and h.subscriptions["sub1"]["state"] == "handling"
        release.set()
        await eventually(lambda: worker.stats.wakes_acked == 1, timeout=10)
        await eventually(lambda: worker.stats.jobs_active == 0, timeout=10)
        assert worker.health()["worker"]["jobs_active"] == 0
