"""The health server of one worker: probes, JSON, metrics and a live status page.

This module owns the HTTP endpoints an operator or a kubelet reads (aiohttp's
web server; no other module serves HTTP outside :mod:`pullwake.testing`):

=====================  =========================================================
``GET /livez``         200 while the process's event loop runs and is not wedged
                       (:class:`pullwake.ops.liveness.LoopWatch`), else 503
``GET /readyz``        200 while streaming and able to take work
                       (:func:`pullwake.ops.liveness.readiness`), else 503
``GET /healthz``       the same as ``/readyz`` (kept for existing probes)
``GET /health``        the whole snapshot as JSON
``GET /metrics``       Prometheus text (:mod:`pullwake.ops.metrics`)
``GET /``              the status page (``pullwake/ops/static/status.html``)
``GET /lifecycle.svg`` the lifecycle diagram the page highlights
``GET /events``        server-sent events: the snapshot on every state change and
                       at least every ``push_interval`` seconds
=====================  =========================================================

One snapshot (:meth:`HealthServer.snapshot`: the worker's ``health()`` plus
``process``, ``liveness`` and ``readiness``) feeds all of them. It holds no
secret (header values and tokens never reach health). :meth:`start` binds
before anything else runs, so the CLI can bind first and start the worker
only when the port is its; a port in use raises
:class:`~pullwake.errors.HealthServerError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from pullwake.errors import HealthServerError
from pullwake.io.clock import Clock, deadline
from pullwake.ops.liveness import LoopWatch, readiness
from pullwake.ops.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from pullwake.ops.metrics import WorkerMetrics
    from pullwake.runtime.runner import PullWakeRunner

__all__ = ["HealthServer", "lifecycle_svg", "process_stats"]

log = logging.getLogger("pullwake.health")


class Watched(Protocol):
    """What the health server reads of a worker (:class:`pullwake.Worker` is one).

    The server only reads: the runner's lifecycle and transitions, the
    worker's metrics and its health snapshot.
    """

    @property
    def runner(self) -> PullWakeRunner: ...

    @property
    def metrics(self) -> WorkerMetrics: ...

    @property
    def clock(self) -> Clock: ...

    def health(self) -> dict[str, Any]: ...


def process_stats() -> dict[str, Any]:
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


def lifecycle_svg(spec_path: str | None = None) -> str | None:
    """The rendered lifecycle diagram for the status page, or None.

    The default spec's diagram is the committed ``diagrams/lifecycle.svg``
    (``pullwake diagram --check`` keeps it equal to the spec), shipped in the
    wheel as ``pullwake/lifecycle.svg``. A custom spec is rendered now, when
    Graphviz ``dot`` exists. Blocking (file reads, maybe ``dot``): call it in
    a thread.
    """
    if spec_path is None:
        here = Path(__file__).resolve().parent.parent  # pullwake/
        for candidate in (here / "lifecycle.svg", here.parent / "diagrams" / "lifecycle.svg"):
            if candidate.is_file():
                return candidate.read_text(encoding="utf-8")
    try:
        from pullwake.lifecycle.diagram import render_dot, render_with_dot
        from pullwake.lifecycle.spec import load_spec

        return render_with_dot(render_dot(load_spec(spec_path)), "svg").decode("utf-8")
    except Exception as exc:  # noqa: BLE001 - the page falls back to a state list
        log.info("no lifecycle diagram for the status page: %s", exc)
        return None


def _page() -> str:
    page = resources.files("pullwake.ops").joinpath("static/status.html")
    return page.read_text(encoding="utf-8")


def _dumps(body: Any) -> str:
    return json.dumps(body, default=str)


class HealthServer:
    """Serve one worker's probes, metrics and status page on ``host:port``.

    ``port=0`` picks a free port (read :attr:`port` after :meth:`start`).
    ``watch_interval`` / ``max_loop_lag`` tune ``/livez``; ``push_interval``
    is how often ``/events`` sends a snapshot when nothing changed. Timers
    run on ``clock`` (default: the worker's).
    """

    def __init__(self, worker: Watched, *, host: str = "127.0.0.1", port: int = 0,
                 clock: Clock | None = None, watch_interval: float = 1.0,
                 max_loop_lag: float = 5.0, push_interval: float = 1.0) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise HealthServerError(f"health port must be 0..65535, got {port!r}")
        self.worker = worker
        self.host = host
        self._requested_port = port
        self._clock: Clock = clock or worker.clock
        self.watch = LoopWatch(self._clock, interval=watch_interval, max_lag=max_loop_lag)
        self.push_interval = push_interval
        self._runner: web.AppRunner | None = None
        self._clients: set[asyncio.Event] = set()
        self._svg: str | None = None
        self._page: str = ""
        self._closing = False
        self.port: int | None = None
        self._states = list(worker.runner.lifecycle.spec.leaf_states)
        worker.runner.observe(self._on_transition)

    # ------------------------------------------------------------------ public

    @property
    def url(self) -> str:
        """``http://host:port`` once started (``[::1]`` style for IPv6 hosts)."""
        if self.port is None:
            raise RuntimeError("the health server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> int:
        """Bind and serve; return the bound port. Raises HealthServerError if it cannot."""
        if self._runner is not None:
            assert self.port is not None
            return self.port
        self._closing = False
        spec_path = self.worker.runner.config.spec_path
        self._svg = await asyncio.to_thread(lifecycle_svg, spec_path)
        self._page = await asyncio.to_thread(_page)
        app = web.Application()
        app.router.add_get("/", self._status_page)
        app.router.add_get("/lifecycle.svg", self._lifecycle_svg)
        app.router.add_get("/events", self._events)
        app.router.add_get("/health", self._health)
        app.router.add_get("/healthz", self._readyz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if isinstance(exc, socket.gaierror) or not exc.errno:
                reason = exc.strerror or str(exc)  # e.g. an unknown host name
            else:
                reason = os.strerror(exc.errno)  # e.g. "Address already in use"
            raise HealthServerError(
                f"cannot serve health on {self.host}:{self._requested_port}: {reason}") from None
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else self._requested_port
        self.watch.start()
        self.worker.metrics.snapshot = self.snapshot
        return self.port

    async def stop(self) -> None:
        """Stop serving (open event streams end at once). Idempotent."""
        self._closing = True
        for ev in list(self._clients):
            ev.set()
        self.watch.stop()
        if self.worker.metrics.snapshot == self.snapshot:
            self.worker.metrics.snapshot = self.worker.health
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def snapshot(self) -> dict[str, Any]:
        """The one snapshot every endpoint reads."""
        out = self.worker.health()
        out["process"] = process_stats()
        out["liveness"] = self.watch.check()
        out["readiness"] = readiness(out)
        out["lifecycle_states"] = self._states
        return out

    # --------------------------------------------------------------- handlers

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response(self.snapshot(), dumps=_dumps)

    async def _readyz(self, _: web.Request) -> web.Response:
        body = self.snapshot()["readiness"]
        return web.json_response(body, status=200 if body["ready"] else 503, dumps=_dumps)

    async def _livez(self, _: web.Request) -> web.Response:
        body = self.watch.check()
        return web.json_response(body, status=200 if body["live"] else 503, dumps=_dumps)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = self.worker.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _status_page(self, _: web.Request) -> web.Response:
        return web.Response(text=self._page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def _lifecycle_svg(self, _: web.Request) -> web.Response:
        if self._svg is None:
            return web.Response(status=404, text="no lifecycle diagram (Graphviz dot missing)")
        return web.Response(text=self._svg, content_type="image/svg+xml", charset="utf-8")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        changed = asyncio.Event()
        self._clients.add(changed)
        try:
            while not self._closing:
                changed.clear()
                data = _dumps(self.snapshot())
                await resp.write(f"event: snapshot\ndata: {data}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    async with deadline(self._clock, self.push_interval):
                        await changed.wait()
        except ConnectionError:
            pass  # the browser went away
        finally:
            self._clients.discard(changed)
        return resp

    def _on_transition(self, source: str, event: str, dest: str, kind: str) -> None:
        if kind == "transition":
            for ev in self._clients:
                ev.set()
