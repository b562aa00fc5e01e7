"""The stores behind the fetch cache: requests-cache's own backends, bounded and safe.

This module owns the two stores :mod:`pullwake.io.cache` puts behind its layer:
requests-cache's ``DictStorage`` bounded by bytes (least recently used out,
a running total so an insert costs the same however full it is), and its
``SQLiteCache`` in WAL mode with its JSON serializer. Both sit behind
:class:`_Safe`, which overrides the methods requests-cache documents for
custom backends so that a failing store gives misses (one warning, retried
after :data:`STORE_RETRY_AFTER_S`) and what is stored never holds
``Stream-Up-To-Date``, credentials or cookies. :func:`open_store` probes a
SQLite file first, so a bad one is a :class:`~pullwake.errors.CacheError`
at install, never at a read. No requests are made here.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from requests.cookies import RequestsCookieJar
from requests.structures import CaseInsensitiveDict
from requests_cache.backends.base import BaseCache, DictStorage
from requests_cache.backends.sqlite import SQLiteCache
from requests_cache.models.response import CachedResponse

from pullwake.errors import CacheError
from pullwake.protocol.caching import MOMENT_HEADERS, is_credential, redact_url

__all__ = ["STORE_RETRY_AFTER_S", "CacheSettings", "default_sqlite_path", "open_store"]

logger = logging.getLogger("pullwake.cache")

STORE_RETRY_AFTER_S = 5.0  #: a failed store is bypassed this long before it is tried again


class CacheSettings(Protocol):
    """What the stores and the session layer read of a fetch-cache choice.

    :class:`pullwake.io.fetchcache.FetchCache` is the one implementation; it is
    named structurally here because ``FetchCache.session()`` builds a session
    through these modules, which therefore must not import it.
    """

    @property
    def store(self) -> str: ...
    @property
    def path(self) -> Path | None: ...
    @property
    def expire_after(self) -> float | None: ...
    @property
    def auth_headers(self) -> tuple[str, ...]: ...
    @property
    def max_entry_bytes(self) -> int: ...
    @property
    def max_memory_bytes(self) -> int: ...
    @property
    def lock_timeout(self) -> float: ...


class _MemoryStorage(DictStorage):
    """requests-cache's memory storage, bounded: least recently used chunks go first."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.max_bytes, self.total, self._sizes = max_bytes, 0, dict[str, int]()
        self._lock = threading.Lock()

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            self.data[key] = self.data.pop(key)  # KeyError on a miss; most recent last
        return super().__getitem__(key)  # type: ignore[no-untyped-call]

    def __setitem__(self, key: str, value: Any) -> None:
        with self._lock:
            self._drop(key)
            self.data[key] = value
            self._sizes[key] = size = len(getattr(value, "content", b"") or b"")
            self.total += size
            while self.total > self.max_bytes and len(self.data) > 1:
                self._drop(next(iter(self.data)))  # the least recently used

    def __delitem__(self, key: str) -> None:
        with self._lock:
            if key not in self.data:
                raise KeyError(key)
            self._drop(key)

    def _drop(self, key: str) -> None:
        self.data.pop(key, None)
        self.total -= self._sizes.pop(key, 0)


class _Safe:
    """Backend failures become misses (one warning), never a failed request.

    Overrides ``get_response``/``save_response``/``delete``, the methods
    requests-cache documents for custom backends: a locked or corrupted SQLite
    file must not fail reads the server can answer.
    """

    _failed_at: float | None = None
    _extra: frozenset[str] = frozenset()

    @property
    def degraded(self) -> bool:
        return self._failed_at is not None

    def _usable(self) -> bool:
        failed = self._failed_at
        return failed is None or time.monotonic() - failed >= STORE_RETRY_AFTER_S

    def _fail(self, operation: str, exc: BaseException) -> None:
        if self._failed_at is None:
            logger.warning("fetch cache: the SQLite store failed on %s (%s: %s); reading "
                           "uncached for %.3g s", operation, type(exc).__name__, exc,
                           STORE_RETRY_AFTER_S)
        self._failed_at = time.monotonic()

    def get_response(self, key: str, default: Any = None) -> Any:
        if self._usable():
            try:
                return super().get_response(key, default)  # type: ignore[misc]
            except (sqlite3.Error, OSError) as exc:
                self._fail("read", exc)
        return default

    def save_response(self, response: Any, cache_key: str | None = None,
                      expires: Any = None) -> None:
        """``BaseCache.save_response`` minus the tail flag and credentials (and redirect
        aliases: pullwake's reads never follow redirects)."""
        if not self._usable():
            return
        base: Any = self
        cached = CachedResponse.from_response(response, expires=expires)
        cached.headers = CaseInsensitiveDict(cached.headers)  # a copy: the caller keeps its own
        for name in MOMENT_HEADERS:
            cached.headers.pop(name, None)
        cached.request.headers = CaseInsensitiveDict(
            {k: v for k, v in cached.request.headers.items() if not is_credential(k, self._extra)})
        cached.request.cookies, cached.cookies = RequestsCookieJar(), RequestsCookieJar()
        cached.url, cached.request.url = redact_url(cached.url), redact_url(cached.request.url)
        try:
            base.responses[cache_key or base.create_key(response.request)] = cached
        except (sqlite3.Error, OSError) as exc:
            self._fail("write", exc)
            return
        self._failed_at = None

    def delete(self, *keys: str, **kwargs: Any) -> None:
        if not self._usable():
            return
        try:  # a filtered-out answer deletes its key: look first, so a miss writes nothing
            present = [k for k in keys if k in self.responses]  # type: ignore[attr-defined]
            if present or kwargs:
                super().delete(*present, **kwargs)  # type: ignore[misc]
        except (sqlite3.Error, OSError) as exc:
            self._fail("delete", exc)


