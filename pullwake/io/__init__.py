"""The I/O layer: everything that touches sockets, files or time on pullwake's behalf.

This layer owns the boundaries to the outside world, one per library:

- :mod:`.http` is the aiohttp boundary (sessions, bounded requests, the one
  translation of aiohttp's exceptions into :mod:`pullwake.errors`);
  :mod:`.areader` (handler reads) and :mod:`.transport` (the wake stream) are
  thin async shells that move bytes through :mod:`pullwake.protocol`.
- :mod:`.reader` is the sync shell on ``requests``; :mod:`.cache` (install),
  :mod:`.cache_layers` (the session layer), :mod:`.cache_stores` (the stores)
  and :mod:`.fetchcache` (the settings) are its fetch cache (requests-cache).
- :mod:`.clock` is the injectable clock every timer and deadline goes through.

It may import :mod:`pullwake.protocol`, :mod:`pullwake.lifecycle` and
:mod:`pullwake.errors`, never :mod:`pullwake.runtime` or above: it knows how
to move bytes and keep time, not what a wake or a claim is for.
"""
