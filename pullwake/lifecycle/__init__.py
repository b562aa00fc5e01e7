"""The lifecycle layer: the statechart in ``machine_spec.yaml``, and everything read off it.

This layer owns the runner's lifecycle as data and as a machine, and does no
network I/O (no asyncio, aiohttp or requests; it reads spec files and, for
images only, runs Graphviz's ``dot``):

- :mod:`.spec` loads and validates ``machine_spec.yaml`` into a frozen
  :class:`~pullwake.lifecycle.spec.LifecycleSpec` (the one source of truth).
- :mod:`.machine` builds it into a ``transitions`` machine and calls the
  effects (the hooks protocol, :class:`~pullwake.lifecycle.machine.LifecycleEffects`)
  that a runtime implements.
- :mod:`.backoff` is the one backoff policy of the package.
- :mod:`.table`, :mod:`.drawing`, :mod:`.diagram` read the table and the
  diagrams off the loaded machine; :mod:`.review` and :mod:`.check` compare
  two specs and model-check one.

It must not import :mod:`pullwake.protocol`, :mod:`pullwake.io` or anything
above them: the runtime drives the machine, never the other way round.
"""
