"""Reading response bodies with bounds: size, and lack of progress (never total duration).

This module owns how an aiohttp answer's body is read for pullwake:

- :func:`read_bounded` reads a whole body up to a byte limit, each chunk
  within ``idle`` seconds of the last (a slow link that keeps delivering
  finishes; a stalled one fails);
- :class:`BodyReader` hands a body to an incremental parser as a file-like
  ``await read(n)``, bounding one *item* (not the whole answer).

What is already buffered is taken without arming a timer: a small answer
arrives with its head, so reading it costs no deadline. Errors are raised
as pullwake's own (:class:`~pullwake.errors.ProtocolError`,
:class:`~pullwake.errors.AnswerTooLarge`); aiohttp's exceptions are mapped by
:func:`pullwake.io.http.translate`, around the request.
"""

from __future__ import annotations

import aiohttp

from pullwake.errors import AnswerTooLarge, ProtocolError
from pullwake.io.clock import Clock, deadline

__all__ = ["BodyReader", "read_bounded"]


async def _chunk(resp: aiohttp.ClientResponse, idle: float | None, clock: Clock | None,
                 n: int = -1) -> bytes:
    """The next piece of the body (``n`` bytes at most), waiting ``idle`` at most.

    What is already buffered (a small answer arrives with its head) is taken
    at once, with no timer armed: only a read that has to wait is bounded.
    """
    content = resp.content
    data = content.read_nowait(n)
    if data or content.is_eof():
        return data
    if idle is None or clock is None:
        return await (content.readany() if n < 0 else content.read(n))
    with deadline(clock, idle):
        return await (content.readany() if n < 0 else content.read(n))


async def read_bounded(resp: aiohttp.ClientResponse, limit: int, *, idle: float | None = None,
                       clock: Clock | None = None) -> bytes:
    """Read a whole body, failing with ProtocolError once it passes ``limit`` bytes.

    With ``idle`` (and ``clock``), each chunk must arrive within ``idle``
    seconds of the previous one: progress, not the total duration, is bounded.
    """
    length = resp.content_length
    if length is not None and length > limit:
        raise ProtocolError(f"response body of {length} bytes exceeds the "
                            f"{limit}-byte limit", url=str(resp.url))
    if (idle is None and length is not None
            and "Content-Encoding" not in resp.headers
            and not resp.headers.get("Transfer-Encoding")):
        return await resp.read()  # exact length known, no decompression: bounded already
    # Count while reading, each chunk within ``idle`` of the last. A small
    # answer is one chunk (returned as it is); only several chunks are joined.
    # (what is buffered, taken inline: once a request; a body still to come is
    # read by the loop below, each chunk within ``idle``)
    content = resp.content
    body = content.read_nowait()
    if len(body) <= limit and content.at_eof():
        return body  # the whole body came with the head: no further read
    more: list[bytes] = []
    size = len(body)
    while True:
        if size > limit:
            raise ProtocolError(f"response body exceeds the {limit}-byte limit",
                                url=str(resp.url))
        chunk = await _chunk(resp, idle, clock)
        if not chunk:
            return b"".join((body, *more)) if more else body
        more.append(chunk)
        size += len(chunk)


class BodyReader:
    """A response body as a file-like ``await read(n)``, for incremental parsers.

    Each read waits at most ``idle`` seconds for progress. The body may be of
    any length; what is bounded is one *item*: more than ``item_limit`` bytes
    read since the parser last called :meth:`mark` (an item was complete)
    raises :class:`~pullwake.errors.AnswerTooLarge` (memory held for one item:
    at most ``item_limit`` plus one read).
    """

    def __init__(self, resp: aiohttp.ClientResponse, *, idle: float | None, clock: Clock | None,
                 item_limit: int, operation: str) -> None:
        self._resp = resp
        self._idle = idle
        self._clock = clock
        self.item_limit = item_limit
        self._operation = operation
        self._unread = b""  # taken by small_body() from the buffer, not yet handed out
        self.since_mark = 0
        self.total = 0

    def mark(self) -> None:
        """One item is complete: the per-item count starts again."""
        self.since_mark = 0

    async def read(self, n: int = -1) -> bytes:
        if n == 0:  # a parser probing the type of the stream
            return b""
        # Checked before reading more: the parser marks an item only after it
        # parsed the chunk that completed it, so one read ahead is allowed for.
        if self.since_mark > self.item_limit:
            raise AnswerTooLarge(
                f"one item of the answer is larger than {self.item_limit} bytes",
                operation=self._operation, limit=self.item_limit, status=self._resp.status,
                url=str(self._resp.url))
        data = self._unread
        if data:
            self._unread = b""
            if 0 < n < len(data):
                data, self._unread = data[:n], data[n:]
        else:
            data = await _chunk(self._resp, self._idle, self._clock, n if n > 0 else -1)
        self.since_mark += len(data)
        self.total += len(data)
        return data

    async def small_body(self) -> bytes | None:
        """The whole body if it is known to be no larger than one item, else None.

        Known: its ``Content-Length`` says so (it is read whole), or all of it
        is already buffered (a small chunked answer arrives with its head).
        No item of such a body can exceed ``item_limit``, so a parser may
        decode it in one go: the per-item bound holds at no cost per item.
        Call it before any :meth:`read`; after None, :meth:`read` hands out
        the body from its start.
        """
        if self.total or self._unread:
            return None
        resp = self._resp
        length = resp.content_length
        if length is not None and length <= self.item_limit \
                and "Content-Encoding" not in resp.headers:  # else the decoded size is unknown
            body = await self.read()
            while True:
                more = await self.read()
                if not more:
                    return body
                body += more  # rare: the answer arrived in pieces
        content = resp.content
        data = content.read_nowait()
        # at_eof, not is_eof: reading the buffer may resume the parser, which
        # can buffer more of the body (and its end) before read_nowait returns.
        if content.at_eof() and len(data) <= self.item_limit:
            self.total += len(data)
            return data
        self._unread = data
        return None
