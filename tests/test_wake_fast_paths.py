"""The wake stream's fast paths give exactly what the general paths give.

From the SSE bytes of the wake stream to the ``WAKE`` a wake becomes, each
per-item shortcut is compared with the path it short-cuts, on the same
inputs, observing everything that path makes observable:

- the SSE parser's LF-only chunks (``_whole_lines``: field rules and dispatch
  inline) against the general line scanner, events *and* parser state after
  every feed;
- the read core's common SSE events (``_sse_events``: a JSON array data event,
  a JSON object control event) against :meth:`ReadCore._sse_event` event by
  event: the events, the error raised, and the core's state after;
- the consumer taking a piece's items as one list (``next_items``) against
  the consumer loop as it was, item by item (``isinstance`` chain,
  ``ticket.current`` after each item).

No sockets here (the transport's lists are exercised end to end by
tests/test_transport.py and test_hostile.py); Hypothesis draws the inputs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sse import _LINES, _AlwaysGeneral, split_at

from pullwake.errors import (
    MalformedMessage,
    MessageError,
    OffsetsWentBack,
    OversizedMessage,
    ProtocolError,
    PullwakeError,
    TransportError,
)
from pullwake.io.clock import LoopClock
from pullwake.io.http import HttpClient
from pullwake.io.transport import BadMessage, Checkpoint, Message
from pullwake.protocol.framing import Rejected, frame_sse_data
from pullwake.protocol.jsontext import loads_or_none, small_array
from pullwake.protocol.read import Batch, ReadCore, valid_offset
from pullwake.protocol.sse import Oversized, SSEEvent, SSEParser
from pullwake.runtime.config import RunnerConfig
from pullwake.runtime.control import WakeEvent
from pullwake.runtime.health import Stats
from pullwake.runtime.logs import LabelledLog
from pullwake.runtime.wakestream import WakeStreamSession

pytestmark = pytest.mark.timeout(60)


def _typed(value: Any) -> Any:
    """A value with its exact types spelled out (1, 1.0 and True differ; NaN is itself)."""
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, dict):
        return (type(value).__name__, [(k, _typed(v)) for k, v in value.items()])
    if isinstance(value, float) and value != value:
        return ("float", "nan")
    if isinstance(value, Rejected):
        return ("rejected", type(value.error).__name__, str(value.error),
                getattr(value.error, "size", None), value.damaged)
    return (type(value).__name__, value)


# ======================================================= the SSE parser


def _parser_state(parser: SSEParser) -> dict[str, Any]:
    return {k: (bytes(v) if isinstance(v, bytearray) else list(v) if isinstance(v, list) else v)
            for k, v in vars(parser).items()}


@settings(max_examples=400, deadline=None, database=None)
@given(lines=st.lists(_LINES, max_size=30), eols=st.data(),
       limit=st.sampled_from([16, 64, 4096]))
def test_lf_chunks_leave_the_parser_as_the_general_path_does(
        lines: list[bytes], eols: st.DataObject, limit: int) -> None:
    """Not only the same events: the same state after every feed (the data held,
    its size, the event name, the ids), so what follows reads the same too."""
    raw = b"".join(line + eols.draw(st.sampled_from([b"\n", b"\n", b"\n", b"\n\n", b"\r\n"]))
                   for line in lines)
    cuts = eols.draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=12))
    fast, general = SSEParser(max_event_bytes=limit), _AlwaysGeneral(max_event_bytes=limit)
    for piece in split_at(raw, cuts):
        assert fast.feed(piece) == general.feed(piece)
        assert _parser_state(fast) == _parser_state(general)
        assert fast.pending == general.pending


@pytest.mark.parametrize("raw", [
    b"id: 7\ndata: x\n\n",
    b'event: data\ndata: [1]\n\nevent: control\nid: 8\ndata: {"streamNextOffset":"0_1"}\n\n',
    b"data: a\ndata: b\n\ndata: c\nid: 9\n",
    b"event: control\n\nid: a\x00b\ndata\n: c\n\n\n\nretry: 1\ndata:  d\n\n",
])
def test_lf_chunks_of_wake_stream_shapes_leave_the_general_state(raw: bytes) -> None:
    """Shapes the wake stream sends, whole and cut at each line end."""
    ends = [i + 1 for i, b in enumerate(raw) if b == 0x0A]
    for cut in [len(raw), *ends]:
        fast, general = SSEParser(max_event_bytes=64), _AlwaysGeneral(max_event_bytes=64)
        for piece in (raw[:cut], raw[cut:]):
            assert fast.feed(piece) == general.feed(piece)
            assert _parser_state(fast) == _parser_state(general)


# ======================================================= the read core's SSE events

_OFFSETS = ["0_1", "0_2", "0_3", "0_0", "-1", "now", "a,b", "x" * 257, "\u00e9", ""]


@st.composite
def _control_texts(draw: st.DrawFn) -> str:
    import json

    ctl: dict[str, Any] = {}
    for key, values in (
            ("streamNextOffset", st.sampled_from([*_OFFSETS, 5, None, True])),
            ("streamCursor", st.sampled_from(["c1", "", 7, None, "c2"])),
            ("streamClosed", st.sampled_from([True, False, 1, "true", None])),
            ("upToDate", st.sampled_from([True, False, 1, "true", None]))):
        if draw(st.booleans()):
            ctl[key] = draw(values)
    text = json.dumps(ctl, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    return draw(st.sampled_from([text, text, text, " " + text, "[" + text + "]", text + "x",
                                 "not json", "null", "\ufeff" + text]))


_DATA_TEXTS = st.sampled_from(['[{"type":"wake","stream":"a"}]', "[1,2.0,true,null]", "[]",
                               ' [1]', "[1] ", '{"a":1}', "1", "[1,", "", "[\"\u00e9\u00e9\"]",
                               "[" + "1," * 30 + "1]", "W10=", "\ufeff[1]",
                               '["' + "\u00e9" * 9 + '"]', '["' + "\u20ac" * 7 + '"]',
                               '["' + "\u00e9" * 19 + '"]'])


@st.composite
def _sse_items(draw: st.DrawFn) -> Any:
    what = draw(st.sampled_from(["data", "control", "message", "other", "oversized"]))
    if what == "oversized":
        return Oversized(draw(st.sampled_from(["data", "control", "message"])), 99, 50)
    text = draw(_control_texts()) if what == "control" else draw(_DATA_TEXTS)
    return SSEEvent(what, text, draw(st.sampled_from([None, "7"])))


def _core(limit: int, kind: Any, base64: bool, offset: str) -> ReadCore:
    core = ReadCore(offset=offset, live="sse", kind="json", max_message_bytes=limit)
    core.request()
    core.head(200, {"Content-Type": "text/event-stream",
                    "stream-sse-data-encoding": "base64" if base64 else ""})
    core.kind = kind
    return core


def _reference_sse_event(core: ReadCore, ev: Any) -> list[Any]:
    """ReadCore._sse_event as it read before the fast path (dict.get, valid_offset)."""
    if isinstance(ev, Oversized):
        if ev.event == "control":
            raise ProtocolError("SSE control event exceeds the size limit", url=core.url)
        core._pending.append(Rejected(OversizedMessage(
            f"SSE {ev.event} event of {ev.size} bytes exceeds the {ev.limit}-byte limit",
            size=ev.size)))
        return []
    if ev.event == "data":
        values = None if core._base64 or core.kind not in (None, "json") else \
            small_array(ev.data, core.max_message_bytes)
        core._pending.extend(values if values is not None else frame_sse_data(
            ev.data, core.kind or "json", base64=core._base64, limit=core.max_message_bytes))
        return []
    if ev.event != "control":
        return []
    ctl = loads_or_none(ev.data)
    if not isinstance(ctl, dict):
        return [Rejected(MalformedMessage("SSE control event is not a JSON object"))]
    nxt = ctl.get("streamNextOffset")
    if not valid_offset(nxt):
        raise ProtocolError("SSE control event without a valid streamNextOffset", url=core.url)
    if core.offset not in ("-1", "now") and nxt < core.offset:
        raise OffsetsWentBack("SSE streamNextOffset moved backwards", url=core.url)
    out: list[Any] = []
    if core._pending:
        out.append(Batch(core._pending, core.offset, nxt, 0))
        core._pending = []
    cursor = ctl.get("streamCursor")
    core.cursor = cursor if isinstance(cursor, str) and cursor else core.cursor
    core.closed = ctl.get("streamClosed") is True
    core.up_to_date = core.closed or ctl.get("upToDate") is True
    core.offset = nxt
    out.append(Checkpoint(nxt, core.cursor, core.up_to_date, core.closed))
    if core.closed:
        core.done = True
    return out


def _decided(core: ReadCore, events: list[Any], path: str) -> Any:
    out: list[Any] = []
    raised = None
    try:
        if path == "fast":
            out = core._sse_events(events)
        else:
            for ev in events:
                out.extend(core._sse_event(ev) if path == "general"
                           else _reference_sse_event(core, ev))
    except PullwakeError as exc:
        raised = (type(exc).__name__, str(exc))
    shown = [("batch", _typed(e.values), e.start, e.offset, e.first) if isinstance(e, Batch)
             else ("checkpoint", e.next_offset, e.cursor, e.up_to_date, e.closed, e.status)
             if isinstance(e, Checkpoint) else _typed(e) for e in out]
    state = (core.offset, core.cursor, core.closed, core.up_to_date, core.done,
             _typed(core._pending))
    return (shown if raised is None else None), raised, state


@settings(max_examples=600, deadline=None, database=None)
@given(events=st.lists(_sse_items(), max_size=8),
       limit=st.sampled_from([8, 24, 40, 1 << 20]),
       kind=st.sampled_from([None, "json", "json", "text", "bytes"]),
       base64=st.sampled_from([False, False, True]),
       offset=st.sampled_from(["-1", "now", "0_1", "0_2"]))
def test_common_sse_events_are_decided_as_sse_event_decides_them(
        events: list[Any], limit: int, kind: Any, base64: bool, offset: str) -> None:
    """The inline decisions against ``_sse_event`` now, and as it read before."""
    fast = _decided(_core(limit, kind, base64, offset), events, "fast")
    assert fast == _decided(_core(limit, kind, base64, offset), events, "general")
    assert fast == _decided(_core(limit, kind, base64, offset), events, "reference")


def test_the_wake_streams_events_take_the_fast_path() -> None:
    """The events a wake stream sends are the ones decided inline (no _sse_event)."""
    core = _core(1 << 20, "json", False, "-1")
    core._sse_event = None  # type: ignore[assignment,method-assign]
    out = core._sse_events([
        SSEEvent("data", '[{"type":"wake","stream":"s","subscription_id":"x"}]'),
        SSEEvent("control", '{"streamNextOffset":"0_1","streamCursor":"c","upToDate":true}')])
    assert [type(e) for e in out] == [Batch, Checkpoint]
    assert out[1] == Checkpoint("0_1", "c", True, False)


# ======================================================= the consumer


@dataclass(frozen=True, slots=True)
class _SubMessage(Message):
    pass


@dataclass(frozen=True, slots=True)
class _SubCheckpoint(Checkpoint):
    pass


class _Ticket:
    """The consumer's side of a WorkTicket: reports recorded; stale after ``stale_after``."""

    def __init__(self, stream: Any, stale_after: int | None) -> None:
        self.payload = {"stream": stream}
        self.reports: list[tuple[str, Any]] = []
        self.cancelled = False
        self._stale_after = stale_after

    @property
    def current(self) -> bool:
        return not self.cancelled

    def report(self, event: str, **payload: Any) -> bool:
        if self.cancelled:
            return False
        shown = {k: (v.raw if isinstance(v, WakeEvent) else
                     (type(v).__name__, str(v)) if isinstance(v, BaseException) else v)
                 for k, v in payload.items()}
        self.reports.append((event, shown))
        if self._stale_after is not None and len(self.reports) >= self._stale_after:
            self.cancelled = True
        return True


