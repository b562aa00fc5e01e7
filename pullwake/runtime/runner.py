"""PullWakeRunner: the resilient runner, driven by the spec machine.

This module owns the runner's tasks and timers and nothing about *when*:
the lifecycle machine (:mod:`pullwake.lifecycle.machine`, from ``machine_spec.yaml``)
decides, and the runner implements its hooks (:class:`LifecycleEffects`).

What each state owns (started on entry, cancelled on exit by the machine):

- ``running``: the heartbeat schedule (:class:`~pullwake.runtime.heartbeat.Heartbeater`);
- ``running.connecting``: one connection attempt, bounded by ``connect_timeout``;
- ``running.streaming``: the stream consumer, each read bounded by
  ``read_idle_timeout``;
- ``running.reconnecting``: the backoff timer;
- ``stopping``: the shutdown sequence (close claims to dispatch, abort wakes,
  give claims their grace, drain wakes, close the HTTP session).

Claims (:mod:`pullwake.runtime.claims`) outlive reconnects and are settled by the
shutdown sequence. Every task the runner creates is tracked; after ``stop()``
none is left. Results of cancelled work are dropped by the machine's tickets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from pullwake.errors import (
    ConnectError,
    MessageError,
    OffsetsWentBack,
    PullwakeError,
    StreamStatusError,
    TransportError,
    redact_url,
)
from pullwake.io.clock import Clock, LoopClock, deadline
from pullwake.io.http import HttpClient, translate
from pullwake.io.transport import (
    BadMessage,
    Checkpoint,
    Message,
    StreamRequest,
    aiohttp_stream_factory,
)
from pullwake.lifecycle.machine import Lifecycle, WorkTicket
from pullwake.lifecycle.spec import load_spec
from pullwake.runtime.claims import ClaimScheduler
from pullwake.runtime.config import RunnerConfig
from pullwake.runtime.control import ControlPlane, ElectricControlPlane, WakeEvent
from pullwake.runtime.health import Health, Stats
from pullwake.runtime.heartbeat import Heartbeater
from pullwake.runtime.logs import OutageLog, log_context

__all__ = ["PullWakeRunner", "Runtime", "http_client"]

log = logging.getLogger("pullwake.runner")


@runtime_checkable
class Runtime(Protocol):
    """What the application provides: where claimed wakes go.

    ``dispatch_wake`` must not block (start the work and return; returning an
    awaitable makes the runner own it as a task). ``drain_wakes`` waits for
    dispatched work at stop; ``abort_wakes`` asks it to stop early. The
    optional ``is_wake_active(stream_path) -> bool`` (the path normalised
    with one leading ``/``, like the original's) lets the runner hold a
    wake back while the runtime is still busy with that stream. A runtime
    that calls :meth:`PullWakeRunner.wake_free` whenever a key may have become
    free sets ``notifies_wake_free = True``: held-back wakes are then claimed
    on that call, and the runner does not poll ``is_wake_active``. The
    optional ``wake_received(wake)`` is told of every wake read (before it is
    claimed), e.g. to measure how long work waits.
    """

    def dispatch_wake(self, notification: Any, *, claim_headers: Any,
                      claim_token_header: str | None) -> Any: ...

    async def drain_wakes(self) -> None: ...

    def abort_wakes(self) -> None: ...


def http_client(config: RunnerConfig) -> HttpClient:
    """The HTTP client a runner with ``config`` uses (built by whoever shares it)."""
    clock = config.clock if config.clock is not None else LoopClock()
    return HttpClient(headers=config.headers, clock=clock,
                      request_timeout=config.request_timeout, verify_tls=config.verify_tls,
                      connect_timeout=config.connect_timeout, session=config.session)


class _StopCycle:
    """One stop: every concurrent ``stop()`` awaits the same event and error."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.error: BaseException | None = None


class PullWakeRunner:
    """Reads a wake stream, claims wakes, dispatches them, heartbeats, recovers.

    ``start()`` is idempotent and a no-op while stopping; ``await stop()`` is
    shared by concurrent callers and re-raises a drain error; ``async with``
    starts on enter and stops on exit.
    """

    def __init__(self, config: RunnerConfig, runtime: Runtime, *,
                 control_plane: ControlPlane | None = None,
                 http: HttpClient | None = None) -> None:
        self.config = config
        self.runtime = runtime
        self._clock: Clock = config.clock if config.clock is not None else LoopClock()
        self._label = config.name or config.runner_id
        self._stats = Stats()
        self._offset: str | None = config.offset
        self._cursor: str | None = None
        #: Messages read from the wake stream, and their count when the current
        #: run of liveness failures began (proof of life, see _on_heartbeat_reset).
        self._messages_read = 0
        self._messages_at_failure = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cycle: _StopCycle | None = None
        self._stopped = asyncio.Event()
        self._stopped.set()
        self._listeners: list[Any] = []
        self._backoff_note: tuple[float, int] | None = None
        self._heartbeat_outage = OutageLog(log, "heartbeat", self._clock,
                                           prefix=f"[{self._label}] ")
        #: The runner's HTTP client (``http``: one its runtime shares, or its own).
        self.http = http if http is not None else HttpClient(
            headers=config.headers, clock=self._clock, request_timeout=config.request_timeout,
            verify_tls=config.verify_tls, connect_timeout=config.connect_timeout,
            session=config.session)
        self.control: ControlPlane = control_plane or ElectricControlPlane(
            claim_url=config.claim_url, heartbeat_url=config.heartbeat_url, clock=self._clock,
            on_retry=lambda exc: self.claims.record_failure(exc))
        self._stream_factory = config.stream_factory or aiohttp_stream_factory(
            lambda: self.http.session, self._clock)
        self._heartbeat = Heartbeater(
            send=self._send_heartbeat, clock=self._clock,
            interval=config.heartbeat_interval, throttle=config.event_heartbeat_throttle,
            failures_before_reset=config.heartbeat_failures_before_reset,
            on_result=self._on_heartbeat_result, on_reset=self._on_heartbeat_reset,
            spawn=self._spawn,
        )
        self.claims = ClaimScheduler(
            control=self.control, http=self.http, runtime=runtime, clock=self._clock,
            stats=self._stats, busy_retry=config.runtime_busy_retry,
            claim_headers=self._resolve_claim_headers,
            claim_token_header=config.claim_token_header,
            report_error=self._report_error, notify=self._heartbeat.notify, spawn=self._spawn,
            notified=bool(getattr(runtime, "notifies_wake_free", False)),
        )
        spec = load_spec(config.spec_path) if config.spec_path else None
        kwargs: dict[str, Any] = {"name": self._label}
        if config.rng is not None:
            kwargs["rng"] = config.rng
        self.lifecycle = Lifecycle(self, spec, **kwargs)

    # =============================================================== public API

    @property
    def running(self) -> bool:
        """True from ``start()`` until the runner is stopped again."""
        return self.lifecycle.state != "stopped"

    @property
    def status(self) -> str:
        return self.lifecycle.state

    @property
    def offset(self) -> str | None:
        """The wake-stream offset after the last fully read batch."""
        return self._offset

    def health(self) -> Health:
        return Health.build(running=self.running, status=self.lifecycle.state,
                            offset=self._offset, stats=self._stats,
                            runner_id=self.config.runner_id,
                            claims_in_flight=self.claims.in_flight,
                            state_path=self.lifecycle.state_path)

    def log_context(self) -> Any:
        """A context manager: log lines (and tasks started) inside carry this runner's
        ``worker`` name and live ``state`` (see :mod:`pullwake.runtime.logs`)."""
        lifecycle = self.lifecycle
        return log_context(worker=self._label, state=lambda: lifecycle.state)

    def start(self) -> None:
        """Start (idempotent; ignored while stopping). Needs a running event loop."""
        asyncio.get_running_loop()  # fail fast, clearly, outside a loop
        with self.log_context():
            self.lifecycle.fire("START")

    async def stop(self) -> None:
        """Stop and wait; concurrent calls share one shutdown. Re-raises a drain error."""
        if self.lifecycle.state == "stopped":
            return
        cycle = self._cycle
        with self.log_context():
            self.lifecycle.fire("STOP")
        cycle = self._cycle or cycle
        if cycle is None:  # pragma: no cover - STOP from running always creates one
            return
        await cycle.done.wait()
        await self._reap()
        if cycle.error is not None:
            raise cycle.error

    async def wait_for_stopped(self) -> None:
        """Resolve once the runner is stopped (without raising a drain error)."""
        await self._stopped.wait()

    def observe(self, listener: Any) -> None:
        """Call ``listener(source, event, dest, kind)`` after every decided event.

        Listeners observe only; one that raises is logged and ignored.
        """
        self._listeners.append(listener)

    def note_error(self, where: str, error: BaseException) -> None:
        """Record an error reported elsewhere (e.g. a handler's) in health, unlogged."""
        self._stats.note_error(self._clock.time(), where,
                               f"{type(error).__name__}: {self._text(error)}")

    def wake_free(self, key: str | None = None) -> None:
        """The runtime is done with ``key`` (None: with some key, e.g. a slot opened):
        a wake held back for it is claimed now."""
        self.claims.runtime_free(key)

    def record_liveness(self, ok: bool, error: BaseException | None = None) -> None:
        """Count an outside liveness result (e.g. a lease extension) like a heartbeat."""
        if self.running:
            self._heartbeat.record(ok, error)

    async def __aenter__(self) -> PullWakeRunner:
        self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # ====================================================== lifecycle effects

    def on_transition(self, source: str, event: str, dest: str, kind: str) -> None:
        if kind == "ignored":
            log.debug("[%s] %s ignored in %s", self._label, event, source)
        else:
            log.debug("[%s] %s --%s--> %s", self._label, source, event, dest)
        if kind == "transition":
            self._stats.note_transition(self._clock.time(), source, event, dest)
        for listener in self._listeners:
            try:
                listener(source, event, dest, kind)
            except Exception:
                log.exception("[%s] transition listener raised; ignoring", self._label)
        note, self._backoff_note = self._backoff_note, None
        if note is not None:
            # Logged here, after the transition's `after` hooks reported the
            # error that caused it, so the log reads in the order things happened.
            log.warning("[%s] reconnecting in %.3gs (attempt %d)", self._label, *note)

    def on_start(self, payload: Mapping[str, Any]) -> None:
        self._stats.reset_for_start(self._clock.time())
        self.http.open()
        self._stopped.clear()
        self._cycle = None
        self.claims.open()
        log.info("[%s] starting (wake stream %s)", self._label,
                 redact_url(self.config.wake_stream_url))

    def on_stopped(self, payload: Mapping[str, Any]) -> None:
        self._stats.stream_connected = False
        self._stopped.set()
        if self._cycle is not None:
            self._cycle.done.set()
        log.info("[%s] stopped", self._label)

    def start_heartbeat(self, ticket: WorkTicket) -> Heartbeater:
        return self._heartbeat.start()

    def start_connect_attempt(self, ticket: WorkTicket) -> asyncio.Task[Any]:
        return self._spawn(self._connect(ticket), "pullwake-connect")

    def start_stream_consumer(self, ticket: WorkTicket) -> asyncio.Task[Any]:
        stats = self._stats
        stats.stream_connected = True
        stats.stream_connected_since = self._clock.time()
        self._heartbeat.notify()
        log.info("[%s] wake stream connected at offset %s", self._label, self._offset or "-1")
        task = self._spawn(self._consume(ticket), "pullwake-consume")
        hook = getattr(self.control, "on_connected", None)
        if hook is not None:
            self._spawn(self._call_connected_hook(hook), "pullwake-on-connected")

        def ended(t: asyncio.Task[Any]) -> None:
            ticket.payload["stream"].close()  # also when cancelled before it ever ran
            stats.stream_connected = False
            stats.stream_connected_since = None
            # A cancel while the ticket is still current can only be an
            # interrupt (STREAM_RESET): the stream ended with the reset error.
            if t.cancelled() and ticket.current:
                ticket.report("STREAM_END", error=self.lifecycle.reset_error)

        task.add_done_callback(ended)
        return task

    def start_backoff_timer(self, ticket: WorkTicket) -> Any:
        self._stats.reconnect_count += 1
        self._heartbeat.notify()
        delay = ticket.delay or 0.0
        self._backoff_note = (delay, self.lifecycle.backoff.attempt)
        return self._clock.call_later(delay, ticket.report, "BACKOFF_ELAPSED")

    def start_shutdown(self, ticket: WorkTicket) -> asyncio.Task[Any]:
        self._cycle = _StopCycle()
        self.claims.close()
        return self._spawn(self._shutdown(ticket), "pullwake-shutdown")

    def claim_wake(self, payload: Mapping[str, Any]) -> None:
        wake: WakeEvent = payload["wake"]
        self._stats.events_received += 1
        self._heartbeat.notify()
        told = getattr(self.runtime, "wake_received", None)
        if told is not None:
            try:
                told(wake)
            except Exception:
                log.exception("[%s] runtime.wake_received raised; ignoring", self._label)
        self.claims.submit(wake)

    def record_offset(self, payload: Mapping[str, Any]) -> None:
        offset = payload["offset"]
        if offset != self._offset:
            self._offset = offset
            self._heartbeat.notify()

    def interrupt_stream(self, payload: Mapping[str, Any]) -> None:
        ticket = self.lifecycle.owned()
        if ticket is not None and ticket.handle is not None:
            ticket.handle.cancel()

    def report_connect_failure(self, payload: Mapping[str, Any]) -> None:
        self._report_error(payload.get("error"), where="connect")

    def report_stream_reset(self, payload: Mapping[str, Any]) -> None:
        log.warning("[%s] connection attempt aborted by a stream reset: %s", self._label,
                    self._text(payload.get("error")))

    def report_stream_end(self, payload: Mapping[str, Any]) -> None:
        error = payload.get("error")
        if error is None:
            log.warning("[%s] wake stream ended; reconnecting", self._label)
        else:
            self._report_error(error, where="stream")

    def report_reset_error(self, payload: Mapping[str, Any]) -> None:
        log.warning("[%s] wake stream reset: %s", self._label,
                    self._text(self.lifecycle.reset_error))

    def report_stream_closed(self, payload: Mapping[str, Any]) -> None:
        self._report_error(TransportError("the wake stream was closed by the server; "
                                          "nothing more will arrive: stopping",
                                          url=self.config.wake_stream_url), where="stream")

    def record_shutdown_error(self, payload: Mapping[str, Any]) -> None:
        error = payload.get("error")
        if self._cycle is not None:
            self._cycle.error = error
        self._report_error(error, where="drain")

    # ============================================================ owned work

    async def _open_stream(self) -> Any:
        cfg = self.config
        with translate("connect", url=cfg.wake_stream_url, secrets=self.http.secrets):
            async with deadline(self._clock, cfg.connect_timeout):
                headers = await self.http.resolve_headers()
                return await self._stream_factory(StreamRequest(
                    url=cfg.wake_stream_url,
                    offset=self._offset or "-1",
                    live=cfg.live,
                    cursor=self._cursor,
                    headers=headers,
                    read_idle_timeout=cfg.read_idle_timeout,
                    max_message_bytes=cfg.max_message_bytes,
                    max_response_bytes=cfg.max_response_bytes,
                    clock=self._clock,
                    secrets=self.http.secrets,
                ))

    async def _recreate_wake_stream(self) -> bool:
        """The wake stream is gone (404): re-create it if the control plane owns it.

        A re-created stream is new: it is read from the beginning. True if the
        connection attempt should be made again.
        """
        hook = getattr(self.control, "recreate_wake_stream", None)
        if hook is None:
            return False
        # Shielded: a reset cancelling this attempt must not cancel the
        # re-creation half-way (the worker's record of it included).
        created = await asyncio.shield(hook(self.http))
        if created:
            log.warning("[%s] the wake stream %s was gone (404: server restarted?): "
                        "re-created it; reading it from the beginning", self._label,
                        redact_url(self.config.wake_stream_url))
            self._restart_offset()
        return True

    def _stream_went_back(self) -> None:
        # Offsets never go back on one stream: this one was deleted and created
        # again (a restarted in-memory server, another worker re-creating it).
        log.warning("[%s] wake stream offsets went back from %s: the stream was re-created; "
                    "reading it from the beginning", self._label, self._offset)
        self._restart_offset()

    def _restart_offset(self) -> None:
        self._offset = None
        self._cursor = None
        self._heartbeat.notify()

    async def _connect(self, ticket: WorkTicket) -> None:
        cfg = self.config
        try:
            try:
                stream = await self._open_stream()
            except StreamStatusError as exc:
                if exc.status != 404 or not await self._recreate_wake_stream():
                    raise
                stream = await self._open_stream()
            except OffsetsWentBack:  # a long-poll connects with a catch-up read
                self._stream_went_back()
                stream = await self._open_stream()
        except asyncio.CancelledError:
            raise
        except PullwakeError as exc:  # ConnectTimeout, ConnectError, StreamStatusError, ...
            ticket.report("CONNECT_FAILED", error=exc)
            return
        except Exception as exc:  # noqa: BLE001 - a custom stream factory's failure
            ticket.report("CONNECT_FAILED", error=ConnectError(
                self.http.scrub(f"stream factory raised {type(exc).__name__}: {exc}"),
                url=cfg.wake_stream_url))
            return
        if not ticket.report("CONNECTED", stream=stream):
            stream.close()

    async def _consume(self, ticket: WorkTicket) -> None:
        stream = ticket.payload["stream"]
        error: BaseException | None = None
        closed = False
        try:
            async for item in stream:
                if isinstance(item, Message):
                    self._messages_read += 1
                    self._on_message(ticket, item.value)
                elif isinstance(item, Checkpoint):
                    if self._offset is not None and item.next_offset < self._offset:
                        raise OffsetsWentBack(f"offsets went back to {item.next_offset}",
                                              url=self.config.wake_stream_url)
                    if item.cursor:
                        self._cursor = item.cursor
                    if item.next_offset != self._offset:  # keep-alives repeat it
                        ticket.report("OFFSET", offset=item.next_offset)
                    if item.closed:
                        closed = True
                        break
                elif isinstance(item, BadMessage):
                    self._reject(item.error)
                if not ticket.current:
                    return
        except asyncio.CancelledError:
            raise
        except OffsetsWentBack as exc:
            self._stream_went_back()
            error = exc
        except PullwakeError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a custom stream's failure ends the session
            error = TransportError(self.http.scrub(
                f"wake stream raised {type(exc).__name__}: {exc}"))
        finally:
            stream.close()
        if closed:
            ticket.report("STREAM_CLOSED")
        else:
            ticket.report("STREAM_END", error=error)

    async def _call_connected_hook(self, hook: Any) -> None:
        try:
            await hook(self.http)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported; the stream keeps going
            self._report_error(exc, where="control plane")

    def _on_message(self, ticket: WorkTicket, value: Any) -> None:
        try:
            wake = WakeEvent.parse(value)
        except MessageError as exc:
            self._reject(exc)
            return
        if wake is not None:
            ticket.report("WAKE", wake=wake)

    def _reject(self, error: MessageError) -> None:
        self._stats.messages_rejected += 1
        self._report_error(error, where="message")

    async def _shutdown(self, ticket: WorkTicket) -> None:
        error: BaseException | None = None
        try:
            try:
                self.runtime.abort_wakes()
            except Exception as exc:
                log.exception("[%s] runtime.abort_wakes raised", self._label)
                error = exc
            await self.claims.settle(self.config.claim_grace)
            try:
                await self.runtime.drain_wakes()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised by stop()
                error = exc
        finally:
            await self._reap()  # e.g. a control-plane hook still running: before close
            await self.http.close()
        if error is not None:
            ticket.report("SHUTDOWN_FAILED", error=error)
        else:
            ticket.report("SHUTDOWN_DONE")

    # ============================================================= heartbeats

    async def _send_heartbeat(self) -> None:
        self._stats.last_heartbeat_at = self._clock.time()
        try:
            await self.control.heartbeat(
                self.http, lease_ms=self.config.effective_lease_ms, offset=self._offset,
                diagnostics=self.health().diagnostics())
        except asyncio.CancelledError:
            raise
        except Exception:
            self._stats.heartbeats_failed += 1
            raise
        self._stats.heartbeats_ok += 1

    def _on_heartbeat_result(self, ok: bool, error: BaseException | None) -> None:
        if not ok and self._heartbeat.failures == 1:  # a run of failures begins
            self._messages_at_failure = self._messages_read
        self._stats.last_heartbeat_ok = ok
        self._stats.heartbeat_failures = self._heartbeat.failures
        if ok:
            self._heartbeat_outage.success()
        elif error is not None:
            # Recorded every time; logged once per outage (see OutageLog).
            self._report_error(error, where="heartbeat", quiet=True)
            self._heartbeat_outage.failure(f"{type(error).__name__}: {self._text(error)}")

    def _on_heartbeat_reset(self, error: BaseException) -> None:
        # Proof of life (docs/runner.md, "Heartbeats and resets"): a stream
        # that delivered messages since this run of liveness failures began is
        # alive; resetting it cannot mend the control plane. The failures stay
        # reported and counted (health, readiness); the stream is kept.
        if (self._messages_read > self._messages_at_failure
                and self.lifecycle.state == "streaming"):
            log.warning("[%s] %d liveness failures in a row, but the wake stream delivered "
                        "messages meanwhile: it is alive, not resetting it", self._label,
                        self.config.heartbeat_failures_before_reset)
            self._messages_at_failure = self._messages_read
            return
        # Already reconnecting, the reset is ignored: no line per failed pair.
        level = logging.DEBUG if self.lifecycle.state == "reconnecting" else logging.WARNING
        log.log(level, "[%s] %d heartbeat failures in a row: resetting the wake stream",
                self._label, self.config.heartbeat_failures_before_reset)
        ticket = self.lifecycle.owned("running")
        if ticket is not None:
            ticket.report("STREAM_RESET", error=error)

    # ================================================================ helpers

    async def _resolve_claim_headers(self) -> dict[str, str]:
        headers = await self.http.resolve_headers(self.config.claim_headers, use_default=False)
        if not any(k.lower() == "electric-runner-id" for k in headers):
            headers["electric-runner-id"] = self.config.runner_id
        return headers

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"{name}[{self._label}]")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("[%s] internal task %s failed: %r", self._label, task.get_name(), exc)

    async def _reap(self) -> None:
        """After stop: cancel and await anything still running (nothing should be)."""
        current = asyncio.current_task()
        leftover = [t for t in self._tasks if t is not current and not t.done()]
        for t in leftover:
            t.cancel()
        if leftover:
            await asyncio.gather(*leftover, return_exceptions=True)

    def _text(self, error: object) -> str:
        if error is None:
            return "unknown error"
        return self.http.scrub(str(error) or type(error).__name__)

    def _report_error(self, error: object, *, where: str = "runner", quiet: bool = False) -> None:
        if not isinstance(error, BaseException):
            error = PullwakeError(str(error))
        text = self._text(error)
        self._stats.note_error(self._clock.time(), where, f"{type(error).__name__}: {text}")
        if not quiet:
            log.warning("[%s] %s error: %s: %s", self._label, where, type(error).__name__, text)
        reporter = self.config.on_error
        if reporter is not None:
            try:
                reporter(error)
            except Exception:
                log.exception("[%s] on_error raised; ignoring", self._label)

