"""The Durable Streams read protocol, sans I/O: one set of rules for every read.

This package owns how pullwake reads a stream, and does no I/O (no aiohttp,
no requests, no asyncio): the async shells (:mod:`pullwake.io.transport` for the
wake stream, :mod:`pullwake.io.areader` for handlers and scripts) and the sync
shell (:mod:`pullwake.io.reader`, requests) only move bytes through it, so their
rules cannot drift.

- :mod:`.read` — :class:`ReadCore`: requests (offset, ``-1``/``now``, live
  mode, cursor echo, ``If-None-Match``), answers (status to typed error or
  retry, ``Stream-Next-Offset``, ``Stream-Up-To-Date``, ``Stream-Closed``,
  ``Stream-Cursor``, ``ETag``/304), SSE ``data``/``control`` events.
- :mod:`.framing` — bodies by content type: JSON arrays into messages (a limit
  per message, never per answer), ``text/*`` into text, anything else into
  bytes, base64 SSE data (§5.8).
- :mod:`.sse` — the incremental SSE parser (linear in the bytes fed).
- :mod:`.jsontext` — a whole JSON text decoded exactly as ``json.loads`` does,
  by its C scanner alone (an SSE event's data).
- :mod:`.items` — :class:`Item`, :class:`Chunk`, :class:`ReadResult`.
- :mod:`.retry` — :class:`RetryPolicy`: what is transient, how long to wait.
- :mod:`.answers` — control-plane answers listing streams, read item by item
  (bounded per item; a small answer decoded at once).
- :mod:`.claims` — :class:`~.claims.Claim`: the claim answer's wire shape,
  read type by type.
- :mod:`.calls` — what the sync and async read functions share: their
  argument checks, the core built from them, and :class:`~.calls.Collector`
  (events into a :class:`ReadResult`).
"""

from pullwake.protocol.framing import Kind, Rejected, kind_of
from pullwake.protocol.items import Assembler, Chunk, Item, ReadResult
from pullwake.protocol.read import (
    Batch,
    Checkpoint,
    Head,
    Live,
    ReadCore,
    Request,
    check_offset,
    valid_offset,
)
from pullwake.protocol.retry import DEFAULT_RETRY, NO_RETRY, Retrying, RetryPolicy

__all__ = [
    "DEFAULT_RETRY",
    "NO_RETRY",
    "Assembler",
    "Batch",
    "Checkpoint",
    "Chunk",
    "Head",
    "Item",
    "Kind",
    "Live",
    "ReadCore",
    "ReadResult",
    "Rejected",
    "Request",
    "RetryPolicy",
    "Retrying",
    "check_offset",
    "kind_of",
    "valid_offset",
]
