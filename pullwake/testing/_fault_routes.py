"""How a fault switch acts on one request of the embedded server (aiohttp side).

:mod:`pullwake.testing._faults` says which fault a request meets (the
switches and the reference server's injected errors, no I/O); this module
owns what the fault then does to the request: before routing
(:func:`apply_before`: delay, hang until released, drop the connection,
answer a status with ``Retry-After``), after routing (:func:`apply_after`:
truncate or corrupt the body, or send the head and then hang or drop), and the
``/_test/inject-error`` route (:func:`inject_route`). A body fault of an
injected error acts on stream reads only, in
:mod:`pullwake.testing._stream_routes`, as on the reference server.
"""

from __future__ import annotations

from aiohttp import web

from pullwake.testing._faults import Fault, FaultTable, corrupt, fault_from_inject_body
from pullwake.testing._http import abort, json_answer, respond, text_answer
from pullwake.testing._streams import js_stringify, parse_json

__all__ = ["apply_after", "apply_before", "inject_route"]


async def apply_before(request: web.Request, fault: Fault) -> web.StreamResponse | None:
    """Act on ``request`` before it is routed: delay, hang, drop, or answer a status.

    ``None``: route the request (then :func:`apply_after`).
    """
    await fault.sleep_delay()
    if fault.action == "hang":
        await fault.wait_released()
    elif fault.action == "drop" and fault.drop_after_bytes is None:
        abort(request)
    elif fault.action == "status":
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        if fault.body is None:
            return text_answer(fault.status, "Injected error for testing", headers)
        if isinstance(fault.body, (bytes, str)):
            raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
            return respond(fault.status, raw, {"Content-Type": "text/plain", **headers})
        return respond(fault.status, js_stringify(fault.body).encode(),
                       {"Content-Type": "application/json", **headers})
    return None


async def apply_after(request: web.Request, fault: Fault, response: web.StreamResponse
                      ) -> web.StreamResponse:
    """Act on a routed, unsent ``response``: corrupt or truncate its body, or send its
    head and then hang or drop the connection."""
    assert isinstance(response, web.Response)
    raw = response.body if isinstance(response.body, bytes) else b""
    if fault.action == "body":
        if fault.injected:
            return response  # like the reference server: stream reads only (_read_answer)
        response.body = corrupt(raw, truncate_bytes=fault.truncate_bytes,
                                corrupt_body=fault.corrupt_body)
        return response
    if fault.action not in ("hang_after_headers", "drop"):
        return response
    head = web.StreamResponse(status=response.status, headers=response.headers)
    head.content_length = len(raw)
    await head.prepare(request)
    if fault.action == "hang_after_headers":
        await fault.wait_released()
    else:
        await head.write(raw[: fault.drop_after_bytes or 0])
    abort(request)


def inject_route(faults: FaultTable, method: str, body: bytes) -> web.Response:
    """``POST`` (add) or ``DELETE`` (clear) on ``/_test/inject-error``, as the reference server."""
    if method == "DELETE":
        faults.clear_injected()
        return json_answer(200, {"ok": True})
    if method != "POST":
        return text_answer(405, "Method not allowed")
    try:
        config = parse_json(body)
    except ValueError:
        return text_answer(400, "Invalid JSON body")
    fault = fault_from_inject_body(config if isinstance(config, dict) else {})
    if isinstance(fault, str):
        return text_answer(400, fault)
    faults.add(fault)
    return json_answer(200, {"ok": True})