class _Owner:
    def __init__(self) -> None:
        self.errors: list[Any] = []

    def report(self, error: object, *, where: str = "runner", quiet: bool = False) -> None:
        self.errors.append((type(error).__name__, str(error), where))

    def activity(self) -> None:
        pass


class _Listed:
    """A stream that hands over its items a list at a time (as the built-in one does)."""

    def __init__(self, items: list[Any], cuts: list[int], fail: bool) -> None:
        self._pieces = [p for p in split_at(items, cuts) if p]  # type: ignore[arg-type]
        self._fail = fail
        self.closed = False

    async def next_items(self) -> list[Any]:
        if self._pieces:
            return self._pieces.pop(0)
        if self._fail:
            raise RuntimeError("cut")
        return []

    def close(self) -> None:
        self.closed = True


class _Iterated:
    """The same items, only iterable (a custom stream factory's stream)."""

    def __init__(self, items: list[Any], fail: bool) -> None:
        self._items = items
        self._fail = fail
        self.closed = False

    async def __aiter__(self) -> Any:
        for item in self._items:
            yield item
        if self._fail:
            raise RuntimeError("cut")

    def close(self) -> None:
        self.closed = True


def _session(owner: _Owner, offset: str | None) -> WakeStreamSession:
    config = RunnerConfig(base_url="http://127.0.0.1:9", runner_id="r1", offset=offset)
    clock = LoopClock()
    http = HttpClient(headers={}, clock=clock, request_timeout=5.0)
    return WakeStreamSession(owner, config, http=http, clock=clock, stats=Stats(),
                             log=LabelledLog(logging.getLogger("t"), "t"), recreate=None)


