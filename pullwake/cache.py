"""The fetch cache: stock requests-cache for Durable Streams catch-up reads with ``requests``.

Owns what may be cached, under which key, and how the cache is installed; the
caching is requests-cache through public options (``CacheMixin``, ``key_fn``,
``filter_fn``, ``allowable_codes``, ``expire_after``, ``cache_control``,
``autoclose``, its memory and SQLite backends). docs/cache.md gives the rules
(one layer composed onto what was there; a repeat install warns and changes
nothing; only data-bearing catch-up chunks stored; the tail always fresh;
credential-keyed; a failing store gives misses, never a failed request) and
the reasons. It must not import aiohttp or make requests of its own.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
import requests.sessions
from requests.cookies import RequestsCookieJar
from requests.structures import CaseInsensitiveDict
from requests_cache import CacheMixin
from requests_cache.backends.base import BaseCache, DictStorage
from requests_cache.backends.sqlite import SQLiteCache
from requests_cache.models.response import CachedResponse

from .errors import CacheError
from .fetchcache import (
    DEFAULT_EXPIRE_AFTER_S,
    DEFAULT_LOCK_TIMEOUT_S,
    DEFAULT_MAX_ENTRY_BYTES,
    DEFAULT_MAX_MEMORY_BYTES,
    FetchCache,
    Store,
)
from .protocol.caching import (
    MOMENT_HEADERS,
    cache_key,
    is_cacheable,
    is_catchup,
    is_credential,
    redact_url,
)

__all__ = [
    "DEFAULT_EXPIRE_AFTER_S", "DEFAULT_LOCK_TIMEOUT_S", "DEFAULT_MAX_ENTRY_BYTES",
    "DEFAULT_MAX_MEMORY_BYTES", "FetchCache", "FetchCacheInfo", "FetchCacheWarning",
    "cached_session", "default_sqlite_path", "fetch_cache_info", "fetch_cache_installed",
    "install_fetch_cache", "is_cacheable_response", "is_catchup_request",
    "uninstall_fetch_cache",
]

logger = logging.getLogger("pullwake.cache")

STORE_RETRY_AFTER_S = 5.0  #: a failed store is bypassed this long before it is tried again



class FetchCacheWarning(UserWarning):
    """A fetch-cache call was ignored (for example, a second install)."""


@dataclass(frozen=True, kw_only=True)
class FetchCacheInfo:
    """The installed cache; ``degraded``: a failing store is being bypassed;
    ``layers``: pullwake cache layers in ``requests.sessions.Session``'s MRO."""

    store: Store
    path: Path | None
    expire_after_s: float | None
    auth_headers: tuple[str, ...]
    max_entry_bytes: int
    entries: int
    degraded: bool
    layers: int


# --------------------------------------------------------------------------- policy


def is_catchup_request(request: Any) -> bool:
    """A ``GET`` with exactly one ``offset`` (not ``now``) and no ``live``: a catch-up read."""
    return is_catchup(getattr(request, "method", None) or "GET", str(request.url))


