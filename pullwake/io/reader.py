"""The synchronous read shell: Durable Streams reads with ``requests``.

This module owns :func:`read_stream` and :func:`iter_chunks` for code that is
not async (sync worker handlers, scripts, notebooks). It only moves bytes:
every rule (offsets, live modes, cursor, statuses, framing by content type,
retries) is :class:`pullwake.protocol.ReadCore`'s, the same core the async
shells use, and its arguments and result are :mod:`pullwake.protocol.calls`',
the same as :func:`pullwake.aread_stream`'s. ``requests`` (and urllib3)
exceptions become pullwake errors in :mod:`pullwake.io.sync_http`, raised
``from`` the original, as :mod:`pullwake.io.http` does for aiohttp:

=================================================  ===================================
``requests`` / server                              pullwake
=================================================  ===================================
``ConnectTimeout``                                 :class:`ConnectTimeout`
``ReadTimeout`` (headers or body), a stalled body  :class:`IdleTimeout`
``ConnectionError`` / ``SSLError`` before headers  :class:`ConnectError`
connection lost, bad chunking or gzip in the body  :class:`ProtocolError`
``InvalidURL`` / ``InvalidHeader`` / ...           :class:`ConfigError`
any status but 200/204 (404, 410, 5xx, ...)        :class:`StreamStatusError` (``status``, ``code``)
missing / invalid ``Stream-Next-Offset``           :class:`ProtocolError`
a JSON message that cannot be decoded              :class:`MalformedMessage`
a JSON body that is not an array                   :class:`InvalidMessage`
one message past ``max_message_bytes``, or more    :class:`OversizedMessage`
than ``max_bytes`` in one ``read_stream`` call
=================================================  ===================================

Transient failures (5xx, 429 with ``Retry-After``, refused or dropped
connections, stalled bodies) are retried under a bounded
:class:`~pullwake.protocol.RetryPolicy`; a retried answer never repeats an
item already handed out. Redirects are never followed (a 3xx is a
:class:`StreamStatusError`): credentials are never sent to another origin,
and a stream's data never comes from somewhere else (issue 14, class 10).

A response served from a cache is never trusted to be up to date (it says what
was true when it was stored), so the reader always asks the server for the next
offset after a cached chunk; that is how appended data is never missed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

import requests
import requests.exceptions as rexc
import requests.sessions
from requests.structures import CaseInsensitiveDict

from pullwake.errors import ConfigError, IdleTimeout, PullwakeError
from pullwake.io.sync_http import body_pieces, translate_exception
from pullwake.protocol import (
    DEFAULT_RETRY,
    Assembler,
    Chunk,
    Item,
    Live,
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
from pullwake.protocol.read import ERROR_BODY_LIMIT, ProgressWindow, ReadCore

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_TIMEOUT_S",
    "Collector",
    "ReadResult",
    "SyncShell",
    "check_headers",
    "iter_chunks",
    "iter_items",
    "read_stream",
]

#: ``(connect, read)`` timeouts in seconds: no headers within the first, or a
#: silence longer than the second while reading, fails the read.
DEFAULT_TIMEOUT_S: tuple[float, float] = (DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S)

Timeout = float | tuple[float, float] | None
HeadersArg = Mapping[str, str] | Callable[[], Mapping[str, str]] | None


def _check_timeout(timeout: object) -> Timeout:
    def positive(x: object) -> bool:
        return (
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
        )

    if timeout is None:
        return None
    if positive(timeout):
        return float(timeout)  # type: ignore[arg-type]
    if isinstance(timeout, tuple) and len(timeout) == 2 and all(positive(t) for t in timeout):
        return (float(timeout[0]), float(timeout[1]))
    raise ConfigError("timeout must be None, seconds > 0, or a (connect, read) pair of them")


def _check_session(session: object) -> None:
    # Not isinstance(requests.Session): that name is rebound by cache layers, so a
    # session made before an install would fail it. Every session has this base.
    if session is not None and not isinstance(session, requests.sessions.SessionRedirectMixin):
        raise ConfigError("session must be a requests.Session")


class SyncShell:
    """Drive one :class:`ReadCore` with a ``requests`` session."""

    def __init__(self, session: requests.Session, url: str, core: ReadCore, *,
                 headers: HeadersArg, timeout: Timeout, retry: RetryPolicy,
                 secrets: tuple[str, ...] = (), monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.session = session
        self.url = url
        self.core = core
        self.headers = headers
        self.timeout = timeout
        self.retry = retry
        self.secrets = secrets
        self.monotonic = monotonic
        self.sleep = sleep
        self.responses = 0
        self.cached = 0
        self.bytes_read = 0

    def _headers(self) -> dict[str, str]:
        source = self.headers
        value = source() if callable(source) else source
        out = check_headers(value)
        extra = tuple(v for v in out.values() if len(v) >= 4)
        extra += tuple(v.split(" ", 1)[1] for v in extra if " " in v)
        if extra and not set(extra) <= set(self.secrets):  # bounded: no growth per request
            self.secrets = tuple(dict.fromkeys((*self.secrets, *extra)))[-64:]
        return out

    def _timeout(self, live: Live) -> Timeout:
        t = self.timeout
        if live == "catch-up" or t is None:
            return t
        connect, read = t if isinstance(t, tuple) else (t, t)
        return (connect, max(read, LIVE_READ_TIMEOUT_S))

    def _idle(self) -> float | None:
        t = self.timeout
        return t[1] if isinstance(t, tuple) else t

    def _fail(self, error: PullwakeError, retrying: Any, retry_after: float | None = None,
              cause: BaseException | None = None) -> None:
        delay = retrying.delay(retry_after)
        if delay is None:
            if cause is not None:
                raise error from cause
            raise error
        self.sleep(delay)

    def events(self) -> Generator[Any, None, None]:
        core = self.core
        retrying = self.retry.start()
        refresh = False
        while not core.done:
            req = core.request()
            headers = self._headers()
            headers.update(req.headers)
            if refresh:
                headers["Cache-Control"] = "no-cache"  # RFC 9111: ask the origin
            try:
                response = self.session.get(req.url(self.url), headers=headers,
                                            timeout=self._timeout(req.live), stream=True,
                                            allow_redirects=False)
            except rexc.RequestException as exc:
                error = translate_exception(exc, self.url, reading_body=False)
                if not transient(error):
                    raise error from exc
                self._fail(error, retrying, cause=exc)
                continue
            try:
                self.responses += 1
                from_cache = bool(getattr(response, "from_cache", False))
                self.cached += from_cache
                head_headers: Any = response.headers
                if from_cache and head_headers.get("Stream-Next-Offset") == core.offset:
                    # Another cache kept an answer that did not advance (the tail as it
                    # was): only the server can say what is there now.
                    refresh = True
                    continue
                if from_cache and "Stream-Up-To-Date" in head_headers:
                    # A cached chunk says what was true when it was stored: never "up to date".
                    head_headers = CaseInsensitiveDict(head_headers)
                    del head_headers["Stream-Up-To-Date"]
                refresh = False
                head = core.head(response.status_code, head_headers)
                if not head.ok:
                    body = b""
                    if response.status_code >= 400:
                        try:
                            for piece in response.iter_content(1024):
                                body += piece
                                if len(body) >= ERROR_BODY_LIMIT:
                                    break
                        except (rexc.RequestException, OSError):
                            body = b""
                    error = core.status_error(response.status_code, body, self.secrets)
                    error.retry_after = head.retry_after
                    if not head.transient:
                        raise error
                    self._fail(error, retrying, head.retry_after)
                    continue
                window = ProgressWindow(self._idle())
                try:
                    for piece in body_pieces(response, url=self.url):
                        self.bytes_read += len(piece)
                        out = core.feed(piece)
                        if window.update(self.monotonic(), len(piece), bool(out)):
                            raise mark_transport(IdleTimeout(
                                "the answer made no progress within the read timeout "
                                "(a trickle)", url=self.url))
                        yield from out
                    out = core.end()
                except PullwakeError as error:
                    if not transient(error):
                        raise
                    core.broken()
                    self._fail(error, retrying, cause=error.__cause__)
                    continue
            finally:
                response.close()
            retrying.progressed()
            yield from out


def iter_chunks(
    url: str,
    offset: str = "-1",
    *,
    live: Live | bool | None = None,
    cursor: str | None = None,
    until: str | None = None,
    headers: HeadersArg = None,
    params: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> Iterator[Chunk]:
    """Yield the stream's :class:`~pullwake.protocol.Chunk` s, one per answer.

    Catch-up (``live=None``) ends when the server says up to date or closed,
    or once ``next_offset >= until``. ``live="long-poll"`` / ``"sse"``
    (``True`` means long-poll) catches up, then follows the stream until it is
    closed (§4.1) or you stop iterating. ``headers`` may be a mapping or a
    callable returning one, called before every request.
    """
    url = check_url(url)
    core = start_core(url, offset, live, cursor=cursor, until=until,
                  max_message_bytes=max_message_bytes, params=params)
    _check_session(session)
    checked_timeout = _check_timeout(timeout)
    if not callable(headers):
        headers = check_headers(headers)
    own = session is None
    active = requests.Session() if session is None else session
    shell = SyncShell(active, url, core, headers=headers, timeout=checked_timeout, retry=retry)
    assembler = Assembler(core)
    try:
        for event in shell.events():
            chunk = assembler.add(event)
            if chunk is not None:
                yield chunk
    finally:
        if own:
            active.close()


def iter_items(url: str, offset: str = "-1", **kwargs: Any) -> Iterator[Item]:
    """Like :func:`iter_chunks`, one :class:`~pullwake.protocol.Item` at a time."""
    for chunk in iter_chunks(url, offset, **kwargs):
        yield from chunk.items


def read_stream(
    url: str,
    offset: str = "-1",
    *,
    live: Live | bool | None = None,
    cursor: str | None = None,
    until: str | None = None,
    headers: HeadersArg = None,
    params: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    skip_bad: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
    secrets: tuple[str, ...] = (),
) -> ReadResult:
    """Read a stream's items from ``offset`` until it is up to date (or ``until``).

    Any content type: JSON streams give their messages, ``text/*`` streams
    ``str`` chunks, others ``bytes`` chunks (``result.kind`` says which). With
    ``live="long-poll"`` or ``"sse"`` the read catches up and, if nothing was
    new, waits for the next data (or the server's timeout) before returning.
    Uses ``session`` if given (for example a :func:`pullwake.io.cache.cached_session`),
    else a new ``requests.Session()`` closed before returning, which goes
    through the process-wide fetch cache when one is installed.

    Args:
        url: the stream URL, e.g. ``http://host/v1/stream/events/a``.
        offset: ``"-1"`` (the beginning), ``"now"`` (the tail: no items, just
            its offset) or an offset from an earlier ``next_offset``.
        until: stop once ``next_offset >= until``. Reads cannot be bounded on
            the server, so the last chunk may include items past it.
        headers: extra request headers (credentials, for example), or a
            callable returning them before every request.
        session: the ``requests.Session`` to use.
        timeout: ``(connect, read)`` seconds, one number for both, or
            ``None``. The read timeout also bounds lack of progress: an answer
            that trickles (fewer than 4 KiB per read timeout) is stalled.
        max_bytes: the most body bytes this call collects.
        max_message_bytes: the most bytes one item may have.
        skip_bad: keep going past an item that cannot be decoded (it stays in
            ``result.items`` with its ``error``) instead of raising.
        retry: how transient failures are retried.

    Raises:
        ConfigError: a bad argument (offset, until, url, headers, ...).
        ConnectError, ConnectTimeout, IdleTimeout, ProtocolError: transport
            (after the retries).
        StreamStatusError: any status but 200/204 (``status``, ``code``).
        MalformedMessage, InvalidMessage, OversizedMessage: an item that
            cannot be decoded (unless ``skip_bad``).
        OversizedMessage: more than ``max_bytes`` were read.
    """
    url = check_url(url)
    core = start_core(url, offset, live, cursor=cursor, until=until,
                  max_message_bytes=max_message_bytes, params=params)
    limit = check_positive_int(max_bytes, "max_bytes")
    checked_timeout = _check_timeout(timeout)
    if not callable(headers):
        headers = check_headers(headers)
    _check_session(session)
    if core.done:
        return ReadResult(messages=(), next_offset=core.offset, up_to_date=False, closed=False)
    own = session is None
    active = requests.Session() if session is None else session
    shell = SyncShell(active, url, core, headers=headers, timeout=checked_timeout, retry=retry,
                       secrets=secrets)
    collector = Collector(core, limit=limit, skip_bad=skip_bad, url=url)
    events = shell.events()
    try:
        for event in events:
            if collector.add(event, shell.bytes_read):
                break
        return collector.result(shell)
    finally:
        events.close()
        if own:
            active.close()
