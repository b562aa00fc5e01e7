"""RunnerConfig and SubscriptionConfig: a runner's knobs and a subscription's, validated.

This module owns the configuration dataclass, its defaults, its validation
(a bad value raises :class:`~pullwake.errors.ConfigError` naming the field)
and the URLs derived from it. Durations are seconds (floats), milliseconds
only on the wire: ``heartbeat_lease`` (the runner's heartbeat lease, not a
claim's) is sent as ``lease_ms`` (:attr:`RunnerConfig.effective_lease_ms`).

The bounds the configuration promises are properties here, so docs,
benchmarks and tests read them from one place:

- ``hung_connect_bound``: a connection attempt that gets no response headers
  fails after ``connect_timeout``;
- ``hung_stream_bound``: an open stream that goes silent ends after
  ``read_idle_timeout``;
- ``hung_heartbeat_bound``: a server that stops answering heartbeats forces a
  stream reset within ``heartbeat_interval + 2 x request_timeout``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pullwake.errors import ConfigError
from pullwake.io.http import HeadersSource
from pullwake.protocol.urls import join_url, segment, validate_base_url
from pullwake.runtime.settings import boolean, choice, number, python_only, server_url, setting

if TYPE_CHECKING:
    import aiohttp

    from pullwake.io.clock import Clock
    from pullwake.io.transport import StreamFactory

__all__ = [
    "DEFAULT_CLAIM_LEASE",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_READ_IDLE_TIMEOUT",
    "DEFAULT_WAKE_STREAM",
    "Live",
    "RunnerConfig",
    "SubscriptionConfig",
]

#: Above the reference server's 30 s SSE keep-alive and long-poll timeout.
DEFAULT_READ_IDLE_TIMEOUT = 45.0
#: The original's heartbeat period, for runners and workers alike.
DEFAULT_HEARTBEAT_INTERVAL = 30.0
#: A subscription's claim lease (seconds) and its wake stream, unless told otherwise.
DEFAULT_CLAIM_LEASE = 30.0
DEFAULT_WAKE_STREAM = "wake/pool"
#: How the wake stream is read.
Live = Literal["sse", "long-poll"]
MiB = 1024 * 1024

ErrorReporter = Callable[[BaseException], Any]


def _positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, "
                          f"got {value!r}")


def _check_headers(name: str, value: object) -> None:
    if value is None or callable(value):
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a mapping or a provider function")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigError(f"{name}: header {k!r} must map str to str")
        if any(c in k + v for c in "\r\n\0"):
            raise ConfigError(f"{name}: header {k!r} contains a control character")


@dataclass(frozen=True, kw_only=True)
class RunnerConfig:
    """Configuration of one :class:`~pullwake.runtime.runner.PullWakeRunner`.

    Paths default to the Electric runner API; a ``base_url`` path prefix
    (tenant, version) is kept on every URL, and ``runner_id`` is encoded as one
    path segment. A :class:`~pullwake.runtime.worker_config.WorkerConfig`
    contains one: there ``base_url`` is the worker's server and ``runner_id``
    its worker name. Each field is a :func:`~pullwake.runtime.settings.setting`
    (``pullwake run`` derives its flag, variable and TOML key) or
    :func:`~pullwake.runtime.settings.python_only`.
    """

    base_url: str = setting(
        key="server", parse=server_url, metavar="URL", required=True,
        help="the stream root of the Durable Streams server, "
             "e.g. http://127.0.0.1:4437/v1/stream")
    runner_id: str = setting(
        key="worker", metavar="NAME",
        help="this worker's name in claims (default: host name + a unique id)")
    headers: HeadersSource = python_only(
        None, repr=False,  # may hold credentials
        why="a mapping or a provider function; the CLI builds it from --header, "
            "--header-env and --token-env")
    claim_headers: HeadersSource = python_only(
        None, repr=False, why="headers of the Electric claim API; a Worker claims through "
                              "the subscription API with `headers`")
    claim_token_header: str | None = python_only(
        None, why="the Electric claim API's token header; not used by a Worker")
    offset: str | None = python_only(
        None, why="where a runner resumes its wake stream; a Worker reads its wake stream "
                  "from the beginning")
    wake_stream_path: str | None = python_only(
        None, why="a Worker derives it from its subscriptions' wake stream (--wake-stream)")
    heartbeat_path: str | None = python_only(
        None, why="an Electric runner API path; a Worker heartbeats its wake stream")
    claim_path: str | None = python_only(
        None, why="an Electric runner API path; a Worker claims through the subscription API")
    #: Seconds between periodic heartbeats; 0: none periodic, but diagnostics
    #: changes still send one (as the original does); None: no heartbeats at all.
    heartbeat_interval: float | None = setting(
        DEFAULT_HEARTBEAT_INTERVAL, parse=number(0, 86_400, "seconds"), metavar="SECONDS",
        help="seconds between the runner's periodic heartbeats (its liveness probe of the "
             "server); 0: only event-driven ones")
    event_heartbeat_throttle: float = python_only(
        2.0, why="the least spacing of event-driven heartbeats: an internal rate limit")
    #: The runner's heartbeat lease (seconds): how long the server may consider
    #: the runner alive after a heartbeat. None: 3 x heartbeat_interval. Sent as
    #: ``lease_ms`` (the wire's milliseconds); not a claim's lease (that is
    #: SubscriptionConfig.claim_lease).
    heartbeat_lease: float | None = python_only(
        None, why="the Electric runner API's heartbeat lease; a Worker's heartbeat (a HEAD "
                  "of its wake stream) carries none")
    live: Live = setting(
        "sse", parse=choice("sse", "long-poll"), metavar="MODE",
        help="how the wake stream is read: sse or long-poll")
    connect_timeout: float = setting(
        10.0, parse=number(0.001, 3_600, "seconds"), metavar="SECONDS",
        help="bound on getting the wake stream's response headers")
    read_idle_timeout: float = setting(
        DEFAULT_READ_IDLE_TIMEOUT, parse=number(0.001, 86_400, "seconds"), metavar="SECONDS",
        help="an open wake stream silent this long is reconnected (above the server's 30 s "
             "keep-alive)")
    request_timeout: float = setting(
        10.0, parse=number(0.001, 3_600, "seconds"), metavar="SECONDS",
        help="bound on lack of progress of each control-plane call (claim, ack, release, "
             "heartbeat, subscription PUT/GET) and of each handler read")
    claim_grace: float = python_only(
        1.0, why="the runner's grace for claims in flight at stop; a Worker's handlers get "
                 "stop_grace")
    runtime_busy_retry: float = python_only(
        0.025, why="an internal retry interval while the runtime is busy")
    heartbeat_failures_before_reset: int = python_only(
        2, why="an internal threshold of the liveness probe")
    max_message_bytes: int = setting(
        1 * MiB, parse=number(64, 1 << 30, "bytes", integer=True), metavar="BYTES",
        help="the largest one message of the wake stream; larger ones are skipped and reported")
    max_response_bytes: int = python_only(
        16 * MiB, why="a bound on one wake-stream answer, kept above max_message_bytes")
    verify_tls: bool = setting(
        True, parse=boolean, metavar="BOOL",
        help="verify the server's TLS certificate (false only for a test server)")
    on_error: ErrorReporter | None = python_only(None, why="a callable")
    stream_factory: StreamFactory | None = python_only(None, why="an object (a test seam)")
    clock: Clock | None = python_only(None, why="an object (tests inject a clock)")
    session: aiohttp.ClientSession | None = python_only(None, why="an aiohttp object")
    rng: Callable[[], float] | None = python_only(None, why="a callable (tests inject it)")
    spec_path: str | None = python_only(
        None, why="the lifecycle spec is the packaged one; `pullwake validate --spec` checks "
                  "another")
    name: str | None = python_only(
        None, why="the log label; a Worker uses its worker name")

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", validate_base_url(self.base_url))
        if not isinstance(self.runner_id, str) or not self.runner_id:
            raise ConfigError("runner_id must be a non-empty string")
        if len(self.runner_id) > 512 or any(ord(c) < 32 for c in self.runner_id):
            raise ConfigError("runner_id must be at most 512 characters with no control "
                              "characters")
        _check_headers("headers", self.headers)
        _check_headers("claim_headers", self.claim_headers)
        for name in ("connect_timeout", "read_idle_timeout", "request_timeout"):
            _positive(name, getattr(self, name))
        if self.heartbeat_interval is not None:
            _positive("heartbeat_interval", self.heartbeat_interval, allow_zero=True)
        for name in ("event_heartbeat_throttle", "claim_grace",
                     "runtime_busy_retry"):
            _positive(name, getattr(self, name), allow_zero=True)
        if self.live not in ("sse", "long-poll"):
            raise ConfigError(f"live must be 'sse' or 'long-poll', got {self.live!r}")
        if self.heartbeat_lease is not None:
            _positive("heartbeat_lease", self.heartbeat_lease)
        for name in ("max_message_bytes", "max_response_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 64:
                raise ConfigError(f"{name} must be an int >= 64, got {v!r}")
        if self.max_response_bytes < self.max_message_bytes:
            raise ConfigError("max_response_bytes must be >= max_message_bytes")
        if (not isinstance(self.heartbeat_failures_before_reset, int)
                or self.heartbeat_failures_before_reset < 1):
            raise ConfigError("heartbeat_failures_before_reset must be an int >= 1")
        if self.offset is not None:
            from pullwake.io.transport import valid_offset

            if not valid_offset(self.offset):
                raise ConfigError("offset must be printable ASCII without spaces, "
                                  "at most 256 characters")
        if self.claim_token_header is not None and (
            not isinstance(self.claim_token_header, str)
            or not self.claim_token_header.replace("-", "").isalnum()
        ):
            raise ConfigError("claim_token_header must be a header name")
        if not isinstance(self.verify_tls, bool):
            raise ConfigError(f"verify_tls must be True or False, got {self.verify_tls!r}: "
                              "TLS verification is turned off only by verify_tls=False")
        if self.on_error is not None and not callable(self.on_error):
            raise ConfigError("on_error must be callable")

    def __repr__(self) -> str:
        """Every field but the headers (credentials); the base URL without userinfo."""
        from dataclasses import fields

        from pullwake.errors import redact_url

        parts = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name == "base_url":
                value = redact_url(value)
            parts.append(f"{f.name}={value!r}")
        return f"RunnerConfig({', '.join(parts)})"

    # ----------------------------------------------------------------- derived

    @property
    def effective_lease_ms(self) -> int:
        """The heartbeat lease on the wire (``lease_ms``): ``heartbeat_lease`` or 3 x interval."""
        seconds = self.heartbeat_lease
        if seconds is None:
            seconds = (self.heartbeat_interval or 0) * 3
        return max(1, round(seconds * 1000))

    def _url(self, path: str | None, default: str) -> str:
        return join_url(self.base_url, path if path is not None else default)

    @property
    def wake_stream_url(self) -> str:
        return self._url(self.wake_stream_path, f"/runners/{segment(self.runner_id)}/wake")

    @property
    def heartbeat_url(self) -> str:
        return self._url(self.heartbeat_path,
                         f"/_electric/runners/{segment(self.runner_id)}/heartbeat")

    @property
    def claim_url(self) -> str:
        return self._url(self.claim_path, f"/_electric/runners/{segment(self.runner_id)}/claim")

    @property
    def hung_connect_bound(self) -> float:
        return self.connect_timeout

    @property
    def hung_stream_bound(self) -> float:
        return self.read_idle_timeout

    @property
    def hung_heartbeat_bound(self) -> float | None:
        if not self.heartbeat_interval:
            return None
        return self.heartbeat_interval + self.heartbeat_failures_before_reset * self.request_timeout


@dataclass(frozen=True, kw_only=True)
class SubscriptionConfig:
    """One pull-wake subscription: which streams wake it, and its claim lease.

    ``claim_lease`` (seconds, 1 to 600) is the lease on each claimed wake: the
    worker extends it while its handler runs; if the worker dies the server
    gives the wake to another worker after this long. It goes on the wire as
    the subscription's ``lease_ttl_ms``. It is not the runner's heartbeat lease
    (:attr:`~pullwake.runtime.config.RunnerConfig.heartbeat_lease`).
    """

    id: str = setting(
        key="subscription", metavar="ID",
        help="the id of the worker's subscription (one; several: [[subscription]] tables "
             "in --config)")
    wake_stream: str = setting(
        DEFAULT_WAKE_STREAM, metavar="PATH",
        help="the stream the server writes wakes to, shared by all subscriptions of this "
             "worker (created if missing)")
    pattern: str | None = setting(
        None, metavar="GLOB",
        help="glob of the streams that wake the subscription, e.g. 'events/*'")
    streams: tuple[str, ...] = setting(
        (), key="stream", repeat=True, metavar="PATH",
        help="a stream that wakes the subscription (repeatable)")
    claim_lease: float = setting(
        DEFAULT_CLAIM_LEASE, parse=number(1, 600, "seconds"), metavar="SECONDS",
        help="lease on each claimed wake: the worker extends it while its handler runs; if "
             "the worker dies, the server gives the wake to another worker after this long "
             "(the subscription's lease_ttl_ms)")

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id or len(self.id) > 256:
            raise ConfigError("subscription id must be a non-empty string of at most 256 chars")
        if not self.pattern and not self.streams:
            raise ConfigError(f"subscription {self.id!r} needs a pattern or streams")
        object.__setattr__(self, "streams", tuple(self.streams))
        lease = self.claim_lease
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) \
                or not 1 <= lease <= 600:
            raise ConfigError(f"claim_lease must be a number of seconds from 1 to 600, "
                              f"got {lease!r}")
        if not isinstance(self.wake_stream, str) or not self.wake_stream.strip("/"):
            raise ConfigError("wake_stream must be a stream path")

    @property
    def lease_ttl_ms(self) -> int:
        """``claim_lease`` on the wire (the subscription's ``lease_ttl_ms``)."""
        return round(self.claim_lease * 1000)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "pull-wake", "wake_stream": self.wake_stream,
                               "lease_ttl_ms": self.lease_ttl_ms}
        if self.pattern:
            out["pattern"] = self.pattern
        if self.streams:
            out["streams"] = list(self.streams)
        return out
