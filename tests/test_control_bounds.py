"""Control-plane bounds that protect memory without blocking progress (issue 14).

Class 1 (control plane): answers listing any number of streams are read item
by item; a subscription linking 14,000 streams starts, claims and acks on both
servers; a wake hands over at most ``max_claim_streams`` streams and the rest
follow in later wakes; one entry over the per-item limit is a typed error.
Class 5 (control plane): a request's timeout bounds lack of progress, not the
transfer: a body that keeps trickling finishes, one that stalls fails.

Rules: real sockets on 127.0.0.1, port 0; tests that need a bound to the tick
run on a ManualClock; every test has a hard timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from runner_helpers import eventually
from test_worker_e2e import SUB, Seen, make_worker, reading_handler

from pullwake.errors import AnswerTooLarge, ControlPlaneError, RequestTimeout
from pullwake.io.clock import LoopClock
from pullwake.io.http import HttpClient
from pullwake.protocol.answers import NESTED, read_items_answer
from pullwake.runtime.subscriptions import Claim, SubscriptionClient
from pullwake.testing.clock import ManualClock
from pullwake.testing.interface import DurableStreamsServer
from pullwake.testing.server import EmbeddedServer

pytestmark = [pytest.mark.timeout(120), pytest.mark.ds_server_options(long_poll_timeout=1.0)]


# ------------------------------------------------------------- item-by-item parsing


class _Chunks:
    """An ``await read(n)`` source over fixed chunks, recording marks."""

    def __init__(self, data: bytes, size: int = 7) -> None:
        self._data = data
        self._size = size
        self.marks = 0

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        out, self._data = self._data[:self._size], self._data[self._size:]
        return out

    def mark(self) -> None:
        self.marks += 1


def _entry(i: int, pending: bool) -> dict[str, Any]:
    return {"path": f"s/{i}", "acked_offset": "0", "tail_offset": "1" if pending else "0",
            "has_pending": pending}


async def test_answer_keeps_pending_entries_first_and_counts_the_rest() -> None:
    entries = [_entry(i, pending=i % 3 == 0) for i in range(30)]  # 10 pending, 20 idle
    body = json.dumps({"token": "t", "streams": entries, "lease_ttl_ms": 5}).encode()
    for max_items in (4, 10, 12, 100):
        reader = _Chunks(body)
        out = await read_items_answer(reader, operation="claim", max_items=max_items)
        assert out.seen == 30 and out.fields == {"token": "t", "lease_ttl_ms": 5}
        kept_pending = [e for e in out.items if e["has_pending"]]
        assert len(out.items) == min(30, max_items)
        assert len(kept_pending) == min(10, max_items)
        assert out.deferred == max(0, 10 - max_items)
        assert out.deferred + out.dropped_idle + len(out.items) == 30
        assert [e["path"] for e in out.items] == sorted(
            (e["path"] for e in out.items), key=lambda p: int(p[2:]))  # answer order
        assert reader.marks >= 30  # one mark per entry: the per-item bound restarts


async def test_answer_shapes_are_reported_not_guessed() -> None:
    body = json.dumps({"streams": [1, {"path": {"deep": [[[]]]}, "x": [1, 2]}],
                       "error": {"code": "X"}}).encode()
    out = await read_items_answer(_Chunks(body), operation="claim", max_items=10)
    assert out.items[0] == 1 and out.items[1] == {"path": NESTED, "x": NESTED}
    assert out.fields == {"error": NESTED}
    out = await read_items_answer(_Chunks(b"[1, 2]"), operation="claim", max_items=10)
    assert not out.is_object
    out = await read_items_answer(_Chunks(b""), operation="claim", max_items=10)
    assert not out.is_object
    with pytest.raises(ControlPlaneError, match="not valid JSON"):
        await read_items_answer(_Chunks(b'{"streams": [{"path": "a"'), operation="claim",
                                max_items=10)
    out = await read_items_answer(_Chunks(json.dumps({"streams": "nope"}).encode()),
                                  operation="claim", max_items=10)
    assert out.items_type == "other" and out.fields["streams"] == "nope"


async def test_select_filters_before_the_bound() -> None:
    entries = [{"path": f"s/{i}", "acked_offset": f"{i:03d}"} for i in range(50)]
    body = json.dumps({"streams": entries}).encode()
    out = await read_items_answer(_Chunks(body), operation="get subscription", max_items=5,
                                  select=lambda e: e["acked_offset"] >= "040")
    assert [e["path"] for e in out.items] == [f"s/{i}" for i in range(40, 45)]
    assert out.deferred == 5 and out.seen == 10


class _Small(_Chunks):
    """A reader that offers the whole (small) body, as the HTTP boundary's does."""

    async def small_body(self) -> bytes | None:
        return self._data


