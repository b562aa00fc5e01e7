"""pullwake: resilient pull-wake workers for Durable Streams servers.

Start at README.md; the lifecycle lives in machine_spec.yaml (docs/lifecycle.md).
"""

from typing import TYPE_CHECKING

from .areader import aiter_chunks, aiter_items, aread_stream
from .clock import Clock, LoopClock
from .config import RunnerConfig
from .control import ClaimOutcome, ControlPlane, ElectricControlPlane, WakeEvent
from .errors import (
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
from .failures import FailurePolicy
from .fetchcache import FetchCache
from .health import Health
from .healthserver import HealthServer
from .machine import Lifecycle, LifecycleEffects, WorkTicket
from .protocol import Chunk, Item, RetryPolicy
from .runner import PullWakeRunner, Runtime
from .spec import LifecycleSpec, load_spec
from .subscriptions import ClaimedStream, SubscriptionConfig
from .transport import StreamFactory, StreamRequest, WakeStream
from .worker import Wake, Worker, WorkerStats

__version__ = "0.1.0"

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
    from .cache import (
        FetchCacheInfo,
        FetchCacheWarning,
        cached_session,
        fetch_cache_info,
        fetch_cache_installed,
        install_fetch_cache,
        uninstall_fetch_cache,
    )
    from .reader import ReadResult, iter_chunks, iter_items, read_stream

# The sync reader and the fetch cache pull in requests and requests-cache
# (about 20 MB): import them only when used.
_LAZY = {
    "FetchCacheInfo": "cache",
    "FetchCacheWarning": "cache",
    "cached_session": "cache",
    "fetch_cache_info": "cache",
    "fetch_cache_installed": "cache",
    "install_fetch_cache": "cache",
    "uninstall_fetch_cache": "cache",
    "ReadResult": "reader",
    "read_stream": "reader",
    "iter_chunks": "reader",
    "iter_items": "reader",
}


def __getattr__(name: str) -> object:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
