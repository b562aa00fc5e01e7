"""The two test servers agree with each other (and so with Durable Streams).

Rules for this module: real sockets on 127.0.0.1 only, port 0, a hard timeout
on every test. Tests taking ``ds_server`` run against the embedded server and
the reference server (``realserver`` marker; skipped without node unless
``PULLWAKE_REQUIRE_REAL_SERVER=1``); the fault-switch tests at the end use the
embedded server alone. Leases are 1000 ms (the minimum) and long-polls short so
the module stays fast.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from pullwake.testing.interface import DurableStreamsServer
from pullwake.testing.realserver import RealServer
from pullwake.testing.server import ClaimAnswer, EmbeddedServer

JSON = {"Content-Type": "application/json"}
SUBS = "/__ds/subscriptions"
LEASE_MS = 1000

pytestmark = pytest.mark.timeout(30)


def _conforms(srv: EmbeddedServer | RealServer) -> DurableStreamsServer:
    return srv  # mypy checks both classes satisfy the protocol


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def parse_sse(raw: bytes) -> list[tuple[str, str]]:
    """(event, data) pairs from raw SSE bytes; multi-line data joined by newlines."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            if field == "event":
                name = value.lstrip(" ")
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


async def make_stream(http: aiohttp.ClientSession, srv: DurableStreamsServer, path: str) -> None:
    async with http.put(f"{srv.stream_root}/{path}", headers=JSON) as resp:
        assert resp.status in (200, 201)