def is_cacheable_response(response: Any, max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> bool:
    """A data-bearing catch-up chunk (:func:`pullwake.protocol.caching.is_cacheable`)."""
    request = getattr(response, "request", None)
    return request is not None and is_cacheable(
        request.method or "GET", str(request.url), response.status_code, response.headers,
        response.content or b"", max_entry_bytes)


# --------------------------------------------------------------------------- stores


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
    def __init__(self, config: FetchCache, extra: frozenset[str]) -> None:
        super().__init__(cache_name="memory")
        self.responses, self._extra = _MemoryStorage(config.max_memory_bytes), extra


class _SQLiteCache(_Safe, SQLiteCache):
    def __init__(self, config: FetchCache, path: Path, extra: frozenset[str]) -> None:
        # WAL: readers never wait on a writer (or on another process's write lock).
        # requests-cache's JSON serializer, not its default pickle: a cache file is
        # shared between processes, and unpickling a tampered one would run its code.
        super().__init__(db_path=path, wal=True, timeout=config.lock_timeout,
                         serializer="json")
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


def _open_backend(config: FetchCache) -> Any:
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


def _settings(config: FetchCache) -> dict[str, Any]:
    """The requests-cache options of every layer (all public ``CacheMixin`` arguments)."""
    seconds, limit = config.expire_after, config.max_entry_bytes
    extra = frozenset(h.lower() for h in config.auth_headers)
    return {
        # None: NEVER_EXPIRE (-1); 0: EXPIRE_IMMEDIATELY (store, revalidate every time)
        "expire_after": -1 if seconds is None else (0 if seconds == 0 else timedelta(
            seconds=seconds)),
        "cache_control": True, "allowable_codes": (200,), "allowable_methods": ("GET",),
        "match_headers": False,
        "key_fn": lambda request, **_: cache_key(request.method or "GET", str(request.url),
                                                 request.headers or {}, extra),
        "filter_fn": lambda response: is_cacheable_response(response, limit),
    }


# ------------------------------------------------------------------- session layer


class _State:
    def __init__(self, backend: Any, config: FetchCache) -> None:
        self.backend, self.config, self.active = backend, config, True

    def close(self) -> None:
        self.active = False
        self.backend.close()


def _layer(previous: type[Any], state: _State, *, scoped: bool) -> type[Any]:
    """``CacheMixin`` composed onto ``previous`` (its ``__init__``, verbs, adapters and
    hooks keep working), on ``state.backend``, shared by every session of the layer."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        CacheMixin.__init__(self, backend=state.backend, autoclose=scoped,
                            **_settings(state.config), **kwargs)

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        # Only catch-up reads meet the cache; live reads and the rest go straight by
        # (no key, no lookup), as everything does once uninstalled.
        if state.active and is_catchup_request(request):
            return CacheMixin.send(self, request, **kwargs)
        return previous.send(self, request, **kwargs)

    def close(self: Any) -> None:
        previous.close(self)
        if scoped and state.active:
            state.close()

    ns: dict[str, Any] = {"__init__": __init__, "send": send, "close": close,
                          "__module__": __name__,
                          "_pullwake_state": state, "_pullwake_previous": previous}
    for name in ("get", "options", "head", "post", "put", "patch", "delete", "request",
                 "__repr__"):  # CacheMixin redefines these; keep the previous class's own
        ns[name] = getattr(previous, name)
    return type("PullwakeCachedSession", (CacheMixin, previous), ns)


def _layers_in(cls: type[Any]) -> int:
    return sum(1 for k in cls.__mro__ if "_pullwake_state" in k.__dict__)


def _uncached_base() -> type[Any]:
    cls: Any = requests.sessions.Session
    while "_pullwake_state" in cls.__dict__:
        cls = cls.__dict__["_pullwake_previous"]
    if issubclass(cls, CacheMixin):  # someone else's requests-cache: use what it wraps
        cls = next(k for k in cls.__mro__ if not issubclass(k, CacheMixin) and hasattr(k, "send"))
    base: type[Any] = cls
    return base


# --------------------------------------------------------------- process-wide API


@dataclass
class _Installed:
    state: _State
    patched: dict[str, tuple[type[Any], type[Any]]]  # label -> (previous, layer)


_install_lock = threading.Lock()
_installed: _Installed | None = None
_TARGETS: tuple[tuple[Any, str, str], ...] = (
    (requests, "Session", "requests.Session"),
    (requests.sessions, "Session", "requests.sessions.Session"),
)


def install_fetch_cache(
    store: Store = "memory",
    path: str | os.PathLike[str] | None = None,
    *,
    expire_after: float | None = DEFAULT_EXPIRE_AFTER_S,
    auth_headers: Iterable[str] = (),
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
) -> bool:
    """Install the fetch cache for every ``requests.Session()`` (and ``requests.get``).

    ``True`` when this call installed it. A second call, from any thread,
    changes nothing: a :class:`FetchCacheWarning`, a logged warning, ``False``.
    If it raises (``ConfigError``: a bad argument; ``CacheError``: the store
    cannot be opened, or another requests-cache is installed), nothing was
    installed and it may be retried. ``store``: ``"memory"`` (a bounded LRU) or
    ``"sqlite"`` (``path``, default :func:`default_sqlite_path`);
    ``expire_after``: seconds before a chunk is revalidated with its ETag (``0``:
    every read, ``None``: never; the server's ``Cache-Control`` wins);
    ``auth_headers``: more credential headers. See docs/cache.md.
    """
    global _installed
    config = FetchCache(store=store, path=path, expire_after=expire_after,  # type: ignore[arg-type]
                        auth_headers=auth_headers, max_entry_bytes=max_entry_bytes,  # type: ignore[arg-type]
                        max_memory_bytes=max_memory_bytes, lock_timeout=lock_timeout)
    with _install_lock:
        if _installed is not None:
            current = _installed.state.config
            detail = "" if current == config else " (its different settings are ignored)"
            message = (f"pullwake fetch cache is already installed (store={current.store!r}); "
                       f"this call changes nothing{detail}. Call uninstall_fetch_cache() "
                       "first to change it.")
            logger.warning("%s", message)
            warnings.warn(message, FetchCacheWarning, stacklevel=2)
            return False
        for module, attr, label in _TARGETS:
            if issubclass(getattr(module, attr), CacheMixin):
                raise CacheError(f"{label} is already a requests-cache session installed by "
                                 "other code; pullwake does not stack a second cache layer "
                                 "(uninstall it, or use pullwake.cache.cached_session())")
        state = _State(_open_backend(config), config)
        patched: dict[str, tuple[type[Any], type[Any]]] = {}
        layers: dict[int, type[Any]] = {}
        try:
            for module, attr, label in _TARGETS:
                previous = getattr(module, attr)
                layer = layers.setdefault(id(previous), _layer(previous, state, scoped=False))
                patched[label] = (previous, layer)
            for module, attr, label in _TARGETS:
                setattr(module, attr, patched[label][1])
        except BaseException:
            for module, attr, label in _TARGETS:
                if label in patched and getattr(module, attr) is patched[label][1]:
                    setattr(module, attr, patched[label][0])
            state.close()
            raise
        _installed = _Installed(state=state, patched=patched)
    logger.info("fetch cache installed (store=%s)", config.store)
    return True


def uninstall_fetch_cache() -> bool:
    """Remove the process-wide cache (``False`` if none): ``requests.Session`` is exactly
    the class it was before; the store is closed; live sessions go on, uncached."""
    global _installed
    with _install_lock:
        installed, _installed = _installed, None
        if installed is None:
            return False
        for module, attr, label in _TARGETS:
            previous, layer = installed.patched[label]
            if getattr(module, attr) is layer:
                setattr(module, attr, previous)
            else:
                logger.warning("fetch cache: %s was replaced after the install; leaving it in "
                               "place, the pullwake layer inside it is now a pass-through", label)
        installed.state.close()
    logger.info("fetch cache uninstalled")
    return True


def fetch_cache_installed() -> bool:
    """True while the process-wide fetch cache is installed."""
    return _installed is not None


def fetch_cache_info() -> FetchCacheInfo | None:
    """The installed cache's settings and entry count, or ``None``."""
    installed = _installed
    if installed is None:
        return None
    config, backend = installed.state.config, installed.state.backend
    try:
        entries = len(backend.responses)
    except (sqlite3.Error, OSError):
        entries = 0  # a failing store counts 0 rather than raising
    return FetchCacheInfo(
        store=config.store, path=Path(backend.db_path) if config.store == "sqlite" else None,
        expire_after_s=config.expire_after, auth_headers=config.auth_headers,
        max_entry_bytes=config.max_entry_bytes, entries=entries, degraded=backend.degraded,
        layers=_layers_in(requests.sessions.Session))


def cached_session(store: Store = "memory", path: str | os.PathLike[str] | None = None,
                   **options: Any) -> requests.Session:
    """A ``requests.Session`` with its own fetch cache, touching no global state.

    The options of :func:`install_fetch_cache`. ``close()`` (or leaving ``with``)
    closes its store. Composed onto ``requests.Session`` minus any cache layer.
    """
    return _scoped(FetchCache(store=store, path=path, **options))  # type: ignore[arg-type]


def _scoped(config: FetchCache) -> requests.Session:
    state = _State(_open_backend(config), config)
    try:
        session: requests.Session = _layer(_uncached_base(), state, scoped=True)()
    except BaseException:
        state.close()
        raise
    return session