async def _reference_consume(session: WakeStreamSession, ticket: Any) -> None:
    """WakeStreamSession.consume as it read before its fast path (item by item)."""
    stream = ticket.payload["stream"]
    error: BaseException | None = None
    closed = False
    try:
        async for item in stream:
            if isinstance(item, Message):
                session.messages_read += 1
                try:
                    wake = WakeEvent.parse(item.value)
                except MessageError as exc:
                    session._reject(exc)
                else:
                    if wake is not None:
                        ticket.report("WAKE", wake=wake)
            elif isinstance(item, Checkpoint):
                if session.offset is not None and item.next_offset < session.offset:
                    raise OffsetsWentBack(f"offsets went back to {item.next_offset}",
                                          url=session.config.wake_stream_url)
                if item.cursor:
                    session._cursor = item.cursor
                if item.next_offset != session.offset:
                    ticket.report("OFFSET", offset=item.next_offset)
                if item.closed:
                    closed = True
                    break
            elif isinstance(item, BadMessage):
                session._reject(item.error)
            if not ticket.current:
                return
    except OffsetsWentBack as exc:
        session._stream_went_back()
        error = exc
    except PullwakeError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - as the consumer does
        error = TransportError(session._http.scrub(
            f"wake stream raised {type(exc).__name__}: {exc}"))
    finally:
        stream.close()
    if closed:
        ticket.report("STREAM_CLOSED")
    else:
        ticket.report("STREAM_END", error=error)


