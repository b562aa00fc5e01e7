"""When a read is retried, and how long to wait (no I/O, no clock).

A read retries what is transient: a 5xx or 429 answer (waiting what
``Retry-After`` says when it says it), a connection refused, reset or dropped
mid-body, or a stalled answer. Any other status is final (a typed
:class:`~pullwake.errors.StreamStatusError`). Attempts are bounded, and the
delays come from the project's one backoff (:mod:`pullwake.lifecycle.backoff`) with
jitter. A ``Retry-After`` longer than ``max_retry_after_s`` is not waited
out: the read fails typed at once, with the server's delay on the error.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pullwake.errors import ConfigError
from pullwake.lifecycle.backoff import Backoff, BackoffPolicy

__all__ = ["DEFAULT_RETRY", "NO_RETRY", "RetryPolicy", "Retrying"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Bounded retries of transient read failures.

    ``attempts`` counts every try (1 = no retry). Delays are
    ``initial_s * factor**n`` capped at ``cap_s``, with equal jitter.
    """

    attempts: int = 5
    initial_s: float = 0.1
    factor: float = 2.0
    cap_s: float = 5.0
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) \
                or self.attempts < 1:
            raise ConfigError("retry attempts must be an int >= 1")
        for name in ("initial_s", "factor", "cap_s", "max_retry_after_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise ConfigError(f"retry {name} must be a finite number >= 0")
        if self.initial_s <= 0:
            raise ConfigError("retry initial_s must be > 0 (a retry never hammers the server)")
        if self.factor < 1:
            raise ConfigError("retry factor must be >= 1 (delays never shrink)")
        if self.cap_s < self.initial_s:
            raise ConfigError("retry cap_s must be >= initial_s")

    def start(self, rng: Callable[[], float] | None = None) -> Retrying:
        return Retrying(self, Backoff(BackoffPolicy(initial_s=self.initial_s, factor=self.factor,
                                                    cap_s=self.cap_s, jitter="equal"),
                                      rng=rng or random.random))


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


@dataclass
class Retrying:
    """The retry state of one read: ``delay()`` says how long to wait, or None to give up."""

    policy: RetryPolicy
    backoff: Backoff
    failures: int = field(default=0)

    def delay(self, retry_after: float | None = None) -> float | None:
        self.failures += 1
        if self.failures >= self.policy.attempts:
            return None
        if retry_after is not None and retry_after > self.policy.max_retry_after_s:
            return None
        return self.backoff.next_delay(retry_after=retry_after)

    def progressed(self) -> None:
        """An answer was fully read: later failures start a fresh count."""
        self.failures = 0
        self.backoff.reset()
