"""The fetch cache: an HTTP cache for Durable Streams catch-up reads made with ``requests``.

This module owns everything about caching catch-up chunks: the process-wide
install (:func:`install_fetch_cache` / :func:`uninstall_fetch_cache`), the
scoped alternative (:func:`cached_session`), what may be cached (the filter),
the cache key (credential-aware), and the two stores (a bounded in-memory LRU,
and a SQLite file opened once per process, shared, and written behind). It is
built on requests-cache's ``CacheMixin`` and backends; see ``docs/cache.md``
for the reasoning behind each choice.

Rules this module keeps:

* **One layer, composed, never stacked.** Installing sets ``requests.Session``
  to a subclass of *whatever class was there before* (so an auth session class
  or adapter installed earlier keeps working) plus requests-cache's
  ``CacheMixin``. A module-level lock and guard make a second install a warned
  no-op; a failed install leaves nothing behind and can be retried; uninstall
  restores exactly the previous class.
* **Only data-bearing catch-up chunks are cached**: ``GET`` with one
  ``offset`` (not ``now``), no ``live``, status 200, a ``Stream-Next-Offset``
  that moved, a non-empty body that is not ``[]``, no ``Set-Cookie``, no
  ``no-store``. A request not shaped like a catch-up read skips the cache
  entirely (no key, no lookup).
* **The stored copy never claims to be up to date.** ``Stream-Up-To-Date`` is
  a fact about the moment of the response, not about the immutable bytes, so
  it is dropped from what is stored; a reader served from the cache always
  asks the server for the next offset, and sees data appended since.
* **Credentials are part of the key** (``Authorization``, ``Cookie``, common
  API-key headers, any header whose name looks like a credential, configured
  ``auth_headers``, and secret query parameters), and are redacted from what
  is stored.
* **The store never crashes a request.** Opening a bad SQLite file raises
  :class:`~pullwake.errors.CacheError` from install; a store that breaks later
  (locked, corrupted) turns into cache misses with a logged warning.

This module must not import aiohttp or make requests of its own; the
translation of ``requests`` exceptions lives in :mod:`pullwake.reader`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import requests.sessions
from requests.cookies import RequestsCookieJar
from requests.hooks import dispatch_hook
from requests.structures import CaseInsensitiveDict
from requests_cache.backends.base import BaseCache, BaseStorage, DictStorage
from requests_cache.backends.sqlite import SQLiteDict
from requests_cache.models.request import CachedRequest
from requests_cache.models.response import CachedResponse
from requests_cache.policy import CacheSettings
from requests_cache.session import CacheMixin

from .errors import CacheError, ConfigError

__all__ = [
    "DEFAULT_EXPIRE_AFTER_S",
    "DEFAULT_LOCK_TIMEOUT_S",
    "DEFAULT_MAX_ENTRY_BYTES",
    "DEFAULT_MAX_MEMORY_BYTES",
    "FetchCache",
    "FetchCacheInfo",
    "FetchCacheWarning",
    "cached_session",
    "default_sqlite_path",
    "fetch_cache_info",
    "fetch_cache_installed",
    "install_fetch_cache",
    "is_cacheable_response",
    "is_catchup_request",
    "uninstall_fetch_cache",
]

logger = logging.getLogger("pullwake.cache")

Store = Literal["memory", "sqlite"]

#: A cached chunk is revalidated (``If-None-Match``) after this long.
DEFAULT_EXPIRE_AFTER_S = 300.0
#: A single response larger than this is passed through, never stored.
DEFAULT_MAX_ENTRY_BYTES = 32 * 1024 * 1024
#: The in-memory store evicts least-recently-used chunks beyond this total.
DEFAULT_MAX_MEMORY_BYTES = 128 * 1024 * 1024
#: How long one SQLite operation waits for another process's lock before
#: the operation is skipped (a miss, or a write not made).
DEFAULT_LOCK_TIMEOUT_S = 1.0
#: After the SQLite store fails, it is bypassed for this long before retrying.
STORE_RETRY_AFTER_S = 5.0

#: Headers that are always treated as credentials (lower case).
_CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "x-api-token",
        "x-auth-token",
        "x-access-token",
    }
)
#: Any other header whose name matches this is treated as a credential too.
_CREDENTIAL_NAME_RE = re.compile(
    r"auth|token|secret|passw|session|cookie|signature|credential|tenant|api[-_]?key|(?:^|[-_])key$",
    re.IGNORECASE,
)
#: Query parameters whose values are redacted from stored URLs (they are in the key).
_SECRET_QUERY_KEYS = frozenset(
    {
        "token",
        "access_token",
        "auth",
        "authorization",
        "key",
        "api_key",
        "apikey",
        "secret",
        "password",
        "signature",
        "sig",
    }
)
_BODY_READ_BYTES = 256 * 1024
#: The SQLite writer thread exits after this long without work (restarted on demand).
_WRITER_IDLE_S = 5.0
#: Request headers that take a request off the fast hit path (requests-cache decides).
_DEFER_REQUEST_HEADERS = ("Cache-Control", "Pragma", "If-None-Match", "If-Modified-Since")
#: Part of every key: bump it when the key or the stored format changes.
_KEY_VERSION = "pullwake-fetch-cache-v1"
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_REDACTED = "REDACTED"


class FetchCacheWarning(UserWarning):
    """A fetch-cache call was ignored (for example, a second install)."""


@dataclass(frozen=True, kw_only=True)
class FetchCacheInfo:
    """What the process-wide fetch cache is, as installed.

    ``layers`` counts pullwake cache layers in ``requests.sessions.Session``'s
    MRO (1 when installed, whatever was called how often); ``degraded`` is true
    while a failing SQLite store is being bypassed.
    """

    store: Store
    path: Path | None
    expire_after_s: float | None
    auth_headers: tuple[str, ...]
    max_entry_bytes: int
    entries: int
    degraded: bool
    layers: int


@dataclass(frozen=True, kw_only=True)
class _Config:
    store: Store
    path: Path | None
    expire_after_s: float | None
    auth_headers: tuple[str, ...]
    max_entry_bytes: int
    max_memory_bytes: int
    lock_timeout_s: float


# --------------------------------------------------------------------------- policy


def _catchup_offset(url: str) -> str | None:
    """The ``offset`` of a catch-up read URL, or ``None`` when it is not one."""
    try:
        params = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    except ValueError:
        return None
    offsets = [v for k, v in params if k == "offset"]
    if len(offsets) != 1 or offsets[0] in ("", "now"):
        return None
    if any(k == "live" for k, _ in params):
        return None
    return offsets[0]


def is_catchup_request(request: Any) -> bool:
    """True for a ``GET`` catch-up read (one ``offset`` other than ``now``, no ``live``).

    Only these requests consult the cache; everything else goes straight through.
    """
    method = (getattr(request, "method", None) or "").upper()
    return method == "GET" and _catchup_offset(getattr(request, "url", None) or "") is not None


def is_cacheable_response(response: Any, max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> bool:
    """True when ``response`` is a data-bearing catch-up chunk that may be stored.

    Live reads, ``offset=now``, empty chunks at the tail (``[]`` or no bytes,
    or a ``Stream-Next-Offset`` that did not move), errors, ``no-store``
    answers, answers that set cookies and oversized bodies are never stored.
    """
    request = getattr(response, "request", None)
    if request is None or not is_catchup_request(request):
        return False
    if getattr(response, "status_code", None) != 200:
        return False
    headers = response.headers
    next_offset = headers.get("Stream-Next-Offset")
    if not next_offset or next_offset == _catchup_offset(request.url or ""):
        return False
    if "Set-Cookie" in headers or "no-store" in headers.get("Cache-Control", "").lower():
        return False
    if "event-stream" in headers.get("Content-Type", "").lower():
        return False
    length = headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_entry_bytes:
        return False
    body = _read_all(response)
    if not body or len(body) > max_entry_bytes:
        return False
    # Only a tiny body can be empty: never copy a large one just to strip it.
    return len(body) > 64 or body.strip() not in (b"", b"[]")


def _read_all(response: Any) -> bytes | None:
    """``response.content``, read in large pieces (requests reads 10 KiB at a time)."""
    if getattr(response, "_content", None) is False and not getattr(
        response, "_content_consumed", True
    ):
        response._content = b"".join(response.iter_content(_BODY_READ_BYTES))
        response._content_consumed = True
    body: bytes | None = response.content
    return body


def _header_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


@functools.lru_cache(maxsize=1024)
def _is_credential_header(name: str, extra: frozenset[str]) -> bool:
    lowered = name.lower()
    return (
        lowered in _CREDENTIAL_HEADERS
        or lowered in extra
        or _CREDENTIAL_NAME_RE.search(lowered) is not None
    )


def _key_url(url: str) -> str:
    """The URL as keyed: scheme and host lower-cased, query pairs sorted (not decoded)."""
    parts = urlsplit(url)
    query = "&".join(sorted(p for p in parts.query.split("&") if p))
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", query, ""))


def _make_key_fn(extra_headers: frozenset[str]) -> Callable[..., str]:
    """A requests-cache ``key_fn`` whose key includes every credential of the request.

    requests-cache's default key leaves ``Authorization`` and API-key query
    parameters *out* of the key (they are in its default ``ignored_parameters``),
    which would serve one tenant's chunk to another. This key hashes the method,
    the raw URL (query secrets and userinfo included), ``verify``, the body, the
    value of every credential header, and any headers requests-cache asks to
    match (``Vary``). It is also cheap: no URL normalisation library, no copy.
    """

    def key_fn(
        request: Any,
        ignored_parameters: Any = None,
        match_headers: Any = None,
        serializer: Any = None,
        content_root_key: Any = None,
        **kwargs: Any,
    ) -> str:
        headers = getattr(request, "headers", None) or {}
        digest = hashlib.blake2b(digest_size=16)
        body = getattr(request, "body", None) or b""
        parts = [
            _KEY_VERSION,
            (getattr(request, "method", None) or "GET").upper(),
            _key_url(str(getattr(request, "url", "") or "")),
            str(bool(kwargs.get("verify", True))),
        ]
        for part in parts:
            digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(body if isinstance(body, bytes) else str(body).encode("utf-8", "replace"))
        if match_headers is True:
            wanted = {str(name).lower() for name in headers}
        elif match_headers:
            wanted = {str(name).lower() for name in match_headers}
        else:
            wanted = set()
        material = sorted(
            (str(name).lower(), _header_text(value))
            for name, value in headers.items()
            if str(name).lower() in wanted or _is_credential_header(str(name), extra_headers)
        )
        for name, value in material:
            digest.update(b"\0" + name.encode() + b"\0" + value.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()

    return key_fn


def _redact_url(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if not parts.query:
        return urlunsplit((parts.scheme, netloc, parts.path, "", parts.fragment))
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, _REDACTED if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redacted_copy(response: CachedResponse, extra_headers: frozenset[str]) -> CachedResponse:
    """A copy of ``response`` fit to store: no credentials, no up-to-date claim."""
    stored: CachedResponse = copy.copy(response)
    stored.headers = CaseInsensitiveDict(response.headers)
    stored.headers.pop("Stream-Up-To-Date", None)
    stored.url = _redact_url(response.url)
    request = copy.copy(response.request)
    request.headers = CaseInsensitiveDict(
        {
            k: (_REDACTED if _is_credential_header(str(k), extra_headers) else v)
            for k, v in (request.headers or {}).items()
        }
    )
    request.cookies = RequestsCookieJar()
    request.url = _redact_url(request.url)
    stored.request = request
    stored.history = []
    return stored


# --------------------------------------------------------------------------- stores


class _EntrySerializer:
    """Stores a cached response as ``MAGIC | len | JSON header | raw body``.

    Safe to load from an untrusted file (no pickle), and fast: the body is
    stored as it is, with no base64 or per-field structuring. Anything that
    does not parse raises ``ValueError`` (the entry is then a miss).
    """

    MAGIC = b"PWFC1"

    def dumps(self, response: CachedResponse) -> bytes:
        request = response.request
        header = {
            "status": response.status_code,
            "reason": response.reason,
            "url": response.url,
            "encoding": response.encoding,
            "headers": [[str(k), str(v)] for k, v in response.headers.items()],
            "created_at": response.created_at.timestamp() if response.created_at else None,
            "expires": response.expires.timestamp() if response.expires else None,
            "elapsed": response.elapsed.total_seconds() if response.elapsed else 0.0,
            "request": {
                "method": request.method,
                "url": request.url,
                "headers": [[str(k), str(v)] for k, v in (request.headers or {}).items()],
            },
        }
        meta = json.dumps(header, separators=(",", ":")).encode()
        return b"".join((self.MAGIC, len(meta).to_bytes(4, "big"), meta, response.content or b""))

    def loads(self, data: bytes) -> CachedResponse:
        raw = bytes(data)
        if not raw.startswith(self.MAGIC):
            raise ValueError("not a pullwake fetch-cache entry")
        start = len(self.MAGIC) + 4
        size = int.from_bytes(raw[len(self.MAGIC) : start], "big")
        header = json.loads(raw[start : start + size])
        request = header["request"]

        def when(value: Any) -> Any:  # CachedResponse's fields accept None
            return None if value is None else datetime.fromtimestamp(float(value), UTC)

        return CachedResponse(
            content=raw[start + size :],
            status_code=int(header["status"]),
            reason=header["reason"],
            url=header["url"],
            encoding=header["encoding"],
            headers=CaseInsensitiveDict({str(k): str(v) for k, v in header["headers"]}),
            created_at=when(header["created_at"]),
            expires=when(header["expires"]),
            elapsed=timedelta(seconds=float(header["elapsed"])),
            request=CachedRequest(
                method=request["method"],
                url=request["url"],
                headers=CaseInsensitiveDict({str(k): str(v) for k, v in request["headers"]}),
            ),
        )

    def __repr__(self) -> str:
        return "_EntrySerializer(v1)"


def _copy_response(item: CachedResponse, key: str) -> CachedResponse:
    """A copy that shares only the immutable body with ``item``."""
    found: CachedResponse = CachedResponse.from_response(item)
    found.headers = CaseInsensitiveDict(item.headers)
    found.cache_key = key
    return found


class _MemoryStorage(BaseStorage[str, CachedResponse]):
    """A thread-safe LRU of cached responses, bounded by total body bytes.

    Reads return a shallow copy (own headers) so callers never share mutable
    state with the store or with each other.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(serializer=None)
        self._max_bytes = max_bytes
        self._data: OrderedDict[str, CachedResponse] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def __getitem__(self, key: str) -> CachedResponse:
        with self._lock:
            item = self._data[key]
            self._data.move_to_end(key)
        return _copy_response(item, key)

    def __setitem__(self, key: str, value: CachedResponse) -> None:
        size = len(value.content or b"") + 1024
        if size > self._max_bytes:
            return
        with self._lock:
            self._pop(key)
            self._data[key] = value
            self._sizes[key] = size
            self._total += size
            while self._total > self._max_bytes and self._data:
                self._pop(next(iter(self._data)))

    def _pop(self, key: str) -> bool:
        if key not in self._data:
            return False
        del self._data[key]
        self._total -= self._sizes.pop(key)
        return True

    def __delitem__(self, key: str) -> None:
        with self._lock:
            if not self._pop(key):
                raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self._total = 0

    def close(self) -> None:
        self.clear()


