"""WorkerConfig: one worker's whole configuration, containing its RunnerConfig.

This module owns :class:`WorkerConfig` (frozen, keyword-only, validated when
built: a bad value is a :class:`~pullwake.errors.ConfigError` naming the
field) and the translation of :class:`pullwake.Worker`'s keyword arguments
into one (:meth:`WorkerConfig.from_keywords`). A worker's configuration is
four dataclasses, each concept named once:

- ``runner``: a :class:`~pullwake.runtime.config.RunnerConfig`: the server
  (``base_url``), the worker's name (``runner_id``), headers, how the wake
  stream is read, timeouts, the heartbeat, clock and error reporter: what the
  worker shares with its runner;
- ``subscriptions``: :class:`~pullwake.runtime.config.SubscriptionConfig` s,
  each with its claim lease (``claim_lease``, seconds);
- ``failure_policy``: the :class:`~pullwake.runtime.failures.FailurePolicy`;
- the worker's own fields: concurrency, stop grace, read and tracking limits.

Durations are seconds; milliseconds exist only on the wire. Two leases, two
names: a claim's lease is ``SubscriptionConfig.claim_lease`` (``lease_ttl_ms``
on the wire); the runner's heartbeat lease is ``RunnerConfig.heartbeat_lease``
(``lease_ms`` on the wire, unused by a worker). ``pullwake run`` derives its
flags, variables and TOML keys from these fields
(:mod:`pullwake.runtime.settings`). It does no I/O.
"""

from __future__ import annotations

import dataclasses
import socket
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypedDict

from pullwake.errors import ConfigError
from pullwake.io.http import HeadersSource
from pullwake.protocol.urls import encode_path
from pullwake.runtime.config import Live, RunnerConfig, SubscriptionConfig
from pullwake.runtime.failures import FailurePolicy
from pullwake.runtime.settings import nested, number, python_only, setting
from pullwake.runtime.subscriptions import MAX_CLAIM_STREAMS

if TYPE_CHECKING:
    import aiohttp

    from pullwake.io.clock import Clock
    from pullwake.io.fetchcache import FetchCache
    from pullwake.io.transport import StreamFactory

__all__ = ["WorkerConfig", "WorkerKeywords", "default_worker_name"]

MiB = 1024 * 1024

#: RunnerConfig fields a worker sets from its own: ``server``, ``worker_name``,
#: its subscriptions' wake stream.
DERIVED_RUNNER_FIELDS = ("base_url", "runner_id", "wake_stream_path", "name")


