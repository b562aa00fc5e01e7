"""ManualClock: a clock tests move by hand, so timers and deadlines never sleep.

Owns fake time only. It satisfies :class:`pullwake.io.clock.Clock`; pass it as
``RunnerConfig(clock=...)``. ``advance(dt)`` runs every timer that falls due,
in deadline order, letting the event loop run between them so the tasks they
wake can react (``await clock.advance(1.0)``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

__all__ = ["ManualClock"]


class _Handle:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    def __init__(self, start: float = 0.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self._heap: list[tuple[float, int, _Handle]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._wall_offset + self._now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> _Handle:
        handle = _Handle(self._now + max(0.0, delay), callback, args)
        heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
        return handle

    @property
    def pending(self) -> list[float]:
        """Delays (from now) of the timers still armed, soonest first."""
        return sorted(h.when - self._now for _, _, h in self._heap if not h.cancelled)

    def pending_callbacks(self) -> list[tuple[float, Callable[..., Any]]]:
        return sorted(((h.when - self._now, h.callback) for _, _, h in self._heap
                       if not h.cancelled), key=lambda x: x[0])

    async def advance(self, seconds: float, *, settle: int = 5) -> None:
        """Move time forward by ``seconds``, firing due timers in order."""
        target = self._now + seconds
        await _settle(settle)
        while True:
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
            if not self._heap or self._heap[0][0] > target:
                break
            when, _, handle = heapq.heappop(self._heap)
            self._now = max(self._now, when)
            handle.callback(*handle.args)
            await _settle(settle)
        self._now = target
        await _settle(settle)


async def _settle(rounds: int) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)
