"""A wake freed by its own work is claimed next in that work's task.

When a wake arrives while its key's job runs, the claims hold it back; the
job's ack frees the key (``runtime_free``, from the job's own task), and the
held wake is claimed in that same task once the job is over, as a bare loop
would (no new task per wake while a key stays busy). These tests pin down
what that must not change: the held wake is always claimed exactly once,
the latest one wins, a wake arriving meanwhile waits behind it, and a job
that ends otherwise (cancelled, failing, stopped) leaves nothing stranded.

The claims are driven through their seams (a control plane that grants at
once, a runtime whose work the test steps) on a manual clock: whether a real
server's next wake reaches the worker before or after its ack's answer is a
race, so end to end this path is covered by tests/test_wake_costs.py (every
next wake made while its predecessor is held, none lost, none polled).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from runner_helpers import ClaimsOwner, GrantingControl

from pullwake.runtime.claims import ClaimScheduler
from pullwake.runtime.control import WakeEvent
from pullwake.runtime.health import Stats
from pullwake.runtime.ports import RuntimeHooks
from pullwake.testing.clock import ManualClock

pytestmark = [pytest.mark.timeout(60)]

KEY = "sub1"


class _Runtime:
    """A runtime like the worker's: a key is busy from dispatch until its work frees
    it (``runtime_free`` from the work's own task, as the worker's ack does)."""

    notifies_wake_free = True

    def __init__(self) -> None:
        self.busy: set[str] = set()
        self.claims: ClaimScheduler | None = None
        #: Per dispatched wake: the task its work ran in.
        self.ran_in: dict[str, asyncio.Task[Any] | None] = {}
        #: What each wake's work does after it freed its key (default: nothing).
        self.after_free: dict[str, Callable[[], Awaitable[None]]] = {}
        self.gates: dict[str, asyncio.Event] = {}

    def is_wake_active(self, key: str) -> bool:
        return key in self.busy

    def dispatch_wake(self, notification: Any, **kw: Any) -> Awaitable[None]:
        name = notification["wake"]
        self.busy.add(KEY)
        self.gates[name] = asyncio.Event()
        return self._work(name)

    async def _work(self, name: str) -> None:
        self.ran_in[name] = asyncio.current_task()
        await self.gates[name].wait()
        self.busy.discard(KEY)
        assert self.claims is not None
        self.claims.runtime_free(KEY)  # acked: the key is free, from this task
        then = self.after_free.get(name)
        if then is not None:
            await then()


def _setup() -> tuple[ClaimScheduler, GrantingControl, _Runtime, ClaimsOwner]:
    clock = ManualClock()
    control, runtime, owner = GrantingControl(), _Runtime(), ClaimsOwner(clock)
    claims = ClaimScheduler(owner, control=control,  # type: ignore[arg-type]
                            runtime=RuntimeHooks.of(runtime),  # type: ignore[arg-type]
                            clock=clock, stats=Stats(), busy_retry=300.0)
    runtime.claims = claims
    claims.open()
    return claims, control, runtime, owner


async def _until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


def _wake(stream: str) -> WakeEvent:
    return WakeEvent(stream=stream, subscription_id=KEY)


async def test_a_wake_freed_by_its_own_work_is_claimed_next_in_that_task() -> None:
    claims, control, runtime, owner = _setup()
    claims.submit(_wake("w1"))
    await _until(lambda: "w1" in runtime.gates, "w1 dispatched")
    claims.submit(_wake("w2"))  # the key is busy: held back
    claims.submit(_wake("w2b"))  # the latest held one wins
    assert control.claimed == ["w1"] and claims.in_flight == 1

    # w2b's work, once it freed its key, sees w3 arrive: it waits behind the claim
    # this task is about to make (one claim per key at a time), then is claimed.
    async def w2b_after() -> None:
        claims.submit(_wake("w3"))
        assert control.claimed == ["w1", "w2b"] and claims.in_flight == 1

    runtime.after_free["w2b"] = w2b_after
    runtime.gates["w1"].set()
    await _until(lambda: "w2b" in runtime.gates, "w2b dispatched")
    runtime.gates["w2b"].set()
    await _until(lambda: "w3" in runtime.gates, "w3 dispatched")
    runtime.gates["w3"].set()
    await asyncio.gather(*owner.jobs)
    assert control.claimed == ["w1", "w2b", "w3"]
    first = runtime.ran_in["w1"]
    assert runtime.ran_in["w2b"] is first  # claimed in the task that freed it
    assert runtime.ran_in["w3"] is not first  # deferred behind a claim: a claim of its own
    assert claims.in_flight == 0 and claims.busy_retries == 0
    assert owner.failed == [] and owner.reported == []
    claims.close()


@pytest.mark.parametrize("how", ["cancelled", "raises"])
async def test_a_wake_freed_by_work_that_then_ends_otherwise_is_still_claimed(
        how: str) -> None:
    claims, control, runtime, owner = _setup()
    hang = asyncio.Event()

    async def then() -> None:
        if how == "raises":
            raise RuntimeError("the work failed after its ack")
        await hang.wait()  # cancelled here

    runtime.after_free["w1"] = then
    claims.submit(_wake("w1"))
    await _until(lambda: "w1" in runtime.gates, "w1 dispatched")
    claims.submit(_wake("w2"))
    runtime.gates["w1"].set()
    if how == "cancelled":
        await _until(lambda: KEY not in runtime.busy, "w1 freed its key")
        task = runtime.ran_in["w1"]
        assert task is not None and claims.in_flight == 1  # w2: this task's, next
        task.cancel()
    await _until(lambda: "w2" in runtime.gates, "w2 dispatched")
    runtime.gates["w2"].set()
    await asyncio.gather(*owner.jobs, return_exceptions=True)
    assert control.claimed == ["w1", "w2"]  # exactly once each
    assert runtime.ran_in["w2"] is not runtime.ran_in["w1"]  # a claim of its own
    assert claims.in_flight == 0
    if how == "raises":
        assert len(owner.failed) == 1
        assert "the work failed after its ack" in str(owner.failed[0])
    claims.close()


async def test_a_stop_drops_the_freed_wake_like_any_held_one() -> None:
    claims, control, runtime, owner = _setup()
    hang = asyncio.Event()

    async def then() -> None:
        await hang.wait()

    runtime.after_free["w1"] = then
    claims.submit(_wake("w1"))
    await _until(lambda: "w1" in runtime.gates, "w1 dispatched")
    claims.submit(_wake("w2"))
    runtime.gates["w1"].set()
    await _until(lambda: KEY not in runtime.busy, "w1 freed its key")
    claims.close()  # stop began: nothing is dispatched any more
    task = runtime.ran_in["w1"]
    assert task is not None
    task.cancel()
    await asyncio.gather(*owner.jobs, return_exceptions=True)
    assert control.claimed == ["w1"] and claims.in_flight == 0
    assert owner.failed == []
