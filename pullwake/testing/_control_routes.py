"""The control routes of the embedded server: subscriptions and the Electric runner API.

This module owns what :mod:`pullwake.testing.server` answers on
``/v1/stream/__ds/...`` (:func:`subscription_route`: create / get / delete,
streams, claim, ack, release and the JWKS stub, with the reference server's
status codes and error bodies; the state machine behind them is
:class:`~pullwake.testing._subscriptions.SubscriptionManager`'s) and on
``POST /_electric/runners/<id>/heartbeat|claim`` (:func:`electric_route`,
test scaffolding with no reference counterpart: each answer is a programmed
:class:`ClaimAnswer`). It turns parsed requests into answers and keeps no
state of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from pullwake.testing._http import json_answer, respond, text_answer
from pullwake.testing._streams import js_stringify, parse_json
from pullwake.testing._subscription_model import (
    CONTROL_PREFIX,
    SUBSCRIPTION_PREFIX,
    error_body,
    normalize_relative,
    parse_create_input,
)
from pullwake.testing._subscriptions import SubscriptionManager

__all__ = ["ClaimAnswer", "ClaimProgram", "default_claim_answer", "electric_route",
           "parse_subscription_route", "subscription_route"]


@dataclass(frozen=True)
class ClaimAnswer:
    """A programmed answer of ``POST /_electric/runners/<id>/claim`` (or heartbeat)."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def claimed(cls, notification: Mapping[str, Any]) -> ClaimAnswer:
        return cls(200, dict(notification))

    @classmethod
    def no_content(cls) -> ClaimAnswer:
        return cls(204)

    @classmethod
    def done(cls) -> ClaimAnswer:
        return cls(200, {"done": True})

    @classmethod
    def conflict(cls, code: str = "ALREADY_CLAIMED", message: str | None = None) -> ClaimAnswer:
        messages = {
            "ALREADY_CLAIMED": "Wake already claimed",
            "NO_PENDING_WORK": "Subscription has no pending work",
        }
        return cls(409, error_body(code, message or messages.get(code, code)))

    @classmethod
    def error(cls, status: int, code: str = "INTERNAL", message: str = "error") -> ClaimAnswer:
        return cls(status, error_body(code, message))


ClaimProgram = ClaimAnswer | Callable[[str, Any], ClaimAnswer]


def default_claim_answer(runner_id: str, event: Any) -> ClaimAnswer:
    """A WakeNotification-shaped 200 built from the wake event."""
    ev = event if isinstance(event, dict) else {}
    stream = "/" + str(ev.get("stream", "")).lstrip("/")
    generation = ev.get("generation", 0)
    wake_id = f"wake-{runner_id}-{generation}"
    return ClaimAnswer.claimed({
        "consumerId": f"{runner_id}:{stream}",
        "epoch": generation,
        "wakeId": wake_id,
        "streamPath": stream,
        "streams": [{"path": stream, "offset": "-1"}],
        "claimToken": f"claim-{wake_id}",
    })


def subscription_route(manager: SubscriptionManager, request: web.Request, method: str,
                       inner: str, body: bytes) -> web.Response:
    """Answer one ``/v1/stream/__ds/...`` request (subscriptions, claim, ack, release)."""
    if inner == CONTROL_PREFIX + "/jwks.json":
        if method != "GET":
            return text_answer(405, "Method not allowed")
        return json_answer(200, {"keys": []})
    route = parse_subscription_route(inner)
    if route is None:
        return json_answer(404, error_body("SUBSCRIPTION_NOT_FOUND",
                                             "Durable Streams control route not found"))
    sub_id, action, stream_path = route
    if action == "base":
        if method == "GET":
            return json_answer(*manager.get(sub_id))
        if method == "DELETE":
            return json_answer(*manager.delete(sub_id))
        if method != "PUT":
            return text_answer(405, "Method not allowed")
    elif action == "stream":
        if method != "DELETE":
            return text_answer(405, "Method not allowed")
        return json_answer(*manager.remove_stream(sub_id, stream_path))
    elif action in ("callback", "ack", "release"):
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return json_answer(401, error_body(
                "TOKEN_INVALID", "Missing or malformed Authorization header"))
    elif action == "streams" and method != "POST":
        # claim / ack / release answer any method, like the reference server
        return text_answer(405, "Method not allowed")
    try:
        payload = parse_json(body) if body else {}
    except ValueError:
        return json_answer(400, error_body("INVALID_REQUEST", "Invalid JSON body"))
    if action == "base":
        parsed = parse_create_input(payload)
        if isinstance(parsed, str):
            return json_answer(400, error_body("INVALID_REQUEST", parsed))
        return json_answer(*manager.create_or_confirm(sub_id, parsed))
    if action == "streams":
        streams = payload.get("streams") if isinstance(payload, dict) else None
        if not isinstance(streams, list) or any(
                not isinstance(s, str) or not s for s in streams):
            return json_answer(400, error_body("INVALID_REQUEST",
                                                 "streams must be a non-empty string array"))
        return json_answer(*manager.add_streams(sub_id, streams))
    if action == "claim":
        worker = payload.get("worker") if isinstance(payload, dict) else None
        if not isinstance(worker, str) or not worker:
            return json_answer(400, error_body("INVALID_REQUEST",
                                                 "worker must be a non-empty string"))
        return json_answer(*manager.claim(sub_id, worker))
    token = request.headers["Authorization"][len("Bearer "):]
    req = payload if isinstance(payload, dict) else {}
    if action == "release":
        return json_answer(*manager.release(sub_id, token, req))
    return json_answer(*manager.ack(sub_id, token, req))


def parse_subscription_route(inner: str) -> tuple[str, str, str] | None:
    """(id, action, stream path) of a ``/v1/stream/__ds/subscriptions/...`` path."""
    if not inner.startswith(SUBSCRIPTION_PREFIX):
        return None
    parts = inner[len(SUBSCRIPTION_PREFIX):].split("/")
    sub_id = unquote(parts[0]) if parts[0] else ""
    if not sub_id:
        return None
    tail = parts[1:]
    if not tail:
        return sub_id, "base", ""
    if tail[0] == "streams" and len(tail) == 1:
        return sub_id, "streams", ""
    if tail[0] == "streams":
        return sub_id, "stream", normalize_relative(unquote("/".join(tail[1:])))
    if len(tail) == 1 and tail[0] in ("callback", "claim", "ack", "release"):
        return sub_id, tail[0], ""
    return None


def electric_route(method: str, inner: str, body: bytes, *, heartbeat: ClaimAnswer,
                   claim: Callable[[str, Any], ClaimAnswer]) -> web.Response:
    """Answer one ``POST /_electric/runners/<id>/heartbeat|claim`` with what is programmed."""
    parts = inner[len("/_electric/runners/"):].split("/")
    if len(parts) != 2 or not parts[0] or parts[1] not in ("heartbeat", "claim"):
        return json_answer(404, error_body("NOT_FOUND", "Not found"))
    if method != "POST":
        return text_answer(405, "Method not allowed")
    runner_id = unquote(parts[0])
    try:
        payload = parse_json(body) if body else None
    except ValueError:
        return json_answer(400, error_body("INVALID_REQUEST", "Invalid JSON body"))
    answer = heartbeat if parts[1] == "heartbeat" else claim(runner_id, payload)
    if answer.status == 204 or answer.body is None:
        return respond(answer.status, b"", answer.headers)
    return respond(answer.status, js_stringify(answer.body).encode(),
                   {"Content-Type": "application/json", **answer.headers})
