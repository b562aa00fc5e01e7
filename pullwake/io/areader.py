"""The async read shell: Durable Streams reads with aiohttp, for handlers and scripts.

This module owns :func:`aread_stream`, :func:`aiter_chunks` and
:func:`aiter_items`, the async twins of :mod:`pullwake.io.reader`: the same
arguments, the same results, the same errors, because every rule lives in
:class:`pullwake.protocol.ReadCore` and this shell only moves bytes (aiohttp
exceptions are mapped by :func:`pullwake.io.http.translate`, the one place).

Transient failures (5xx, 429 honouring ``Retry-After``, refused or dropped
connections, stalled answers) are retried under a bounded
:class:`~pullwake.protocol.RetryPolicy` on the injected clock; a retried answer
never repeats an item already handed out. Each network read is bounded by the
idle timeout and each answer by lack of progress
(:class:`~pullwake.protocol.progress.ProgressWindow`), never by total duration.
Redirects are never followed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import aiohttp
from yarl import URL

from pullwake.errors import (
    ConfigError,
    ConnectError,
    IdleTimeout,
    ProtocolError,
    PullwakeError,
)
from pullwake.io.clock import Clock, LoopClock, deadline, sleep
from pullwake.io.http import make_session, transport_error
from pullwake.protocol import (
    DEFAULT_RETRY,
    Assembler,
    Chunk,
    Item,
    Live,
    ReadCore,
    ReadResult,
    RetryPolicy,
)
from pullwake.protocol.calls import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    LIVE_READ_TIMEOUT_S,
    Collector,
    check_headers,
    check_positive_int,
    check_url,
    mark_transport,
    start_core,
    transient,
)
from pullwake.protocol.read import ERROR_BODY_LIMIT, ProgressWindow, Request
from pullwake.protocol.retry import Retrying

__all__ = ["AsyncShell", "aiter_chunks", "aiter_items", "aread_stream"]

#: pullwake's own deadlines bound every phase; a caller's session may carry
#: aiohttp's cumulative ``total`` (300 s by default), which would cut a long read.
NO_TOTAL = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None)

AsyncHeaders = (Mapping[str, str]
                | Callable[[], Mapping[str, str] | Awaitable[Mapping[str, str]]] | None)


#: Header mappings that are never awaitable (skips the awaitable check per request).
_MAPPINGS = frozenset({dict, MappingProxyType})


class _Lazy:
    """An iterable of secrets computed when iterated: the caller's, then the header
    values sent. Made only when an error is scrubbed (a read without one makes none).

    It holds what it reads, not the shell: a shell referring to itself through
    a bound method would be a reference cycle per read, left to the garbage
    collector (a worker reads on every wake).
    """

    __slots__ = ("_get", "sent")

    def __init__(self, get: Callable[[], tuple[str, ...]], sent: tuple[str, ...]) -> None:
        self._get = get
        self.sent = sent

    def __iter__(self) -> Iterator[str]:
        return iter((*self._get(), *self.sent))


@functools.lru_cache(maxsize=1024)
def _url_parts(base: str) -> tuple[str, str, str] | None:
    """A stream URL's scheme, authority and path, exactly as given (cached: a
    worker reads the same streams every wake); None if it has a query or fragment."""
    if "?" in base or "#" in base:
        return None
    url = URL(base, encoded=True)
    return url.scheme, url.raw_authority, url.raw_path


def _request_url(base: str, req: Request) -> URL:
    """The URL of one read, sent exactly as built (no re-quoting).

    Built from the stream URL's cached parts and the read's query, never
    parsed: each read's query is new, so parsing it would miss yarl's cache
    every time (and evict the control-plane URLs that repeat every wake).
    """
    parts = _url_parts(base)
    if parts is None:
        return URL(req.url(base), encoded=True)
    scheme, authority, path = parts
    return URL.build(scheme=scheme, authority=authority, path=path, query_string=req.query(),
                     encoded=True)


class AsyncShell:
    """Drive one :class:`ReadCore` with an aiohttp session on an injectable clock.

    :meth:`step` is the whole read, one awaited call per group of events (no
    generator per layer: a worker reads on every wake); :meth:`events` is the
    same as an async iterator; :meth:`open` and :meth:`answer_events` are its two
    halves, for a live read that chains answers itself (the wake stream).
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, core: ReadCore, *,
                 headers: AsyncHeaders = None, clock: Clock,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S,
                 idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S,
                 retry: RetryPolicy = DEFAULT_RETRY,
                 secrets: Callable[[], tuple[str, ...]] = tuple,
                 live_floor: bool = True, checked_headers: bool = False) -> None:
        self.live_floor = live_floor
        self.session = session
        self.url = url
        self.core = core
        self.headers = headers
        #: ``headers`` yields mappings already validated, whose values ``secrets``
        #: already holds (the worker's HTTP client): sent as they are.
        self.checked_headers = checked_headers
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.retry = retry
        # The caller's secrets and the header values sent (secrets too, as on the
        # sync path), computed only when an error is scrubbed (_scrubbed).
        self._caller_secrets = secrets
        self._sent: tuple[str, ...] = ()
        self.responses = 0
        self.cached = 0
        self.bytes_read = 0
        # The answer step() is reading, and its bounds.
        self._resp: aiohttp.ClientResponse | None = None
        self._idle: float | None = None
        self._window: ProgressWindow | None = None  # made for an answer read in pieces
        self._retrying: Retrying | None = None  # made at the first failure: most reads have none

    async def _headers(self) -> Mapping[str, str]:
        source: Any = self.headers
        value = source() if callable(source) else source
        if type(value) not in _MAPPINGS and inspect.isawaitable(value):
            value = await value
        if self.checked_headers:
            return value  # type: ignore[no-any-return]
        out = check_headers(value)
        sent = tuple(v for v in out.values() if len(v) >= 4)
        sent += tuple(v.split(" ", 1)[1] for v in sent if " " in v)
        known = self._sent
        if sent and not set(sent) <= set(known):
            self._sent = tuple(dict.fromkeys((*known, *sent)))[-64:]  # bounded
        return out

    def secrets(self) -> tuple[str, ...]:
        """Everything scrubbed from error text: the caller's secrets and header values sent."""
        return (*self._caller_secrets(), *self._sent)

    def _scrubbed(self) -> _Lazy:
        """:meth:`secrets`, computed when iterated (only if the error has text to scrub)."""
        return _Lazy(self._caller_secrets, self._sent)

    def _floor(self, seconds: float | None) -> float | None:
        if seconds is None or not self.live_floor:
            return seconds
        return max(seconds, LIVE_READ_TIMEOUT_S)

    def _read_idle(self, live: Live) -> float | None:
        return self._floor(self.idle_timeout) if live == "sse" else self.idle_timeout

    async def open(self) -> tuple[aiohttp.ClientResponse, Live]:
        """Send the core's next request; returns the response once its head is good.

        Raises the typed error of a final status, or of a transport failure
        (transient ones carry ``_io``); does not retry (see :meth:`step`).
        """
        req = self.core.request()
        headers = await self._headers()
        if req.headers:
            headers = {**headers, **dict(req.headers)}
        # A long-poll is a read of a live stream: its wait is bounded as silence
        # (IdleTimeout), like the rest of an open stream; anything else is a connect.
        phase: Any = "read" if req.live == "long-poll" else "connect"
        try:
            # (the wait for the head; a long-poll is held open up to the server's timeout)
            with deadline(self.clock, self.connect_timeout if phase == "connect"
                          else self._floor(self.idle_timeout)):
                resp = await self.session.get(_request_url(self.url, req),
                                              headers=headers or None,
                                              allow_redirects=False, timeout=NO_TOTAL)
        except BaseException as exc:  # translate's mapping, from a plain except
            error = transport_error(exc, phase, url=self.url, secrets=self._scrubbed())
            if error is None:
                if isinstance(exc, (ConnectError, ProtocolError, IdleTimeout)):
                    mark_transport(exc)
                raise
            if isinstance(error, (ConnectError, ProtocolError, IdleTimeout)):
                mark_transport(error)
            raise error from exc
        self.responses += 1
        try:
            head = self.core.head(resp.status, resp.headers)
            if not head.ok:
                body = b""
                if resp.status >= 400:
                    try:
                        with deadline(self.clock, self.connect_timeout):
                            body = await resp.content.read(ERROR_BODY_LIMIT)
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        body = b""
                status_error = self.core.status_error(resp.status, body, self.secrets())
                status_error.retry_after = head.retry_after
                if head.transient:
                    status_error._transient = True  # type: ignore[attr-defined]
                raise status_error
        except BaseException:
            resp.close()
            raise
        return resp, req.live

    async def _piece(self, resp: aiohttp.ClientResponse, idle: float | None) -> bytes:
        """The next piece of the answer: what is buffered at once, else within ``idle``.

        Only a read that has to wait arms the idle deadline (a small answer
        arrives with its head). Transport failures carry ``_io``.
        """
        content = resp.content
        try:
            piece = content.read_nowait()
            if not piece and not content.is_eof():
                with deadline(self.clock, idle):
                    piece = await content.readany()
        except BaseException as exc:  # translate's mapping, from a plain except
            error = transport_error(exc, "read", url=self.url, secrets=self._scrubbed())
            if error is not None:
                raise mark_transport(error) from exc
            if isinstance(exc, PullwakeError):
                raise mark_transport(exc) from exc.__cause__
            raise
        return piece

    def _take(self, window: ProgressWindow, piece: bytes) -> list[Any]:
        """Frame one piece; the events it completes (a trickle raises IdleTimeout)."""
        self.bytes_read += len(piece)
        out = self.core.feed(piece)
        # (the clock is read only for an unfinished unit: a completed one resets)
        if window.update(0.0 if out else self.clock.monotonic(), len(piece), bool(out)):
            raise mark_transport(IdleTimeout("the answer made no progress within "
                                             "the idle timeout (a trickle)", url=self.url))
        return out

    def answer_window(self, live: Live) -> ProgressWindow:
        """The progress bound of one open answer of ``live`` (its ``idle_s`` also bounds
        each network read of it): one per answer, for :meth:`answer_events`."""
        return ProgressWindow(self._read_idle(live))

    async def answer_events(self, resp: aiohttp.ClientResponse,
                            window: ProgressWindow) -> list[Any] | None:
        """The events the next piece of an open answer completes (maybe none); None
        once its body ended (then ``core.end()`` has the last events). One awaited
        call per piece, no generator: the wake stream reads every wake through it.
        Transport failures carry ``_io``; the caller closes the answer."""
        piece = await self._piece(resp, window.idle_s)
        return self._take(window, piece) if piece else None

    async def step(self) -> list[Any]:
        """The next events of the read, with bounded retries of transient failures.

        Returns a non-empty list until the read is finished, then ``[]``.
        Call :meth:`close` if the read is abandoned before that (it closes the
        answer being read). An answer that is complete once a piece is read
        (a small one arrives with its head) ends at once: no further read, and
        no progress window (no piece will follow for it to bound).
        """
        core = self.core
        while True:
            try:
                resp = self._resp
                if resp is None:
                    if core.done:
                        return []
                    resp, live = await self.open()
                    self._resp = resp
                    self._idle = self.idle_timeout if live != "sse" else self._read_idle(live)
                    self._window = None
                piece = await self._piece(resp, self._idle)
                if piece:
                    if resp.content.at_eof():  # (buffer drained, and no more to come)
                        self.bytes_read += len(piece)
                        out = core.feed(piece)
                        if out:
                            return out  # the answer ends at the next step
                    else:
                        if self._window is None:
                            self._window = ProgressWindow(self._idle)
                        out = self._take(self._window, piece)
                        if out:
                            return out
                        continue
                out = core.end()
                self._resp = None  # (close(), inline)
                resp.close()
                if self._retrying is not None:
                    self._retrying.progressed()
                if out:
                    return out
            except PullwakeError as error:
                self.close()
                retry_after = getattr(error, "retry_after", None)
                if not (transient(error) or getattr(error, "_transient", False)):
                    raise
                core.broken()
                if self._retrying is None:
                    self._retrying = self.retry.start()
                delay = self._retrying.delay(retry_after)
                if delay is None:
                    raise
                await sleep(self.clock, delay)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Close the answer being read, if any (idempotent)."""
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()

    async def events(self) -> AsyncIterator[Any]:
        """Every event of the read (:meth:`step` as an async iterator)."""
        step = self.step
        try:
            while out := await step():
                for event in out:
                    yield event
        finally:
            self.close()


def _core(url: str, offset: str, live: object, *, cursor: str | None, until: str | None,
          max_message_bytes: int, params: Mapping[str, str] | None) -> ReadCore:
    return start_core(check_url(url), offset, live, cursor=cursor, until=until,
                      max_message_bytes=max_message_bytes, params=params)


async def aiter_chunks(
    url: str,
    offset: str = "-1",
    *,
    live: Live | bool | None = None,
    cursor: str | None = None,
    until: str | None = None,
    headers: AsyncHeaders = None,
    params: Mapping[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    retry: RetryPolicy = DEFAULT_RETRY,
    clock: Clock | None = None,
) -> AsyncIterator[Chunk]:
    """Async :func:`pullwake.io.reader.iter_chunks`: one :class:`Chunk` per answer."""
    core = _core(url, offset, live, cursor=cursor, until=until,
                 max_message_bytes=max_message_bytes, params=params)
    own = session is None
    active = make_session() if session is None else session
    shell = AsyncShell(active, url, core, headers=headers, clock=clock or LoopClock(),
                       connect_timeout=connect_timeout, idle_timeout=idle_timeout, retry=retry)
    assembler = Assembler(core)
    try:
        async for event in shell.events():
            chunk = assembler.add(event)
            if chunk is not None:
                yield chunk
    finally:
        if own:
            await active.close()


async def aiter_items(url: str, offset: str = "-1", **kwargs: Any) -> AsyncIterator[Item]:
    """Async :func:`pullwake.io.reader.iter_items`: one :class:`Item` at a time."""
    async for chunk in aiter_chunks(url, offset, **kwargs):
        for item in chunk.items:
            yield item


async def aread_stream(
    url: str,
    offset: str = "-1",
    *,
    live: Live | bool | None = None,
    cursor: str | None = None,
    until: str | None = None,
    headers: AsyncHeaders = None,
    params: Mapping[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    skip_bad: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
    clock: Clock | None = None,
) -> ReadResult:
    """Async :func:`pullwake.read_stream`: the same arguments, result and errors.

    Example::

        result = await aread_stream("http://127.0.0.1:4437/v1/stream/events/a")
        for item in result.items:
            print(item.offset, item.data)
    """
    core = _core(url, offset, live, cursor=cursor, until=until,
                 max_message_bytes=max_message_bytes, params=params)
    limit = check_positive_int(max_bytes, "max_bytes")
    if session is not None and not isinstance(session, aiohttp.ClientSession):
        raise ConfigError("session must be an aiohttp.ClientSession")
    if core.done:
        return ReadResult(messages=(), next_offset=core.offset, up_to_date=False, closed=False)
    own = session is None
    active = make_session() if session is None else session
    shell = AsyncShell(active, url, core, headers=headers, clock=clock or LoopClock(),
                       connect_timeout=connect_timeout, idle_timeout=idle_timeout, retry=retry)
    collector = Collector(core, limit=limit, skip_bad=skip_bad, url=url)
    try:
        async for event in shell.events():
            if collector.add(event, shell.bytes_read):
                break
    finally:
        if own:
            await active.close()
    return collector.result(shell)