_ITEMS = st.sampled_from([
    Message({"type": "wake", "stream": "a", "subscription_id": "s1"}),
    Message({"type": "wake", "stream": ""}), Message({"type": "other"}), Message([1]),
    _SubMessage({"type": "wake", "stream": "b"}),
    Checkpoint("0_1"), Checkpoint("0_2", cursor="c2"), Checkpoint("0_2"), Checkpoint("0_0"),
    Checkpoint("0_3", up_to_date=True), Checkpoint("0_4", closed=True),
    _SubCheckpoint("0_5", cursor="c5"),
    BadMessage(MalformedMessage("not JSON")), "not an item",
])


@settings(max_examples=400, deadline=None, database=None)
@given(items=st.lists(_ITEMS, max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=12), max_size=5),
       stale_after=st.none() | st.integers(min_value=1, max_value=6),
       fail=st.booleans(), offset=st.sampled_from([None, "0_1"]))
def test_the_consumer_reads_lists_as_the_item_by_item_loop_did(
        items: list[Any], cuts: list[int], stale_after: int | None, fail: bool,
        offset: str | None) -> None:
    async def run(make: Any, consume: Any) -> Any:
        owner = _Owner()
        session = _session(owner, offset)
        stream = make()
        ticket = _Ticket(stream, stale_after)
        await consume(session, ticket)
        return (ticket.reports, owner.errors, session.offset, session._cursor,
                session.messages_read, session._stats.messages_rejected, stream.closed)

    async def both() -> list[Any]:
        return [await run(lambda: _Listed(items, cuts, fail), WakeStreamSession.consume),
                await run(lambda: _Iterated(items, fail), WakeStreamSession.consume),
                await run(lambda: _Iterated(items, fail), _reference_consume)]

    listed, iterated, reference = asyncio.run(both())
    assert listed == reference
    assert iterated == reference


# ======================================================= the transport's lists

_WAKE = {"type": "wake", "stream": "s1", "subscription_id": "sub"}


async def _read(url: str, live: str, how: str) -> list[Any]:
    """Everything one session of the built-in stream gives (``how``: ``lists`` through
    ``next_items``, ``iter`` item by item), and the error that ended it."""
    import aiohttp

    from pullwake.io.transport import StreamRequest, aiohttp_stream_factory

    async with aiohttp.ClientSession() as session:
        factory = aiohttp_stream_factory(lambda: session, LoopClock())
        stream: Any = await factory(StreamRequest(url=url, offset="-1", live=live,
                                                  read_idle_timeout=5.0))
        got: list[Any] = []
        try:
            if how == "lists":
                while items := await stream.next_items():
                    assert items  # never an empty list before the end
                    got.append(list(items))
                got.append(await stream.next_items())  # over: stays over
            else:
                async for item in stream:
                    got.append([item])
                got.append([])
        except PullwakeError as exc:
            got.append(("raised", type(exc).__name__, str(exc).replace(url, "<url>")))
        finally:
            stream.close()
    return got


