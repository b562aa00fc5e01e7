"""Wake: one claimed wake as a handler sees it, and how its streams are read.

This module owns :class:`Wake` (the streams a claim handed over, with their
``(acked, tail]`` ranges, and how far the handler read) and the stream reads
behind ``wake.messages(path)`` / ``wake.items(path)``. A wake reads through a
:class:`WakeReader`, a small capability (the HTTP client, the stream URLs,
the item size limit, the clock, the timeouts and a sync session with the same
credentials), never through the worker; :class:`HandlerReads` is the
worker's. It decides nothing about acks: the job (:mod:`.dispatch`) acks
what the wake says was handed over or read.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pullwake.errors import ConfigError
from pullwake.io.areader import AsyncShell
from pullwake.io.clock import Clock
from pullwake.io.http import HttpClient
from pullwake.protocol import DEFAULT_RETRY, Assembler, Batch, Checkpoint, ReadCore, Rejected
from pullwake.runtime.jobs import run_from_thread
from pullwake.runtime.logs import LabelledLog
from pullwake.runtime.subscriptions import ClaimedStream

if TYPE_CHECKING:
    from pullwake.io.fetchcache import FetchCache

__all__ = ["HandlerReads", "Wake", "WakeReader"]


class WakeReader(Protocol):
    """What a :class:`Wake` needs to read its streams (the worker's reads, or a test's).

    ``http`` is the loop's HTTP client (session, headers, secrets);
    ``sync_session()`` and ``sync_headers()`` serve a sync handler's thread
    with the same credentials.
    """

    @property
    def http(self) -> HttpClient: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def max_item_bytes(self) -> int: ...

    @property
    def request_timeout(self) -> float: ...

    def stream_url(self, path: str) -> str: ...

    def sync_session(self) -> Any: ...

    def sync_headers(self) -> dict[str, str]: ...


class HandlerReads:
    """The worker's :class:`WakeReader`: its HTTP client, limits and a sync session.

    ``bind(loop)`` at start (sync reads resolve headers on it), ``close()`` at stop.
    """

    def __init__(self, *, http: HttpClient, stream_url: Any, clock: Clock,
                 max_item_bytes: int, request_timeout: float, log: LabelledLog,
                 fetch_cache: FetchCache | None = None) -> None:
        self.http = http
        self.clock = clock
        self.max_item_bytes = max_item_bytes
        self.request_timeout = request_timeout
        self._stream_url = stream_url
        self._log = log
        self._fetch_cache = fetch_cache
        self._session_sync: Any = None
        self._session_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def stream_url(self, path: str) -> str:
        url: str = self._stream_url(path)
        return url

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def close(self) -> None:
        if self._session_sync is not None:
            self._session_sync.close()
            self._session_sync = None

    def sync_headers(self) -> dict[str, str]:
        """The worker's headers for a sync handler's read, resolved on the loop.

        The same provider, validation and secret memory as async reads: a
        sync handler sends exactly the credentials an async one does.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            raise ConfigError("the worker is not running: no headers for a sync read")
        future = run_from_thread(self.http.resolve_headers(), loop)
        return future.result(timeout=self.request_timeout)

    def sync_session(self) -> Any:
        """The worker's own requests.Session for sync handlers (cached if configured)."""
        with self._session_lock:
            if self._session_sync is None:
                import requests

                if self._fetch_cache is not None:
                    from pullwake.errors import CacheError

                    try:
                        self._session_sync = self._fetch_cache.session()
                    except (CacheError, ConfigError) as exc:  # never fail handlers
                        self._log.warning("fetch cache unusable, reading uncached: %s", exc)
                        self._session_sync = requests.Session()
                else:
                    self._session_sync = requests.Session()
            return self._session_sync


