"""RunOptions: what only the ``pullwake run`` process has, and the config it resolves to.

This module owns the process options (the handler, credentials, the health
server, logs, start-up), declared like the worker's settings: each field is a
:func:`~pullwake.runtime.settings.setting` with its help text and parser, from
which :mod:`pullwake.cli.options` derives its flag, variable and TOML key.
The resolved fields (``headers``, ``runner``, ``config``) are filled by
:func:`pullwake.cli.options.resolve`. It does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pullwake.runtime.config import RunnerConfig
from pullwake.runtime.logs import LOG_FORMATS, LOG_LEVELS
from pullwake.runtime.settings import choice, number, python_only, setting, text
from pullwake.runtime.worker_config import WorkerConfig

__all__ = ["RunOptions"]


# ------------------------------------------------------------------ process parsers


def _handler(value: Any) -> str:
    spec = text(value)
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"must be module:function, got {spec!r}")
    return spec


def _header(value: Any) -> str:
    raw = text(value)
    name, sep, _ = raw.partition(":")
    if not sep or not name.strip():
        raise ValueError("must be NAME:VALUE")
    if any(c in raw for c in "\r\n\0"):
        raise ValueError("must not contain line breaks")
    return raw


def _env_var_name(value: Any) -> str:
    name = text(value)
    if not name.replace("_", "a").isalnum():
        raise ValueError(f"must be an environment variable name, got {name!r}")
    return name


def _header_env(value: Any) -> str:
    raw = text(value)
    name, sep, var = (part.strip() for part in raw.partition("="))
    if not sep or not name or not var:
        raise ValueError("must be NAME=ENVVAR")
    if any(c in name for c in ":\r\n\0 "):
        raise ValueError("NAME must be a header name")
    _env_var_name(var)
    return f"{name}={var}"


# ------------------------------------------------------------------ the options


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What only the process has (its fields are options too), and the resolved config."""

    handler: str | None = setting(
        None, required=True, parse=_handler, metavar="MODULE:FUNCTION",
        help="called with each claimed pullwake.Wake; imported from the current "
             "directory or PYTHONPATH (async def runs on the loop, def in a thread)")
    start_timeout: float = setting(
        60.0, parse=number(0, 86_400, "seconds"), metavar="SECONDS",
        help="at start, how long to keep retrying (with backoff) while the server is "
             "unreachable or answers 5xx; 0 tries once")
    header: tuple[str, ...] = setting(
        (), repeat=True, parse=_header, metavar="NAME:VALUE", env=False,
        help="an extra request header (repeatable); values never appear in logs, but "
             "a flag's value is visible to every local user in /proc/PID/cmdline and "
             "ps: pass secrets with --header-env or --token-env")
    header_env: tuple[str, ...] = setting(
        (), repeat=True, parse=_header_env, metavar="NAME=ENVVAR", env=False,
        help="a request header NAME whose value is read from the environment variable "
             "ENVVAR (repeatable; kept out of the process arguments)")
    token_env: str | None = setting(
        None, parse=_env_var_name, metavar="VAR",
        help="name of an environment variable holding a bearer token "
             "(sent as Authorization: Bearer ...; kept out of the process arguments)")
    health_port: int | None = setting(
        None, parse=number(0, 65_535, integer=True), metavar="PORT",
        help="serve probes (/livez, /readyz), /health, /metrics and a status page (/) "
             "on PORT (0: any free port, logged)")
    health_host: str = setting(
        "127.0.0.1", metavar="HOST",
        help="address the health server binds (0.0.0.0 for a Kubernetes probe on the pod IP)")
    log_level: str = setting(
        "INFO", parse=choice(*LOG_LEVELS, fold=str.upper), metavar="LEVEL",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL, any case (logs go to stderr)")
    log_format: str = setting(
        "text", parse=choice(*LOG_FORMATS), metavar="FORMAT",
        help="text or json: one object per line with worker, subscription, wake and "
             "state fields")
    headers: Mapping[str, str] = python_only(
        why="resolved from --header, --header-env and --token-env", repr=False,
        default_factory=dict)
    runner: RunnerConfig | None = python_only(
        None, why="resolved: the connection options (server, headers, timeouts), for "
                  "every command")
    config: WorkerConfig | None = python_only(
        None, why="resolved: the worker's configuration, containing `runner` (None for "
                  "a command that declares no subscription)")

    @property
    def server(self) -> str:
        """The ``--server`` value (``runner.base_url``)."""
        return self.runner.base_url if self.runner is not None else ""
