"""The synchronous catch-up reader: read a Durable Streams stream with ``requests``.

This module owns :func:`read_stream` and :class:`ReadResult`, for code that is
not async (sync worker handlers, scripts, notebooks). It is also the one place
where ``requests`` exceptions become pullwake errors (raised ``from`` the
original), mirroring what :mod:`pullwake.http` does for aiohttp:

=================================================  ===================================
``requests`` / server                              pullwake
=================================================  ===================================
``ConnectTimeout``                                 :class:`ConnectTimeout`
``ReadTimeout`` (headers or body)                  :class:`IdleTimeout`
``ConnectionError`` / ``SSLError`` before headers  :class:`ConnectError`
connection lost, bad chunking or gzip in the body  :class:`ProtocolError`
``InvalidURL`` / ``InvalidHeader`` / ...           :class:`ConfigError`
any status but 200/204 (404, 410, 5xx, ...)        :class:`StreamStatusError` (``status``, ``code``)
missing / invalid ``Stream-Next-Offset``           :class:`ProtocolError`
a body that is not JSON                            :class:`MalformedMessage`
JSON that is not an array, non-JSON content type   :class:`InvalidMessage`
more than ``max_bytes`` in one call                :class:`OversizedMessage`
=================================================  ===================================

Reads follow ``Stream-Next-Offset`` until the server says ``Stream-Up-To-Date``
(or ``Stream-Closed``), or until ``next_offset >= until``. The protocol has no
end offset for a read (PROTOCOL.md §5.5: the server picks the chunk size), so
``until`` only stops the loop: the last chunk may hold messages past it.

A response served from a cache is never trusted to be up to date (it says what
was true when it was stored), so the reader always asks the server for the next
offset after a cached chunk; that is how appended data is never missed.

This module must not long-poll or open SSE (the async side does live reads),
must not cache by itself (the fetch cache is a session layer:
:mod:`pullwake.cache`), and never puts header values in messages; URLs pass
through :func:`~pullwake.errors.redact_url`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
import requests.exceptions as rexc
import requests.sessions
from urllib3.exceptions import ReadTimeoutError

from .errors import (
    ConfigError,
    ConnectError,
    ConnectTimeout,
    IdleTimeout,
    InvalidMessage,
    MalformedMessage,
    OversizedMessage,
    ProtocolError,
    PullwakeError,
    StreamStatusError,
    TransportError,
    redact_url,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT_S",
    "ReadResult",
    "read_stream",
]

#: Upper bound on the decoded body bytes one :func:`read_stream` call accepts.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: ``(connect, read)`` timeouts in seconds: no headers within the first, or a
#: silence longer than the second while reading, fails the read.
DEFAULT_TIMEOUT_S: tuple[float, float] = (5.0, 30.0)

#: Offsets are opaque tokens (PROTOCOL.md §6) that must not contain , & = ? /;
#: pullwake accepts a conservative URL-safe alphabet and at most 256 characters.
_OFFSET_RE = re.compile(r"^[A-Za-z0-9._~:+-]{1,256}$")
_SENTINELS = ("-1", "now")
_RESERVED_PARAMS = frozenset({"offset", "live", "cursor"})
_CODE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
#: Codes pullwake assigns when the server's error body carries none.
_FALLBACK_CODES = {404: "STREAM_NOT_FOUND", 410: "OFFSET_GONE"}
_READ_CHUNK = 256 * 1024
_ERROR_BODY_LIMIT = 4096

Timeout = float | tuple[float, float] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadResult:
    """The outcome of one :func:`read_stream` call.

    Attributes:
        messages: the decoded JSON messages, in stream order.
        next_offset: where to resume (the last ``Stream-Next-Offset``).
        up_to_date: the server said ``Stream-Up-To-Date`` on the last,
            freshly fetched response (never inferred from a cached one).
        closed: the stream is closed (``Stream-Closed: true``): nothing more
            will ever be appended.
        responses: HTTP responses consumed (cached ones included).
        cached_responses: how many of those came from a cache.
        bytes_read: decoded body bytes across all responses.
    """

    messages: tuple[Any, ...]
    next_offset: str
    up_to_date: bool
    closed: bool
    responses: int = 0
    cached_responses: int = 0
    bytes_read: int = 0


# ------------------------------------------------------------------ validation


def _check_offset(value: object, name: str) -> str:
    if not isinstance(value, str) or not _OFFSET_RE.match(value):
        raise ConfigError(
            f"{name} must be '-1', 'now' or an offset token (1-256 characters of "
            "A-Z a-z 0-9 . _ ~ : + -)"
        )
    return value


def _check_url(url: object) -> str:
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


def _check_headers(headers: object) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise ConfigError("headers must be a mapping of header names to values")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigError("headers must map str names to str values")
        checked[name] = value
    return checked


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


def _check_max_bytes(max_bytes: object) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigError("max_bytes must be a positive int")
    return max_bytes


# ---------------------------------------------------- the requests -> pullwake boundary


def _translate(exc: rexc.RequestException, url: str, *, reading_body: bool) -> PullwakeError:
    """Map one ``requests`` exception to pullwake's tree (the only such mapping)."""
    if isinstance(exc, rexc.ConnectTimeout):
        return ConnectTimeout("no response headers within the connect timeout", url=url)
    if isinstance(exc, rexc.ReadTimeout) or (
        isinstance(exc, rexc.ConnectionError)
        and any(isinstance(arg, ReadTimeoutError) for arg in exc.args)
    ):
        return IdleTimeout("the server sent nothing within the read timeout", url=url)
    if isinstance(
        exc,
        (
            rexc.InvalidURL,
            rexc.MissingSchema,
            rexc.InvalidSchema,
            rexc.InvalidHeader,
            rexc.URLRequired,
            rexc.InvalidJSONError,
        ),
    ):
        return ConfigError(f"invalid request ({type(exc).__name__}) for {redact_url(url)}")
    if isinstance(exc, (rexc.ChunkedEncodingError, rexc.ContentDecodingError)):
        return ProtocolError(f"response body truncated or corrupt ({type(exc).__name__})", url=url)
    if isinstance(exc, rexc.TooManyRedirects):
        return ProtocolError("too many redirects", url=url)
    if isinstance(exc, rexc.ConnectionError):
        if reading_body:
            return ProtocolError("connection lost while reading the response body", url=url)
        return ConnectError(f"cannot connect ({type(exc).__name__})", url=url)
    return TransportError(f"request failed ({type(exc).__name__})", url=url)


