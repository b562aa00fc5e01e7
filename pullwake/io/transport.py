"""The wake-stream transport: the live read of the JSON wake stream, for the runner.

This module owns the seam between the runner and a live read:
:data:`StreamFactory` (``await factory(request)`` returns a :class:`WakeStream`
once response headers arrived: the connect phase) and the stream of
:data:`StreamItem` the runner iterates (the read phase, each network read
bounded by the idle timeout):

- :class:`Message` — one decoded JSON message;
- :class:`~pullwake.protocol.Checkpoint` — the offset to resume from after
  everything before it, and whether the stream is up to date or closed
  (closed ends the session);
- :class:`BadMessage` — one item that cannot be used (malformed, nested too
  deeply, oversized, an unusable SSE control event): reported and skipped;
  the next checkpoint moves past it, in both live modes (issue 14, class 2).

The read rules (offsets, cursor echo, long-poll chaining, SSE events, framing
with a limit per message and none per answer) are
:class:`pullwake.protocol.ReadCore`'s; the default factory drives it with
:class:`pullwake.io.areader.AsyncShell`. A response that cannot be framed (a
connection cut mid-event, a missing offset header) raises
:class:`~pullwake.errors.ProtocolError` and ends the session; the runner
reconnects from its last good offset with its own backoff.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from pullwake.errors import MessageError, ProtocolError
from pullwake.io.areader import AsyncShell
from pullwake.io.clock import Clock
from pullwake.protocol import Batch, Checkpoint, ReadCore, Rejected, valid_offset

__all__ = [
    "BadMessage",
    "Checkpoint",
    "Message",
    "StreamFactory",
    "StreamItem",
    "StreamRequest",
    "WakeStream",
    "aiohttp_stream_factory",
    "valid_offset",
]


@dataclass(frozen=True, slots=True)
class Message:
    value: Any


@dataclass(frozen=True, slots=True)
class BadMessage:
    error: MessageError


StreamItem = Message | Checkpoint | BadMessage


@dataclass(frozen=True)
class StreamRequest:
    """Everything a stream factory needs for one connection attempt."""

    url: str
    offset: str
    live: str = "sse"
    cursor: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    read_idle_timeout: float = 45.0
    max_message_bytes: int = 1024 * 1024
    #: Kept for compatibility: answers are framed as they stream in, with a
    #: limit per message, so no answer size is ever refused (issue 14, class 1).
    max_response_bytes: int = 16 * 1024 * 1024
    clock: Clock | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)


class WakeStream(Protocol):
    """An open live read. Iterate it for items; ``close()`` is sync and idempotent.

    A stream may also offer ``async next_items() -> list[StreamItem]`` (the
    built-in one does): the items of its next read, ``[]`` once it is over;
    the runner's consumer then takes them a list at a time.
    """

    def __aiter__(self) -> AsyncIterator[StreamItem]: ...
    def close(self) -> None: ...


StreamFactory = Callable[[StreamRequest], Awaitable[WakeStream]]


class _CoreStream:
    """One live read session: the first answer is open; long-polls chain from it.

    :meth:`next_items` reads it a piece at a time: the runner's consumer takes
    each piece's items as one list (no generator step per item, twice a wake);
    iterating the stream gives the same items one by one.
    """

    def __init__(self, shell: AsyncShell, resp: aiohttp.ClientResponse, live: Any,
                 damaged: list[str | None]) -> None:
        self._shell = shell
        self._damaged = damaged  # [start offset of the last damaged answer], across sessions
        self._resp: aiohttp.ClientResponse | None = resp  # the answer being read
        self._window = shell.answer_window(live)
        self._live = live
        self._closed = False
        self._over = False  # the session ended (the last answer's items were handed out)
        self._error: BaseException | None = None  # raised once the items before it are out

    def close(self) -> None:
        self._closed = True
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()

    async def __aiter__(self) -> AsyncIterator[StreamItem]:
        while items := await self.next_items():
            for item in items:
                yield item

    async def next_items(self) -> list[StreamItem]:
        """The items of the next piece read (never empty); ``[]`` once the session is over.

        The session is over when the stream is closed (by the server, or by
        :meth:`close`), or when the server ends an SSE answer (the runner
        reconnects); long-poll answers chain until then. A failure ends it
        too: raised once the items read before it were handed out.
        """
        shell = self._shell
        while not (self._closed or self._over):
            resp = self._resp
            try:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if resp is None:
                    resp, self._live = await shell.open()
                    self._resp = resp
                    self._window = shell.answer_window(self._live)
                events = await shell.answer_events(resp, self._window)
                if events is None:  # the answer ended
                    self._resp = None
                    resp.close()
                    core = shell.core
                    events = core.end()
                    self._over = core.done or self._live == "sse"
                items = self._items(events) if events else None
            except BaseException:
                self._over = True
                self.close()
                raise
            if items:
                return items
        return []

    def _items(self, events: list[Any]) -> list[StreamItem]:
        """Each event's items: a batch's values one by one, a checkpoint as it is."""
        items: list[StreamItem] = []
        for event in events:
            kind = type(event)
            if kind is Batch:
                for value in event.values:
                    if type(value) is Rejected:
                        try:
                            self._check_damage(value, event.start)
                        except ProtocolError as exc:
                            if not items:
                                raise
                            self._error = exc  # the items before it are delivered first
                            return items
                        items.append(BadMessage(value.error))
                    else:
                        items.append(Message(value))
            elif kind is Checkpoint:
                items.append(event)
            elif kind is Rejected:
                items.append(BadMessage(event.error))
        return items

    def _check_damage(self, rejected: Rejected, start: str) -> None:
        """Long-poll damage a transport fault could explain is read once more, then skipped.

        The first time an answer from ``start`` is damaged, the session ends
        (the runner reconnects from its last good offset and reads it again);
        the second time in a row it is poison: skipped with a record, and the
        offset moves past it. So a flipped bit costs one reconnect, and a
        poison answer never a reconnect loop.
        """
        if not rejected.damaged or self._live == "sse" or self._damaged[0] == start:
            # SSE frames each event itself (a cut is caught there): its data is poison.
            return
        self._damaged[0] = start
        raise ProtocolError(f"damaged answer ({rejected.error}); reading it once more",
                            url=self._shell.url)


def aiohttp_stream_factory(session_getter: Callable[[], aiohttp.ClientSession],
                           clock: Clock) -> StreamFactory:
    """The default factory: live reads with aiohttp on the runner's session."""

    damaged: list[str | None] = [None]

    async def open_stream(req: StreamRequest) -> WakeStream:
        live: Any = "sse" if req.live == "sse" else "long-poll"
        # SSE goes live at once (the wake stream is JSON). Long-poll connects with a
        # catch-up read, which the server answers at once: a long-poll at the tail is
        # held open for the server's own timeout (30 s on the reference server),
        # longer than connect_timeout; the polls that follow are reads, bounded by
        # read_idle_timeout.
        core = ReadCore(offset=req.offset, live=live, cursor=req.cursor,
                        kind="json" if live == "sse" else None,
                        max_message_bytes=req.max_message_bytes, url=req.url)
        secrets = req.secrets
        shell = AsyncShell(session_getter(), req.url, core, headers=dict(req.headers),
                           clock=req.clock or clock, connect_timeout=None,
                           idle_timeout=req.read_idle_timeout, secrets=lambda: secrets,
                           live_floor=False)
        resp, mode = await shell.open()
        return _CoreStream(shell, resp, mode, damaged)

    return open_stream