def _flat(got: list[Any]) -> list[Any]:
    return [x for part in got for x in (part if isinstance(part, list) else [part])]


def _sse_routes(requests: list[Any]) -> Any:
    from aiohttp import web

    async def wake(request: web.Request) -> web.StreamResponse:
        requests.append(dict(request.query))
        if len(requests) > 1:
            return web.Response(status=404)  # a second request in the session is a bug
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"event: data\ndata: [" + json.dumps(_WAKE).encode() + b"]\n\n"
                         b'event: control\ndata: {"streamNextOffset":"0_1"}\n\n')
        await resp.write(b'event: control\ndata: {"streamNextOffset":"0_1","upToDate":true}\n\n')
        await resp.write_eof()
        return resp

    return {("GET", "/wake"): wake}


@pytest.mark.parametrize("how", ["lists", "iter"])
async def test_an_sse_answer_the_server_ends_ends_the_session(how: str) -> None:
    """Its items, then nothing more: the runner reconnects (one request per session)."""
    from runner_helpers import raw_server

    requests: list[Any] = []
    async with raw_server(_sse_routes(requests)) as base:
        got = await _read(base + "/wake", "sse", how)
    assert _flat(got) == [Message(_WAKE), Checkpoint("0_1"), Checkpoint("0_1", up_to_date=True)]
    assert requests == [{"offset": "-1", "live": "sse"}]


def _long_poll_routes(requests: list[Any], damaged: bool) -> Any:
    from aiohttp import web

    answers = [  # (body, headers): a catch-up read, then long-polls until closed
        (json.dumps([_WAKE]), {"Stream-Next-Offset": "0_1", "Stream-Up-To-Date": "true"}),
        ('[{"type":"other"},{"bad":tru}]' if damaged else json.dumps([_WAKE, _WAKE]),
         {"Stream-Next-Offset": "0_2"}),
        ("[]", {"Stream-Next-Offset": "0_2", "Stream-Closed": "true"}),
    ]

    async def wake(request: web.Request) -> web.Response:
        requests.append(dict(request.query))
        body, headers = answers[min(len(requests), len(answers)) - 1]
        return web.Response(body=body.encode(), headers={
            "Content-Type": "application/json", **headers})

    return {("GET", "/wake"): wake}


@pytest.mark.parametrize("damaged", [False, True])
async def test_long_poll_answers_chain_into_lists_as_into_items(damaged: bool) -> None:
    """The same items either way; a damaged value hands out the values before it
    first, then ends the session (read once more from the last good offset)."""
    from runner_helpers import raw_server

    results = []
    for how in ("lists", "iter"):
        requests: list[Any] = []
        async with raw_server(_long_poll_routes(requests, damaged)) as base:
            got = await _read(base + "/wake", "long-poll", how)
        results.append((_flat(got), requests))
    assert results[0] == results[1]
    items, requests = results[0]
    if damaged:
        assert items == [Message(_WAKE), Checkpoint("0_1", up_to_date=True),
                         Message({"type": "other"}),
                         ("raised", "ProtocolError", items[-1][2])]
        assert "damaged answer" in items[-1][2]
        assert len(requests) == 2
    else:
        assert items == [Message(_WAKE), Checkpoint("0_1", up_to_date=True), Message(_WAKE),
                         Message(_WAKE), Checkpoint("0_2"),
                         Checkpoint("0_2", up_to_date=True, closed=True), ]
        assert [r.get("live") for r in requests] == [None, "long-poll", "long-poll"]


# ======================================================= WakeEvent.parse


@pytest.mark.parametrize("value", [
    {"type": "wake", "stream": "s", "subscription_id": "sub", "generation": 3, "ts": 17},
    {"type": "wake", "stream": "s"},
    {"type": "wake", "stream": "s", "generation": 0, "ts": None, "extra": [1]},
])
def test_wake_event_parse_builds_what_the_keywords_build(value: dict[str, Any]) -> None:
    """parse builds its WakeEvent positionally (once a wake): field for field the
    keyword construction."""
    wake = WakeEvent.parse(value)
    assert wake == WakeEvent(stream=value["stream"], subscription_id=value.get("subscription_id"),
                             generation=value.get("generation"), ts=value.get("ts"), raw=value)
    assert wake is not None and wake.raw is value
