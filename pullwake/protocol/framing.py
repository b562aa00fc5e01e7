"""Framing a read's body by the stream's content type (no I/O).

Owns how the bytes of one answer (a catch-up or long-poll body, or one SSE
``data`` event) become values:

- ``application/json`` (and ``+json``): the body is a JSON array; each element
  is one message. Bodies are fed in pieces as they arrive, so an answer of
  any size is framed with memory bounded by ``max_message_bytes`` plus one
  network read: the limit is **per message**, never per answer (issue 14,
  class 1). A body no larger than the limit is decoded by one ``json.loads``
  (no message can exceed it: the check costs nothing per message); a larger
  one is walked with the C scanner, whose end positions give each message's
  size (never a re-serialisation).
- ``text/*``: the body is one ``str`` value (UTF-8).
- anything else: the body is one ``bytes`` value.

A value that cannot be used is not an exception here: it is a
:class:`Rejected` entry carrying a :class:`~pullwake.errors.MessageError`
(malformed, nested too deeply, oversized, or a body that is not a JSON array
at all), so each consumer decides: the wake stream skips it with a record,
``wake.items()`` hands it over for the handler to skip, ``read_stream`` raises
it. Framing never stalls: every byte is looked at a bounded number of times.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pullwake.errors import InvalidMessage, MalformedMessage, MessageError, OversizedMessage

__all__ = ["BodyFramer", "Kind", "Rejected", "frame_sse_data", "kind_of"]

Kind = Literal["json", "text", "bytes"]

_WS = re.compile(r"[ \t\n\r]*")
#: Structural characters while skipping a value we cannot decode.
_SKIP_OUT = re.compile(r'[\[\]{},"]')
_SKIP_IN = re.compile(r'["\\]')
_SCAN: Any = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=256)
def kind_of(content_type: str | None) -> Kind:
    """How a stream of this content type is framed (PROTOCOL.md §5.8's split).

    Remembered: a stream's type repeats on every answer.
    """
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype == "application/json" or ctype.endswith("+json"):
        return "json"
    if ctype.startswith("text/"):
        return "text"
    return "bytes"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A value that could not be framed or decoded: skip it, or raise ``error``.

    ``damaged`` marks what transport damage could explain (text that is not
    JSON, a body cut short): a live reader may read it once more before it
    skips it. Oversized and too-deeply-nested values are poison for certain.
    """

    error: MessageError
    damaged: bool = False


class BodyFramer:
    """Feed the bytes of one answer; get values (or :class:`Rejected`) back.

    ``feed()`` returns what the bytes so far complete; ``finish()`` what the
    end of the body completes. Text and bytes bodies are one value each,
    returned by ``finish()`` (their size is bounded by ``max_message_bytes``
    too: past it the body is a :class:`Rejected` oversized value).
    """

    __slots__ = ("_buf", "_decoder", "_kind", "_limit", "_pos", "_size", "_skip",
                 "_state", "_streaming", "_text")

    def __init__(self, kind: Kind, max_message_bytes: int) -> None:
        self._kind = kind
        self._limit = max_message_bytes
        self._buf: list[bytes] = []
        self._size = 0
        self._streaming = False  # JSON: past the limit, walking values as they come
        self._decoder: Any = None
        self._text = ""
        self._pos = 0
        self._state = "start"  # start, first, value, after, done
        self._skip: _Skip | None = None

    def feed(self, data: bytes) -> list[Any]:
        if not data:
            return []
        self._size += len(data)
        if self._kind != "json":
            if self._size <= self._limit:
                self._buf.append(data)
            else:
                self._buf.clear()
            return []
        if not self._streaming:
            self._buf.append(data)
            if self._size <= self._limit:
                return []
            self._streaming = True
            self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            data = b"".join(self._buf)
            self._buf.clear()
        return self._walk(self._decoder.decode(data), final=False)

    def finish(self) -> list[Any]:
        """The values the end of the body completes (a cut body is Rejected)."""
        if self._kind != "json":
            if self._size > self._limit:
                return [Rejected(OversizedMessage(
                    f"{self._kind} chunk of {self._size} bytes exceeds the "
                    f"{self._limit}-byte limit", size=self._size))]
            if not self._size:
                return []
            body = b"".join(self._buf)
            self._buf.clear()
            return [body.decode("utf-8", errors="replace") if self._kind == "text" else body]
        if not self._streaming:
            body = b"".join(self._buf)
            self._buf.clear()
            return decode_json_array(body, self._limit)
        return self._walk(self._decoder.decode(b"", True), final=True)

    # ------------------------------------------------------------ JSON walk

    def _walk(self, more: str, *, final: bool) -> list[Any]:
        out: list[Any] = []
        text = self._text[self._pos:] + more if self._pos else self._text + more
        pos = 0
        if self._skip is not None:
            pos = self._skip.run(text, 0)
            if pos < 0:
                self._text, self._pos = "", 0
                if final:
                    out.append(self._skip.rejected(truncated=True))
                    self._skip = None
                return out
            out.append(self._skip.rejected(truncated=False))
            self._skip = None
            self._state = "after"
        n = len(text)
        while True:
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                break
            c = text[pos]
            state = self._state
            if state == "done":
                out.append(_damaged("data after the end of the JSON array"))
                pos = n
                break
            if state == "start":
                if c != "[":
                    out.append(_not_an_array(text, pos))
                    self._state = "done"
                    pos = n
                    break
                self._state, pos = "first", pos + 1
                continue
            if state == "after":
                if c == ",":
                    self._state, pos = "value", pos + 1
                    continue
                if c == "]":
                    self._state, pos = "done", pos + 1
                    continue
                out.append(_damaged("expected ',' or ']' between messages"))
                self._state = "value"  # resynchronise: treat what follows as a value
            if state == "first" and c == "]":
                self._state, pos = "done", pos + 1
                continue
            # a value starts at pos
            try:
                value, end = _SCAN(text, pos)
            except (ValueError, StopIteration, RecursionError) as exc:
                if not final and not isinstance(exc, RecursionError) and n - pos <= self._limit:
                    break  # probably cut by the network read: wait for more
                skip = _Skip(self._limit, reason=exc)
                end = skip.run(text, pos)
                if end < 0:
                    if final:
                        out.append(skip.rejected(truncated=True))
                        self._state = "done"
                        pos = n
                        break
                    self._skip = skip
                    pos = n
                    break
                out.append(skip.rejected(truncated=False))
                self._state, pos = "after", end
                continue
            if end - pos > self._limit:
                out.append(Rejected(_oversized(end - pos, self._limit)))
            else:
                out.append(value)
            self._state, pos = "after", end
        if final and self._state != "done":
            out.append(_damaged("the JSON array is cut short (no ']')"))
            self._state = "done"
        self._text, self._pos = text, pos
        if pos >= n:
            self._text, self._pos = "", 0
        return out


def _damaged(problem: str) -> Rejected:
    return Rejected(MalformedMessage(problem), damaged=True)


def _not_an_array(text: str, pos: int) -> Rejected:
    try:
        value, _ = _SCAN(text, pos)
    except (ValueError, StopIteration, RecursionError):
        return Rejected(MalformedMessage("the body is not JSON"), damaged=True)
    return Rejected(InvalidMessage(f"the body is a JSON {type(value).__name__}, "
                                   "not an array of messages"), damaged=True)


def _oversized(size: int, limit: int) -> OversizedMessage:
    return OversizedMessage(f"message of {size} bytes exceeds the {limit}-byte limit",
                            size=size)


class _Skip:
    """Find the end of one JSON value we cannot decode, across feeds, in linear time."""

    __slots__ = ("depth", "escape", "in_string", "limit", "reason", "seen", "started")

    def __init__(self, limit: int, *, reason: BaseException) -> None:
        self.limit = limit
        self.reason = reason
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.seen = 0
        self.started = False

    def run(self, text: str, pos: int) -> int:
        """The index just past the value, or -1 if ``text`` ends inside it."""
        start, n = pos, len(text)
        if self.escape and pos < n:
            self.escape, pos = False, pos + 1
        while pos < n:
            if self.in_string:
                m = _SKIP_IN.search(text, pos)
                if m is None:
                    pos = n
                    break
                if m.group() == "\\":
                    if m.end() >= n:
                        self.escape, pos = True, n
                        break
                    pos = m.end() + 1
                    continue
                self.in_string, pos = False, m.end()
                if self.depth == 0:
                    self.seen += pos - start
                    return pos
                continue
            m = _SKIP_OUT.search(text, pos)
            if m is None:
                pos = n
                break
            c = m.group()
            if c == '"':
                self.in_string, pos = True, m.end()
            elif c in "[{":
                self.depth, pos = self.depth + 1, m.end()
            elif c in "]}":
                if self.depth == 0:
                    if c == "]":  # the enclosing array ends: the value ended before
                        self.seen += m.start() - start
                        return m.start()
                    pos = m.end()  # a stray '}' is part of the damage (else no progress)
                    continue
                self.depth, pos = self.depth - 1, m.end()
                if self.depth == 0:
                    self.seen += pos - start
                    return pos
            else:  # ","
                if self.depth == 0:
                    self.seen += m.start() - start
                    return m.start()
                pos = m.end()
        self.seen += n - start
        return -1

    def rejected(self, *, truncated: bool) -> Rejected:
        if self.seen > self.limit:
            return Rejected(_oversized(self.seen, self.limit))
        if truncated:
            return _damaged("the JSON array is cut short inside a message")
        if isinstance(self.reason, RecursionError):
            return Rejected(MalformedMessage("message is nested too deeply to decode",
                                             size=self.seen))
        return Rejected(MalformedMessage(
            f"message is not valid JSON ({type(self.reason).__name__})", size=self.seen),
            damaged=True)


def decode_json_array(body: bytes, limit: int, *, scan: bool = True) -> list[Any]:
    """Frame a whole JSON-array body. One ``json.loads`` when it is within ``limit``.

    ``scan``: first, if the body is exactly one array (from its first byte to
    its last, in what ``json.loads`` reads as UTF-8), decode it with the C
    scanner ``json.loads`` ends in, alone; anything else (whitespace around it,
    other encodings, invalid JSON) goes the general way, so results and
    rejections are ``json.loads``'s (``scan=False``: the general way only).
    """
    if not body.strip():
        return []
    if len(body) <= limit:
        if scan and body[:1] == b"[" and body[1:2] != b"\x00":
            try:
                text = body.decode("utf-8", "surrogatepass")
                value, end = _SCAN(text, 0)
            except (ValueError, StopIteration, RecursionError):
                pass
            else:
                if end == len(text):
                    return value  # type: ignore[no-any-return]
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            pass  # find which message is bad: walk it value by value below
        else:
            if isinstance(value, list):
                return value
            return [Rejected(InvalidMessage(
                f"the body is a JSON {type(value).__name__}, not an array of messages",
                size=len(body)), damaged=True)]
    framer = BodyFramer("json", limit)
    framer._streaming = True
    framer._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return framer._walk(framer._decoder.decode(body, True), final=True)


def frame_sse_data(data: str, kind: Kind, *, base64: bool, limit: int) -> list[Any]:
    """The values of one SSE ``data`` event (lines already joined with ``\\n``)."""
    if base64:
        import binascii

        text = data.replace("\n", "").replace("\r", "")
        try:
            raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
        except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
            return [Rejected(MalformedMessage(
                f"SSE data event is not valid base64 ({type(exc).__name__})",
                size=len(data)), damaged=True)]
        if kind == "text":
            return [raw.decode("utf-8", errors="replace")]
        if kind == "json":
            return decode_json_array(raw, limit)
        return [raw]
    if kind == "json":
        return decode_json_array(data.encode("utf-8"), limit)
    if kind == "text":
        return [data]
    return [data.encode("utf-8")]
