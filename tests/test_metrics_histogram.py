"""The handler duration histogram exposes what a prometheus_client Histogram would.

pullwake counts handler durations itself (:class:`~pullwake.ops.metrics.HandlerDurations`:
no lock and no Python loop per wake) and builds the metric family at scrape
time. Here the same observations go to it and to a real
``prometheus_client.Histogram`` (the oracle) with the same name, labels and
buckets; their text expositions must agree line for line (``_created`` lines
by label set: each side stamps its own wall clock).
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from pullwake.ops.metrics import HANDLER_BUCKETS, HandlerDurations, WorkerMetrics
from pullwake.testing.clock import ManualClock

NAME = "pullwake_handler_duration_seconds"
DOC = "Handler run time (from getting a concurrency slot to return or raise), by outcome"

durations = st.one_of(
    st.sampled_from([0.0, *HANDLER_BUCKETS]),  # on a bound: counted in that bucket (le)
    st.floats(min_value=0.0, max_value=1000.0, allow_nan=False),
)
observations = st.lists(st.tuples(st.sampled_from(["sub-a", "sub-b"]),
                                  st.sampled_from(["ok", "error", "cancelled"]), durations),
                        max_size=60)


def _split(text: bytes) -> tuple[list[str], set[str]]:
    lines = text.decode().splitlines()
    created = {ln.rsplit(" ", 1)[0] for ln in lines if ln.startswith(f"{NAME}_created{{")}
    return [ln for ln in lines if not ln.startswith(f"{NAME}_created")], created


@settings(max_examples=150, deadline=None)
@given(obs=observations)
def test_the_exposition_is_a_prometheus_histograms(obs: list[tuple[str, str, float]]) -> None:
    ours = HandlerDurations(NAME, DOC, buckets=HANDLER_BUCKETS, clock=ManualClock())
    mine = CollectorRegistry()
    mine.register(ours)
    oracle_registry = CollectorRegistry()
    oracle = Histogram(NAME, DOC, ("subscription", "outcome"), buckets=HANDLER_BUCKETS,
                       registry=oracle_registry)
    for sub, outcome, seconds in obs:
        ours.observe(sub, outcome, seconds)
        oracle.labels(sub, outcome).observe(seconds)
    got, got_created = _split(generate_latest(mine))
    want, want_created = _split(generate_latest(oracle_registry))
    assert got == want
    assert got_created == want_created


def test_a_series_counts_each_bucket_and_stamps_its_start_on_the_injected_clock() -> None:
    clock = ManualClock(wall_offset=1_800_000_000.0)
    metrics = WorkerMetrics(dict, states=("stopped",), clock=clock)
    for seconds in (0.001, 0.005, 0.0051, 7.0, 1e6):
        metrics.observe_handler("s", "ok", seconds)
    family = next(iter(metrics.handler_duration.collect()))
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[(f"{NAME}_bucket", "0.005")] == 2  # 0.005 itself is "le 0.005"
    assert samples[(f"{NAME}_bucket", "0.01")] == 3
    assert samples[(f"{NAME}_bucket", "10.0")] == 4
    assert samples[(f"{NAME}_bucket", "300.0")] == 4
    assert samples[(f"{NAME}_bucket", "+Inf")] == 5
    assert samples[(f"{NAME}_count", None)] == 5
    assert math.isclose(samples[(f"{NAME}_sum", None)], 0.001 + 0.005 + 0.0051 + 7.0 + 1e6)
    assert samples[(f"{NAME}_created", None)] == 1_800_000_000.0
    assert b'pullwake_handler_duration_seconds_count{outcome="ok",subscription="s"} 5.0' \
        in metrics.render()
