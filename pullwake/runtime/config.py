"""RunnerConfig: every knob of a PullWakeRunner, validated when it is built.

This module owns the configuration dataclass, its defaults, its validation
(a bad value raises :class:`~pullwake.errors.ConfigError` naming the field)
and the URLs derived from it. Durations are seconds (floats); ``lease_ms`` is
milliseconds because the wire format says so.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pullwake.errors import ConfigError
from pullwake.io.http import HeadersSource
from pullwake.protocol.urls import join_url, segment, validate_base_url

if TYPE_CHECKING:
    import aiohttp

    from pullwake.io.clock import Clock
    from pullwake.io.transport import StreamFactory

__all__ = ["DEFAULT_READ_IDLE_TIMEOUT", "RunnerConfig"]

#: Above the reference server's 30 s SSE keep-alive and long-poll timeout.
DEFAULT_READ_IDLE_TIMEOUT = 45.0
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
    path segment.
    """

    base_url: str
    runner_id: str
    headers: HeadersSource = field(default=None, repr=False)  # may hold credentials
    claim_headers: HeadersSource = field(default=None, repr=False)
    claim_token_header: str | None = None
    offset: str | None = None
    wake_stream_path: str | None = None
    heartbeat_path: str | None = None
    claim_path: str | None = None
    #: Seconds between periodic heartbeats; 0: none periodic, but diagnostics
    #: changes still send one (as the original does); None: no heartbeats at all.
    heartbeat_interval: float | None = 30.0
    event_heartbeat_throttle: float = 2.0
    lease_ms: int | None = None
    live: Literal["sse", "long-poll"] = "sse"
    connect_timeout: float = 10.0
    read_idle_timeout: float = DEFAULT_READ_IDLE_TIMEOUT
    request_timeout: float = 10.0
    claim_grace: float = 1.0
    runtime_busy_retry: float = 0.025
    heartbeat_failures_before_reset: int = 2
    max_message_bytes: int = 1 * MiB
    max_response_bytes: int = 16 * MiB
    verify_tls: bool = True
    on_error: ErrorReporter | None = None
    stream_factory: StreamFactory | None = None
    clock: Clock | None = None
    session: aiohttp.ClientSession | None = None
    rng: Callable[[], float] | None = None
    spec_path: str | None = None
    name: str | None = field(default=None)

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
        if self.lease_ms is not None and (
            isinstance(self.lease_ms, bool) or not isinstance(self.lease_ms, int)
            or self.lease_ms <= 0
        ):
            raise ConfigError(f"lease_ms must be a positive int, got {self.lease_ms!r}")
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
        if self.lease_ms is not None:
            return self.lease_ms
        return max(1, int((self.heartbeat_interval or 0) * 3 * 1000))

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

