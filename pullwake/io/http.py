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
  value it sends (:class:`~pullwake.io.secrets.Secrets`) so that error text
  can be scrubbed of them.

Timeouts bound *lack of progress*, never a transfer's total duration: a
request's ``timeout`` bounds the wait for the answer's headers, then the wait
for each further body chunk (:mod:`pullwake.io.bodies`: :func:`read_bounded`,
:class:`BodyReader`), so a large answer over a slow link finishes while a
stalled one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from pullwake.errors import (
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
from pullwake.io.bodies import BodyReader, read_bounded
from pullwake.io.clock import Clock, deadline
from pullwake.io.secrets import MIN_SECRET, Secrets, _Hold, secret_values

__all__ = [
    "MIN_SECRET",
    "BodyReader",
    "HeadersSource",
    "HttpAnswer",
    "HttpClient",
    "Secrets",
    "error_code",
    "make_session",
    "read_bounded",
    "secret_values",
    "to_url",
    "translate",
    "transport_error",
]

Phase = Literal["connect", "read", "request"]
HeadersSource = (
    Mapping[str, str] | Callable[[], Awaitable[Mapping[str, str]]] | Callable[[], Mapping[str, str]]
    | None
)
#: Control-plane answers larger than this are an error (they are small JSON).
MAX_CONTROL_BODY = 1024 * 1024
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
#: ``json.dumps(value, separators=(",", ":"))`` without building an encoder per call.
_compact = json.JSONEncoder(separators=(",", ":")).encode


@functools.lru_cache(maxsize=1024)
def to_url(url: str) -> URL:
    """A yarl URL sent exactly as built (no re-quoting, no dot-segment folding).

    Cached: control-plane URLs repeat every wake (URLs are immutable).
    """
    return URL(url, encoded=True)


def make_session(*, verify_tls: bool = True, connect_timeout: float | None = None,
                 limit: int = 100) -> aiohttp.ClientSession:
    """A session for one runner: no cumulative timeout; TLS verified unless told not to.

    It keeps no cookies (``aiohttp.DummyCookieJar``): the Durable Streams
    protocol uses none, and the TypeScript original's ``fetch`` keeps none
    either, so a ``Set-Cookie`` from a server (or a proxy) is never sent back,
    and no request pays for filtering a jar.
    """
    timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect_timeout,
                                    sock_read=None)
    ssl_ctx: ssl.SSLContext | bool = bool(verify_tls)
    connector = aiohttp.TCPConnector(limit=limit, ssl=ssl_ctx, enable_cleanup_closed=False,
                                     socket_factory=_socket_factory(connect_timeout))
    return aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=True,
                                 raise_for_status=False, trust_env=False,
                                 cookie_jar=aiohttp.DummyCookieJar())


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
    it wraps every request.) The mapping itself is :func:`transport_error`,
    which a hot path calls from a plain ``except`` instead (no object per use).
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
        if exc is None:
            return
        mapped = transport_error(exc, self.phase, url=self.url, operation=self.operation,
                                 secrets=self.secrets)
        if mapped is not None:
            raise mapped from exc


def transport_error(exc: BaseException, phase: Phase, *, url: str | None = None,
                    operation: str = "request", secrets: Iterable[str] = ()
                    ) -> PullwakeError | None:
    """What :class:`translate` raises for ``exc`` (``raise it from exc``), or None
    to let ``exc`` propagate (pullwake's own errors, cancellation, the rest)."""
    if isinstance(exc, (PullwakeError, asyncio.CancelledError)):
        return None
    if isinstance(exc, aiohttp.ClientError):
        scrub_response_error(exc, secrets)
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        if phase == "connect":
            return ConnectTimeout(f"no response headers in time: {exc}", url=url)
        if phase == "read":
            return IdleTimeout(f"stream silent too long: {exc}", url=url)
        return RequestTimeout(str(exc) or "timed out", operation=operation, url=url)
    if isinstance(exc, aiohttp.InvalidURL):
        return ConfigError(f"invalid URL for {operation}")
    if isinstance(exc, (aiohttp.ClientError, OSError, UnicodeDecodeError, ValueError)):
        text = redact_text(f"{type(exc).__name__}: {exc}", secrets)
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

    def read_headers(self) -> Mapping[str, str] | Awaitable[Mapping[str, str]]:
        """The configured headers for a stream read, validated, their values kept secret.

        A fixed mapping (validated once) is returned itself, not a copy: the
        caller must not change it; a provider is resolved (awaitable), as
        :meth:`resolve_headers` does before every request.
        """
        src = self._headers
        if src is None:
            return _NO_HEADERS
        if not callable(src) and self._static is not None:
            return self._static
        return self.resolve_headers()

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
        known = self._secrets
        scoped: _Hold | None = None
        if headers:  # a request's own header values: secret for this request
            for value in headers.values():
                if value not in known:  # (usually all known: a wake's token is held)
                    scoped = known.hold([v for v in secret_values(headers) if v not in known])
                    scoped.__enter__()
                    break
        # (translate's mapping from a plain except, and the session's checks
        # inline: no context manager or property call per request)
        try:
            with deadline(self._clock, limit):
                src = self._headers
                if src is None:
                    hdrs: dict[str, str] = {}
                elif not callable(src) and self._static is not None:
                    hdrs = dict(self._static)  # a fixed mapping, validated once
                else:
                    hdrs = await self.resolve_headers()
                if headers:
                    hdrs.update(headers)
                data = None
                if json_body is not None:
                    # The payload names its type (a configured Content-Type still
                    # wins): no header to add, no registry lookup in aiohttp.
                    data = aiohttp.BytesPayload(_compact(json_body).encode(),
                                                content_type="application/json")
                session = self._session
                if session is None or self._closed or session.closed:
                    session = self.session
                resp = await session.request(method, to_url(url), data=data,
                                             headers=hdrs or None, allow_redirects=False)
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
        except BaseException as exc:
            mapped = transport_error(exc, "request", url=url, operation=operation,
                                     secrets=known)
            if mapped is None:
                raise
            raise mapped from exc
        finally:
            if scoped is not None:
                scoped.__exit__(None, None, None)


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
