"""The package's one backoff: how long to wait before the next attempt.

This module owns the delay arithmetic of every retry in pullwake (the
lifecycle's reconnects, claim retries, read retries, handler cool-downs, the
CLI's start-up wait) and nothing else: no timers, no clock, no I/O, no import
from the rest of the package. Each use makes its own :class:`Backoff` from its
own frozen :class:`BackoffPolicy`; the caller sleeps on its own (injected)
clock.

- ``BackoffPolicy(initial_s, factor, cap_s, jitter)``: attempt ``n`` (0-based)
  is bounded by ``min(cap_s, initial_s * factor**n)``.
- **Jitter is on by default** (``"full"``): each delay is drawn uniformly from
  ``[0, bound)``. Full jitter, not decorrelated: it spreads a herd of clients
  that failed together over the whole window (the least synchronised load on
  a recovering server among the simple schemes), and it is stateless in the
  attempt number, so the un-jittered ``1 s, 2 s, 4 s …`` sequence is exactly
  its upper bound: a test pins it with ``rng=lambda: 1.0``. ``"equal"`` draws
  from ``[bound/2, bound]`` (a floor, for cool-downs that must not be zero);
  ``"none"`` is the bound itself.
- ``rng`` is injectable (a ``() -> float`` in ``[0, 1]``; default
  :func:`random.random`).
- ``next_delay(retry_after=s)``: a server's ``Retry-After`` replaces the
  computed delay (unjittered, uncapped: it is the server's word; bound it
  before passing it if the caller must). The attempt count advances as usual.
- ``reset()`` starts the sequence over (after a success).

Usage (a claim retried on its own policy; the runtime waits on its clock)::

    >>> from pullwake.lifecycle.backoff import Backoff, BackoffPolicy
    >>> CLAIM_RETRY = BackoffPolicy(initial_s=0.1, factor=2.0, cap_s=5.0)
    >>> retry = CLAIM_RETRY.start()              # jittered: each delay in [0, bound)
    >>> 0.0 <= retry.next_delay() < 0.1
    True
    >>> pinned = Backoff(CLAIM_RETRY, rng=lambda: 1.0)   # tests: the bound itself
    >>> [pinned.next_delay() for _ in range(3)]
    [0.1, 0.2, 0.4]
    >>> pinned.next_delay(retry_after=2.5)       # the server said Retry-After: 2.5
    2.5
    >>> pinned.attempt
    4
    >>> pinned.reset(); pinned.next_delay()
    0.1
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from pullwake.errors import ConfigError

__all__ = ["JITTERS", "Backoff", "BackoffPolicy", "Jitter"]

Jitter = Literal["none", "full", "equal"]
#: The jitter modes, in the order error messages list them.
JITTERS: tuple[str, ...] = get_args(Jitter)


@dataclass(frozen=True, kw_only=True, slots=True)
class BackoffPolicy:
    """One use's delay policy: ``min(cap_s, initial_s * factor**attempt)``, jittered.

    Validated on construction (a :class:`~pullwake.errors.ConfigError` names
    the bad field): ``initial_s > 0``, ``factor >= 1``, ``cap_s >= initial_s``,
    all finite; ``jitter`` one of :data:`JITTERS`.
    """

    initial_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        for name in ("initial_s", "factor", "cap_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"backoff {name} must be a finite number, got {v!r}")
        if self.initial_s <= 0:
            raise ConfigError(f"backoff initial_s must be > 0, got {self.initial_s!r}")
        if self.factor < 1:
            raise ConfigError(f"backoff factor must be >= 1, got {self.factor!r}")
        if self.cap_s < self.initial_s:
            raise ConfigError(f"backoff cap_s ({self.cap_s!r}) must be >= initial_s "
                              f"({self.initial_s!r})")
        if self.jitter not in JITTERS:
            raise ConfigError(f"backoff jitter must be one of {JITTERS}, got {self.jitter!r}")

    def start(self, *, rng: Callable[[], float] | None = None) -> Backoff:
        """A fresh attempt sequence on this policy."""
        return Backoff(self, rng=rng)

    def bound(self, attempt: int) -> float:
        """The un-jittered delay of a 0-based attempt: the most a jittered one can be."""
        # Multiply step by step and stop once capped: no float overflow on a long outage.
        delay = self.initial_s
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.cap_s:
                return self.cap_s
        return min(delay, self.cap_s)


class Backoff:
    """An attempt counter on a :class:`BackoffPolicy`: ``next_delay()`` says how long to wait.

    Not thread-safe, and not shared: each retry loop (each runner, each
    claim, each subscription's cool-down) makes its own.
    """

    __slots__ = ("attempt", "policy", "rng")

    def __init__(self, policy: BackoffPolicy | None = None, *,
                 rng: Callable[[], float] | None = None) -> None:
        self.policy = policy if policy is not None else BackoffPolicy()
        self.rng = rng if rng is not None else random.random
        #: attempts since the last reset (the 0-based number of the next one)
        self.attempt = 0

    def base_delay(self, attempt: int) -> float:
        """The un-jittered delay for a 0-based attempt number (the policy's bound)."""
        return self.policy.bound(attempt)

    def next_delay(self, *, retry_after: float | None = None) -> float:
        """The delay before the next attempt; advances the attempt counter.

        ``retry_after`` (seconds, from a server's ``Retry-After``) replaces
        the computed delay when given.
        """
        base = self.policy.bound(self.attempt)
        self.attempt += 1
        if retry_after is not None:
            if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)) \
                    or not math.isfinite(retry_after) or retry_after < 0:
                raise ValueError(f"retry_after must be a finite number of seconds >= 0, "
                                 f"got {retry_after!r}")
            return float(retry_after)
        jitter = self.policy.jitter
        if jitter == "full":
            return base * self.rng()
        if jitter == "equal":
            return base / 2 + (base / 2) * self.rng()
        return base

    def reset(self) -> None:
        """Start the sequence over: the next delay is the first one again."""
        self.attempt = 0

    def __repr__(self) -> str:
        p = self.policy
        return (f"<Backoff attempt={self.attempt} {p.initial_s:g}s x{p.factor:g} "
                f"cap {p.cap_s:g}s jitter={p.jitter}>")
