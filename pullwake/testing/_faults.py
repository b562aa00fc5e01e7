"""Fault switches for the embedded test server.

This module owns what a fault *is* (:class:`Fault`), how a request is matched
to one (:class:`FaultTable`), the reference server's ``/_test/inject-error``
JSON mapped onto it, and the body corruption rules. Acting on a fault (hanging,
dropping a connection, answering a status) is the server module's job.

Two families share one table:

* switches set by tests (``EmbeddedServer.hang(...)`` etc.): matched by path
  prefix and optional method, active until cleared (or ``count`` uses);
* injected errors (``inject_error`` / ``POST /_test/inject-error``): matched by
  exact path, one per path (a new one replaces the old), ``count`` defaults to
  1, exactly like ``@durable-streams/server``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

FaultAction = Literal["none", "hang", "hang_after_headers", "drop", "status", "body"]

_INJECT_FIELDS = {
    "method": "method",
    "status": "status",
    "retryAfter": "retry_after",
    "count": "count",
    "delayMs": "delay_ms",
    "jitterMs": "jitter_ms",
    "dropConnection": "drop_connection",
    "truncateBodyBytes": "truncate_body_bytes",
    "corruptBody": "corrupt_body",
    "probability": "probability",
    "injectSseEvent": "inject_sse_event",
}


@dataclass(eq=False)
class Fault:
    """One fault. ``action`` decides what happens after the optional ``delay``.

    * ``hang``: accept the request and answer nothing until the fault is cleared,
      then handle it normally.
    * ``hang_after_headers``: send the status line and headers, withhold the body
      until cleared, then close the connection.
    * ``drop``: close the connection; with ``drop_after_bytes`` set, after the
      headers and that many body bytes (mid-body), else before answering.
    * ``status``: answer ``status`` with ``body`` (JSON if not str/bytes; the
      reference server's text ``Injected error for testing`` if None) and
      ``Retry-After`` when ``retry_after`` is set.
    * ``body``: handle normally, then cut the body to ``truncate_bytes`` and/or
      (``corrupt_body``) break its JSON like the reference server does.
    * ``none``: only the delay.
    """

    path: str = "/"
    method: str | None = None
    action: FaultAction = "none"
    exact: bool = False
    delay: float = 0.0
    jitter: float = 0.0
    status: int = 503
    body: Any = None
    retry_after: float | None = None
    truncate_bytes: int | None = None
    corrupt_body: bool = False
    drop_after_bytes: int | None = None
    count: int | None = None
    probability: float | None = None
    sse_event: tuple[str, str] | None = None
    #: Set by inject_error: one per exact path, body faults only touch stream
    #: reads, cleared by ``DELETE /_test/inject-error`` and by a restart.
    injected: bool = False
    hits: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.exact:
            return path == self.path
        return path.startswith(self.path)

    async def wait_released(self) -> None:
        await self.released.wait()

    async def sleep_delay(self) -> None:
        total = self.delay + (random.random() * self.jitter if self.jitter else 0.0)
        if total > 0:
            await asyncio.sleep(total)


class FaultTable:
    """The active faults of one server, newest first."""

    def __init__(self) -> None:
        self._switches: list[Fault] = []
        self._injected: dict[str, Fault] = {}

    def add(self, fault: Fault) -> Fault:
        if fault.injected:
            old = self._injected.pop(fault.path, None)
            if old is not None:
                old.released.set()
            self._injected[fault.path] = fault
        else:
            self._switches.insert(0, fault)
        return fault

    def remove(self, fault: Fault) -> None:
        if fault in self._switches:
            self._switches.remove(fault)
        if self._injected.get(fault.path) is fault:
            del self._injected[fault.path]
        fault.released.set()

    def clear(self) -> None:
        for fault in [*self._switches, *self._injected.values()]:
            fault.released.set()
        self._switches.clear()
        self._injected.clear()

    def clear_injected(self) -> None:
        for fault in self._injected.values():
            fault.released.set()
        self._injected.clear()

    @property
    def active(self) -> list[Fault]:
        return [*self._injected.values(), *self._switches]

    def consume(self, method: str, path: str) -> Fault | None:
        """The fault for this request (its use counted), or None."""
        for fault in self.active:
            if not fault.matches(method, path):
                continue
            if fault.probability is not None and random.random() > fault.probability:
                continue
            fault.hits += 1
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    # Used up: later requests no longer match, but a hang in
                    # progress stays hung until clear() / remove().
                    if fault in self._switches:
                        self._switches.remove(fault)
                    if self._injected.get(fault.path) is fault:
                        del self._injected[fault.path]
            return fault
        return None


_PY_TO_CAMEL = {py: camel for camel, py in _INJECT_FIELDS.items()}


def inject_body(path: str, opts: Mapping[str, Any]) -> dict[str, Any]:
    """Build a ``/_test/inject-error`` JSON body from python or camelCase keywords."""
    if not path.startswith("/"):
        raise ValueError(f"fault path must be an absolute URL path, got {path!r}")
    body: dict[str, Any] = {"path": path}
    for key, value in opts.items():
        if value is None:
            continue
        if key in _PY_TO_CAMEL:
            body[_PY_TO_CAMEL[key]] = value
        elif key in _INJECT_FIELDS:
            body[key] = value
        else:
            raise TypeError(f"unknown fault option {key!r}")
    if "method" in body:
        body["method"] = str(body["method"]).upper()
    return body


def fault_from_inject_body(config: Mapping[str, Any]) -> Fault | str:
    """Map a ``/_test/inject-error`` body to a Fault, or return the 400 text."""
    path = config.get("path")
    if not path or not isinstance(path, str):
        return "Missing required field: path"
    opts = {_INJECT_FIELDS[k]: v for k, v in config.items() if k in _INJECT_FIELDS}
    has_type = (
        opts.get("status") is not None
        or opts.get("delay_ms") is not None
        or bool(opts.get("drop_connection"))
        or opts.get("truncate_body_bytes") is not None
        or bool(opts.get("corrupt_body"))
        or opts.get("inject_sse_event") is not None
    )
    if not has_type:
        return (
            "Must specify at least one fault type: status, delayMs, dropConnection, "
            "truncateBodyBytes, corruptBody, or injectSseEvent"
        )
    action: FaultAction = "none"
    if opts.get("drop_connection"):
        action = "drop"
    elif opts.get("status") is not None:
        action = "status"
    elif opts.get("truncate_body_bytes") is not None or opts.get("corrupt_body"):
        action = "body"
    sse = opts.get("inject_sse_event")
    sse_event = None
    if isinstance(sse, Mapping):
        sse_event = (str(sse.get("eventType", "")), str(sse.get("data", "")))
    return Fault(
        path=path,
        exact=True,
        injected=True,
        method=opts.get("method"),
        action=action,
        delay=float(opts.get("delay_ms") or 0) / 1000,
        jitter=float(opts.get("jitter_ms") or 0) / 1000,
        status=int(opts.get("status") or 503),
        retry_after=opts.get("retry_after"),
        truncate_bytes=opts.get("truncate_body_bytes"),
        corrupt_body=bool(opts.get("corrupt_body")),
        count=int(opts.get("count") or 1),
        probability=opts.get("probability"),
        sse_event=sse_event,
    )


def corrupt(body: bytes, *, truncate_bytes: int | None = None, corrupt_body: bool = False) -> bytes:
    """server.ts ``applyFaultBodyModification``: truncate, then break the JSON."""
    out = body
    if truncate_bytes is not None and len(out) > truncate_bytes:
        out = out[:truncate_bytes]
    if corrupt_body and out:
        buf = bytearray(out)
        buf[0] = 0x58  # 'X'
        if len(buf) > 1:
            buf[1] = 0x59  # 'Y'
        for _ in range(max(1, len(buf) // 10)):
            buf[random.randrange(len(buf))] = 0x5A  # 'Z'
        out = bytes(buf)
    return out
