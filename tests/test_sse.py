"""The incremental SSE parser (pullwake.protocol.sse) on raw bytes: no sockets, no event loop.

Covers the WHATWG event-stream framing pullwake relies on: LF / CR / CRLF line
ends (CRLF split across chunks), comments, multi-line ``data:``, ``data:`` with
and without the space, a leading BOM, ``id`` / ``retry`` / unknown fields, the
size bound (an oversized event is dropped, reported once, and the parser
recovers), bounded memory on a line that never ends, and ``pending``.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pullwake.protocol.sse import Oversized, SSEEvent, SSEParser

pytestmark = pytest.mark.timeout(30)

BOM = b"\xef\xbb\xbf"

#: One stream exercising every framing rule at once.
SAMPLE = (
    BOM
    + b"event: control\r\n"
    + b": a comment line\r\n"
    + b'data:{"streamNextOffset":"0_1","upToDate":true}\r\n'
    + b"\r\n"
    + b"event: data\n"
    + b"id: 7\n"
    + b"retry: 1500\n"
    + b"data: [1,\n"
    + b"data:2]\n"
    + b"\n"
    + b"event: data\r"
    + b"data: caf\xc3\xa9 \xe2\x9c\x93\r"
    + b"unknown: ignored\r"
    + b"\r"
    + b":keep-alive\n\n"
    + b"data\n"
    + b"data:\n"
    + b"\n"
    + b"event: control\r\n"
    + b"data:  two spaces\r\n\r\n"
)

SAMPLE_EVENTS = [
    SSEEvent("control", '{"streamNextOffset":"0_1","upToDate":true}', None),
    SSEEvent("data", "[1,\n2]", "7"),
    SSEEvent("data", "café ✓", "7"),
    SSEEvent("message", "\n", "7"),
    SSEEvent("control", " two spaces", "7"),
]


def feed_all(parser: SSEParser, chunks: list[bytes]) -> list[SSEEvent | Oversized]:
    out: list[SSEEvent | Oversized] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# ------------------------------------------------------------------ line endings


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"], ids=["LF", "CR", "CRLF"])
def test_each_line_ending_frames_events(eol: bytes) -> None:
    raw = eol.join([b"event: data", b"data: a", b"data: b", b"", b"data: c", b"", b""])
    assert feed_all(SSEParser(), [raw]) == [SSEEvent("data", "a\nb"), SSEEvent("message", "c")]


def test_mixed_line_endings_in_one_stream() -> None:
    raw = b"data: a\rdata: b\ndata: c\r\n\r\ndata: d\n\r"
    assert feed_all(SSEParser(), [raw]) == [SSEEvent("message", "a\nb\nc"),
                                            SSEEvent("message", "d")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == [SSEEvent("message", "a")]  # "\r\n" then a bare "\r"
    assert parser.feed(b"\ndata: b\r") == []  # this LF completes the previous CR: no extra line
    assert parser.feed(b"\n\r\n") == [SSEEvent("message", "b")]
    assert not parser.pending


def test_cr_then_lf_in_separate_feeds_does_not_make_a_blank_line() -> None:
    # If the LF after a split CR counted as its own (blank) line, "a" would be
    # dispatched before "b" was added to it.
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"data: b\n\n") == [SSEEvent("message", "a\nb")]


# ---------------------------------------------------------------- fields and data


def test_comments_are_skipped() -> None:
    raw = b": hello\n:\ndata: x\n: inside an event\n\n: trailing\n"
    assert feed_all(SSEParser(), [raw]) == [SSEEvent("message", "x")]


def test_multi_line_data_joins_with_newline() -> None:
    raw = b"event: data\ndata: [\ndata: 1\ndata: ]\n\n"
    assert feed_all(SSEParser(), [raw]) == [SSEEvent("data", "[\n1\n]")]


@pytest.mark.parametrize(
    ("line", "value"),
    [(b"data:x", "x"), (b"data: x", "x"), (b"data:  x", " x"), (b"data", ""), (b"data:", ""),
     (b"data: ", "")],
    ids=["no-space", "one-space", "two-spaces", "bare-field", "empty", "space-only"],
)
def test_data_with_and_without_space(line: bytes, value: str) -> None:
    assert feed_all(SSEParser(), [line + b"\n\n"]) == [SSEEvent("message", value)]


def test_leading_bom_is_stripped_once() -> None:
    assert feed_all(SSEParser(), [BOM + b"data: x\n\n"]) == [SSEEvent("message", "x")]
    # A BOM later in the stream is content, not a marker.
    parser = SSEParser()
    parser.feed(b"data: x\n\n")
    assert parser.feed(BOM + b"data: y\n\n") == []  # field name "\ufeffdata" is unknown


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_bom_split_across_chunks_is_still_stripped(cut: int) -> None:
    raw = BOM + b"data: x\n\n"
    assert feed_all(SSEParser(), [raw[:cut], raw[cut:]]) == [SSEEvent("message", "x")]


def test_bytes_that_only_look_like_a_bom_prefix_are_kept() -> None:
    parser = SSEParser()
    assert parser.feed(b"\xef") == []
    assert parser.pending  # undecided bytes are buffered, not lost
    assert parser.feed(b"X: y\ndata: z\n\n") == [SSEEvent("message", "z")]


def test_id_retry_and_unknown_fields_do_not_make_events() -> None:
    raw = b"id: 1\nretry: 10\nfoo: bar\n\nid: 2\ndata: x\n\n"
    events = feed_all(SSEParser(), [raw])
    assert events == [SSEEvent("message", "x", "2")]


def test_last_event_id_persists_and_nul_ids_are_ignored() -> None:
    raw = b"id: a\ndata: 1\n\ndata: 2\n\nid: b\x00c\ndata: 3\n\nid\ndata: 4\n\n"
    events = feed_all(SSEParser(), [raw])
    assert [e.id for e in events] == ["a", "a", "a", ""]


def test_event_name_resets_after_each_event() -> None:
    raw = b"event: control\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n"
    assert [e.event for e in feed_all(SSEParser(), [raw])] == ["control", "message", "message"]


def test_event_without_data_is_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: control\n\n") == []
    assert parser.feed(b"data: x\n\n") == [SSEEvent("message", "x")]  # no stale event name


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert feed_all(SSEParser(), [b"data: \xff\xfe\n\n"]) == [SSEEvent("message", "\ufffd\ufffd")]


def test_utf8_character_split_across_chunks() -> None:
    raw = "data: é✓\n\n".encode()
    for cut in range(1, len(raw)):
        assert feed_all(SSEParser(), [raw[:cut], raw[cut:]]) == [SSEEvent("message", "é✓")]


# ------------------------------------------------------------ byte-split property


def test_sample_stream_whole() -> None:
    parser = SSEParser()
    assert feed_all(parser, [SAMPLE]) == SAMPLE_EVENTS
    assert not parser.pending


def test_sample_stream_every_single_cut() -> None:
    for cut in range(len(SAMPLE) + 1):
        parser = SSEParser()
        assert feed_all(parser, [SAMPLE[:cut], SAMPLE[cut:]]) == SAMPLE_EVENTS, cut
        assert not parser.pending


def test_sample_stream_one_byte_at_a_time() -> None:
    parser = SSEParser()
    assert feed_all(parser, [SAMPLE[i:i + 1] for i in range(len(SAMPLE))]) == SAMPLE_EVENTS


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=40))
def test_sample_stream_any_split_gives_same_events(cuts: list[int]) -> None:
    parser = SSEParser()
    assert feed_all(parser, split_at(SAMPLE, cuts)) == SAMPLE_EVENTS
    assert not parser.pending


@settings(max_examples=150, deadline=None, database=None)
@given(
    payloads=st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n\x00",
                                                     blacklist_categories=("Cs",)),
                              max_size=30), min_size=1, max_size=6),
    eol=st.sampled_from([b"\n", b"\r", b"\r\n"]),
    data=st.data(),
)
def test_generated_streams_any_split(payloads: list[str], eol: bytes, data: st.DataObject,
                                     ) -> None:
    raw = b"".join(b"event: data" + eol + b"data:" + p.encode() + eol + eol for p in payloads)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=20))
    events = feed_all(SSEParser(), split_at(raw, cuts))
    # One leading space after the colon is part of the framing, not the value.
    assert events == [SSEEvent("data", p[1:] if p.startswith(" ") else p) for p in payloads]


class _AlwaysGeneral(SSEParser):
    """The parser without its LF-only fast path: every chunk takes the general one."""

    def _whole_lines(self, chunk: bytes, out: list[Any]) -> list[Any]:
        return self._any_lines(chunk, out)


_LINES = st.sampled_from([b"event: data", b"event: control", b"data: x", b"data:y", b"data",
                          b"data: \xc3\xa9", b"\xc3", b"\xa9", b"data: \xe2\x82", b"\xf0\x9f\x98",
                          b"data: \xff\xfe", b"\xed\xa0\x80", b": comment", b"id: 7",
                          b"id: a\x00b", b"retry: 5", b"junk", b"", b"data: " + b"z" * 40])


@settings(max_examples=300, deadline=None, database=None)
@given(lines=st.lists(_LINES, max_size=30), eols=st.data(), limit=st.sampled_from([64, 4096]))
def test_lf_fast_path_reads_like_the_general_path(lines: list[bytes], eols: st.DataObject,
                                                  limit: int) -> None:
    raw = b"".join(line + eols.draw(st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b"\r"]))
                   for line in lines)
    cuts = eols.draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=12))
    fast, general = SSEParser(max_event_bytes=limit), _AlwaysGeneral(max_event_bytes=limit)
    pieces = split_at(raw, cuts)
    assert [fast.feed(p) for p in pieces] == [general.feed(p) for p in pieces]
    assert fast.pending == general.pending


# ------------------------------------------------------------------ size bound


def test_oversized_event_dropped_reported_and_parser_recovers() -> None:
    parser = SSEParser(max_event_bytes=100)
    raw = (b"event: data\ndata: " + b"x" * 150 + b"\n\n"
           + b"event: control\ndata: ok\n\n")
    events = feed_all(parser, [raw])
    assert len(events) == 2
    big, ok = events
    assert isinstance(big, Oversized)
    assert big.event == "data" and big.limit == 100 and big.size > 100
    assert ok == SSEEvent("control", "ok")
    assert not parser.pending


def test_oversized_by_many_data_lines() -> None:
    parser = SSEParser(max_event_bytes=64)
    raw = b"".join(b"data: 0123456789\n" for _ in range(20)) + b"\n" + b"data: next\n\n"
    events = feed_all(parser, [raw])
    assert isinstance(events[0], Oversized) and events[0].event == "message"
    assert events[1:] == [SSEEvent("message", "next")]


def test_oversized_event_split_in_small_chunks_reported_once() -> None:
    parser = SSEParser(max_event_bytes=64)
    raw = b"event: data\ndata: " + b"y" * 500 + b"\ndata: more\n\ndata: after\n\n"
    events = feed_all(parser, [raw[i:i + 7] for i in range(0, len(raw), 7)])
    assert [type(e) for e in events] == [Oversized, SSEEvent]
    assert events[1] == SSEEvent("message", "after")


def test_event_just_under_the_limit_is_kept() -> None:
    parser = SSEParser(max_event_bytes=64)
    payload = "z" * 40
    assert parser.feed(f"data: {payload}\n\n".encode()) == [SSEEvent("message", payload)]


def test_never_ending_line_stays_bounded_in_memory() -> None:
    limit = 1024 * 1024
    parser = SSEParser(max_event_bytes=limit)
    chunk = b"a" * (1024 * 1024)
    assert parser.feed(b"event: data\ndata: ") == []
    for _ in range(50):  # 50 MiB, never a newline
        assert parser.feed(chunk) == []
        assert len(parser._line) <= limit
        assert parser._data_size <= limit
        assert len(parser._data) <= 1
    assert parser.pending
    events = parser.feed(b"\n\ndata: back\n\n")
    assert isinstance(events[0], Oversized) and events[0].size >= 50 * 1024 * 1024
    assert events[1] == SSEEvent("message", "back")
    assert len(parser._line) == 0 and not parser.pending


def test_never_ending_comment_stays_bounded() -> None:
    parser = SSEParser(max_event_bytes=1024)
    parser.feed(b":")
    for _ in range(100):
        parser.feed(b"c" * 4096)
        assert len(parser._line) <= 1024


# ---------------------------------------------------------------------- pending


def test_pending_tracks_a_half_received_event() -> None:
    parser = SSEParser()
    assert not parser.pending
    parser.feed(b"event: data\n")
    assert parser.pending  # an event name without its blank line
    parser.feed(b"data: [1")
    assert parser.pending  # half a line
    parser.feed(b"]\n")
    assert parser.pending  # a full data line, no blank line yet
    assert parser.feed(b"\n") == [SSEEvent("data", "[1]")]
    assert not parser.pending


def test_pending_false_between_events_and_after_comments() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\n\n: ping\n")
    assert not parser.pending


def test_pending_true_while_discarding_an_oversized_event() -> None:
    parser = SSEParser(max_event_bytes=64)
    parser.feed(b"data: " + b"q" * 100 + b"\n")
    assert parser.pending
    assert isinstance(parser.feed(b"\n")[0], Oversized)
    assert not parser.pending
