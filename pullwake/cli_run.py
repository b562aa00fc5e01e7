"""``pullwake run`` and ``pullwake demo``: the operator-facing commands.

This module owns process concerns only: parsing run options, loading the
handler (``module:function``), logging setup, SIGINT/SIGTERM → graceful stop,
and the loopback health endpoint. The work itself is :class:`pullwake.Worker`
and :mod:`pullwake.demo`.

Exit codes of ``run``: 0 stopped by a signal; 1 the worker could not start or
stopped by itself (e.g. the wake stream was closed); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["add_run_commands", "configure_logging", "load_handler", "serve_health"]

log = logging.getLogger("pullwake.cli")


def configure_logging(level: str) -> None:
    """Log to stderr; ``transitions``' own chatter only at WARNING."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def load_handler(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` (the current directory is importable)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--handler must be module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import handler module {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise ValueError(f"handler {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def _process_stats() -> dict[str, Any]:
    """This process: live asyncio tasks and resident memory (``None`` off Linux)."""
    rss_kb: int | None = None
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss_kb = int(line.split()[1])
                    break
    except (OSError, ValueError):
        pass
    return {"tasks": len(asyncio.all_tasks()), "rss_kb": rss_kb}


async def serve_health(port: int, snapshot: Callable[[], dict[str, Any]]) -> Any:
    """Serve ``GET /health`` (JSON) and ``GET /healthz`` (200 when streaming) on 127.0.0.1."""
    from aiohttp import web

    async def health(_: web.Request) -> web.Response:
        body = {**snapshot(), "process": _process_stats()}
        return web.json_response(body, dumps=lambda o: json.dumps(o, default=str))

    async def healthz(_: web.Request) -> web.Response:
        status = snapshot().get("status")
        return web.json_response({"status": status}, status=200 if status == "streaming" else 503)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner


def _headers(args: argparse.Namespace) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw in args.header or []:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            raise ValueError("--header must be NAME:VALUE")
        headers[name.strip()] = value.strip()
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ValueError(f"--token-env {args.token_env}: the variable is not set")
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def _run(args: argparse.Namespace) -> int:
    from .errors import PullwakeError
    from .worker import Worker

    try:
        handler = load_handler(args.handler)
        headers = _headers(args)
        worker = Worker(
            server=args.server, subscription=args.subscription, wake_stream=args.wake_stream,
            pattern=args.pattern, streams=tuple(args.stream or ()), worker_name=args.worker,
            lease_ms=args.lease_ms, handler=handler, headers=headers or None,
            max_concurrency=args.max_concurrency, live=args.live, stop_grace=args.stop_grace,
            handler_timeout=args.handler_timeout, max_attempts=args.max_attempts,
            dead_letter_stream=args.dead_letter_stream,
        )
    except (ValueError, PullwakeError) as exc:
        print(f"pullwake run: {exc}", file=sys.stderr)
        return 2
    def transition(source: str, event: str, dest: str, kind: str) -> None:
        if kind == "transition":  # state changes at INFO; everything at DEBUG
            log.info("lifecycle: %s --%s--> %s", source, event, dest)

    worker.runner.observe(transition)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    health_runner = None
    try:
        try:
            await worker.start()
        except PullwakeError as exc:
            log.error("cannot start: %s", exc)
            return 1
        if args.health_port is not None:
            health_runner = await serve_health(args.health_port, worker.health)
            log.info("health on http://127.0.0.1:%d/health", args.health_port)
        stopped = asyncio.ensure_future(worker.runner.wait_for_stopped())
        signalled = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopped, signalled}, return_when=asyncio.FIRST_COMPLETED)
        by_signal = signalled.done()
        stopped.cancel()
        signalled.cancel()
        log.info("stopping (%s)", "signal" if by_signal else "runner stopped itself")
        rc = 0 if by_signal else 1
        try:
            await worker.stop()
        except Exception as exc:  # noqa: BLE001 - report and exit non-zero
            log.error("stop failed: %s", exc)
            rc = 1
        _exit_now_if_handlers_stuck(worker, rc)
        return rc
    finally:
        if health_runner is not None:
            await health_runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _exit_now_if_handlers_stuck(worker: Any, rc: int) -> None:
    """Stop is bounded: a handler still running after the grace does not keep us alive."""
    stuck = worker.abandoned_handlers()
    if not stuck:
        return
    log.warning("exiting with %d handler(s) still running after the stop grace (their wakes "
                "were released): a stuck sync handler thread or an async handler that "
                "ignores cancellation is not waited for", stuck)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


def _attempts_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    if bool(args.pattern) == bool(args.stream):
        print("pullwake run: give exactly one of --pattern or --stream", file=sys.stderr)
        return 2
    return asyncio.run(_run(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    configure_logging("ERROR" if not args.verbose else "DEBUG")
    return asyncio.run(run_demo(verbose=args.verbose))


def add_run_commands(sub: Any) -> None:
    p = sub.add_parser("run", help="run a worker against a Durable Streams server until a signal")
    p.add_argument("--server", required=True,
                   help="stream root, e.g. http://127.0.0.1:4437/v1/stream")
    p.add_argument("--subscription", required=True, help="subscription id")
    p.add_argument("--wake-stream", required=True, help="wake stream path, e.g. wake/pool")
    p.add_argument("--pattern", help="glob of streams that wake the subscription")
    p.add_argument("--stream", action="append", help="a stream that wakes it (repeatable)")
    p.add_argument("--handler", required=True, help="module:function called with each Wake")
    p.add_argument("--worker", help="worker name (default: host name + id)")
    p.add_argument("--lease-ms", type=int, default=30_000, help="lease TTL (default 30000)")
    p.add_argument("--max-concurrency", type=int, default=4)
    p.add_argument("--live", choices=("sse", "long-poll"), default="sse")
    p.add_argument("--stop-grace", type=float, default=10.0,
                   help="seconds running handlers get at stop before release (default 10)")
    p.add_argument("--handler-timeout", type=_seconds_arg, metavar="SECONDS",
                   help="a handler running longer fails the attempt (default: no limit)")
    p.add_argument("--max-attempts", type=_attempts_arg, metavar="N",
                   help="handler attempts per wake before it is dead-lettered and acked "
                        "(needs --dead-letter-stream; default with one: 5, without: no limit)")
    p.add_argument("--dead-letter-stream", metavar="PATH",
                   help="Durable Stream that gets a JSON record of every wake given up on")
    p.add_argument("--header", action="append", help="extra request header NAME:VALUE")
    p.add_argument("--token-env", help="env var holding a bearer token (kept out of argv)")
    p.add_argument("--health-port", type=int, help="serve health JSON on 127.0.0.1:PORT")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="watch a worker survive a hung and restarted server "
                                    "(embedded server, no node needed)")
    p.add_argument("-v", "--verbose", action="store_true", help="also show debug logs")
    p.set_defaults(func=cmd_demo)
