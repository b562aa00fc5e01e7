"""Tests for :mod:`pullwake.io.cache`, the fetch cache for catch-up reads.

Rules for this module: servers are on 127.0.0.1 with port 0 and real sockets
(:class:`FakeStreamServer` from ``test_reader.py`` counts requests
server-side, which is how a cache hit is proven); every test has a hard
timeout; an autouse fixture uninstalls the cache and restores
``requests.Session`` so no test leaks global state into another. The
reference-server tests come last and use the ``real_ds_server`` fixture.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pickle
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import requests.sessions
import requests_cache
from aiohttp import web
from test_reader import FakeStreamServer, offset_of

import pullwake.io.cache as cache_mod
import pullwake.io.cache_stores as stores_mod
from pullwake.errors import CacheError, ConfigError
from pullwake.io.cache import (
    FetchCacheWarning,
    cached_session,
    fetch_cache_info,
    fetch_cache_installed,
    install_fetch_cache,
    is_cacheable_response,
    uninstall_fetch_cache,
)
from pullwake.io.cache_layers import layers_in
from pullwake.io.reader import read_stream

ORIGINAL_SESSION = requests.Session
ORIGINAL_MODULE_SESSION = requests.sessions.Session


def layers() -> int:
    """pullwake cache layers currently composed into requests.Session."""
    return layers_in(requests.sessions.Session)


def open_handles(path: Path) -> int:
    """How many file descriptors of this process point at ``path``."""
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.path.realpath(f"/proc/self/fd/{fd}") == target:
                count += 1
        except OSError:
            continue
    return count


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")


@pytest.fixture
def per_store(tmp_path: Path) -> int:
    """File handles one open SQLite store holds (requests-cache's own count: a
    connection per table). Tests assert handles never grow past one store's."""
    probe = tmp_path / "probe" / "handles.sqlite"
    with cached_session("sqlite", probe):
        n = open_handles(probe)
    assert n >= 1 and open_handles(probe) == 0
    return n


@pytest.fixture(autouse=True)
def clean_global_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Depends on monkeypatch so that uninstall runs before monkeypatch undoes patches.
    uninstall_fetch_cache()
    yield
    uninstall_fetch_cache()
    requests.Session = ORIGINAL_SESSION  # type: ignore[misc]
    requests.sessions.Session = ORIGINAL_MODULE_SESSION  # type: ignore[misc]


@pytest.fixture
def fake() -> Iterator[FakeStreamServer]:
    server = FakeStreamServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "fetch.sqlite"


def install_quietly(*args: Any, **kwargs: Any) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FetchCacheWarning)
        return install_fetch_cache(*args, **kwargs)


# ------------------------------------------------------------------ install / guard


@pytest.mark.timeout(20)
def test_install_is_idempotent_and_the_second_call_warns_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert fetch_cache_installed() is False
    assert install_fetch_cache() is True
    layer = requests.Session
    with caplog.at_level(logging.WARNING, logger="pullwake.cache"):
        with pytest.warns(FetchCacheWarning, match="already installed"):
            assert install_fetch_cache() is False
        with pytest.warns(FetchCacheWarning, match="different settings are ignored"):
            assert install_fetch_cache("memory", expire_after=1) is False

    assert requests.Session is layer and requests.sessions.Session is layer
    assert layers() == 1
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    info = fetch_cache_info()
    assert info is not None and info.layers == 1 and info.expire_after_s == 300.0


@pytest.mark.timeout(20)
def test_uninstall_restores_exactly_the_previous_class() -> None:
    assert uninstall_fetch_cache() is False
    install_fetch_cache()
    assert requests.Session is not ORIGINAL_SESSION
    assert uninstall_fetch_cache() is True
    assert requests.Session is ORIGINAL_SESSION
    assert requests.sessions.Session is ORIGINAL_MODULE_SESSION
    assert uninstall_fetch_cache() is False
    assert fetch_cache_info() is None


