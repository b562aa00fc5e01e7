"""The public read API against the real reference server, on both I/O paths.

Rules for this module: the real Durable Streams reference server (marker
``realserver``) on 127.0.0.1, port 0, one per module (a stream per test); a
hard timeout on every test. Every case runs for a JSON, a ``text/plain`` and an
``application/octet-stream`` stream, and reads through the async shell
(:func:`pullwake.aread_stream`, aiohttp) and the sync shell
(:func:`pullwake.read_stream`, requests) and asserts both give the same result
(the differential test: one read core, two shells). Transient faults use the
server's ``/_test/inject-error``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from fixtures_servers import _skip_or_fail_real

from pullwake import (
    PullwakeError,
    ReadResult,
    RetryPolicy,
    StreamStatusError,
    aiter_chunks,
    aread_stream,
    iter_chunks,
    read_stream,
)
from pullwake.testing.realserver import RealServer

pytestmark = [pytest.mark.realserver, pytest.mark.timeout(60)]

FAST_RETRY = RetryPolicy(attempts=4, initial_s=0.01, cap_s=0.05)
KINDS = ["application/json", "text/plain", "application/octet-stream"]
_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[RealServer]:
    _skip_or_fail_real()
    srv = RealServer(long_poll_timeout=1.0)
    srv.start_sync()
    try:
        yield srv
    finally:
        srv.stop_sync()


@dataclass
class Stream:
    """One stream on the server, with what was appended and where each append ended."""

    srv: RealServer
    url: str
    path: str
    ctype: str
    offsets: list[str]
    items: list[Any]

    def append(self, value: Any) -> str:
        body = _encode(self.ctype, value)
        r = requests.post(self.url, data=body, headers={"Content-Type": self.ctype}, timeout=5)
        assert r.status_code in (200, 204), r.text
        self.offsets.append(r.headers["Stream-Next-Offset"])
        self.items.append(value)
        return self.offsets[-1]

    def close(self) -> None:
        r = requests.post(self.url, headers={"Stream-Closed": "true"}, timeout=5)
        assert r.status_code in (200, 204), r.text

    def expected(self, after: int = 0) -> tuple[Any, ...]:
        """What a catch-up read from offset ``offsets[after-1]`` returns (one chunk)."""
        rest = self.items[after:]
        if self.ctype == "application/json":
            return tuple(rest)
        if self.ctype == "text/plain":
            return ("".join(rest),) if rest else ()
        return (b"".join(rest),) if rest else ()


def _encode(ctype: str, value: Any) -> bytes:
    if ctype == "application/json":
        return json.dumps(value).encode()
    return value.encode() if isinstance(value, str) else bytes(value)


def _values(ctype: str, n: int) -> list[Any]:
    if ctype == "application/json":
        return [{"n": i, "text": "line\nbreak"} for i in range(n)]
    if ctype == "text/plain":
        return [f"text {i}\n" for i in range(n)]
    return [bytes([i, 0, 255, 10, 13]) for i in range(n)]


def make_stream(srv: RealServer, ctype: str, n: int = 3) -> Stream:
    path = f"reads/s{next(_names)}"
    url = f"{srv.stream_root}/{path}"
    r = requests.put(url, headers={"Content-Type": ctype}, timeout=5)
    assert r.status_code in (200, 201), r.text
    s = Stream(srv, url, f"/v1/stream/{path}", ctype, [], [])
    for v in _values(ctype, n):
        s.append(v)
    return s


def both(url: str, offset: str = "-1", **kw: Any) -> ReadResult:
    """Read through both shells; assert they agree; return the result."""
    sync = read_stream(url, offset, retry=FAST_RETRY, **kw)
    async_ = asyncio.run(aread_stream(url, offset, retry=FAST_RETRY, **kw))
    for field in ("messages", "items", "next_offset", "up_to_date", "closed", "kind",
                  "content_type"):
        assert getattr(sync, field) == getattr(async_, field), field
    return sync


def inject(srv: RealServer, path: str, **opts: Any) -> None:
    asyncio.run(srv.inject_error(path, **opts))


# ------------------------------------------------------------------ catch-up


@pytest.mark.parametrize("ctype", KINDS)
def test_catch_up_from_the_beginning_a_mid_offset_and_now(server: RealServer,
                                                          ctype: str) -> None:
    s = make_stream(server, ctype)
    full = both(s.url)
    assert full.messages == s.expected()
    assert full.kind == {"application/json": "json", "text/plain": "text"}.get(ctype, "bytes")
    assert full.next_offset == s.offsets[-1] and full.up_to_date and not full.closed
    assert all(i.offset == s.offsets[-1] and i.start == "-1" for i in full.items)
    assert [i.index for i in full.items] == list(range(len(full.items)))
    mid = both(s.url, s.offsets[0])
    assert mid.messages == s.expected(1)
    assert all(i.start == s.offsets[0] for i in mid.items)
    now = both(s.url, "now")
    assert now.messages == () and now.next_offset == s.offsets[-1] and now.up_to_date
    tail = both(s.url, s.offsets[-1])
    assert tail.messages == () and tail.next_offset == s.offsets[-1]


@pytest.mark.parametrize("ctype", KINDS)
def test_closure_in_catch_up_long_poll_and_sse(server: RealServer, ctype: str) -> None:
    s = make_stream(server, ctype)
    s.close()
    for live in (None, "long-poll", "sse"):
        result = both(s.url, live=live)
        assert result.closed and result.up_to_date, live
        assert result.messages == s.expected(), live
        at_tail = both(s.url, s.offsets[-1], live=live)
        assert at_tail.closed and at_tail.messages == (), live
        now = both(s.url, "now", live=live)
        assert now.closed and now.messages == (), live


# ------------------------------------------------------------------ live reads


@pytest.mark.parametrize("ctype", KINDS)
def test_long_poll_echoes_the_cursor_and_a_204_timeout_returns_nothing(
        server: RealServer, ctype: str) -> None:
    s = make_stream(server, ctype)
    result = both(s.url, s.offsets[-1], live="long-poll")  # nothing new: 204 after 1 s
    assert result.messages == () and result.up_to_date and result.cursor
    chunks = iter_chunks(s.url, s.offsets[-1], live="long-poll", retry=FAST_RETRY)
    first = next(chunks)  # the catch-up answer at the tail
    assert first.items == () and first.up_to_date
    waiting = next(chunks)  # a long-poll: the server's timeout, 204
    assert waiting.items == () and waiting.cursor
    s.append(_values(ctype, 1)[0])
    got = next(chunks)
    chunks.close()
    assert got.data == s.expected(len(s.items) - 1) and got.offset == s.offsets[-1]
    assert got.cursor  # echoed on every poll: see test_read_core's cursor tests


@pytest.mark.parametrize("ctype", KINDS)
def test_sse_delivers_appends_as_they_happen(server: RealServer, ctype: str) -> None:
    s = make_stream(server, ctype, n=1)

    async def follow() -> list[Any]:
        got: list[Any] = []
        async for chunk in aiter_chunks(s.url, s.offsets[-1], live="sse", retry=FAST_RETRY):
            got.extend(chunk.data)
            if chunk.up_to_date and not got:
                await asyncio.to_thread(s.append, _values(ctype, 2)[1])
            if got:
                return got
        return got

    got = asyncio.run(follow())
    assert tuple(got) == s.expected(1)
    result = read_stream(s.url, s.offsets[0], live="sse", retry=FAST_RETRY)
    assert result.messages == s.expected(1)


# ------------------------------------------------------------------ errors


def test_a_bad_offset_is_a_400_and_a_missing_stream_a_404(server: RealServer) -> None:
    s = make_stream(server, "text/plain", n=1)
    for read in (lambda: read_stream(s.url, "zzz-not-an-offset"),
                 lambda: asyncio.run(aread_stream(s.url, "zzz-not-an-offset"))):
        with pytest.raises(StreamStatusError) as info:
            read()
        assert (info.value.status, info.value.code) == (400, "BAD_REQUEST")
    missing = f"{server.stream_root}/reads/missing"
    for read in (lambda: read_stream(missing), lambda: asyncio.run(aread_stream(missing))):
        with pytest.raises(StreamStatusError) as info:
            read()
        assert (info.value.status, info.value.code) == (404, "STREAM_NOT_FOUND")


@pytest.mark.parametrize(("status", "code"), [(409, "CONFLICT"), (410, "OFFSET_GONE"),
                                              (403, None)])
def test_a_4xx_is_final_and_typed_never_retried(server: RealServer, status: int,
                                                code: str | None) -> None:
    s = make_stream(server, "application/json", n=1)
    for read in (lambda: read_stream(s.url, retry=FAST_RETRY),
                 lambda: asyncio.run(aread_stream(s.url, retry=FAST_RETRY))):
        inject(server, s.path, status=status, count=2, method="GET")
        with pytest.raises(StreamStatusError) as info:
            read()
        assert (info.value.status, info.value.code) == (status, code)
        # Not retried: the second injected failure is still there for the next read.
        with pytest.raises(StreamStatusError):
            read()
        assert read().messages == tuple(s.items)


@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 500},
                                   {"status": 429, "retry_after": 0},
                                   {"drop_connection": True}],
                         ids=["503", "500", "429", "dropped"])
def test_transient_failures_are_retried(server: RealServer, fault: dict[str, Any]) -> None:
    s = make_stream(server, "application/octet-stream")
    for read in (lambda: read_stream(s.url, retry=FAST_RETRY),
                 lambda: asyncio.run(aread_stream(s.url, retry=FAST_RETRY))):
        inject(server, s.path, count=2, method="GET", **fault)
        assert read().messages == s.expected()


def test_retries_are_bounded_then_the_error_is_typed(server: RealServer) -> None:
    s = make_stream(server, "text/plain", n=1)
    few = RetryPolicy(attempts=2, initial_s=0.01, cap_s=0.01)
    inject(server, s.path, status=503, count=10, method="GET")
    with pytest.raises(StreamStatusError) as info:
        read_stream(s.url, retry=few)
    assert info.value.status == 503
    inject(server, s.path, drop_connection=True, count=10, method="GET")
    with pytest.raises(PullwakeError):
        asyncio.run(aread_stream(s.url, retry=few))
    asyncio.run(server.clear_injected_errors())
    assert read_stream(s.url).messages == s.expected()


def test_a_retry_after_longer_than_the_policy_allows_fails_at_once(
        server: RealServer) -> None:
    s = make_stream(server, "text/plain", n=1)
    inject(server, s.path, status=429, retry_after=600, count=1, method="GET")
    with pytest.raises(StreamStatusError) as info:
        read_stream(s.url, retry=FAST_RETRY)
    assert (info.value.status, info.value.retry_after) == (429, 600)


@pytest.mark.parametrize("truncate", [10, 15])
def test_a_truncated_json_body_is_a_parse_error_and_the_next_read_works(
        server: RealServer, truncate: int) -> None:
    from pullwake import MalformedMessage

    s = make_stream(server, "application/json")
    for read in (lambda: read_stream(s.url), lambda: asyncio.run(aread_stream(s.url))):
        inject(server, s.path, truncate_body_bytes=truncate, count=1, method="GET")
        with pytest.raises(MalformedMessage):
            read()
        assert read().messages == s.expected()
