"""The options of ``pullwake run`` (and ``pullwake subscriptions``), derived from fields.

This module owns turning flags, ``PULLWAKE_*`` variables and a TOML file into
a :class:`~pullwake.runtime.worker_config.WorkerConfig` and the process
options (:class:`RunOptions`). Nothing here declares a worker setting: every
option is a field declared with :func:`~pullwake.runtime.settings.setting`,
either of the worker's config dataclasses (WorkerConfig and the RunnerConfig,
SubscriptionConfig and FailurePolicy it contains) or of :class:`RunOptions`
(what only the process has: the handler, credentials, health server, logs,
start-up). From each such field come, so they cannot drift apart:

- its flag ``--key-with-dashes``, variable ``PULLWAKE_KEY`` and TOML key
  ``key`` (the field's name unless its setting names another ``key``);
- its help text, its default (the dataclass default: there is no other), and
  its parser (range checks happen while parsing, so a bad value is a usage
  error, exit 2, naming the flag, variable or file);
- :func:`option_table` (for docs and tests) and :func:`misspelled_variables`.

:func:`resolve` reads, lowest to highest precedence, the defaults, a TOML
file (``--config FILE`` or ``$PULLWAKE_CONFIG``), ``PULLWAKE_*`` variables and
flags; a bad value from any source is a :class:`UsageError` naming its source.
A TOML file uses the keys of the options and may declare several
subscriptions for one worker, each table keyed by SubscriptionConfig's
fields::

    server = "http://127.0.0.1:4437/v1/stream"
    handler = "my_handlers:handle"
    claim_lease = 30                    # default for every subscription

    [[subscription]]
    id = "orders"
    pattern = "orders/*"

    [[subscription]]
    id = "audit"
    streams = ["audit/main"]
    claim_lease = 120

``--subscription``/``--pattern``/``--stream`` (or their variables, or the
same keys at the top of the file) declare one subscription instead of the
file's ``[[subscription]]`` list. It does no I/O beyond reading the file and
the environment.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

from pullwake.cli.credentials import request_headers
from pullwake.cli.run_options import RunOptions
from pullwake.errors import ConfigError
from pullwake.runtime.config import RunnerConfig, SubscriptionConfig
from pullwake.runtime.failures import FailurePolicy
from pullwake.runtime.settings import (
    Parser,
    Setting,
    nested_of,
    setting_of,
    text,
)
from pullwake.runtime.worker_config import WorkerConfig, default_worker_name

__all__ = [
    "Option",
    "RunOptions",
    "UsageError",
    "add_arguments",
    "env_name",
    "misspelled_variables",
    "option_table",
    "options",
    "resolve",
]

ENV_PREFIX = "PULLWAKE_"
CONFIG_ENV = "PULLWAKE_CONFIG"


class UsageError(ValueError):
    """A bad option value; the message names where it came from (flag, variable, file)."""


@dataclass(frozen=True)
class Option:
    """One option: a field's setting, and where its value goes."""

    #: The config dataclass path of the field: ("runner", "base_url"),
    #: ("subscriptions", "id"), ("failure_policy", "cooldown"), ("stop_grace",),
    #: or ("run", "handler") for a RunOptions field.
    path: tuple[str, ...]
    setting: Setting
    default: Any

    @property
    def key(self) -> str:
        return self.setting.key or self.path[-1]

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str | None:
        return env_name(self.key) if self.setting.env else None


def _walk(cls: type, path: tuple[str, ...]) -> list[Option]:
    out = []
    for f in fields(cls):
        inner = nested_of(f)
        if inner is not None:
            out.extend(_walk(inner, (*path, f.name)))
            continue
        found = setting_of(f)
        if found is not None:
            out.append(Option((*path, f.name), found, f.default))
    return out


@functools.cache
def options() -> tuple[Option, ...]:
    """Every option: WorkerConfig's settings (nested ones included), then RunOptions'."""
    found = (*_walk(WorkerConfig, ()), *_walk(RunOptions, ("run",)))
    keys = [o.key for o in found]
    twice = {k for k in keys if keys.count(k) > 1}
    if twice:  # pragma: no cover - a declaration mistake, caught by the tests
        raise RuntimeError(f"two fields claim the option key(s) {sorted(twice)}")
    return found


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _selected(only: Sequence[str] | None) -> list[Option]:
    return [o for o in options() if only is None or o.key in only]


def _default_text(o: Option) -> str:
    d = o.default
    if o.setting.required:
        return "required"
    if o.setting.repeat or d is None or d is MISSING:
        return ""
    if isinstance(d, bool):
        return f"default {str(d).lower()}"
    return f"default {d:g}" if isinstance(d, float) else f"default {d}"


