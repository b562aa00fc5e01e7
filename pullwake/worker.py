"""Worker: pull-wake subscriptions on a Durable Streams server, for applications.

This module owns the application-facing worker, the facade: its
construction (checking the configuration), ``start``/``stop``/``run``, the
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
import socket
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pullwake.errors import ConfigError
from pullwake.io.clock import Clock, LoopClock
from pullwake.io.http import HeadersSource, HttpClient
from pullwake.lifecycle.spec import load_spec
from pullwake.ops.metrics import WorkerMetrics
from pullwake.protocol.urls import encode_path, validate_base_url
from pullwake.runtime.attempts import CANCEL_GRACE_S
from pullwake.runtime.config import RunnerConfig
from pullwake.runtime.dispatch import WorkerRuntime
from pullwake.runtime.failures import FailurePolicy
from pullwake.runtime.health import Health, WorkerStats
from pullwake.runtime.logs import LabelledLog
from pullwake.runtime.runner import PullWakeRunner, http_client
from pullwake.runtime.subscriptions import (
    MAX_CLAIM_STREAMS,
    SubscriptionClient,
    SubscriptionConfig,
    SubscriptionControlPlane,
)
from pullwake.runtime.wake import HandlerReads, Wake

__all__ = ["CANCEL_GRACE_S", "Wake", "Worker", "WorkerStats"]

if TYPE_CHECKING:
    from pullwake.io.fetchcache import FetchCache

log = logging.getLogger("pullwake.worker")

Handler = Callable[["Wake"], Any]


class Worker:
    """Handle pull-wake subscriptions on a Durable Streams server.

    ``server`` is the stream root (``http://host:port/v1/stream``). Pass a
    ``pattern`` (glob) or ``streams`` for the default subscription, or several
    :class:`SubscriptionConfig` as ``subscriptions``. ``max_concurrency``
    bounds handlers across all subscriptions. A wake hands over at most
    ``max_claim_streams`` streams (those with pending work first); the others
    stay pending on the server and come with the next wake. ``handler_timeout``,
    ``max_attempts``, ``dead_letter_stream``, ``cooldown`` and ``cooldown_cap``
    make the :class:`~pullwake.runtime.failures.FailurePolicy` (``worker.failure_policy``).
    """

    def __init__(
        self,
        *,
        server: str,
        handler: Handler,
        subscription: str | None = None,
        wake_stream: str = "wake/pool",
        pattern: str | None = None,
        streams: Sequence[str] = (),
        subscriptions: Sequence[SubscriptionConfig] = (),
        worker_name: str | None = None,
        lease_ms: int = 30_000,
        headers: HeadersSource = None,
        max_concurrency: int = 4,
        stop_grace: float = 10.0,
        live: str = "sse",
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        read_idle_timeout: float | None = None,
        heartbeat_interval: float | None = 10.0,
        fetch_cache: FetchCache | None = None,
        max_item_bytes: int = 16 * 1024 * 1024,
        on_error: Callable[[BaseException], Any] | None = None,
        clock: Clock | None = None,
        runner_options: Mapping[str, Any] | None = None,
        max_claim_streams: int = MAX_CLAIM_STREAMS,
        max_tracked_streams: int = 100_000,
        handler_timeout: float | None = None,
        max_attempts: int | None = None,
        dead_letter_stream: str | None = None,
        cooldown: float = 1.0,
        cooldown_cap: float = 30.0,
    ) -> None:
        self.server = validate_base_url(server, field="server")
        if not callable(handler):
            raise ConfigError("handler must be callable")
        subs = list(subscriptions)
        if subscription is not None:
            subs.insert(0, SubscriptionConfig(id=subscription, wake_stream=wake_stream,
                                              pattern=pattern, streams=tuple(streams),
                                              lease_ttl_ms=lease_ms))
        if not subs:
            raise ConfigError("a worker needs a subscription (id plus pattern or streams)")
        wake_streams = {s.wake_stream.strip("/") for s in subs}
        if len(wake_streams) != 1:
            raise ConfigError("all subscriptions of one worker must share its wake stream")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigError("max_concurrency must be an int >= 1")
        self.subscriptions = {s.id: s for s in subs}
        self.wake_stream = wake_streams.pop()
        self.worker_name = worker_name or f"{socket.gethostname()}-{id(self):x}"
        self.handler = handler
        self.max_concurrency = max_concurrency
        self.stop_grace = stop_grace
        self.failure_policy = FailurePolicy(
            handler_timeout=handler_timeout, max_attempts=max_attempts,
            dead_letter_stream=dead_letter_stream, cooldown=cooldown, cooldown_cap=cooldown_cap)
        self.stats = WorkerStats()
        self._clock: Clock = clock or LoopClock()
        fetch_cache = _check_fetch_cache(fetch_cache)
        if isinstance(max_item_bytes, bool) or not isinstance(max_item_bytes, int) \
                or max_item_bytes <= 0:
            raise ConfigError("max_item_bytes must be a positive int")
        self._client = SubscriptionClient(self.server, max_claim_streams=max_claim_streams)
        opts: dict[str, Any] = {
            "base_url": self.server,
            "runner_id": self.worker_name,
            "wake_stream_path": encode_path(self.wake_stream),
            "headers": headers,
            "live": live,
            "request_timeout": request_timeout,
            "connect_timeout": connect_timeout,
            "heartbeat_interval": heartbeat_interval,
            "on_error": on_error,
            "clock": clock,
            "name": self.worker_name,
        }
        if read_idle_timeout is not None:
            opts["read_idle_timeout"] = read_idle_timeout
        opts.update(runner_options or {})
        config = RunnerConfig(**opts)
        spec = load_spec(config.spec_path) if config.spec_path else load_spec()
        #: This worker's Prometheus registry (``metrics.registry``), read off health().
        self.metrics = WorkerMetrics(self.health, clock=self._clock, states=[
            spec.leaf_name(p) for p in spec.leaf_states])
        self._http: HttpClient = http_client(config)
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
            wake_stream_url=config.wake_stream_url, keeper=self._runtime.recovery, clock=clock)
        #: The runner: it attaches itself to the runtime and the control plane.
        self.runner = PullWakeRunner(config, self._runtime, control_plane=control,
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


def _check_fetch_cache(value: object) -> FetchCache | None:
    """``fetch_cache`` is ``None`` or a :class:`pullwake.io.cache.FetchCache`, never a string."""
    if value is None:
        return None
    from pullwake.io.fetchcache import FetchCache

    if isinstance(value, FetchCache):
        return value
    raise ConfigError(
        f"fetch_cache must be None or a pullwake.FetchCache "
        f"(FetchCache.memory() or FetchCache.sqlite(path)), not {type(value).__name__} "
        f"{value!r}")
