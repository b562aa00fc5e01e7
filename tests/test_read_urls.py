"""A read's URL is built from the stream URL's cached parts, never parsed; it must be
the very URL that parsing the whole string gave (``AsyncShell.open``'s short cut).

Checked on the pure function for any query the read core can send (Hypothesis),
and on the wire: a real aiohttp server on 127.0.0.1 (port 0) records the request
target each read sends, for a stream URL with percent-encoded path segments and
one that carries a query of its own (which takes the general path).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from runner_helpers import raw_server
from yarl import URL

from pullwake.io.areader import AsyncShell, _request_url
from pullwake.io.clock import LoopClock
from pullwake.io.http import make_session
from pullwake.protocol import ReadCore
from pullwake.protocol.read import Request

pytestmark = pytest.mark.timeout(60)

BASES = [
    "http://127.0.0.1:1/v1/stream/a%2Fb/c",
    "https://u:p@[::1]:8443/x/%E2%82%AC/y",
    "http://example.test/a/../b/./c",
    "http://127.0.0.1:1",
    "http://127.0.0.1:1/s?tenant=t%201",  # a query of its own: the general path
    "http://127.0.0.1:1/s#frag",
]

values = st.text(st.characters(codec="utf-8"), max_size=12)
params = st.lists(st.tuples(st.sampled_from(["offset", "live", "cursor", "tenant"]), values),
                  min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(BASES), params=params)
def test_a_read_url_is_the_url_its_whole_string_parses_to(
        base: str, params: list[tuple[str, str]]) -> None:
    req = Request(tuple(params), (), "catch-up")
    parsed = URL(req.url(base), encoded=True)
    built = _request_url(base, req)
    assert str(built) == str(parsed)
    assert built.raw_path_qs == parsed.raw_path_qs
    assert (built.scheme, built.raw_host, built.port, built.raw_user, built.raw_password) == (
        parsed.scheme, parsed.raw_host, parsed.port, parsed.raw_user, parsed.raw_password)


@pytest.fixture
async def targets() -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def stream(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(body=b"[1]", content_type="application/json",
                            headers={"Stream-Next-Offset": "0_9", "Stream-Up-To-Date": "true"})

    async with raw_server({("GET", "/{tail:.*}"): stream}) as root:
        yield root, seen


@pytest.mark.parametrize("path", ["/v1/stream/a%2Fb/%E2%82%AC", "/s?tenant=t%201&x=%2F"])
async def test_a_read_sends_the_target_the_stream_url_and_its_query_make(
        targets: tuple[str, list[str]], path: str) -> None:
    root, seen = targets
    url = root + path
    core = ReadCore(offset="0_1", live="catch-up", url=url,
                    extra_params=(("tag", "a b/ü&=%"),))
    expected = "/" + core.request().url(url).split("/", 3)[3]
    async with make_session() as session:
        shell = AsyncShell(session, url, core, clock=LoopClock())
        values = [v for ev in await _all(shell) for v in getattr(ev, "values", ())]
    assert values == [1]
    assert seen == [expected]
    assert "tag=a%20b%2F%C3%BC%26%3D%25" in seen[0]


async def _all(shell: AsyncShell) -> list[object]:
    return [ev async for ev in shell.events()]
