"""Pull-wake subscriptions for the embedded test server.

This module owns the subscription state machine of
:mod:`pullwake.testing.server`: create / get / delete, linking streams by
pattern or explicitly, writing wake events, claim / ack / release, lease
timers and claim tokens. It returns ``(status, body)`` pairs;
:mod:`pullwake.testing._control_routes` turns them into HTTP answers. The
records it keeps and the create request's parsing are
:mod:`pullwake.testing._subscription_model`'s. It must not touch sockets.

Faithful to ``@durable-streams/server`` 0.3.7 ``subscription-manager.ts``:

* One wake at a time per subscription: an append writes a wake event only when
  the subscription has no wake id and no holder and some linked stream has
  ``tail > acked``. Each new wake increments ``generation`` (from 0, so the
  first wake is generation 1) and gets a new ``wake_id``.
* ``claim`` creates the wake itself (and writes its event) if work is pending
  but no wake exists yet; ``ALREADY_CLAIMED`` is checked before
  ``NO_PENDING_WORK`` and its body has ``current_holder`` and ``generation`` but
  no ``message``.
* ``ack`` / ``release`` check the token (401), then ``generation`` and
  ``wake_id`` from the JSON body against the live wake (409 ``FENCED``): a
  release without that body is FENCED. An ack extends the lease before
  ``done`` is handled; ``done`` without acked offsets leaves work pending, so a
  new wake is written at once (``next_wake: true``).
* When a lease expires the holder, token and wake id are dropped and, if work
  remains, a new wake (next generation) is written.
* A stream first linked by the glob on append starts at acked ``-1`` (all of it
  pending); streams linked at create time start at their tail.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from pullwake.testing._streams import (
    BEFORE_FIRST_OFFSET,
    ZERO_OFFSET,
    StreamStore,
    glob_match,
)
from pullwake.testing._subscription_model import (
    Answer,
    CreateInput,
    StreamLink,
    Subscription,
    error_body,
    normalize_relative,
    to_relative,
    to_store_path,
)

__all__ = ["TOKEN_TTL_SECONDS", "SubscriptionManager"]

TOKEN_TTL_SECONDS = 3600


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SubscriptionManager:
    """Subscriptions of one embedded server; forgotten on restart like the real one's."""

    def __init__(self, store: StreamStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.subscriptions: dict[str, Subscription] = {}
        self._token_key = secrets.token_bytes(32)
        self._clock = clock
        self._shut_down = False

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        self._shut_down = True
        for sub in self.subscriptions.values():
            self._clear_lease(sub)
        self.subscriptions.clear()

    # ----------------------------------------------------------------- CRUD

    def create_or_confirm(self, sub_id: str, data: CreateInput) -> Answer:
        config_hash = data.config_hash()
        existing = self.subscriptions.get(sub_id)
        if existing is not None:
            if existing.config_hash != config_hash:
                return 409, error_body(
                    "SUBSCRIPTION_ALREADY_EXISTS",
                    "Subscription already exists with different configuration",
                )
            return 200, self.serialize(existing)
        if data.type == "webhook":
            return 400, error_body(
                "INVALID_REQUEST", "webhook subscriptions are not enabled on this server"
            )
        sub = Subscription(
            id=sub_id,
            input=data,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            config_hash=config_hash,
        )
        for stream in data.streams:
            self._link(sub, stream, "explicit", self._tail(stream))
        if data.pattern:
            for store_path in self.store.paths():
                rel = to_relative(store_path)
                if rel and glob_match(data.pattern, rel):
                    self._link(sub, rel, "glob", self._tail(rel))
        self.subscriptions[sub_id] = sub
        return 201, self.serialize(sub)

    def get(self, sub_id: str) -> Answer:
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return 404, error_body("SUBSCRIPTION_NOT_FOUND", "Subscription not found")
        return 200, self.serialize(sub)

    def delete(self, sub_id: str) -> Answer:
        sub = self.subscriptions.pop(sub_id, None)
        if sub is not None:
            self._clear_lease(sub)
        return 204, None

    def add_streams(self, sub_id: str, streams: list[str]) -> Answer:
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return 404, error_body("SUBSCRIPTION_NOT_FOUND", "Subscription not found")
        for stream in streams:
            self._link(sub, normalize_relative(stream), "explicit", self._tail(stream))
        return 204, None

    def remove_stream(self, sub_id: str, stream: str) -> Answer:
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return 404, error_body("SUBSCRIPTION_NOT_FOUND", "Subscription not found")
        link = sub.streams.get(normalize_relative(stream))
        if link is not None:
            link.link_types.discard("explicit")
            if not link.link_types:
                del sub.streams[link.path]
        return 204, None

    def serialize(self, sub: Subscription) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": sub.id,
            "subscription_id": sub.id,
            "type": sub.input.type,
            "pattern": sub.input.pattern,
            "streams": [
                {"path": s["path"], "link_type": s["link_type"], "acked_offset": s["acked_offset"]}
                for s in self.stream_infos(sub)
            ],
            "wake_stream": sub.input.wake_stream,
            "lease_ttl_ms": sub.input.lease_ttl_ms,
            "created_at": sub.created_at,
            "status": "active",
            "description": sub.input.description,
        }
        # JSON.stringify drops undefined members.
        return {k: v for k, v in body.items() if v is not None}

    # ------------------------------------------------------------- stream hooks

    def on_stream_append(self, store_path: str) -> None:
        """Called after a POST (or a PUT with a body) to any stream."""
        if self._shut_down:
            return
        rel = to_relative(store_path)
        if rel is None:
            return
        for sub in list(self.subscriptions.values()):
            if sub.input.pattern and glob_match(sub.input.pattern, rel):
                existing = sub.streams.get(rel)
                self._link(sub, rel, "glob",
                           existing.acked_offset if existing else BEFORE_FIRST_OFFSET)
            if (
                rel in sub.streams
                and sub.wake_id is None
                and sub.holder is None
                and self._has_pending(sub)
            ):
                self._create_wake(sub, rel)

    def on_stream_deleted(self, store_path: str) -> None:
        rel = to_relative(store_path)
        if rel:
            for sub in self.subscriptions.values():
                sub.streams.pop(rel, None)

    # ---------------------------------------------------------- claim / ack / release

    def claim(self, sub_id: str, worker: str) -> Answer:
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return 404, error_body("SUBSCRIPTION_NOT_FOUND", "Subscription not found")
        if sub.input.type != "pull-wake":
            return 400, error_body("INVALID_REQUEST", "Subscription is not pull-wake")
        if sub.holder:
            return 409, {"error": {"code": "ALREADY_CLAIMED", "current_holder": sub.holder,
                                   "generation": sub.generation}}
        if not self._has_pending(sub):
            return 409, error_body("NO_PENDING_WORK", "Subscription has no pending work")
        if sub.wake_id is None:
            self._create_wake(sub, self._first_pending(sub))
        sub.holder = worker
        sub.token = self._make_token(sub)
        self._extend_lease(sub)
        return 200, {
            "wake_id": sub.wake_id,
            "generation": sub.generation,
            "token": sub.token,
            "streams": self.stream_infos(sub),
            "lease_ttl_ms": sub.input.lease_ttl_ms,
        }

    def ack(self, sub_id: str, token: str, request: dict[str, Any]) -> Answer:
        sub, problem = self._validate(sub_id, token, request)
        if problem is not None:
            return problem
        assert sub is not None
        ack_error = self._apply_acks(sub, request)
        if ack_error is not None:
            return ack_error
        self._extend_lease(sub)
        next_wake = False
        if request.get("done") is True:
            self._drop_wake(sub)
            next_wake = self._trigger_next_wake(sub)
        return 200, {"ok": True, "next_wake": next_wake}

    def release(self, sub_id: str, token: str, request: dict[str, Any]) -> Answer:
        sub, problem = self._validate(sub_id, token, request)
        if problem is not None:
            return problem
        assert sub is not None
        self._drop_wake(sub)
        self._trigger_next_wake(sub)
        return 204, None

    # ------------------------------------------------------------------ internals

    def _validate(
        self, sub_id: str, token: str, request: dict[str, Any]
    ) -> tuple[Subscription | None, Answer | None]:
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return None, (404, error_body("SUBSCRIPTION_NOT_FOUND", "Subscription not found"))
        if sub.input.type != "pull-wake":
            return None, (400, error_body("INVALID_REQUEST", "Subscription is not pull-wake"))
        checked = self._check_token(token, f"subscription:{sub.id}")
        if isinstance(checked, str):
            message = "Token expired" if checked == "TOKEN_EXPIRED" else "Token invalid"
            return None, (401, error_body(checked, message))
        if (
            checked != sub.generation
            or request.get("generation") != sub.generation
            or request.get("wake_id") != sub.wake_id
        ):
            return None, (409, error_body("FENCED", "Wake generation is stale"))
        return sub, None

    def _apply_acks(self, sub: Subscription, request: dict[str, Any]) -> Answer | None:
        acks = request.get("acks")
        if not acks:
            return None
        unknown = error_body("INVALID_OFFSET", "Ack references an unknown subscription stream")
        if not isinstance(acks, list):
            return 409, unknown
        pending: list[tuple[StreamLink, str]] = []
        for ack in acks:
            ack = ack if isinstance(ack, dict) else {}
            stream = normalize_relative(str(ack.get("stream") or ack.get("path") or ""))
            link = sub.streams.get(stream)
            if not stream or link is None:
                return 409, unknown
            offset = str(ack.get("offset"))
            if offset == BEFORE_FIRST_OFFSET:
                return 409, error_body("INVALID_OFFSET", "Ack offset must not be -1")
            if offset < link.acked_offset:
                return 409, error_body(
                    "INVALID_OFFSET", "Ack offset regresses the committed cursor"
                )
            if offset > self._tail(stream):
                return 409, error_body("INVALID_OFFSET", "Ack offset is beyond stream tail")
            pending.append((link, offset))
        for link, offset in pending:
            link.acked_offset = offset
        return None

    def stream_infos(self, sub: Subscription) -> list[dict[str, Any]]:
        infos = []
        for link in sub.streams.values():
            tail = self._tail(link.path)
            infos.append({
                "path": link.path,
                "link_type": "explicit" if "explicit" in link.link_types else "glob",
                "acked_offset": link.acked_offset,
                "tail_offset": tail,
                "has_pending": tail > link.acked_offset,
            })
        return infos

    def _has_pending(self, sub: Subscription) -> bool:
        return any(info["has_pending"] for info in self.stream_infos(sub))

    def _first_pending(self, sub: Subscription) -> str:
        return next((str(i["path"]) for i in self.stream_infos(sub) if i["has_pending"]), "")

    def _tail(self, relative: str) -> str:
        stream = self.store.get(to_store_path(relative))
        return stream.current_offset if stream is not None else ZERO_OFFSET

    def _link(self, sub: Subscription, path: str, link_type: str, acked: str) -> None:
        path = normalize_relative(path)
        existing = sub.streams.get(path)
        if existing is not None:
            existing.link_types.add(link_type)
        else:
            sub.streams[path] = StreamLink(path=path, link_types={link_type}, acked_offset=acked)

    def _create_wake(self, sub: Subscription, triggered_by: str) -> None:
        sub.generation += 1
        sub.wake_id = "w_" + secrets.token_hex(12)
        wake_stream = to_store_path(sub.input.wake_stream or "")
        if self.store.has(wake_stream):
            event = {
                "type": "wake",
                "subscription_id": sub.id,
                "stream": triggered_by,
                "generation": sub.generation,
                "ts": int(self._clock() * 1000),
            }
            self.store.append_value(wake_stream, event)

    def _trigger_next_wake(self, sub: Subscription) -> bool:
        if not self._has_pending(sub):
            return False
        self._create_wake(sub, self._first_pending(sub))
        return True

    def _drop_wake(self, sub: Subscription) -> None:
        self._clear_lease(sub)
        sub.token = None
        sub.holder = None
        sub.wake_id = None

    def _extend_lease(self, sub: Subscription) -> None:
        self._clear_lease(sub)
        ttl = sub.input.lease_ttl_ms / 1000
        sub.lease_expires_at = time.monotonic() + ttl
        sub.lease_handle = asyncio.get_running_loop().call_later(ttl, self._expire, sub)

    def _expire(self, sub: Subscription) -> None:
        sub.lease_handle = None
        sub.lease_expires_at = None
        sub.holder = None
        sub.token = None
        sub.wake_id = None
        if not self._shut_down and self.subscriptions.get(sub.id) is sub:
            self._trigger_next_wake(sub)

    def _clear_lease(self, sub: Subscription) -> None:
        if sub.lease_handle is not None:
            sub.lease_handle.cancel()
        sub.lease_handle = None
        sub.lease_expires_at = None

    def _make_token(self, sub: Subscription) -> str:
        payload = {
            "sub": f"subscription:{sub.id}",
            "epoch": sub.generation,
            "exp": int(self._clock()) + TOKEN_TTL_SECONDS,
            "jti": secrets.token_hex(8),
        }
        payload_str = _b64url(json.dumps(payload, separators=(",", ":")).encode())
        sig = _b64url(hmac.new(self._token_key, payload_str.encode(), hashlib.sha256).digest())
        return f"{payload_str}.{sig}"

    def _check_token(self, token: str, subject: str) -> int | str:
        """The token's epoch, or ``TOKEN_INVALID`` / ``TOKEN_EXPIRED``."""
        parts = token.split(".")
        if len(parts) != 2:
            return "TOKEN_INVALID"
        payload_str, sig = parts
        expected = _b64url(hmac.new(self._token_key, payload_str.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(sig.encode(), expected.encode()):
            return "TOKEN_INVALID"
        try:
            payload = json.loads(_b64url_decode(payload_str))
        except ValueError:
            return "TOKEN_INVALID"
        if not isinstance(payload, dict) or payload.get("sub") != subject:
            return "TOKEN_INVALID"
        if int(self._clock()) > int(payload.get("exp", 0)):
            return "TOKEN_EXPIRED"
        epoch = payload.get("epoch")
        return epoch if isinstance(epoch, int) else "TOKEN_INVALID"
