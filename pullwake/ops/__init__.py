"""The operator layer: what an operator probes, scrapes and watches.

This layer owns the health server (:mod:`.healthserver`: ``/livez``,
``/readyz``, ``/health``, ``/metrics`` and the status page), the event-loop
watchdog and readiness rule (:mod:`.liveness`) and the Prometheus metrics
(:mod:`.metrics`). It only *reads* a worker: every figure comes from the one
health snapshot (:class:`pullwake.runtime.health.Health`), so nothing here
keeps a counter of its own, and nothing here may change what the runtime does.

It may import :mod:`pullwake.runtime` and below, never :mod:`pullwake.worker`
or :mod:`pullwake.cli`.
"""
