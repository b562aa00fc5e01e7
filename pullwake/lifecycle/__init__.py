"""The lifecycle layer: the statechart in ``machine_spec.yaml``, and everything read off it.

This layer owns the runner's lifecycle as data and as a machine, and does no
network I/O (no asyncio, aiohttp or requests; it reads spec files and, for
images only, runs Graphviz's ``dot``). Its modules, lowest first:

- :mod:`.backoff`: the package's one backoff (``BackoffPolicy``, ``Backoff``:
  jitter on by default, an injectable rng, ``Retry-After``, reset). It
  imports nothing else of the package but :mod:`pullwake.errors`.
- :mod:`.effects`: the hooks protocol between the machine and its owner
  (``LifecycleEffects``, ``WorkTicket``, the hooks and guards the machine
  provides itself).
- :mod:`.model`: the frozen :class:`~pullwake.lifecycle.model.LifecycleSpec`.
- :mod:`.spec` loads ``machine_spec.yaml`` (YAML, lines, cache) and runs
  :mod:`.validate` (the declarations) and :mod:`.validate_states` (the state
  tree and its decisions): the one source of truth, checked.
- :mod:`.machine` builds it into a ``transitions`` machine and calls the
  effects a runtime implements.
- :mod:`.table` and :mod:`.drawing` read the table and a diagram's content
  off the loaded machine; :mod:`.diagram_dot` and :mod:`.diagram_mermaid`
  render it; :mod:`.diagram` writes and gates ``diagrams/``.
- :mod:`.review_diff` and :mod:`.review` compare two specs for a pull
  request; :mod:`.explore` and :mod:`.check` model-check one.

It must not import :mod:`pullwake.protocol`, :mod:`pullwake.io` or anything
above them: the runtime drives the machine, never the other way round.
"""
