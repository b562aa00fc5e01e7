"""Worker: pull-wake subscriptions on a Durable Streams server, for applications.

This module owns the application-facing worker: it ensures the wake stream
and its subscriptions exist, runs a :class:`~pullwake.runtime.runner.PullWakeRunner`
with the subscription control plane (:mod:`pullwake.runtime.subscriptions`), and is
that runner's :class:`~pullwake.runtime.runner.Runtime`: each claimed wake becomes a
job that keeps the lease alive, runs the handler and acks or releases.

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
import contextlib
import contextvars
import inspect
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pullwake.errors import (
    ConfigError,
    ControlPlaneError,
    DeadLetterError,
    HandlerError,
    HandlerTimeout,
    LeaseLost,
    PullwakeError,
    SubscriptionError,
)
from pullwake.io.areader import AsyncShell
from pullwake.io.clock import Clock, LoopClock, TimerHandle, deadline, sleep
from pullwake.io.http import HeadersSource, HttpClient, raise_for_answer
from pullwake.ops.metrics import WorkerMetrics
from pullwake.protocol import DEFAULT_RETRY, Assembler, Batch, Checkpoint, ReadCore, Rejected
from pullwake.protocol.urls import encode_path, validate_base_url
from pullwake.runtime.bounded import BoundedTable
from pullwake.runtime.config import RunnerConfig
from pullwake.runtime.failures import FailureLog, FailurePolicy, WakeFailures, dead_letter_record
from pullwake.runtime.health import SubscriptionStats
from pullwake.runtime.logs import job_context
from pullwake.runtime.runner import PullWakeRunner
from pullwake.runtime.subscriptions import (
    INVALID_OFFSET,
    MAX_CLAIM_STREAMS,
    NOT_FOUND,
    Claim,
    ClaimedStream,
    SubscriptionClient,
    SubscriptionConfig,
    SubscriptionControlPlane,
)

__all__ = ["Wake", "Worker", "WorkerStats"]

if TYPE_CHECKING:
    from pullwake.io.fetchcache import FetchCache

log = logging.getLogger("pullwake.worker")

Handler = Callable[["Wake"], Any]

#: After a handler is cancelled (lease lost, timeout, stop) it gets this long
#: (on the worker's clock) to end; then it is abandoned: logged, counted, its
#: slot kept until it does end, and nothing waits for it any more.
CANCEL_GRACE_S = 1.0


@dataclass
class WorkerStats:
    wakes_claimed: int = 0
    wakes_handled: int = 0
    wakes_acked: int = 0
    wakes_released: int = 0
    handler_errors: int = 0
    handler_timeouts: int = 0
    handlers_abandoned: int = 0
    dead_lettered: int = 0
    dead_letter_failures: int = 0
    leases_lost: int = 0
    lease_extensions: int = 0
    recovered_wakes: int = 0
    subscriptions_recreated: int = 0
    wake_streams_recreated: int = 0
    jobs_active: int = 0


class _Execution:
    """One handler run: its task and (sync) thread; the slot is freed when all have ended."""

    __slots__ = ("abandoned", "parts", "thread")

    def __init__(self) -> None:
        self.parts = 1  # the task; a sync handler's thread adds one
        self.abandoned = False
        self.thread: threading.Thread | None = None


class _StreamRead:
    """``wake.messages(path)`` / ``wake.items(path)``: ``async for`` on the loop, ``for``
    in a sync handler. Both drive the one read core (:mod:`pullwake.protocol`)
    over ``(acked_offset, tail_offset]``, streaming: items are handed over as
    they are framed, so a backlog of any size is read with memory bounded per
    message. Credentials come from the worker's headers (a mapping or a
    provider, resolved before every request on both paths).

    ``messages`` yields values and raises an item's typed
    :class:`~pullwake.errors.MessageError` if it cannot be decoded; ``items``
    yields :class:`~pullwake.protocol.Item` s, so a handler can skip a bad one.
    """

    def __init__(self, wake: Wake, stream: ClaimedStream, *, items: bool) -> None:
        self._wake = wake
        self._stream = stream
        self._items = items

    def _core(self) -> ReadCore:
        worker = self._wake._worker
        s = self._stream
        return ReadCore(offset=s.acked_offset, live="catch-up", until=s.tail_offset,
                        max_message_bytes=worker._max_item_bytes,
                        url=worker._client.stream_url(s.path))

    def _handle(self, event: Any) -> Iterator[Any]:
        kind = type(event)
        if kind is Batch:
            if self._items:
                yield from Assembler.items(event)
                return
            for value in event.values:
                if type(value) is Rejected:
                    error = value.error
                    if error.offset is None:
                        error.offset = event.start
                    raise error
                yield value
        elif kind is Checkpoint:
            self._wake._read_to(self._stream.path, event.next_offset)
        elif kind is Rejected:
            raise event.error

    async def __aiter__(self) -> AsyncIterator[Any]:
        worker = self._wake._worker
        http = worker._http
        core = self._core()
        shell = AsyncShell(http.session, core.url or "", core, headers=http.resolve_headers,
                           clock=worker._clock, connect_timeout=worker._request_timeout,
                           idle_timeout=worker._request_timeout, secrets=lambda: http.secrets)
        async for event in shell.events():
            for out in self._handle(event):
                yield out

    def __iter__(self) -> Iterator[Any]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("use `async for` in an async handler; `for` is for sync handlers")
        return self._sync()

    def _sync(self) -> Iterator[Any]:
        from pullwake.io.reader import _SyncShell

        worker = self._wake._worker
        core = self._core()
        shell = _SyncShell(worker._sync_session(), core.url or "", core,
                           headers=worker._sync_headers, timeout=worker._request_timeout,
                           retry=DEFAULT_RETRY, secrets=worker._http.secrets)
        events = shell.events()
        try:
            for event in events:
                yield from self._handle(event)
        finally:
            events.close()


@dataclass
class Wake:
    """One claimed wake handed to a handler: streams with ``(acked, tail]`` ranges."""

    subscription_id: str
    wake_id: str | None
    generation: int | None
    streams: tuple[ClaimedStream, ...]
    recovered: bool = False
    _worker: Worker = field(repr=False, default=None)  # type: ignore[assignment]
    _read: dict[str, str] = field(default_factory=dict, repr=False)

    def stream(self, path: str) -> ClaimedStream:
        for s in self.streams:
            if s.path == path.strip("/") or s.path == path:
                return s
        raise KeyError(f"stream {path!r} is not part of this wake")

    def messages(self, path: str) -> _StreamRead:
        """The messages of ``path`` in ``(acked_offset, tail_offset]`` (values).

        JSON streams give their messages, ``text/*`` streams ``str`` chunks,
        others ``bytes`` chunks. A message that cannot be decoded raises its
        typed :class:`~pullwake.errors.MessageError`; use :meth:`items` to skip it.
        """
        return _StreamRead(self, self.stream(path), items=False)

    def items(self, path: str) -> _StreamRead:
        """The :class:`~pullwake.protocol.Item` s of ``path`` in ``(acked, tail]``.

        Each carries ``data`` (raising if it could not be decoded; check
        ``item.ok`` to skip it), ``offset`` (resume after its chunk), ``start``
        and ``index`` (``(start, index)`` names it, for idempotent handlers).
        """
        return _StreamRead(self, self.stream(path), items=True)

    def _read_to(self, path: str, offset: str) -> None:
        if offset > self._read.get(path, ""):
            self._read[path] = offset


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
                                              claim_lease=lease_ms / 1000))
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
        self._request_timeout = request_timeout
        self._on_error = on_error
        self._fetch_cache = _check_fetch_cache(fetch_cache)
        if isinstance(max_item_bytes, bool) or not isinstance(max_item_bytes, int) \
                or max_item_bytes <= 0:
            raise ConfigError("max_item_bytes must be a positive int")
        self._max_item_bytes = max_item_bytes
        self._session_sync: Any = None
        self._session_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = SubscriptionClient(self.server, max_claim_streams=max_claim_streams)
        self._jobs: dict[str, asyncio.Task[Any]] = {}
        self._recoveries: set[asyncio.Task[Any]] = set()
        #: Per subscription: the current wake's failures and the cool-down.
        self._failures: dict[str, WakeFailures] = {}
        self._failure_log = FailureLog(log, self.failure_policy.log_interval)
        self._is_async = inspect.iscoroutinefunction(handler)
        #: Handler executions that outlived their job (abandoned), still holding a slot.
        self._outliving = 0
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._threads: set[threading.Thread] = set()
        self._strays: set[asyncio.Task[Any]] = set()  # lease extensions cut short
        self._confirmed: set[str] = set()
        #: Per subscription, the acked offset of each stream we know of (for
        #: recovery after a server restart). Keyed by server-chosen paths, so
        #: bounded (issue 14, class 8): a forgotten stream is recovered from
        #: its beginning (more repeats, never a loss).
        self._ledger_capacity = max_tracked_streams
        self._ledger: dict[str, BoundedTable[str, str]] = {
            s: BoundedTable(max_tracked_streams) for s in self.subscriptions}
        self._closing = False
        self._grace_over = asyncio.Event()
        #: Bounds running handlers even when claims for several subscriptions
        #: complete at once (is_wake_active only holds back *new* claims).
        self._slots = asyncio.Semaphore(max_concurrency)
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
        control = SubscriptionControlPlane(
            self._client, worker=self.worker_name, subscriptions=self.subscriptions,
            wake_stream_url=config.wake_stream_url, on_missing=self._recreate,
            on_connected=self._on_connected,
            on_retry=lambda exc: self.runner.claims.record_failure(exc), clock=clock,
            on_wake_stream_missing=self._recreate_wake_stream)
        self.runner = PullWakeRunner(config, self, control_plane=control)
        self._http: HttpClient = self.runner.http
        self._sub_stats = {s: SubscriptionStats() for s in self.subscriptions}
        spec = self.runner.lifecycle.spec
        #: This worker's Prometheus registry (``metrics.registry``), read off health().
        self.metrics = WorkerMetrics(self.health, clock=self._clock, states=[
            spec.leaf_name(p) for p in spec.leaf_states])

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
        self._closing = False
        self._grace_over.clear()
        self._loop = asyncio.get_running_loop()
        self._http.open()
        try:
            # Before anything is created: a wrong root would get a plain data stream.
            await self._client.verify_root(self._http, next(iter(self.subscriptions)))
            await self._client.ensure_stream(self._http, self.wake_stream)
            if self.failure_policy.dead_letter_stream is not None:
                await self._client.ensure_stream(self._http, self.failure_policy.dead_letter_stream)
            for sub in self.subscriptions.values():
                await self._client.ensure_subscription(self._http, sub)
                self._confirmed.add(sub.id)
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
            await self._cancel_recoveries()
            if self._strays:
                await asyncio.gather(*self._strays, return_exceptions=True)
            await self._http.close()  # idempotent; the runner's shutdown closed it already
            if self._session_sync is not None:
                self._session_sync.close()
                self._session_sync = None
            stuck = self.abandoned_handlers()
            if stuck:
                log.warning("[%s] stopped with %d handler(s) still running (a sync thread "
                            "cannot be interrupted, or an async handler ignored "
                            "cancellation): not waiting for them", self.worker_name, stuck)

    def abandoned_handlers(self) -> int:
        """Handler executions still running that nothing waits for (stuck threads, tasks)."""
        threads = sum(1 for t in self._threads if t.is_alive())
        return threads + sum(1 for t in self._abandoned if not t.done())

    def end_grace(self) -> None:
        """End the stop grace now: running handlers are cancelled and their claims released.

        For a second Ctrl-C during :meth:`stop`; harmless at any other time
        (the next :meth:`start` forgets it).
        """
        self._grace_over.set()

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

    def health(self) -> dict[str, Any]:
        """The runner's snapshot, ``worker`` counters and per-``subscriptions`` state."""
        out = self.runner.health().to_dict()
        out["worker"] = {**self.stats.__dict__, "jobs_active": len(self._jobs),
                         "handlers_stuck": self.abandoned_handlers()}
        now = self._clock.monotonic()
        subs: dict[str, Any] = {}
        for sub_id, st in self._sub_stats.items():
            fails = self._failures.get(sub_id)
            until = fails.cooldown_until if fails is not None else None
            subs[sub_id] = st.snapshot(
                now, cooling_down_s=0.0 if until is None else max(0.0, until - now),
                consecutive_failures=fails.backoff.attempt if fails is not None else 0,
                failed_attempts=fails.attempts if fails is not None else 0)
        out["subscriptions"] = subs
        return out

    # ============================================== Runtime (for the runner)

    #: The worker calls ``runner.wake_free`` when a job ends or a cool-down
    #: runs out, so a held-back wake is claimed then, never by polling.
    notifies_wake_free = True

    def wake_received(self, wake: Any) -> None:
        st = self._sub_stats.get(getattr(wake, "subscription_id", None) or "")
        if st is not None:
            st.wake_seen(self._clock.monotonic())

    def is_wake_active(self, key: str) -> bool:
        if key in self._jobs or len(self._jobs) + self._outliving >= self.max_concurrency:
            return True
        fails = self._failures.get(key)
        until = fails.cooldown_until if fails is not None else None
        return until is not None and self._clock.monotonic() < until

    def dispatch_wake(self, notification: Any, *, claim_headers: Any,
                      claim_token_header: str | None) -> None:
        claim: Claim = notification["claim"]
        self.stats.wakes_claimed += 1
        key = claim.subscription_id
        self._sub(claim).claimed(self._clock.monotonic(), claim.generation,
                                 (s.path for s in claim.streams if s.tail_offset > s.acked_offset))
        # The claim token is scrubbed from any text while, and only while, its job runs.
        scope = self._http.hold_secrets(claim.token)
        scope.__enter__()
        task = asyncio.get_running_loop().create_task(
            self._job(claim), context=job_context(subscription=key, wake=claim.generation))
        task.set_name(f"pullwake-job[{key}#{claim.generation}]")
        self._jobs[key] = task

        def over(t: asyncio.Future[Any]) -> None:
            scope.__exit__(None, None, None)
            self._sub(claim).ended(claim.generation)
            self._job_over(key, t)

        task.add_done_callback(over)

    def _job_over(self, key: str, task: asyncio.Future[Any]) -> None:
        """``key`` is free once its job acked (or ended): tell the runner at once."""
        if self._jobs.get(key) is not task:
            return
        full = len(self._jobs) >= self.max_concurrency
        del self._jobs[key]
        self.runner.wake_free(None if full else key)  # a full worker frees any key

    def abort_wakes(self) -> None:
        self._closing = True

    async def drain_wakes(self) -> None:
        # Recovered wakes get the same grace: nothing else would hand them over.
        jobs = [*self._jobs.values(), *self._recoveries]
        if not jobs:
            return
        if self.stop_grace > 0 and not self._grace_over.is_set():
            finished = asyncio.ensure_future(asyncio.wait(jobs))
            cut = asyncio.ensure_future(self._grace_over.wait())
            try:
                with contextlib.suppress(TimeoutError):
                    async with deadline(self._clock, self.stop_grace):
                        await asyncio.wait({finished, cut}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                finished.cancel()
                cut.cancel()
        pending = [t for t in jobs if not t.done()]
        for t in pending:
            t.cancel()  # a job releases its claim on the way out
        if pending:
            log.warning("[%s] %d handler(s) still running after %.3gs: released",
                        self.worker_name, len(pending), self.stop_grace)
            await asyncio.gather(*pending, return_exceptions=True)

    # ================================================================= jobs

    async def _job(self, claim: Claim) -> None:
        sub = claim.subscription_id
        self._learn(sub, claim.streams)
        fails = self._failures_of(sub)
        fails.begin(claim.streams)
        wake = Wake(subscription_id=sub, wake_id=claim.wake_id,
                    generation=claim.generation, streams=claim.streams, _worker=self)
        keeper = self._keep_lease(claim)
        attempt: asyncio.Future[BaseException | None] | None = None
        try:
            if fails.dead:
                # Given up on earlier (attempts exhausted) but its record or ack
                # did not get through: do not run the handler again.
                error = fails.last_error
            else:
                attempt = asyncio.ensure_future(self._attempt(wake))
                await asyncio.wait((keeper, attempt), return_when=asyncio.FIRST_COMPLETED)
                if not attempt.done():  # the keeper ended: the lease is gone
                    attempt.cancel()
                    await asyncio.gather(attempt, return_exceptions=True)
                    lost = keeper.exception() if not keeper.cancelled() else None
                    self.stats.leases_lost += 1
                    self._sub(claim).leases_lost += 1
                    self._report(lost or LeaseLost("lease lost", operation="extend lease"))
                    return
                error = attempt.result()
                if error is None:
                    await self._stop_keeper(keeper)
                    self.stats.wakes_handled += 1
                    self._sub(claim).wakes_handled += 1
                    fails.succeeded()
                    await self._finish(claim, wake)
                    return
                self._handler_failed(wake, fails, error)
                if self.failure_policy.exhausted(fails.attempts):
                    fails.dead = True
            if fails.dead and (fails.recorded is not None
                               or await self._dead_letter(wake, fails, reason="max_attempts")):
                await self._stop_keeper(keeper)
                recorded = fails.recorded or claim.streams
                if await self._finish(claim, wake, acks=[
                        (s.path, s.tail_offset) for s in recorded
                        if s.tail_offset > s.acked_offset]):
                    fails.succeeded()
                return
            if fails.dead:  # the record could not be written: retry it after a cool-down
                self._free_after(fails.cool(self._clock.monotonic()), sub)
            await self._stop_keeper(keeper)
            await self._release(claim, why="handler failed")
        except asyncio.CancelledError:
            if attempt is not None:  # the lease is kept while the handler winds down
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
            await self._stop_keeper(keeper)
            await self._release(claim, why="stopped")
            raise

    @staticmethod
    async def _stop_keeper(keeper: asyncio.Future[Any]) -> None:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)

    async def _attempt(self, wake: Wake) -> BaseException | None:
        """Run the handler once: None if it returned, else what it raised (or a timeout).

        Whatever the handler raises is contained here (``KeyboardInterrupt``,
        ``SystemExit``, a ``CancelledError`` of its own): it is a handler
        failure, never the worker's end. This raises ``CancelledError`` only
        when this attempt itself is cancelled (lease lost, stop); the handler
        is then cancelled and given :data:`CANCEL_GRACE_S`, else abandoned.
        """
        await self._slots.acquire()  # the lease is kept while a job waits for a slot
        ex = _Execution()
        start = self._clock.monotonic()
        run = asyncio.ensure_future(self._invoke(wake, ex))
        run.add_done_callback(lambda _t: self._part_ended(ex))
        outcome = "cancelled"
        try:
            if not await self._wait_on_clock(run, self.failure_policy.handler_timeout):
                await self._wind_down(run, ex, wake, why="timed out")
                outcome = "error"
                return HandlerTimeout(
                    f"handler timed out on {self._what(wake)} after "
                    f"{self.failure_policy.handler_timeout:g}s (handler_timeout)")
            if run.cancelled():  # pragma: no cover - only this method cancels it
                return asyncio.CancelledError()
            error = run.result()
            outcome = "ok" if error is None else "error"
            return error
        except asyncio.CancelledError:
            await self._wind_down(run, ex, wake, why="was cancelled")
            raise
        finally:
            self.metrics.handler_duration.labels(wake.subscription_id, outcome).observe(
                max(0.0, self._clock.monotonic() - start))

    async def _invoke(self, wake: Wake, ex: _Execution) -> BaseException | None:
        try:
            if self._is_async:
                await self.handler(wake)
                return None
            result, error = await self._in_thread(wake, ex)
            if error is not None:
                return error
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # ours: lease lost, timeout or stop
            return exc  # the handler raised CancelledError itself: a failure like any
        except BaseException as exc:  # noqa: BLE001 - contained, reported as a handler failure
            return exc
        return None

    def _in_thread(self, wake: Wake, ex: _Execution
                   ) -> asyncio.Future[tuple[Any, BaseException | None]]:
        """Run a sync handler in a daemon thread of its own (a stuck one never blocks exit)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, BaseException | None]] = loop.create_future()
        ctx = contextvars.copy_context()
        handler = self.handler

        def settle(result: Any, error: BaseException | None) -> None:
            if not fut.done():
                fut.set_result((result, error))
            self._threads.discard(thread)
            self._part_ended(ex)

        def body() -> None:
            result: Any = None
            error: BaseException | None = None
            try:
                result = ctx.run(handler, wake)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop as a failure
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, result, error)

        thread = threading.Thread(target=body, daemon=True,
                                  name=f"pullwake-handler[{wake.subscription_id}]")
        ex.parts += 1
        ex.thread = thread
        self._threads.add(thread)
        thread.start()
        return fut

    def _part_ended(self, ex: _Execution) -> None:
        ex.parts -= 1
        if ex.parts == 0:
            self._slots.release()
            if ex.abandoned:  # it held a slot past its job: the worker is less full now
                self._outliving -= 1
                self.runner.wake_free(None)

    def _free_after(self, delay: float, sub_id: str) -> None:
        """A cool-down: tell the runner when it ends (held-back wakes are not polled)."""
        self._clock.call_later(delay, self.runner.wake_free, sub_id)

    async def _wait_on_clock(self, fut: asyncio.Future[Any], seconds: float | None) -> bool:
        """Wait for ``fut`` at most ``seconds`` on the worker's clock; True if it is done.

        Does not cancel the waiting task (unlike :func:`~pullwake.io.clock.deadline`),
        so it is safe inside a cancellation that is already being handled.
        """
        if seconds is None:
            await asyncio.wait({fut})
            return True
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def ring() -> None:
            if not timer.done():
                timer.set_result(None)

        handle = self._clock.call_later(seconds, ring)
        try:
            await asyncio.wait({fut, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            handle.cancel()
            timer.cancel()
        return fut.done()

    async def _wind_down(self, run: asyncio.Future[Any], ex: _Execution, wake: Wake, *,
                         why: str) -> None:
        """Cancel a handler run and wait :data:`CANCEL_GRACE_S` for it; else abandon it."""
        run.cancel()
        await self._wait_on_clock(run, CANCEL_GRACE_S)
        if ex.parts == 0:
            return
        ex.abandoned = True
        self._outliving += 1
        self.stats.handlers_abandoned += 1
        if not run.done():
            self._abandoned.add(run)
            run.add_done_callback(self._abandoned.discard)
        how = ("its thread cannot be interrupted" if ex.thread is not None
               else "it did not end when cancelled")
        log.warning("[%s] handler of %s %s and is still running (%s): abandoned; it keeps "
                    "a concurrency slot until it ends", self.worker_name, self._what(wake),
                    why, how)

    def _handler_failed(self, wake: Wake, fails: WakeFailures, error: BaseException) -> float:
        """Count, log (traceback, rate-limited) and report one failed attempt; the cool-down."""
        now, wall = self._clock.monotonic(), self._clock.time()
        delay = fails.failed(error, now, wall)
        self._free_after(delay, wake.subscription_id)
        self.stats.handler_errors += 1
        errs = self._sub_of(wake.subscription_id)
        errs.handler_errors += 1
        if isinstance(error, HandlerTimeout):
            self.stats.handler_timeouts += 1
            errs.handler_timeouts += 1
        text = f"{type(error).__name__}: {self._http.scrub(str(error))}"
        errs.last_error, errs.last_error_at = text, wall
        limit = self.failure_policy.max_attempts
        of = f"/{limit}" if limit is not None else ""
        then = ("giving up: dead-lettering it" if self.failure_policy.exhausted(fails.attempts)
                else f"retried after a {delay:.3g}s cool-down")
        self._failure_log.log(
            wake.subscription_id, first=fails.attempts == 1, now=now, error=error,
            scrub=self._http.scrub,
            message=f"[{self.worker_name}] handler failed on {self._what(wake)} (attempt "
                    f"{fails.attempts}{of}): {text}; {then}")
        if isinstance(error, HandlerTimeout):
            herr: HandlerError = error
        else:
            herr = HandlerError(f"handler failed on {self._what(wake)}: {text}")
            herr.__cause__ = error
        self._notify(herr, "handler")
        return delay

    @staticmethod
    def _what(wake: Wake) -> str:
        if wake.recovered:
            return f"a recovered wake of {wake.subscription_id}"
        return f"{wake.subscription_id}#{wake.generation}"

    def _failures_of(self, sub_id: str) -> WakeFailures:
        fails = self._failures.get(sub_id)
        if fails is None:
            fails = self._failures[sub_id] = WakeFailures(backoff=self.failure_policy.backoff())
        return fails

    async def _dead_letter(self, wake: Wake, fails: WakeFailures, *, reason: str) -> bool:
        """Append the wake's record to the dead-letter stream; True once it is written."""
        stream = self.failure_policy.dead_letter_stream
        errs = self._sub_of(wake.subscription_id)
        if stream is None:  # pragma: no cover - FailurePolicy never exhausts without one
            return False
        record = dead_letter_record(
            subscription=wake.subscription_id, worker=self.worker_name, streams=wake.streams,
            attempts=fails.attempts, error=fails.last_error, scrub=self._http.scrub,
            reason=reason, wake_id=wake.wake_id, generation=wake.generation,
            recovered=wake.recovered, first_failed_at=fails.first_failed_at,
            now=self._clock.time())
        try:
            await asyncio.shield(self._append_record(stream, record))
        except PullwakeError as exc:
            self.stats.dead_letter_failures += 1
            errs.dead_letter_failures += 1
            err = exc if isinstance(exc, DeadLetterError) else DeadLetterError(
                f"cannot append to {stream!r}: {self._http.scrub(str(exc))}",
                operation="dead-letter append", status=getattr(exc, "status", None))
            if err is not exc:
                err.__cause__ = exc
            log.warning("[%s] dead-letter record of %s not written, so it is not acked "
                        "(released, retried later): %s", self.worker_name, self._what(wake),
                        self._http.scrub(str(err)))
            self._notify(err)
            return False
        fails.recorded = tuple(wake.streams)
        self.stats.dead_lettered += 1
        errs.dead_lettered += 1
        log.warning("[%s] %s dead-lettered to %s after %d attempt(s) (%s)", self.worker_name,
                    self._what(wake), stream, fails.attempts, reason)
        return True

    async def _append_record(self, stream: str, record: Mapping[str, Any]) -> None:
        url = self._client.stream_url(stream)
        answer = await self._http.request("POST", url, operation="dead-letter append",
                                          json_body=record)
        if answer.status == 404:  # an in-memory server forgot it: re-create, once
            await self._client.ensure_stream(self._http, stream)
            answer = await self._http.request("POST", url, operation="dead-letter append",
                                              json_body=record)
        raise_for_answer(answer, operation="dead-letter append", url=url,
                         scrub=self._http.scrub, cls=DeadLetterError)

    def _keep_lease(self, claim: Claim) -> asyncio.Future[None]:
        """Extend the lease every third of its TTL; the future fails when the lease is lost.

        Cancelling the future stops the extensions. Between extensions nothing
        runs but a timer on the clock (no task per wake): most wakes end before
        the first extension is due. An extension may take as long as the lease
        has left (a slow or loaded server is not a lost lease); one that failed
        is tried again after a tenth of the TTL, not a third, so a single slow
        answer does not let the lease run out.
        """
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ttl = claim.lease_ttl_ms / 1000
        interval = max(0.2, ttl / 3)
        retry = max(0.05, ttl / 10)
        clock = self._clock
        held_until = clock.monotonic() + ttl  # as of the claim answer
        timer: TimerHandle | None = None
        task: asyncio.Task[bool] | None = None

        def extend() -> None:
            nonlocal timer, task
            timer = None
            if not lost.done():
                started = clock.monotonic()
                left = max(retry, held_until - started)
                task = asyncio.ensure_future(self._extend_lease(claim, left))
                task.add_done_callback(lambda t: extended(t, started))

        def extended(t: asyncio.Task[bool], started: float) -> None:
            nonlocal timer, task, held_until
            task = None
            if lost.done() or t.cancelled():
                return
            error = t.exception()
            if error is not None:
                lost.set_exception(error)
            elif t.result():
                held_until = started + ttl
                timer = clock.call_later(interval, extend)
            else:
                timer = clock.call_later(retry, extend)

        def stop(_f: asyncio.Future[None]) -> None:
            if timer is not None:
                timer.cancel()
            if task is not None:  # an extension in flight: cancelled, awaited at stop
                task.cancel()
                self._strays.add(task)
                task.add_done_callback(self._strays.discard)

        lost.add_done_callback(stop)
        timer = self._clock.call_later(interval, extend)
        return lost

    async def _extend_lease(self, claim: Claim, left: float) -> bool:
        """One lease extension, bounded by the lease time ``left``; True when it held.

        Raises LeaseLost when the lease is gone; any other failure is reported
        to the runner's liveness and answers False (the keeper tries again).
        """
        try:
            await self._client.ack(self._http, claim, timeout=min(self._request_timeout, left))
        except LeaseLost:
            raise
        except SubscriptionError as exc:
            if exc.code == NOT_FOUND:
                raise LeaseLost("the subscription is gone (server restarted?)",
                                operation="extend lease", status=404, code=NOT_FOUND) from exc
            self.runner.record_liveness(False, exc)
        except PullwakeError as exc:
            self.runner.record_liveness(False, exc)
        else:
            self.stats.lease_extensions += 1
            self.runner.record_liveness(True)
            return True
        return False

    async def _finish(self, claim: Claim, wake: Wake,
                      acks: list[tuple[str, str]] | None = None) -> bool:
        """Ack ``done`` (default: what was handed over or read); True if the server took it."""
        if acks is None:
            acks = []
            for s in claim.streams:
                end = max(s.tail_offset, wake._read.get(s.path, ""))
                if end > s.acked_offset:
                    acks.append((s.path, end))
        try:
            try:
                await self._client.ack(self._http, claim, acks=acks, done=True)
            except ControlPlaneError as exc:
                # A file-backed server can serve a read past the tail it checks
                # acks against (the append is on disk, its offset not yet
                # committed): ack what the claim handed over instead. Messages
                # read past it come again in the next wake.
                clamped = [(p, min(o, self._tail_of(claim, p))) for p, o in acks]
                if exc.code != INVALID_OFFSET or clamped == acks:
                    raise
                acks = clamped
                await self._client.ack(self._http, claim, acks=acks, done=True)
        except (LeaseLost, SubscriptionError) as exc:
            self.stats.leases_lost += 1
            self._report(exc)
            return False
        except PullwakeError as exc:
            self._report(exc)  # not acked: the lease expires and the wake comes back
            return False
        self.stats.wakes_acked += 1
        self._sub(claim).acked(claim.generation)
        ledger = self._ledger[claim.subscription_id]
        for path, offset in acks:
            if offset > ledger.get(path, "-1"):
                ledger[path] = offset
        task = asyncio.current_task()
        if task is not None:  # acked: the next wake may be claimed before this task ends
            self._job_over(claim.subscription_id, task)
        return True

    @staticmethod
    def _tail_of(claim: Claim, path: str) -> str:
        return next(s.tail_offset for s in claim.streams if s.path == path)

    async def _release(self, claim: Claim, *, why: str) -> None:
        try:
            await asyncio.shield(self._client.release(self._http, claim,
                                                      timeout=min(self._request_timeout, 5.0)))
        except (PullwakeError, asyncio.CancelledError) as exc:
            log.info("[%s] release of %s#%d (%s) failed: %s", self.worker_name,
                     claim.subscription_id, claim.generation, why, exc)
            return
        self.stats.wakes_released += 1
        self._sub(claim).wakes_released += 1

    def _sub(self, claim: Claim) -> SubscriptionStats:
        return self._sub_of(claim.subscription_id)

    def _sub_of(self, sub_id: str) -> SubscriptionStats:
        return self._sub_stats.setdefault(sub_id, SubscriptionStats())

    # ============================================== subscriptions and recovery

    def _ledger_of(self, sub_id: str) -> BoundedTable[str, str]:
        ledger = self._ledger.get(sub_id)
        if ledger is None:  # only configured subscriptions are claimed: bounded too
            ledger = self._ledger[sub_id] = BoundedTable(self._ledger_capacity)
        return ledger

    def _learn(self, sub_id: str, streams: Sequence[ClaimedStream]) -> None:
        ledger = self._ledger_of(sub_id)
        for s in streams:
            if s.acked_offset > ledger.get(s.path, "-1"):
                ledger[s.path] = s.acked_offset

    async def _recreate_wake_stream(self, http: HttpClient) -> bool:
        """The server forgot the wake stream (404): it is ours, so create it again.

        The subscriptions are re-created (and recovered) once the stream is
        connected again (:meth:`_on_connected`).
        """
        created = await self._client.ensure_stream(http, self.wake_stream)
        if created:
            self.stats.wake_streams_recreated += 1
            log.warning("[%s] wake stream %r was gone (server restart?): re-created",
                        self.worker_name, self.wake_stream)
        return created

    async def _on_connected(self, http: HttpClient) -> None:
        """After every (re)connect: the server may have restarted and forgotten us."""
        for sub in self.subscriptions.values():
            await self._recreate(http, sub)

    async def _recreate(self, http: HttpClient, sub: SubscriptionConfig) -> None:
        # What we knew acked *before* the PUT: once the new subscription
        # exists, claims on it teach the ledger its fresh (skipped-to) offsets.
        known = dict(self._ledger_of(sub.id))
        created = await self._client.ensure_subscription(http, sub)
        if not created:
            return
        if sub.id in self._confirmed:
            self.stats.subscriptions_recreated += 1
            log.warning("[%s] subscription %r was gone (server restart?): re-created",
                        self.worker_name, sub.id)
            task = asyncio.get_running_loop().create_task(
                self._recover(http, sub, known), context=job_context(subscription=sub.id))
            task.set_name(f"pullwake-recover[{sub.id}]")
            self._recoveries.add(task)
            task.add_done_callback(self._recoveries.discard)
        self._confirmed.add(sub.id)

    async def _recover(self, http: HttpClient, sub: SubscriptionConfig,
                       known: Mapping[str, str]) -> None:
        """Hand over ranges the re-created subscription skipped (at least once).

        The new subscription starts every stream at its tail, so
        ``(known, acked now]`` may never have reached a handler, and nothing
        else will ever hand it over. So the range, once looked up, is handed
        to the handler until an attempt succeeds or the retry policy gives it
        up to the dead-letter stream, whatever the handler raised (a
        ``BaseException`` or ``CancelledError`` of its own included), cooling
        down between attempts like a wake. A failed look-up is retried the
        same way. A subscription listing more streams than one look-up
        returns is recovered in rounds (``streams_deferred``), each its own
        recovered wake. If the worker stops first, the range is dead-lettered
        (``reason: "stopped"``) or, without a dead-letter stream, logged at
        ERROR: never dropped without a record.
        """
        lookups = self.failure_policy.backoff()
        known = dict(known)  # rounds: a subscription may list more than one wake holds

        def skipped(s: Mapping[str, Any]) -> bool:
            return str(s.get("acked_offset")) > known.get(str(s.get("path")), "-1")

        fails = WakeFailures(backoff=self.failure_policy.backoff())
        wake: Wake | None = None
        more = False
        delay = 0.0
        try:
            while True:
                if delay:
                    await sleep(self._clock, delay)
                    delay = 0.0
                if wake is None:
                    try:
                        body = await self._client.get_subscription(http, sub.id, select=skipped)
                    except PullwakeError as exc:
                        delay = lookups.next_delay()
                        self._report(exc)
                        continue
                    if body is None:  # gone again: it will be re-created; keep our range
                        delay = lookups.next_delay()
                        continue
                    lookups.reset()
                    streams = []
                    for s in body.get("streams", []):
                        path, server_acked = str(s.get("path")), str(s.get("acked_offset"))
                        start = known.get(path, "-1")
                        if server_acked > start:
                            streams.append(ClaimedStream(path=path, acked_offset=start,
                                                         tail_offset=server_acked))
                    if not streams:
                        return
                    more = bool(body.get("streams_deferred"))
                    wake = Wake(subscription_id=sub.id, wake_id=None, generation=None,
                                streams=tuple(streams), recovered=True, _worker=self)
                    fails = WakeFailures(backoff=self.failure_policy.backoff())
                if not fails.dead:
                    error = await self._attempt(wake)
                    if error is None:
                        self.stats.recovered_wakes += 1
                        self._advance_ledger(wake, read=True)
                    else:
                        delay = self._handler_failed(wake, fails, error)
                        if not self.failure_policy.exhausted(fails.attempts):
                            continue
                        fails.dead = True
                if fails.dead:
                    if not await self._dead_letter(wake, fails, reason="max_attempts"):
                        delay = fails.cool(self._clock.monotonic())
                        continue
                    self._advance_ledger(wake, read=False)
                    delay = 0.0
                for s in wake.streams:  # this round is done: the next starts after it
                    known[s.path] = s.tail_offset
                wake = None
                if not more:
                    return
        except asyncio.CancelledError:
            await self._recovery_unfinished(sub, wake, fails, known)
            raise

    def _advance_ledger(self, wake: Wake, *, read: bool) -> None:
        ledger = self._ledger_of(wake.subscription_id)
        for s in wake.streams:
            end = max(s.tail_offset, wake._read.get(s.path, "")) if read else s.tail_offset
            if end > ledger.get(s.path, "-1"):
                ledger[s.path] = end

    async def _recovery_unfinished(self, sub: SubscriptionConfig, wake: Wake | None,
                                   fails: WakeFailures, known: Mapping[str, str]) -> None:
        """A recovery cut short by stop: dead-letter its range, or say so at ERROR."""
        if wake is None:
            log.error("[%s] stopped before the range the re-created subscription %r "
                      "skipped was looked up: messages after %s were not handed over",
                      self.worker_name, sub.id, dict(known) or "the start of each stream")
            return
        if self.failure_policy.dead_letter_stream is not None and \
                await self._dead_letter(wake, fails, reason="stopped"):
            return
        ranges = ", ".join(f"{s.path} ({s.acked_offset}, {s.tail_offset}]" for s in wake.streams)
        log.error("[%s] stopped before the recovered range of %r was handled (%d failed "
                  "attempt(s)); the server counts it as acked, so nothing will hand it over "
                  "again: %s", self.worker_name, sub.id, fails.attempts, ranges)

    async def _cancel_recoveries(self) -> None:
        for t in list(self._recoveries):
            t.cancel()
        if self._recoveries:
            await asyncio.gather(*self._recoveries, return_exceptions=True)

    # ================================================================ helpers

    def _sync_headers(self) -> dict[str, str]:
        """The worker's headers for a sync handler's read, resolved on the loop.

        The same provider, validation and secret memory as async reads: a
        sync handler sends exactly the credentials an async one does.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            raise ConfigError("the worker is not running: no headers for a sync read")
        future = asyncio.run_coroutine_threadsafe(self._http.resolve_headers(), loop)
        return future.result(timeout=self._request_timeout)

    def _sync_session(self) -> Any:
        """The worker's own requests.Session for sync handlers (cached if configured)."""
        with self._session_lock:
            if self._session_sync is None:
                import requests

                if self._fetch_cache is not None:
                    from pullwake.errors import CacheError

                    try:
                        self._session_sync = self._fetch_cache.session()
                    except (CacheError, ConfigError) as exc:  # never fail handlers
                        log.warning("[%s] fetch cache unusable, reading uncached: %s",
                                    self.worker_name, exc)
                        self._session_sync = requests.Session()
                else:
                    self._session_sync = requests.Session()
            return self._session_sync

    def _report(self, error: BaseException) -> None:
        log.warning("[%s] %s: %s", self.worker_name, type(error).__name__,
                    self._http.scrub(str(error)))
        self._notify(error)

    def _notify(self, error: BaseException, where: str = "worker") -> None:
        """Record ``error`` in health and hand it to ``on_error`` (which only reports)."""
        self.runner.note_error(where, error)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                log.exception("[%s] on_error raised; ignoring", self.worker_name)



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
