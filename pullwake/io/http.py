"""The aiohttp boundary: sessions, bounded requests, and the ONE error translation.

This module owns everything pullwake does with aiohttp directly:

- :func:`make_session` builds a ``ClientSession`` whose timeouts never include
  aiohttp's cumulative ``total`` (a live stream would die after 5 minutes);
  every phase is bounded by pullwake's own deadlines instead.
- :func:`translate` maps aiohttp / OS / timeout exceptions to pullwake's
  exception tree, by phase (``connect``, ``read``, ``request``), raised
  ``from`` the original. No other module catches aiohttp exceptions.
- :class:`HttpClient` runs control-plane requests (claim, heartbeat, ack, …)
  under ``request_timeout`` with bounded bodies, and knows every header
  value it sends (:class:`Secrets`) so that error text can be scrubbed of them.

Timeouts bound *lack of progress*, never a transfer's total duration: a
request's ``timeout`` bounds the wait for the answer's headers, then the wait
for each further body chunk (:func:`read_bounded`, :class:`BodyReader`), so a
large answer over a slow link finishes while a stalled one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from pullwake.errors import (
    AnswerTooLarge,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    ControlPlaneError,
    IdleTimeout,
    ProtocolError,
    PullwakeError,
    RequestTimeout,
    redact_text,
)
from pullwake.io.clock import Clock, deadline

__all__ = [
    "BodyReader",
    "HeadersSource",
    "HttpAnswer",
    "HttpClient",
    "Secrets",
    "error_code",
    "make_session",
    "read_bounded",
    "to_url",
    "translate",
]

Phase = Literal["connect", "read", "request"]
HeadersSource = (
    Mapping[str, str] | Callable[[], Awaitable[Mapping[str, str]]] | Callable[[], Mapping[str, str]]
    | None
)
#: Control-plane answers larger than this are an error (they are small JSON).
MAX_CONTROL_BODY = 1024 * 1024
_NO_SCOPE = contextlib.nullcontext()


@functools.lru_cache(maxsize=1024)
def to_url(url: str) -> URL:
    """A yarl URL sent exactly as built (no re-quoting, no dot-segment folding).

    Cached: control-plane URLs repeat every wake (URLs are immutable).
    """
    return URL(url, encoded=True)


def make_session(*, verify_tls: bool = True, connect_timeout: float | None = None,
                 limit: int = 100) -> aiohttp.ClientSession:
    """A session for one runner: no cumulative timeout; TLS verified unless told not to."""
    timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect_timeout,
                                    sock_read=None)
    ssl_ctx: ssl.SSLContext | bool = bool(verify_tls)
    connector = aiohttp.TCPConnector(limit=limit, ssl=ssl_ctx, enable_cleanup_closed=False,
                                     socket_factory=_socket_factory(connect_timeout))
    return aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=True,
                                 raise_for_status=False, trust_env=False)


def _socket_factory(user_timeout: float | None) -> Callable[[Any], socket.socket]:
    """Sockets whose sent data must be acknowledged within ``user_timeout``.

    ``TCP_USER_TIMEOUT`` (Linux): a request written to a kept-alive connection
    the server cut silently (its packets dropped) fails once it has gone
    unacknowledged for ``connect_timeout``, instead of hanging until the read
    idle timeout (issue 14, class 14). A long-poll the server holds open is
    not affected: its request was acknowledged, nothing is outstanding.
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)

    def create(addr_info: Any) -> socket.socket:
        family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
        sock = socket.socket(family=family, type=type_, proto=proto)
        if option is not None and user_timeout and family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(user_timeout * 1000)))
        return sock

    return create


