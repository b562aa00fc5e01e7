"""The boundaries between a runner and what it drives (:mod:`pullwake.runtime.ports`),
and the one log adapter every runner and worker line goes through.

- a runtime or control plane with ``attach`` gets the runner's port once, at
  the runner's construction; optional hooks are resolved once, explicitly;
- a control plane reports its retried claims through that port (no lambda
  wired after construction): they are counted in the runner's health;
- the subscription control plane re-creates what the server forgot through
  its keeper (the worker's recovery), not through the worker;
- :class:`~pullwake.runtime.logs.LabelledLog` puts the runner's or worker's id
  on every line, whatever context it is logged in.

Runner tests run against the embedded server on 127.0.0.1 port 0.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from runner_helpers import RecordingRuntime, eventually, make_runner, started, wake

from pullwake.runtime.control import ClaimOutcome, WakeEvent
from pullwake.runtime.logs import LabelledLog, TextFormatter
from pullwake.runtime.ports import ControlHooks, RunnerPort, RuntimeHooks
from pullwake.testing import ClaimAnswer, EmbeddedServer


class AttachingRuntime(RecordingRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.ports: list[RunnerPort] = []

    def attach(self, runner: RunnerPort) -> None:
        self.ports.append(runner)


class Plain:
    """A runtime with none of the optional hooks."""

    def dispatch_wake(self, notification: Any, *, claim_headers: Any,
                      claim_token_header: str | None) -> None: ...

    async def drain_wakes(self) -> None: ...

    def abort_wakes(self) -> None: ...


def test_optional_hooks_are_resolved_once_and_only_when_present() -> None:
    plain = RuntimeHooks.of(Plain())
    assert plain.is_wake_active is None and plain.wake_received is None
    assert plain.notifies_wake_free is False and plain.health_parts is None
    rec = RuntimeHooks.of(RecordingRuntime())
    assert rec.is_wake_active is not None and rec.wake_received is None
    assert ControlHooks.of(object()) == ControlHooks()

    class Watching:
        async def on_connected(self, http: Any) -> None: ...

    hooks = ControlHooks.of(Watching())
    assert hooks.on_connected is not None and hooks.recreate_wake_stream is None


async def test_the_runner_attaches_itself_to_its_runtime_once() -> None:
    async with EmbeddedServer() as server:
        rt = AttachingRuntime()
        runner = make_runner(server, rt)
        assert rt.ports == [runner]
        async with started(runner):
            await eventually(lambda: runner.status == "streaming")
        assert rt.ports == [runner]  # not again on start or stop


async def test_retried_claims_reach_the_runners_health_through_its_port() -> None:
    async with EmbeddedServer() as server:
        server.program_claims(ClaimAnswer.error(503), ClaimAnswer.error(503))
        rt = RecordingRuntime()
        runner = make_runner(server, rt)
        async with started(runner):
            await eventually(lambda: runner.status == "streaming")
            await server.append_runner_wake("r1", wake())
            await eventually(lambda: len(rt.dispatched) == 1)
            h = runner.health()
            assert h.claims_failed == 2 and h.claims_failed_by_reason == {"http_5xx": 2}


async def test_a_subscription_claim_without_a_keeper_reports_the_missing_subscription(
        embedded_ds_server: EmbeddedServer) -> None:
    from pullwake.errors import SubscriptionError
    from pullwake.io.clock import LoopClock
    from pullwake.io.http import HttpClient
    from pullwake.runtime.subscriptions import (
        SubscriptionClient,
        SubscriptionConfig,
        SubscriptionControlPlane,
    )

    root = embedded_ds_server.stream_root
    sub = SubscriptionConfig(id="gone", wake_stream="wake/pool", pattern="e/*")
    control = SubscriptionControlPlane(SubscriptionClient(root), worker="w1",
                                       subscriptions={"gone": sub},
                                       wake_stream_url=f"{root}/wake/pool")
    http = HttpClient(headers=None, clock=LoopClock(), request_timeout=5.0)
    http.open()
    try:
        assert await control.recreate_wake_stream(http) is False
        with pytest.raises(SubscriptionError):
            await control.claim(http, WakeEvent(stream="e/a", subscription_id="gone"))
        outcome = await control.claim(http, WakeEvent(stream="e/a", subscription_id="other"))
        assert outcome == ClaimOutcome.skip("not_ours")
    finally:
        await http.close()


def test_labelled_log_carries_the_id_on_every_line(caplog: pytest.LogCaptureFixture) -> None:
    a = LabelledLog(logging.getLogger("pullwake.test.ports"), "wa")
    b = LabelledLog(logging.getLogger("pullwake.test.ports"), "w%b")
    with caplog.at_level(logging.INFO, logger="pullwake.test.ports"):
        a.info("claimed %s", "sub1")
        b.warning("100% done")  # no args: a literal % is text
        a.info("from %s", "here")
    records = caplog.records
    assert [r.getMessage() for r in records] == [
        "[wa] claimed sub1", "[w%b] 100% done", "[wa] from here"]
    assert [getattr(r, "worker", None) for r in records] == ["wa", "w%b", "wa"]
    assert {r.funcName for r in records} == {"test_labelled_log_carries_the_id_on_every_line"}
    text = TextFormatter().format(records[0])
    assert text.count("[wa]") == 1 and text.endswith("[wa] claimed sub1")
