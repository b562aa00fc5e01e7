"""What a control-plane request puts on the wire (``HttpClient.request``).

A JSON body goes as compact JSON typed ``application/json`` by its payload, a
configured ``Content-Type`` still wins, and a request with neither configured
nor per-request headers sends no body and no JSON type. A real aiohttp
server on 127.0.0.1 (port 0) records each request's headers and body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from runner_helpers import raw_server

from pullwake.io.clock import LoopClock
from pullwake.io.http import HttpClient

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def seen() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    async def record(request: web.Request) -> web.Response:
        got.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return web.json_response({"ok": True})

    async with raw_server({("POST", "/{tail:.*}"): record}) as root:
        yield root, got


async def _post(root: str, body: Any, *, configured: Any = None,
                headers: dict[str, str] | None = None) -> None:
    http = HttpClient(headers=configured, clock=LoopClock(), request_timeout=5.0)
    try:
        answer = await http.request("POST", f"{root}/claim", operation="claim", json_body=body,
                                    headers=headers)
        assert answer.status == 200 and answer.json() == {"ok": True}
    finally:
        await http.close()


async def test_a_json_body_is_compact_json_typed_application_json(seen: Any) -> None:
    root, got = seen
    await _post(root, {"worker": "w1", "acks": [{"stream": "a/b", "offset": "0_1"}]})
    headers, body = got[0]
    assert body == b'{"worker":"w1","acks":[{"stream":"a/b","offset":"0_1"}]}'
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))
    assert "authorization" not in headers


async def test_a_configured_content_type_wins_and_request_headers_are_sent(seen: Any) -> None:
    root, got = seen
    await _post(root, {"a": 1}, configured={"Content-Type": "application/json; charset=utf-8",
                                            "X-Tenant": "t1"},
                headers={"Authorization": "Bearer tok-0123456789"})
    headers, body = got[0]
    assert json.loads(body) == {"a": 1}
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert headers["x-tenant"] == "t1"
    assert headers["authorization"] == "Bearer tok-0123456789"


async def test_a_request_without_a_body_sends_none(seen: Any) -> None:
    root, got = seen
    await _post(root, None)
    headers, body = got[0]
    assert body == b""
    assert headers.get("content-length", "0") == "0"
    assert headers.get("content-type") != "application/json"