class translate:  # lower case: used like a function, `with translate("read", url=...):`
    """Map transport exceptions raised in the body to pullwake's tree.

    ``connect``: until response headers of the wake stream; ``read``: reading
    an open wake stream; ``request``: a control-plane call. pullwake's own
    errors and cancellation pass through untouched. (A class, not a generator:
    it wraps every request.)
    """

    __slots__ = ("operation", "phase", "secrets", "url")

    def __init__(self, phase: Phase, *, url: str | None = None, operation: str = "request",
                 secrets: Iterable[str] = ()) -> None:
        self.phase = phase
        self.url = url
        self.operation = operation
        self.secrets = secrets

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if exc is None or isinstance(exc, (PullwakeError, asyncio.CancelledError)):
            return
        mapped = self._map(exc)
        if mapped is not None:
            raise mapped from exc

    def _map(self, exc: BaseException) -> PullwakeError | None:
        phase, url, operation = self.phase, self.url, self.operation
        if isinstance(exc, aiohttp.ClientError):
            scrub_response_error(exc, self.secrets)
        if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
            if phase == "connect":
                return ConnectTimeout(f"no response headers in time: {exc}", url=url)
            if phase == "read":
                return IdleTimeout(f"stream silent too long: {exc}", url=url)
            return RequestTimeout(str(exc) or "timed out", operation=operation, url=url)
        if isinstance(exc, aiohttp.InvalidURL):
            return ConfigError(f"invalid URL for {operation}")
        if isinstance(exc, (aiohttp.ClientError, OSError, UnicodeDecodeError, ValueError)):
            text = redact_text(f"{type(exc).__name__}: {exc}", self.secrets)
            if phase == "connect":
                return ConnectError(f"connection failed: {text}", url=url)
            if phase == "read":
                return ProtocolError(f"stream broken: {text}", url=url)
            return ControlPlaneError(f"transport failure: {text}", operation=operation, url=url)
        return None


def scrub_response_error(exc: BaseException, secrets: Iterable[str]) -> None:
    """Scrub, in place, what aiohttp's exceptions carry from the exchange.

    A ``ClientResponseError`` holds the request's headers (``request_info``),
    the answer's headers and its reason or bad line (a broken proxy may echo a
    token there), and shows them in its repr and args; so does the parser
    error it was raised from. They stay in the cause chain of the pullwake
    error, scrubbed (aiohttp's own exceptions only; nothing else is touched).
    """
    secrets = tuple(secrets)
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen or not type(e).__module__.startswith("aiohttp"):
            continue
        seen.add(id(e))
        if isinstance(e, aiohttp.ClientResponseError):
            info = e.request_info
            if info is not None:
                e.request_info = aiohttp.RequestInfo(info.url, info.method, CIMultiDictProxy(
                    CIMultiDict()), info.real_url)
        if isinstance(getattr(e, "message", None), str):
            e.message = redact_text(e.message, secrets)  # type: ignore[attr-defined]
        if getattr(e, "headers", None) is not None:
            with contextlib.suppress(AttributeError):
                e.headers = None  # type: ignore[attr-defined]
        e.args = tuple(redact_text(a, secrets) if isinstance(a, str) else
                       (None if isinstance(a, aiohttp.RequestInfo) else a) for a in e.args)
        todo += [e.__cause__, e.__context__]


async def _chunk(resp: aiohttp.ClientResponse, idle: float | None, clock: Clock | None,
                 n: int = -1) -> bytes:
    if idle is None or clock is None:
        return await (resp.content.readany() if n < 0 else resp.content.read(n))
    async with deadline(clock, idle):
        return await (resp.content.readany() if n < 0 else resp.content.read(n))


async def read_bounded(resp: aiohttp.ClientResponse, limit: int, *, idle: float | None = None,
                       clock: Clock | None = None) -> bytes:
    """Read a whole body, failing with ProtocolError once it passes ``limit`` bytes.

    With ``idle`` (and ``clock``), each chunk must arrive within ``idle``
    seconds of the previous one: progress, not the total duration, is bounded.
    """
    if resp.content_length is not None and resp.content_length > limit:
        raise ProtocolError(f"response body of {resp.content_length} bytes exceeds the "
                            f"{limit}-byte limit", url=str(resp.url))
    if (idle is None and resp.content_length is not None
            and "Content-Encoding" not in resp.headers
            and not resp.headers.get("Transfer-Encoding")):
        return await resp.read()  # exact length known, no decompression: bounded already
    # Count while reading, each chunk within ``idle`` of the last. A small
    # answer is one chunk (returned as it is); only several chunks are joined.
    body = await _chunk(resp, idle, clock)
    more: list[bytes] = []
    size = len(body)
    while True:
        if size > limit:
            raise ProtocolError(f"response body exceeds the {limit}-byte limit",
                                url=str(resp.url))
        chunk = await _chunk(resp, idle, clock)
        if not chunk:
            return b"".join((body, *more)) if more else body
        more.append(chunk)
        size += len(chunk)


