"""pullwake's exception tree: every error the package raises or reports.

This module owns the error types and the redaction rules for their messages.
It imports nothing from aiohttp or requests: the translation from a transport
library's exceptions lives in exactly one place per library
(:mod:`pullwake.io.http` for aiohttp, :mod:`pullwake.io.reader` for requests).

::

    PullwakeError
    ├── SpecError                 machine_spec.yaml is invalid (file, state, event, line)
    │   └── SpecErrors            several SpecError at once (``.errors``)
    ├── ConfigError               a bad RunnerConfig / Worker argument (also ValueError)
    │   └── ServerRootError       the server URL is not a Durable Streams stream root
    ├── TransportError            the wake-stream read failed
    │   ├── ConnectError          no response headers (refused, reset, DNS, TLS)
    │   │   └── ConnectTimeout    no response headers within connect_timeout
    │   ├── IdleTimeout           an open stream was silent past read_idle_timeout
    │   ├── StreamStatusError     the wake stream answered an unexpected status
    │   └── ProtocolError         a response that cannot be framed (truncated, corrupt)
    │       └── OffsetsWentBack   the stream's offsets went back: it was re-created
    ├── MessageError              one wake-stream message is bad; it is skipped
    │   ├── MalformedMessage      not JSON
    │   ├── InvalidMessage        JSON of the wrong shape or type
    │   └── OversizedMessage      larger than max_message_bytes
    ├── ControlPlaneError         a claim / heartbeat / ack / release call failed
    │   ├── RequestTimeout        no answer within request_timeout
    │   ├── LeaseLost             409 FENCED or 401: the lease is gone
    │   ├── AnswerTooLarge        one item of an answer passed its per-item limit
    │   ├── SubscriptionError     a subscription cannot be created or was forgotten
    │   └── DeadLetterError       a record could not be appended to the dead-letter stream
    ├── HandlerError              a worker's handler failed (raised or timed out)
    │   └── HandlerTimeout        it ran past handler_timeout
    ├── JobError                  a background job raised (``job`` names it; the cause is chained)
    ├── HealthServerError         the health server cannot serve (e.g. its port is in use)
    └── CacheError                the fetch cache could not be installed or used

Messages never contain header values, tokens or URL credentials: URLs pass
through :func:`redact_url` before they are put in a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "AnswerTooLarge",
    "CacheError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ControlPlaneError",
    "DeadLetterError",
    "HandlerError",
    "HandlerTimeout",
    "HealthServerError",
    "IdleTimeout",
    "InvalidMessage",
    "JobError",
    "LeaseLost",
    "MalformedMessage",
    "MessageError",
    "OffsetsWentBack",
    "OversizedMessage",
    "ProtocolError",
    "PullwakeError",
    "RequestTimeout",
    "ServerRootError",
    "SpecError",
    "SpecErrors",
    "StreamStatusError",
    "SubscriptionError",
    "TransportError",
    "redact_text",
    "redact_url",
]

#: Query parameters whose values are treated as secrets in URLs.
_SECRET_QUERY_KEYS = frozenset(
    {"token", "access_token", "auth", "authorization", "key", "api_key", "apikey",
     "secret", "password", "signature", "sig"}
)
_BEARER_RE = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{4,}")


def redact_url(url: str) -> str:
    """Return ``url`` with userinfo and secret-looking query values replaced."""
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*-"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace every known secret and any ``Bearer xyz`` credential in ``text``."""
    out = _BEARER_RE.sub(lambda m: f"{m.group(1)} ***", text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, "***")
    return out


class PullwakeError(Exception):
    """Root of every error pullwake raises or reports."""


# --------------------------------------------------------------------------- spec


class SpecError(PullwakeError):
    """One problem in a lifecycle spec, naming the file, state, event and line."""

    def __init__(
        self,
        problem: str,
        *,
        path: str = "<spec>",
        state: str | None = None,
        event: str | None = None,
        line: int | None = None,
        kind: str = "invalid",
    ) -> None:
        self.problem = problem
        self.path = path
        self.state = state
        self.event = event
        self.line = line
        self.kind = kind
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.path + (f":{self.line}" if self.line else "")
        ctx = []
        if self.state is not None:
            ctx.append(f"state {self.state!r}")
        if self.event is not None:
            ctx.append(f"event {self.event!r}")
        suffix = f" ({', '.join(ctx)})" if ctx else ""
        return f"{where}: [{self.kind}] {self.problem}{suffix}"


