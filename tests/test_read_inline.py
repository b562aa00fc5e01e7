"""The read core's inlined checks and the one-scan array decode give what the general code gives.

Each catch-up read (one per claimed stream, every wake) runs a few checks inline
instead of through their functions, and decodes a body that is exactly one
JSON array with the scanner ``json.loads`` ends in, alone. Compared here, on
the same inputs (Hypothesis, exact types and errors):

- :func:`pullwake.protocol.framing.decode_json_array` against itself with
  ``scan=False`` (the general way: ``json.loads``, then the value-by-value
  walk), over arrays in every encoding ``json.loads`` detects, with BOMs,
  whitespace, invalid or cut JSON, lone surrogates and any bytes;
- ``ReadCore``'s offset checks at construction against :func:`check_offset`
  (accepted or the same ``ConfigError``), and ``done`` against ``_reached``;
- ``ReadCore.end`` against :func:`valid_offset` (``Stream-Next-Offset``) and
  ``_true`` (``Stream-Closed``, ``Stream-Up-To-Date``), and the catch-up
  request against the mode ``_next_mode`` picks.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pullwake.errors import ConfigError, ProtocolError
from pullwake.protocol.framing import Rejected, decode_json_array
from pullwake.protocol.read import (
    SENTINELS,
    Batch,
    Checkpoint,
    ReadCore,
    _true,
    check_offset,
    valid_offset,
)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8)


@st.composite
def _bodies(draw: Any) -> bytes:
    values = draw(st.lists(_json, max_size=5))
    text = json.dumps(values, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    shape = draw(st.sampled_from(["whole", "space-before", "space-after", "newline-after",
                                  "cut", "garbage-after", "object", "surrogate", "bytes"]))
    if shape == "space-before":
        text = " " + text
    elif shape in ("space-after", "newline-after"):
        text += " " if shape == "space-after" else "\n"
    elif shape == "cut":
        text = text[: draw(st.integers(1, max(1, len(text) - 1)))]
    elif shape == "garbage-after":
        text += draw(st.sampled_from(["]", ",", "x", "[]", "\x00"]))
    elif shape == "object":
        text = json.dumps({"a": values})
    elif shape == "surrogate":
        text = '["\\ud800", "' + "\ud800" + '"]'
    if shape == "bytes":
        return bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=12)))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16-le", "utf-16-be",
                                     "utf-16", "utf-32-le", "utf-32-be", "utf-32"]))
    return text.encode(encoding, "surrogatepass")


def _seen(values: list[Any]) -> list[Any]:
    """Values with their exact types; a rejection by its error's type and text."""
    return [("rejected", type(v.error), str(v.error), v.damaged) if isinstance(v, Rejected)
            else (type(v), repr(v)) for v in values]


@settings(max_examples=600, deadline=None, database=None)
@given(body=_bodies(), limit=st.sampled_from([4, 64, 1024 * 1024]))
def test_the_one_scan_decode_is_the_general_decode(body: bytes, limit: int) -> None:
    assert _seen(decode_json_array(body, limit)) == _seen(
        decode_json_array(body, limit, scan=False))


def test_the_one_scan_decode_takes_what_json_loads_reads_as_utf8_only() -> None:
    arrays = ['[1,"\u00e9"]', "[]", '["\U0001f600"]']
    for text in arrays:
        for encoding in ("utf-8", "utf-16-le", "utf-32-le", "utf-16", "utf-8-sig"):
            body = text.encode(encoding)
            assert decode_json_array(body, 1 << 20) == json.loads(body)
    assert decode_json_array(codecs.BOM_UTF8 + b"[1]", 100) == [1]


# ------------------------------------------------------------ the read core

_offsets = st.one_of(
    st.sampled_from(["-1", "now", "", "0_1", "a" * 256, "a" * 257, "abc\n", "a b", "x/y",
                     "0000000000000000_0000000000000422", "\u00e9", "a&b", "%41"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7f), max_size=6),
    st.none(), st.integers())


def _config_error(make: Any) -> Any:
    try:
        return ("ok", make())
    except ConfigError as error:
        return ("error", str(error))


@settings(max_examples=400, deadline=None, database=None)
@given(offset=_offsets, until=_offsets)
def test_a_cores_offset_checks_are_check_offsets(offset: Any, until: Any) -> None:
    def general() -> Any:
        check_offset(offset)
        if until is not None and check_offset(until, "until") in SENTINELS:
            raise ConfigError("until must be an offset token, not '-1' or 'now'")
        return until is not None and offset not in SENTINELS and offset >= until  # _reached

    got = _config_error(lambda: ReadCore(offset=offset, until=until).done)
    assert got == _config_error(general)


_flags = st.one_of(st.none(), st.sampled_from(["true", "TRUE", " true ", "True\t", "false",
                                               "", "1", "yes", "truex"]))


@settings(max_examples=400, deadline=None, database=None)
@given(nxt=st.one_of(_offsets.filter(lambda v: isinstance(v, str)),
                     st.text(max_size=5)),
       closed=_flags, up=_flags, until=st.sampled_from([None, "0_5", "9_9"]))
def test_an_answers_end_is_judged_by_valid_offset_and_true(nxt: str, closed: Any, up: Any,
                                                           until: Any) -> None:
    core = ReadCore(offset="0_1", until=until)
    request = core.request()
    assert request.live == "catch-up" and request.params == (("offset", "0_1"),)
    headers = {"Content-Type": "application/json", "Stream-Next-Offset": nxt}
    if closed is not None:
        headers["Stream-Closed"] = closed
    if up is not None:
        headers["Stream-Up-To-Date"] = up
    assert core.head(200, headers).ok
    assert core.feed(b"[1]") == []
    try:
        events = core.end()
    except ProtocolError as error:
        events = None
        message = str(error)
    want_closed = _true(closed)
    want_up = want_closed or _true(up)
    if not valid_offset(nxt):
        assert events is None and "invalid Stream-Next-Offset" in message
        return
    if nxt < "0_1":
        assert events is None and "moved backwards" in message
        return
    reached = until is not None and nxt >= until
    if not (want_closed or want_up or reached) and nxt == "0_1":
        assert events is None and "did not move" in message
        return
    assert events == [Batch([1], "0_1", nxt, 0), Checkpoint(nxt, None, want_up, want_closed)]
    assert type(events[1].closed) is bool and type(events[1].up_to_date) is bool
    assert core.done is (want_closed or want_up or reached)


# --------------------------------------------- a damaged array always ends

_structural = st.text(alphabet='[]{},": nul1ex\\', max_size=30)


@settings(max_examples=1500, deadline=None, database=None)
@given(text=_structural, limit=st.sampled_from([2, 8, 1 << 20]))
def test_a_damaged_array_is_walked_to_its_end(text: str, limit: int) -> None:
    """Any body ends in a bounded number of values (a stray ``}`` between messages
    once made the walk reject the same spot forever, growing without bound)."""
    body = ("[" + text).encode()
    out = decode_json_array(body, limit)
    assert len(out) <= len(body) + 2
    assert _seen(out) == _seen(decode_json_array(body, limit, scan=False))


def test_a_stray_closing_brace_between_messages_is_damage_not_a_loop() -> None:
    out = decode_json_array(b'[{"a": n]ull}]', 1 << 20)
    assert [(type(v), v.damaged) for v in out] == [(Rejected, True)] * 3
    assert decode_json_array(b"[1}, 2]", 1 << 20)[0] == 1