@pytest.mark.timeout(30)
def test_install_from_eight_threads_at_once_installs_one_layer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    barrier = threading.Barrier(8)
    results: list[bool] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait(5)
            results.append(install_fetch_cache("memory"))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    with (
        caplog.at_level(logging.WARNING, logger="pullwake.cache"),
        warnings.catch_warnings(record=True) as seen,
    ):
        warnings.simplefilter("always")
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)

    assert errors == []
    assert sorted(results) == [False] * 7 + [True]
    assert layers() == 1
    assert sum(issubclass(w.category, FetchCacheWarning) for w in seen) == 7
    assert sum("already installed" in r.getMessage() for r in caplog.records) == 7


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::pullwake.io.cache.FetchCacheWarning")
def test_install_and_uninstall_churn_from_threads_never_stacks(fake: FakeStreamServer) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})
    seen_layers: list[int] = []
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for i in range(30):
                if i % 2:
                    uninstall_fetch_cache()
                else:
                    install_fetch_cache("memory")  # catch_warnings is not thread-safe
                seen_layers.append(layers())
                assert read_stream(url).messages == ({"n": 1},)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)

    assert errors == []
    assert max(seen_layers) == 1
    uninstall_fetch_cache()
    assert requests.Session is ORIGINAL_SESSION and layers() == 0


@pytest.mark.timeout(20)
def test_a_failed_open_leaves_nothing_behind_and_can_be_retried(
    monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    real_open = cache_mod.open_store
    calls = 0

    def flaky(config: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise CacheError("disk hiccup")
        return real_open(config)

    monkeypatch.setattr(cache_mod, "open_store", flaky)
    with pytest.raises(CacheError, match="disk hiccup"):
        install_fetch_cache("sqlite", db)
    assert fetch_cache_installed() is False and requests.Session is ORIGINAL_SESSION

    with warnings.catch_warnings():
        warnings.simplefilter("error", FetchCacheWarning)  # the retry must not warn
        assert install_fetch_cache("sqlite", db) is True
    assert layers() == 1


@needs_proc
@pytest.mark.timeout(20)
def test_a_failure_half_way_through_patching_is_rolled_back(
    monkeypatch: pytest.MonkeyPatch, db: Path, per_store: int
) -> None:
    class Exploding:
        Session = requests.Session

        def __setattr__(self, name: str, value: Any) -> None:
            raise RuntimeError("cannot patch this one")

    monkeypatch.setattr(
        cache_mod, "_TARGETS", (*cache_mod._TARGETS, (Exploding(), "Session", "exploding"))
    )
    with pytest.raises(RuntimeError, match="cannot patch"):
        install_fetch_cache("sqlite", db)

    assert requests.Session is ORIGINAL_SESSION
    assert requests.sessions.Session is ORIGINAL_MODULE_SESSION
    assert fetch_cache_installed() is False
    assert open_handles(db) == 0

    monkeypatch.undo()
    assert install_fetch_cache("sqlite", db) is True
    assert layers() == 1 and open_handles(db) == per_store


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("disk",), {}),
        (("memory", "/tmp/x.sqlite"), {}),
        (("sqlite", ""), {}),
        ((), {"expire_after": -1}),
        ((), {"expire_after": float("inf")}),
        ((), {"expire_after": "300"}),
        ((), {"auth_headers": "Authorization"}),
        ((), {"auth_headers": ["bad header"]}),
        ((), {"max_entry_bytes": 0}),
        ((), {"max_memory_bytes": -5}),
        ((), {"lock_timeout": 0}),
    ],
)
def test_bad_arguments_are_config_errors_and_install_nothing(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError):
        install_fetch_cache(*args, **kwargs)
    assert fetch_cache_installed() is False


@needs_proc
@pytest.mark.timeout(60)
def test_a_hundred_worker_restarts_leave_one_layer_and_one_open_file(
    fake: FakeStreamServer, db: Path, per_store: int
) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})
    outcomes = []
    for _ in range(100):  # what a worker does on each start, then stop
        outcomes.append(install_quietly("sqlite", db))
        with requests.Session() as session:
            assert read_stream(url, session=session).messages == ({"n": 1},)
        assert layers() == 1
        assert open_handles(db) == per_store

    assert outcomes.count(True) == 1
    assert fake.count(offset="-1") == 1  # every later start read the chunk from the cache


@needs_proc
@pytest.mark.timeout(60)
def test_a_hundred_install_uninstall_cycles_open_and_release_one_handle(
    fake: FakeStreamServer, db: Path, per_store: int
) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})
    for _ in range(100):
        assert install_fetch_cache("sqlite", db) is True
        assert read_stream(url).messages == ({"n": 1},)
        assert layers() == 1 and open_handles(db) == per_store
        assert uninstall_fetch_cache() is True
        assert layers() == 0 and open_handles(db) == 0
    assert fake.count(offset="-1") == 1  # the SQLite file kept the chunk across installs


