"""pullwake: resilient pull-wake workers for Durable Streams servers.

Start at README.md; the lifecycle lives in machine_spec.yaml (docs/lifecycle.md).
"""

from .cache import (
    FetchCacheInfo,
    FetchCacheWarning,
    cached_session,
    fetch_cache_info,
    fetch_cache_installed,
    install_fetch_cache,
    uninstall_fetch_cache,
)
from .clock import Clock, LoopClock
from .config import RunnerConfig
from .control import ClaimOutcome, ControlPlane, ElectricControlPlane, WakeEvent
from .errors import (
    CacheError,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    ControlPlaneError,
    HandlerError,
    IdleTimeout,
    InvalidMessage,
    LeaseLost,
    MalformedMessage,
    MessageError,
    OversizedMessage,
    ProtocolError,
    PullwakeError,
    RequestTimeout,
    SpecError,
    SpecErrors,
    StreamStatusError,
    SubscriptionError,
    TransportError,
)
from .health import Health
from .machine import Lifecycle, LifecycleEffects, WorkTicket
from .reader import ReadResult, read_stream
from .runner import PullWakeRunner, Runtime
from .spec import LifecycleSpec, load_spec
from .subscriptions import ClaimedStream, SubscriptionConfig
from .transport import StreamFactory, StreamRequest, WakeStream
from .worker import Wake, Worker, WorkerStats

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "ClaimOutcome",
    "ClaimedStream",
    "Clock",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ControlPlane",
    "ControlPlaneError",
    "ElectricControlPlane",
    "FetchCacheInfo",
    "FetchCacheWarning",
    "HandlerError",
    "Health",
    "IdleTimeout",
    "InvalidMessage",
    "LeaseLost",
    "Lifecycle",
    "LifecycleEffects",
    "LifecycleSpec",
    "LoopClock",
    "MalformedMessage",
    "MessageError",
    "OversizedMessage",
    "ProtocolError",
    "PullWakeRunner",
    "PullwakeError",
    "ReadResult",
    "RequestTimeout",
    "RunnerConfig",
    "Runtime",
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
    "cached_session",
    "fetch_cache_info",
    "fetch_cache_installed",
    "install_fetch_cache",
    "load_spec",
    "read_stream",
    "uninstall_fetch_cache",
]