class BodyReader:
    """A response body as a file-like ``await read(n)``, for incremental parsers.

    Each read waits at most ``idle`` seconds for progress. The body may be of
    any length; what is bounded is one *item*: more than ``item_limit`` bytes
    read since the parser last called :meth:`mark` (an item was complete)
    raises :class:`~pullwake.errors.AnswerTooLarge` (memory held for one item:
    at most ``item_limit`` plus one read).
    """

    def __init__(self, resp: aiohttp.ClientResponse, *, idle: float | None, clock: Clock | None,
                 item_limit: int, operation: str) -> None:
        self._resp = resp
        self._idle = idle
        self._clock = clock
        self.item_limit = item_limit
        self._operation = operation
        self.since_mark = 0
        self.total = 0

    def mark(self) -> None:
        """One item is complete: the per-item count starts again."""
        self.since_mark = 0

    async def read(self, n: int = -1) -> bytes:
        if n == 0:  # a parser probing the type of the stream
            return b""
        # Checked before reading more: the parser marks an item only after it
        # parsed the chunk that completed it, so one read ahead is allowed for.
        if self.since_mark > self.item_limit:
            raise AnswerTooLarge(
                f"one item of the answer is larger than {self.item_limit} bytes",
                operation=self._operation, limit=self.item_limit, status=self._resp.status,
                url=str(self._resp.url))
        data = await _chunk(self._resp, self._idle, self._clock, n if n > 0 else -1)
        self.since_mark += len(data)
        self.total += len(data)
        return data


def error_code(body: Any) -> str | None:
    """The machine-readable code of a JSON error body, in any of the shapes servers use.

    ``{"error": {"code": "X"}}``, ``{"code": "X"}``, ``{"error": "X"}`` (when X
    looks like a code). Never matched by substring.
    """
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        return str(err["code"])
    if isinstance(body.get("code"), str):
        return str(body["code"])
    if isinstance(err, str) and err.replace("_", "").isalnum() and err.isupper():
        return err
    return None


def retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 <= value <= 3600 else None


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    # Headers and body are the server's and may echo credentials: not in the repr.
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    #: What ``consume`` made of a 2xx body read incrementally (then ``body`` is empty).
    streamed: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @functools.cached_property
    def _parsed(self) -> Any:  # decoded once, however often json() and code are read
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def json(self) -> Any:
        return self._parsed

    @property
    def code(self) -> str | None:
        return error_code(self._parsed)


#: Shorter values are not treated as secrets (they would scrub ordinary words).
MIN_SECRET = 4


def secret_values(headers: Mapping[str, str]) -> Iterator[str]:
    """The secret-looking parts of header values: each value, and ``xyz`` of ``Bearer xyz``."""
    for value in headers.values():
        if isinstance(value, str) and len(value) >= MIN_SECRET:
            yield value
            if " " in value:  # "Bearer xyz": the credential alone too
                cred = value.split(" ", 1)[1]
                if len(cred) >= MIN_SECRET:
                    yield cred


