"""``pullwake run`` and ``pullwake demo``: the operator-facing commands.

This module owns process concerns only: turning options
(:mod:`pullwake.cli.options`) into a worker, loading the handler
(``module:function``), logging setup (:mod:`pullwake.runtime.logs`), waiting for the
server at start (``--start-timeout``), SIGINT/SIGTERM → graceful stop (a
second signal ends the grace), and binding the health server
(:class:`pullwake.HealthServer`) before the worker starts. The work itself is
:class:`pullwake.Worker` and :mod:`pullwake.cli.demo`.

Exit codes of ``run``: 0 stopped by a signal (also during start-up); 1 the
worker could not start or stopped by itself (e.g. the wake stream was
closed); 2 bad arguments, including a ``--server`` that is not a stream root
and a health port that cannot be bound (nothing was started).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pullwake.cli.options import RunOptions, add_arguments, misspelled_variables, resolve

if TYPE_CHECKING:
    from pullwake.runtime.worker_config import WorkerConfig

__all__ = ["add_run_commands", "configure_logging", "load_handler"]

log = logging.getLogger("pullwake.cli")


def configure_logging(level: str, fmt: str = "text", *, worker: str | None = None) -> None:
    """Log to stderr in ``fmt`` (text or json); every line carries the worker name."""
    from pullwake.runtime.logs import configure_logging as configure

    configure(level, fmt, defaults={"worker": worker} if worker else None)


def load_handler(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` (the current directory is importable).

    Any failure is a ``ValueError`` naming the handler: a missing module or
    attribute, or an exception raised while importing the module (a
    ``SyntaxError`` names its file and line).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--handler must be module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else module_name
        raise ValueError(f"--handler {spec}: {where}: SyntaxError: {exc.msg}") from None
    except ImportError as exc:
        raise ValueError(f"cannot import handler module {module_name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the module's own code raised on import
        raise ValueError(f"--handler {spec}: importing {module_name!r} raised "
                         f"{type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise ValueError(f"handler {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def _retryable_at_start(exc: BaseException) -> bool:
    """No answer, 429 or 5xx: the server may still be starting. Anything else is final."""
    from pullwake.errors import ControlPlaneError, SubscriptionError

    if not isinstance(exc, ControlPlaneError) or isinstance(exc, SubscriptionError):
        return False
    return exc.status is None or exc.status == 429 or exc.status >= 500


class _Signals:
    """SIGINT/SIGTERM on the loop: counts them and wakes whoever waits."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from pullwake.io.clock import LoopClock
        from pullwake.runtime.jobs import Jobs

        self.loop = loop
        self.received: list[str] = []
        self.signalled: asyncio.Future[None] = loop.create_future()
        self.on_again: Callable[[], None] | None = None
        self.jobs = Jobs(clock=LoopClock(), label="cli")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._got, sig)

    def _got(self, sig: signal.Signals) -> None:
        self.received.append(sig.name)
        if len(self.received) > 1 and self.on_again is not None:
            self.on_again()
        if not self.signalled.done():
            self.signalled.set_result(None)

    async def wait_or(self, aw: Coroutine[Any, Any, Any]) -> bool:
        """Await ``aw`` unless a signal comes first (then cancel it). True if it finished;
        its error is raised here."""
        job = self.jobs.spawn(_outcome(aw), "pullwake-cli-wait")
        either: set[asyncio.Future[Any]] = {job, self.signalled}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if job.done():
            error = job.result()
            if error is not None:
                raise error
            return True
        await self.jobs.cancel([job])
        return False

    def close(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.remove_signal_handler(sig)


async def _outcome(aw: Coroutine[Any, Any, Any]) -> BaseException | None:
    """Await ``aw``: None, or the error it raised (handed back to whoever waits for it)."""
    try:
        await aw
    except Exception as exc:  # noqa: BLE001 - re-raised by _Signals.wait_or
        return exc
    return None


async def _start(worker: Any, opts: RunOptions, signals: _Signals) -> bool:
    """``worker.start()``, retried with the lifecycle's backoff up to ``--start-timeout``.

    Returns False when a signal aborted start-up; raises the last error when
    it is not transient or the time is up.
    """
    from pullwake.lifecycle.backoff import Backoff

    loop = asyncio.get_running_loop()
    give_up = loop.time() + opts.start_timeout
    backoff = Backoff(worker.runner.lifecycle.spec.backoff.policy)
    while True:
        try:
            return await signals.wait_or(worker.start())
        except BaseException as exc:
            if not _retryable_at_start(exc):
                raise
            remaining = give_up - loop.time()
            if remaining <= 0:
                if opts.start_timeout > 0:
                    raise _StartTimeout(f"the server did not answer within --start-timeout "
                                        f"{opts.start_timeout:g} s; last error: {exc}") from exc
                raise
            delay = min(backoff.next_delay(), remaining)
            log.warning("waiting for the server at %s: retrying in %.1f s, giving up in %.0f s "
                        "(--start-timeout); last error: %s", opts.server, delay, remaining, exc)
        if not await signals.wait_or(asyncio.sleep(delay)):
            return False


class _StartTimeout(Exception):
    pass


def _config(opts: RunOptions) -> WorkerConfig:
    if opts.config is None:  # pragma: no cover - `run` always declares subscriptions
        raise ValueError("no worker configuration")
    return opts.config


async def _run(opts: RunOptions, handler: Callable[..., Any]) -> int:
    from pullwake.errors import PullwakeError
    from pullwake.worker import Worker

    try:
        worker = Worker(config=_config(opts), handler=handler)
    except (ValueError, PullwakeError) as exc:
        print(f"pullwake run: error: {exc}", file=sys.stderr)
        return 2

    with worker.runner.log_context():
        return await _serve(opts, worker)


async def _serve(opts: RunOptions, worker: Any) -> int:
    from pullwake.errors import HealthServerError, PullwakeError, ServerRootError
    from pullwake.ops.healthserver import HealthServer

    def transition(source: str, event: str, dest: str, kind: str) -> None:
        if kind == "transition":  # state changes at INFO; everything at DEBUG
            log.info("lifecycle: %s --%s--> %s", source, event, dest)

    # The health server binds first: a port in use is one line and exit 2,
    # before anything was started or claimed.
    health = None
    if opts.health_port is not None:
        try:
            health = HealthServer(worker, host=opts.health_host, port=opts.health_port)
            await health.start()
        except HealthServerError as exc:
            print(f"pullwake run: {exc}", file=sys.stderr)
            return 2
        log.info("health on %s/ (probes /livez /readyz, JSON /health, metrics /metrics)",
                 health.url)
    worker.runner.observe(transition)
    signals = _Signals(asyncio.get_running_loop())
    try:
        names = ", ".join(repr(s) for s in worker.subscriptions)
        log.info("starting worker %r on %s (subscriptions %s, wake stream %r)",
                 worker.worker_name, opts.server, names, worker.wake_stream)
        try:
            started = await _start(worker, opts, signals)
        except ServerRootError as exc:
            print(f"pullwake run: error: --server: {exc}", file=sys.stderr)
            return 2
        except (PullwakeError, _StartTimeout) as exc:
            log.error("cannot start: %s", exc)
            return 1
        if not started:
            log.info("stopped during start-up (signal %s)", signals.received[0])
            return 0
        by_signal = not await signals.wait_or(worker.runner.wait_for_stopped())
        if by_signal:
            running = int(worker.health()["worker"]["jobs_active"])
            stop_grace = _config(opts).stop_grace
            if running and stop_grace > 0:
                log.info("stopping (signal) %s: waiting up to %g s for %d running handler(s) "
                         "to finish; signal again to stop them now",
                         signals.received[0], stop_grace, running)
            else:
                log.info("stopping (signal) %s", signals.received[0])

            def cut() -> None:
                log.warning("second signal: ending the stop grace; running handlers are "
                            "cancelled and their claims released")
                worker.end_grace()

            signals.on_again = cut
        else:
            log.error("stopping (runner stopped itself): %s",
                      worker.health().get("last_error") or "no error recorded")
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
        signals.close()


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


def cmd_run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if getattr(args, "lease_ms", None) is not None and not hasattr(args, "claim_lease"):
        args.claim_lease = args.lease_ms / 1000  # the old flag, in milliseconds
    try:
        opts = resolve(args)
        handler = load_handler(opts.handler or "")
    except ValueError as exc:  # UsageError (a token not set, too), or the handler cannot load
        parser.error(str(exc))
    configure_logging(opts.log_level, opts.log_format, worker=_config(opts).worker_name)
    for warning in misspelled_variables():
        log.warning("%s", warning)
    return asyncio.run(_run(opts, handler))


def cmd_demo(args: argparse.Namespace) -> int:
    from pullwake.cli.demo import run_demo

    configure_logging("ERROR" if not args.verbose else "DEBUG")
    return asyncio.run(run_demo(verbose=args.verbose))


def _legacy_lease_ms(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer of milliseconds, got {text!r}"
                                         ) from None
    if not 1000 <= value <= 600_000:
        raise argparse.ArgumentTypeError(f"must be from 1000 to 600000 ms, got {text!r} "
                                         "(use --claim-lease SECONDS)")
    return value


RUN_EPILOG = """Precedence: flags > PULLWAKE_* variables > --config FILE > defaults.
Exit status: 0 stopped by a signal; 1 the worker could not start or stopped by
itself; 2 bad arguments (including a --server that is not a stream root and a
health port that cannot be bound)."""


def add_run_commands(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run a worker against a Durable Streams server until a signal",
        description="Run a pull-wake worker until SIGINT/SIGTERM, then stop gracefully.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--lease-ms", type=_legacy_lease_ms, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run, parser=p)

    p = sub.add_parser("demo", help="watch a worker survive a hung and restarted server "
                                    "(embedded server, no node needed)")
    p.add_argument("-v", "--verbose", action="store_true", help="also show debug logs")
    p.set_defaults(func=cmd_demo)