class _StoreBusy(Exception):
    """The SQLite file stayed locked by another connection past the lock timeout."""


class _StoreClosed(sqlite3.ProgrammingError):
    """An operation reached a store that was closed (uninstalled, or its session closed)."""


class _SQLiteStorage(SQLiteDict):
    """requests-cache's SQLite table, made safe for a worker.

    * One connection (one file handle) per store: redirects are not persisted.
    * Waiting for another process's lock is bounded (requests-cache retries
      ``BEGIN IMMEDIATE`` forever); all statements are serialised on one lock.
    * After open, a failing read is a miss and a failing write is skipped, with
      one warning; the store is then bypassed for ``STORE_RETRY_AFTER_S``.
    * Entries are a JSON header plus the raw body (:class:`_EntrySerializer`),
      not pickle: a tampered cache file cannot run code, and no base64.
    * WAL journal (``synchronous=NORMAL``): readers and the writer do not block
      each other and a commit does not wait for fsync; a crash can lose the
      last writes, which for a cache only means misses.
    * Write-behind: a miss hands its entry to one writer thread and returns;
      until the entry is written, reads find it in the pending map, so a read
      right after a miss is still a hit. Pending bytes are bounded (further
      writes are dropped) and :meth:`shutdown` drains them before closing.
    """

    def __init__(
        self, db_path: Path, *, lock_timeout_s: float, max_pending_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self._retry_at = 0.0
        self._degraded = False
        self._shut = False
        self._state_lock = threading.Lock()
        self._lock_timeout_s = lock_timeout_s
        self._pending: dict[str, tuple[Any, int]] = {}
        self._pending_bytes = 0
        self._max_pending_bytes = max_pending_bytes
        self._wake = threading.Condition(threading.Lock())
        self._writer: threading.Thread | None = None
        self._stopping = False
        self.users = 0  # backends sharing this store (see _open_sqlite)
        try:
            super().__init__(
                db_path,
                table_name="responses",
                serializer=None,
                timeout=lock_timeout_s,
                wal=True,
            )
        except BaseException:
            self.shutdown()
            raise
        self.serializer = _EntrySerializer()  # type: ignore[assignment]

    @property
    def closed(self) -> bool:
        return self._shut or self._stopping

    def shutdown(self) -> None:
        """Write what is pending, then close the handle for good (never reopened)."""
        with self._wake:
            self._stopping = True
            writer = self._writer
            self._wake.notify_all()
        if writer is not None and writer is not threading.current_thread():
            writer.join(self._lock_timeout_s + 5.0)
        self._shut = True
        self.close()  # type: ignore[no-untyped-call]

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every pending entry is written (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.wait(remaining)
        return True

    def _run_writer(self) -> None:
        while True:
            with self._wake:
                if not self._pending and not self._stopping:
                    # Idle: exit after a while so an abandoned store can be collected.
                    self._wake.wait(_WRITER_IDLE_S)
                if not self._pending:
                    self._writer = None
                    return
                key, (value, size) = next(iter(self._pending.items()))
            self._store(key, value)  # the entry stays readable in _pending meanwhile
            with self._wake:
                current = self._pending.get(key)
                if current is not None and current[0] is value:
                    del self._pending[key]
                    self._pending_bytes -= size
                self._wake.notify_all()

    @contextmanager
    def connection(self, commit: bool = False) -> Iterator[sqlite3.Connection]:
        if self._shut:
            raise _StoreClosed("the fetch cache store is closed")
        with super().connection(commit=commit) as con:
            yield con

    # -- degradation

    @property
    def degraded(self) -> bool:
        return self._degraded

    def _skipping(self) -> bool:
        return self._shut or (self._degraded and time.monotonic() < self._retry_at)

    def _fail(self, operation: str, exc: BaseException) -> None:
        if self._shut:
            return
        with self._state_lock:
            first = not self._degraded
            self._degraded = True
            self._retry_at = time.monotonic() + STORE_RETRY_AFTER_S
        log = logger.warning if first else logger.debug
        log(
            "fetch cache: SQLite store %s failed (%s: %s); reading uncached, retrying in %g s",
            operation,
            type(exc).__name__,
            exc,
            STORE_RETRY_AFTER_S,
        )

    def _ok(self) -> None:
        """A write succeeded: the store is healthy again (a read alone does not prove it)."""
        if self._degraded:
            with self._state_lock:
                self._degraded = False
            logger.info("fetch cache: SQLite store %s is usable again", self.db_path)

    # -- connection and locking

    @contextmanager
    def _acquire_sqlite_lock(self) -> Iterator[None]:
        with self._lock:
            con = self._connection
            if con is None:
                raise _StoreClosed("the fetch cache store has no connection")
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _sqlite_error_kind(exc) == "locked":
                    raise _StoreBusy(str(exc)) from exc
                raise
            self._active_transaction = True
            try:
                yield
                con.commit()
            except BaseException:
                con.rollback()
                raise
            finally:
                self._active_transaction = False

    # -- mapping operations

    def deserialize(self, key: Any, value: Any) -> Any:
        try:
            return super().deserialize(key, value)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            logger.debug("fetch cache: unreadable entry dropped (%s)", type(exc).__name__)
            return None

    def __getitem__(self, key: str) -> Any:
        with self._wake:
            pending = self._pending.get(key)
        if pending is not None:
            return _copy_response(pending[0], key)
        if self._skipping():
            raise KeyError(key)
        try:
            with self._lock, self.connection() as con:
                row = con.execute(
                    f"SELECT value FROM {self.table_name} WHERE key=?", (key,)
                ).fetchone()
        except (sqlite3.Error, _StoreBusy) as exc:
            self._fail("read", exc)
            raise KeyError(key) from None
        value = self.deserialize(key, row[0]) if row else None
        if value is None:
            raise KeyError(key)
        return value

    def _write(self, key: str, value: Any) -> None:
        if self._skipping():
            return
        size = len(getattr(value, "content", b"") or b"") + 1024
        with self._wake:
            if self._stopping:
                return
            previous = self._pending.pop(key, None)
            if previous is not None:
                self._pending_bytes -= previous[1]
            if self._pending_bytes + size > self._max_pending_bytes:
                logger.debug("fetch cache: write dropped, %d bytes pending", self._pending_bytes)
                return
            self._pending[key] = (value, size)
            self._pending_bytes += size
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._run_writer, name="pullwake-fetch-cache-writer", daemon=True
                )
                self._writer.start()
            self._wake.notify_all()

    def _store(self, key: str, value: Any) -> None:
        if self._skipping():
            return
        expires = getattr(value, "expires_unix", None)
        data = self.serialize(value)
        try:
            with self._lock, self.connection(commit=True) as con:
                con.execute(
                    f"INSERT OR REPLACE INTO {self.table_name} (key,value,expires) VALUES (?,?,?)",
                    (key, data, expires),
                )
        except (sqlite3.Error, _StoreBusy) as exc:
            self._fail("write", exc)
            return
        self._ok()

    def __delitem__(self, key: str) -> None:
        with self._wake:
            pending = self._pending.pop(key, None)
            if pending is not None:
                self._pending_bytes -= pending[1]
        if self._skipping():
            if pending is not None:
                return
            raise KeyError(key)
        try:
            with self._lock:
                with self.connection() as con:
                    found = con.execute(
                        f"SELECT 1 FROM {self.table_name} WHERE key=?", (key,)
                    ).fetchone()
                if not found:
                    if pending is not None:
                        return
                    raise KeyError(key)
                with self.connection(commit=True) as con:
                    con.execute(f"DELETE FROM {self.table_name} WHERE key=?", (key,))
        except (sqlite3.Error, _StoreBusy) as exc:
            self._fail("delete", exc)
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        try:
            with self._lock, self.connection() as con:
                keys = [row[0] for row in con.execute(f"SELECT key FROM {self.table_name}")]
        except (sqlite3.Error, _StoreBusy) as exc:
            self._fail("scan", exc)
            return iter(())
        return iter(keys)

    def count(self, expired: bool = True) -> int:
        with self._wake:
            pending = len(self._pending)
        try:
            with self._lock:
                return int(super().count(expired=expired)) + pending
        except (sqlite3.Error, _StoreBusy) as exc:
            self._fail("count", exc)
            return 0

    def purge_expired(self) -> None:
        try:
            with self._lock, self.connection(commit=True) as con:
                con.execute(
                    f"DELETE FROM {self.table_name} WHERE expires <= ?", (round(time.time()),)
                )
        except (sqlite3.Error, _StoreBusy) as exc:
            logger.debug("fetch cache: purge of expired entries skipped (%s)", exc)


class _PullwakeCache(BaseCache):
    """A requests-cache backend over one of the stores above.

    Stores a redacted copy of each response without ``Stream-Up-To-Date``;
    redirect aliases are kept in memory only.
    """

    def __init__(self, responses: Any, *, name: str, extra_headers: frozenset[str]) -> None:
        super().__init__(cache_name=name)
        self.responses = responses
        self.redirects = DictStorage()  # type: ignore[no-untyped-call]
        self._extra_headers = extra_headers
        self._handoff = threading.local()
        self._closed = False

    def clear_handoff(self) -> None:
        self._handoff.value = None

    def get_response(self, key: str, default: Any = None) -> Any:
        handoff = getattr(self._handoff, "value", None)
        if handoff is not None:
            self._handoff.value = None
            if handoff[0] == key:
                return default if handoff[1] is None else handoff[1]
        return super().get_response(key, default)

    def save_response(
        self, response: Any, cache_key: str | None = None, expires: Any = None
    ) -> None:
        key = cache_key or self.create_key(response.request)
        cached = CachedResponse.from_response(response, expires=expires)
        self.responses[key] = _redacted_copy(cached, self._extra_headers)

    def fresh_hit(self, request: Any, **kwargs: Any) -> CachedResponse | None:
        """A stored response that may be served as is, else ``None``.

        The fast path for hits: one cheap key and one lookup. Anything that
        needs a decision (expired: revalidate with the ETag; ``Vary``;
        ``no-cache``; conditional or ``Cache-Control`` request headers) returns
        ``None`` and is left to requests-cache's full logic.
        """
        if any(name in request.headers for name in _DEFER_REQUEST_HEADERS):
            return None
        key = self.create_key(request, **kwargs)
        cached: CachedResponse | None = self.get_response(key)
        if cached is None or cached.is_expired or "Vary" in cached.headers:
            # requests-cache looks the same key up next: hand it this answer, once.
            self._handoff.value = (key, cached)
            return None
        directives = cached.headers.get("Cache-Control", "").lower()
        if "no-cache" in directives or "must-revalidate" in directives:
            return None
        return cached

    @property
    def degraded(self) -> bool:
        return bool(getattr(self.responses, "degraded", False))

    def close(self) -> None:
        """Release the store (idempotent); a shared SQLite store closes with its last user."""
        if self._closed:
            return
        self._closed = True
        if isinstance(self.responses, _SQLiteStorage):
            _release_sqlite(self.responses)
        else:
            self.responses.close()  # type: ignore[no-untyped-call]
        self.redirects.close()  # type: ignore[no-untyped-call]


#: One SQLite store per file per process, shared by the installed cache and every
#: scoped session on that file. Weak, so a store whose users were all dropped
#: without close() is still collected (and its handle closed).
_sqlite_stores: weakref.WeakValueDictionary[str, _SQLiteStorage] = weakref.WeakValueDictionary()
_sqlite_stores_lock = threading.Lock()


def _open_sqlite(path: Path, lock_timeout_s: float) -> _SQLiteStorage:
    """The process's store for ``path``: opened once, then shared (counted)."""
    key = os.path.realpath(path)
    with _sqlite_stores_lock:
        store = _sqlite_stores.get(key)
        if store is None or store.closed:
            store = _SQLiteStorage(path, lock_timeout_s=lock_timeout_s)
            store.purge_expired()
            _sqlite_stores[key] = store
        store.users += 1
        return store


def _release_sqlite(store: _SQLiteStorage) -> None:
    with _sqlite_stores_lock:
        store.users -= 1
        last = store.users <= 0
        key = os.path.realpath(store.db_path)
        if last and _sqlite_stores.get(key) is store:
            del _sqlite_stores[key]
    if last:
        store.shutdown()


def default_sqlite_path() -> Path:
    """Where ``store="sqlite"`` keeps its file when no ``path`` is given."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "pullwake" / "fetch-cache.sqlite"


def _sqlite_error_kind(exc: sqlite3.Error) -> str:
    """``"locked"``, ``"corrupt"`` or ``"other"``, from SQLite's error code or text."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    text = str(exc).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text:
        return "locked"
    if (
        name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT"))
        or "not a database" in text
        or ("malformed" in text)
    ):
        return "corrupt"
    return "other"


def _locked_error(path: Path, config: _Config) -> CacheError:
    return CacheError(
        f"fetch cache: SQLite file {path} stayed locked by another connection for more "
        f"than {config.lock_timeout_s:g} s; try again later or use another path"
    )


def _open_backend(config: _Config) -> _PullwakeCache:
    """Open the store named by ``config``; any failure is a :class:`CacheError`."""
    extra = frozenset(h.lower() for h in config.auth_headers)
    responses: Any
    if config.store == "memory":
        responses = _MemoryStorage(config.max_memory_bytes)
        name = "memory"
    else:
        path = config.path or default_sqlite_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            responses = _open_sqlite(path, config.lock_timeout_s)
        except _StoreBusy as exc:
            raise _locked_error(path, config) from exc
        except sqlite3.Error as exc:
            kind = _sqlite_error_kind(exc)
            if kind == "locked":
                raise _locked_error(path, config) from exc
            if kind == "corrupt":
                raise CacheError(
                    f"fetch cache: {path} is not a usable SQLite database ({exc}); "
                    "delete the file or choose another path"
                ) from exc
            raise CacheError(
                f"fetch cache: cannot open SQLite file {path} ({type(exc).__name__}: {exc}); "
                "check that the directory exists and is writable"
            ) from exc
        except OSError as exc:
            raise CacheError(
                f"fetch cache: cannot create the directory for SQLite file {path} "
                f"({type(exc).__name__}: {exc.strerror or exc}); choose another path"
            ) from exc
        name = str(responses.db_path)

    backend = _PullwakeCache(responses, name=name, extra_headers=extra)
    if config.expire_after_s is None:
        expire_after: Any = -1  # requests-cache's NEVER_EXPIRE
    elif config.expire_after_s == 0:
        expire_after = 0  # EXPIRE_IMMEDIATELY: store, then revalidate with the ETag every time
    else:
        expire_after = timedelta(seconds=config.expire_after_s)
    max_entry = config.max_entry_bytes
    backend._settings = CacheSettings.from_kwargs(  # type: ignore[no-untyped-call]
        expire_after=expire_after,
        cache_control=True,
        allowable_codes=(200,),
        allowable_methods=("GET",),
        ignored_parameters=(),
        match_headers=False,
        filter_fn=lambda response: is_cacheable_response(response, max_entry),
        key_fn=_make_key_fn(extra),
        autoclose=False,
    )
    return backend


# ------------------------------------------------------------------- session layer


class _LayerState:
    """One cache layer: its backend, the class it was composed onto, and liveness."""

    def __init__(self, backend: _PullwakeCache, config: _Config) -> None:
        self.backend = backend
        self.config = config
        self.active = True

    def close(self) -> None:
        self.active = False
        self.backend.close()


def _make_layer_class(previous: type[Any], state: _LayerState, *, scoped: bool) -> type[Any]:
    """``CacheMixin`` composed onto ``previous``, sharing ``state.backend``.

    ``previous``'s own ``__init__``, ``request`` and ``send`` still run (an
    auth session class, mounted adapters and hooks keep working); the cache is
    consulted only for catch-up reads and only while ``state`` is active.
    """

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        previous.__init__(self, *args, **kwargs)
        self.cache = state.backend
        self._lock = threading.RLock()

    def request(self: Any, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        # Skip CacheMixin.request: it rewrites headers and multipart boundaries.
        return previous.request(self, method, url, *args, **kwargs)

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        if state.active and is_catchup_request(request):
            hit = state.backend.fresh_hit(request, **kwargs)
            if hit is not None:
                return dispatch_hook("response", request.hooks, hit, **kwargs)  # type: ignore[no-untyped-call]
            try:
                return CacheMixin.send(self, request, **kwargs)
            finally:
                state.backend.clear_handoff()
        return previous.send(self, request, **kwargs)

    def close(self: Any) -> None:
        previous.close(self)
        if scoped:
            state.close()

    def __reduce__(self: Any) -> Any:
        # Pickles as session settings; unpickles as whatever requests.Session is then.
        return (_unpickle_session, (previous.__getstate__(self),))  # type: ignore[call-arg]

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "request": request,
        "send": send,
        "close": close,
        "__reduce__": __reduce__,
        "__module__": __name__,
        "__qualname__": "PullwakeCachedSession",
        "_pullwake_state": state,
        "_pullwake_previous": previous,
    }
    # CacheMixin redefines the verb helpers; keep the previous class's own versions.
    for name in ("get", "options", "head", "post", "put", "patch", "delete", "__repr__"):
        namespace[name] = getattr(previous, name)
    return type("PullwakeCachedSession", (CacheMixin, previous), namespace)


def _unpickle_session(state: Any) -> requests.Session:
    session: requests.Session = requests.sessions.Session()
    session.__setstate__(state)  # type: ignore[attr-defined]
    return session


def _is_layer(cls: Any) -> bool:
    return isinstance(cls, type) and "_pullwake_state" in cls.__dict__


def _layers_in(cls: type[Any]) -> int:
    return sum(1 for klass in cls.__mro__ if _is_layer(klass))


def _uncached_base() -> type[Any]:
    """The session class to compose a scoped cache onto: the current one minus caching."""
    cls: Any = requests.sessions.Session
    while _is_layer(cls):
        cls = cls.__dict__["_pullwake_previous"]
    if issubclass(cls, CacheMixin):  # someone else's requests-cache: use what it wraps
        cls = next(k for k in cls.__mro__ if not issubclass(k, CacheMixin) and hasattr(k, "send"))
    base: type[Any] = cls
    return base


# --------------------------------------------------------------- process-wide API


@dataclass
class _Installed:
    state: _LayerState
    patched: dict[str, tuple[type[Any], type[Any]]]  # name -> (previous, layer)


_install_lock = threading.Lock()
_installed: _Installed | None = None
_TARGETS: tuple[tuple[Any, str, str], ...] = (
    (requests, "Session", "requests.Session"),
    (requests.sessions, "Session", "requests.sessions.Session"),
)


def _validate(
    store: str,
    path: str | os.PathLike[str] | None,
    expire_after: float | None,
    auth_headers: Iterable[str],
    max_entry_bytes: int,
    max_memory_bytes: int,
    lock_timeout: float,
) -> _Config:
    if store not in ("memory", "sqlite"):
        raise ConfigError(f"store must be 'memory' or 'sqlite', not {store!r}")
    if path is not None and store != "sqlite":
        raise ConfigError("path is only used with store='sqlite'")
    resolved: Path | None = None
    if path is not None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ConfigError("path must be a non-empty path")
        resolved = Path(os.fspath(path)).expanduser().absolute()
        if not resolved.suffix:  # what requests-cache would do anyway; made explicit here
            resolved = resolved.with_name(resolved.name + ".sqlite")
    if expire_after is not None and (
        isinstance(expire_after, bool)
        or not isinstance(expire_after, (int, float))
        or not math.isfinite(expire_after)
        or expire_after < 0
    ):
        raise ConfigError("expire_after must be None or a finite number of seconds >= 0")
    if isinstance(auth_headers, (str, bytes)):
        raise ConfigError("auth_headers must be a collection of header names, not a string")
    names = tuple(auth_headers)
    for name in names:
        if not isinstance(name, str) or not _HEADER_NAME_RE.match(name):
            raise ConfigError("auth_headers must contain valid HTTP header names")
    sizes = (("max_entry_bytes", max_entry_bytes), ("max_memory_bytes", max_memory_bytes))
    for label, value in sizes:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{label} must be a positive int")
    if (
        isinstance(lock_timeout, bool)
        or not isinstance(lock_timeout, (int, float))
        or not math.isfinite(lock_timeout)
        or lock_timeout <= 0
    ):
        raise ConfigError("lock_timeout must be a positive number of seconds")
    return _Config(
        store=store,  # type: ignore[arg-type]
        path=resolved,
        expire_after_s=None if expire_after is None else float(expire_after),
        auth_headers=names,
        max_entry_bytes=max_entry_bytes,
        max_memory_bytes=max_memory_bytes,
        lock_timeout_s=float(lock_timeout),
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

    Returns ``True`` when this call installed it. A second call, from any
    thread, changes nothing: it emits a :class:`FetchCacheWarning`, logs a
    warning and returns ``False`` (call :func:`uninstall_fetch_cache` first to
    change the settings). If this call raises, nothing was installed and it
    may be retried.

    Args:
        store: ``"memory"`` (a bounded LRU in this process) or ``"sqlite"``.
        path: the SQLite file (default :func:`default_sqlite_path`); a name
            without a suffix gets ``.sqlite``. Its directory is created.
        expire_after: seconds before a cached chunk is revalidated with its
            ETag (``If-None-Match``, answered 304 when unchanged); ``0`` means
            revalidate on every read, ``None`` never. The server's
            ``Cache-Control`` wins when it sends one.
        auth_headers: extra request headers that carry credentials; they join
            the cache key (``Authorization``, ``Cookie`` and API-key-like
            headers always do).
        max_entry_bytes: responses larger than this are never stored.
        max_memory_bytes: the memory store's total bound (LRU eviction).
        lock_timeout: seconds one SQLite operation waits for another
            process's lock before it is skipped.

    Raises:
        ConfigError: an argument is invalid.
        CacheError: the store cannot be opened (a corrupt, locked or
            unwritable SQLite file), or another requests-cache is already
            installed on ``requests.Session``.
    """
    global _installed
    config = _validate(
        store, path, expire_after, auth_headers, max_entry_bytes, max_memory_bytes, lock_timeout
    )
    with _install_lock:
        if _installed is not None:
            current = _installed.state.config
            detail = "" if current == config else " (its different settings are ignored)"
            message = (
                f"pullwake fetch cache is already installed (store={current.store!r}); "
                f"this call changes nothing{detail}. "
                "Call uninstall_fetch_cache() first to change it."
            )
            logger.warning("%s", message)
            warnings.warn(message, FetchCacheWarning, stacklevel=2)
            return False

        for module, attr, label in _TARGETS:
            cls = getattr(module, attr)
            if isinstance(cls, type) and issubclass(cls, CacheMixin):
                raise CacheError(
                    f"{label} is already a requests-cache session installed by other code; "
                    "pullwake does not stack a second cache layer (uninstall it, or use "
                    "pullwake.cache.cached_session())"
                )

        backend = _open_backend(config)
        state = _LayerState(backend, config)
        patched: dict[str, tuple[type[Any], type[Any]]] = {}
        layers: dict[int, type[Any]] = {}
        try:
            for module, attr, label in _TARGETS:
                previous = getattr(module, attr)
                layer = layers.get(id(previous))
                if layer is None:
                    layer = _make_layer_class(previous, state, scoped=False)
                    layers[id(previous)] = layer
                patched[label] = (previous, layer)
            for module, attr, label in _TARGETS:
                setattr(module, attr, patched[label][1])
            _installed = _Installed(state=state, patched=patched)
        except BaseException:
            for module, attr, label in _TARGETS:
                if label in patched and getattr(module, attr) is patched[label][1]:
                    setattr(module, attr, patched[label][0])
            state.close()
            raise
    logger.info(
        "fetch cache installed (store=%s%s)",
        config.store,
        f", path={backend.responses.db_path}" if config.store == "sqlite" else "",  # type: ignore[attr-defined]
    )
    return True


def uninstall_fetch_cache() -> bool:
    """Remove the process-wide fetch cache; ``False`` when none was installed.

    ``requests.Session`` is restored to exactly the class that was there before
    the install. If other code has since replaced it with something built on
    pullwake's layer, that class is left in place and the layer becomes a
    pass-through (logged). The store is closed (the SQLite handle released);
    sessions created while installed keep working, uncached.
    """
    global _installed
    with _install_lock:
        installed = _installed
        if installed is None:
            return False
        _installed = None
        installed.state.active = False
        for module, attr, label in _TARGETS:
            previous, layer = installed.patched[label]
            if getattr(module, attr) is layer:
                setattr(module, attr, previous)
            else:
                logger.warning(
                    "fetch cache: %s was replaced after the install; leaving it in place, "
                    "the pullwake layer inside it is now a pass-through",
                    label,
                )
        installed.state.backend.close()
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
    config = installed.state.config
    backend = installed.state.backend
    responses: Any = backend.responses
    entries = len(responses)  # a failing SQLite store counts 0 rather than raising
    return FetchCacheInfo(
        store=config.store,
        path=Path(responses.db_path) if config.store == "sqlite" else None,
        expire_after_s=config.expire_after_s,
        auth_headers=config.auth_headers,
        max_entry_bytes=config.max_entry_bytes,
        entries=entries,
        degraded=backend.degraded,
        layers=_layers_in(requests.sessions.Session),
    )


def cached_session(
    store: Store = "memory",
    path: str | os.PathLike[str] | None = None,
    *,
    expire_after: float | None = DEFAULT_EXPIRE_AFTER_S,
    auth_headers: Iterable[str] = (),
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
) -> requests.Session:
    """A ``requests.Session`` with its own fetch cache, touching no global state.

    Same policy and arguments as :func:`install_fetch_cache`. The session owns
    its store: ``close()`` (or leaving ``with``) closes it, releasing the SQLite
    handle. It is composed onto the current ``requests.Session`` class minus
    any process-wide cache layer, so the two never stack.

    Raises:
        ConfigError, CacheError: as :func:`install_fetch_cache`.
    """
    config = _validate(
        store, path, expire_after, auth_headers, max_entry_bytes, max_memory_bytes, lock_timeout
    )
    state = _LayerState(_open_backend(config), config)
    try:
        layer = _make_layer_class(_uncached_base(), state, scoped=True)
        session: requests.Session = layer()
    except BaseException:
        state.close()
        raise
    return session


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchCache:
    """A typed fetch-cache choice for :class:`pullwake.Worker` (``fetch_cache=``).

    ``FetchCache.memory()`` or ``FetchCache.sqlite(path)``: never a bare
    string that could mean a store or a path. Validated when built, so a bad
    value is refused at ``Worker(...)``, never at the first read.
    """

    store: Store = "memory"
    path: Path | None = None
    expire_after: float | None = DEFAULT_EXPIRE_AFTER_S
    auth_headers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        config = _validate(self.store, self.path, self.expire_after, self.auth_headers,
                           DEFAULT_MAX_ENTRY_BYTES, DEFAULT_MAX_MEMORY_BYTES,
                           DEFAULT_LOCK_TIMEOUT_S)
        object.__setattr__(self, "path", config.path)
        object.__setattr__(self, "auth_headers", config.auth_headers)

    @classmethod
    def memory(cls, **kwargs: Any) -> FetchCache:
        return cls(store="memory", **kwargs)

    @classmethod
    def sqlite(cls, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> FetchCache:
        return cls(store="sqlite", path=None if path is None else Path(os.fspath(path)),
                   **kwargs)

    def session(self) -> requests.Session:
        """A new session with its own cache of this kind (see :func:`cached_session`)."""
        return cached_session(self.store, self.path, expire_after=self.expire_after,
                              auth_headers=self.auth_headers)
