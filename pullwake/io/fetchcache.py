"""The fetch cache's settings as one typed, validated value (no requests-cache import).

:class:`FetchCache` is what ``Worker(fetch_cache=...)`` takes and what
:func:`pullwake.io.cache.install_fetch_cache` builds from its arguments; it is
validated when built, so a bad value is refused where it is written. Building
one imports nothing heavy; :meth:`FetchCache.session` opens the store (see
:mod:`pullwake.io.cache_layers`, which reads these fields without importing
this module, so nothing here is imported back).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pullwake.errors import ConfigError
from pullwake.protocol.caching import DEFAULT_MAX_ENTRY_BYTES

if TYPE_CHECKING:
    import requests

__all__ = ["DEFAULT_EXPIRE_AFTER_S", "DEFAULT_LOCK_TIMEOUT_S", "DEFAULT_MAX_ENTRY_BYTES",
           "DEFAULT_MAX_MEMORY_BYTES", "FetchCache", "Store"]

Store = Literal["memory", "sqlite"]
DEFAULT_EXPIRE_AFTER_S = 300.0  #: a cached chunk is revalidated (``If-None-Match``) after this
DEFAULT_MAX_MEMORY_BYTES = 128 * 1024 * 1024  #: the memory store evicts LRU chunks beyond this
DEFAULT_LOCK_TIMEOUT_S = 1.0  #: one SQLite operation waits this long for another's lock
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchCache:
    """A validated fetch-cache choice: ``FetchCache.memory()`` or ``FetchCache.sqlite(path)``
    (never a string that could mean a store or a path); ``Worker(fetch_cache=...)``.
    Fields as :func:`install_fetch_cache`'s arguments; a bad one is a ``ConfigError``."""

    store: Store = "memory"
    path: Path | None = None
    expire_after: float | None = DEFAULT_EXPIRE_AFTER_S
    auth_headers: tuple[str, ...] = ()
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S

    def __post_init__(self) -> None:
        def number(v: Any, *, positive: bool) -> bool:
            return (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                    and (v > 0 if positive else v >= 0))

        path: Any = self.path
        if self.store not in ("memory", "sqlite"):
            raise ConfigError(f"store must be 'memory' or 'sqlite', not {self.store!r}")
        if path is not None and self.store != "sqlite":
            raise ConfigError("path is only used with store='sqlite'")
        if path is not None and (not isinstance(path, (str, os.PathLike)) or not os.fspath(path)):
            raise ConfigError("path must be a non-empty path")
        if path is not None:  # a name without a suffix gets .sqlite, as requests-cache would
            path = Path(os.fspath(path)).expanduser().absolute()
            object.__setattr__(self, "path", path if path.suffix else path.with_name(
                path.name + ".sqlite"))
        if self.expire_after is not None and not number(self.expire_after, positive=False):
            raise ConfigError("expire_after must be None or a finite number of seconds >= 0")
        names: Any = self.auth_headers
        if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
            raise ConfigError("auth_headers must be a collection of header names, not a string")
        object.__setattr__(self, "auth_headers", names := tuple(names))
        if not all(isinstance(n, str) and _HEADER_NAME_RE.match(n) for n in names):
            raise ConfigError("auth_headers must contain valid HTTP header names")
        for label in ("max_entry_bytes", "max_memory_bytes"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{label} must be a positive int")
        if not number(self.lock_timeout, positive=True):
            raise ConfigError("lock_timeout must be a positive number of seconds")

    @classmethod
    def memory(cls, **kwargs: Any) -> FetchCache:
        return cls(store="memory", **kwargs)

    @classmethod
    def sqlite(cls, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> FetchCache:
        return cls(store="sqlite", path=path, **kwargs)  # type: ignore[arg-type]

    def session(self) -> requests.Session:
        """A new ``requests.Session`` with its own cache of this kind."""
        from pullwake.io.cache_layers import scoped_session

        return scoped_session(self)
