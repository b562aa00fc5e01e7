"""pullwake: resilient pull-wake workers for Durable Streams servers.

Start at README.md; the lifecycle lives in machine_spec.yaml (docs/lifecycle.md).
"""

from typing import TYPE_CHECKING

from pullwake._version import __version__
from pullwake.errors import (
    AnswerTooLarge,
    CacheError,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    ControlPlaneError,
    DeadLetterError,
    HandlerError,
    HandlerTimeout,
    HealthServerError,
    IdleTimeout,
    InvalidMessage,
    JobError,
    LeaseLost,
    MalformedMessage,
    MessageError,
    OffsetsWentBack,
    OversizedMessage,
    ProtocolError,
    PullwakeError,
    RequestTimeout,
    ServerRootError,
    SpecError,
    SpecErrors,
    StreamStatusError,
    SubscriptionError,
    TransportError,
)
from pullwake.io.areader import aiter_chunks, aiter_items, aread_stream
from pullwake.io.clock import Clock, LoopClock
from pullwake.io.fetchcache import FetchCache
from pullwake.io.transport import StreamFactory, StreamRequest, WakeStream
from pullwake.lifecycle.effects import LifecycleEffects, WorkTicket
from pullwake.lifecycle.machine import Lifecycle
from pullwake.lifecycle.model import LifecycleSpec
from pullwake.lifecycle.spec import load_spec
from pullwake.ops.healthserver import HealthServer
from pullwake.protocol import Chunk, Item, RetryPolicy
from pullwake.runtime.config import RunnerConfig
from pullwake.runtime.control import ClaimOutcome, ControlPlane, ElectricControlPlane, WakeEvent
from pullwake.runtime.failures import FailurePolicy
from pullwake.runtime.health import Health
from pullwake.runtime.runner import PullWakeRunner, Runtime
from pullwake.runtime.subscriptions import ClaimedStream, SubscriptionConfig
from pullwake.runtime.worker_config import WorkerConfig
from pullwake.worker import Wake, Worker, WorkerStats

__all__ = [
    "AnswerTooLarge",
    "CacheError",
    "Chunk",
    "ClaimOutcome",
    "ClaimedStream",
    "Clock",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ControlPlane",
    "ControlPlaneError",
    "DeadLetterError",
    "ElectricControlPlane",
    "FailurePolicy",
    "FetchCache",
    "FetchCacheInfo",
    "FetchCacheWarning",
    "HandlerError",
    "HandlerTimeout",
    "Health",
    "HealthServer",
    "HealthServerError",
    "IdleTimeout",
    "InvalidMessage",
    "Item",
    "JobError",
    "LeaseLost",
    "Lifecycle",
    "LifecycleEffects",
    "LifecycleSpec",
    "LoopClock",
    "MalformedMessage",
    "MessageError",
    "OffsetsWentBack",
    "OversizedMessage",
    "ProtocolError",
    "PullWakeRunner",
    "PullwakeError",
    "ReadResult",
    "RequestTimeout",
    "RetryPolicy",
    "RunnerConfig",
    "Runtime",
    "ServerRootError",
    "SpecError",
    "SpecErrors",
    "StreamFactory",
    "StreamRequest",
    "StreamStatusError",
    "SubscriptionConfig",
    "SubscriptionError",
    "TransportError",
    "Wake",
    "WakeEvent",
    "WakeStream",
    "WorkTicket",
    "Worker",
    "WorkerConfig",
    "WorkerStats",
    "__version__",
    "aiter_chunks",
    "aiter_items",
    "aread_stream",
    "cached_session",
    "fetch_cache_info",
    "fetch_cache_installed",
    "install_fetch_cache",
    "iter_chunks",
    "iter_items",
    "load_spec",
    "read_stream",
    "uninstall_fetch_cache",
]


if TYPE_CHECKING:
    from pullwake.io.cache import (
        FetchCacheInfo,
        FetchCacheWarning,
        cached_session,
        fetch_cache_info,
        fetch_cache_installed,
        install_fetch_cache,
        uninstall_fetch_cache,
    )
    from pullwake.io.reader import ReadResult, iter_chunks, iter_items, read_stream

# The sync reader and the fetch cache pull in requests and requests-cache
# (about 20 MB): import them only when used.
_LAZY = {
    "FetchCacheInfo": "io.cache",
    "FetchCacheWarning": "io.cache",
    "cached_session": "io.cache",
    "fetch_cache_info": "io.cache",
    "fetch_cache_installed": "io.cache",
    "install_fetch_cache": "io.cache",
    "uninstall_fetch_cache": "io.cache",
    "ReadResult": "io.reader",
    "read_stream": "io.reader",
    "iter_chunks": "io.reader",
    "iter_items": "io.reader",
}


def __getattr__(name: str) -> object:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
