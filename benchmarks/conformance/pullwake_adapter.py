#!/usr/bin/env python3
"""A client adapter for the Durable Streams client conformance suite, over pullwake.

The suite's runner (``packages/client-conformance-tests`` in
durable-streams/durable-streams) starts this program and talks JSON lines on
stdin/stdout: one command per line, one result per line. Every **read** goes
through pullwake's public read API (:func:`pullwake.aiter_chunks` /
:func:`pullwake.aread_stream`); producer commands (create, append, head,
delete, close), which pullwake has no API for, are plain ``requests`` calls.
See ``README.md`` next to this file for how to run it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from typing import Any

import requests

import pullwake
from pullwake import (
    ConfigError,
    ConnectError,
    IdleTimeout,
    MessageError,
    ProtocolError,
    PullwakeError,
    StreamStatusError,
)

state: dict[str, Any] = {"server": "", "types": {}, "headers": {}, "params": {}}
http = requests.Session()


def error(command: str, code: str, message: str, status: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "success": False, "commandType": command,
                           "errorCode": code, "message": message}
    if status is not None:
        out["status"] = status
    return out


def from_exception(command: str, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, StreamStatusError):
        status = exc.status
        code = {404: "NOT_FOUND", 400: "INVALID_OFFSET", 409: "CONFLICT"}.get(
            status, "UNEXPECTED_STATUS")
        if status == 409 and exc.code == "STREAM_CLOSED":
            code = "STREAM_CLOSED"
        return error(command, code, str(exc), status)
    if isinstance(exc, (MessageError, ProtocolError)):
        return error(command, "PARSE_ERROR", str(exc))
    if isinstance(exc, IdleTimeout):
        return error(command, "TIMEOUT", str(exc))
    if isinstance(exc, ConnectError):
        return error(command, "NETWORK_ERROR", str(exc))
    if isinstance(exc, ConfigError):
        code = "INVALID_OFFSET" if "offset" in str(exc) else "INVALID_ARGUMENT"
        return error(command, code, str(exc))
    return error(command, "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}")


def dynamic(kind: str) -> dict[str, str]:
    """Resolve the dynamic headers (or params) once for this command."""
    out = {}
    for name, spec in state[kind].items():
        if spec["type"] == "counter":
            spec["n"] += 1
            out[name] = str(spec["n"])
        elif spec["type"] == "timestamp":
            out[name] = str(int(time.time() * 1000))
        else:
            out[name] = spec.get("value", "")
    return out


def url_of(path: str) -> str:
    return state["server"] + path


def http_status_error(command: str, resp: requests.Response,
                      path: str = "") -> dict[str, Any]:
    status = resp.status_code
    code = {404: "NOT_FOUND", 400: "INVALID_ARGUMENT"}.get(status, "UNEXPECTED_STATUS")
    if status == 409:
        code = "STREAM_CLOSED" if resp.headers.get("Stream-Closed", "").lower() == "true" \
            else ("SEQUENCE_CONFLICT" if "sequence" in resp.text.lower() else "CONFLICT")
    where = f" ({path})" if path else ""
    return error(command, code, f"{status}: {resp.text[:200]}{where}", status)


# ------------------------------------------------------------------ producer side


def create(cmd: dict[str, Any]) -> dict[str, Any]:
    ctype = cmd.get("contentType") or "application/octet-stream"
    headers = {"Content-Type": ctype, **(cmd.get("headers") or {})}
    if cmd.get("ttlSeconds") is not None:
        headers["Stream-TTL"] = str(cmd["ttlSeconds"])
    if cmd.get("expiresAt"):
        headers["Stream-Expires-At"] = cmd["expiresAt"]
    if cmd.get("closed"):
        headers["Stream-Closed"] = "true"
    body = cmd.get("data")
    resp = http.put(url_of(cmd["path"]), headers=headers,
                    data=body.encode() if isinstance(body, str) else None, timeout=10)
    if resp.status_code not in (200, 201):
        return http_status_error("create", resp, cmd["path"])
    state["types"][cmd["path"]] = ctype
    return {"type": "create", "success": True, "status": resp.status_code,
            "offset": resp.headers.get("Stream-Next-Offset")}


def append(cmd: dict[str, Any]) -> dict[str, Any]:
    path = cmd["path"]
    ctype = state["types"].get(path) or "application/octet-stream"
    sent = dynamic("headers")
    params = dynamic("params")
    headers = {"Content-Type": ctype, **sent, **(cmd.get("headers") or {})}
    if cmd.get("seq") is not None:
        headers["Stream-Seq"] = str(cmd["seq"])
    data = base64.b64decode(cmd["data"]) if cmd.get("binary") else cmd["data"].encode()
    retrying = pullwake.RetryPolicy().start()
    while True:  # a producer retries what is transient too (5xx, 429)
        resp = http.post(url_of(path), headers=headers, params=params or None, data=data,
                         timeout=10)
        if resp.status_code < 500 and resp.status_code != 429:
            break
        delay = retrying.delay()
        if delay is None:
            break
        time.sleep(delay)
    if resp.status_code not in (200, 204):
        return http_status_error("append", resp, path)
    out = {"type": "append", "success": True, "status": 200,
           "offset": resp.headers.get("Stream-Next-Offset")}
    if sent:
        out["headersSent"] = sent
    if params:
        out["paramsSent"] = params
    return out


def head(cmd: dict[str, Any]) -> dict[str, Any]:
    resp = http.head(url_of(cmd["path"]), headers=cmd.get("headers") or {}, timeout=10)
    if resp.status_code == 404:
        return error("head", "NOT_FOUND", f"Stream not found: {cmd['path']}", 404)
    if resp.status_code != 200:
        return http_status_error("head", resp, cmd["path"])
    ctype = resp.headers.get("Content-Type")
    if ctype:
        state["types"][cmd["path"]] = ctype
    return {"type": "head", "success": True, "status": 200,
            "offset": resp.headers.get("Stream-Next-Offset"), "contentType": ctype,
            "streamClosed": resp.headers.get("Stream-Closed", "").lower() == "true"}


def connect(cmd: dict[str, Any]) -> dict[str, Any]:
    out = head(cmd)
    if out.get("success"):
        return {"type": "connect", "success": True, "status": 200, "offset": out["offset"]}
    out["commandType"] = "connect"
    return out


def delete(cmd: dict[str, Any]) -> dict[str, Any]:
    resp = http.delete(url_of(cmd["path"]), headers=cmd.get("headers") or {}, timeout=10)
    if resp.status_code not in (200, 204):
        return http_status_error("delete", resp)
    return {"type": "delete", "success": True, "status": 200}


def close(cmd: dict[str, Any]) -> dict[str, Any]:
    path = cmd["path"]
    headers = {"Stream-Closed": "true"}
    data = None
    if cmd.get("data") is not None:
        headers["Content-Type"] = cmd.get("contentType") or state["types"].get(
            path, "application/octet-stream")
        data = cmd["data"].encode()
    resp = http.post(url_of(path), headers=headers, data=data, timeout=10)
    if resp.status_code not in (200, 204):
        return http_status_error("close", resp)
    return {"type": "close", "success": True,
            "finalOffset": resp.headers.get("Stream-Next-Offset")}


# The suite's idempotent-producer commands (PROTOCOL.md §5.2.1): Producer-Id,
# -Epoch and -Seq headers on plain POSTs; a retried close reuses its sequence.
producers: dict[tuple[str, str], dict[str, Any]] = {}


def _producer(cmd: dict[str, Any]) -> dict[str, Any]:
    key = (cmd["path"], cmd["producerId"])
    p = producers.setdefault(key, {"epoch": int(cmd.get("epoch") or 0), "seq": 0,
                                   "close_seq": None})
    return p


def _produce(cmd: dict[str, Any], data: bytes | None, *, seq: int,
             close_stream: bool = False) -> requests.Response:
    p = _producer(cmd)
    headers = {"Producer-Id": cmd["producerId"], "Producer-Epoch": str(p["epoch"]),
               "Producer-Seq": str(seq), **(cmd.get("headers") or {})}
    if data is not None:
        headers["Content-Type"] = state["types"].get(cmd["path"], "application/octet-stream")
    if close_stream:
        headers["Stream-Closed"] = "true"
    return http.post(url_of(cmd["path"]), headers=headers, data=data, timeout=10)


def idempotent_append(cmd: dict[str, Any]) -> dict[str, Any]:
    items = cmd.get("items") if cmd["type"] == "idempotent-append-batch" else [cmd["data"]]
    p = _producer(cmd)
    status = 200
    for item in items or []:
        resp = _produce(cmd, item.encode(), seq=p["seq"])
        if resp.status_code not in (200, 204):
            return http_status_error(cmd["type"], resp, cmd["path"])
        status = resp.status_code
        p["seq"] += 1
    return {"type": cmd["type"], "success": True, "status": status,
            "duplicate": status == 204 and cmd["type"] == "idempotent-append"}


def idempotent_close(cmd: dict[str, Any]) -> dict[str, Any]:
    p = _producer(cmd)
    if p["close_seq"] is None:
        p["close_seq"] = p["seq"]
        p["seq"] += 1
    data = cmd.get("data")
    resp = _produce(cmd, data.encode() if isinstance(data, str) else None,
                    seq=p["close_seq"], close_stream=True)
    if resp.status_code not in (200, 204):
        return http_status_error("idempotent-close", resp, cmd["path"])
    return {"type": "idempotent-close", "success": True, "status": 200,
            "finalOffset": resp.headers.get("Stream-Next-Offset")}


def idempotent_detach(cmd: dict[str, Any]) -> dict[str, Any]:
    producers.pop((cmd["path"], cmd["producerId"]), None)
    return {"type": "idempotent-detach", "success": True, "status": 200}


def validate(cmd: dict[str, Any]) -> dict[str, Any]:
    target = cmd["target"]
    if target.get("target") == "retry-options":
        # The suite's retry options are pullwake's RetryPolicy, field by field.
        names = {"attempts": "maxRetries", "initial_s": "initialDelayMs",
                 "cap_s": "maxDelayMs", "factor": "multiplier"}
        kwargs: dict[str, Any] = {}
        if "maxRetries" in target:
            kwargs["attempts"] = int(target["maxRetries"]) + 1
        if "initialDelayMs" in target:
            kwargs["initial_s"] = target["initialDelayMs"] / 1000
        if "maxDelayMs" in target:
            kwargs["cap_s"] = target["maxDelayMs"] / 1000
        elif "initialDelayMs" in target:
            kwargs["cap_s"] = max(5.0, kwargs["initial_s"])
        if "multiplier" in target:
            kwargs["factor"] = target["multiplier"]
        try:
            pullwake.RetryPolicy(**kwargs)
        except ConfigError as exc:
            text = str(exc)
            words = text.split()  # "retry <field> must ..."
            field = names.get(words[1], "") if len(words) > 1 else ""
            return error("validate", "INVALID_ARGUMENT", f"{field}: {text}")
        return {"type": "validate", "success": True}
    if target.get("target") == "idempotent-producer":
        checks = [("producerId", lambda v: isinstance(v, str) and v != ""),
                  ("epoch", lambda v: isinstance(v, int) and v >= 0),
                  ("maxBatchBytes", lambda v: isinstance(v, int) and v > 0),
                  ("maxBatchItems", lambda v: isinstance(v, int) and v > 0)]
        for name, ok in checks:
            if name in target and not ok(target[name]):
                return error("validate", "INVALID_ARGUMENT", f"{name} is invalid")
        return {"type": "validate", "success": True}
    return error("validate", "NOT_SUPPORTED", f"cannot validate {target.get('target')}")


# ------------------------------------------------------------------ reads (pullwake)


def render(kind: str | None, values: list[Any]) -> str:
    if kind == "json":
        return json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    if kind == "text":
        return "".join(values)
    return b"".join(values).decode("utf-8", errors="replace")


async def read(cmd: dict[str, Any]) -> dict[str, Any]:
    url = url_of(cmd["path"])
    sent = dynamic("headers")
    params = dynamic("params")
    headers = {**sent, **(cmd.get("headers") or {})}
    offset = cmd.get("offset") or "-1"
    live = cmd.get("live")
    extra: dict[str, Any] = {}
    if sent:
        extra["headersSent"] = sent
    if params:
        extra["paramsSent"] = params
    timeout = (cmd.get("timeoutMs") or 5000) / 1000
    if live in (None, False):
        result = await pullwake.aread_stream(url, offset, headers=headers,
                                             params=params or None, skip_bad=False)
        chunks = []
        if result.messages:
            chunks.append({"data": render(result.kind, list(result.messages)),
                           "offset": result.next_offset})
        return {"type": "read", "success": True, "status": 200, "chunks": chunks,
                "offset": result.next_offset, "upToDate": result.up_to_date,
                "streamClosed": result.closed, **extra}
    mode = "long-poll" if live is True else live
    max_chunks = cmd.get("maxChunks") or 100
    chunks: list[dict[str, Any]] = []
    status: dict[str, Any] = {"offset": offset, "upToDate": False, "streamClosed": False,
                              "status": 200}
    reader = pullwake.aiter_chunks(url, offset, live=mode, headers=headers,
                                   params=params or None)

    async def collect() -> None:
        async for chunk in reader:
            for item in chunk.items:
                if item.error is not None:
                    raise item.error
            if chunk.items:
                chunks.append({"data": render(chunk.kind, list(chunk.data)),
                               "offset": chunk.offset})
            status.update(offset=chunk.offset, upToDate=chunk.up_to_date,
                          streamClosed=chunk.closed, cursor=chunk.cursor, status=chunk.status)
            if cmd.get("waitForUpToDate") and chunk.up_to_date:
                return
            if len(chunks) >= max_chunks:
                return

    try:
        await asyncio.wait_for(collect(), timeout)
    except TimeoutError:
        status["upToDate"] = True  # timed out waiting: caught up, nothing new
    finally:
        await reader.aclose()
    status = {k: v for k, v in status.items() if v is not None}
    return {"type": "read", "success": True, "chunks": chunks, **status,
            **extra}


# ------------------------------------------------------------------ the loop


def set_dynamic(kind: str, cmd: dict[str, Any]) -> dict[str, Any]:
    spec = {"type": cmd["valueType"], "n": 0}
    if cmd.get("initialValue") is not None:
        spec["value"] = cmd["initialValue"]
    state[kind][cmd["name"]] = spec
    return {"type": cmd["type"], "success": True}


async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
    kind = cmd.get("type")
    try:
        if kind == "init":
            state.update(server=cmd["serverUrl"], types={}, headers={}, params={})
            return {"type": "init", "success": True, "clientName": "pullwake",
                    "clientVersion": pullwake.__version__,
                    "features": {"sse": True, "longPoll": True, "auto": True,
                                 "streaming": True, "dynamicHeaders": True,
                                 "retryOptions": True, "batchItems": True,
                                 "strictZeroValidation": True, "batching": False}}
        if kind == "read":
            return await read(cmd)
        if kind == "set-dynamic-header":
            return set_dynamic("headers", cmd)
        if kind == "set-dynamic-param":
            return set_dynamic("params", cmd)
        if kind == "clear-dynamic":
            state.update(headers={}, params={})
            return {"type": "clear-dynamic", "success": True}
        if kind == "shutdown":
            return {"type": "shutdown", "success": True}
        sync = {"create": create, "append": append, "head": head, "connect": connect,
                "delete": delete, "close": close, "idempotent-append": idempotent_append,
                "idempotent-append-batch": idempotent_append,
                "idempotent-close": idempotent_close, "idempotent-detach": idempotent_detach,
                "validate": validate}.get(str(kind))
        if sync is None:
            return error(str(kind), "NOT_SUPPORTED", f"{kind} is not supported")
        return await asyncio.to_thread(sync, cmd)
    except (PullwakeError, ValueError) as exc:
        return from_exception(str(kind), exc)
    except requests.RequestException as exc:
        return error(str(kind), "NETWORK_ERROR", str(exc))


async def main() -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        if not line.strip():
            continue
        cmd = json.loads(line)
        result = await handle(cmd)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        if cmd.get("type") == "shutdown":
            return


if __name__ == "__main__":
    asyncio.run(main())
