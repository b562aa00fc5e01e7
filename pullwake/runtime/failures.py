"""Handler failures: the retry policy, attempts per wake, log rate limits, dead-letter records.

This module owns what the worker decides about a handler that failed (raised
anything, ``BaseException`` included, or ran past its timeout):

- :class:`FailurePolicy`: the frozen, validated policy (handler timeout,
  attempts per wake, the dead-letter stream, the cool-down's
  :class:`~pullwake.lifecycle.backoff.Backoff` with jitter, the log rate limit);
- :class:`WakeFailures`: the failure history of one subscription's current
  wake, keyed by where its ranges *start* (a released wake comes back as a
  new generation with the same start offsets), with its cool-down;
- :class:`FailureLog`: the first failure of a wake is logged at WARNING with
  its traceback; repeats of the same wake at most once per ``log_interval``
  on the injected clock (the others at DEBUG, counted in the next WARNING);
- :func:`dead_letter_record`: the JSON record appended to the dead-letter
  stream; :func:`scrubbed_exception` / :func:`traceback_text`: an exception
  chain with every message scrubbed of secrets, for logs and records.

No I/O and no asyncio here: the worker appends records and acks or releases.
"""

from __future__ import annotations

import logging
import math
import random
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pullwake.errors import ConfigError
from pullwake.io.clock import iso
from pullwake.lifecycle.backoff import Backoff, BackoffPolicy
from pullwake.runtime.settings import number, python_only, setting
from pullwake.runtime.subscriptions import ClaimedStream

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "FailureLog",
    "FailurePolicy",
    "WakeFailures",
    "dead_letter_record",
    "scrubbed_exception",
    "traceback_text",
]

#: Attempts per wake when a dead-letter stream is configured and no limit is given.
DEFAULT_MAX_ATTEMPTS = 5
#: Bounds on what a record carries (a traceback keeps its end: the raising frame).
MAX_MESSAGE_CHARS = 2_000
MAX_TRACEBACK_CHARS = 16_000
RECORD_TYPE = "pullwake.dead_letter"

Scrub = Callable[[str], str]