@needs_proc
@pytest.mark.timeout(30)
def test_scoped_sessions_restarted_a_hundred_times_hold_at_most_one_handle(
    fake: FakeStreamServer, db: Path, per_store: int
) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})
    for _ in range(100):
        with cached_session("sqlite", db) as session:
            read_stream(url, session=session)
            assert open_handles(db) == per_store
        assert open_handles(db) == 0
    assert requests.Session is ORIGINAL_SESSION


# ----------------------------------------------------------- what was there before


@pytest.mark.timeout(20)
def test_a_session_class_installed_before_keeps_working(
    fake: FakeStreamServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})
    adapter_sends: list[str] = []

    class CountingAdapter(requests.adapters.HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            adapter_sends.append(request.url)
            return super().send(request, *args, **kwargs)

    class AuthSession(ORIGINAL_SESSION):
        def __init__(self) -> None:
            super().__init__()
            self.headers["Authorization"] = "Bearer from-auth-layer"
            self.mount("http://", CountingAdapter())

        def get(self, url: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("headers", {"X-Default": "yes"})
            return super().get(url, **kwargs)

    monkeypatch.setattr(requests, "Session", AuthSession)
    monkeypatch.setattr(requests.sessions, "Session", AuthSession)
    install_fetch_cache()

    assert issubclass(requests.Session, AuthSession)
    first = read_stream(url)
    second = read_stream(url)
    with requests.Session() as plain:
        direct = plain.get(url, params={"offset": "now"}, timeout=5)

    assert first.messages == second.messages == ({"n": 1},)
    assert second.cached_responses == 1
    assert fake.count(authorization="Bearer from-auth-layer") == fake.count() == 3
    assert len(adapter_sends) == 3  # the cache hit never reached the adapter
    assert direct.status_code == 200
    assert fake.hits[-1].headers.get("X-Default") == "yes"  # its own get() still runs

    uninstall_fetch_cache()
    assert requests.Session is AuthSession and requests.sessions.Session is AuthSession


@pytest.mark.timeout(20)
def test_sessions_made_before_the_install_still_read_uncached(fake: FakeStreamServer) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})
    with requests.Session() as before:
        install_fetch_cache()
        for _ in range(2):
            assert read_stream(url, session=before).cached_responses == 0
    assert fake.count(offset="-1") == 2


@pytest.mark.timeout(20)
def test_a_foreign_requests_cache_install_is_not_stacked_on() -> None:
    requests_cache.install_cache(backend="memory")
    try:
        with pytest.raises(CacheError, match="not stack"):
            install_fetch_cache()
        assert fetch_cache_installed() is False
        with cached_session() as session:  # the scoped cache composes on what it wraps
            assert layers_in(type(session)) == 1
            assert not isinstance(session, requests_cache.CachedSession)
    finally:
        requests_cache.uninstall_cache()  # type: ignore[no-untyped-call]


@pytest.mark.timeout(20)
def test_a_layered_session_refuses_pickling_like_requests_cache_does() -> None:
    """Stock requests-cache refuses to pickle a cached session (its store holds live
    connections); the layer keeps that rule rather than overriding it."""
    install_fetch_cache()
    with pytest.raises(NotImplementedError, match="cannot be pickled"):
        pickle.dumps(requests.Session())


# ------------------------------------------------------------------ what is cached


@pytest.mark.timeout(20)
def test_reads_at_the_tail_always_see_data_appended_since(fake: FakeStreamServer) -> None:
    install_fetch_cache()
    url = fake.create("a")
    fake.append("a", {"n": 1}, {"n": 2})

    first = read_stream(url)
    fake.append("a", {"n": 3})
    second = read_stream(url)
    at_tail = read_stream(url, second.next_offset)
    fake.append("a", {"n": 4})
    third = read_stream(url)

    assert [m["n"] for m in first.messages] == [1, 2]
    assert [m["n"] for m in second.messages] == [1, 2, 3]
    assert at_tail.messages == () and at_tail.up_to_date
    assert [m["n"] for m in third.messages] == [1, 2, 3, 4]
    assert third.up_to_date is True
    assert fake.count(offset="-1") == 1  # the first chunk was read from the server once
    assert fake.count(offset=offset_of(2)) == 1
    assert fake.count(offset=offset_of(3)) == 2  # empty at the tail: never cached


