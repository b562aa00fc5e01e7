"""HTTP plumbing shared by the embedded server's routes (aiohttp, no state).

This module owns how :mod:`pullwake.testing.server` writes an answer: the
headers the reference server puts on every response (CORS, ``nosniff``),
plain, text and JSON answers (:func:`respond`, :func:`text_answer`,
:func:`json_answer`), SSE ``data:`` framing (:func:`encode_sse_data`), which
``Content-Encoding`` a client accepts, what passes for a media type, and
cutting a connection on purpose (:func:`abort`, :class:`Dropped`). It holds no
state and decides nothing about streams, subscriptions or faults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from aiohttp import web

from pullwake.testing._streams import js_stringify

__all__ = ["BASE_HEADERS", "Dropped", "abort", "encode_sse_data", "json_answer",
           "looks_like_media_type", "pick_encoding", "respond", "text_answer"]

BASE_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": (
        "content-type, authorization, Stream-Seq, Stream-TTL, Stream-Expires-At, "
        "Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, Stream-Forked-From, "
        "Stream-Fork-Offset, Stream-Fork-Sub-Offset"
    ),
    "Access-Control-Expose-Headers": (
        "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, "
        "Producer-Epoch, Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, "
        "etag, content-type, content-encoding, vary"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
}


class Dropped(Exception):
    """The connection was closed on purpose; nothing more is written."""


def respond(status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
            ) -> web.Response:
    merged = dict(BASE_HEADERS)
    if headers:
        merged.update(headers)
    return web.Response(status=status, body=body or None, headers=merged)


def text_answer(status: int, text: str, headers: Mapping[str, str] | None = None
                ) -> web.Response:
    return respond(status, text.encode(), {"Content-Type": "text/plain", **(headers or {})})


def json_answer(status: int, body: Any) -> web.Response:
    if status == 204:
        return respond(204)
    return respond(status, js_stringify(body if body is not None else {}).encode(),
                   {"Content-Type": "application/json"})


def abort(request: web.Request) -> NoReturn:
    """Cut the connection under ``request`` (no answer, no FIN), then unwind the handler."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise Dropped()


def encode_sse_data(payload: str) -> str:
    """server.ts ``encodeSSEData``: one ``data:`` line (no space) per payload line."""
    lines = payload.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(f"data:{line}" for line in lines) + "\n\n"


def looks_like_media_type(value: str) -> bool:
    main = value.split(";", 1)[0].strip()
    kind, _, sub = main.partition("/")
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    return bool(kind) and bool(sub) and set(kind) <= ok and sub[:1] in ok


def pick_encoding(accept: str) -> str | None:
    names = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    if "gzip" in names:
        return "gzip"
    if "deflate" in names:
        return "deflate"
    return None
