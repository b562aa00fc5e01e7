"""Test servers for pullwake: the Durable Streams reference server and an embedded one.

* :mod:`pullwake.testing.realserver` installs and runs ``@durable-streams/server``
  (node) on 127.0.0.1: :class:`RealServer`, :func:`ensure_installed` (the
  install itself in :mod:`._install`).
* :mod:`pullwake.testing.server` is an in-process aiohttp server speaking the
  subset of the protocol pullwake uses, with fault switches: :class:`EmbeddedServer`.
  Its parts: routes in :mod:`._stream_routes`, :mod:`._control_routes` and
  :mod:`._fault_routes`; storage in :mod:`._streams`; subscriptions in
  :mod:`._subscriptions` and :mod:`._subscription_model`; fault selection in
  :mod:`._faults`; answer plumbing in :mod:`._http`.
* :mod:`pullwake.testing.clock` is :class:`ManualClock`, a clock tests drive.

Importing this package needs neither node nor npm, and imports the submodules
lazily (so ``python -m pullwake.testing.realserver`` runs without a warning).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pullwake.testing.interface import DurableStreamsServer
    from pullwake.testing.realserver import (
        DS_SERVER_VERSION,
        RealServer,
        RealServerError,
        ensure_installed,
        find_installed,
        install_dir,
    )
    from pullwake.testing.server import ClaimAnswer, EmbeddedServer, Fault, RecordedRequest

__all__ = [
    "DS_SERVER_VERSION",
    "ClaimAnswer",
    "DurableStreamsServer",
    "EmbeddedServer",
    "Fault",
    "RealServer",
    "RealServerError",
    "RecordedRequest",
    "ensure_installed",
    "find_installed",
    "install_dir",
]

_HOMES = {
    "DS_SERVER_VERSION": "realserver",
    "RealServer": "realserver",
    "RealServerError": "realserver",
    "ensure_installed": "realserver",
    "find_installed": "realserver",
    "install_dir": "realserver",
    "ClaimAnswer": "server",
    "DurableStreamsServer": "interface",
    "EmbeddedServer": "server",
    "Fault": "server",
    "RecordedRequest": "server",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
