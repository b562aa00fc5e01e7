"""Prometheus metrics: read off the health snapshot, per worker, bounded labels.

A worker runs against an EmbeddedServer on 127.0.0.1; /metrics is parsed with
prometheus_client's own parser. Waiting is on conditions, never on time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from observe_helpers import SUB, acked_to_tail, get, make_worker, serving
from prometheus_client.parser import text_string_to_metric_families
from runner_helpers import eventually, make_runner, started, wake

from pullwake.errors import ControlPlaneError, RequestTimeout
from pullwake.ops.metrics import METRICS
from pullwake.runtime.claims import failure_reason
from pullwake.runtime.health import SubscriptionStats
from pullwake.testing import EmbeddedServer
from pullwake.testing.server import ClaimAnswer

pytestmark = pytest.mark.timeout(60)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Mapping[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_count_a_worker_s_work_without_secrets() -> None:
    failed_once: set[str] = set()
    gate = asyncio.Event()
    waiting = asyncio.Event()  # the handler holds the wake with data on events/slow

    async def handler(wake: Any) -> None:
        # Only streams with something to hand over count (creating a stream may wake too).
        paths = [s.path for s in wake.streams if s.tail_offset > s.acked_offset]
        if "events/boom" in paths and "boom" not in failed_once:
            failed_once.add("boom")
            raise RuntimeError("first try fails")
        if "events/slow" in paths:
            waiting.set()
            await gate.wait()
        for stream in wake.streams:
            async for _ in wake.messages(stream.path):
                pass

    async with EmbeddedServer(long_poll_timeout=1.0) as srv:
        worker = make_worker(srv, handler=handler,
                             headers={"Authorization": "Bearer tok-SECRET-42"})
        async with serving(worker) as health:
            await eventually(lambda: worker.runner.status == "streaming", timeout=10)
            await srv.create_stream("events/boom")
            await srv.append("events/boom", {"n": 1})
            await acked_to_tail(srv, "events/boom")
            assert worker.stats.handler_errors == 1

            # A wake in hand: the subscription has unacked work on one stream.
            await srv.create_stream("events/slow")
            await srv.append("events/slow", {"n": 2})
            await asyncio.wait_for(waiting.wait(), 20)
            assert worker.health()["subscriptions"][SUB]["state"] == "handling"
            status, text = await get(health.url + "/metrics")
            assert status == 200
            m = parse(text)
            assert value(m, "pullwake_subscription_pending_streams", subscription=SUB) == 1
            assert value(m, "pullwake_subscription_oldest_unacked_age_seconds",
                         subscription=SUB) >= 0
            assert value(m, "pullwake_jobs_active") == 1
            gate.set()
            await acked_to_tail(srv, "events/slow")
            await eventually(lambda: worker.health()["subscriptions"][SUB]["state"] == "idle")

            status, text = await get(health.url + "/metrics")
            m = parse(text)
            assert value(m, "pullwake_lifecycle_state", state="streaming") == 1
            assert value(m, "pullwake_lifecycle_state", state="reconnecting") == 0
            assert value(m, "pullwake_handler_errors_total") == 1
            assert value(m, "pullwake_subscription_handler_errors_total", subscription=SUB) == 1
            assert 2 <= value(m, "pullwake_acks_total") <= worker.stats.wakes_acked
            assert value(m, "pullwake_wakes_claimed_total") >= 3  # fail, retry, slow
            assert value(m, "pullwake_wakes_received_total") >= 2
            assert value(m, "pullwake_heartbeats_total", result="ok") >= 1
            assert value(m, "pullwake_handler_duration_seconds_count", subscription=SUB,
                         outcome="error") == 1
            assert 2 <= value(m, "pullwake_handler_duration_seconds_count", subscription=SUB,
                              outcome="ok") <= worker.stats.wakes_handled
            assert value(m, "pullwake_subscription_pending_streams", subscription=SUB) == 0
            assert value(m, "pullwake_subscription_oldest_unacked_age_seconds",
                         subscription=SUB) == 0
            assert value(m, "pullwake_event_loop_lag_seconds") >= 0
            assert "tok-SECRET-42" not in text
            # No stream path (server-chosen, unbounded) is a label value anywhere.
            assert "events/" not in text


async def test_two_workers_in_one_process_keep_their_own_registries() -> None:
    async with EmbeddedServer(long_poll_timeout=1.0) as srv:
        a = make_worker(srv, name="wa", sub="suba", pattern="a/*")
        b = make_worker(srv, name="wb", sub="subb", pattern="b/*")
        async with serving(a) as ha, serving(b) as hb:
            await eventually(lambda: a.runner.status == b.runner.status == "streaming",
                             timeout=10)
            await srv.create_stream("a/1")
            for i in range(3):
                await srv.append("a/1", {"n": i})
                await eventually(lambda i=i: a.stats.wakes_acked >= i + 1, timeout=20)
            ma = parse((await get(ha.url + "/metrics"))[1])
            mb = parse((await get(hb.url + "/metrics"))[1])
        assert 3 <= value(ma, "pullwake_acks_total") <= a.stats.wakes_acked
        assert value(mb, "pullwake_acks_total") == 0
        assert ("pullwake_subscription_wakes_acked_total", (("subscription", "subb"),)) in mb
        assert ("pullwake_subscription_wakes_acked_total", (("subscription", "suba"),)) not in mb
        assert a.metrics.registry is not b.metrics.registry


def _numeric_keys(snapshot: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys of every number (and every ``*_s`` duration, which may be None)."""
    keys = set()
    for k, v in snapshot.items():
        if isinstance(v, bool | int | float) or (v is None and k.endswith("_s")):
            keys.add(prefix + k)
        elif isinstance(v, Mapping) and k == "subscriptions":
            for sub in v.values():
                keys |= _numeric_keys(sub, prefix + "subscriptions.*.")
        elif isinstance(v, Mapping) and k == "worker":
            keys |= _numeric_keys(v, "worker.")
    return keys