def _status_error(response: requests.Response, url: str) -> StreamStatusError:
    """A :class:`StreamStatusError` carrying the server's error code, if it sent one."""
    code: str | None = None
    try:
        raw = b""
        for piece in response.iter_content(1024):
            raw += piece
            if len(raw) >= _ERROR_BODY_LIMIT:
                break
        body = json.loads(raw[:_ERROR_BODY_LIMIT]) if raw.lstrip()[:1] == b"{" else None
    except (rexc.RequestException, ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        found = body.get("code")
        error = body.get("error")
        if found is None and isinstance(error, dict):
            found = error.get("code")
        elif found is None and isinstance(error, str):
            found = error
        if isinstance(found, str) and _CODE_RE.match(found):
            code = found
    return StreamStatusError(
        response.status_code, url=url, code=code or _FALLBACK_CODES.get(response.status_code)
    )


def _get(
    session: requests.Session,
    url: str,
    offset: str,
    headers: dict[str, str],
    timeout: Timeout,
) -> requests.Response:
    try:
        return session.get(
            url,
            params={"offset": offset},
            headers=headers,
            timeout=timeout,
            stream=True,
            allow_redirects=True,
        )
    except rexc.RequestException as exc:
        raise _translate(exc, url, reading_body=False) from exc


def _read_body(
    response: requests.Response, budget: int, *, url: str, offset: str, max_bytes: int
) -> bytes:
    def too_big(size: int) -> OversizedMessage:
        return OversizedMessage(
            f"catch-up read of {redact_url(url)} exceeded max_bytes={max_bytes}",
            offset=offset,
            size=size,
        )

    if getattr(response, "_content_consumed", False):  # cached, or already read by a layer
        body = response.content or b""
        if len(body) > budget:
            raise too_big(max_bytes - budget + len(body))
        return body
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and "Content-Encoding" not in response.headers and int(length) > budget:
        raise too_big(max_bytes - budget + int(length))
    parts: list[bytes] = []
    size = 0
    try:
        for piece in response.iter_content(_READ_CHUNK):
            size += len(piece)
            if size > budget:
                raise too_big(max_bytes - budget + size)
            parts.append(piece)
    except rexc.RequestException as exc:
        raise _translate(exc, url, reading_body=True) from exc
    return b"".join(parts)


def _decode(body: bytes, content_type: str, *, offset: str) -> list[Any]:
    if not body.strip():
        return []
    if content_type and "json" not in content_type.lower():
        raise InvalidMessage(
            "the response's content type is not JSON; read_stream decodes "
            "application/json streams only",
            offset=offset,
            size=len(body),
        )
    try:
        decoded = json.loads(body)
    except RecursionError:
        raise MalformedMessage(
            "catch-up chunk is nested too deeply to decode", offset=offset, size=len(body)
        ) from None
    except ValueError as exc:
        raise MalformedMessage(
            f"catch-up chunk is not valid JSON ({type(exc).__name__})",
            offset=offset,
            size=len(body),
        ) from exc
    if not isinstance(decoded, list):
        raise InvalidMessage(
            f"catch-up chunk is a JSON {type(decoded).__name__}, expected an array of messages",
            offset=offset,
            size=len(body),
        )
    return decoded


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def _reached(offset: str, until: str | None) -> bool:
    return until is not None and offset not in _SENTINELS and offset >= until


# ------------------------------------------------------------------------ public


def read_stream(
    url: str,
    offset: str = "-1",
    *,
    until: str | None = None,
    headers: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ReadResult:
    """Read a stream's messages from ``offset`` with catch-up ``GET`` requests.

    Follows ``Stream-Next-Offset`` until the server says the stream is up to
    date or closed, or until ``next_offset >= until`` (offsets sort as
    strings). Uses ``session`` if given (for example a
    :func:`pullwake.cache.cached_session`), else a new ``requests.Session()``
    closed before returning, which goes through the process-wide fetch cache
    when one is installed.

    Args:
        url: the stream URL, e.g. ``http://host/v1/stream/events/a``.
        offset: ``"-1"`` (the beginning), ``"now"`` (the tail: no messages,
            just its offset) or an offset from an earlier ``next_offset``.
        until: stop once ``next_offset >= until``. Reads cannot be bounded on
            the server, so the last chunk may include messages past it.
        headers: extra request headers (credentials, for example).
        session: the ``requests.Session`` to use.
        timeout: ``(connect, read)`` seconds, one number for both, or
            ``None`` for no timeout.
        max_bytes: the most decoded body bytes this call accepts.

    Raises:
        ConfigError: a bad argument (offset, until, url, headers, ...).
        ConnectError, ConnectTimeout, IdleTimeout, ProtocolError: transport.
        StreamStatusError: any status but 200/204 (``status``, ``code``).
        MalformedMessage, InvalidMessage: a chunk that is not a JSON array.
        OversizedMessage: more than ``max_bytes`` were read.
    """
    url = _check_url(url)
    current = _check_offset(offset, "offset")
    if until is not None and _check_offset(until, "until") in _SENTINELS:
        raise ConfigError("until must be an offset token, not '-1' or 'now'")
    request_headers = _check_headers(headers)
    checked_timeout = _check_timeout(timeout)
    limit = _check_max_bytes(max_bytes)
    # Not isinstance(requests.Session): that name is rebound by cache layers, so a
    # session made before an install would fail it. Every session has this base.
    if session is not None and not isinstance(session, requests.sessions.SessionRedirectMixin):
        raise ConfigError("session must be a requests.Session")
    if _reached(current, until):
        return ReadResult(messages=(), next_offset=current, up_to_date=False, closed=False)

    own = session is None
    active = requests.Session() if session is None else session
    try:
        return _read(active, url, current, until, request_headers, checked_timeout, limit)
    finally:
        if own:
            active.close()


def _read(
    session: requests.Session,
    url: str,
    current: str,
    until: str | None,
    headers: dict[str, str],
    timeout: Timeout,
    max_bytes: int,
) -> ReadResult:
    messages: list[Any] = []
    total = responses = cached = 0
    up_to_date = closed = False
    while True:
        response = _get(session, url, current, headers, timeout)
        try:
            responses += 1
            from_cache = bool(getattr(response, "from_cache", False))
            cached += from_cache
            if response.status_code not in (200, 204):
                raise _status_error(response, url)
            next_offset = response.headers.get("Stream-Next-Offset")
            if next_offset is None:
                raise ProtocolError("response has no Stream-Next-Offset header", url=url)
            if not _OFFSET_RE.match(next_offset) or next_offset in _SENTINELS:
                raise ProtocolError("response has an invalid Stream-Next-Offset header", url=url)
            body = _read_body(
                response, max_bytes - total, url=url, offset=current, max_bytes=max_bytes
            )
            batch = _decode(body, response.headers.get("Content-Type", ""), offset=current)
            closed = _is_true(response.headers.get("Stream-Closed"))
            # A cached chunk says what was true when it was stored: never "up to date".
            up_to_date = not from_cache and _is_true(response.headers.get("Stream-Up-To-Date"))
        finally:
            response.close()
        total += len(body)
        messages.extend(batch)
        if current not in _SENTINELS and next_offset < current:
            raise ProtocolError("Stream-Next-Offset moved backwards", url=url)
        advanced = next_offset != current
        current = next_offset
        if closed or up_to_date or _reached(current, until):
            break
        if not advanced:
            raise ProtocolError(
                "the server did not say up to date, yet Stream-Next-Offset did not move", url=url
            )
    return ReadResult(
        messages=tuple(messages),
        next_offset=current,
        up_to_date=up_to_date,
        closed=closed,
        responses=responses,
        cached_responses=cached,
        bytes_read=total,
    )
