"""Control planes: how a wake is claimed and how the runner proves it is alive.

This module owns the wake message shape (:class:`WakeEvent`), claim outcomes,
and the control-plane profiles a runner can use:

- :class:`ElectricControlPlane` (the original's API): ``POST`` the wake event
  to ``/_electric/runners/{id}/claim``; ``POST`` ``{lease_ms,
  wake_stream_offset, diagnostics}`` to ``/_electric/runners/{id}/heartbeat``.
- the Durable Streams subscription profile lives in :mod:`pullwake.runtime.subscriptions`.

Claim answers are decided by status and the JSON error *code* (never by
substring): 204, 409 ``ALREADY_CLAIMED`` / ``NO_PENDING_WORK`` and
``{"done": true}`` are skips; any other non-2xx raises
:class:`~pullwake.errors.ControlPlaneError` with status and code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pullwake.errors import ControlPlaneError, InvalidMessage
from pullwake.io.clock import Clock, LoopClock, sleep
from pullwake.io.http import HttpClient, raise_for_answer
from pullwake.lifecycle.backoff import Backoff, BackoffPolicy

if TYPE_CHECKING:
    from pullwake.runtime.ports import RunnerPort

T = TypeVar("T")

#: How a claim that failed transiently is retried: 0.1 s doubling to 5 s (the
#: bounds), with full jitter, so the workers an outage failed together do not
#: retry in lock-step; a ``Retry-After`` replaces the delay, up to the cap.
CLAIM_RETRY = BackoffPolicy(initial_s=0.1, factor=2.0, cap_s=5.0, jitter="full")


def is_transient(exc: ControlPlaneError) -> bool:
    """No answer (transport failure, timeout), 429 or 5xx: worth retrying."""
    return exc.status is None or exc.status == 429 or exc.status >= 500


async def retry_transient(call: Callable[[], Awaitable[T]], *, clock: Clock,
                          on_retry: Callable[[BaseException], None] | None = None,
                          rng: Callable[[], float] | None = None) -> T:
    """Run ``call`` until it answers; transient failures wait (:data:`CLAIM_RETRY`,
    a fresh :class:`~pullwake.lifecycle.backoff.Backoff` per call, jittered with
    ``rng``; ``Retry-After`` honoured up to the cap) and retry. A wake is only
    a hint that is not repeated, so giving up on a claim would strand the work;
    stopping the runner cancels the retries."""
    backoff: Backoff | None = None
    while True:
        try:
            return await call()
        except ControlPlaneError as exc:
            if not is_transient(exc):
                raise
            if on_retry is not None:
                on_retry(exc)
            if backoff is None:  # only a failed call pays for one
                backoff = Backoff(CLAIM_RETRY, rng=rng)
            retry_after = exc.retry_after
            if retry_after is not None:
                retry_after = min(max(0.0, retry_after), CLAIM_RETRY.cap_s)
            await sleep(clock, backoff.next_delay(retry_after=retry_after))

def stream_key(path: str) -> str:
    """A stream path as claim de-duplication and ``is_wake_active`` see it.

    Normalised like the original: one leading ``/`` (``a/b``, ``/a/b`` and
    ``//a/b`` are one key), so a runtime keyed by ``/path`` matches.
    """
    return "/" + path.lstrip("/")


__all__ = [
    "SKIP_CODES",
    "ClaimOutcome",
    "ControlPlane",
    "ElectricControlPlane",
    "WakeEvent",
    "stream_key",
]

#: 409 codes that mean "someone else has it / nothing to do": not errors.
SKIP_CODES = frozenset({"ALREADY_CLAIMED", "NO_PENDING_WORK"})
_MAX_ID = 1024


@dataclass(frozen=True)
class WakeEvent:
    """A ``{"type": "wake", ...}`` message read from the wake stream."""

    stream: str
    subscription_id: str | None = None
    generation: int | None = None
    ts: Any = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, value: Any) -> WakeEvent | None:
        """A WakeEvent, None for a non-wake message, or InvalidMessage if malformed."""
        if not isinstance(value, dict) or value.get("type") != "wake":
            return None
        stream = value.get("stream")
        if not isinstance(stream, str) or not stream or len(stream) > _MAX_ID:
            raise InvalidMessage("wake event needs a non-empty string 'stream'")
        sub = value.get("subscription_id")
        if sub is not None and (not isinstance(sub, str) or len(sub) > _MAX_ID):
            raise InvalidMessage("wake event 'subscription_id' must be a string")
        gen = value.get("generation")
        if gen is not None and (isinstance(gen, bool) or not isinstance(gen, int)):
            raise InvalidMessage("wake event 'generation' must be an integer")
        return cls(stream=stream, subscription_id=sub, generation=gen, ts=value.get("ts"),
                   raw=value)


@dataclass(frozen=True)
class ClaimOutcome:
    """``claimed`` with the notification to dispatch, or a skip with its reason."""

    claimed: bool
    notification: Mapping[str, Any] | None = None
    reason: str | None = None

    @classmethod
    def skip(cls, reason: str) -> ClaimOutcome:
        return cls(False, None, reason)


class ControlPlane(Protocol):
    """What a runner needs from a control plane. Calls raise ControlPlaneError.

    Optional hooks (:mod:`pullwake.runtime.ports`): ``attach(runner)`` (the
    runner's port, e.g. to report each retried claim), ``on_connected(http)``
    and ``recreate_wake_stream(http)``.
    """

    def claim_key(self, wake: WakeEvent) -> str:
        """Wakes with the same key are claimed one at a time (later ones deferred)."""
        ...

    async def claim(self, http: HttpClient, wake: WakeEvent) -> ClaimOutcome: ...

    async def heartbeat(self, http: HttpClient, *, lease_ms: int, offset: str | None,
                        diagnostics: Mapping[str, Any]) -> None: ...


class ElectricControlPlane:
    """The Electric runner API of the original TypeScript runner.

    Each transient claim failure it retries is reported to the runner it is
    attached to (``claim_failed``) and to ``on_retry``, if given.
    """

    def __init__(self, *, claim_url: str, heartbeat_url: str, clock: Clock | None = None,
                 on_retry: Callable[[BaseException], None] | None = None,
                 rng: Callable[[], float] | None = None) -> None:
        self.claim_url = claim_url
        self.heartbeat_url = heartbeat_url
        self._clock: Clock = clock or LoopClock()
        self._on_retry = on_retry
        self._rng = rng  # the claim retries' jitter (tests pin it)
        self._runner: RunnerPort | None = None

    def attach(self, runner: RunnerPort) -> None:
        self._runner = runner

    def _retried(self, exc: BaseException) -> None:
        if self._runner is not None:
            self._runner.claim_failed(exc)
        if self._on_retry is not None:
            self._on_retry(exc)

    def claim_key(self, wake: WakeEvent) -> str:
        return stream_key(wake.stream)

    async def claim(self, http: HttpClient, wake: WakeEvent) -> ClaimOutcome:
        """Claim ``wake``; transient failures (no answer, 429, 5xx) are retried."""
        return await retry_transient(lambda: self._claim_once(http, wake), clock=self._clock,
                                     on_retry=self._retried, rng=self._rng)

    async def _claim_once(self, http: HttpClient, wake: WakeEvent) -> ClaimOutcome:
        answer = await http.request("POST", self.claim_url, operation="claim",
                                    json_body=dict(wake.raw))
        if answer.status == 204:
            return ClaimOutcome.skip("no_content")
        if answer.status == 409 and answer.code in SKIP_CODES:
            return ClaimOutcome.skip(str(answer.code))
        raise_for_answer(answer, operation="claim", url=self.claim_url, scrub=http.scrub)
        body = answer.json()
        if not isinstance(body, dict):
            raise ControlPlaneError("claim answer is not a JSON object", operation="claim",
                                    status=answer.status, url=self.claim_url)
        if body.get("done") is True:
            return ClaimOutcome.skip("done")
        return ClaimOutcome(True, body)

    async def heartbeat(self, http: HttpClient, *, lease_ms: int, offset: str | None,
                        diagnostics: Mapping[str, Any]) -> None:
        # Before the first read the offset is "-1" (the beginning), as the original sends.
        body: dict[str, Any] = {"lease_ms": lease_ms, "wake_stream_offset": offset or "-1",
                                "diagnostics": dict(diagnostics)}
        answer = await http.request("POST", self.heartbeat_url, operation="heartbeat",
                                    json_body=body)
        raise_for_answer(answer, operation="heartbeat", url=self.heartbeat_url,
                         scrub=http.scrub)