@pytest.mark.timeout(20)
def test_a_cached_chunk_never_claims_to_be_up_to_date(fake: FakeStreamServer) -> None:
    install_fetch_cache()
    url = fake.create("a")
    fake.append("a", {"n": 1})

    fresh = requests.get(url, params={"offset": "-1"}, timeout=5)
    again = requests.get(url, params={"offset": "-1"}, timeout=5)

    assert fresh.headers["Stream-Up-To-Date"] == "true"
    assert getattr(fresh, "from_cache", None) is False
    assert getattr(again, "from_cache", None) is True
    assert "Stream-Up-To-Date" not in again.headers
    assert again.json() == [{"n": 1}]


@pytest.mark.timeout(20)
def test_live_reads_now_reads_errors_and_other_traffic_are_never_cached(
    fake: FakeStreamServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fetch_cache()
    url = fake.create("a")
    fake.append("a", {"n": 1})

    async def plain_api(request: web.Request) -> web.StreamResponse | None:
        if request.match_info["name"] == "other":
            return web.json_response([{"page": 1}])
        return None

    fake.override = plain_api
    lookups: list[str] = []
    real_lookup = stores_mod._MemoryStorage.__getitem__

    def counting_lookup(self: Any, key: str) -> Any:
        lookups.append(key)
        return real_lookup(self, key)

    monkeypatch.setattr(stores_mod._MemoryStorage, "__getitem__", counting_lookup)
    for _ in range(2):
        requests.get(url, params={"offset": offset_of(0), "live": "long-poll"}, timeout=5)
        requests.get(url, params={"offset": "now"}, timeout=5)
        requests.get(fake.url("missing"), params={"offset": "-1"}, timeout=5)
        requests.get(fake.url("other"), params={"offset": "10"}, timeout=5)
        requests.post(url, json={"n": 2}, timeout=5)
    info = fetch_cache_info()

    assert info is not None and info.entries == 0
    # Only the GETs shaped like catch-up reads ("missing", "other") consulted the store;
    # live, offset=now and POST requests went straight through.
    assert len(lookups) == 4
    assert fake.count(live="long-poll") == 2
    assert fake.count(offset="now") == 2
    assert fake.count(path="missing") == 2
    assert fake.count(path="other") == 2
    assert fake.count(method="POST") == 2


@pytest.mark.timeout(20)
def test_the_filter_decides_on_headers_and_body() -> None:
    def response(
        url: str, status: int = 200, body: bytes = b"[1]", headers: dict[str, str] | None = None
    ) -> requests.Response:
        r = requests.Response()
        r.status_code = status
        r._content = body
        r.headers.update({"Stream-Next-Offset": offset_of(5), **(headers or {})})
        r.request = requests.Request("GET", url).prepare()
        return r

    base = "http://127.0.0.1:1/v1/stream/a"
    assert is_cacheable_response(response(base + "?offset=-1"))
    assert is_cacheable_response(response(base + "?offset=" + offset_of(1)))
    assert not is_cacheable_response(response(base + "?offset=-1", body=b" [] "))
    assert not is_cacheable_response(response(base + "?offset=-1", body=b""))
    assert not is_cacheable_response(response(base + "?offset=" + offset_of(5)))
    assert not is_cacheable_response(response(base + "?offset=now"))
    assert not is_cacheable_response(response(base + "?offset=-1&live=long-poll"))
    assert not is_cacheable_response(response(base))
    assert not is_cacheable_response(response(base + "?offset=-1", status=206))
    assert not is_cacheable_response(response(base + "?offset=-1", headers={"Set-Cookie": "a=b"}))
    assert not is_cacheable_response(
        response(base + "?offset=-1", headers={"Cache-Control": "private, no-store"})
    )
    assert not is_cacheable_response(response(base + "?offset=-1", body=b"[1]" * 50), 100)


# ------------------------------------------------------------------ isolation


@pytest.mark.timeout(20)
def test_one_credentials_chunk_is_never_served_to_another(fake: FakeStreamServer) -> None:
    install_fetch_cache()
    url = fake.create("t", tenant=True)
    fake.append("t", {"n": 1}, {"n": 2})

    a1 = read_stream(url, headers={"Authorization": "Bearer tenant-A"})
    b1 = read_stream(url, headers={"Authorization": "Bearer tenant-B"})
    anonymous = read_stream(url)
    a2 = read_stream(url, headers={"Authorization": "Bearer tenant-A"})

    assert {m["tenant"] for m in a1.messages} == {"Bearer tenant-A"}
    assert {m["tenant"] for m in b1.messages} == {"Bearer tenant-B"}
    assert {m["tenant"] for m in anonymous.messages} == {"anonymous"}
    assert a2.messages == a1.messages and a2.cached_responses == 1
    assert fake.count(offset="-1", authorization="Bearer tenant-A") == 1
    assert fake.count(offset="-1", authorization="Bearer tenant-B") == 1


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("header", "configured"),
    [("X-Api-Key", False), ("X-Tenant-Id", False), ("X-Session-Token", False), ("X-Org", True)],
)
def test_credential_headers_join_the_key(
    fake: FakeStreamServer, header: str, configured: bool
) -> None:
    install_fetch_cache(auth_headers=[header] if configured else [])
    url = fake.create("a")
    fake.append("a", {"n": 1})

    for value in ("one", "two", "one"):
        read_stream(url, headers={header: value})

    seen = [h.headers.get(header) for h in fake.hits if h.offset == "-1"]
    assert seen == ["one", "two"]


