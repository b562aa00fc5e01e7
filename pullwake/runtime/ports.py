"""Ports: the boundaries between a runner and what it drives.

This module owns the protocols a :class:`~pullwake.runtime.runner.PullWakeRunner`
talks through, and nothing else (no I/O, no state):

- :class:`Runtime`: where claimed wakes go (the application's side);
- the control plane (:class:`~pullwake.runtime.control.ControlPlane`, in
  :mod:`.control`): how a wake is claimed and how the runner proves it lives;
- :class:`RunnerPort`: the one typed channel through which a runtime or a
  control plane reports upward to its runner (a key is free, a liveness
  result, an error, a failed claim attempt).

Both the runtime and the control plane are built before their runner; the
runner then attaches itself (like asyncio's ``connection_made``): an object
with an ``attach(runner)`` method (:class:`Attaches`) gets the runner's
:class:`RunnerPort` once, at the runner's construction. Nothing is wired
after construction by lambdas, and nothing holds a back-reference to an
application object.

Optional hooks are explicit protocols of their own, resolved once when the
runner is built (:class:`RuntimeHooks`, :class:`ControlHooks`), never probed
per call:

=================================  =============================================
hook                               meaning
=================================  =============================================
``attach(runner)``                 runtime or control plane: keep the port
``is_wake_active(key) -> bool``    runtime: hold a wake back while it is busy
``notifies_wake_free = True``      runtime: it calls ``runner.wake_free(key)``
                                   when a key may be free (no polling then)
``wake_received(wake)``            runtime: told of every wake read
``health_parts()``                 runtime: its part of the runner's health
                                   (a worker's counters and subscriptions)
``on_connected(http)``             control plane: after every (re)connect
``recreate_wake_stream(http)``     control plane: the wake stream answered 404;
                                   True if it was re-created (read it again)
=================================  =============================================
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pullwake.io.http import HttpClient
    from pullwake.runtime.health import SubscriptionHealth, WorkerHealth

    #: What :meth:`ReportsHealth.health_parts` answers.
    HealthParts = tuple[WorkerHealth, Mapping[str, SubscriptionHealth]]

__all__ = [
    "Attaches",
    "ControlHooks",
    "ObservesWakes",
    "OwnsWakeStream",
    "ReportsHealth",
    "RunnerPort",
    "Runtime",
    "RuntimeHooks",
    "TracksActiveWakes",
    "WatchesConnections",
    "attach",
]


class RunnerPort(Protocol):
    """What a runtime or control plane may tell its runner (the runner implements it)."""

    def wake_free(self, key: str | None = None) -> None:
        """The runtime is done with ``key`` (None: with some key): claim what waits for it."""
        ...

    def record_liveness(self, ok: bool, error: BaseException | None = None) -> None:
        """Count an outside liveness result (a lease extension) like a heartbeat."""
        ...

    def note_error(self, where: str, error: BaseException) -> None:
        """Record an error reported elsewhere (a handler's) in health, unlogged."""
        ...

    def claim_failed(self, error: BaseException) -> None:
        """Count and report one failed claim attempt (e.g. one about to be retried)."""
        ...


@runtime_checkable
class Runtime(Protocol):
    """What the application provides: where claimed wakes go.

    ``dispatch_wake`` must not block (start the work and return, or return
    an awaitable: the runner runs it in the claim's own task, right after the
    claim, and cancels it only at stop, after ``drain_wakes``). ``drain_wakes`` waits for
    dispatched work at stop; ``abort_wakes`` asks it to stop early. The
    optional hooks (module docstring) are :class:`Attaches`,
    :class:`TracksActiveWakes` (``is_wake_active(stream_path)``, the path
    normalised with one leading ``/``, like the original's),
    ``notifies_wake_free`` and :class:`ObservesWakes`.
    """

    def dispatch_wake(self, notification: Any, *, claim_headers: Any,
                      claim_token_header: str | None) -> Any: ...

    async def drain_wakes(self) -> None: ...

    def abort_wakes(self) -> None: ...


@runtime_checkable
class Attaches(Protocol):
    """Optional: given the runner's port once, when the runner is built."""

    def attach(self, runner: RunnerPort) -> None: ...


@runtime_checkable
class TracksActiveWakes(Protocol):
    """Optional runtime hook: True while the runtime is still busy with ``key``."""

    def is_wake_active(self, key: str) -> bool: ...


@runtime_checkable
class ObservesWakes(Protocol):
    """Optional runtime hook: told of every wake read (a
    :class:`~pullwake.runtime.control.WakeEvent`), before it is claimed."""

    def wake_received(self, wake: Any) -> None: ...


@runtime_checkable
class ReportsHealth(Protocol):
    """Optional runtime hook: its part of the runner's :class:`~pullwake.runtime.health.Health`."""

    def health_parts(self) -> HealthParts: ...


@runtime_checkable
class WatchesConnections(Protocol):
    """Optional control-plane hook: run after every (re)connect of the wake stream."""

    async def on_connected(self, http: HttpClient) -> None: ...


@runtime_checkable
class OwnsWakeStream(Protocol):
    """Optional control-plane hook: re-create a wake stream that answered 404."""

    async def recreate_wake_stream(self, http: HttpClient) -> bool: ...


def attach(target: object, runner: RunnerPort) -> None:
    """Hand ``runner`` to ``target`` if it takes one (:class:`Attaches`)."""
    if isinstance(target, Attaches):
        target.attach(runner)


@dataclass(frozen=True)
class RuntimeHooks:
    """A runtime and the optional hooks it has, resolved once."""

    runtime: Runtime
    is_wake_active: Callable[[str], bool] | None = None
    wake_received: Callable[[Any], None] | None = None
    notifies_wake_free: bool = False
    health_parts: Callable[[], HealthParts] | None = None

    @classmethod
    def of(cls, runtime: Runtime) -> RuntimeHooks:
        return cls(
            runtime=runtime,
            is_wake_active=runtime.is_wake_active
            if isinstance(runtime, TracksActiveWakes) else None,
            wake_received=runtime.wake_received if isinstance(runtime, ObservesWakes) else None,
            notifies_wake_free=bool(getattr(runtime, "notifies_wake_free", False)),
            health_parts=runtime.health_parts if isinstance(runtime, ReportsHealth) else None)


@dataclass(frozen=True)
class ControlHooks:
    """A control plane's optional hooks, resolved once."""

    on_connected: Callable[[HttpClient], Awaitable[None]] | None = None
    recreate_wake_stream: Callable[[HttpClient], Awaitable[bool]] | None = None
    #: Its ``heartbeat`` sends the diagnostics it is given (a control plane
    #: without the attribute does, as the Electric runner API's does); one that
    #: does not (``heartbeat_diagnostics = False``: a liveness probe) gets no
    #: event-driven heartbeats and an empty mapping.
    heartbeat_diagnostics: bool = True

    @classmethod
    def of(cls, control: object) -> ControlHooks:
        return cls(
            on_connected=control.on_connected
            if isinstance(control, WatchesConnections) else None,
            recreate_wake_stream=control.recreate_wake_stream
            if isinstance(control, OwnsWakeStream) else None,
            heartbeat_diagnostics=bool(getattr(control, "heartbeat_diagnostics", True)))
