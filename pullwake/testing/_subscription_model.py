"""The subscription records and wire shapes of the embedded server (no state, no I/O).

This module owns what :mod:`pullwake.testing._subscriptions` (the state
machine) and :mod:`pullwake.testing._control_routes` (the HTTP side) share,
as ``@durable-streams/server`` 0.3.7 defines it: the control route prefixes,
stream paths relative to ``/v1/stream/`` (:func:`to_store_path`,
:func:`to_relative`), the error body shape, the create request
(:func:`parse_create_input` of ``subscription-routes.ts``, with its 400
messages and the lease bounds) and its configuration hash, and the records a
subscription is kept in (:class:`Subscription`, :class:`StreamLink`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONTROL_PREFIX", "DEFAULT_LEASE_TTL_MS", "MAX_LEASE_TTL_MS", "MIN_LEASE_TTL_MS",
           "STREAM_ROOT_PATH", "SUBSCRIPTION_PREFIX", "Answer", "CreateInput", "StreamLink",
           "Subscription", "error_body", "normalize_relative", "parse_create_input",
           "to_relative", "to_store_path"]

DEFAULT_LEASE_TTL_MS = 30_000
MIN_LEASE_TTL_MS = 1_000
MAX_LEASE_TTL_MS = 600_000
STREAM_ROOT_PATH = "/v1/stream/"
CONTROL_PREFIX = "/v1/stream/__ds"
SUBSCRIPTION_PREFIX = CONTROL_PREFIX + "/subscriptions/"

Answer = tuple[int, dict[str, Any] | None]


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def normalize_relative(path: str) -> str:
    return path.strip("/") if path else path


def to_store_path(relative: str) -> str:
    return STREAM_ROOT_PATH + normalize_relative(relative)


def to_relative(store_path: str) -> str | None:
    if not store_path.startswith(STREAM_ROOT_PATH):
        return None
    rel = store_path[len(STREAM_ROOT_PATH):]
    if rel == "__ds" or rel.startswith("__ds/"):
        return None
    return rel or None


@dataclass
class StreamLink:
    path: str
    link_types: set[str]
    acked_offset: str


@dataclass
class CreateInput:
    type: str
    pattern: str | None
    streams: list[str]
    wake_stream: str | None
    lease_ttl_ms: int
    description: str | None
    webhook_url: str | None = None

    def config_hash(self) -> str:
        canonical = {
            "type": self.type,
            "pattern": self.pattern,
            "streams": sorted(set(self.streams)),
            "webhook": {"url": self.webhook_url} if self.webhook_url else None,
            "wake_stream": self.wake_stream,
            "lease_ttl_ms": self.lease_ttl_ms,
            "description": self.description,
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


@dataclass
class Subscription:
    id: str
    input: CreateInput
    created_at: str
    config_hash: str
    streams: dict[str, StreamLink] = field(default_factory=dict)
    generation: int = 0
    wake_id: str | None = None
    token: str | None = None
    holder: str | None = None
    lease_handle: asyncio.TimerHandle | None = None
    lease_expires_at: float | None = None


def parse_create_input(payload: Any) -> CreateInput | str:
    """subscription-routes.ts ``parseCreateInput``: a CreateInput or the 400 message."""
    if isinstance(payload, list):
        payload = {}  # typeof [] === "object" in JS: it fails on "type" instead
    if not isinstance(payload, dict):
        return "Request body must be a JSON object"
    kind = payload.get("type")
    if kind not in ("webhook", "pull-wake"):
        return 'type must be "webhook" or "pull-wake"'
    raw_pattern = payload.get("pattern")
    pattern = (
        normalize_relative(raw_pattern) if isinstance(raw_pattern, str) and raw_pattern else None
    )
    raw_streams = payload.get("streams")
    streams: list[str] = []
    if isinstance(raw_streams, list) and raw_streams:
        if any(not isinstance(s, str) for s in raw_streams):
            return "streams must contain only strings"
        streams = [normalize_relative(s) for s in raw_streams]
    if not pattern and not streams:
        return "At least one of pattern or streams is required"
    lease = payload.get("lease_ttl_ms", DEFAULT_LEASE_TTL_MS)
    if (
        isinstance(lease, bool)
        or not isinstance(lease, (int, float))
        or lease != int(lease)
        or not MIN_LEASE_TTL_MS <= lease <= MAX_LEASE_TTL_MS
    ):
        return "lease_ttl_ms must be an integer from 1000 to 600000"
    webhook_url = None
    if kind == "webhook":
        hook = payload.get("webhook")
        url = hook.get("url") if isinstance(hook, dict) else None
        if not isinstance(url, str) or not url:
            return "webhook subscriptions require webhook.url"
        webhook_url = url
    raw_wake = payload.get("wake_stream")
    wake_stream = normalize_relative(raw_wake) if isinstance(raw_wake, str) and raw_wake else None
    if kind == "pull-wake" and not wake_stream:
        return "pull-wake subscriptions require wake_stream"
    description = payload.get("description")
    return CreateInput(
        type=kind,
        pattern=pattern,
        streams=streams,
        wake_stream=wake_stream,
        lease_ttl_ms=int(lease),
        description=description if isinstance(description, str) else None,
        webhook_url=webhook_url,
    )
