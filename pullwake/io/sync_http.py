"""The ``requests`` boundary: its exceptions mapped to pullwake's, a body read as it arrives.

This module is the one place where ``requests`` (and urllib3) exceptions
become :mod:`pullwake.errors`, raised ``from`` the original, as
:mod:`pullwake.io.http` is for aiohttp (:func:`translate_exception`), and it
reads a body piece by piece without waiting for a full chunk
(:func:`body_pieces`; its failures are marked transport failures, which
:func:`pullwake.protocol.calls.transient` retries). The sync read
shell, :mod:`pullwake.io.reader`, drives a read through it. No retry decisions
(the shell's, under :class:`~pullwake.protocol.RetryPolicy`) and no protocol
rules (:class:`~pullwake.protocol.ReadCore`'s) live here.
"""

from __future__ import annotations

from collections.abc import Iterator

import requests
import requests.exceptions as rexc
import urllib3.exceptions as uexc
from urllib3.exceptions import ReadTimeoutError

from pullwake.errors import (
    ConfigError,
    ConnectError,
    ConnectTimeout,
    IdleTimeout,
    ProtocolError,
    PullwakeError,
    TransportError,
    redact_url,
)
from pullwake.protocol.calls import mark_transport

__all__ = ["body_pieces", "translate_exception"]

_READ_CHUNK = 256 * 1024


def translate_exception(exc: BaseException, url: str, *, reading_body: bool) -> PullwakeError:
    """Map one ``requests`` / urllib3 exception to pullwake's tree (the only such mapping)."""
    if isinstance(exc, rexc.ConnectTimeout):
        return ConnectTimeout("no response headers within the connect timeout", url=url)
    if isinstance(exc, (rexc.ReadTimeout, ReadTimeoutError)) or (
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
    if isinstance(exc, (rexc.ChunkedEncodingError, rexc.ContentDecodingError, uexc.DecodeError,
                        uexc.ProtocolError)):
        return ProtocolError(f"response body truncated or corrupt ({type(exc).__name__})", url=url)
    if isinstance(exc, rexc.TooManyRedirects):
        return ProtocolError("too many redirects", url=url)
    if isinstance(exc, rexc.ConnectionError) or (
            isinstance(exc, OSError) and not isinstance(exc, rexc.RequestException)):
        if reading_body:
            return ProtocolError("connection lost while reading the response body", url=url)
        return ConnectError(f"cannot connect ({type(exc).__name__})", url=url)
    return TransportError(f"request failed ({type(exc).__name__})", url=url)


def body_pieces(response: requests.Response, *, url: str) -> Iterator[bytes]:
    """The body as it arrives (``read1``: whatever is there, never waiting for a full chunk)."""
    if getattr(response, "_content_consumed", False):  # cached, or already read by a layer
        if response.content:
            yield response.content
        return
    raw = response.raw
    read = getattr(raw, "read1", None)
    while True:
        try:
            piece = (read(_READ_CHUNK, decode_content=True) if read is not None
                     else raw.read(_READ_CHUNK, decode_content=True))
        except (uexc.HTTPError, rexc.RequestException, OSError) as exc:
            wrapped: BaseException = exc
            if isinstance(exc, uexc.ProtocolError):
                wrapped = rexc.ChunkedEncodingError(exc)
            elif isinstance(exc, uexc.DecodeError):
                wrapped = rexc.ContentDecodingError(exc)
            elif isinstance(exc, ReadTimeoutError):
                wrapped = rexc.ConnectionError(exc)
            raise mark_transport(translate_exception(wrapped, url, reading_body=True)
                                 ) from wrapped
        if not piece:
            return
        yield piece