def default_worker_name() -> str:
    """The host name and a unique id: the worker name when none is given."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def _count(name: str, value: object, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an int >= {lo}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """The configuration of one :class:`pullwake.Worker` (``Worker(config=..., handler=...)``).

    ``runner.wake_stream_path`` is derived from the subscriptions' (one,
    shared) wake stream and ``runner.name`` from ``runner.runner_id`` when not
    given.
    """

    runner: RunnerConfig = nested(RunnerConfig)
    subscriptions: tuple[SubscriptionConfig, ...] = nested(SubscriptionConfig)
    failure_policy: FailurePolicy = nested(FailurePolicy, default_factory=FailurePolicy)
    max_concurrency: int = setting(
        4, parse=number(1, 10_000, integer=True), metavar="N",
        help="handlers running at once, across all subscriptions")
    stop_grace: float = setting(
        10.0, parse=number(0, 86_400, "seconds"), metavar="SECONDS",
        help="at stop, how long running handlers may finish and ack before they are "
             "cancelled and their claims released (a second signal ends it early)")
    max_claim_streams: int = setting(
        MAX_CLAIM_STREAMS, parse=number(1, 1_000_000, integer=True), metavar="N",
        help="streams one wake hands over (those with pending work first); the others stay "
             "pending on the server and come with the next wake")
    max_tracked_streams: int = setting(
        100_000, parse=number(1, 100_000_000, integer=True), metavar="N",
        help="acked offsets remembered per subscription, to recover after a server "
             "restart (a forgotten stream is recovered from its beginning)")
    max_item_bytes: int = setting(
        16 * MiB, parse=number(1, 1 << 31, "bytes", integer=True), metavar="BYTES",
        help="the largest one message a handler read accepts; larger ones are bad items "
             "(OversizedMessage), never a failed read")
    fetch_cache: FetchCache | None = python_only(
        None, why="an object: FetchCache.memory() or FetchCache.sqlite(path)")

    def __post_init__(self) -> None:
        if not isinstance(self.runner, RunnerConfig):
            raise ConfigError(f"runner must be a RunnerConfig, got {type(self.runner).__name__}")
        if not isinstance(self.failure_policy, FailurePolicy):
            raise ConfigError("failure_policy must be a FailurePolicy, got "
                              f"{type(self.failure_policy).__name__}")
        subs = self.subscriptions
        if isinstance(subs, SubscriptionConfig) or not isinstance(subs, Sequence):
            raise ConfigError("subscriptions must be a sequence of SubscriptionConfig")
        subs = tuple(subs)
        if not subs:
            raise ConfigError("a worker needs a subscription (id plus pattern or streams)")
        for s in subs:
            if not isinstance(s, SubscriptionConfig):
                raise ConfigError(f"subscriptions must be SubscriptionConfig, got "
                                  f"{type(s).__name__}")
        ids = [s.id for s in subs]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ConfigError(f"subscription {twice[0]!r} is declared twice")
        if len({s.wake_stream.strip("/") for s in subs}) != 1:
            raise ConfigError("all subscriptions of one worker must share its wake stream")
        object.__setattr__(self, "subscriptions", subs)
        _count("max_concurrency", self.max_concurrency, 1)
        _count("max_claim_streams", self.max_claim_streams, 1)
        _count("max_tracked_streams", self.max_tracked_streams, 1)
        _count("max_item_bytes", self.max_item_bytes, 1)
        grace = self.stop_grace
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) \
                or not 0 <= grace < float("inf"):
            raise ConfigError(f"stop_grace must be a number of seconds >= 0, got {grace!r}")
        _check_fetch_cache(self.fetch_cache)
        wake_path = encode_path(self.wake_stream)
        runner = self.runner
        if runner.wake_stream_path not in (None, wake_path):
            raise ConfigError(f"runner.wake_stream_path {runner.wake_stream_path!r} is not the "
                              f"subscriptions' wake stream {self.wake_stream!r}")
        if runner.wake_stream_path is None or runner.name is None:
            object.__setattr__(self, "runner", dataclasses.replace(
                runner, wake_stream_path=wake_path, name=runner.name or runner.runner_id))

    @property
    def server(self) -> str:
        """The stream root (``runner.base_url``)."""
        return self.runner.base_url

    @property
    def worker_name(self) -> str:
        """This worker's name in claims (``runner.runner_id``)."""
        return self.runner.runner_id

    @property
    def wake_stream(self) -> str:
        """The wake stream all subscriptions share."""
        return self.subscriptions[0].wake_stream.strip("/")

    @classmethod
    def from_keywords(cls, *, _stacklevel: int = 0, **keywords: Any) -> WorkerConfig:
        """The config of ``Worker(server=..., ...)``: the keywords of :class:`WorkerKeywords`.

        Defaults are the dataclasses' own. ``lease_ms`` (the claim lease in
        milliseconds) and ``runner_options`` (a mapping of RunnerConfig fields)
        are deprecated spellings, still accepted: ``runner_options`` keys are
        checked against RunnerConfig's fields.
        """
        return _from_keywords(cls, dict(keywords), 4 + _stacklevel)


class WorkerKeywords(TypedDict, total=False):
    """The keyword arguments of ``Worker(...)`` besides ``config`` and ``handler``."""

    # the runner (RunnerConfig), under the worker's names
    server: str
    worker_name: str | None
    # the default subscription (SubscriptionConfig); more in `subscriptions`
    subscription: str | None
    wake_stream: str
    pattern: str | None
    streams: Sequence[str]
    claim_lease: float
    subscriptions: Sequence[SubscriptionConfig]
    # RunnerConfig fields
    headers: HeadersSource
    live: Live
    request_timeout: float
    connect_timeout: float
    read_idle_timeout: float | None
    heartbeat_interval: float | None
    event_heartbeat_throttle: float
    claim_grace: float
    runtime_busy_retry: float
    heartbeat_failures_before_reset: int
    max_message_bytes: int
    max_response_bytes: int
    verify_tls: bool
    on_error: Callable[[BaseException], Any] | None
    stream_factory: StreamFactory | None
    clock: Clock | None
    session: aiohttp.ClientSession | None
    rng: Callable[[], float] | None
    spec_path: str | None
    # WorkerConfig fields
    max_concurrency: int
    stop_grace: float
    max_claim_streams: int
    max_tracked_streams: int
    max_item_bytes: int
    fetch_cache: FetchCache | None
    # FailurePolicy fields
    handler_timeout: float | None
    max_attempts: int | None
    dead_letter_stream: str | None
    cooldown: float
    cooldown_cap: float
    log_interval: float
    # deprecated spellings
    lease_ms: int
    runner_options: Mapping[str, Any] | None