_SHAPES: list[bytes] = [
    json.dumps({"token": "t", "wake_id": "w", "generation": 3, "lease_ttl_ms": 5,
                "streams": [_entry(i, pending=i % 2 == 0) for i in range(9)]}).encode(),
    json.dumps({"streams": [1, None, [2], {"path": {"deep": [[[]]]}, "x": [1, 2]}, "s"],
                "error": {"code": "X"}, "n": 1.5, "b": False}).encode(),
    b"[1, 2]", b"", b"  ", b"5", b"null", b'{"streams": [{"path": "a"', b"{}",
    b'{"streams": "nope"}', b'{"streams": {"item": {"path": "a"}}}', b'{"streams": {}}',
    b'{"streams": [], "streams": [{"path": "b"}]}', b'{"a.b": 1, "streams": []}',
    b'{"streams": [{"a.b": 1, "path": "p"}]}', b'{"": 1, "x": 2}',
    b'{"streams": [{"path": "\\u0041"}]}', b'{"n": NaN}', b'{"n": 1e400}',
    b'{"x": 1} trailing', b'\xef\xbb\xbf{"x": 1}', b'{"x": "\xff"}',
    b'{"streams": [{"path": "' + b"[" * 5000 + b'"}]}', b"[" * 5000 + b"]" * 5000,
    b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]


@pytest.mark.parametrize("body", _SHAPES)
@pytest.mark.parametrize(("max_items", "keep", "select"), [
    (10, None, None), (2, None, None), (0, None, None),
    (3, ("path", "acked_offset"), lambda e: e.get("path") != "s/2")])
async def test_small_answers_decoded_at_once_read_like_incremental_ones(
        body: bytes, max_items: int, keep: tuple[str, ...] | None, select: Any) -> None:
    async def parse(reader: Any) -> Any:
        try:
            out = await read_items_answer(reader, operation="claim", max_items=max_items,
                                          keep_fields=keep, select=select)
        except ControlPlaneError as exc:
            return ("error", str(exc))
        return (out.fields, out.items, out.seen, out.deferred, out.dropped_idle,
                out.is_object, out.items_type)

    # A small answer arrives in one piece: what the incremental parser made of it
    # in one chunk (some malformed bodies read differently when cut up smaller).
    assert await parse(_Small(body)) == await parse(_Chunks(body, size=max(1, len(body))))


class _List(list[Any]):
    pass


class _Dict(dict[str, Any]):
    pass


_CLAIM = {"wake_id": "w1", "generation": 3, "token": "tok", "lease_ttl_ms": 5000,
          "streams": [{"path": "a", "acked_offset": "0", "tail_offset": "1",
                       "has_pending": True}, {"path": "b", "acked_offset": "1",
                                              "tail_offset": "1", "has_pending": False},
                      {"path": "c", "acked_offset": "0", "tail_offset": "2"}]}


@pytest.mark.parametrize(("change", "named"), [
    ({}, None), ({"lease_ttl_ms": None}, "lease_ttl_ms"), ({"streams": []}, None),
    ({"generation": True}, "generation"), ({"generation": "3"}, "generation"),
    ({"token": 5}, "token"), ({"wake_id": None}, "wake_id"), ({"streams": {}}, "streams"),
    ({"streams": [1]}, "streams[0]"), ({"streams": [{"path": "a"}]}, "streams[0].acked_offset"),
    ({"streams": [{**_CLAIM["streams"][0], "has_pending": 1}]}, "streams[0].has_pending"),
    ({"streams": [{**_CLAIM["streams"][0], "tail_offset": ["1"]}]}, "streams[0].tail_offset"),
])
def test_claim_parse_fast_path_agrees_with_the_field_by_field_one(
        change: dict[str, Any], named: str | None) -> None:
    body: dict[str, Any] = {**_CLAIM, **change}
    if change == {"lease_ttl_ms": None}:
        del body["lease_ttl_ms"]  # missing: the default
        named = None
    # Containers of other types than list and dict take the field-by-field path.
    general = {**body, "streams": _List(_Dict(s) if isinstance(s, dict) else s
                                        for s in body["streams"])} \
        if isinstance(body["streams"], list) else body
    if named is None:
        assert Claim.parse("s", body, deferred_streams=2) == Claim.parse(
            "s", general, deferred_streams=2)
        return
    with pytest.raises(ControlPlaneError, match=re.escape(f"'{named}")):
        Claim.parse("s", general, status=200)
    with pytest.raises(ControlPlaneError, match=re.escape(f"'{named}")):
        Claim.parse("s", body, status=200)