class Secrets:
    """The secrets one client scrubs from text; bounded however long it runs.

    Two kinds, so the set never grows with the number of requests or wakes:

    - *kept*: values of configured headers (a mapping, or what a provider
      returns). A provider that rotates credentials yields new values: the
      :attr:`keep_limit` most recently seen are kept, the oldest forgotten.
    - *held*: values scoped to a piece of work (a claim token for the life of
      its wake, a request's own headers for that request), counted, and
      forgotten when the last holder lets go (:meth:`hold`).

    Adding or forgetting costs O(1); the snapshot (:meth:`snapshot`, iteration)
    and the compiled pattern behind :meth:`scrub` are rebuilt only after the
    set changed, and only when something reads them (error paths).
    """

    __slots__ = ("_held", "_kept", "_pattern", "_snapshot", "keep_limit")

    def __init__(self, *, keep_limit: int = 64) -> None:
        self.keep_limit = keep_limit
        self._kept: dict[str, None] = {}  # insertion-ordered: oldest first
        self._held: dict[str, int] = {}
        self._snapshot: tuple[str, ...] | None = None
        self._pattern: re.Pattern[str] | None = None

    def keep(self, values: Iterable[str]) -> None:
        """Remember ``values`` (most recent last); beyond the limit the oldest go."""
        kept = self._kept
        for value in values:
            if value in kept:
                if next(reversed(kept)) != value:  # keep recency order
                    del kept[value]
                    kept[value] = None
                continue
            kept[value] = None
            if len(kept) > self.keep_limit:
                del kept[next(iter(kept))]
            self._changed()

    def hold(self, values: Iterable[str]) -> _Hold:
        """Scrub ``values`` while the block runs; forget them after (unless held elsewhere)."""
        return _Hold(self, tuple(values))

    def _add_held(self, vals: tuple[str, ...]) -> None:
        held = self._held
        for v in vals:
            n = held.get(v, 0)
            held[v] = n + 1
            if n == 0 and v not in self._kept:
                self._changed()

    def _drop_held(self, vals: tuple[str, ...]) -> None:
        held = self._held
        for v in vals:
            n = held[v] - 1
            if n:
                held[v] = n
            else:
                del held[v]
                if v not in self._kept:
                    self._changed()

    def _changed(self) -> None:
        self._snapshot = None
        self._pattern = None

    def snapshot(self) -> tuple[str, ...]:
        """Every secret now known, longest first (rebuilt only after a change)."""
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = tuple(sorted({*self._kept, *self._held}, key=len,
                                                 reverse=True))
        return snap

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        return len(self.snapshot())

    def __contains__(self, value: object) -> bool:
        return value in self._kept or value in self._held

    def __repr__(self) -> str:  # never the values themselves
        return f"<Secrets: {len(self._kept)} kept, {len(self._held)} held>"

    def scrub(self, text: str) -> str:
        """``text`` with every known secret and any ``Bearer xyz`` credential replaced."""
        text = redact_text(text)
        pattern = self._pattern
        if pattern is None:
            snap = self.snapshot()
            if not snap:
                return text
            pattern = self._pattern = re.compile("|".join(map(re.escape, snap)))
        return pattern.sub("***", text)


class _Hold:
    """``with secrets.hold(values):`` (a class, not a generator: it wraps requests)."""

    __slots__ = ("_owner", "_vals")

    def __init__(self, owner: Secrets, vals: tuple[str, ...]) -> None:
        self._owner = owner
        self._vals = vals

    def __enter__(self) -> None:
        self._owner._add_held(self._vals)

    def __exit__(self, *exc: object) -> None:
        self._owner._drop_held(self._vals)


