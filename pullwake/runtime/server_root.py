"""Is the server URL a Durable Streams stream root? The check a start makes first.

This module owns that rule and its message. ``GET {root}/__ds/subscriptions/{id}``
must answer the subscription (200 with its ``id``) or 404
``SUBSCRIPTION_NOT_FOUND`` (PROTOCOL.md §6.3); a ``PUT`` there must answer a
subscription. Anything else means the URL is not a stream root: the reference
server stores a plain data stream at any other path, so a wrong root would
otherwise "work" and never handle anything. The error,
:class:`~pullwake.errors.ServerRootError`, names the root the URL most likely
meant (``…/v1/stream``). No I/O of its own: the caller's
:class:`~pullwake.io.http.HttpClient` makes the one request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pullwake.errors import ServerRootError, redact_url
from pullwake.io.http import HttpClient, raise_for_answer

__all__ = ["is_subscription", "likely_stream_root", "verify_root", "wrong_root"]

NOT_FOUND = "SUBSCRIPTION_NOT_FOUND"


def likely_stream_root(server: str) -> str:
    """The stream root a mistaken ``server`` most likely meant: ``…/v1/stream``.

    ``http://h:4437``, ``http://h:4437/`` and ``http://h:4437/v1`` all give
    ``http://h:4437/v1/stream`` (the reference server's root).
    """
    parts = urlsplit(server)
    path = parts.path.rstrip("/")
    for suffix in ("/v1/stream", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return urlunsplit((parts.scheme, parts.netloc, path + "/v1/stream", "", ""))


def is_subscription(body: Any, sub_id: str) -> bool:
    """Whether a JSON answer has the shape of subscription ``sub_id`` (PROTOCOL.md §6.3)."""
    return isinstance(body, Mapping) and sub_id in (body.get("id"), body.get("subscription_id"))


def wrong_root(root: str, what: str) -> ServerRootError:
    """The error for ``root``: what it answered, and the root it probably meant."""
    likely = likely_stream_root(root)
    hint = (f"the stream root is usually {redact_url(likely)}" if likely != root.rstrip("/")
            else "is it a Durable Streams server?")
    return ServerRootError(f"{redact_url(root)} is not a Durable Streams stream root: "
                           f"{what}; {hint}", server=root, likely_root=likely)


async def verify_root(http: HttpClient, root: str, url: str, sub_id: str
                      ) -> dict[str, Any] | None:
    """GET subscription ``sub_id`` at ``url`` (below ``root``): it, or None if unknown.

    401/403, 429 and 5xx are not about the root: they raise as control-plane
    errors (a start may retry them). Any other answer that is neither the
    subscription nor 404 ``SUBSCRIPTION_NOT_FOUND`` is a ServerRootError.
    """
    answer = await http.request("GET", url, operation="verify server root")
    if answer.status == 404 and answer.code == NOT_FOUND:
        return None
    body = answer.json()
    if answer.status == 200 and is_subscription(body, sub_id):
        return dict(body)
    if answer.status in (401, 403, 429) or answer.status >= 500:
        raise_for_answer(answer, operation="verify server root", url=url, scrub=http.scrub)
    ctype = answer.headers.get("Content-Type", "?").split(";")[0]
    raise wrong_root(root, f"GET {redact_url(url)} answered {answer.status} ({ctype}), "
                           "not a subscription or SUBSCRIPTION_NOT_FOUND")
