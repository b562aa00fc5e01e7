"""The runner's jobs: a claim is one task, the runtime's work runs on in it, failures are typed.

Against the embedded server on 127.0.0.1 (port 0); every test has a hard
timeout and waits on events or conditions, never on elapsed time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from runner_helpers import RecordingRuntime, eventually, make_runner, started, wake

from pullwake import JobError
from pullwake.testing import EmbeddedServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer() as srv:
        yield srv


class AwaitingRuntime(RecordingRuntime):
    """dispatch_wake returns a coroutine: the runner runs it (the runtime's work)."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[asyncio.Event] = []
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.fail_with: BaseException | None = None
        self.cancelled: list[int] = []

    def dispatch_wake(self, notification: Any, **kw: Any) -> Any:
        super().dispatch_wake(notification, **kw)
        gate = asyncio.Event()
        self.gates.append(gate)
        return self._work(len(self.gates) - 1, gate)

    async def _work(self, n: int, gate: asyncio.Event) -> None:
        self.tasks.append(asyncio.current_task())
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.calls.append(f"cancelled {n}")
            raise
        if self.fail_with is not None:
            raise self.fail_with


async def test_the_work_runs_in_the_claims_own_task_and_frees_the_claim_at_once(
        server: EmbeddedServer) -> None:
    rt = AwaitingRuntime()
    runner = make_runner(server, rt, heartbeat_interval=None)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1", 1))
        await eventually(lambda: len(rt.tasks) == 1)
        task = rt.tasks[0]
        assert task is not None and task in runner.jobs
        assert task.get_name().startswith("pullwake-claim:/s1[")  # the claim's task, no other
        assert runner.claims.in_flight == 0  # the claim is settled: its key is free
        # A second wake for the same stream is claimed while the first's work runs.
        await server.append_runner_wake("r1", wake("s1", 2))
        await eventually(lambda: len(rt.tasks) == 2)
        assert runner.health().claims_skipped == 0
        for gate in rt.gates:
            gate.set()
        await eventually(lambda: len(runner.jobs) == 1)  # only the stream consumer is left


async def test_the_works_failure_is_one_typed_report(server: EmbeddedServer) -> None:
    rt = AwaitingRuntime()
    rt.fail_with = ValueError("runtime bug")
    errors: list[BaseException] = []
    runner = make_runner(server, rt, heartbeat_interval=None, on_error=errors.append)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1", 1))
        await eventually(lambda: len(rt.gates) == 1)
        rt.gates[0].set()
        await eventually(lambda: len(errors) == 1)
        [err] = errors
        assert isinstance(err, JobError) and isinstance(err.__cause__, ValueError)
        assert err.job.startswith("pullwake-claim:/s1[r1")
        assert "ValueError: runtime bug" in str(err)
        last = runner.health().last_error
        assert last is not None and "runtime bug" in last
        assert runner.jobs.failed == 1 and runner.status == "streaming"


async def test_work_still_running_at_stop_is_cancelled_after_the_drain(
        server: EmbeddedServer) -> None:
    rt = AwaitingRuntime()
    runner = make_runner(server, rt, heartbeat_interval=None)
    async with started(runner):
        await eventually(lambda: runner.status == "streaming")
        await server.append_runner_wake("r1", wake("s1", 1))
        await eventually(lambda: len(rt.tasks) == 1)
        await runner.stop()
    assert rt.calls == ["dispatch", "abort", "drain", "cancelled 0"]
    assert len(runner.jobs) == 0