# ------------------------------------------------------------------ over real HTTP


@pytest.fixture
async def claim_app() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A server answering every claim with ``state['body']`` (bytes), or in chunks."""
    state: dict[str, Any] = {"body": b"{}", "chunks": None}

    async def claim(request: web.Request) -> web.StreamResponse:
        chunks = state["chunks"]
        if chunks is None:
            return web.Response(body=state["body"], content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        while True:
            chunk = await chunks.get()
            if chunk is None:
                break
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/stream/__ds/subscriptions/{sub}/claim", claim)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1/stream", state
    finally:
        await runner.cleanup()


def _claim_body(n: int, *, path_len: int = 10, pending: int = 3) -> bytes:
    streams = [{"path": f"p/{i:0{path_len}d}", "link_type": "explicit",
                "acked_offset": "0000000000000000_0000000000000000",
                "tail_offset": f"0000000000000000_{int(i < pending):016d}",
                "has_pending": i < pending} for i in range(n)]
    return json.dumps({"wake_id": "w1", "generation": 1, "token": "tok",
                       "streams": streams, "lease_ttl_ms": 5000}).encode()


async def test_claim_answer_of_50000_streams_is_read_item_by_item(claim_app: Any) -> None:
    root, state = claim_app
    state["body"] = _claim_body(50_000)  # ~7 MB, seven times the old whole-answer cap
    assert len(state["body"]) > 7 * 1024 * 1024
    http = HttpClient(headers=None, clock=LoopClock(), request_timeout=10)
    client = SubscriptionClient(root, max_claim_streams=100, max_item_bytes=4096)
    try:
        claim = await client.claim(http, SUB, "w1")
    finally:
        await http.close()
    assert not isinstance(claim, str)
    assert len(claim.streams) == 100 and sum(s.has_pending for s in claim.streams) == 3
    assert claim.deferred_streams == 0 and claim.token == "tok"


async def test_claim_answer_entry_over_the_per_item_limit_is_a_typed_error(
        claim_app: Any) -> None:
    root, state = claim_app
    state["body"] = _claim_body(3, path_len=200_000)  # one entry of ~200 KB
    http = HttpClient(headers=None, clock=LoopClock(), request_timeout=10)
    client = SubscriptionClient(root, max_item_bytes=64 * 1024)
    try:
        with pytest.raises(AnswerTooLarge) as info:
            await client.claim(http, SUB, "w1")
    finally:
        await http.close()
    assert info.value.limit == 64 * 1024 and info.value.status == 200
    assert "64" in str(info.value) or "65536" in str(info.value)


async def test_control_timeout_bounds_lack_of_progress_not_the_transfer(
        claim_app: Any) -> None:
    """Chunks 0.9 timeouts apart for 8 timeouts in all: answered. Then a stall: timed out."""
    root, state = claim_app
    body = _claim_body(40)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    state["chunks"] = queue
    clock = ManualClock()
    http = HttpClient(headers=None, clock=clock, request_timeout=1.0)
    client = SubscriptionClient(root)
    try:
        call = asyncio.ensure_future(client.claim(http, SUB, "w1"))
        parts = [body[i:i + len(body) // 8 + 1] for i in range(0, len(body), len(body) // 8 + 1)]
        for part in parts[:-1]:
            await queue.put(part)
            await asyncio.sleep(0.02)
            await clock.advance(0.9)
            assert not call.done()
        await queue.put(parts[-1])
        await queue.put(None)
        claim = await asyncio.wait_for(call, 5)
        assert not isinstance(claim, str) and len(claim.streams) == 40

        call = asyncio.ensure_future(client.claim(http, SUB, "w1"))
        await queue.put(body[:100])
        await asyncio.sleep(0.05)
        await clock.advance(0.99)
        assert not call.done()
        await clock.advance(0.02)  # no byte for a whole timeout: no progress
        with pytest.raises(RequestTimeout):
            await asyncio.wait_for(call, 5)
    finally:
        await queue.put(None)
        await http.close()


# ------------------------------------------------------------------ a worker, end to end


async def _create_and_append(srv: DurableStreamsServer, paths: list[str], n: int) -> None:
    for p in paths:
        await srv.create_stream(p)
    for i in range(n):
        for p in paths:
            await srv.append(p, {"stream": p, "i": i})


@pytest.mark.timeout(240)
async def test_subscription_linking_14000_streams_starts_claims_and_acks(
        ds_server: DurableStreamsServer) -> None:
    """Its subscription answer (~1.3 MB) and every claim answer (~2 MB) pass the old
    1 MiB cap; the worker starts, claims, hands over the pending streams, acks."""
    names = [f"big/s{i:05d}" for i in range(14_000)]
    seen = Seen()
    sizes: list[int] = []

    async def handler(wake: Any) -> None:
        sizes.append(len(wake.streams))
        for s in wake.streams:
            if s.has_pending:  # the others have nothing in (acked, tail]
                async for m in wake.messages(s.path):
                    seen.message_record("w1", s.path, m)

    worker = make_worker(ds_server, handler, pattern=None,
                         streams=tuple(names), request_timeout=20.0, read_idle_timeout=20.0)
    busy = names[:3] + names[-2:]
    async with worker:
        await _create_and_append(ds_server, busy, 4)
        await eventually(lambda: len(seen.ids()) == 20, timeout=120)
        state = None

        async def drained() -> bool:
            nonlocal state
            state = await ds_server.subscription_state(SUB)
            streams = {s["path"]: s for s in (state or {}).get("streams", [])}
            tails = {p: await ds_server.tail_offset(p) for p in busy}
            return all(streams[p]["acked_offset"] == tails[p] for p in busy)

        for _ in range(600):
            if await drained():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the busy streams were never acked to their tails")
    assert seen.ids() == {(p, i) for p in busy for i in range(4)}
    assert worker.runner.health().claims_failed == 0
    assert sizes and max(sizes) == 10_000  # max_claim_streams: pending first, then idle
    assert len((state or {}).get("streams", [])) == 14_000


async def test_more_pending_streams_than_max_claim_streams_come_in_later_wakes(
        embedded_ds_server: EmbeddedServer, caplog: pytest.LogCaptureFixture) -> None:
    srv = embedded_ds_server
    paths = [f"events/s{i:02d}" for i in range(12)]
    seen = Seen()
    gate = asyncio.Event()
    sizes: list[int] = []
    inner = reading_handler(seen, "w1")

    async def handler(wake: Any) -> None:
        sizes.append(sum(1 for s in wake.streams if s.has_pending))
        assert len(wake.streams) <= 5
        if len(sizes) == 1:
            await gate.wait()  # the other 11 streams get pending work meanwhile
        await inner(wake)

    worker = make_worker(srv, handler, max_claim_streams=5)
    with caplog.at_level(logging.WARNING, logger="pullwake.subscriptions"):
        async with worker:
            for p in paths:
                await srv.create_stream(p)
            await srv.append(paths[0], {"stream": paths[0], "i": 0})
            await eventually(lambda: len(sizes) == 1)
            for p in paths[1:]:
                await srv.append(p, {"stream": p, "i": 0})
            gate.set()
            await eventually(lambda: len(seen.ids()) == 12, timeout=30)
    assert seen.ids() == {(p, 0) for p in paths}
    assert max(sizes) == 5 and len(sizes) >= 4  # 1, then 11 in rounds of at most 5
    assert "max_claim_streams=5" in caplog.text
    state = await srv.subscription_state(SUB)
    assert state is not None
    for s in state["streams"]:
        assert s["acked_offset"] == await srv.tail_offset(s["path"])
