"""What the read functions share, sync and async: their arguments and their result.

:func:`pullwake.read_stream` / :func:`~pullwake.iter_chunks` (the requests
shell, :mod:`pullwake.io.reader`) and :func:`pullwake.aread_stream` /
:func:`~pullwake.aiter_chunks` (the aiohttp shell, :mod:`pullwake.io.areader`)
take the same arguments and give the same result. This module owns both
halves, so they cannot drift: the argument checks (:func:`check_url`,
:func:`check_headers`, :func:`check_positive_int`), the :class:`ReadCore` built
from them (:func:`start_core`), their defaults (``DEFAULT_*``), :class:`Collector`,
which gathers a read's events into a :class:`~pullwake.protocol.items.ReadResult`
and says when a live read is complete, and which transport failures the shells
retry (:func:`transient`: connect and idle failures, and those they mark with
:func:`mark_transport`). No I/O: each shell moves the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pullwake.errors import (
    ConfigError,
    ConnectError,
    IdleTimeout,
    OversizedMessage,
    ProtocolError,
    PullwakeError,
    redact_url,
)
from pullwake.protocol.items import Assembler, Item, ReadResult
from pullwake.protocol.read import Live, ReadCore

__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "DEFAULT_IDLE_TIMEOUT_S", "DEFAULT_MAX_BYTES",
           "DEFAULT_MAX_MESSAGE_BYTES", "LIVE_READ_TIMEOUT_S", "Collector", "check_headers",
           "check_positive_int", "check_url", "mark_transport", "start_core", "transient"]

#: Upper bound on the body bytes one ``read_stream`` / ``aread_stream`` call collects.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Upper bound on one message (or text/bytes chunk): a limit per item, not per answer.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: No response headers within this many seconds fails the request.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: A silence longer than this many seconds while reading fails the answer.
DEFAULT_IDLE_TIMEOUT_S = 30.0
#: Live requests wait at least this long for a first byte (a long-poll is held
#: open up to the server's timeout: 30 s on the reference server).
LIVE_READ_TIMEOUT_S = 45.0

#: Query parameters a read sets itself: a caller's URL must not carry them.
_RESERVED_PARAMS = frozenset({"offset", "live", "cursor"})


def mark_transport(error: PullwakeError) -> PullwakeError:
    """Mark ``error`` as a transport failure of a shell (a dropped or stalled answer)."""
    error._io = True  # type: ignore[attr-defined]
    return error


def transient(error: BaseException) -> bool:
    """A connection-level failure worth another try (statuses are the core's call)."""
    return isinstance(error, (ConnectError, IdleTimeout)) or (
        isinstance(error, ProtocolError) and getattr(error, "_io", False))


def check_url(url: object) -> str:
    """``url`` if it is an absolute http(s) stream URL without offset/live/cursor/fragment."""
    if not isinstance(url, str):
        raise ConfigError("url must be a string")
    try:
        parts = urlsplit(url)
        params = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        raise ConfigError(f"url is not a valid URL: {redact_url(url)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"url must be an absolute http(s) URL: {redact_url(url)}")
    if parts.fragment:
        raise ConfigError(f"url must not have a fragment: {redact_url(url)}")
    reserved = sorted({k for k, _ in params} & _RESERVED_PARAMS)
    if reserved:
        raise ConfigError(
            f"url must not carry the {', '.join(reserved)} parameter(s); "
            "pass offset= / until= instead"
        )
    return url


def check_headers(headers: object) -> dict[str, str]:
    """A validated copy of a header mapping (str to str, no line breaks)."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise ConfigError("headers must be a mapping of header names to values "
                          "(or a callable returning one)")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigError("headers must map str names to str values")
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ConfigError(f"header {name!r} contains a line break")
        checked[name] = value
    return checked


def check_positive_int(value: object, name: str) -> int:
    """``value`` if it is an int > 0 (not a bool), else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive int")
    return value


def start_core(url: str, offset: str, live: object, *, cursor: str | None, until: str | None,
           max_message_bytes: int, kind: Any = None, params: Mapping[str, str] | None = None,
           use_etag: bool = False) -> ReadCore:
    """The :class:`ReadCore` of one read from the read functions' checked arguments."""
    if live in (None, False, "catch-up"):
        mode: Live = "catch-up"
    elif live is True:
        mode = "long-poll"
    elif live in ("long-poll", "sse"):
        mode = live
    else:
        raise ConfigError(f"live must be None, 'long-poll' or 'sse', got {live!r}")
    extra: tuple[tuple[str, str], ...] = ()
    if params:
        checked = check_headers(params)
        extra = tuple(checked.items())
    return ReadCore(offset=offset, live=mode, cursor=cursor, until=until,
                    max_message_bytes=check_positive_int(max_message_bytes,
                                                          "max_message_bytes"),
                    url=url, kind=kind, extra_params=extra, use_etag=use_etag)


class Collector:
    """Gather a read's events into a :class:`ReadResult` (both shells use it).

    ``add()`` returns True when the read is complete: for catch-up when the
    core is done; for a live read once it caught up with something new, or
    after one live answer (long-poll) / the first live data (SSE), or closed.
    """

    def __init__(self, core: ReadCore, *, limit: int, skip_bad: bool, url: str) -> None:
        self.core = core
        self.limit = limit
        self.skip_bad = skip_bad
        self.url = url
        self.items: list[Item] = []
        self._assembler = Assembler(core)
        self._live = core.live != "catch-up"
        self._fresh = False

    def add(self, event: Any, bytes_read: int) -> bool:
        chunk = self._assembler.add(event)
        if chunk is None:
            return False
        if not self.skip_bad:
            for item in chunk.items:
                if item.error is not None:
                    if item.error.offset is None:
                        item.error.offset = item.start
                    raise item.error
        self.items.extend(chunk.items)
        if bytes_read > self.limit:
            raise OversizedMessage(f"read of {redact_url(self.url)} exceeded "
                                   f"max_bytes={self.limit}", offset=chunk.start,
                                   size=bytes_read)
        if not self._live or chunk.closed:
            return chunk.closed
        if self._fresh:  # a live answer: long-poll data or timeout; SSE once data came
            return self.core.live == "long-poll" or bool(chunk.items)
        if chunk.up_to_date:
            if self.items:
                return True  # caught up with something new: done
            self._fresh = True  # caught up with nothing new: wait live for the next data
        return False

    def result(self, stats: Any) -> ReadResult:
        core, items = self.core, self.items
        return ReadResult(
            messages=tuple(i.value for i in items if i.error is None),
            next_offset=core.offset,
            up_to_date=core.up_to_date,
            closed=core.closed,
            items=tuple(items),
            kind=core.kind,
            content_type=core.content_type,
            cursor=core.cursor,
            responses=stats.responses,
            cached_responses=stats.cached,
            bytes_read=stats.bytes_read,
        )