#: Numbers in the snapshot that are not metrics, and why.
NOT_EXPORTED = {
    "claims_skipped": "exported split by reason (pullwake_wakes_skipped_total)",
    "claims_failed": "exported split by reason (pullwake_wakes_failed_total)",
    "last_heartbeat_ok": "a liveness detail; heartbeats_total{result} counts them",
    "subscriptions.*.generation": "an identifier, not a quantity",
}


async def test_every_number_in_the_snapshot_is_a_metric_or_says_why_not() -> None:
    """Adding a counter to the snapshot without a row in METRICS fails here:
    add one Row (or an entry above saying why it is not a metric)."""
    async with EmbeddedServer() as srv:
        worker = make_worker(srv)
        snapshot = worker.health()
    exported = {row.key for row in METRICS}
    missing = sorted(_numeric_keys(snapshot) - exported - set(NOT_EXPORTED))
    assert missing == [], f"snapshot numbers without a metrics.METRICS row: {missing}"


def test_subscription_lag_runs_from_the_first_unacked_wake() -> None:
    st = SubscriptionStats()
    assert st.snapshot(0.0)["oldest_unacked_age_s"] is None
    st.wake_seen(10.0)
    st.claimed(11.0, 1, 2)
    st.wake_seen(12.0)  # arrives while the claimed wake is handled: the next period
    snap = st.snapshot(15.0)
    assert (snap["state"], snap["oldest_unacked_age_s"], snap["pending_streams"]) == \
        ("handling", 5.0, 2)
    st.acked(1)
    st.ended(1)
    snap = st.snapshot(20.0)
    assert (snap["state"], snap["oldest_unacked_age_s"], snap["pending_streams"]) == \
        ("waiting", 8.0, 0)
    st.claimed(21.0, 2, 0)
    st.acked(2)
    st.ended(2)
    assert st.snapshot(30.0)["oldest_unacked_age_s"] is None
    assert st.snapshot(30.0, cooling_down_s=2.0)["state"] == "cooling_down"


def test_an_earlier_wakes_bookkeeping_never_clears_the_next_claimed_wake() -> None:
    """The key frees at the done-ack answer: wake 2 may be claimed before wake 1's job ends."""
    st = SubscriptionStats()
    st.wake_seen(10.0)
    st.claimed(10.0, 1, 1)
    st.claimed(11.0, 2, 1)  # claimed the moment wake 1's ack answered
    st.acked(1)
    st.ended(1)
    snap = st.snapshot(12.0)
    assert (snap["state"], snap["generation"], snap["pending_streams"]) == ("handling", 2, 1)
    assert st.wakes_acked == 1
    st.acked(2)
    st.ended(2)
    assert st.snapshot(13.0)["state"] == "idle"


async def test_skipped_and_failed_claims_are_counted_by_reason() -> None:
    async with EmbeddedServer() as server:
        server.program_claims(ClaimAnswer.no_content(), ClaimAnswer.error(503),
                              ClaimAnswer.error(400, code="BAD"))
        runner = make_runner(server, heartbeat_interval=None)
        async with started(runner):
            await eventually(lambda: runner.status == "streaming")
            await server.append_runner_wake("r1", wake("s1", 1))
            await eventually(lambda: runner.health().claims_skipped == 1)
            await server.append_runner_wake("r1", wake("s2", 2))
            await eventually(lambda: runner.health().claims_failed == 2, timeout=10)
        h = runner.health()
    assert h.claims_skipped_by_reason == {"no_work": 1}
    assert h.claims_failed_by_reason == {"http_5xx": 1, "http_4xx": 1}
    assert failure_reason(RequestTimeout("slow", operation="claim")) == "timeout"
    assert failure_reason(ControlPlaneError("down", operation="claim")) == "transport"
    assert failure_reason(RuntimeError("x")) == "other"