class SpecErrors(SpecError):
    """Several spec problems found in one validation pass (``.errors``)."""

    def __init__(self, errors: Sequence[SpecError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        PullwakeError.__init__(
            self,
            f"{len(self.errors)} problem(s) in {first.path}:\n"
            + "\n".join(f"  {e}" for e in self.errors),
        )
        self.problem = str(self)
        self.path = first.path
        self.state = first.state
        self.event = first.event
        self.line = first.line
        self.kind = "several"


class ConfigError(PullwakeError, ValueError):
    """A configuration value is wrong; the message names the field."""


class ServerRootError(ConfigError):
    """The server URL answers, but not as a Durable Streams stream root.

    Found at start, before anything is created: ``server`` is the URL given,
    ``likely_root`` the root it probably meant (``http://host:port/v1/stream``).
    """

    def __init__(self, message: str, *, server: str, likely_root: str) -> None:
        self.server = redact_url(server)
        self.likely_root = redact_url(likely_root)
        super().__init__(message)


# ---------------------------------------------------------------------- transport


class TransportError(PullwakeError):
    """The wake-stream read failed; the runner reconnects from its last good offset."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        self.url = redact_url(url) if url else None
        super().__init__(f"{message} ({self.url})" if self.url else message)


class ConnectError(TransportError):
    """No response headers: refused, reset, DNS or TLS failure."""


class ConnectTimeout(ConnectError, TimeoutError):
    """No response headers within ``connect_timeout``."""


class IdleTimeout(TransportError, TimeoutError):
    """An open stream sent nothing for longer than ``read_idle_timeout``."""


class StreamStatusError(TransportError):
    """The wake stream answered with an unexpected HTTP status."""

    def __init__(self, status: int, *, url: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        self.status = status
        self.code = code
        self.retry_after = retry_after
        detail = f"unexpected status {status}" + (f" ({code})" if code else "")
        super().__init__(f"stream read: {detail}", url=url)


class ProtocolError(TransportError):
    """A response that cannot be framed: truncated, corrupt, or cut mid-event."""


class OffsetsWentBack(ProtocolError):
    """The stream answered an offset below the one asked for: offsets never go
    back on one stream, so it was deleted and created again (a restarted
    in-memory server, someone re-creating it). The runner reads it anew."""


# ------------------------------------------------------------------------ messages


class MessageError(PullwakeError):
    """One wake-stream message is bad. It is reported, skipped, and the offset moves on."""

    def __init__(self, message: str, *, offset: str | None = None, size: int | None = None) -> None:
        self.offset = offset
        self.size = size
        super().__init__(message + (f" at offset {offset}" if offset else ""))


class MalformedMessage(MessageError):
    """A message that is not valid JSON (or not UTF-8)."""


class InvalidMessage(MessageError):
    """A JSON message of the wrong shape: missing fields or wrong types."""


class OversizedMessage(MessageError):
    """A message (or SSE event) larger than the configured limit."""


# ------------------------------------------------------------------- control plane


class ControlPlaneError(PullwakeError):
    """A control-plane call (claim, heartbeat, ack, release, subscribe) failed.

    ``status`` is the HTTP status (``None`` when there was no answer) and ``code``
    the machine-readable error code from the JSON body, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        status: int | None = None,
        code: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.operation = operation
        self.status = status
        self.code = code
        self.url = redact_url(url) if url else None
        self.retry_after = retry_after
        bits = [f"{operation}: {message}"]
        if status is not None:
            bits.append(f"status {status}")
        if code:
            bits.append(f"code {code}")
        text = ", ".join(bits)
        super().__init__(f"{text} ({self.url})" if self.url else text)


class RequestTimeout(ControlPlaneError, TimeoutError):
    """A control-plane call got no answer within ``request_timeout``."""


class AnswerTooLarge(ControlPlaneError):
    """One item of a control-plane answer (a claimed stream, a field) passed its limit.

    Limits are per item, never per answer: an answer listing any number of
    streams is read as a stream of items. ``limit`` names the bound that was hit.
    """

    def __init__(self, message: str, *, operation: str, limit: int,
                 status: int | None = None, url: str | None = None) -> None:
        self.limit = limit
        super().__init__(message, operation=operation, status=status, url=url)


class LeaseLost(ControlPlaneError):
    """The server says the claim is no longer ours (409 FENCED, 401 TOKEN_INVALID)."""


class SubscriptionError(ControlPlaneError):
    """A subscription could not be created (conflicting config) or was forgotten."""


class DeadLetterError(ControlPlaneError):
    """A dead-letter record could not be appended; the wake was not acked (released)."""


class HandlerError(PullwakeError):
    """A worker handler failed (``__cause__`` is what it raised); the wake is retried.

    After the retry policy's last attempt the wake is dead-lettered instead.
    """


class HandlerTimeout(HandlerError, TimeoutError):
    """A handler ran past ``handler_timeout``: cancelled (async) or abandoned (sync)."""


class JobError(PullwakeError):
    """A background job raised (``__cause__`` is what it raised); reported, never lost.

    ``job`` is the job's task name (e.g. ``pullwake-claim:/a[runner-1]``).
    """

    def __init__(self, message: str, *, job: str) -> None:
        super().__init__(message)
        self.job = job


class HealthServerError(PullwakeError):
    """The health server cannot serve: a bad port, or the address is in use."""


class CacheError(PullwakeError):
    """The fetch cache could not be installed or its store is unusable."""