class _StreamRead:
    """``wake.messages(path)`` / ``wake.items(path)``: ``async for`` on the loop, ``for``
    in a sync handler. Both drive the one read core (:mod:`pullwake.protocol`)
    over ``(acked_offset, tail_offset]``, streaming: items are handed over as
    they are framed, so a backlog of any size is read with memory bounded per
    message. Credentials come from the worker's headers (a mapping or a
    provider, resolved before every request on both paths).

    ``messages`` yields values and raises an item's typed
    :class:`~pullwake.errors.MessageError` if it cannot be decoded; ``items``
    yields :class:`~pullwake.protocol.Item` s, so a handler can skip a bad one.
    """

    def __init__(self, wake: Wake, stream: ClaimedStream, *, items: bool) -> None:
        self._wake = wake
        self._stream = stream
        self._items = items

    def _core(self) -> ReadCore:
        reader = self._wake._reader
        s = self._stream
        return ReadCore(offset=s.acked_offset, live="catch-up", until=s.tail_offset,
                        max_message_bytes=reader.max_item_bytes,
                        url=reader.stream_url(s.path))

    def _handle(self, event: Any) -> Iterator[Any]:
        kind = type(event)
        if kind is Batch:
            if self._items:
                yield from Assembler.items(event)
                return
            for value in event.values:
                if type(value) is Rejected:
                    error = value.error
                    if error.offset is None:
                        error.offset = event.start
                    raise error
                yield value
        elif kind is Checkpoint:
            self._wake._read_to(self._stream.path, event.next_offset)
        elif kind is Rejected:
            raise event.error

    async def __aiter__(self) -> AsyncIterator[Any]:
        reader = self._wake._reader
        http = reader.http
        core = self._core()
        shell = AsyncShell(http.session, core.url or "", core, headers=http.read_headers,
                           checked_headers=True, clock=reader.clock,
                           connect_timeout=reader.request_timeout,
                           idle_timeout=reader.request_timeout, secrets=lambda: http.secrets)
        wake, path, items, step = self._wake, self._stream.path, self._items, shell.step
        try:
            while out := await step():  # (one awaited call per answer: no generator per layer)
                for event in out:
                    kind = type(event)
                    if kind is Checkpoint:  # (the common events inline: no generator per event)
                        wake._read_to(path, event.next_offset)
                    elif kind is Batch and not items and Rejected not in map(type, event.values):
                        for value in event.values:
                            yield value
                    else:
                        for value in self._handle(event):
                            yield value
        finally:
            shell.close()

    def __iter__(self) -> Iterator[Any]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("use `async for` in an async handler; `for` is for sync handlers")
        return self._sync()

    def _sync(self) -> Iterator[Any]:
        from pullwake.io.reader import SyncShell

        reader = self._wake._reader
        core = self._core()
        shell = SyncShell(reader.sync_session(), core.url or "", core,
                           headers=reader.sync_headers, timeout=reader.request_timeout,
                           retry=DEFAULT_RETRY, secrets=reader.http.secrets)
        events = shell.events()
        try:
            for event in events:
                yield from self._handle(event)
        finally:
            events.close()


@dataclass
class Wake:
    """One claimed wake handed to a handler: streams with ``(acked, tail]`` ranges."""

    subscription_id: str
    wake_id: str | None
    generation: int | None
    streams: tuple[ClaimedStream, ...]
    recovered: bool = False
    _reader: WakeReader = field(repr=False, default=None)  # type: ignore[assignment]
    _read: dict[str, str] = field(default_factory=dict, repr=False)

    def stream(self, path: str) -> ClaimedStream:
        for s in self.streams:
            if s.path == path.strip("/") or s.path == path:
                return s
        raise KeyError(f"stream {path!r} is not part of this wake")

    def messages(self, path: str) -> _StreamRead:
        """The messages of ``path`` in ``(acked_offset, tail_offset]`` (values).

        JSON streams give their messages, ``text/*`` streams ``str`` chunks,
        others ``bytes`` chunks. A message that cannot be decoded raises its
        typed :class:`~pullwake.errors.MessageError`; use :meth:`items` to skip it.
        """
        return _StreamRead(self, self.stream(path), items=False)

    def items(self, path: str) -> _StreamRead:
        """The :class:`~pullwake.protocol.Item` s of ``path`` in ``(acked, tail]``.

        Each carries ``data`` (raising if it could not be decoded; check
        ``item.ok`` to skip it), ``offset`` (resume after its chunk), ``start``
        and ``index`` (``(start, index)`` names it, for idempotent handlers).
        """
        return _StreamRead(self, self.stream(path), items=True)

    def _read_to(self, path: str, offset: str) -> None:
        if offset > self._read.get(path, ""):
            self._read[path] = offset
