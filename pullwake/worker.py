"""Worker: pull-wake subscriptions on a Durable Streams server, for applications.

This module owns the application-facing worker, the facade: its
construction from one :class:`~pullwake.runtime.worker_config.WorkerConfig`
(validated there), ``start``/``stop``/``run``, the
context manager, and ``health()``. It ensures the wake stream and its
subscriptions exist and runs a :class:`~pullwake.runtime.runner.PullWakeRunner`
with the subscription control plane (:mod:`pullwake.runtime.subscriptions`).
The runner drives the worker's private runtime
(:class:`~pullwake.runtime.dispatch.WorkerRuntime`): each claimed wake becomes a
job that keeps the lease alive (:mod:`pullwake.runtime.leases`), runs the
handler (:mod:`pullwake.runtime.attempts`) and acks or releases; what the
server forgot is re-created and recovered (:mod:`pullwake.runtime.recovery`).
A handler reads its wake (:class:`~pullwake.runtime.wake.Wake`) through a small
reader capability, never through the worker.

Delivery is at least once:

- handler returns → ``ack`` with ``done`` at the offsets handed over (or read
  past, if the handler read further);
- handler fails (raises anything, ``BaseException`` and ``CancelledError``
  included, or runs past ``handler_timeout``) → ``release`` (the server writes
  a new wake), the error is reported as :class:`~pullwake.errors.HandlerError`
  and logged with its traceback, and the subscription cools down (the retry
  policy of :mod:`pullwake.runtime.failures`); after ``max_attempts`` failures of one
  wake it is appended to the dead-letter stream and acked instead;
- lease lost (409 ``FENCED``, 401) → the handler is cancelled, nothing is acked;
- the server forgot the wake stream (an in-memory server restarted: 404 on
  connect) → it is re-created and read from the beginning;
- the server forgot the subscription (restart) → it is re-created; ranges the
  new subscription marks as acked but this worker never saw acked are handed
  to the handler again as *recovered* wakes (``wake.recovered``), retried like
  wakes until handled or dead-lettered, so a server restart loses nothing (it
  may repeat some messages).

Handlers may be ``async def`` (cancelled on lease loss, timeout or stop; one
that ignores cancellation is abandoned after :data:`CANCEL_GRACE_S`) or plain
functions (run in a daemon thread of their own; they cannot be interrupted,
their result is discarded if the lease was lost meanwhile, and a stuck one
never keeps the process from exiting). A handler execution holds its
``max_concurrency`` slot until it really ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, Unpack

from pullwake.errors import ConfigError
from pullwake.io.clock import Clock, LoopClock
from pullwake.io.http import HttpClient
from pullwake.lifecycle.spec import load_spec
from pullwake.ops.metrics import WorkerMetrics
from pullwake.runtime.attempts import CANCEL_GRACE_S
from pullwake.runtime.dispatch import WorkerRuntime
from pullwake.runtime.health import Health, WorkerStats
from pullwake.runtime.logs import LabelledLog
from pullwake.runtime.runner import PullWakeRunner, http_client
from pullwake.runtime.subscriptions import SubscriptionClient, SubscriptionControlPlane
from pullwake.runtime.wake import HandlerReads, Wake
from pullwake.runtime.worker_config import WorkerConfig, WorkerKeywords

__all__ = ["CANCEL_GRACE_S", "Wake", "Worker", "WorkerStats"]

log = logging.getLogger("pullwake.worker")

Handler = Callable[["Wake"], Any]


class Worker:
    """Handle pull-wake subscriptions on a Durable Streams server.

    Configured by one :class:`~pullwake.runtime.worker_config.WorkerConfig`:
    ``Worker(config=WorkerConfig(...), handler=...)``, or the keyword
    arguments that build it (:class:`~pullwake.runtime.worker_config.WorkerKeywords`,
    e.g. ``Worker(server=..., subscription=..., pattern=..., handler=...)``).
    ``worker.config`` is the configuration either way. ``server`` is the
    stream root (``http://host:port/v1/stream``). Pass a ``pattern`` (glob) or
    ``streams`` for the default subscription, or several
    :class:`SubscriptionConfig` as ``subscriptions``. ``max_concurrency``
    bounds handlers across all subscriptions. A wake hands over at most
    ``max_claim_streams`` streams (those with pending work first); the others
    stay pending on the server and come with the next wake. ``handler_timeout``,
    ``max_attempts``, ``dead_letter_stream``, ``cooldown`` and ``cooldown_cap``
    make the :class:`~pullwake.runtime.failures.FailurePolicy` (``worker.failure_policy``).
    """

    def __init__(self, *, config: WorkerConfig | None = None, handler: Handler,
                 **keywords: Unpack[WorkerKeywords]) -> None:
        if config is None:
            config = WorkerConfig.from_keywords(_stacklevel=1, **keywords)
        elif keywords:
            raise ConfigError(f"give config or keywords, not both (got {sorted(keywords)[0]!r})")
        elif not isinstance(config, WorkerConfig):
            raise ConfigError(f"config must be a WorkerConfig, got {type(config).__name__}")
        if not callable(handler):
            raise ConfigError("handler must be callable")
        #: The worker's configuration (its runner's is ``config.runner``).
        self.config = config
        self.server = config.server
        self.subscriptions = {s.id: s for s in config.subscriptions}
        self.wake_stream = config.wake_stream
        self.worker_name = config.worker_name
        self.handler = handler
        self.max_concurrency = max_concurrency = config.max_concurrency
        self.stop_grace = stop_grace = config.stop_grace
        self.failure_policy = config.failure_policy
        self.stats = WorkerStats()
        clock = config.runner.clock
        self._clock: Clock = clock or LoopClock()
        request_timeout, on_error = config.runner.request_timeout, config.runner.on_error
        max_item_bytes, fetch_cache = config.max_item_bytes, config.fetch_cache
        max_tracked_streams = config.max_tracked_streams
        self._client = SubscriptionClient(self.server,
                                          max_claim_streams=config.max_claim_streams)
        runner_config = config.runner
        spec = load_spec(runner_config.spec_path) if runner_config.spec_path else load_spec()
        #: This worker's Prometheus registry (``metrics.registry``), read off health().
        self.metrics = WorkerMetrics(self.health, clock=self._clock, states=[
            spec.leaf_name(p) for p in spec.leaf_states])
        self._http: HttpClient = http_client(runner_config)
        #: This worker's log: every line carries its name (``[name] ``, ``worker``).
        self._log = LabelledLog(log, self.worker_name)
        self._reads = HandlerReads(
            http=self._http, stream_url=self._client.stream_url, clock=self._clock,
            max_item_bytes=max_item_bytes, request_timeout=request_timeout,
            log=self._log, fetch_cache=fetch_cache)
        #: The runtime the runner drives (private: jobs, attempts, leases, recovery).
        self._runtime = WorkerRuntime(
            handler, client=self._client, http=self._http, reader=self._reads,
            subscriptions=self.subscriptions, wake_stream=self.wake_stream,
            log=self._log, max_concurrency=max_concurrency, stop_grace=stop_grace,
            failure_policy=self.failure_policy, stats=self.stats, clock=self._clock,
            request_timeout=request_timeout, on_error=on_error,
            max_tracked_streams=max_tracked_streams, timer=self.metrics)
        # What the server forgets, the runtime's recovery re-creates (mid-claim too).
        control = SubscriptionControlPlane(
            self._client, worker=self.worker_name, subscriptions=self.subscriptions,
            wake_stream_url=runner_config.wake_stream_url, keeper=self._runtime.recovery,
            clock=clock, rng=runner_config.rng)
        #: The runner: it attaches itself to the runtime and the control plane.
        self.runner = PullWakeRunner(runner_config, self._runtime, control_plane=control,
                                     http=self._http)

    # ================================================================ public

    @property
    def clock(self) -> Clock:
        """The clock every timer of this worker runs on."""
        return self._clock

    async def start(self) -> None:
        """Ensure the wake stream and subscriptions exist, then start reading."""
        with self.runner.log_context():
            await self._start()

    async def _start(self) -> None:
        self._runtime.begin()
        self._reads.bind(asyncio.get_running_loop())
        self._http.open()
        confirmed = self._runtime.recovery.confirmed
        try:
            # Before anything is created: a wrong root would get a plain data stream.
            await self._client.verify_root(self._http, next(iter(self.subscriptions)))
            await self._client.ensure_stream(self._http, self.wake_stream)
            if self.failure_policy.dead_letter_stream is not None:
                await self._client.ensure_stream(self._http, self.failure_policy.dead_letter_stream)
            for sub in self.subscriptions.values():
                await self._client.ensure_subscription(self._http, sub)
                confirmed.add(sub.id)
        except BaseException:
            await self._http.close()  # the runner never started: nothing else closes it
            raise
        self.runner.start()

    async def stop(self) -> None:
        """Stop gracefully: running handlers get ``stop_grace``, then are released.

        Bounded even when a handler is not: one that does not end within
        :data:`CANCEL_GRACE_S` of its cancellation (a sync thread, an async
        handler that swallows ``CancelledError``) is abandoned and logged;
        :meth:`abandoned_handlers` counts those still running.
        """
        with self.runner.log_context():
            await self._stop()

    async def _stop(self) -> None:
        try:
            await self.runner.stop()
        finally:
            await self._runtime.close()
            await self._http.close()  # idempotent; the runner's shutdown closed it already
            self._reads.close()
            stuck = self.abandoned_handlers()
            if stuck:
                self._log.warning("stopped with %d handler(s) still running (a sync thread "
                                  "cannot be interrupted, or an async handler ignored "
                                  "cancellation): not waiting for them", stuck)

    def abandoned_handlers(self) -> int:
        """Handler executions still running that nothing waits for (stuck threads, tasks)."""
        return self._runtime.abandoned()

    def end_grace(self) -> None:
        """End the stop grace now: running handlers are cancelled and their claims released.

        For a second Ctrl-C during :meth:`stop`; harmless at any other time
        (the next :meth:`start` forgets it).
        """
        self._runtime.end_grace()

    async def run(self) -> None:
        """Start and run until cancelled or the wake stream is closed; then stop."""
        await self.start()
        try:
            await self.runner.wait_for_stopped()
        finally:
            await asyncio.shield(self.stop())

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def snapshot(self) -> Health:
        """The typed health snapshot: the runner's, with ``worker`` counters and
        per-``subscriptions`` state (the same :class:`~pullwake.runtime.health.Health`
        as ``worker.runner.health()``)."""
        return self.runner.health()

    def health(self) -> dict[str, Any]:
        """:meth:`snapshot` as a mapping (its JSON form, what the health server,
        metrics and status page read)."""
        return self.runner.health().to_dict()

