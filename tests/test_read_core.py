"""The sans-I/O read core (pullwake.protocol) on plain bytes: no sockets, no event loop.

Covers request building (offsets, live modes, cursor echo, If-None-Match),
answer interpretation (statuses, offsets, closure, 304), framing by content
type (JSON arrays with a limit per message, text, bytes, base64 SSE), the
linear SSE parser, retries and the lack-of-progress window.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest

from pullwake.errors import (
    ConfigError,
    InvalidMessage,
    MalformedMessage,
    OversizedMessage,
    ProtocolError,
)
from pullwake.protocol import (
    Assembler,
    Batch,
    Checkpoint,
    ReadCore,
    Rejected,
    RetryPolicy,
    kind_of,
)
from pullwake.protocol.framing import BodyFramer, decode_json_array, frame_sse_data
from pullwake.protocol.read import PROGRESS_BYTES, ProgressWindow
from pullwake.protocol.sse import SSEParser

pytestmark = pytest.mark.timeout(30)

OK = {"Content-Type": "application/json", "Stream-Next-Offset": "0_2",
      "Stream-Up-To-Date": "true"}


def values(events: list[Any]) -> list[Any]:
    return [v for e in events if isinstance(e, Batch) for v in e.values]


def feed_all(core: ReadCore, status: int, headers: dict[str, str], body: bytes,
             piece: int = 7) -> list[Any]:
    head = core.head(status, headers)
    assert head.ok
    out: list[Any] = []
    for i in range(0, len(body), piece):
        out += core.feed(body[i:i + piece])
    return out + core.end()


# ---------------------------------------------------------------- requests


def test_a_catch_up_request_carries_only_the_offset() -> None:
    req = ReadCore(offset="-1").request()
    assert req.params == (("offset", "-1"),) and req.headers == ()
    assert req.url("http://h/s") == "http://h/s?offset=-1"
    assert req.url("http://h/s?x=1") == "http://h/s?x=1&offset=-1"


def test_a_live_read_catches_up_first_then_goes_live_and_echoes_the_cursor() -> None:
    core = ReadCore(offset="-1", live="long-poll")
    assert core.request().params == (("offset", "-1"),)  # catch up (and learn the type) first
    feed_all(core, 200, {"Content-Type": "text/plain", "Stream-Next-Offset": "0_5",
                         "Stream-Up-To-Date": "true", "Stream-Cursor": "c1"}, b"")
    req = core.request()
    assert req.params == (("offset", "0_5"), ("live", "long-poll"), ("cursor", "c1"))
    feed_all(core, 204, {"Stream-Next-Offset": "0_5", "Stream-Up-To-Date": "true",
                         "Stream-Cursor": "c2"}, b"")
    assert core.request().params[-1] == ("cursor", "c2")
    assert not core.done


def test_a_long_poll_from_now_waits_at_once_and_a_204_says_so() -> None:
    """PROTOCOL.md §8: offset=now with long-poll starts waiting with no round trip."""
    core = ReadCore(offset="now", live="long-poll")
    assert core.request().params == (("offset", "now"), ("live", "long-poll"))
    out = feed_all(core, 204, {"Stream-Next-Offset": "0_7", "Stream-Up-To-Date": "true",
                               "Stream-Cursor": "c"}, b"")
    assert out == [Checkpoint("0_7", "c", True, False, 204)]
    out = feed_all(core, 200, {"Content-Type": "text/plain", "Stream-Next-Offset": "0_9",
                               "Stream-Cursor": "d"}, b"new")
    assert values(out) == ["new"] and core.kind == "text"


def test_sse_with_a_known_kind_goes_live_at_once_with_accept() -> None:
    req = ReadCore(offset="0_1", live="sse", kind="json", cursor="c").request()
    assert req.params == (("offset", "0_1"), ("live", "sse"), ("cursor", "c"))
    assert ("Accept", "text/event-stream") in req.headers


@pytest.mark.parametrize("bad", ["", "a b", "a&live=sse", "x" * 300, None, 5, "0_1\n", "0_1\r\n"])
def test_hostile_offsets_are_config_errors(bad: Any) -> None:
    with pytest.raises(ConfigError):
        ReadCore(offset=bad)


def test_extra_params_cannot_override_the_protocols() -> None:
    with pytest.raises(ConfigError, match="offset"):
        ReadCore(extra_params=(("offset", "x"),))
    req = ReadCore(extra_params=(("tenant", "t1"),)).request()
    assert req.params == (("offset", "-1"), ("tenant", "t1"))


def test_etag_is_sent_back_and_a_304_means_nothing_new() -> None:
    core = ReadCore(use_etag=True, live="catch-up")
    feed_all(core, 200, {**OK, "ETag": '"e1"', "Stream-Up-To-Date": "false"}, b"[1]")
    core2 = ReadCore(offset="-1", use_etag=True)
    core2.etag = '"e1"'
    assert ("If-None-Match", '"e1"') in core2.request().headers
    out = feed_all(core2, 304, {"ETag": '"e1"'}, b"")
    assert values(out) == [] and core2.done and core2.offset == "-1"


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize(("status", "transient"), [(500, True), (503, True), (429, True),
                                                   (400, False), (404, False), (409, False),
                                                   (410, False), (301, False)])
def test_statuses_are_transient_or_final(status: int, transient: bool) -> None:
    core = ReadCore()
    core.request()
    head = core.head(status, {"Retry-After": "2"})
    assert not head.ok and head.transient is transient
    assert head.retry_after == (2.0 if transient else None)


def test_status_errors_carry_the_servers_code_scrubbed_or_a_fallback() -> None:
    core = ReadCore(url="http://u:pw@h/s?token=t0k3n")
    err = core.status_error(409, b'{"error": {"code": "STREAM_CLOSED"}}')
    assert (err.status, err.code) == (409, "STREAM_CLOSED")
    assert core.status_error(404, b"Stream not found").code == "STREAM_NOT_FOUND"
    assert core.status_error(410, b"").code == "OFFSET_GONE"
    echoed = core.status_error(400, b'{"code": "s3cr3t-value"}', ("s3cr3t-value",))
    assert echoed.code == "***" and "pw" not in str(echoed) and "t0k3n" not in str(echoed)


def test_closed_ends_the_read_in_every_mode() -> None:
    for live in ("catch-up", "long-poll"):
        core = ReadCore(live=live)  # type: ignore[arg-type]
        core.request()
        out = feed_all(core, 200, {**OK, "Stream-Closed": "true"}, b"[1]")
        assert out[-1] == Checkpoint("0_2", None, True, True) and core.done
    core = ReadCore(live="sse", kind="json")
    core.request()
    core.head(200, {"Content-Type": "text/event-stream"})
    out = core.feed(b'event: control\ndata: {"streamNextOffset":"0_3","streamClosed":true}\n\n')
    assert out == [Checkpoint("0_3", None, True, True)] and core.done


def test_up_to_date_ends_catch_up_and_until_stops_early() -> None:
    core = ReadCore(until="0_2")
    core.request()
    feed_all(core, 200, {**OK, "Stream-Up-To-Date": "false"}, b"[1]")
    assert core.done and core.offset == "0_2"
    assert ReadCore(offset="0_3", until="0_2").done


@pytest.mark.parametrize(("headers", "match"), [
    ({"Content-Type": "application/json"}, "no Stream-Next-Offset"),
    ({"Stream-Next-Offset": "0_1&live=sse"}, "invalid Stream-Next-Offset"),
    ({"Stream-Next-Offset": "now"}, "invalid Stream-Next-Offset")])
def test_a_bad_next_offset_is_a_protocol_error(headers: dict[str, str], match: str) -> None:
    core = ReadCore()
    core.request()
    core.head(200, headers)
    with pytest.raises(ProtocolError, match=match):
        core.end()


def test_an_offset_moving_backwards_or_standing_still_is_a_protocol_error() -> None:
    core = ReadCore(offset="0_5")
    core.request()
    core.head(200, {**OK, "Stream-Up-To-Date": "false"})
    with pytest.raises(ProtocolError, match="backwards"):
        core.end()
    core = ReadCore(offset="0_2")
    core.request()
    core.head(200, {**OK, "Stream-Up-To-Date": "false"})
    with pytest.raises(ProtocolError, match="did not move"):
        core.end()


def test_a_retried_answer_never_repeats_what_was_delivered() -> None:
    core = ReadCore(max_message_bytes=8)
    core.request()
    core.head(200, OK)
    first = values(core.feed(b"[1, 2, 3, 4, 5, 6, 7"))  # past the limit: streamed
    assert first[:3] == [1, 2, 3]
    core.broken()  # the connection dropped here
    core.request()
    again = feed_all(core, 200, OK, b"[1, 2, 3, 4, 5, 6, 7, 8]")
    assert first + values(again) == [1, 2, 3, 4, 5, 6, 7, 8]


# ---------------------------------------------------------------- framing


@pytest.mark.parametrize(("ctype", "kind"), [
    ("application/json", "json"), ("application/json; charset=utf-8", "json"),
    ("application/vnd.x+json", "json"), ("text/plain", "text"), ("TEXT/CSV", "text"),
    ("application/octet-stream", "bytes"), ("image/png", "bytes"), (None, "bytes")])
def test_the_content_type_picks_the_framing(ctype: str | None, kind: str) -> None:
    assert kind_of(ctype) == kind


def test_a_big_json_body_in_pieces_frames_like_one_loads() -> None:
    rng = random.Random(7)
    msgs = [{"i": i, "s": "x" * rng.randrange(0, 300), "q": '"\\]}[{,'} for i in range(400)]
    body = json.dumps(msgs).encode()
    for piece in (1, 3, 64, 4096):
        framer = BodyFramer("json", 1024)  # much smaller than the body
        out: list[Any] = []
        for i in range(0, len(body), piece):
            out += framer.feed(body[i:i + piece])
        assert out + framer.finish() == msgs


def test_the_limit_is_per_message_and_costs_nothing_under_it() -> None:
    big = {"pad": "y" * 5000}
    body = json.dumps([1, big, {"ok": True}, [big], 2]).encode()
    out = decode_json_array(body, 1000)
    assert out[0] == 1 and out[2] == {"ok": True} and out[4] == 2
    assert isinstance(out[1], Rejected) and isinstance(out[1].error, OversizedMessage)
    assert isinstance(out[3], Rejected) and not out[3].damaged
    assert decode_json_array(body, len(body)) == json.loads(body)


def test_a_backlog_of_20_mb_streams_with_memory_bounded_per_message() -> None:
    msg = json.dumps({"pad": "z" * (100 * 1024)})
    framer = BodyFramer("json", 1024 * 1024)
    n = 0
    chunk = ("[" + ",".join([msg] * 10) + ",").encode()
    sizes = []
    for i in range(20):
        out = framer.feed(chunk[1:] if i else chunk)
        n += len(out)
        sizes.append(len(framer._text))
    out = framer.feed(msg.encode() + b"]")
    n += len(out) + len(framer.finish())
    assert n == 201 and max(sizes) <= 1024 * 1024


def test_poison_elements_are_rejected_one_by_one_and_the_rest_kept() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    body = f'[1, {deep}, {{"a": 2}}, tru, 3]'.encode()
    out = decode_json_array(body, 10_000_000)
    assert out[0] == 1 and out[2] == {"a": 2} and out[4] == 3
    assert isinstance(out[1], Rejected) and "deeply" in str(out[1].error)
    assert not out[1].damaged
    assert isinstance(out[3], Rejected) and isinstance(out[3].error, MalformedMessage)


@pytest.mark.parametrize(("body", "error"), [
    (b"[1, 2", MalformedMessage), (b'[{"a": "b', MalformedMessage),
    (b'{"a": 1}', InvalidMessage), (b"\xff\xfe garbage", MalformedMessage),
    (b"[1] [2]", MalformedMessage)])
def test_a_body_that_cannot_be_framed_is_one_damaged_rejection(body: bytes,
                                                               error: type) -> None:
    out = decode_json_array(body, 100)
    rejected = [v for v in out if isinstance(v, Rejected)]
    assert rejected and isinstance(rejected[-1].error, error) and rejected[-1].damaged


def test_text_and_bytes_bodies_are_one_item_each_with_a_size_bound() -> None:
    framer = BodyFramer("text", 10)
    assert framer.feed("héllo".encode()) == [] and framer.finish() == ["héllo"]
    framer = BodyFramer("bytes", 4)
    framer.feed(b"\x00\x01")
    framer.feed(b"\x02\x03\x04")
    [rejected] = framer.finish()
    assert isinstance(rejected, Rejected) and isinstance(rejected.error, OversizedMessage)
    assert BodyFramer("bytes", 4).finish() == []


def test_sse_data_by_kind_base64_split_over_lines_and_multi_line_text() -> None:
    raw = bytes(range(256)) * 3
    b64 = base64.b64encode(raw).decode()
    split = "\n".join(b64[i:i + 50] for i in range(0, len(b64), 50))
    assert frame_sse_data(split, "bytes", base64=True, limit=10_000) == [raw]
    assert frame_sse_data("", "bytes", base64=True, limit=10) == [b""]
    [bad] = frame_sse_data("not*base64", "bytes", base64=True, limit=100)
    assert isinstance(bad, Rejected)
    assert frame_sse_data("line 1\nline 2", "text", base64=False, limit=100) == ["line 1\nline 2"]
    assert frame_sse_data('[\n{"k":"v"},\n{"k":"w"}\n]', "json", base64=False,
                          limit=100) == [{"k": "v"}, {"k": "w"}]


def test_an_sse_answer_holds_data_until_its_control_event() -> None:
    core = ReadCore(live="sse", kind="bytes", offset="0_1")
    core.request()
    core.head(200, {"Content-Type": "text/event-stream", "stream-sse-data-encoding": "base64"})
    b64 = base64.b64encode(b"\x00binary\xff").decode()
    assert core.feed(f"event: data\ndata: {b64[:4]}\ndata: {b64[4:]}\n\n".encode()) == []
    out = core.feed(b'event: control\ndata: {"streamNextOffset":"0_2","streamCursor":"c",'
                    b'"upToDate":true}\n\n')
    assert out == [Batch([b"\x00binary\xff"], "0_1", "0_2", 0),
                   Checkpoint("0_2", "c", True, False)]
    chunk = Assembler().add(out[0]) or Assembler().add(out[1])
    assert chunk is not None


def test_an_sse_control_event_that_is_not_json_is_rejected_and_a_bad_offset_raises() -> None:
    core = ReadCore(live="sse", kind="text")
    core.request()
    core.head(200, {"Content-Type": "text/event-stream"})
    [rejected] = core.feed(b"event: control\ndata: {oops\n\n")
    assert isinstance(rejected, Rejected)
    with pytest.raises(ProtocolError, match="streamNextOffset"):
        core.feed(b'event: control\ndata: {"streamNextOffset": "a b"}\n\n')


# ---------------------------------------------------------------- SSE parser cost


def test_a_flood_of_newlines_is_linear_and_yields_nothing() -> None:
    """8 MiB of newlines (what 8 KiB of gzip inflates to) in one chunk: one regex scan."""
    parser = SSEParser(1024)
    assert parser.feed(b"\n" * (8 * 1024 * 1024)) == []
    assert parser.feed(b"\r\n" * (1024 * 1024)) == []
    assert not parser.pending


def test_many_events_in_one_chunk_all_come_out() -> None:
    parser = SSEParser(1024)
    events = parser.feed(b"data: x\n\n" * 200_000)
    assert len(events) == 200_000 and events[-1].data == "x"


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    parser = SSEParser(1024)
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []
    [ev] = parser.feed(b"\r\n")
    assert ev.data == "a"


# ---------------------------------------------------------------- retry and progress


def test_retries_are_bounded_and_honour_retry_after() -> None:
    retrying = RetryPolicy(attempts=3, initial_s=1, factor=2, cap_s=10).start(rng=lambda: 1.0)
    assert retrying.delay() == 1.0
    assert retrying.delay(retry_after=7.0) == 7.0
    assert retrying.delay() is None  # the third failure: give up
    retrying = RetryPolicy(max_retry_after_s=5).start()
    assert retrying.delay(retry_after=60) is None
    for bad in ({"attempts": 0}, {"initial_s": 0}, {"initial_s": -1}, {"factor": 0.5},
                {"initial_s": 2, "cap_s": 1}, {"cap_s": float("inf")}):
        with pytest.raises(ConfigError):
            RetryPolicy(**bad)  # type: ignore[arg-type]


def test_a_trickle_is_stalled_but_silence_and_steady_progress_are_not() -> None:
    w = ProgressWindow(2.0)
    assert not w.update(0.0, 1, False)  # first byte of a unit starts the window
    assert not w.update(1.0, 1, False)
    assert w.update(2.5, 1, False)  # 3 bytes in 2.5 s: a drip
    w = ProgressWindow(2.0)
    w.update(0.0, 1, True)  # a completed unit resets; silence then is not counted
    assert not w.update(100.0, 10, False)
    assert not w.update(101.0, PROGRESS_BYTES, False)  # steady progress
    assert not w.update(102.9, PROGRESS_BYTES, False)
    assert not ProgressWindow(None).update(1e9, 1, False)


@pytest.mark.parametrize("tail", ["\n", "\r\n", "\n\n"])
def test_a_line_break_after_an_offset_or_a_code_is_not_accepted(tail: str) -> None:
    """The patterns match the whole value (``$`` alone would let a final line feed by)."""
    from pullwake.errors import ConfigError as _ConfigError
    from pullwake.io.fetchcache import FetchCache
    from pullwake.protocol.read import check_offset, error_code, valid_offset
    from pullwake.testing._streams import OFFSET_RE

    assert valid_offset("0_1") and not valid_offset("0_1" + tail)
    assert check_offset("0_1") == "0_1"
    with pytest.raises(_ConfigError):
        check_offset("0_1" + tail)
    assert error_code({"code": "NOT_FOUND"}) == "NOT_FOUND"
    assert error_code({"code": "NOT_FOUND" + tail}) is None
    assert OFFSET_RE.match("1_2") and not OFFSET_RE.match("1_2" + tail)  # the embedded server
    FetchCache(auth_headers=("Authorization",))
    with pytest.raises(_ConfigError):
        FetchCache(auth_headers=("Authorization" + tail,))
