"""What a wake costs in tasks: the claim's, in which the wake's job and its handler run.

Every task pullwake starts goes through :class:`pullwake.runtime.jobs.Jobs`; this
checks, with a task factory on the test's loop, which tasks a worker starts
per wake in steady state: one, for the claim, in which the job then runs
(lease, handler attempt, ack), an async handler included. No handler task
(one that ignores its cancellation hands the rest of its job over to a new
job instead: tests/test_handler_failures.py), no attempt task, no dispatch
task, no timer task. Counted, never timed. The embedded server on 127.0.0.1 port 0 (its own
tasks, and aiohttp's, are not pullwake's and are not counted); hard timeout.
"""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import pullwake
from pullwake import Wake, Worker
from pullwake.testing import EmbeddedServer

pytestmark = pytest.mark.timeout(60)

PACKAGE = Path(pullwake.__file__).resolve().parent
TESTING = PACKAGE / "testing"
STREAM = "events/one"
JSON = {"Content-Type": "application/json"}


def _kind(task: asyncio.Task[Any]) -> str | None:
    """The qualified name of a task's coroutine if pullwake (not its test servers) started it."""
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None)
    if code is None:
        return None
    path = Path(code.co_filename).resolve()
    if PACKAGE not in path.parents or TESTING in path.parents:
        return None
    return str(code.co_qualname)


async def test_a_wake_costs_the_claims_task_only(
        embedded_ds_server: EmbeddedServer) -> None:
    srv = embedded_ds_server
    wakes = 30
    done = asyncio.Event()
    handled: list[int] = []
    created: list[asyncio.Task[Any]] = []
    mark: list[int] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kw)
        created.append(task)
        return task

    async with aiohttp.ClientSession() as http:
        async def append(i: int) -> None:
            async with http.post(f"{srv.stream_root}/{STREAM}", data=json.dumps({"i": i}),
                                 headers=JSON) as resp:
                assert resp.status == 204, await resp.text()

        async def handle(wake: Wake) -> None:
            async for m in wake.messages(STREAM):
                handled.append(m["i"])
            if len(handled) == 5:
                mark.append(len(created))
            if handled[-1] + 1 < wakes:
                await append(handled[-1] + 1)  # the next wake comes once this one is acked
            else:
                done.set()

        async with http.put(f"{srv.stream_root}/{STREAM}", headers=JSON) as resp:
            assert resp.status in (200, 201)
        worker = Worker(server=srv.stream_root, subscription="sub1", streams=[STREAM],
                        worker_name="w1", handler=handle, heartbeat_interval=None,
                        claim_lease=60.0)
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        try:
            async with worker:
                await append(0)
                await asyncio.wait_for(done.wait(), 40)
                await asyncio.wait_for(_acked(worker, wakes), 10)
                end = len(created)
                skipped = worker.runner.health().claims_skipped
        finally:
            loop.set_task_factory(None)
    assert sorted(handled) == list(range(wakes))
    kinds = collections.Counter(k for t in created[mark[0]:end] if (k := _kind(t)) is not None)
    steady = wakes - 5 + 1  # the handler runs from the one that set the mark on
    assert set(kinds) == {"ClaimScheduler._claim"}, kinds
    # one claim per wake, plus one per wake that found nothing to claim (a skip)
    assert steady - 1 <= kinds["ClaimScheduler._claim"] <= steady + skipped


async def _acked(worker: Worker, n: int) -> None:
    while worker.stats.wakes_acked < n:
        await asyncio.sleep(0.005)
