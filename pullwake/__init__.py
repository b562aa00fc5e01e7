"""pullwake: resilient pull-wake workers for Durable Streams servers.

Start at README.md; the lifecycle lives in machine_spec.yaml (docs/lifecycle.md).
"""

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
from .clock import Clock, LoopClock
from .config import RunnerConfig
from .control import ClaimOutcome, ControlPlane, ElectricControlPlane, WakeEvent
from .health import Health
from .machine import Lifecycle, LifecycleEffects, WorkTicket
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
    "SubscriptionConfig",
    "Wake",
    "Worker",
    "WorkerStats",
    "Clock",
    "ControlPlane",
    "ElectricControlPlane",
    "Health",
    "LoopClock",
    "PullWakeRunner",
    "RunnerConfig",
    "Runtime",
    "StreamFactory",
    "StreamRequest",
    "WakeEvent",
    "WakeStream",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ControlPlaneError",
    "HandlerError",
    "IdleTimeout",
    "InvalidMessage",
    "LeaseLost",
    "Lifecycle",
    "LifecycleEffects",
    "LifecycleSpec",
    "MalformedMessage",
    "MessageError",
    "OversizedMessage",
    "ProtocolError",
    "PullwakeError",
    "RequestTimeout",
    "SpecError",
    "SpecErrors",
    "StreamStatusError",
    "SubscriptionError",
    "TransportError",
    "WorkTicket",
    "__version__",
    "load_spec",
]
