"""PullWakeRunner: the resilient runner, driven by the spec machine.

This module owns the runner's tasks and timers and nothing about *when*:
the lifecycle machine (:mod:`pullwake.lifecycle.machine`, from ``machine_spec.yaml``)
decides, and the runner implements its hooks (:class:`LifecycleEffects`).

What each state owns (started on entry, cancelled on exit by the machine):

- ``running``: the heartbeat schedule (:class:`~pullwake.runtime.heartbeat.Heartbeater`);
- ``running.connecting``: one connection attempt, bounded by ``connect_timeout``
  (:class:`~pullwake.runtime.wakestream.WakeStreamSession`, which also keeps
  the offset);
- ``running.streaming``: the stream consumer (the same session), each read
  bounded by ``read_idle_timeout``;
- ``running.reconnecting``: the backoff timer;
- ``stopping``: the shutdown sequence (close claims to dispatch, abort wakes,
  give claims their grace, drain wakes, close the HTTP session).

Claims (:mod:`pullwake.runtime.claims`) outlive reconnects and are settled by the
shutdown sequence. Every task the runner starts is a job of its
:class:`~pullwake.runtime.jobs.Jobs` (``runner.jobs``): a failed one is
reported like any runner error, and after ``stop()`` none is left. Results
of cancelled work are dropped by the machine's tickets.

The runner talks to its runtime and control plane through the protocols of
:mod:`pullwake.runtime.ports` (optional hooks resolved once, at construction)
and is their :class:`~pullwake.runtime.ports.RunnerPort`: it attaches itself
to each, and they report upward through it. It logs through a
:class:`~pullwake.runtime.logs.LabelledLog` carrying its id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from pullwake.errors import JobError, PullwakeError, TransportError, redact_url
from pullwake.io.clock import Clock, LoopClock
from pullwake.io.http import HttpClient
from pullwake.lifecycle.machine import Lifecycle, WorkTicket
from pullwake.lifecycle.spec import load_spec
from pullwake.runtime.claims import ClaimScheduler
from pullwake.runtime.config import RunnerConfig
from pullwake.runtime.control import ControlPlane, ElectricControlPlane, WakeEvent
from pullwake.runtime.health import Health, Stats, SubscriptionHealth, WorkerHealth, snapshot
from pullwake.runtime.heartbeat import Heartbeater
from pullwake.runtime.jobs import Jobs
from pullwake.runtime.logs import LabelledLog, OutageLog, log_context
from pullwake.runtime.ports import ControlHooks, Runtime, RuntimeHooks, attach
from pullwake.runtime.wakestream import WakeStreamSession

__all__ = ["PullWakeRunner", "Runtime", "http_client"]


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
    starts on enter and stops on exit. The runner is the
    :class:`~pullwake.runtime.ports.RunnerPort` of its runtime and control
    plane (``wake_free``, ``record_liveness``, ``note_error``,
    ``claim_failed``), attached to each at construction, and the owner its
    parts report to: :class:`~pullwake.runtime.claims.ClaimOwner` (claims),
    :class:`~pullwake.runtime.wakestream.StreamOwner` (the wake-stream
    session), :class:`~pullwake.runtime.heartbeat.HeartbeatOwner` (heartbeats).
    """

    def __init__(self, config: RunnerConfig, runtime: Runtime, *,
                 control_plane: ControlPlane | None = None,
                 http: HttpClient | None = None) -> None:
        self.config = config
        self.runtime = runtime
        self._clock: Clock = config.clock if config.clock is not None else LoopClock()
        self._label = config.name or config.runner_id
        #: This runner's log: every line carries its id (``[label] ``, ``worker``).
        self.log = LabelledLog(logging.getLogger("pullwake.runner"), self._label)
        self._stats = Stats()
        #: Messages read when the current run of liveness failures began
        #: (proof of life, see heartbeat_reset).
        self._messages_at_failure = 0
        #: Every task this runner starts (claims included): the one job owner's.
        self.jobs = Jobs(clock=self._clock, label=self._label, on_error=self._job_failed)
        self._cycle: _StopCycle | None = None
        self._stopped = asyncio.Event()
        self._stopped.set()
        self._listeners: list[Any] = []
        self._backoff_note: tuple[float, int] | None = None
        self._heartbeat_outage = OutageLog(self.log, "heartbeat", self._clock)
        #: The runner's HTTP client (``http``: one its runtime shares, or its own).
        self.http = http if http is not None else HttpClient(
            headers=config.headers, clock=self._clock, request_timeout=config.request_timeout,
            verify_tls=config.verify_tls, connect_timeout=config.connect_timeout,
            session=config.session)
        self.control: ControlPlane = control_plane or ElectricControlPlane(
            claim_url=config.claim_url, heartbeat_url=config.heartbeat_url, clock=self._clock,
            rng=config.rng)
        self._control_hooks = ControlHooks.of(self.control)
        self._runtime_hooks = RuntimeHooks.of(runtime)
        # Event-driven heartbeats push changed diagnostics; to a control plane
        # whose heartbeat carries none they would say nothing, so it gets only
        # the periodic ones (unless it has only event-driven ones: interval 0).
        self._heartbeat = Heartbeater(
            self, clock=self._clock, interval=config.heartbeat_interval,
            throttle=config.event_heartbeat_throttle,
            failures_before_reset=config.heartbeat_failures_before_reset,
            events=self._control_hooks.heartbeat_diagnostics or config.heartbeat_interval == 0)
        # The session and the claims tell the heartbeat of activity directly
        # (what activity() does, one call less, several times a wake).
        self._session = WakeStreamSession(
            self, config, http=self.http, clock=self._clock, stats=self._stats, log=self.log,
            recreate=self._control_hooks.recreate_wake_stream, activity=self._heartbeat.notify)
        self.claims = ClaimScheduler(
            self, control=self.control, runtime=self._runtime_hooks, clock=self._clock,
            stats=self._stats, busy_retry=config.runtime_busy_retry,
            activity=self._heartbeat.notify)
        spec = load_spec(config.spec_path) if config.spec_path else None
        kwargs: dict[str, Any] = {"name": self._label}
        if config.rng is not None:
            kwargs["rng"] = config.rng
        self.lifecycle = Lifecycle(self, spec, **kwargs)
        # Everything exists: hand the runner's port to what reports upward to it.
        attach(self.control, self)
        attach(runtime, self)

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
        return self._session.offset

    def health(self) -> Health:
        """The typed snapshot (:func:`~pullwake.runtime.health.snapshot`), with the
        runtime's part (a worker's counters and subscriptions) if it has one."""
        parts = self._runtime_hooks.health_parts
        worker, subs = parts() if parts is not None else (None, None)
        return self._snapshot(worker, subs)

    def _snapshot(self, worker: WorkerHealth | None = None,
                  subscriptions: Mapping[str, SubscriptionHealth] | None = None) -> Health:
        return snapshot(self._stats, running=self.running, status=self.lifecycle.state,
                        offset=self._session.offset, runner_id=self.config.runner_id,
                        claims_in_flight=self.claims.in_flight,
                        state_path=self.lifecycle.state_path, worker=worker,
                        subscriptions=subscriptions)

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

    def claim_failed(self, error: BaseException) -> None:
        """Count and report one failed claim attempt (a control plane's retry)."""
        self.claims.record_failure(error)

    # ============================================ ClaimOwner (for the claims)

    @property
    def claim_token_header(self) -> str | None:
        return self.config.claim_token_header

    async def claim_headers(self) -> dict[str, str]:
        """The headers a dispatched wake's claim calls carry (``electric-runner-id``)."""
        headers = await self.http.resolve_headers(self.config.claim_headers, use_default=False)
        if not any(k.lower() == "electric-runner-id" for k in headers):
            headers["electric-runner-id"] = self.config.runner_id
        return headers

    def activity(self) -> None:
        """Something a heartbeat reports changed: send one soon (throttled)."""
        self._heartbeat.notify()

    def _job_failed(self, error: JobError) -> None:
        """A runner job raised (a bug, a custom stream's or hook's): reported, never lost."""
        self.report(error, where="internal")

    def report(self, error: object, *, where: str = "runner", quiet: bool = False) -> None:
        """Record ``error`` in health, log it (unless ``quiet``), hand it to ``on_error``."""
        if not isinstance(error, BaseException):
            error = PullwakeError(str(error))
        text = self._text(error)
        self._stats.note_error(self._clock.time(), where, f"{type(error).__name__}: {text}")
        if not quiet:
            self.log.warning("%s error: %s: %s", where, type(error).__name__, text)
        reporter = self.config.on_error
        if reporter is not None:
            try:
                reporter(error)
            except Exception:
                self.log.exception("on_error raised; ignoring")

    async def __aenter__(self) -> PullWakeRunner:
        self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # ====================================================== lifecycle effects

    def on_transition(self, source: str, event: str, dest: str, kind: str) -> None:
        # Twice per wake (WAKE, OFFSET): each step costs nothing when it has nothing to do.
        if self.log.logger.isEnabledFor(logging.DEBUG):
            if kind == "ignored":
                self.log.debug("%s ignored in %s", event, source)
            else:
                self.log.debug("%s --%s--> %s", source, event, dest)
        if kind == "transition":
            self._stats.note_transition(self._clock.time(), source, event, dest)
        if self._listeners:
            for listener in self._listeners:
                try:
                    listener(source, event, dest, kind)
                except Exception:
                    self.log.exception("transition listener raised; ignoring")
        if self._backoff_note is not None:
            note, self._backoff_note = self._backoff_note, None
            # Logged here, after the transition's `after` hooks reported the
            # error that caused it, so the log reads in the order things happened.
            self.log.warning("reconnecting in %.3gs (attempt %d)", *note)

    def on_start(self, payload: Mapping[str, Any]) -> None:
        self._stats.reset_for_start(self._clock.time())
        self.http.open()
        self._stopped.clear()
        self._cycle = None
        self.claims.open()
        self.log.info("starting (wake stream %s)", redact_url(self.config.wake_stream_url))

    def on_stopped(self, payload: Mapping[str, Any]) -> None:
        self._stats.stream_connected = False
        self._stopped.set()
        if self._cycle is not None:
            self._cycle.done.set()
        self.log.info("stopped")

    def start_heartbeat(self, ticket: WorkTicket) -> Heartbeater:
        return self._heartbeat.start()

    def start_connect_attempt(self, ticket: WorkTicket) -> asyncio.Task[Any]:
        return self.jobs.spawn(self._session.connect(ticket), "pullwake-connect")

    def start_stream_consumer(self, ticket: WorkTicket) -> asyncio.Task[Any]:
        stats = self._stats
        stats.stream_connected = True
        stats.stream_connected_since = self._clock.time()
        self._heartbeat.notify()
        self.log.info("wake stream connected at offset %s", self._session.offset or "-1")
        task = self.jobs.spawn(self._session.consume(ticket), "pullwake-consume")
        hook = self._control_hooks.on_connected
        if hook is not None:
            self.jobs.spawn(self._call_connected_hook(hook), "pullwake-on-connected")

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
        return self.jobs.spawn(self._shutdown(ticket), "pullwake-shutdown")

    def claim_wake(self, payload: Mapping[str, Any]) -> None:
        wake: WakeEvent = payload["wake"]
        self._stats.events_received += 1
        self._heartbeat.notify()
        told = self._runtime_hooks.wake_received
        if told is not None:
            try:
                told(wake)
            except Exception:
                self.log.exception("runtime.wake_received raised; ignoring")
        self.claims.submit(wake)

    def record_offset(self, payload: Mapping[str, Any]) -> None:
        self._session.record_offset(payload["offset"])

    def interrupt_stream(self, payload: Mapping[str, Any]) -> None:
        ticket = self.lifecycle.owned()
        if ticket is not None and ticket.handle is not None:
            ticket.handle.cancel()

    def report_connect_failure(self, payload: Mapping[str, Any]) -> None:
        self.report(payload.get("error"), where="connect")

    def report_stream_reset(self, payload: Mapping[str, Any]) -> None:
        self.log.warning("connection attempt aborted by a stream reset: %s",
                         self._text(payload.get("error")))

    def report_stream_end(self, payload: Mapping[str, Any]) -> None:
        error = payload.get("error")
        if error is None:
            self.log.warning("wake stream ended; reconnecting")
        else:
            self.report(error, where="stream")

    def report_reset_error(self, payload: Mapping[str, Any]) -> None:
        self.log.warning("wake stream reset: %s", self._text(self.lifecycle.reset_error))

    def report_stream_closed(self, payload: Mapping[str, Any]) -> None:
        self.report(TransportError("the wake stream was closed by the server; "
                                   "nothing more will arrive: stopping",
                                   url=self.config.wake_stream_url), where="stream")

    def record_shutdown_error(self, payload: Mapping[str, Any]) -> None:
        error = payload.get("error")
        if self._cycle is not None:
            self._cycle.error = error
        self.report(error, where="drain")

    # ============================================================ owned work

    async def _call_connected_hook(self, hook: Any) -> None:
        try:
            await hook(self.http)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported; the stream keeps going
            self.report(exc, where="control plane")

    async def _shutdown(self, ticket: WorkTicket) -> None:
        error: BaseException | None = None
        try:
            try:
                self.runtime.abort_wakes()
            except Exception as exc:
                self.log.exception("runtime.abort_wakes raised")
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

    async def send_heartbeat(self) -> None:
        """One heartbeat to the control plane (the :class:`HeartbeatOwner` side)."""
        self._stats.last_heartbeat_at = self._clock.time()
        try:
            await self.control.heartbeat(
                self.http, lease_ms=self.config.effective_lease_ms, offset=self._session.offset,
                diagnostics=self._snapshot().diagnostics()
                if self._control_hooks.heartbeat_diagnostics else {})
        except asyncio.CancelledError:
            raise
        except Exception:
            self._stats.heartbeats_failed += 1
            raise
        self._stats.heartbeats_ok += 1

    def heartbeat_result(self, ok: bool, error: BaseException | None) -> None:
        if not ok and self._heartbeat.failures == 1:  # a run of failures begins
            self._messages_at_failure = self._session.messages_read
        self._stats.last_heartbeat_ok = ok
        self._stats.heartbeat_failures = self._heartbeat.failures
        if ok:
            self._heartbeat_outage.success()
        elif error is not None:
            # Recorded every time; logged once per outage (see OutageLog).
            self.report(error, where="heartbeat", quiet=True)
            self._heartbeat_outage.failure(f"{type(error).__name__}: {self._text(error)}")

    def heartbeat_reset(self, error: BaseException) -> None:
        # Proof of life (docs/runner.md, "Heartbeats and resets"): a stream
        # that delivered messages since this run of liveness failures began is
        # alive; resetting it cannot mend the control plane. The failures stay
        # reported and counted (health, readiness); the stream is kept.
        read = self._session.messages_read
        if read > self._messages_at_failure and self.lifecycle.state == "streaming":
            self.log.warning("%d liveness failures in a row, but the wake stream delivered "
                             "messages meanwhile: it is alive, not resetting it",
                             self.config.heartbeat_failures_before_reset)
            self._messages_at_failure = read
            return
        # Already reconnecting, the reset is ignored: no line per failed pair.
        level = logging.DEBUG if self.lifecycle.state == "reconnecting" else logging.WARNING
        self.log.log(level, "%d heartbeat failures in a row: resetting the wake stream",
                     self.config.heartbeat_failures_before_reset)
        ticket = self.lifecycle.owned("running")
        if ticket is not None:
            ticket.report("STREAM_RESET", error=error)

    # ================================================================ helpers

    async def _reap(self) -> None:
        """After stop: cancel and await anything still running (nothing should be)."""
        await self.jobs.cancel()

    def _text(self, error: object) -> str:
        if error is None:
            return "unknown error"
        return self.http.scrub(str(error) or type(error).__name__)