#: Keywords that name a default subscription's fields (``subscription`` is its id).
_SUBSCRIPTION_KEYWORDS = {"subscription": "id", "wake_stream": "wake_stream",
                          "pattern": "pattern", "streams": "streams",
                          "claim_lease": "claim_lease"}


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _from_keywords(cls: type[WorkerConfig], kw: dict[str, Any],
                   stacklevel: int) -> WorkerConfig:
    def _deprecated(message: str) -> None:  # reported at the caller's line
        warnings.warn(message, DeprecationWarning, stacklevel=stacklevel)

    known = set(WorkerKeywords.__annotations__)
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ConfigError(f"Worker() got an unknown keyword {unknown[0]!r}")
    runner_fields = _names(RunnerConfig) - set(DERIVED_RUNNER_FIELDS)
    options = kw.pop("runner_options", None)
    if options:
        _deprecated("Worker(runner_options=...) is deprecated: pass the RunnerConfig fields "
                    "as keywords, or Worker(config=WorkerConfig(runner=RunnerConfig(...)))")
        for key in options:
            if key not in runner_fields:
                what = ("set by the worker from server, worker_name and wake_stream"
                        if key in DERIVED_RUNNER_FIELDS else "not a RunnerConfig field")
                raise ConfigError(f"runner_options: {key!r} is {what}")
            if key in kw:
                raise ConfigError(f"runner_options: {key!r} is also given as a keyword")
        kw.update(options)
    if "lease_ms" in kw:
        lease_ms = kw.pop("lease_ms")
        _deprecated("Worker(lease_ms=...) is deprecated: pass claim_lease in seconds")
        if "claim_lease" in kw:
            raise ConfigError("give claim_lease (seconds) or lease_ms (deprecated), not both")
        if isinstance(lease_ms, bool) or not isinstance(lease_ms, int):
            raise ConfigError(f"lease_ms must be an int of milliseconds, got {lease_ms!r}")
        kw["claim_lease"] = lease_ms / 1000
    if "server" not in kw:
        raise ConfigError("Worker() needs server (or config)")
    if kw.get("read_idle_timeout", 0) is None:
        del kw["read_idle_timeout"]  # None meant "the default"
    runner = {k: kw.pop(k) for k in list(kw) if k in runner_fields}
    runner["base_url"] = kw.pop("server")
    runner["runner_id"] = kw.pop("worker_name", None) or default_worker_name()
    failure = {k: kw.pop(k) for k in list(kw) if k in _names(FailurePolicy)}
    sub = {field: kw.pop(key) for key, field in _SUBSCRIPTION_KEYWORDS.items() if key in kw}
    subs = list(kw.pop("subscriptions", ()))
    if sub.get("id") is not None:
        subs.insert(0, SubscriptionConfig(**sub))
    else:  # the default subscription's fields without its id would be dropped unseen
        stray = sorted(k for k, v in sub.items() if k != "id" and v not in (None, ()))
        if stray:
            raise ConfigError(f"{stray[0]} describes the default subscription: give "
                              "subscription=ID with it (or put it in a SubscriptionConfig)")
    return cls(runner=RunnerConfig(**runner), subscriptions=tuple(subs),
               failure_policy=FailurePolicy(**failure), **kw)


def _check_fetch_cache(value: object) -> None:
    """``fetch_cache`` is ``None`` or a :class:`pullwake.io.cache.FetchCache`, never a string."""
    if value is None:
        return
    from pullwake.io.fetchcache import FetchCache

    if not isinstance(value, FetchCache):
        raise ConfigError(
            f"fetch_cache must be None or a pullwake.FetchCache "
            f"(FetchCache.memory() or FetchCache.sqlite(path)), not {type(value).__name__} "
            f"{value!r}")
