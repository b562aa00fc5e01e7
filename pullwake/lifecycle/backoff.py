"""The reconnect backoff policy declared in ``machine_spec.yaml``.

Owns the delay arithmetic only: no timers, no clocks. The machine asks for
the next delay each time it enters ``reconnecting`` and resets the attempt
count when a ``reset_on`` event executes. Jitter takes an injectable random
source so tests are deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pullwake.lifecycle.spec import BackoffSpec

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Attempt counter plus policy: ``next_delay()`` gives 1, 2, 4, … capped."""

    policy: BackoffSpec
    rng: Callable[[], float] = field(default=random.random)
    attempt: int = 0

    def base_delay(self, attempt: int) -> float:
        """The un-jittered delay for a 0-based attempt number."""
        p = self.policy
        # Avoid float overflow for long outages: stop multiplying once capped.
        delay = p.initial_s
        for _ in range(attempt):
            delay *= p.factor
            if delay >= p.cap_s:
                return p.cap_s
        return min(delay, p.cap_s)

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the attempt counter."""
        base = self.base_delay(self.attempt)
        self.attempt += 1
        if self.policy.jitter == "full":
            return base * self.rng()
        if self.policy.jitter == "equal":
            return base / 2 + (base / 2) * self.rng()
        return base

    def reset(self) -> None:
        self.attempt = 0
