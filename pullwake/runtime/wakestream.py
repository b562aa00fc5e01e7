"""The wake-stream session: one connection attempt, and the consumer of one stream.

This module owns where a runner is in its wake stream (the offset after the
last fully read batch, the server's cursor, how many messages it read) and
the two pieces of owned work the lifecycle starts for it: a connection
attempt (``running.connecting``; bounded by ``connect_timeout``; a wake
stream that answered 404 is re-created through the control plane's
``recreate_wake_stream`` hook) and the consumer (``running.streaming``).
Both report their results as lifecycle events on their ticket
(``CONNECTED``/``CONNECT_FAILED``, ``WAKE``, ``OFFSET``, ``STREAM_END``,
``STREAM_CLOSED``); a rejected message goes to the owner's :meth:`report`
(:class:`StreamOwner`). The machine decides what each result means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pullwake.errors import (
    ConnectError,
    MessageError,
    OffsetsWentBack,
    PullwakeError,
    StreamStatusError,
    TransportError,
    redact_url,
)
from pullwake.io.clock import Clock, deadline
from pullwake.io.http import HttpClient, translate
from pullwake.io.transport import (
    BadMessage,
    Checkpoint,
    Message,
    StreamFactory,
    StreamRequest,
    aiohttp_stream_factory,
)
from pullwake.lifecycle.machine import WorkTicket
from pullwake.runtime.config import RunnerConfig
from pullwake.runtime.control import WakeEvent
from pullwake.runtime.health import Stats
from pullwake.runtime.logs import LabelledLog

__all__ = ["StreamOwner", "WakeStreamSession"]


#: The stream items, by exact type (see :func:`_kind_of` for any other).
_KINDS = frozenset({Message, Checkpoint, BadMessage})


def _kind_of(item: object) -> type | None:
    """The item class ``item`` is an instance of (a subclass of one), else None."""
    for kind in (Message, Checkpoint, BadMessage):
        if isinstance(item, kind):
            return kind
    return None


def _one_by_one(stream: Any) -> Callable[[], Awaitable[list[Any]]]:
    """``next_items`` for a stream that is only iterable: one item per list, ``[]`` at
    its end (exactly what ``async for`` takes from it)."""
    items = aiter(stream)

    async def step() -> list[Any]:
        try:
            return [await anext(items)]
        except StopAsyncIteration:
            return []

    return step


class StreamOwner(Protocol):
    """What the session tells its runner: errors, and that something changed."""

    def report(self, error: object, *, where: str = ..., quiet: bool = ...) -> None: ...

    def activity(self) -> None: ...


class WakeStreamSession:
    """Where the runner is in its wake stream, and the work that reads it."""

    def __init__(self, owner: StreamOwner, config: RunnerConfig, *, http: HttpClient,
                 clock: Clock, stats: Stats, log: LabelledLog,
                 recreate: Callable[[HttpClient], Awaitable[bool]] | None,
                 activity: Callable[[], None] | None = None) -> None:
        self._owner = owner
        #: Says something a heartbeat reports changed (default: ``owner.activity``).
        self._activity = activity if activity is not None else owner.activity
        self.config = config
        self._http = http
        self._clock = clock
        self._stats = stats
        self._log = log
        self._recreate = recreate
        self._factory: StreamFactory = config.stream_factory or aiohttp_stream_factory(
            lambda: http.session, clock)
        #: The wake-stream offset after the last fully read batch.
        self.offset: str | None = config.offset
        self._cursor: str | None = None
        #: Messages read from the wake stream (proof of life for heartbeat resets).
        self.messages_read = 0

    def record_offset(self, offset: str) -> None:
        if offset != self.offset:
            self.offset = offset
            self._activity()

    # ============================================================ connecting

    async def connect(self, ticket: WorkTicket) -> None:
        """One connection attempt; reports ``CONNECTED`` or ``CONNECT_FAILED``."""
        cfg = self.config
        try:
            try:
                stream = await self._open_stream()
            except StreamStatusError as exc:
                if exc.status != 404 or not await self._recreate_wake_stream():
                    raise
                stream = await self._open_stream()
            except OffsetsWentBack:  # a long-poll connects with a catch-up read
                self._stream_went_back()
                stream = await self._open_stream()
        except asyncio.CancelledError:
            raise
        except PullwakeError as exc:  # ConnectTimeout, ConnectError, StreamStatusError, ...
            ticket.report("CONNECT_FAILED", error=exc)
            return
        except Exception as exc:  # noqa: BLE001 - a custom stream factory's failure
            ticket.report("CONNECT_FAILED", error=ConnectError(
                self._http.scrub(f"stream factory raised {type(exc).__name__}: {exc}"),
                url=cfg.wake_stream_url))
            return
        if not ticket.report("CONNECTED", stream=stream):
            stream.close()

    async def _open_stream(self) -> Any:
        cfg = self.config
        with translate("connect", url=cfg.wake_stream_url, secrets=self._http.secrets):
            async with deadline(self._clock, cfg.connect_timeout):
                headers = await self._http.resolve_headers()
                return await self._factory(StreamRequest(
                    url=cfg.wake_stream_url,
                    offset=self.offset or "-1",
                    live=cfg.live,
                    cursor=self._cursor,
                    headers=headers,
                    read_idle_timeout=cfg.read_idle_timeout,
                    max_message_bytes=cfg.max_message_bytes,
                    max_response_bytes=cfg.max_response_bytes,
                    clock=self._clock,
                    secrets=self._http.secrets,
                ))

    async def _recreate_wake_stream(self) -> bool:
        """The wake stream is gone (404): re-create it if the control plane owns it.

        A re-created stream is new: it is read from the beginning. True if the
        connection attempt should be made again.
        """
        if self._recreate is None:
            return False
        # Shielded: a reset cancelling this attempt must not cancel the
        # re-creation half-way (the worker's record of it included).
        created = await asyncio.shield(self._recreate(self._http))
        if created:
            self._log.warning("the wake stream %s was gone (404: server restarted?): "
                              "re-created it; reading it from the beginning",
                              redact_url(self.config.wake_stream_url))
            self._restart_offset()
        return True

    def _stream_went_back(self) -> None:
        # Offsets never go back on one stream: this one was deleted and created
        # again (a restarted in-memory server, another worker re-creating it).
        self._log.warning("wake stream offsets went back from %s: the stream was re-created; "
                          "reading it from the beginning", self.offset)
        self._restart_offset()

    def _restart_offset(self) -> None:
        self.offset = None
        self._cursor = None
        self._activity()

    # ============================================================= consuming

    async def consume(self, ticket: WorkTicket) -> None:
        """Read the connected stream; reports ``WAKE``/``OFFSET``, then how it ended.

        The built-in stream hands over each piece's items as one list
        (``next_items``); any other stream is iterated item by item. Each item
        is judged by its exact type first (the built-in ones), any other by
        ``isinstance``, in the same order. Once the ticket is stale (the
        consumer is cancelled or replaced: ``ticket.cancelled``, see
        :class:`~pullwake.lifecycle.effects.WorkTicket`), nothing more is read.
        """
        stream = ticket.payload["stream"]
        step = getattr(stream, "next_items", None)
        if step is None:
            step = _one_by_one(stream)
        error: BaseException | None = None
        closed = False
        try:
            items: list[Any]
            while items := await step():
                for item in items:
                    kind: type | None = type(item)
                    if kind not in _KINDS:
                        kind = _kind_of(item)
                    if kind is Message:
                        self.messages_read += 1
                        try:
                            wake = WakeEvent.parse(item.value)
                        except MessageError as exc:
                            self._reject(exc)
                        else:
                            if wake is not None:
                                ticket.report("WAKE", wake=wake)
                    elif kind is Checkpoint:
                        offset = item.next_offset
                        if self.offset is not None and offset < self.offset:
                            raise OffsetsWentBack(f"offsets went back to {offset}",
                                                  url=self.config.wake_stream_url)
                        if item.cursor:
                            self._cursor = item.cursor
                        if offset != self.offset:  # keep-alives repeat it
                            ticket.report("OFFSET", offset=offset)
                        if item.closed:
                            closed = True
                            break
                    elif kind is BadMessage:
                        self._reject(item.error)
                    if ticket.cancelled:
                        return
                if closed:
                    break
        except asyncio.CancelledError:
            raise
        except OffsetsWentBack as exc:
            self._stream_went_back()
            error = exc
        except PullwakeError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a custom stream's failure ends the session
            error = TransportError(self._http.scrub(
                f"wake stream raised {type(exc).__name__}: {exc}"))
        finally:
            stream.close()
        if closed:
            ticket.report("STREAM_CLOSED")
        else:
            ticket.report("STREAM_END", error=error)

    def _reject(self, error: MessageError) -> None:
        self._stats.messages_rejected += 1
        self._owner.report(error, where="message")
