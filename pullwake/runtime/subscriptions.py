"""The Durable Streams pull-wake control plane (PROTOCOL.md §7.2).

This module owns the subscription API calls and their error mapping:

- :class:`SubscriptionClient`: ensure a stream / a subscription exists
  (idempotent ``PUT``), ``claim``, ``ack`` (lease extension without ``done``,
  offsets, ``done``), ``release``, ``GET`` of a subscription;
- :class:`SubscriptionControlPlane`: the runner's control-plane profile for
  subscriptions: a wake is claimed with ``POST {root}/__ds/subscriptions/{id}/claim
  {"worker": name}``; the runner's own liveness heartbeat is a ``HEAD`` of the
  wake stream, so a hung server is noticed even when no lease is held.

The claim answer's wire shape (:class:`Claim`, :class:`ClaimedStream`) is
:mod:`pullwake.protocol.claims`'s; its bounded, item-by-item reading
:mod:`pullwake.protocol.answers`'s.

A claim that fails transiently (no answer, 429, 5xx) is retried with capped
backoff (``Retry-After`` honoured): the wake event that triggered it was
already read, and the server writes no new one while that wake is pending,
so giving up would strand the subscription until some other wake arrived.

Error mapping (by status and JSON code, never substring): 409 ``ALREADY_CLAIMED``
/ ``NO_PENDING_WORK`` → skip; 409 ``FENCED`` or 401 → :class:`LeaseLost`;
404 ``SUBSCRIPTION_NOT_FOUND`` / 409 ``SUBSCRIPTION_ALREADY_EXISTS`` →
:class:`SubscriptionError`; anything else non-2xx → :class:`ControlPlaneError`.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pullwake.errors import ConfigError, ControlPlaneError, LeaseLost, SubscriptionError, redact_url
from pullwake.io.clock import Clock, LoopClock, sleep
from pullwake.io.http import BodyReader, HttpAnswer, HttpClient, raise_for_answer
from pullwake.protocol.answers import NOT_SMALL, decode_small, read_items_answer, small_body
from pullwake.protocol.claims import Claim, ClaimedStream, ClaimFields, SkipCode, claim_fields
from pullwake.protocol.urls import encode_path, join_url, segment
from pullwake.runtime.config import SubscriptionConfig
from pullwake.runtime.control import (
    SKIP_CODES,
    ClaimOutcome,
    WakeEvent,
    retry_transient,
    stream_key,
)
from pullwake.runtime.logs import LabelledLog
from pullwake.runtime.server_root import is_subscription, verify_root, wrong_root

if TYPE_CHECKING:
    from pullwake.runtime.ports import RunnerPort

__all__ = [
    "Claim",
    "ClaimedStream",
    "SubscriptionClient",
    "SubscriptionConfig",
    "SubscriptionControlPlane",
    "SubscriptionKeeper",
]

#: Claimed streams kept per wake (those with pending work first); the rest keep
#: their pending work on the server and come with the next wake.
MAX_CLAIM_STREAMS = 10_000
#: One stream entry (or top-level field) of a control-plane answer, in bytes.
MAX_ANSWER_ITEM_BYTES = 64 * 1024

log = logging.getLogger("pullwake.subscriptions")

NOT_FOUND = "SUBSCRIPTION_NOT_FOUND"
EXISTS = "SUBSCRIPTION_ALREADY_EXISTS"
INVALID_OFFSET = "INVALID_OFFSET"
#: pullwake's code for a wake stream that exists but is closed (no server sends it).
STREAM_CLOSED = "STREAM_CLOSED"




class SubscriptionClient:
    """Subscription API calls against one stream root (``http://host/v1/stream``)."""

    #: Built URLs are remembered (they repeat every wake), up to this many.
    URL_CACHE = 4096

    def __init__(self, root: str, *, max_claim_streams: int = MAX_CLAIM_STREAMS,
                 max_item_bytes: int = MAX_ANSWER_ITEM_BYTES) -> None:
        if isinstance(max_claim_streams, bool) or not isinstance(max_claim_streams, int) \
                or max_claim_streams < 1:
            raise ConfigError("max_claim_streams must be an int >= 1")
        self.root = root.rstrip("/")
        self.max_claim_streams = max_claim_streams
        self.max_item_bytes = max_item_bytes
        self._urls: dict[tuple[str, str | None], str] = {}
        self._read_claim = self._consume_claim  # bound once, not per claim

    def _remember(self, key: tuple[str, str | None], url: str) -> str:
        if len(self._urls) >= self.URL_CACHE:
            self._urls.clear()
        self._urls[key] = url
        return url

    def stream_url(self, path: str) -> str:
        url = self._urls.get((path, "/"))
        if url is None:
            url = self._remember((path, "/"), join_url(self.root, encode_path(path.strip("/"))))
        return url

    def subscription_url(self, sub_id: str, action: str | None = None) -> str:
        url = self._urls.get((sub_id, action))
        if url is None:
            base = join_url(self.root, f"__ds/subscriptions/{segment(sub_id)}")
            url = self._remember((sub_id, action), f"{base}/{action}" if action else base)
        return url

    async def verify_root(self, http: HttpClient, sub_id: str) -> dict[str, Any] | None:
        """Prove ``root`` is a stream root first (:func:`.server_root.verify_root`)."""
        return await verify_root(http, self.root, self.subscription_url(sub_id), sub_id)

    async def ensure_stream(self, http: HttpClient, path: str) -> bool:
        """Create a JSON stream if missing. True if it was created now."""
        url = self.stream_url(path)
        answer = await http.request("PUT", url, operation="create stream",
                                    headers={"content-type": "application/json"})
        if answer.status == 409:  # exists with another configuration: closed, or not JSON
            head = await http.request("HEAD", url, operation="create stream")
            if head.headers.get("Stream-Closed", "").lower() == "true":
                raise ControlPlaneError(
                    f"stream {path!r} is closed: a closed stream takes no more wakes; "
                    "use another wake stream, or delete this one", operation="create stream",
                    status=409, code=STREAM_CLOSED, url=url)
            ctype = head.headers.get("Content-Type", "?")
            raise ControlPlaneError(
                f"stream {path!r} exists with content type {ctype!r}, not application/json",
                operation="create stream", status=409, url=url)
        raise_for_answer(answer, operation="create stream", url=url, scrub=http.scrub)
        return answer.status == 201

    async def ensure_subscription(self, http: HttpClient, sub: SubscriptionConfig) -> bool:
        """Create the subscription or confirm it. True if it was created now.

        A subscription with the same id and another configuration is a
        :class:`SubscriptionError` (``SUBSCRIPTION_ALREADY_EXISTS``).
        """
        url = self.subscription_url(sub.id)
        async def consume(reader: BodyReader) -> Any:  # its fields; no stream is kept
            return await read_items_answer(reader, operation="create subscription",
                                           max_items=0)

        answer = await http.request("PUT", url, operation="create subscription",
                                    json_body=sub.body(), consume=consume,
                                    item_limit=self.max_item_bytes)
        if answer.status == 409 and answer.code == EXISTS:
            raise SubscriptionError(
                f"subscription {sub.id!r} already exists with a different configuration; "
                f"use another id, or delete it (`pullwake subscriptions delete --server "
                f"{redact_url(self.root)} {shlex.quote(sub.id)}`; its acked offsets are lost)",
                operation="create subscription",
                status=409, code=EXISTS, url=url)
        raise_for_answer(answer, operation="create subscription", url=url, scrub=http.scrub,
                         cls=SubscriptionError)
        fields = answer.streamed.fields if answer.streamed is not None \
            and answer.streamed.is_object else None
        if not is_subscription(fields, sub.id):  # e.g. a data stream created instead
            raise wrong_root(self.root, f"PUT {redact_url(url)} answered {answer.status} "
                                        "without a subscription")
        return answer.status == 201

    async def get_subscription(self, http: HttpClient, sub_id: str, *,
                               select: Callable[[Mapping[str, Any]], bool] | None = None,
                               ) -> dict[str, Any] | None:
        """The subscription's fields with at most ``max_claim_streams`` streams
        (``path``, ``acked_offset``; only those ``select`` accepts, if given);
        ``streams_deferred`` counts the selected ones beyond the bound."""
        url = self.subscription_url(sub_id)

        async def consume(reader: BodyReader) -> Any:
            return await read_items_answer(reader, operation="get subscription",
                                           max_items=self.max_claim_streams,
                                           keep_fields=("path", "acked_offset"), select=select)

        answer = await http.request("GET", url, operation="get subscription", consume=consume,
                                    item_limit=self.max_item_bytes)
        if answer.status == 404:
            return None
        raise_for_answer(answer, operation="get subscription", url=url, scrub=http.scrub)
        parsed = answer.streamed
        if parsed is None or not parsed.is_object:
            return None
        return {**parsed.fields, "streams": [s for s in parsed.items if isinstance(s, dict)],
                "streams_deferred": parsed.deferred}

    async def delete_subscription(self, http: HttpClient, sub_id: str) -> None:
        """``DELETE`` a subscription (PROTOCOL.md §6.3; idempotent: 204 even if unknown)."""
        url = self.subscription_url(sub_id)
        answer = await http.request("DELETE", url, operation="delete subscription")
        raise_for_answer(answer, operation="delete subscription", url=url, scrub=http.scrub)

    async def claim(self, http: HttpClient, sub_id: str, worker: str) -> Claim | str:
        """A Claim, or the skip code (``NO_PENDING_WORK`` / ``ALREADY_CLAIMED``)."""
        url = self.subscription_url(sub_id, "claim")
        # Read as it arrives, bounded per stream entry: any number of linked
        # streams can be claimed (issue 14, class 1).
        answer = await http.request("POST", url, operation="claim", json_body={"worker": worker},
                                    consume=self._read_claim, item_limit=self.max_item_bytes)
        if not answer.ok:
            if answer.status == 409 and answer.code in SKIP_CODES:
                err = (answer.json() or {}).get("error") if isinstance(answer.json(), dict) \
                    else None
                holder = err.get("current_holder") if isinstance(err, dict) else None
                return SkipCode(str(answer.code),
                                holder=holder if isinstance(holder, str) else None)
            self._raise(answer, "claim", url, http)
        parsed = answer.streamed
        if type(parsed) is ClaimFields:  # a small, well-formed answer, read at once
            return Claim(sub_id, *parsed)
        if parsed is None or not parsed.is_object:
            raise ControlPlaneError("claim answer is not a JSON object", operation="claim",
                                    status=answer.status, url=url)
        body = dict(parsed.fields)
        if parsed.items_type == "list":
            body["streams"] = parsed.items
        return Claim.parse(sub_id, body, status=answer.status,
                           deferred_streams=parsed.deferred)

    async def _consume_claim(self, reader: BodyReader) -> Any:
        """A claim answer's body (the ``consume`` of :meth:`claim`): its
        :class:`ClaimFields` if it is small and well-formed, else read item by item."""
        body = await small_body(reader)
        if body is not NOT_SMALL:
            fields = claim_fields(decode_small(body), self.max_claim_streams)
            if fields is not None:
                return fields
        return await read_items_answer(reader, operation="claim",
                                       max_items=self.max_claim_streams, small=body)

    async def ack(self, http: HttpClient, claim: Claim, *,
                  acks: Sequence[tuple[str, str]] = (), done: bool = False,
                  timeout: float | None = None) -> None:
        """Extend the lease (no acks, not done), move acked offsets, or finish.

        A 2xx answer's body is not decoded: nothing in it is needed.
        """
        url = self.subscription_url(claim.subscription_id, "ack")
        body: dict[str, Any] = claim.fence()
        if acks:
            body["acks"] = [{"stream": s, "offset": o} for s, o in acks]
        if done:
            body["done"] = True
        op = "ack done" if done else ("ack" if acks else "extend lease")
        with http.hold_secrets(claim.token):  # an error answer may echo it
            answer = await http.request("POST", url, operation=op, json_body=body,
                                        headers={"Authorization": f"Bearer {claim.token}"},
                                        timeout=timeout)
            self._raise(answer, op, url, http)

    async def release(self, http: HttpClient, claim: Claim, *,
                      timeout: float | None = None) -> None:
        url = self.subscription_url(claim.subscription_id, "release")
        with http.hold_secrets(claim.token):  # an error answer may echo it
            answer = await http.request("POST", url, operation="release",
                                        json_body=claim.fence(),
                                        headers={"Authorization": f"Bearer {claim.token}"},
                                        timeout=timeout)
            self._raise(answer, "release", url, http)

    @staticmethod
    def _raise(answer: HttpAnswer, op: str, url: str, http: HttpClient) -> None:
        if answer.ok:
            return
        code = answer.code
        if answer.status == 401 or (answer.status == 409 and code == "FENCED"):
            raise LeaseLost("the lease is no longer ours", operation=op, status=answer.status,
                            code=code, url=url)
        if answer.status == 404 and code == NOT_FOUND:
            raise SubscriptionError("the server does not know this subscription (restarted?)",
                                    operation=op, status=404, code=code, url=url)
        raise_for_answer(answer, operation=op, url=url, scrub=http.scrub)


class SubscriptionKeeper(Protocol):
    """Who re-creates what the server forgot (the worker's recovery,
    :class:`pullwake.runtime.recovery.Recovery`): the control plane's one
    collaborator for it, called in the middle of a claim or a heartbeat."""

    async def recreate(self, http: HttpClient, sub: SubscriptionConfig) -> None:
        """The subscription answered 404: create it again (and recover what it skipped)."""
        ...

    async def recreate_wake_stream(self, http: HttpClient) -> bool:
        """The wake stream answered 404: create it again; True if created now."""
        ...

    async def on_connected(self, http: HttpClient) -> None:
        """After every (re)connect: re-create whatever the server forgot."""
        ...


class SubscriptionControlPlane:
    """The runner's control plane for Durable Streams pull-wake subscriptions.

    Only wakes of the given subscriptions are claimed (others sharing the wake
    stream are skipped). A claim that finds the subscription gone asks the
    ``keeper`` (:class:`SubscriptionKeeper`) to re-create it and retries
    once; without a keeper it fails. A claim that fails transiently is
    retried until it gets an answer (each failure is reported to the runner
    it is attached to, ``claim_failed``); stopping the runner cancels it.

    Its heartbeat is a ``HEAD`` of the wake stream, a liveness probe that
    carries no diagnostics (``heartbeat_diagnostics``): the runner sends it
    periodically, not on every change.
    """

    heartbeat_diagnostics = False

    def __init__(self, client: SubscriptionClient, *, worker: str,
                 subscriptions: Mapping[str, SubscriptionConfig], wake_stream_url: str,
                 keeper: SubscriptionKeeper | None = None, clock: Clock | None = None,
                 rng: Callable[[], float] | None = None) -> None:
        self.client = client
        self._rng = rng  # the claim retries' jitter (tests pin it)
        self.worker = worker
        self.subscriptions = subscriptions
        self.wake_stream_url = wake_stream_url
        self._keeper = keeper
        self._runner: RunnerPort | None = None
        self._log = LabelledLog(log, worker)
        self._clock: Clock = clock or LoopClock()

    def attach(self, runner: RunnerPort) -> None:
        self._runner = runner

    def claim_key(self, wake: WakeEvent) -> str:
        return wake.subscription_id or stream_key(wake.stream)

    async def on_connected(self, http: HttpClient) -> None:
        """After every (re)connect: the server may have restarted and forgotten us."""
        if self._keeper is not None:
            await self._keeper.on_connected(http)

    async def recreate_wake_stream(self, http: HttpClient) -> bool:
        """The wake stream answered 404: re-create it (the worker owns it).

        True if it was created now (then it is read from the beginning).
        """
        if self._keeper is None:
            return False
        return await self._keeper.recreate_wake_stream(http)

    async def claim(self, http: HttpClient, wake: WakeEvent) -> ClaimOutcome:
        sub = self.subscriptions.get(wake.subscription_id or "")
        if sub is None:
            return ClaimOutcome.skip("not_ours")
        # The first attempt is made here, without the retry machinery (no closure,
        # no backoff, one coroutine less on every resume): only a failed one
        # continues on the general path, exactly as if that had made it.
        try:
            result: Claim | str = await self.client.claim(http, sub.id, self.worker)
        except Exception as exc:  # noqa: BLE001 - the general path decides (or re-raises)
            result = await self._claim_retrying(http, sub, exc)
        if isinstance(result, str):
            return ClaimOutcome.skip(result)
        if result.deferred_streams:
            self._log.warning("claim %s#%d listed %d more stream(s) with pending work than "
                              "max_claim_streams=%d: they stay pending and come with the next "
                              "wake", sub.id, result.generation, result.deferred_streams,
                              self.client.max_claim_streams)
        return ClaimOutcome(True, {"claim": result})

    async def _claim_retrying(self, http: HttpClient, sub: SubscriptionConfig,
                              first: Exception | None = None) -> Claim | str:
        """The claim with its retries (the general path), after a first attempt that
        raised ``first`` (None: from the first attempt on)."""
        failed: list[BaseException] = []
        pending = [first] if first is not None else []

        def on_retry(exc: BaseException) -> None:
            failed.append(exc)
            if self._runner is not None:
                self._runner.claim_failed(exc)

        def attempt() -> Awaitable[Claim | str]:
            return self._claim_once(http, sub, pending.pop() if pending else None)

        while True:
            failed.clear()
            result = await retry_transient(attempt, clock=self._clock, on_retry=on_retry,
                                           rng=self._rng)
            if not (failed and isinstance(result, SkipCode) and result == "ALREADY_CLAIMED"
                    and result.holder == self.worker):
                return result
            # An attempt that failed (timed out, cut) did reach the server: the
            # wake is claimed by us, but its token never arrived. It cannot be
            # released; the lease ends in lease_ttl_ms, then it is ours to claim
            # again (issue 14, class 13): never skipped as someone else's.
            wait = sub.claim_lease + 0.1
            self._log.warning("claim of %s: an earlier attempt succeeded but its answer was "
                              "lost (%s); claiming again when its lease ends in %.3gs", sub.id,
                              type(failed[-1]).__name__, wait)
            await sleep(self._clock, wait)

    async def _claim_once(self, http: HttpClient, sub: SubscriptionConfig,
                          raised: Exception | None = None) -> Claim | str:
        """One claim attempt (``raised``: the attempt already made raised it)."""
        try:
            if raised is not None:
                raise raised
            return await self.client.claim(http, sub.id, self.worker)
        except SubscriptionError as exc:
            if exc.code != NOT_FOUND or self._keeper is None:
                raise
            await self._keeper.recreate(http, sub)
            return await self.client.claim(http, sub.id, self.worker)

    async def heartbeat(self, http: HttpClient, *, lease_ms: int, offset: str | None,
                        diagnostics: Mapping[str, Any]) -> None:
        answer = await http.request("HEAD", self.wake_stream_url, operation="heartbeat")
        if answer.status == 404 and await self.recreate_wake_stream(http):
            # The server forgot it (an in-memory restart): created again. The
            # runner notices on (re)connect that its offsets went back.
            answer = await http.request("HEAD", self.wake_stream_url, operation="heartbeat")
        raise_for_answer(answer, operation="heartbeat", url=self.wake_stream_url,
                         scrub=http.scrub)