@pytest.mark.timeout(20)
def test_a_header_that_is_not_a_credential_is_shared_unless_configured(
    fake: FakeStreamServer,
) -> None:
    install_fetch_cache()
    url = fake.create("a")
    fake.append("a", {"n": 1})
    read_stream(url, headers={"X-Org": "one"})
    read_stream(url, headers={"X-Org": "two"})
    assert fake.count(offset="-1") == 1  # so auth_headers=["X-Org"] exists


@pytest.mark.timeout(20)
def test_cookies_and_query_tokens_join_the_key(fake: FakeStreamServer) -> None:
    install_fetch_cache()
    url = fake.create("a")
    fake.append("a", {"n": 1})

    for sid in ("s1", "s2", "s1"):
        with requests.Session() as session:
            session.cookies.set("sid", sid)
            read_stream(url, session=session)
    for token in ("q1", "q2", "q1"):
        read_stream(f"{url}?token={token}")

    # The first read after the corruption may still come from SQLite's page
    # cache (the bytes are immutable, so that is correct); the rest go uncached.
    assert fake.count(offset="-1") >= 3


@pytest.mark.timeout(20)
def test_credentials_are_not_written_to_the_sqlite_file(fake: FakeStreamServer, db: Path) -> None:
    install_fetch_cache("sqlite", db)
    url = fake.create("a")
    fake.append("a", {"n": 1})
    with requests.Session() as session:
        session.cookies.set("sid", "cookie-s3cr3t")
        read_stream(
            f"{url}?access_token=query-s3cr3t",
            session=session,
            headers={"Authorization": "Bearer header-s3cr3t", "X-Api-Key": "key-s3cr3t"},
        )
    uninstall_fetch_cache()

    raw = db.read_bytes()
    for secret in (b"cookie-s3cr3t", b"query-s3cr3t", b"header-s3cr3t", b"key-s3cr3t"):
        assert secret not in raw
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM responses").fetchone()[0] == 1