def option_table() -> list[tuple[str, str, str, str]]:
    """(flag, variable, TOML key, default) of every option: for docs and tests."""
    return [(o.flag, o.env or "", o.key, _default_text(o)) for o in options()]


def _argparse_type(parse: Parser) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


#: The --help sections, by where the options' fields are (in this order).
_GROUPS = {"runner": "the server and the wake stream (RunnerConfig)",
           "run": "the process: handler, credentials, health server, logs",
           "subscriptions": "the subscription (SubscriptionConfig; several: --config)",
           "": "the worker (WorkerConfig)",
           "failure_policy": "handler failures (FailurePolicy)"}


def add_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """Add the flags of the options (``only`` some keys of them) and ``--config``."""
    parser.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help=f"TOML file with these options as keys, and [[subscription]] tables "
             f"(variable {CONFIG_ENV}); flags and PULLWAKE_* variables override it")
    selected = _selected(only)
    where = {o.key: o.path[0] if len(o.path) > 1 else "" for o in selected}
    groups = {name: parser.add_argument_group(title) for name, title in _GROUPS.items()
              if name in where.values()}
    for o in sorted(selected, key=lambda o: list(_GROUPS).index(where[o.key])):
        s = o.setting
        env_text = f"variable {o.env}" + (", comma-separated" if s.repeat else "") \
            if o.env else ""
        bits = [x for x in (_default_text(o), env_text) if x]
        help_text = s.help + (f" ({'; '.join(bits)})" if bits else "")
        kwargs: dict[str, Any] = {"dest": o.key, "metavar": s.metavar, "help": help_text,
                                  "type": _argparse_type(s.parse),
                                  "default": argparse.SUPPRESS}
        if s.repeat:
            kwargs["action"] = "append"
        groups[where[o.key]].add_argument(o.flag, **kwargs)


# ------------------------------------------------------------------ resolution


def _load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path}: not valid TOML: {exc}") from None


def _unknown(key: str, known: Sequence[str], where: str) -> UsageError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"{where}: unknown key {key!r}{hint}")


def _parse(parse: Parser, value: Any, where: str) -> Any:
    try:
        return parse(value)
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None


#: The keys of a ``[[subscription]]`` table: SubscriptionConfig's fields (the
#: wake stream is the worker's, given once at the top).
TABLE_KEYS = tuple(f.name for f in fields(SubscriptionConfig) if f.name != "wake_stream")


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
            only: Sequence[str] | None = None) -> RunOptions:
    """Defaults < TOML file < ``PULLWAKE_*`` variables < flags; then the config is built."""
    environ = os.environ if environ is None else environ
    opts = _selected(only)
    keys = [o.key for o in opts]
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    file_subs: list[tuple[dict[str, Any], str]] = []

    config = getattr(args, "config", None) or environ.get(CONFIG_ENV) or None
    if config:
        data = _load_toml(config)
        # `subscription` is the --subscription key (an id) or the [[subscription]] tables
        tables = data.pop("subscription") \
            if isinstance(data.get("subscription"), (list, dict)) else []
        by_key = {o.key: o for o in options()}
        for key, raw in data.items():
            if key not in by_key:
                raise _unknown(key, [*by_key, "subscription"], config)
            if key not in keys:
                continue  # an option of `run` in a file shared with another command
            o = by_key[key]
            where = f"{config}: {key} = {raw!r}"
            if o.setting.repeat:
                if not isinstance(raw, list):
                    raise UsageError(f"{where}: must be an array")
                values[key] = tuple(_parse(o.setting.parse, x, where) for x in raw)
            else:
                values[key] = _parse(o.setting.parse, raw, where)
            origin[key] = f"{config}: {key}"
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise UsageError(f"{config}: subscription must be [[subscription]] tables")
        file_subs = [_file_subscription(t, i, config) for i, t in enumerate(tables)]

    for o in opts:
        if o.env is None:
            continue
        raw = environ.get(o.env, "").strip()
        if not raw:
            continue
        where = f"{o.env}={raw!r}"
        if o.setting.repeat:
            values[o.key] = tuple(_parse(o.setting.parse, x.strip(), where)
                                  for x in raw.split(",") if x.strip())
        else:
            values[o.key] = _parse(o.setting.parse, raw, where)
        origin[o.key] = o.env

    for o in opts:  # flags: already parsed by argparse
        if hasattr(args, o.key):
            value = getattr(args, o.key)
            values[o.key] = tuple(value) if o.setting.repeat else value
            origin[o.key] = o.flag

    for o in opts:
        if o.setting.required and values.get(o.key) is None:
            raise UsageError(f"{o.flag} is required (or {o.env}, or '{o.key}' in --config FILE)")
    return _build(opts, values, origin, file_subs, environ)


