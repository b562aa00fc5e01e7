"""The fetch cache's session layer: requests-cache's ``CacheMixin`` composed onto a session.

This module owns how a cache is put in front of ``requests``: which requests
meet it (:func:`is_catchup_request`: catch-up reads only; live reads and
everything else go straight by), which answers it keeps
(:func:`is_cacheable_response`), the requests-cache options of every layer
(all public ``CacheMixin`` arguments), the layer class composed onto whatever
``Session`` class was there (its ``__init__``, verbs, adapters and hooks keep
working), and :func:`scoped_session`, a session with a cache of its own.
Installing a layer process-wide is :mod:`pullwake.io.cache`'s; the stores
behind it are :mod:`pullwake.io.cache_stores`'. It reads its settings through
:class:`~pullwake.io.cache_stores.CacheSettings` (a
:class:`~pullwake.io.fetchcache.FetchCache`), so ``FetchCache.session()`` can
use it without an import cycle. It makes no requests of its own.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import requests
import requests.sessions
from requests_cache import CacheMixin

from pullwake.io.cache_stores import CacheSettings, open_store
from pullwake.protocol.caching import (
    DEFAULT_MAX_ENTRY_BYTES,
    cache_key,
    is_cacheable,
    is_catchup,
)

__all__ = ["CacheState", "cache_layer", "is_cacheable_response", "is_catchup_request",
           "layers_in", "scoped_session", "uncached_base"]


def is_catchup_request(request: Any) -> bool:
    """A ``GET`` with exactly one ``offset`` (not ``now``) and no ``live``: a catch-up read."""
    return is_catchup(getattr(request, "method", None) or "GET", str(request.url))


def is_cacheable_response(response: Any, max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> bool:
    """A data-bearing catch-up chunk (:func:`pullwake.protocol.caching.is_cacheable`)."""
    request = getattr(response, "request", None)
    return request is not None and is_cacheable(
        request.method or "GET", str(request.url), response.status_code, response.headers,
        response.content or b"", max_entry_bytes)


def _settings(config: CacheSettings) -> dict[str, Any]:
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


class CacheState:
    """One cache: its store, its settings, and whether it is still in use."""

    def __init__(self, backend: Any, config: CacheSettings) -> None:
        self.backend, self.config, self.active = backend, config, True

    def close(self) -> None:
        self.active = False
        self.backend.close()


def cache_layer(previous: type[Any], state: CacheState, *, scoped: bool) -> type[Any]:
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


def layers_in(cls: type[Any]) -> int:
    return sum(1 for k in cls.__mro__ if "_pullwake_state" in k.__dict__)


def uncached_base() -> type[Any]:
    cls: Any = requests.sessions.Session
    while "_pullwake_state" in cls.__dict__:
        cls = cls.__dict__["_pullwake_previous"]
    if issubclass(cls, CacheMixin):  # someone else's requests-cache: use what it wraps
        cls = next(k for k in cls.__mro__ if not issubclass(k, CacheMixin) and hasattr(k, "send"))
    base: type[Any] = cls
    return base


def scoped_session(config: CacheSettings) -> requests.Session:
    """A new session with a cache of its own (its ``close()`` closes the store)."""
    state = CacheState(open_store(config), config)
    try:
        session: requests.Session = cache_layer(uncached_base(), state, scoped=True)()
    except BaseException:
        state.close()
        raise
    return session