def _seconds(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if value <= 0 or math.isinf(value):
        raise ConfigError(f"{name} must be > 0 and finite, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class FailurePolicy:
    """What the worker does when a handler fails (see docs/worker.md, "Handler failures").

    ``max_attempts`` handler runs per wake; after the last one fails the wake
    is appended to ``dead_letter_stream`` and acked. Without a dead-letter
    stream a wake is retried without limit (nothing may be dropped without a
    record), so a limit without a stream is a :class:`ConfigError`; a stream
    without a limit gets :data:`DEFAULT_MAX_ATTEMPTS`. Between attempts the
    subscription cools down: ``cooldown`` seconds doubling to ``cooldown_cap``,
    "equal" jitter (each delay in ``[d/2, d]``).
    """

    handler_timeout: float | None = setting(
        None, parse=number(0.001, 86_400, "seconds"), metavar="SECONDS",
        help="a handler attempt running longer fails (an async handler is cancelled, a "
             "sync one's thread abandoned) and counts toward --max-attempts "
             "(default: no limit)")
    max_attempts: int | None = setting(
        None, parse=number(1, 100_000, integer=True), metavar="N",
        help="failed handler attempts per wake before it is written to "
             "--dead-letter-stream and acked; needs that stream (default with it: 5; "
             "without it a wake is retried without limit)")
    dead_letter_stream: str | None = setting(
        None, metavar="PATH",
        help="a Durable Stream (created if missing) that gets one JSON record per wake "
             "given up on: subscription, offset ranges, attempts, scrubbed error")
    cooldown: float = setting(
        1.0, parse=number(0.001, 86_400, "seconds"), metavar="SECONDS",
        help="after a failed handler attempt the subscription cools down this long, "
             "doubling per consecutive failure up to --cooldown-cap, with jitter")
    cooldown_cap: float = setting(
        30.0, parse=number(0.001, 86_400, "seconds"), metavar="SECONDS",
        help="the longest cool-down after consecutive handler failures")
    log_interval: float = python_only(
        60.0, why="how often one wake's repeated failures are logged again: a log rate limit")

    def __post_init__(self) -> None:
        _seconds("handler_timeout", self.handler_timeout, optional=True)
        _seconds("cooldown", self.cooldown)
        _seconds("cooldown_cap", self.cooldown_cap)
        _seconds("log_interval", self.log_interval)
        if self.cooldown_cap < self.cooldown:
            raise ConfigError(f"cooldown_cap ({self.cooldown_cap!r}) must be >= cooldown "
                              f"({self.cooldown!r})")
        dls = self.dead_letter_stream
        if dls is not None and (not isinstance(dls, str) or not dls.strip("/")):
            raise ConfigError("dead_letter_stream must be a non-empty stream path")
        n = self.max_attempts
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"max_attempts must be an int >= 1, got {n!r}")
            if dls is None:
                raise ConfigError("max_attempts needs a dead_letter_stream: a wake is only "
                                  "given up with a record someone can find")
        elif dls is not None:
            object.__setattr__(self, "max_attempts", DEFAULT_MAX_ATTEMPTS)
        if dls is not None:
            object.__setattr__(self, "dead_letter_stream", dls.strip("/"))

    def backoff(self, rng: Callable[[], float] = random.random) -> Backoff:
        """A fresh cool-down sequence (the project's one backoff, with jitter)."""
        return Backoff(BackoffPolicy(initial_s=self.cooldown, factor=2.0, cap_s=self.cooldown_cap,
                                     jitter="equal"), rng=rng)

    def exhausted(self, attempts: int) -> bool:
        return self.max_attempts is not None and attempts >= self.max_attempts


def range_key(streams: Sequence[ClaimedStream]) -> tuple[tuple[str, str], ...]:
    """Where a wake's ranges start: the same for every generation of a released wake."""
    return tuple(sorted((s.path, s.acked_offset) for s in streams))


@dataclass
class WakeFailures:
    """The failures of one subscription's current wake, and the subscription's cool-down."""

    backoff: Backoff
    key: tuple[tuple[str, str], ...] = ()
    attempts: int = 0
    first_failed_at: float | None = None
    last_error: BaseException | None = None
    #: Set once attempts are exhausted: the record still to be written (or acked).
    dead: bool = False
    #: The ranges of the record once written (acked next, without a second record).
    recorded: tuple[ClaimedStream, ...] | None = None
    cooldown_until: float | None = None

    def begin(self, streams: Sequence[ClaimedStream]) -> bool:
        """A claim of this subscription arrives; True if it is a new wake (history reset)."""
        key = range_key(streams)
        if key == self.key:
            return False
        self.key = key
        self.attempts = 0
        self.first_failed_at = None
        self.last_error = None
        self.dead = False
        self.recorded = None
        return True

    def failed(self, error: BaseException, now: float, wall: float) -> float:
        """Count one failed attempt; returns the cool-down delay (seconds)."""
        self.attempts += 1
        self.last_error = error
        if self.first_failed_at is None:
            self.first_failed_at = wall
        return self.cool(now)

    def cool(self, now: float) -> float:
        """Start the next cool-down (also after a failed dead-letter append)."""
        delay = self.backoff.next_delay()
        self.cooldown_until = now + delay
        return delay

    def succeeded(self) -> None:
        """Handled, or dead-lettered and acked: the next wake starts afresh."""
        self.key = ()
        self.attempts = 0
        self.first_failed_at = None
        self.last_error = None
        self.dead = False
        self.recorded = None
        self.cooldown_until = None
        self.backoff.reset()


@dataclass
class FailureLog:
    """Rate-limited WARNINGs for handler failures, on the injected clock."""

    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    interval: float
    _last: dict[str, float] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def log(self, sub_id: str, *, first: bool, now: float, message: str,
            error: BaseException, scrub: Scrub) -> bool:
        """Log one failure; True if at WARNING. ``message`` is already scrubbed."""
        exc = scrubbed_exception(error, scrub)
        last = self._last.get(sub_id)
        if first or last is None or now - last >= self.interval:
            n = self._suppressed.pop(sub_id, 0)
            more = f" ({n} more failure(s) since the last warning, logged at DEBUG)" if n else ""
            self._last[sub_id] = now
            self.logger.warning("%s%s", message, more, exc_info=exc)
            return True
        self._suppressed[sub_id] = self._suppressed.get(sub_id, 0) + 1
        self.logger.debug("%s", message, exc_info=exc)
        return False


# ------------------------------------------------------------------ scrubbed exceptions

_PROXIES: weakref.WeakKeyDictionary[type, type] = weakref.WeakKeyDictionary()


def _proxy_class(cls: type[BaseException]) -> type[BaseException]:
    """An Exception subclass that formats exactly like ``cls`` (module and qualname)."""
    proxy = _PROXIES.get(cls)
    if proxy is None:
        proxy = type(cls.__name__, (Exception,), {"__module__": cls.__module__,
                                                  "__qualname__": cls.__qualname__})
        _PROXIES[cls] = proxy
    return proxy


def scrubbed_exception(error: BaseException, scrub: Scrub) -> BaseException:
    """A copy of ``error``'s chain (cause, context, tracebacks) with scrubbed messages.

    It formats like the original (same type names and frames) but every
    message and note passed through ``scrub``, so a log formatter or a
    dead-letter record can show the traceback without a secret in it.
    """
    copies: dict[int, BaseException] = {}

    def copy(e: BaseException) -> BaseException:
        if id(e) in copies:
            return copies[id(e)]
        try:
            text = str(e)
        except Exception:  # noqa: BLE001 - a broken __str__ must not break reporting
            text = f"<unprintable {type(e).__name__}>"
        p = _proxy_class(type(e))(scrub(text)[:MAX_MESSAGE_CHARS])
        copies[id(e)] = p
        p.__traceback__ = e.__traceback__
        notes = getattr(e, "__notes__", None)
        if isinstance(notes, list):
            p.__notes__ = [scrub(str(n)) for n in notes]
        p.__suppress_context__ = e.__suppress_context__
        if e.__cause__ is not None:
            p.__cause__ = copy(e.__cause__)
        if e.__context__ is not None:
            p.__context__ = copy(e.__context__)
        return p

    return copy(error)


def traceback_text(error: BaseException, scrub: Scrub) -> str:
    """The scrubbed traceback text of ``error``, at most :data:`MAX_TRACEBACK_CHARS` (its end)."""
    text = scrub("".join(traceback.format_exception(scrubbed_exception(error, scrub))))
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
    return text


def dead_letter_record(*, subscription: str, worker: str, streams: Sequence[ClaimedStream],
                       attempts: int, error: BaseException | None, scrub: Scrub,
                       reason: str, wake_id: str | None = None, generation: int | None = None,
                       recovered: bool = False, first_failed_at: float | None = None,
                       now: float) -> dict[str, Any]:
    """The dead-letter stream's JSON record of one given-up wake (no secret in it).

    ``streams`` lists each range as ``after`` (exclusive, the acked offset)
    and ``through`` (inclusive, the offset the worker acks): the messages a
    handler never finished. Read them back from the data streams by offset.
    """
    err: dict[str, Any] | None = None
    if error is not None:
        try:
            message = str(error)
        except Exception:  # noqa: BLE001
            message = f"<unprintable {type(error).__name__}>"
        err = {"type": f"{type(error).__module__}.{type(error).__qualname__}",
               "message": scrub(message)[:MAX_MESSAGE_CHARS],
               "traceback": traceback_text(error, scrub)}
    return {
        "type": RECORD_TYPE,
        "version": 1,
        "reason": reason,
        "subscription": subscription,
        "worker": worker,
        "wake_id": wake_id,
        "generation": generation,
        "recovered": recovered,
        "streams": [{"path": s.path, "after": s.acked_offset, "through": s.tail_offset}
                    for s in streams if s.tail_offset > s.acked_offset],
        "attempts": attempts,
        "error": err,
        "first_failed_at": iso(first_failed_at),
        "dead_lettered_at": iso(now),
    }
