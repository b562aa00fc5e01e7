"""Time for pullwake: the injectable clock every timer and deadline goes through.

This module owns the :class:`Clock` protocol, the real :class:`LoopClock`
(asyncio's loop time and wall time) and :func:`deadline`, the one timeout
primitive the runner uses for connect, idle-read and request timeouts. A test
passes a manual clock (:class:`pullwake.testing.clock.ManualClock`) and moves
time forward itself: backoff, heartbeat and timeout tests never sleep.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = ["Clock", "DeadlineSet", "LoopClock", "TimerHandle", "deadline", "iso", "sleep"]


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


#: The default loop's ``time()``: ``time.monotonic()`` itself (asyncio's
#: ``BaseEventLoop.time``). A loop that keeps other time (uvloop: its cached
#: loop time) has its own ``time`` and is read through it.
_BASE_LOOP_TIME = asyncio.BaseEventLoop.time


def _loop_time(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """What reads ``loop``'s time: ``time.monotonic`` itself if that is what it uses."""
    if getattr(loop.time, "__func__", None) is _BASE_LOOP_TIME:
        return time.monotonic
    return loop.time


class LoopClock:
    """The real clock: the running loop's timers and ``time.time()``.

    ``monotonic`` is the running loop's ``time()``; on a loop whose ``time`` is
    asyncio's own (``time.monotonic()``) it reads ``time.monotonic()`` without
    the loop's method (it remembers the last loop it was read on). Its
    deadlines share one loop timer per loop (:class:`DeadlineSet`).
    """

    __slots__ = ("_loop", "_now", "shared_deadlines")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._now: Callable[[], float] = time.monotonic
        #: The deadline set of the loop last used (see :class:`deadline`).
        self.shared_deadlines: DeadlineSet | None = None

    def monotonic(self) -> float:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._now = _loop_time(loop)
            self._loop = loop
        return self._now()

    def time(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_at(loop.time() + max(0.0, delay), callback, *args)


class DeadlineSet:
    """The live deadlines of one clock on one loop, under ONE armed timer.

    A deadline adds its expiry (a dict entry, no timer): the timer is armed
    for the soonest expiry, and re-armed only for a sooner one; most deadlines
    have the same duration, so a new one expires after the armed one and arms
    nothing. An exited deadline just leaves the set. When the timer fires it
    expires what is due (soonest first) and re-arms for the soonest left; it
    may find nothing due (the deadline it was armed for exited: that does not
    cancel it) and then re-arms or stops. Its cost when it fires is O(live
    deadlines), once per armed expiry.

    A clock opts in by having a ``shared_deadlines`` attribute (``None`` at
    first; :class:`deadline` keeps the set there and replaces it when the
    running loop differs). It is read with ``now`` (the clock's
    ``monotonic``, or for a :class:`LoopClock` the loop's time read directly)
    and armed with the clock's ``call_later``. The set refers to the clock
    only through its armed timer's arguments (no cycle left once it fires).
    """

    __slots__ = ("armed", "handle", "live", "loop", "now")

    def __init__(self, loop: asyncio.AbstractEventLoop, now: Callable[[], float]) -> None:
        self.loop = loop
        self.now = now
        #: Each live deadline and its expiry (insertion order: entry order).
        self.live: dict[deadline, float] = {}
        self.armed = math.inf  # the expiry the timer is armed for
        self.handle: TimerHandle | None = None

    @classmethod
    def of(cls, clock: Clock, loop: asyncio.AbstractEventLoop) -> DeadlineSet:
        """A new set for ``clock`` on ``loop``."""
        if type(clock) is LoopClock:  # (not a subclass: it may keep other time)
            return cls(loop, _loop_time(loop))
        return cls(loop, clock.monotonic)

    def arm(self, clock: Clock, when: float, delay: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed = when
        self.handle = clock.call_later(delay, self._fire, clock)

    def _fire(self, clock: Clock) -> None:
        """The timer: expire every deadline due, soonest first; re-arm for the next."""
        now = self.now()
        # A timer may fire a hair early: what it was armed for is due.
        due_by = max(self.armed, now)
        self.handle, self.armed = None, math.inf
        live = self.live
        due = [(when, item) for item, when in live.items() if when <= due_by]
        for _, item in due:
            del live[item]
        if live:
            soonest = min(live.values())
            self.arm(clock, soonest, soonest - now)
        due.sort(key=_first)  # stable: equal expiries in entry order
        for _, item in due:
            item._expire()

    def __repr__(self) -> str:
        return f"<DeadlineSet: {len(self.live)} live, armed={self.handle is not None}>"


def _first(pair: tuple[float, deadline]) -> float:
    return pair[0]


class deadline:  # lower case: used like a function, `with deadline(clock, 5):`
    """Cancel the body after ``seconds`` on ``clock`` and raise ``TimeoutError``.

    Like ``asyncio.timeout`` but driven by the injectable clock. A cancellation
    that did not come from this deadline propagates untouched. ``None`` means
    no deadline. A plain ``with`` (it awaits nothing itself: no coroutine per
    use) or ``async with``, inside a task. (A class, not a generator: it runs
    on every request.)

    On a clock with a ``shared_deadlines`` attribute (:class:`LoopClock`) the
    deadline joins the clock's :class:`DeadlineSet` (one timer for all);
    on any other clock it arms its own timer with ``call_later``. Both expire
    it the same way (:meth:`_expire`).
    """

    __slots__ = ("_clock", "_expired", "_handle", "_seconds", "_set", "_task")

    def __init__(self, clock: Clock, seconds: float | None) -> None:
        self._clock = clock
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None
        self._handle: TimerHandle | None = None
        self._set: DeadlineSet | None = None
        self._expired = False

    def __enter__(self) -> None:
        seconds = self._seconds
        if seconds is None:
            return
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task(loop)
        if self._task is None:  # pragma: no cover - always inside a task
            raise RuntimeError("deadline() needs a running task")
        clock: Any = self._clock
        try:
            shared = clock.shared_deadlines
        except AttributeError:  # a clock without a deadline set: a timer of its own
            self._handle = clock.call_later(seconds, self._expire)
            return
        if shared is None or shared.loop is not loop:
            shared = clock.shared_deadlines = DeadlineSet.of(clock, loop)
        self._set = shared
        # (DeadlineSet.add, inline: once per request)
        when = shared.now() + seconds
        shared.live[self] = when
        if when < shared.armed:  # sooner than the armed timer (or none): arm it
            shared.arm(clock, when, seconds)

    def _expire(self) -> None:
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if self._set is not None:
            if not self._expired:
                del self._set.live[self]
        elif self._handle is not None:
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