async def post_json(http: aiohttp.ClientSession, url: str, body: Any,
                    headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.post(url, data=json.dumps(body), headers={**JSON, **(headers or {})}) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


async def subscribe(http: aiohttp.ClientSession, srv: DurableStreamsServer, sub_id: str = "sub1",
                    **extra: Any) -> tuple[int, Any]:
    body = {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/pool",
            "lease_ttl_ms": LEASE_MS, **extra}
    async with http.put(f"{srv.stream_root}{SUBS}/{sub_id}", json=body) as resp:
        return resp.status, await resp.json()


async def wake_events(http: aiohttp.ClientSession, srv: DurableStreamsServer) -> list[Any]:
    async with http.get(f"{srv.stream_root}/wake/pool", params={"offset": "-1"}) as resp:
        assert resp.status == 200
        return list(await resp.json())


async def wait_for_wakes(http: aiohttp.ClientSession, srv: DurableStreamsServer, count: int,
                         timeout: float = 3.0) -> list[Any]:
    """The reference server writes a wake just after answering the append: poll briefly."""
    async with asyncio.timeout(timeout):
        while True:
            events = await wake_events(http, srv)
            if len(events) >= count:
                return events
            await asyncio.sleep(0.01)


async def claim(http: aiohttp.ClientSession, srv: DurableStreamsServer, worker: str = "w1",
                sub_id: str = "sub1") -> tuple[int, Any]:
    return await post_json(http, f"{srv.stream_root}{SUBS}/{sub_id}/claim", {"worker": worker})


async def ack(http: aiohttp.ClientSession, srv: DurableStreamsServer, claimed: dict[str, Any],
              sub_id: str = "sub1", token: str | None = None, **body: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token or claimed['token']}"}
    payload = {"wake_id": claimed["wake_id"], "generation": claimed["generation"], **body}
    return await post_json(http, f"{srv.stream_root}{SUBS}/{sub_id}/ack", payload, headers)


async def setup_work(http: aiohttp.ClientSession, srv: DurableStreamsServer) -> None:
    """A wake stream, a subscription on events/*, and one append to events/a."""
    await make_stream(http, srv, "wake/pool")
    await make_stream(http, srv, "events/a")
    assert (await subscribe(http, srv))[0] == 201
    await srv.append("events/a", {"n": 1})
    await wait_for_wakes(http, srv, 1)


# ------------------------------------------------------------------ streams


async def test_create_is_idempotent_and_conflicts_on_content_type(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    url = f"{ds_server.stream_root}/wake/pool"
    async with http.put(url, headers=JSON) as resp:
        assert resp.status == 201
        assert resp.headers["Stream-Next-Offset"] == "0000000000000000_0000000000000000"
    async with http.put(url, headers=JSON) as resp:
        assert resp.status == 200
    async with http.put(url, headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 409


async def test_append_and_catch_up_read(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await make_stream(http, ds_server, "wake/pool")
    url = f"{ds_server.stream_root}/wake/pool"
    async with http.post(url, json={"a": 1}) as resp:
        assert resp.status == 204
        first = resp.headers["Stream-Next-Offset"]
    # An array is ONE message (one offset) holding each element.
    async with http.post(url, json=[{"b": 2}, {"c": 3}]) as resp:
        second = resp.headers["Stream-Next-Offset"]
    assert first == "0000000000000000_0000000000000013"  # 5 + len('{"a":1},')
    assert first < second == "0000000000000000_0000000000000034"
    async with http.get(url, params={"offset": "-1"}) as resp:
        assert resp.status == 200
        assert await resp.json() == [{"a": 1}, {"b": 2}, {"c": 3}]
        assert resp.headers["Stream-Next-Offset"] == second
        assert resp.headers["Stream-Up-To-Date"] == "true"
        etag = resp.headers["ETag"]
        assert "Cache-Control" not in resp.headers
    async with http.get(url, params={"offset": first}) as resp:
        assert await resp.json() == [{"b": 2}, {"c": 3}]
    async with http.get(url, params={"offset": "-1"}, headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
    async with http.get(url, params={"offset": "now"}) as resp:
        assert resp.status == 200 and await resp.json() == []
        assert resp.headers["Stream-Next-Offset"] == second
        assert "ETag" not in resp.headers
    async with http.get(url, params={"offset": "bogus"}) as resp:
        assert resp.status == 400
    async with http.get(f"{ds_server.stream_root}/missing", params={"offset": "-1"}) as resp:
        assert resp.status == 404


@pytest.mark.ds_server_options(long_poll_timeout=0.5)
async def test_long_poll_returns_data_when_it_arrives(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await make_stream(http, ds_server, "wake/pool")
    tail = await ds_server.tail_offset("wake/pool")

    async def append_soon() -> None:
        await asyncio.sleep(0.1)
        await ds_server.append("wake/pool", {"late": True})

    task = asyncio.create_task(append_soon())
    async with http.get(f"{ds_server.stream_root}/wake/pool",
                        params={"offset": tail, "live": "long-poll"}) as resp:
        assert resp.status == 200
        assert await resp.json() == [{"late": True}]
        assert resp.headers["Stream-Cursor"].isdigit()
        assert resp.headers["Stream-Next-Offset"] > tail
    await task


@pytest.mark.ds_server_options(long_poll_timeout=0.3)
async def test_long_poll_times_out_with_204(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await make_stream(http, ds_server, "wake/pool")
    tail = await ds_server.tail_offset("wake/pool")
    async with http.get(f"{ds_server.stream_root}/wake/pool",
                        params={"offset": tail, "live": "long-poll", "cursor": "1"}) as resp:
        assert resp.status == 204
        assert resp.headers["Stream-Next-Offset"] == tail
        assert resp.headers["Stream-Up-To-Date"] == "true"
        assert int(resp.headers["Stream-Cursor"]) > 1


@pytest.mark.ds_server_options(long_poll_timeout=0.3)
async def test_sse_framing_from_raw_bytes(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await make_stream(http, ds_server, "wake/pool")
    await ds_server.append("wake/pool", {"a": 1})
    await ds_server.append("wake/pool", {"text": "two\nlines"})
    async with http.get(f"{ds_server.stream_root}/wake/pool",
                        params={"offset": "-1", "live": "sse"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        raw = await resp.content.readuntil(b"event: control\n")
        raw += await resp.content.readuntil(b"\n\n")
        await ds_server.append("wake/pool", {"b": 2})
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.8):  # > 2 keep-alive periods of silence
                async for chunk in resp.content.iter_any():
                    raw += chunk
    assert b"data: " not in raw and b"data:[" in raw  # no space after "data:"
    events = parse_sse(raw)
    kinds = [name for name, _ in events]
    # Backlog: one data event per append, then one control; then data + control per append.
    assert kinds[:5] == ["data", "data", "control", "data", "control"]
    assert set(kinds[5:]) == {"control"} and len(kinds) >= 7  # keep-alives after silence
    assert json.loads(events[0][1]) == [{"a": 1}]
    assert json.loads(events[1][1]) == [{"text": "two\nlines"}]
    control = json.loads(events[4][1])
    assert list(control) == ["streamNextOffset", "streamCursor", "upToDate"]
    assert control["streamNextOffset"] == await ds_server.tail_offset("wake/pool")
    assert control["upToDate"] is True


# ---------------------------------------------------------------- subscriptions


async def test_subscription_create_confirm_conflict_and_validation(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    status, body = await subscribe(http, ds_server)
    assert status == 201
    assert body["id"] == body["subscription_id"] == "sub1"
    assert body["type"] == "pull-wake" and body["lease_ttl_ms"] == LEASE_MS
    assert (await subscribe(http, ds_server))[0] == 200
    status, body = await subscribe(http, ds_server, lease_ttl_ms=2000)
    assert status == 409 and body["error"]["code"] == "SUBSCRIPTION_ALREADY_EXISTS"
    status, body = await subscribe(http, ds_server, "sub2", lease_ttl_ms=999)
    assert status == 400 and body["error"]["code"] == "INVALID_REQUEST"
    assert (await subscribe(http, ds_server, "sub3", lease_ttl_ms=600_001))[0] == 400
    state = await ds_server.subscription_state("sub1")
    assert state is not None and state["wake_stream"] == "wake/pool"
    assert await ds_server.subscription_state("nope") is None
    status, body = await claim(http, ds_server, sub_id="nope")
    assert status == 404 and body["error"]["code"] == "SUBSCRIPTION_NOT_FOUND"


async def test_append_writes_one_wake_until_claimed(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await setup_work(http, ds_server)
    await ds_server.append("events/a", {"n": 2})
    await make_stream(http, ds_server, "events/b")  # created after the subscription:
    await ds_server.append("events/b", {"n": 1})  # linked by the glob on append
    await asyncio.sleep(0.05)
    events = await wake_events(http, ds_server)
    assert len(events) == 1  # one pending wake per subscription
    event = events[0]
    assert set(event) == {"type", "subscription_id", "stream", "generation", "ts"}
    assert event["type"] == "wake" and event["subscription_id"] == "sub1"
    assert event["stream"] == "events/a" and event["generation"] == 1


async def test_claim_then_ack_extends_then_done(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await setup_work(http, ds_server)
    status, claimed = await claim(http, ds_server)
    assert status == 200
    assert set(claimed) == {"wake_id", "generation", "token", "streams", "lease_ttl_ms"}
    assert claimed["generation"] == 1 and claimed["lease_ttl_ms"] == LEASE_MS
    (info,) = claimed["streams"]
    assert set(info) == {"path", "link_type", "acked_offset", "tail_offset", "has_pending"}
    assert info["path"] == "events/a" and info["link_type"] == "glob"
    assert info["acked_offset"] == "0000000000000000_0000000000000000"
    assert info["has_pending"] is True

    status, body = await claim(http, ds_server, "w1")  # even the holder itself
    assert status == 409
    assert body["error"]["code"] == "ALREADY_CLAIMED"
    assert body["error"]["current_holder"] == "w1"

    for _ in range(3):  # heartbeats keep the 1 s lease alive for 1.5 s
        await asyncio.sleep(0.5)
        assert await ack(http, ds_server, claimed) == (200, {"ok": True, "next_wake": False})

    acks = [{"stream": "events/a", "offset": info["tail_offset"]}]
    status, body = await ack(http, ds_server, claimed, acks=acks, done=True)
    assert (status, body) == (200, {"ok": True, "next_wake": False})
    status, body = await claim(http, ds_server)
    assert status == 409 and body["error"]["code"] == "NO_PENDING_WORK"
    state = await ds_server.subscription_state("sub1")
    assert state is not None and state["streams"][0]["acked_offset"] == info["tail_offset"]
    assert len(await wake_events(http, ds_server)) == 1


async def test_done_without_acks_wakes_again(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await setup_work(http, ds_server)
    _, claimed = await claim(http, ds_server)
    assert await ack(http, ds_server, claimed, done=True) == (200, {"ok": True, "next_wake": True})
    events = await wait_for_wakes(http, ds_server, 2)
    assert events[1]["generation"] == 2
    status, again = await claim(http, ds_server, "w2")
    assert status == 200 and again["generation"] == 2 and again["wake_id"] != claimed["wake_id"]


async def test_ack_offset_errors_and_token_errors(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await setup_work(http, ds_server)
    _, claimed = await claim(http, ds_server)
    tail = claimed["streams"][0]["tail_offset"]
    beyond = "0000000000000000_0000000000099999"
    for acks in ([{"stream": "events/zz", "offset": tail}],
                 [{"stream": "events/a", "offset": beyond}],
                 [{"stream": "events/a", "offset": "-1"}]):
        status, body = await ack(http, ds_server, claimed, acks=acks)
        assert status == 409 and body["error"]["code"] == "INVALID_OFFSET", acks
    assert (await ack(http, ds_server, claimed, acks=[{"stream": "events/a", "offset": tail}]))[0] \
        == 200
    status, body = await ack(http, ds_server, claimed,
                             acks=[{"stream": "events/a", "offset": claimed["streams"][0][
                                 "acked_offset"]}])
    assert status == 409 and body["error"]["code"] == "INVALID_OFFSET"  # regressing

    status, body = await ack(http, ds_server, claimed, token="not.valid")
    assert status == 401 and body["error"]["code"] == "TOKEN_INVALID"
    status, body = await post_json(http, f"{ds_server.stream_root}{SUBS}/sub1/ack",
                                   {"wake_id": claimed["wake_id"], "generation": 1})
    assert status == 401 and body["error"]["code"] == "TOKEN_INVALID"
    status, body = await ack(http, ds_server, {**claimed, "wake_id": "w_stale"})
    assert status == 409 and body["error"]["code"] == "FENCED"


async def test_release_writes_a_new_wake_when_work_remains(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await setup_work(http, ds_server)
    _, claimed = await claim(http, ds_server)
    url = f"{ds_server.stream_root}{SUBS}/sub1/release"
    auth = {"Authorization": f"Bearer {claimed['token']}"}
    # Without wake_id / generation in the body a release is FENCED.
    status, body = await post_json(http, url, {}, auth)
    assert status == 409 and body["error"]["code"] == "FENCED"
    status, body = await post_json(
        http, url, {"wake_id": claimed["wake_id"], "generation": claimed["generation"]}, auth)
    assert (status, body) == (204, None)
    events = await wait_for_wakes(http, ds_server, 2)
    assert [e["generation"] for e in events] == [1, 2]
    status, _ = await ack(http, ds_server, claimed)
    assert status == 409


async def test_lease_expiry_writes_next_generation_and_fences_old_holder(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await setup_work(http, ds_server)
    _, claimed = await claim(http, ds_server)
    events = await wait_for_wakes(http, ds_server, 2, timeout=LEASE_MS / 1000 + 2)
    assert events[1]["generation"] == 2 and events[1]["stream"] == "events/a"
    status, body = await ack(http, ds_server, claimed)
    assert status == 409 and body["error"]["code"] == "FENCED"
    status, again = await claim(http, ds_server, "w2")
    assert status == 200 and again["generation"] == 2


async def test_restart_forgets_subscriptions_but_keeps_streams(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await setup_work(http, ds_server)
    before = await ds_server.read_all("wake/pool")
    url, tail = ds_server.url, await ds_server.tail_offset("events/a")
    await ds_server.restart()
    assert ds_server.url == url
    assert await ds_server.read_all("wake/pool") == before
    assert await ds_server.tail_offset("events/a") == tail
    status, body = await claim(http, ds_server)
    assert status == 404 and body["error"]["code"] == "SUBSCRIPTION_NOT_FOUND"
    assert (await subscribe(http, ds_server))[0] == 201
    await ds_server.append("events/a", {"n": 2})
    events = await wait_for_wakes(http, ds_server, len(before) + 1)
    assert events[-1]["generation"] == 1  # generations restart


@pytest.mark.ds_server_options(long_poll_timeout=5)
async def test_graceful_stop_answers_a_pending_long_poll(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await make_stream(http, ds_server, "wake/pool")
    tail = await ds_server.tail_offset("wake/pool")
    poll = asyncio.create_task(http.get(f"{ds_server.stream_root}/wake/pool",
                                        params={"offset": tail, "live": "long-poll"}))
    await asyncio.sleep(0.3)
    await ds_server.restart()
    resp = await poll
    assert resp.status == 200 and await resp.json() == []
    assert resp.headers["Stream-Next-Offset"] == tail
    resp.release()


async def test_kill_cuts_an_open_sse_stream_and_restart_keeps_data(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await make_stream(http, ds_server, "wake/pool")
    offset = await ds_server.append("wake/pool", {"kept": True})
    async with http.get(f"{ds_server.stream_root}/wake/pool",
                        params={"offset": "-1", "live": "sse"}) as resp:
        await resp.content.readuntil(b"event: control\n")
        await ds_server.kill()
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.content.read()
    await ds_server.restart(graceful=False)
    assert await ds_server.read_all("wake/pool") == [{"kept": True}]
    assert await ds_server.tail_offset("wake/pool") == offset


# ------------------------------------------------------------- injected errors


async def test_inject_error_status_then_recovers(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await setup_work(http, ds_server)
    path = "/v1/stream/__ds/subscriptions/sub1/claim"
    await ds_server.inject_error(path, status=503, retry_after=2, count=1)
    async with http.post(ds_server.url + path, json={"worker": "w1"}) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
        assert await resp.text() == "Injected error for testing"
    status, _ = await claim(http, ds_server)
    assert status == 200


async def test_inject_error_drop_connection_and_clear(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await make_stream(http, ds_server, "wake/pool")
    await ds_server.inject_error("/v1/stream/wake/pool", drop_connection=True, count=5)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.get(f"{ds_server.stream_root}/wake/pool", params={"offset": "-1"}):
            pass
    await ds_server.clear_injected_errors()
    async with http.get(f"{ds_server.stream_root}/wake/pool", params={"offset": "-1"}) as resp:
        assert resp.status == 200


async def test_inject_error_truncates_read_bodies(
    ds_server: DurableStreamsServer, http: aiohttp.ClientSession
) -> None:
    await make_stream(http, ds_server, "wake/pool")
    await ds_server.append("wake/pool", {"a": 1})
    await ds_server.inject_error("/v1/stream/wake/pool", truncate_body_bytes=4, method="GET")
    async with http.get(f"{ds_server.stream_root}/wake/pool", params={"offset": "-1"}) as resp:
        assert resp.status == 200
        assert await resp.read() == b'[{"a'


# -------------------------------------------------- embedded-only fault switches


@pytest.mark.timeout(10)
async def test_hang_until_cleared(embedded_ds_server: EmbeddedServer,
                                  http: aiohttp.ClientSession) -> None:
    srv = embedded_ds_server
    await srv.create_stream("wake/pool")
    fault = srv.hang("/v1/stream/wake/pool", method="GET")
    url = f"{srv.stream_root}/wake/pool?offset=-1"
    with pytest.raises(TimeoutError):
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    pending = asyncio.create_task(http.get(url))
    await asyncio.sleep(0.1)
    assert not pending.done()
    srv.remove_fault(fault)
    resp = await pending
    assert resp.status == 200
    resp.release()
    assert fault.hits == 2


@pytest.mark.timeout(10)
async def test_hang_after_headers(embedded_ds_server: EmbeddedServer,
                                  http: aiohttp.ClientSession) -> None:
    srv = embedded_ds_server
    await srv.create_stream("wake/pool")
    await srv.append("wake/pool", {"a": 1})
    srv.hang_after_headers("/v1/stream/wake/pool")
    async with http.get(f"{srv.stream_root}/wake/pool", params={"offset": "-1"}) as resp:
        assert resp.status == 200 and resp.headers["Stream-Next-Offset"]
        body = asyncio.create_task(resp.read())
        await asyncio.sleep(0.3)
        assert not body.done()  # headers came, the body does not
        srv.clear_faults()  # ... and then the connection is cut
        with pytest.raises(aiohttp.ClientPayloadError):
            await body


@pytest.mark.timeout(10)
async def test_drop_before_answer_and_mid_body(embedded_ds_server: EmbeddedServer,
                                               http: aiohttp.ClientSession) -> None:
    srv = embedded_ds_server
    await srv.create_stream("wake/pool")
    await srv.append("wake/pool", [{"i": i} for i in range(50)])
    url = f"{srv.stream_root}/wake/pool?offset=-1"
    # aiohttp retries an idempotent request once when a reused keep-alive
    # connection drops, so the fault must outlast one retry.
    fault = srv.drop("/v1/stream/wake/pool")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.get(url):
            pass
    assert fault.hits >= 1
    srv.remove_fault(fault)
    srv.drop("/v1/stream/wake/pool", after_bytes=10)
    async with http.get(url, headers={"Accept-Encoding": "identity"}) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    srv.clear_faults()
    async with http.get(url) as resp:
        assert len(await resp.json()) == 50


@pytest.mark.timeout(10)
async def test_sse_drop_mid_stream(embedded_ds_server: EmbeddedServer,
                                   http: aiohttp.ClientSession) -> None:
    srv = embedded_ds_server
    await srv.create_stream("wake/pool")
    await srv.append("wake/pool", {"a": 1})
    srv.drop("/v1/stream/wake/pool", after_bytes=30)
    async with http.get(f"{srv.stream_root}/wake/pool",
                        params={"offset": "-1", "live": "sse"}) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


@pytest.mark.timeout(10)
async def test_status_fault_with_json_body(embedded_ds_server: EmbeddedServer,
                                           http: aiohttp.ClientSession) -> None:
    srv = embedded_ds_server
    srv.fail("/v1/stream/__ds/", 503, body={"error": {"code": "BUSY"}}, retry_after=1.5,
             method="POST", count=2)
    url = f"{srv.stream_root}{SUBS}/s/claim"
    for _ in range(2):
        async with http.post(url, json={"worker": "w"}) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1.5"
            assert await resp.json() == {"error": {"code": "BUSY"}}
    async with http.post(url, json={"worker": "w"}) as resp:
        assert resp.status == 404


@pytest.mark.timeout(10)
async def test_pause_and_resume(embedded_ds_server: EmbeddedServer,
                                http: aiohttp.ClientSession) -> None:
    srv = embedded_ds_server
    await srv.create_stream("wake/pool")
    srv.pause()
    pending = asyncio.create_task(http.get(f"{srv.stream_root}/wake/pool?offset=-1"))
    await asyncio.sleep(0.2)
    assert not pending.done()
    srv.resume()
    resp = await pending
    assert resp.status == 200
    resp.release()


@pytest.mark.timeout(10)
async def test_restart_without_keeping_streams(embedded_ds_server: EmbeddedServer,
                                               http: aiohttp.ClientSession) -> None:
    srv = embedded_ds_server
    await srv.create_stream("wake/pool")
    await srv.restart(keep_streams=False)
    async with http.get(f"{srv.stream_root}/wake/pool?offset=-1") as resp:
        assert resp.status == 404


@pytest.mark.timeout(10)
async def test_electric_endpoints_with_tenant_prefix(http: aiohttp.ClientSession) -> None:
    async with EmbeddedServer(prefix="/t/acme", long_poll_timeout=0.3) as srv:
        assert srv.url.endswith("/t/acme")
        event = {"type": "wake", "subscription_id": "runner:r 1", "stream": "chat/one/main",
                 "generation": 7, "ts": 1}
        offset = await srv.append_runner_wake("r 1", event)
        async with http.get(f"{srv.url}/runners/r%201/wake", params={"offset": "-1"}) as resp:
            assert resp.status == 200 and await resp.json() == [event]
            assert resp.headers["Stream-Next-Offset"] == offset
        async with http.get(f"{srv.origin}/runners/r%201/wake", params={"offset": "-1"}) as resp:
            assert resp.status == 404  # outside the prefix

        hb = {"lease_ms": 90000, "wake_stream_offset": offset, "diagnostics": {}}
        async with http.post(f"{srv.url}/_electric/runners/r%201/heartbeat", json=hb) as resp:
            assert resp.status == 200
        assert srv.heartbeats("r 1") == [hb]

        srv.program_claims(ClaimAnswer.conflict("ALREADY_CLAIMED"), ClaimAnswer.no_content(),
                           ClaimAnswer.done())
        claim_url = f"{srv.url}/_electric/runners/r%201/claim"
        answers: list[tuple[int, Any]] = []
        for _ in range(4):
            async with http.post(claim_url, json=event) as resp:
                answers.append((resp.status, await resp.json() if resp.status != 204 else None))
        assert answers[0][0] == 409 and answers[0][1]["error"]["code"] == "ALREADY_CLAIMED"
        assert answers[1] == (204, None)
        assert answers[2] == (200, {"done": True})
        assert answers[3][0] == 200 and answers[3][1]["streamPath"] == "/chat/one/main"
        assert srv.claims("r 1") == [event] * 4
        recorded = srv.requests_matching("/claim")[0]
        assert recorded.path == "/t/acme/_electric/runners/r%201/claim"
        assert recorded.headers["Content-Type"] == "application/json"


@pytest.mark.timeout(20)
async def test_real_server_start_failure_reports_node_stderr(real_ds_server: RealServer) -> None:
    from pullwake.testing.realserver import RealServerError

    clash = RealServer(port=real_ds_server.port, start_timeout=10)
    with pytest.raises(RealServerError, match="EADDRINUSE"):
        await clash.start()
    assert not clash.running
