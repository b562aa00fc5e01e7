"""Time for pullwake: the injectable clock every timer and deadline goes through.

This module owns the :class:`Clock` protocol, the real :class:`LoopClock`
(asyncio's loop time and wall time) and :func:`deadline`, the one timeout
primitive the runner uses for connect, idle-read and request timeouts. A test
passes a manual clock (:class:`pullwake.testing.clock.ManualClock`) and moves
time forward itself: backoff, heartbeat and timeout tests never sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = ["Clock", "LoopClock", "TimerHandle", "deadline", "iso", "sleep"]


class TimerHandle(Protocol):
    def cancel(self) -> Any: ...


class Clock(Protocol):
    """What pullwake needs from time. All methods are called on the event loop."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (durations, deadlines)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (health timestamps)."""
        ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` after ``delay`` seconds; the handle cancels it."""
        ...


class LoopClock:
    """The real clock: the running loop's timers and ``time.time()``."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def time(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_at(loop.time() + max(0.0, delay), callback, *args)


class deadline:  # lower case: used like a function, `with deadline(clock, 5):`
    """Cancel the body after ``seconds`` on ``clock`` and raise ``TimeoutError``.

    Like ``asyncio.timeout`` but driven by the injectable clock. A cancellation
    that did not come from this deadline propagates untouched. ``None`` means
    no deadline. A plain ``with`` (it awaits nothing itself: no coroutine per
    use) or ``async with``, inside a task. (A class, not a generator: it runs
    on every request.)
    """

    __slots__ = ("_clock", "_expired", "_handle", "_seconds", "_task")

    def __init__(self, clock: Clock, seconds: float | None) -> None:
        self._clock = clock
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None
        self._handle: TimerHandle | None = None
        self._expired = False

    def __enter__(self) -> None:
        if self._seconds is None:
            return
        self._task = asyncio.current_task()
        if self._task is None:  # pragma: no cover - always inside a task
            raise RuntimeError("deadline() needs a running task")
        self._handle = self._clock.call_later(self._seconds, self._expire)

    def _expire(self) -> None:
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._expired and exc_type is asyncio.CancelledError:
            assert self._task is not None
            if self._task.uncancel() == 0:
                raise TimeoutError(f"no progress within {self._seconds:g}s") from None

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> None:
        self.__exit__(exc_type, exc, tb)


def iso(ts: float | None) -> str | None:
    """An ISO-8601 UTC timestamp (millisecond precision) or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")


async def sleep(clock: Clock, seconds: float) -> None:
    """Sleep ``seconds`` on ``clock`` (cancellable; a ManualClock makes it instant)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    handle = clock.call_later(seconds, wake)
    try:
        await fut
    finally:
        handle.cancel()
