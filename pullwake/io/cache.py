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
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import requests.sessions
from requests_cache import CacheMixin

from pullwake.errors import CacheError
from pullwake.io.cache_layers import (
    CacheState,
    cache_layer,
    is_cacheable_response,
    is_catchup_request,
    layers_in,
    scoped_session,
)
from pullwake.io.cache_stores import default_sqlite_path, open_store
from pullwake.io.fetchcache import (
    DEFAULT_EXPIRE_AFTER_S,
    DEFAULT_LOCK_TIMEOUT_S,
    DEFAULT_MAX_ENTRY_BYTES,
    DEFAULT_MAX_MEMORY_BYTES,
    FetchCache,
    Store,
)

__all__ = [
    "DEFAULT_EXPIRE_AFTER_S", "DEFAULT_LOCK_TIMEOUT_S", "DEFAULT_MAX_ENTRY_BYTES",
    "DEFAULT_MAX_MEMORY_BYTES", "FetchCache", "FetchCacheInfo", "FetchCacheWarning",
    "cached_session", "default_sqlite_path", "fetch_cache_info", "fetch_cache_installed",
    "install_fetch_cache", "is_cacheable_response", "is_catchup_request",
    "uninstall_fetch_cache",
]

logger = logging.getLogger("pullwake.cache")


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


# --------------------------------------------------------------- process-wide API


@dataclass
class _Installed:
    state: CacheState
    config: FetchCache
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
            current = _installed.config
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
                                 "(uninstall it, or use pullwake.io.cache.cached_session())")
        state = CacheState(open_store(config), config)
        patched: dict[str, tuple[type[Any], type[Any]]] = {}
        layers: dict[int, type[Any]] = {}
        try:
            for module, attr, label in _TARGETS:
                previous = getattr(module, attr)
                layer = layers.setdefault(id(previous), cache_layer(previous, state, scoped=False))
                patched[label] = (previous, layer)
            for module, attr, label in _TARGETS:
                setattr(module, attr, patched[label][1])
        except BaseException:
            for module, attr, label in _TARGETS:
                if label in patched and getattr(module, attr) is patched[label][1]:
                    setattr(module, attr, patched[label][0])
            state.close()
            raise
        _installed = _Installed(state=state, config=config, patched=patched)
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
    config, backend = installed.config, installed.state.backend
    try:
        entries = len(backend.responses)
    except (sqlite3.Error, OSError):
        entries = 0  # a failing store counts 0 rather than raising
    return FetchCacheInfo(
        store=config.store, path=Path(backend.db_path) if config.store == "sqlite" else None,
        expire_after_s=config.expire_after, auth_headers=config.auth_headers,
        max_entry_bytes=config.max_entry_bytes, entries=entries, degraded=backend.degraded,
        layers=layers_in(requests.sessions.Session))


def cached_session(store: Store = "memory", path: str | os.PathLike[str] | None = None,
                   **options: Any) -> requests.Session:
    """A ``requests.Session`` with its own fetch cache, touching no global state.

    The options of :func:`install_fetch_cache`. ``close()`` (or leaving ``with``)
    closes its store. Composed onto ``requests.Session`` minus any cache layer.
    """
    return scoped_session(FetchCache(store=store, path=path, **options))  # type: ignore[arg-type]
