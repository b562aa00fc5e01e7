"""Prometheus metrics of one worker, read off its health snapshot.

This module owns the metric names and the per-worker
:class:`prometheus_client.CollectorRegistry` (no global registry: two workers
in one process never collide). Counters and gauges are not kept twice: a
collector reads the same snapshot that ``/health`` serves
(:meth:`pullwake.Worker.health`) at scrape time, through the table
:data:`METRICS`. Exporting a new counter of the snapshot is one row there.
The one metric with its own state is the handler duration histogram
(:class:`HandlerDurations`), which the worker observes on its injectable
clock once per handler run, and which a collector exports at scrape time.

Labels are bounded: ``state`` (the spec's leaf states), ``reason``/``result``/
``outcome`` (fixed vocabularies) and ``subscription`` (the ids the worker was
configured with). Stream paths (chosen by whoever writes to the server) are
never a label; neither is anything secret.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pullwake.io.clock import Clock

__all__ = ["CONTENT_TYPE", "HANDLER_BUCKETS", "METRICS", "HandlerDurations", "Row",
           "WorkerMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Handler duration buckets (seconds): handlers range from milliseconds to minutes.
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)


@dataclass(frozen=True)
class Row:
    """One snapshot value exported as a metric sample.

    ``key`` is a dotted path into the snapshot (``worker.wakes_acked``); a
    ``subscriptions.*.`` key yields one sample per subscription (label
    ``subscription``). A value that is a mapping yields one sample per entry
    (label ``by``). ``labels`` are fixed labels; rows sharing a ``name`` form
    one metric family. A key missing from the snapshot exports nothing.
    """

    name: str
    kind: str  # "counter" | "gauge"
    key: str
    doc: str
    labels: tuple[tuple[str, str], ...] = ()
    by: str | None = None


C, G = "counter", "gauge"

#: Every exported snapshot value. Counter names get ``_total`` from prometheus_client.
METRICS: tuple[Row, ...] = (
    Row("pullwake_running", G, "running", "1 from start() until the runner stopped"),
    Row("pullwake_stream_connected", G, "stream_connected", "1 while the wake stream is open"),
    Row("pullwake_reconnects", C, "reconnect_count", "Reconnects (backoff periods) begun"),
    Row("pullwake_wakes_received", C, "events_received", "Wake events read off the wake stream"),
    Row("pullwake_wakes_claimed", C, "claims_succeeded", "Wakes claimed"),
    Row("pullwake_wakes_skipped", C, "claims_skipped_by_reason",
        "Wakes not claimed, by reason (in_flight, busy, no_work)", by="reason"),
    Row("pullwake_wakes_failed", C, "claims_failed_by_reason",
        "Claim attempts that failed, by reason (timeout, transport, http_4xx, http_5xx, other)",
        by="reason"),
    Row("pullwake_messages_rejected", C, "messages_rejected", "Bad wake-stream messages skipped"),
    Row("pullwake_claims_in_flight", G, "claims_in_flight", "Claims being made or waiting"),
    Row("pullwake_heartbeats", C, "heartbeats_ok", "Heartbeats sent, by result",
        labels=(("result", "ok"),)),
    Row("pullwake_heartbeats", C, "heartbeats_failed", "Heartbeats sent, by result",
        labels=(("result", "failed"),)),
    Row("pullwake_heartbeat_failures_in_a_row", G, "heartbeat_failures",
        "Consecutive liveness failures (heartbeats, lease extensions)"),
    Row("pullwake_wakes_dispatched", C, "worker.wakes_claimed", "Claimed wakes handed to jobs"),
    Row("pullwake_wakes_handled", C, "worker.wakes_handled", "Wakes whose handler returned"),
    Row("pullwake_acks", C, "worker.wakes_acked", "Wakes acked as done"),
    Row("pullwake_releases", C, "worker.wakes_released", "Claims released (handed back)"),
    Row("pullwake_handler_errors", C, "worker.handler_errors", "Handler failures"),
    Row("pullwake_handler_timeouts", C, "worker.handler_timeouts",
        "Handlers stopped by the handler timeout"),
    Row("pullwake_handlers_abandoned", C, "worker.handlers_abandoned",
        "Handlers that would not stop and were left running"),
    Row("pullwake_dead_lettered", C, "worker.dead_lettered",
        "Wakes written to the dead-letter stream and acked"),
    Row("pullwake_dead_letter_failures", C, "worker.dead_letter_failures",
        "Dead-letter records that could not be written (retried)"),
    Row("pullwake_lease_extensions", C, "worker.lease_extensions", "Lease extensions"),
    Row("pullwake_leases_lost", C, "worker.leases_lost", "Leases lost (fenced, expired, gone)"),
    Row("pullwake_recovered_wakes", C, "worker.recovered_wakes",
        "Ranges handed over again after a server forgot a subscription"),
    Row("pullwake_subscriptions_recreated", C, "worker.subscriptions_recreated",
        "Subscriptions re-created after the server forgot them"),
    Row("pullwake_wake_streams_recreated", C, "worker.wake_streams_recreated",
        "Wake streams re-created after the server forgot them"),
    Row("pullwake_jobs_active", G, "worker.jobs_active", "Wakes being handled now"),
    Row("pullwake_handlers_stuck", G, "worker.handlers_stuck",
        "Abandoned handler runs still going (a stuck sync thread, ignored cancellation)"),
    Row("pullwake_subscription_wakes_seen", C, "subscriptions.*.wakes_seen",
        "Wakes read for the subscription"),
    Row("pullwake_subscription_wakes_claimed", C, "subscriptions.*.wakes_claimed",
        "Wakes claimed for the subscription"),
    Row("pullwake_subscription_wakes_handled", C, "subscriptions.*.wakes_handled",
        "Wakes of the subscription whose handler returned"),
    Row("pullwake_subscription_wakes_acked", C, "subscriptions.*.wakes_acked",
        "Wakes of the subscription acked"),
    Row("pullwake_subscription_wakes_released", C, "subscriptions.*.wakes_released",
        "Claims of the subscription released"),
    Row("pullwake_subscription_leases_lost", C, "subscriptions.*.leases_lost",
        "Leases of the subscription lost"),
    Row("pullwake_subscription_handler_errors", C, "subscriptions.*.handler_errors",
        "Handler failures on the subscription"),
    Row("pullwake_subscription_handler_timeouts", C, "subscriptions.*.handler_timeouts",
        "Handler timeouts on the subscription"),
    Row("pullwake_subscription_dead_lettered", C, "subscriptions.*.dead_lettered",
        "Wakes of the subscription dead-lettered"),
    Row("pullwake_subscription_dead_letter_failures", C,
        "subscriptions.*.dead_letter_failures",
        "Dead-letter records of the subscription that could not be written"),
    Row("pullwake_subscription_failed_attempts", G, "subscriptions.*.failed_attempts",
        "Failed handler attempts of the wake in hand (toward the retry limit)"),
    Row("pullwake_subscription_consecutive_failures", G, "subscriptions.*.consecutive_failures",
        "Handler failures in a row on the subscription"),
    Row("pullwake_subscription_oldest_unacked_age_seconds", G,
        "subscriptions.*.oldest_unacked_age_s",
        "Age of the oldest wake of the subscription not yet acked (0 when none)"),
    Row("pullwake_subscription_pending_streams", G, "subscriptions.*.pending_streams",
        "Streams of the claimed wake not yet acked"),
    Row("pullwake_subscription_handling_seconds", G, "subscriptions.*.handling_for_s",
        "How long the wake in hand has been handled (0 when none)"),
    Row("pullwake_subscription_cooldown_seconds", G, "subscriptions.*.cooling_down_s",
        "Cool-down left after a handler failure before the next claim"),
    Row("pullwake_event_loop_lag_seconds", G, "liveness.loop_lag_s",
        "Lateness of the last event-loop watchdog tick"),
)


def _lookup(snapshot: Mapping[str, Any], key: str) -> Any:
    value: Any = snapshot
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _samples(row: Row, snapshot: Mapping[str, Any]
             ) -> Iterator[tuple[dict[str, str], float]]:
    fixed = dict(row.labels)
    head, star, tail = row.key.partition(".*.")
    if star:
        subs = _lookup(snapshot, head)
        if not isinstance(subs, Mapping):
            return
        for sub_id, sub in sorted(subs.items()):
            if not isinstance(sub, Mapping) or tail not in sub:
                continue
            value = sub[tail]
            # An age of "nothing pending" is 0, not absent: alerts compare it.
            n = _number(value) if value is not None else (0.0 if tail.endswith("_s") else None)
            if n is not None:
                yield {**fixed, "subscription": str(sub_id)}, n
        return
    value = _lookup(snapshot, row.key)
    if isinstance(value, Mapping) and row.by:
        for k, v in sorted(value.items()):
            n = _number(v)
            if n is not None:
                yield {**fixed, row.by: str(k)}, n
        return
    n = _number(value)
    if n is not None:
        yield fixed, n


class _SnapshotCollector(Collector):
    """Reads the snapshot once per scrape and yields every :data:`METRICS` row."""

    def __init__(self, owner: WorkerMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterable[Metric]:
        snapshot = self._owner.snapshot()
        grouped: dict[str, tuple[Row, list[tuple[dict[str, str], float]]]] = {}
        for row in METRICS:
            got = list(_samples(row, snapshot))
            if got:
                grouped.setdefault(row.name, (row, []))[1].extend(got)
        for name, (row, got) in grouped.items():
            names = list(dict.fromkeys(k for labels, _ in got for k in labels))
            cls = CounterMetricFamily if row.kind == C else GaugeMetricFamily
            family = cls(name, row.doc, labels=names)
            for labels, value in got:
                family.add_metric([labels.get(k, "") for k in names], value)
            yield family
        yield self._lifecycle(snapshot)

    def _lifecycle(self, snapshot: Mapping[str, Any]) -> Metric:
        family = GaugeMetricFamily("pullwake_lifecycle_state",
                                   "1 for the lifecycle state the runner is in, 0 for the others",
                                   labels=("state",))
        current = snapshot.get("status")
        for state in self._owner.states:
            family.add_metric([state], 1.0 if state == current else 0.0)
        return family


class HandlerDurations(Collector):
    """The handler duration histogram: counted here per run, exported at scrape time.

    Per (subscription, outcome) series: a count per bucket (``le``, as
    Prometheus defines it: the first bound not below the value), the sum, and
    when the series began (``_created``, wall clock). :meth:`observe` is one
    dict lookup, one C bisection and two additions, on the event loop's thread;
    :meth:`collect` builds the :class:`~prometheus_client.core.HistogramMetricFamily`
    a :class:`prometheus_client.Histogram` would expose. Not that class itself:
    its ``observe`` takes two locks and walks the buckets in Python, once per
    wake on the worker's hottest path, to spare a scrape that runs every few
    seconds at most. Series are bounded: subscriptions are configured, outcomes
    three.
    """

    def __init__(self, name: str, doc: str, *, buckets: Sequence[float], clock: Clock) -> None:
        self.name = name
        self.doc = doc
        self.bounds = tuple(float(b) for b in buckets)
        self._clock = clock
        #: (subscription, outcome) -> [count per bucket..., count above them, sum]
        self._series: dict[tuple[str, str], list[float]] = {}
        self._created: dict[tuple[str, str], float] = {}

    def observe(self, subscription: str, outcome: str, seconds: float) -> None:
        key = (subscription, outcome)
        series = self._series.get(key)
        if series is None:
            self._created[key] = self._clock.time()  # first: a scrape finds both or neither
            series = self._series[key] = [0.0] * (len(self.bounds) + 2)
        series[bisect.bisect_left(self.bounds, seconds)] += 1
        series[-1] += seconds

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=("subscription", "outcome"))
        les = [*(repr(b) for b in self.bounds), "+Inf"]
        for key, series in list(self._series.items()):
            counts = series[:-1]  # a copy: the loop may observe meanwhile
            total, cumulative = series[-1], []
            running = 0.0
            for le, n in zip(les, counts, strict=True):
                running += n
                cumulative.append((le, running))
            family.add_metric(list(key), cumulative, sum_value=total)
            family.add_sample(f"{self.name}_created",
                              {"subscription": key[0], "outcome": key[1]}, self._created[key])
        yield family


class WorkerMetrics:
    """One worker's registry: the snapshot collector plus the handler histogram.

    ``snapshot`` is called at every scrape (a health server replaces it with
    its own fuller snapshot while it serves). ``states`` are the lifecycle's
    leaf state names.
    """

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]], *, states: Sequence[str],
                 clock: Clock) -> None:
        self.snapshot = snapshot
        self.states = tuple(states)
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SnapshotCollector(self))
        self.handler_duration = HandlerDurations(
            "pullwake_handler_duration_seconds",
            "Handler run time (from getting a concurrency slot to return or raise), by outcome",
            buckets=HANDLER_BUCKETS, clock=clock)
        self.registry.register(self.handler_duration)
        #: One handler run of ``seconds`` with ``outcome`` (``ok``, ``error``, ``cancelled``).
        self.observe_handler = self.handler_duration.observe

    @contextlib.contextmanager
    def time_handler(self, subscription: str) -> Iterator[None]:
        """Observe the body's duration: outcome ``ok``, ``error`` or ``cancelled``."""
        start = self._clock.monotonic()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        except BaseException as exc:
            if not isinstance(exc, Exception):
                outcome = "cancelled"
            raise
        finally:
            self.handler_duration.observe(subscription, outcome,
                                          max(0.0, self._clock.monotonic() - start))

    def render(self) -> bytes:
        """The Prometheus text exposition of this worker."""
        return generate_latest(self.registry)