class _MemoryCache(_Safe, BaseCache):
    def __init__(self, config: CacheSettings, extra: frozenset[str]) -> None:
        super().__init__(cache_name="memory")
        self.responses, self._extra = _MemoryStorage(config.max_memory_bytes), extra


class _SQLiteCache(_Safe, SQLiteCache):
    def __init__(self, config: CacheSettings, path: Path, extra: frozenset[str]) -> None:
        # WAL: readers never wait on a writer (or on another process's write lock).
        # requests-cache's JSON serializer, not its default pickle: a cache file is
        # shared between processes, and unpickling a tampered one would run its code.
        # Bodies stay raw (decode_content=False): measured on 1 MiB hits, pickle 29 ms,
        # JSON with bodies decoded 43 ms, JSON with raw bodies 37 ms.
        super().__init__(db_path=path, wal=True, timeout=config.lock_timeout,
                         serializer="json", decode_content=False)
        self._extra = extra
        for table in (self.responses, self.redirects):
            table._acquire_sqlite_lock = _bounded_write_lock(table)  # type: ignore[method-assign]


def _bounded_write_lock(table: Any) -> Any:
    """The one private override, for a measured defect: requests-cache's ``SQLiteDict``
    retries ``BEGIN IMMEDIATE`` forever while another connection holds the write lock,
    so one stuck process hung every read here. This tries once, waiting up to the
    busy timeout (``lock_timeout``), then raises: a miss, handled by :class:`_Safe`."""

    @contextmanager
    def acquire() -> Iterator[None]:
        with table._lock:
            table._connection.execute("BEGIN IMMEDIATE")
            table._active_transaction = True
            try:
                yield
                table._connection.commit()
            except BaseException:
                table._connection.rollback()
                raise
            finally:
                table._active_transaction = False

    return acquire


def default_sqlite_path() -> Path:
    """Where ``store="sqlite"`` keeps its file when no ``path`` is given."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "pullwake" / "fetch-cache.sqlite"


def open_store(config: CacheSettings) -> Any:
    """Open (and probe) the store named by ``config``; any failure is a :class:`CacheError`."""
    extra = frozenset(h.lower() for h in config.auth_headers)
    if config.store == "memory":
        return _MemoryCache(config, extra)
    path = config.path or default_sqlite_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"fetch cache: cannot create the directory for SQLite file {path} "
                         f"({type(exc).__name__}: {exc.strerror or exc}); choose another path"
                         ) from exc
    try:  # probe on a connection of its own: a locked, corrupt or unopenable file fails here
        probe = sqlite3.connect(path, timeout=config.lock_timeout)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("PRAGMA schema_version")
        finally:
            probe.close()
        return _SQLiteCache(config, path, extra)
    except sqlite3.Error as exc:
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            problem = (f"SQLite file {path} stayed locked by another connection for more than "
                       f"{config.lock_timeout:g} s; try again later or use another path")
        elif "not a database" in text or "malformed" in text:
            problem = f"{path} is not a usable SQLite database ({exc}); delete it or choose another"
        else:
            problem = (f"cannot open SQLite file {path} ({type(exc).__name__}: {exc}); check "
                       "that the directory exists and is writable")
        raise CacheError(f"fetch cache: {problem}") from exc
