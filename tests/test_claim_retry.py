"""Claim retries on the one backoff: jittered by default, the original's sequence as the bound.

``retry_transient`` (what both control planes' claims go through) waits a
fresh :class:`~pullwake.lifecycle.backoff.Backoff` on :data:`CLAIM_RETRY`
between transient failures: with the rng pinned to 1.0 the delays are the
original's 0.1 s, 0.2 s, 0.4 s ... capped at 5 s; by default each is drawn
below that bound (many workers failed together do not retry in lock-step);
a ``Retry-After`` replaces the delay, up to the cap. Time is a ManualClock:
nothing sleeps; every test has a hard timeout.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from runner_helpers import RecordingRuntime, eventually, make_runner, started, wake

from pullwake.errors import ControlPlaneError
from pullwake.runtime.control import CLAIM_RETRY, retry_transient
from pullwake.testing import EmbeddedServer
from pullwake.testing.clock import ManualClock

pytestmark = pytest.mark.timeout(20)

BOUNDS = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def busy(retry_after: float | None = None) -> ControlPlaneError:
    return ControlPlaneError("busy", operation="claim", status=503, retry_after=retry_after)


class RecordingClock(ManualClock):
    """A ManualClock that remembers every delay it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[float] = []

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        self.asked.append(delay)
        return super().call_later(delay, callback, *args)


async def delays_of(failures: list[ControlPlaneError],
                    rng: Callable[[], float] | None) -> tuple[list[float], int]:
    """Run retry_transient over ``failures`` (then an answer); the waits it armed, and calls."""
    clock = RecordingClock()
    left = list(failures)
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if left:
            raise left.pop(0)
        return "answered"

    retried: list[BaseException] = []
    task = asyncio.ensure_future(retry_transient(call, clock=clock, on_retry=retried.append,
                                                 rng=rng))
    while not task.done():
        await clock.advance(0)
        if task.done():
            break
        [wait] = clock.pending  # exactly one timer: the backoff's
        await clock.advance(wait)
    assert await task == "answered"
    assert retried == failures
    return clock.asked, calls


async def test_pinned_rng_gives_the_originals_sequence_as_the_bound() -> None:
    waits, calls = await delays_of([busy() for _ in BOUNDS], rng=lambda: 1.0)
    assert waits == pytest.approx(BOUNDS)
    assert calls == len(BOUNDS) + 1
    assert (CLAIM_RETRY.initial_s, CLAIM_RETRY.factor, CLAIM_RETRY.cap_s) == (0.1, 2.0, 5.0)


async def test_jitter_is_on_by_default_and_stays_below_the_bound() -> None:
    assert CLAIM_RETRY.jitter == "full"
    halved, _ = await delays_of([busy() for _ in BOUNDS], rng=lambda: 0.5)
    assert halved == pytest.approx([b / 2 for b in BOUNDS])
    draws = random.Random(7)
    jittered, _ = await delays_of([busy() for _ in BOUNDS], rng=draws.random)
    assert all(0 <= w <= b for w, b in zip(jittered, BOUNDS, strict=True))
    assert len({round(w / b, 6) for w, b in zip(jittered, BOUNDS, strict=True)}) > 1


async def test_retry_after_replaces_the_delay_up_to_the_cap() -> None:
    waits, _ = await delays_of([busy(2.5), busy(), busy(60.0), busy(0.0), busy()],
                               rng=lambda: 1.0)
    # The server's word, capped at 5 s; the attempt count moves on meanwhile.
    assert waits == pytest.approx([2.5, 0.2, 5.0, 0.0, 1.6])


async def test_a_claim_that_answers_at_once_arms_no_timer() -> None:
    waits, calls = await delays_of([], rng=None)
    assert waits == [] and calls == 1


async def test_the_runners_rng_reaches_its_claim_retries() -> None:
    clock = ManualClock()
    rt = RecordingRuntime()
    async with EmbeddedServer() as server:
        runner = make_runner(server, rt, clock=clock, heartbeat_interval=None,
                             rng=lambda: 0.5)
        server.fail("/_electric/runners/r1/claim", 503, count=1)
        async with started(runner):
            await eventually(lambda: runner.status == "streaming")
            await server.append_runner_wake("r1", wake("s1"))
            await eventually(lambda: runner.health().claims_failed == 1)
            await eventually(lambda: 0.05 in [round(p, 9) for p in clock.pending])
            await clock.advance(0.05)
            await eventually(lambda: len(rt.dispatched) == 1)
