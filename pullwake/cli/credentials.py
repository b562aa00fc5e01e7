"""The request headers the options name: ``--header``, ``--header-env``, ``--token-env``.

This module owns turning those options into the headers of every request of
``pullwake run`` and ``pullwake subscriptions`` (one place, so both commands
send the same credentials). Secrets are read from the environment, never from
the process arguments; a variable that is not set is a ``ValueError`` naming
the option. It does no I/O beyond reading the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

__all__ = ["request_headers"]


def request_headers(header: Sequence[str] = (), header_env: Sequence[str] = (),
                    token_env: str | None = None,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``NAME:VALUE`` headers, ``NAME=ENVVAR`` headers and a bearer token from ``token_env``."""
    environ = os.environ if environ is None else environ
    headers: dict[str, str] = {}
    for raw in header:
        name, _, value = raw.partition(":")
        headers[name.strip()] = value.strip()
    for raw in header_env:
        name, _, var = raw.partition("=")
        secret = environ.get(var)
        if not secret:
            raise ValueError(f"--header-env {name}={var}: the variable is not set")
        headers[name] = secret
    if token_env:
        token = environ.get(token_env)
        if not token:
            raise ValueError(f"--token-env {token_env}: the variable is not set")
        headers["Authorization"] = f"Bearer {token}"
    return headers