class HttpClient:
    """Control-plane HTTP for one runner: a session, headers, timeouts, secrets.

    ``headers`` is a mapping or a (sync or async) provider, resolved before
    every connection attempt and request. Every header value it yields is
    kept as a secret so :meth:`scrub` can remove it from any text; a
    request's own ``headers`` are held for that request, and
    :meth:`hold_secrets` holds others (a claim token) for a wake
    (:class:`Secrets`: bounded, O(1) per request).
    """

    def __init__(self, *, headers: HeadersSource, clock: Clock, request_timeout: float,
                 verify_tls: bool = True, connect_timeout: float | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        self._headers = headers
        self._clock = clock
        self.request_timeout = request_timeout
        self._verify_tls = verify_tls
        self._connect_timeout = connect_timeout
        self._external = session
        self._session: aiohttp.ClientSession | None = session
        self._secrets = Secrets()
        self._closed = False
        self._static: dict[str, str] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session, created on first use. Closed clients refuse (no stray sessions)."""
        if self._closed:
            raise ControlPlaneError("the runner's HTTP client is closed (stopped)",
                                    operation="request")
        if self._session is None or self._session.closed:
            self._session = make_session(verify_tls=self._verify_tls,
                                         connect_timeout=self._connect_timeout)
        return self._session

    def open(self) -> None:
        """Allow requests again (a new run)."""
        self._closed = False

    async def close(self) -> None:
        """Close the owned session; until :meth:`open`, nothing creates another."""
        self._closed = True
        if self._session is not None and self._session is not self._external:
            await self._session.close()
        self._session = self._external

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret now known (a cached snapshot: rebuilt only after a change)."""
        return self._secrets.snapshot()

    def remember_secrets(self, headers: Mapping[str, str]) -> None:
        """Keep the values of configured headers (the most recent 64 distinct)."""
        self._secrets.keep(secret_values(headers))

    def hold_secrets(self, *values: str) -> _Hold:
        """Scrub ``values`` (and their ``Bearer`` forms) until the block ends."""
        vals: list[str] = []
        for v in values:
            if len(v) >= MIN_SECRET:
                vals += (v, f"Bearer {v}")
        return _Hold(self._secrets, tuple(vals))

    def scrub(self, text: str) -> str:
        return self._secrets.scrub(text)

    async def resolve_headers(self, source: HeadersSource = None, *,
                              use_default: bool = True) -> dict[str, str]:
        src = self._headers if use_default and source is None else source
        if src is None:
            return {}
        if not callable(src) and src is self._headers and self._static is not None:
            return dict(self._static)  # a fixed mapping: validated once
        value: Any = src
        if callable(src):
            value = src()
            if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
                value = await value
        if not isinstance(value, Mapping):
            raise ConfigError("headers provider must return a mapping of str to str")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ConfigError(f"header {k!r} must map str to str")
            if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
                raise ConfigError(f"header {k!r} contains a line break")
            out[k] = v
        self.remember_secrets(out)
        if not callable(src) and src is self._headers:
            self._static = dict(out)
        return out

    async def request(self, method: str, url: str, *, operation: str, json_body: Any = None,
                      headers: Mapping[str, str] | None = None, timeout: float | None = None,
                      max_body: int = MAX_CONTROL_BODY,
                      consume: Callable[[BodyReader], Awaitable[Any]] | None = None,
                      item_limit: int = MAX_CONTROL_BODY) -> HttpAnswer:
        """One control-plane request, bounded by lack of progress.

        ``timeout`` bounds the wait for the answer's headers, then the wait for
        each body chunk: a slow link that keeps delivering finishes. A 2xx body
        goes to ``consume`` (an incremental parser, per-item ``item_limit``) if
        given, else it is read whole up to ``max_body``.
        """
        limit = self.request_timeout if timeout is None else timeout
        scoped: contextlib.AbstractContextManager[None] = _NO_SCOPE
        if headers:  # a request's own header values: secret for this request
            known = self._secrets
            for value in headers.values():
                if value not in known:  # (usually all known: a wake's token is held)
                    scoped = known.hold([v for v in secret_values(headers) if v not in known])
                    break
        with scoped, translate("request", url=url, operation=operation,
                               secrets=self._secrets):
            async with deadline(self._clock, limit):
                hdrs = await self.resolve_headers()
                if headers:
                    hdrs.update(headers)
                data = None
                if json_body is not None:
                    data = json.dumps(json_body, separators=(",", ":")).encode()
                    hdrs.setdefault("content-type", "application/json")
                resp = await self.session.request(method, to_url(url), data=data,
                                                  headers=hdrs, allow_redirects=False)
            async with resp:
                if method == "HEAD":
                    return HttpAnswer(resp.status, resp.headers, b"")
                if consume is not None and 200 <= resp.status < 300:
                    streamed = await consume(BodyReader(resp, idle=limit, clock=self._clock,
                                                        item_limit=item_limit,
                                                        operation=operation))
                    return HttpAnswer(resp.status, resp.headers, b"", streamed)
                body = await read_bounded(resp, max_body, idle=limit, clock=self._clock)
                return HttpAnswer(resp.status, resp.headers, body)  # read-only view


def raise_for_answer(answer: HttpAnswer, *, operation: str, url: str,
                     scrub: Callable[[str], str] = lambda s: s,
                     cls: type[ControlPlaneError] = ControlPlaneError) -> None:
    """Raise ``cls`` for a non-2xx answer, carrying status, code and Retry-After."""
    if answer.ok:
        return
    code = answer.code
    if code is not None:
        code = scrub(code)  # a server may echo anything, even a token, as its "code"
    detail = ""
    if code is None and answer.body:
        # Scrub before cutting: a secret straddling the cut would survive in part.
        detail = scrub(answer.body.decode("utf-8", errors="replace"))[:200]
    raise cls(f"unexpected answer {detail!r}" if detail else "unexpected answer",
              operation=operation, status=answer.status, code=code, url=url,
              retry_after=retry_after(answer.headers))
