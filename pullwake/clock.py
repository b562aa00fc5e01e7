"""Time for pullwake: the injectable clock every timer and deadline goes through.

This module owns the :class:`Clock` protocol, the real :class:`LoopClock`
(asyncio's loop time and wall time) and :func:`deadline`, the one timeout
primitive the runner uses for connect, idle-read and request timeouts. A test
passes a manual clock (:class:`pullwake.testing.clock.ManualClock`) and moves
time forward itself: backoff, heartbeat and timeout tests never sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
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
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback, *args)


@contextlib.asynccontextmanager
async def deadline(clock: Clock, seconds: float | None) -> AsyncIterator[None]:
    """Cancel the body after ``seconds`` on ``clock`` and raise ``TimeoutError``.

    Like ``asyncio.timeout`` but driven by the injectable clock. A cancellation
    that did not come from this deadline propagates untouched.
    """
    if seconds is None:
        yield
        return
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always inside a task
        raise RuntimeError("deadline() needs a running task")
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    handle = clock.call_later(seconds, expire)
    try:
        yield
    except asyncio.CancelledError:
        if expired and task.uncancel() == 0:
            raise TimeoutError(f"no progress within {seconds:g}s") from None
        raise
    finally:
        handle.cancel()
    if expired and task.cancelling():
        # The deadline fired after the body finished but before we got here.
        task.uncancel()


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