@pytest.mark.timeout(60)
def test_threads_with_different_credentials_reading_a_growing_stream(
    fake: FakeStreamServer,
) -> None:
    install_fetch_cache("memory")
    url = fake.create("t", tenant=True)
    fake.append("t", {"n": 0})
    errors: list[BaseException] = []
    stop = threading.Event()

    def appender() -> None:
        while not stop.is_set():
            fake.append("t", {"n": 1})
            time.sleep(0.005)

    def reader(token: str) -> None:
        try:
            previous = 0
            for _ in range(25):
                result = read_stream(url, headers={"Authorization": token})
                assert {m["tenant"] for m in result.messages} == {token}
                assert [m["i"] for m in result.messages] == list(range(len(result.messages)))
                assert len(result.messages) >= previous
                previous = len(result.messages)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    growing = threading.Thread(target=appender)
    growing.start()
    threads = [threading.Thread(target=reader, args=(f"Bearer t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    stop.set()
    growing.join(5)

    assert errors == []
    final = read_stream(url, headers={"Authorization": "Bearer t0"})
    assert len(final.messages) == len(fake.streams["t"])


# ------------------------------------------------------------------ revalidation


@pytest.mark.timeout(20)
def test_an_expired_chunk_is_revalidated_with_its_etag(fake: FakeStreamServer) -> None:
    install_fetch_cache(expire_after=0)
    url = fake.create("a")
    fake.append("a", {"n": 1})

    first = read_stream(url)
    second = read_stream(url)

    assert second.messages == first.messages
    revalidations = [h for h in fake.hits if h.offset == "-1" and h.if_none_match]
    assert [h.status for h in revalidations] == [304]
    assert revalidations[0].if_none_match == f'"a:-1:{offset_of(1)}"'

    fake.append("a", {"n": 2})  # the range from -1 changed: its ETag no longer matches
    third = read_stream(url)
    assert [m["n"] for m in third.messages] == [1, 2]
    assert [h.status for h in fake.hits if h.offset == "-1"] == [200, 304, 200]


@pytest.mark.timeout(20)
def test_a_fresh_chunk_is_served_without_asking(fake: FakeStreamServer) -> None:
    install_fetch_cache(expire_after=None)
    url = fake.create("a")
    fake.append("a", {"n": 1})
    for _ in range(5):
        read_stream(url, until=offset_of(1))
    assert fake.count() == 1


# ------------------------------------------------------------------ stores


@pytest.mark.timeout(20)
def test_the_memory_store_is_bounded(fake: FakeStreamServer) -> None:
    install_fetch_cache("memory", max_memory_bytes=4000)
    url = fake.create("a")
    fake.append("a", *({"pad": "x" * 400} for _ in range(6)))
    for i in range(6):
        read_stream(url, offset_of(i), until=offset_of(i + 1))
    info = fetch_cache_info()
    assert info is not None and info.entries >= 1
    stored = cache_mod._installed.state.backend.responses  # type: ignore[union-attr]
    assert sum(len(stored[k].content) for k in list(stored.keys())) <= 4000
    assert info.entries < 6  # the oldest were evicted


@pytest.mark.timeout(20)
def test_responses_over_max_entry_bytes_are_not_stored(fake: FakeStreamServer) -> None:
    install_fetch_cache("memory", max_entry_bytes=100)
    url = fake.create("a")
    fake.append("a", {"pad": "x" * 200})
    read_stream(url)
    read_stream(url)
    assert fake.count(offset="-1") == 2


@pytest.mark.timeout(20)
def test_a_corrupt_sqlite_file_is_a_clear_error_and_nothing_is_installed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(b"this is not a database, just some bytes\n" * 200)

    with pytest.raises(CacheError, match="not a usable SQLite database") as info:
        install_fetch_cache("sqlite", path)

    assert str(path) in str(info.value)
    assert fetch_cache_installed() is False and requests.Session is ORIGINAL_SESSION
    if os.path.isdir("/proc/self/fd"):
        assert open_handles(path) == 0
    assert install_fetch_cache("sqlite", tmp_path / "fresh.sqlite") is True


@pytest.mark.timeout(20)
def test_an_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot create the directory"):
        install_fetch_cache("sqlite", blocker / "sub" / "cache.sqlite")
    (tmp_path / "a-dir.sqlite").mkdir()
    with pytest.raises(CacheError, match="cannot open SQLite file"):
        install_fetch_cache("sqlite", tmp_path / "a-dir.sqlite")
    assert fetch_cache_installed() is False


@pytest.mark.timeout(20)
def test_a_locked_sqlite_file_at_install_is_a_clear_error_within_the_timeout(db: Path) -> None:
    db.parent.mkdir(parents=True)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(CacheError, match="stayed locked by another connection"):
            install_fetch_cache("sqlite", db, lock_timeout=0.2)
        assert time.monotonic() - started < 5
        assert fetch_cache_installed() is False
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert install_fetch_cache("sqlite", db) is True


@pytest.mark.timeout(30)
def test_a_store_locked_after_install_falls_back_to_uncached_reads(
    fake: FakeStreamServer,
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(stores_mod, "STORE_RETRY_AFTER_S", 0.3)
    install_fetch_cache("sqlite", db, lock_timeout=0.2)
    url = fake.create("a")
    fake.append("a", {"n": 1})
    first = read_stream(url)
    fake.append("a", {"n": 2})

    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    try:
        with caplog.at_level(logging.WARNING, logger="pullwake.cache"):
            started = time.monotonic()
            locked = [read_stream(url, first.next_offset) for _ in range(3)]
            elapsed = time.monotonic() - started
            deadline = time.monotonic() + 5  # the background write gives up after 0.2 s
            while not (info := fetch_cache_info()) or not info.degraded:
                assert time.monotonic() < deadline, "the store never reported the lock"
                time.sleep(0.02)
            locked.append(read_stream(url, first.next_offset))
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert all(r.messages == ({"n": 2},) for r in locked)
    assert elapsed < 2  # reads never waited on the lock
    assert sum("SQLite store" in r.getMessage() for r in caplog.records) == 1
    served = fake.count(offset=first.next_offset)
    assert served >= 2  # the entry could not be written: read again from the server

    time.sleep(0.4)  # past the retry window: the store is used again
    read_stream(url, first.next_offset)
    assert read_stream(url, first.next_offset).cached_responses == 1
    assert fake.count(offset=first.next_offset) == served + 1
    # the store is marked healthy once the background writer's write succeeds
    deadline = time.monotonic() + 5
    while (info := fetch_cache_info()) is None or info.degraded:
        assert time.monotonic() < deadline, "the store never became usable again"
        time.sleep(0.02)


@pytest.mark.timeout(30)
def test_a_store_corrupted_after_install_falls_back_to_uncached_reads(
    fake: FakeStreamServer, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    install_fetch_cache("sqlite", db)
    url = fake.create("a")
    fake.append("a", {"n": 1})
    read_stream(url)

    for path in db.parent.iterdir():  # the database and its WAL companions
        with open(path, "r+b") as f:
            f.write(b"garbage!" * 4096)
    # Whether SQLite notices depends on what it still holds in its page cache
    # and WAL index (it may answer with the correct, immutable bytes it cached).
    # The contract: never a crash, never wrong data; once the corruption is
    # noticed, reads go uncached. Keep reading, with new ranges whose writes
    # touch the corrupted file, for a bounded time.
    results = []
    n = 1
    give_up = time.monotonic() + 3
    with caplog.at_level(logging.WARNING, logger="pullwake.cache"):
        while not any(_store_failed(r) for r in caplog.records) and time.monotonic() < give_up:
            n += 1
            fake.append("a", {"n": n})
            results.append(read_stream(url))
            time.sleep(0.02)  # writes happen on the store's background thread
        noticed = any(_store_failed(r) for r in caplog.records)
        before = fake.count(offset="-1")
        after = [read_stream(url) for _ in range(2)]

    assert results, "no read ran after the corruption"
    for i, r in enumerate(results):  # never a crash, never wrong data
        assert r.messages == tuple({"n": k} for k in range(1, i + 3))
    assert all(r.messages == tuple({"n": k} for k in range(1, n + 1)) for r in after)
    if noticed:
        assert fake.count(offset="-1") == before + 2  # degraded: read uncached


def _store_failed(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return "SQLite store" in message and "failed" in message


# ------------------------------------------------------------------ scoped


@needs_proc
@pytest.mark.timeout(20)
def test_cached_session_is_scoped_and_closes_its_store(
    fake: FakeStreamServer, db: Path, per_store: int
) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})

    session = cached_session("sqlite", db)
    assert requests.Session is ORIGINAL_SESSION and fetch_cache_installed() is False
    read_stream(url, session=session)
    again = read_stream(url, session=session)
    assert again.cached_responses == 1 and fake.count(offset="-1") == 1
    assert read_stream(url).cached_responses == 0  # global requests is untouched
    assert open_handles(db) == per_store

    session.close()
    assert open_handles(db) == 0
    assert read_stream(url, session=session).messages == ({"n": 1},)  # usable, uncached
    assert open_handles(db) == 0


@needs_proc
@pytest.mark.timeout(20)
def test_a_forgotten_cached_session_releases_its_file(
    fake: FakeStreamServer, db: Path, monkeypatch: pytest.MonkeyPatch, per_store: int
) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})
    session = cached_session("sqlite", db)
    read_stream(url, session=session)
    assert open_handles(db) == per_store

    del session  # never closed
    deadline = time.monotonic() + 10
    while open_handles(db):
        assert time.monotonic() < deadline, "the SQLite handle of a dropped session leaked"
        gc.collect()
        time.sleep(0.05)


@pytest.mark.timeout(20)
def test_cached_session_next_to_the_global_cache_does_not_stack(fake: FakeStreamServer) -> None:
    install_fetch_cache()
    with cached_session() as session:
        assert layers_in(type(session)) == 1
        assert (
            type(session).__dict__["_pullwake_state"]
            is not (requests.Session.__dict__["_pullwake_state"])
        )


@needs_proc
@pytest.mark.timeout(20)
def test_sessions_alive_at_uninstall_keep_working_without_reopening_the_file(
    fake: FakeStreamServer, db: Path
) -> None:
    url = fake.create("a")
    fake.append("a", {"n": 1})
    install_fetch_cache("sqlite", db)
    session = requests.Session()
    read_stream(url, session=session)

    uninstall_fetch_cache()
    result = read_stream(url, session=session)

    assert result.messages == ({"n": 1},) and result.cached_responses == 0
    assert open_handles(db) == 0
    session.close()


# ------------------------------------------------------------------ reference server


class _Recorder:
    """A session class, installed before the cache, that records network answers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str | None]] = []
        recorder = self

        class Adapter(requests.adapters.HTTPAdapter):
            def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
                response = super().send(request, *args, **kwargs)
                offset = parse_qs(urlsplit(request.url).query).get("offset", [""])[0]
                auth = request.headers.get("Authorization")
                recorder.seen.append((offset, response.status_code, auth))
                return response

        class RecordingSession(ORIGINAL_SESSION):
            def __init__(self) -> None:
                super().__init__()
                self.mount("http://", Adapter())

        self.session_class = RecordingSession


@pytest.mark.timeout(60)
async def test_real_server_growing_stream_with_several_credentials(
    real_ds_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(requests, "Session", recorder.session_class)
    monkeypatch.setattr(requests.sessions, "Session", recorder.session_class)
    assert install_fetch_cache("sqlite", tmp_path / "real.sqlite") is True
    path = "cache/growing"
    await real_ds_server.create_stream(path)
    url = f"{real_ds_server.stream_root}/{path}"
    tokens = ["Bearer A", "Bearer B"]

    for n in range(4):
        await real_ds_server.append(path, {"n": n})
        for token in tokens:
            result = await asyncio.to_thread(read_stream, url, headers={"Authorization": token})
            assert [m["n"] for m in result.messages] == list(range(n + 1))
            assert result.up_to_date is True

    for token in tokens:  # each credential fetched the first chunk from the server once
        assert sum(1 for o, s, a in recorder.seen if o == "-1" and a == token) == 1


@pytest.mark.timeout(60)
async def test_real_server_answers_revalidation_with_304(
    real_ds_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(requests, "Session", recorder.session_class)
    monkeypatch.setattr(requests.sessions, "Session", recorder.session_class)
    install_fetch_cache(expire_after=0)
    path = "cache/revalidate"
    await real_ds_server.create_stream(path)
    await real_ds_server.append(path, [{"n": 1}, {"n": 2}])
    url = f"{real_ds_server.stream_root}/{path}"

    first = await asyncio.to_thread(read_stream, url)
    second = await asyncio.to_thread(read_stream, url)

    assert second.messages == first.messages == ({"n": 1}, {"n": 2})
    assert [s for o, s, _ in recorder.seen if o == "-1"] == [200, 304]


@pytest.mark.timeout(20)
def test_a_foreign_cache_that_kept_the_tail_is_asked_past_for_fresh_data(
    fake: FakeStreamServer,
) -> None:
    """A stock requests-cache session caches every 200, the empty tail answer too; the
    reader never takes such an answer as the truth: it asks the origin (no-cache)."""
    url = fake.create("a")
    fake.append("a", {"n": 1})
    with requests_cache.CachedSession(backend="memory") as stock:
        first = read_stream(url, session=stock)
        again = read_stream(url, first.next_offset, session=stock)  # the tail, cached now
        fake.append("a", {"n": 2})
        later = read_stream(url, first.next_offset, session=stock)
    assert first.messages == ({"n": 1},) and again.messages == ()
    assert later.messages == ({"n": 2},)
    assert any(h.headers.get("Cache-Control") == "no-cache" for h in fake.hits)


@pytest.mark.timeout(20)
def test_the_sqlite_store_holds_json_never_pickle(fake: FakeStreamServer, db: Path) -> None:
    """A cache file may be shared between processes: unpickling a tampered one would run
    its code, so entries are requests-cache's JSON serialization."""
    import json

    install_fetch_cache("sqlite", db)
    url = fake.create("a")
    fake.append("a", {"n": 1})
    read_stream(url)
    uninstall_fetch_cache()
    with sqlite3.connect(db) as con:
        [(value,)] = con.execute("SELECT value FROM responses").fetchall()
    entry = json.loads(value)
    assert entry["status_code"] == 200 and "Stream-Up-To-Date" not in entry["headers"]