def _build(opts: Sequence[Option], values: Mapping[str, Any], origin: Mapping[str, str],
           file_subs: Sequence[tuple[dict[str, Any], str]],
           environ: Mapping[str, str]) -> RunOptions:
    """The RunOptions and WorkerConfig the options say: only what was given, else defaults."""
    given: dict[str, dict[str, Any]] = {}
    for o in opts:
        if o.key in values:
            given.setdefault(o.path[0] if len(o.path) > 1 else "", {})[o.path[-1]] = \
                values[o.key]
    run = given.get("run", {})
    try:
        headers = request_headers(run.get("header", ()), run.get("header_env", ()),
                                  run.get("token_env"), environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    worker: WorkerConfig | None = None
    try:
        runner = _runner(given.get("runner", {}), headers)
        if any(o.path[0] == "subscriptions" and o.path[1] == "id" for o in opts):
            worker = WorkerConfig(
                runner=runner,
                subscriptions=_subscriptions(given.get("subscriptions", {}), origin, file_subs),
                failure_policy=_failure_policy(given.get("failure_policy", {})),
                **given.get("", {}))
            runner = worker.runner
    except ConfigError as exc:
        raise UsageError(f"invalid configuration: {exc}") from None
    return RunOptions(**run, headers=headers, runner=runner, config=worker)


def _runner(given: Mapping[str, Any], headers: Mapping[str, str]) -> RunnerConfig:
    return RunnerConfig(**{"runner_id": default_worker_name(), **given},
                        headers=dict(headers) or None)


def _failure_policy(given: Mapping[str, Any]) -> FailurePolicy:
    return FailurePolicy(**given)


def misspelled_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warnings for ``PULLWAKE_*`` variables that look like a misspelled option."""
    environ = os.environ if environ is None else environ
    known = [o.env for o in options() if o.env] + [CONFIG_ENV]
    out = []
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var in known:
            continue
        close = difflib.get_close_matches(var, known, n=1, cutoff=0.85)
        if close:
            out.append(f"ignoring {var}: not an option (did you mean {close[0]}?)")
    return out


def _file_subscription(table: Mapping[str, Any], index: int, path: str
                       ) -> tuple[dict[str, Any], str]:
    """A ``[[subscription]]`` table: its SubscriptionConfig fields, and where it was."""
    where = f"{path}: [[subscription]] #{index + 1}"
    for key in table:
        if key not in TABLE_KEYS:
            raise _unknown(key, TABLE_KEYS, where)
    if "id" not in table:
        raise UsageError(f"{where}: needs an id")
    by_name = {f.name: setting_of(f) for f in fields(SubscriptionConfig)}
    sub_id = _parse(text, table["id"], f"{where}: id")
    where = f"{path}: subscription {sub_id!r}"
    out: dict[str, Any] = {"id": sub_id}
    for key, raw in table.items():
        s = by_name[key]
        if key == "id" or s is None:
            continue
        if s.repeat:
            if not isinstance(raw, list):
                raise UsageError(f"{where}: {key} must be an array of stream paths")
            out[key] = tuple(_parse(s.parse, x, f"{where}: {key}") for x in raw)
        else:
            out[key] = _parse(s.parse, raw, f"{where}: {key}")
    if bool(out.get("pattern")) == bool(out.get("streams")):
        raise UsageError(f"{where}: give exactly one of pattern or streams")
    return out, where


def _subscriptions(given: Mapping[str, Any], origin: Mapping[str, str],
                   file_subs: Sequence[tuple[dict[str, Any], str]]
                   ) -> tuple[SubscriptionConfig, ...]:
    """One subscription from the options, or the file's tables (sharing the options' others)."""
    shared = {k: v for k, v in given.items() if k in ("wake_stream", "claim_lease")}
    sub_id, pattern, streams = given.get("id"), given.get("pattern"), given.get("streams", ())
    if sub_id is not None:
        if bool(pattern) == bool(streams):
            raise UsageError("give exactly one of --pattern or --stream "
                             f"for subscription {sub_id!r}")
        return (SubscriptionConfig(**given),)
    if pattern or streams:
        where = origin.get("pattern") or origin.get("stream")
        raise UsageError(f"{where} needs --subscription ID (the subscription it belongs to)")
    if not file_subs:
        raise UsageError("no subscription: give --subscription ID with --pattern or --stream, "
                         "or [[subscription]] tables in --config FILE")
    seen: set[str] = set()
    out = []
    for table, where in file_subs:
        if table["id"] in seen:
            raise UsageError(f"subscription {table['id']!r} is declared twice")
        seen.add(table["id"])
        try:
            out.append(SubscriptionConfig(**{**shared, **table}))
        except ConfigError as exc:
            raise UsageError(f"{where}: {exc}") from None
    return tuple(out)

