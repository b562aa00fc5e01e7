"""Logging for pullwake: context fields, text and JSON formats, outage rate-limiting.

This module owns how pullwake's log lines look and what they carry; it uses
the standard library's :mod:`logging` only (no logger is configured by
importing it).

- :func:`log_context` sets fields (``worker``, ``subscription``, ``wake``, and
  ``state``, a callable read at log time) in a :mod:`contextvars` variable.
  The runner sets ``worker``/``state`` around ``start()``/``stop()``, so every
  task and timer it creates (they copy the context) logs with them; the worker
  runs each job in a context with ``subscription`` and ``wake``. Two workers
  in one process therefore never mix up their fields.
- :class:`ContextFilter` copies those fields onto every record (``default``
  fields fill what the context does not say, e.g. the CLI's worker name), so a
  handler's own log lines carry them too.
- :class:`TextFormatter` prefixes ``[worker]`` unless the message already
  starts with it; :class:`JsonFormatter` writes one JSON object per line.
- :func:`configure_logging` installs one stderr handler with either format.
- :class:`LabelledLog` is the :class:`logging.LoggerAdapter` a runner, a
  worker and their parts log through: every line says whose it is
  (``[label] `` before the message, ``worker`` on the record), whatever
  context the line is logged in; no call site adds the label by hand.
- :class:`OutageLog` turns a failure that repeats every second (heartbeats
  during an outage) into one WARNING when the outage starts, a reminder at
  most every ``remind_every`` seconds on the injectable clock, and one line
  with the count when it ends.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TextIO

from pullwake.io.clock import Clock

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ContextFilter",
    "JsonFormatter",
    "LabelledLog",
    "OutageLog",
    "TextFormatter",
    "configure_logging",
    "context_fields",
    "job_context",
    "log_context",
]

#: The levels ``--log-level`` accepts (the stdlib's, by name).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
#: The context fields every record carries (``None`` when unknown).
FIELDS = ("worker", "subscription", "wake", "state")

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "pullwake_log_context", default=_EMPTY)


class log_context:  # lower case: used like a function, `with log_context(wake=3):`
    """Add ``fields`` to the log context for the body (and tasks created in it).

    (A class, not a generator: the worker enters one per wake.)
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: Any) -> None:
        self._fields = fields
        self._token: contextvars.Token[Mapping[str, Any]] | None = None

    def __enter__(self) -> None:
        self._token = _context.set({**_context.get(), **self._fields})

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _context.reset(self._token)
            self._token = None


def job_context(**fields: Any) -> contextvars.Context:
    """A copy of the current context with ``fields`` added: run a task in it
    (``loop.create_task(coro, context=job_context(subscription=...))``)."""
    ctx = contextvars.copy_context()
    ctx.run(_context.set, {**_context.get(), **fields})
    return ctx


def context_fields() -> dict[str, Any]:
    """The current context's fields, with ``state`` (a callable) evaluated."""
    out: dict[str, Any] = {}
    for key, value in _context.get().items():
        if callable(value):
            try:
                value = value()
            except Exception:  # noqa: BLE001 - a log line must never fail
                value = None
        out[key] = value
    return out


class ContextFilter(logging.Filter):
    """Put the context fields on every record (``record.worker``, ...)."""

    def __init__(self, defaults: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.defaults = dict(defaults or {})

    def filter(self, record: logging.LogRecord) -> bool:
        fields = {**self.defaults, **context_fields()}
        for key in FIELDS:
            if getattr(record, key, None) is None:
                setattr(record, key, fields.get(key))
        return True


def _own_prefix(record: logging.LogRecord, message: str) -> str:
    """The message without a leading ``[worker] `` (pullwake's own lines start so)."""
    worker = getattr(record, "worker", None)
    if worker:
        prefix = f"[{worker}] "
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: [worker] message`` (``sub#wake`` after the worker in a job)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = _own_prefix(record, record.message)
        tags = [t for t in (getattr(record, "worker", None),) if t]
        sub = getattr(record, "subscription", None)
        if sub:
            wake = getattr(record, "wake", None)
            tags.append(f"{sub}#{wake}" if wake is not None else str(sub))
        if tags:
            message = "".join(f"[{t}] " for t in tags) + message
        return self._style._fmt % {**record.__dict__, "message": message}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the context fields,
    and ``exc`` (the formatted traceback) when the record has one. Times in UTC."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        message = _own_prefix(record, record.getMessage())
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key in FIELDS:
            out[key] = getattr(record, key, None)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text", *,
                      defaults: Mapping[str, Any] | None = None,
                      stream: TextIO | None = None) -> logging.Handler:
    """Log to stderr (or ``stream``) in ``fmt`` at ``level``; returns the handler.

    Replaces handlers a previous call installed. ``transitions``' own chatter
    and aiohttp's access log only at WARNING.
    """
    if level.upper() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter(defaults))
    handler.set_name("pullwake")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "pullwake":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler


class LabelledLog(logging.LoggerAdapter[logging.Logger]):
    """A logger carrying one runner's or worker's id (``label``).

    Each message gets ``[label] `` in front (the formatters above show it
    once) and each record ``worker=label``, so two workers in one process
    never mix up their lines, even where no log context is set (timers,
    callbacks, a handler's thread).
    """

    def __init__(self, logger: logging.Logger, label: str) -> None:
        super().__init__(logger, {"worker": label})
        self.label = label

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            extra = kwargs.get("extra")
            kwargs["extra"] = {**(self.extra or {}), **extra} if extra else self.extra
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1  # the caller, not this
            text = str(msg) if args else str(msg).replace("%", "%%")
            self.logger.log(level, "[%s] " + text, self.label, *args, **kwargs)


class OutageLog:
    """One WARNING per outage of a repeating operation, then a summary.

    ``failure(text)`` logs the first failure at WARNING and the rest at DEBUG,
    except a reminder at WARNING every ``remind_every`` seconds (on ``clock``);
    ``success()`` after failures logs, at INFO, how many there were and for how
    long. ``failures`` and ``since`` describe the outage in progress.
    """

    def __init__(self, logger: logging.Logger | LabelledLog, what: str, clock: Clock, *,
                 prefix: str = "", remind_every: float = 60.0) -> None:
        self._log = logger
        self._what = what
        self._clock = clock
        self._prefix = prefix
        self.remind_every = remind_every
        self.failures = 0
        self.since: float | None = None
        self._reminded: float = 0.0

    @property
    def in_outage(self) -> bool:
        return self.since is not None

    def failure(self, text: str) -> None:
        now = self._clock.monotonic()
        self.failures += 1
        if self.since is None:
            self.since = self._reminded = now
            self._log.warning("%s%s failed: %s (repeats are logged at DEBUG until one "
                              "succeeds)", self._prefix, self._what, text, stacklevel=2)
        elif now - self._reminded >= self.remind_every:
            self._reminded = now
            self._log.warning("%s%s still failing: %d failures in %.3gs, latest: %s",
                              self._prefix, self._what, self.failures, now - self.since, text,
                              stacklevel=2)
        else:
            self._log.debug("%s%s failed again (%d): %s", self._prefix, self._what,
                            self.failures, text, stacklevel=2)

    def success(self) -> None:
        if self.since is None:
            return
        lasted = self._clock.monotonic() - self.since
        self._log.info("%s%s recovered after %d failure(s) in %.3gs", self._prefix, self._what,
                       self.failures, lasted, stacklevel=2)
        self.failures = 0
        self.since = None
