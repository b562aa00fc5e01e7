"""``pullwake run`` and ``pullwake demo``: the operator-facing commands.

This module owns process concerns only: parsing run options, loading the
handler (``module:function``), logging setup (:mod:`pullwake.logs`),
SIGINT/SIGTERM → graceful stop, and binding the health server
(:class:`pullwake.HealthServer`) before the worker starts. The work itself is
:class:`pullwake.Worker` and :mod:`pullwake.demo`.

Exit codes of ``run``: 0 stopped by a signal; 1 the worker could not start or
stopped by itself (e.g. the wake stream was closed); 2 bad arguments,
including a health port that cannot be bound (nothing was started).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from .logs import LOG_FORMATS, LOG_LEVELS

__all__ = ["add_run_commands", "configure_logging", "load_handler"]

log = logging.getLogger("pullwake.cli")


def configure_logging(level: str, fmt: str = "text", *, worker: str | None = None) -> None:
    """Log to stderr in ``fmt`` (text or json); every line carries the worker name."""
    from .logs import configure_logging as configure

    configure(level, fmt, defaults={"worker": worker} if worker else None)


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
    with worker.runner.log_context():
        return await _serve(args, worker)


async def _serve(args: argparse.Namespace, worker: Any) -> int:
    from .errors import HealthServerError, PullwakeError
    from .healthserver import HealthServer

    def transition(source: str, event: str, dest: str, kind: str) -> None:
        if kind == "transition":  # state changes at INFO; everything at DEBUG
            log.info("lifecycle: %s --%s--> %s", source, event, dest)

    # The health server binds first: a port in use is one line and exit 2,
    # before anything was started or claimed.
    health = None
    if args.health_port is not None:
        try:
            health = HealthServer(worker, host=args.health_host, port=args.health_port)
            await health.start()
        except HealthServerError as exc:
            print(f"pullwake run: {exc}", file=sys.stderr)
            return 2
        log.info("health on %s/ (probes /livez /readyz, JSON /health, metrics /metrics)",
                 health.url)
    worker.runner.observe(transition)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await worker.start()
        except PullwakeError as exc:
            log.error("cannot start: %s", exc)
            return 1
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
        if health is not None:
            await health.stop()
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
    configure_logging(args.log_level, args.log_format, worker=args.worker)
    if bool(args.pattern) == bool(args.stream):
        print("pullwake run: give exactly one of --pattern or --stream", file=sys.stderr)
        return 2
    return asyncio.run(_run(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    configure_logging("ERROR" if not args.verbose else "DEBUG")
    return asyncio.run(run_demo(verbose=args.verbose))


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {port}")
    return port


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
    p.add_argument("--health-port", type=_port, metavar="PORT",
                   help="serve probes (/livez, /readyz), /health, /metrics and a status page "
                        "(/) on PORT (0: any free port, logged)")
    p.add_argument("--health-host", default="127.0.0.1", metavar="HOST",
                   help="address the health server binds (default 127.0.0.1; 0.0.0.0 for a "
                        "Kubernetes probe on the pod IP)")
    p.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, type=str.upper,
                   help="DEBUG, INFO (default), WARNING, ERROR or CRITICAL")
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="text (default) or json: one object per line with worker, "
                        "subscription, wake and state fields")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="watch a worker survive a hung and restarted server "
                                    "(embedded server, no node needed)")
    p.add_argument("-v", "--verbose", action="store_true", help="also show debug logs")
    p.set_defaults(func=cmd_demo)
