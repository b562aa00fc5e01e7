"""The options of ``pullwake run`` (and ``pullwake subscriptions``), in one place.

This module owns :class:`RunOptions`, a frozen dataclass whose fields carry
their own flag, help text, range check and environment variable, and
everything derived from it, so flags, ``PULLWAKE_*`` variables, TOML keys,
help texts and docs cannot drift apart:

- :func:`add_arguments`: the argparse flags (every flag has help text; range
  checks happen while parsing, so a bad value is a usage error, exit 2,
  naming the flag);
- :func:`resolve`: one :class:`RunOptions` from, lowest to highest
  precedence, the defaults, a TOML file (``--config FILE`` or
  ``$PULLWAKE_CONFIG``), ``PULLWAKE_*`` environment variables, and flags;
  a bad value from any source is a :class:`UsageError` naming its source.

A TOML file uses the field names as keys and may declare several
subscriptions for one worker::

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
file's ``[[subscription]]`` list. It does no I/O beyond reading the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from pullwake.errors import ConfigError
from pullwake.protocol.urls import validate_base_url
from pullwake.runtime.logs import LOG_FORMATS, LOG_LEVELS

__all__ = [
    "RunOptions",
    "SubscriptionOptions",
    "UsageError",
    "add_arguments",
    "env_name",
    "misspelled_variables",
    "option_table",
    "resolve",
]

ENV_PREFIX = "PULLWAKE_"
CONFIG_ENV = "PULLWAKE_CONFIG"


class UsageError(ValueError):
    """A bad option value; the message names where it came from (flag, variable, file)."""


# ------------------------------------------------------------------ converters
# Each takes a raw value (a string from a flag or variable, or a TOML value) and
# returns the typed value, or raises ValueError with what was expected.

Converter = Callable[[Any], Any]


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def _server(value: Any) -> str:
    try:
        return validate_base_url(_text(value), field="the URL")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _handler(value: Any) -> str:
    text = _text(value)
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"must be module:function, got {text!r}")
    return text


def _number(lo: float, hi: float, unit: str, *, integer: bool = False) -> Converter:
    what = f"an integer from {lo:g} to {hi:g}" if integer else f"a number from {lo:g} to {hi:g}"
    what += f" {unit}" if unit else ""

    def convert(value: Any) -> float | int:
        if isinstance(value, bool):
            raise ValueError(f"must be {what}, got {value!r}")
        try:
            if integer:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                number: float | int = int(value) if not isinstance(value, str) else int(
                    value.strip(), 10)
            else:
                number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be {what}, got {value!r}") from None
        if math.isnan(number) or not lo <= number <= hi:
            raise ValueError(f"must be {what}, got {value!r}")
        return number

    convert.__name__ = "integer" if integer else "number"
    return convert


def _choice(*choices: str, fold: Callable[[str], str] = str.lower) -> Converter:
    def convert(value: Any) -> str:
        text = fold(_text(value))
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return text

    return convert


def _header(value: Any) -> str:
    text = _text(value)
    name, sep, _ = text.partition(":")
    if not sep or not name.strip():
        raise ValueError("must be NAME:VALUE")
    if any(c in text for c in "\r\n\0"):
        raise ValueError("must not contain line breaks")
    return text


def _header_env(value: Any) -> str:
    text = _text(value)
    name, sep, var = (part.strip() for part in text.partition("="))
    if not sep or not name or not var:
        raise ValueError("must be NAME=ENVVAR")
    if any(c in name for c in ":\r\n\0 "):
        raise ValueError("NAME must be a header name")
    _env_var_name(var)
    return f"{name}={var}"


def _env_var_name(value: Any) -> str:
    text = _text(value)
    if not text.replace("_", "a").isalnum():
        raise ValueError(f"must be an environment variable name, got {text!r}")
    return text


# ------------------------------------------------------------------ the options


def option(default: Any = MISSING, *, help: str, convert: Converter = _text,
           metavar: str | None = None, flag: str | None = None, repeat: bool = False,
           env: bool = True, required: bool = False) -> Any:
    """A :class:`RunOptions` field with its flag, help text and check."""
    meta = {"help": help, "convert": convert, "metavar": metavar, "flag": flag,
            "repeat": repeat, "env": env, "required": required}
    if repeat:
        return field(default=(), metadata=meta)
    return field(default=None if default is MISSING else default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class SubscriptionOptions:
    """One subscription of the worker (a ``[[subscription]]`` table, or the flags)."""

    id: str
    pattern: str | None = None
    streams: tuple[str, ...] = ()
    claim_lease: float = 30.0


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Every option of ``pullwake run``; the flags and variables are derived from it."""

    server: str = option(
        required=True, convert=_server, metavar="URL",
        help="the stream root of the Durable Streams server, "
             "e.g. http://127.0.0.1:4437/v1/stream")
    handler: str = option(
        required=True, convert=_handler, metavar="MODULE:FUNCTION",
        help="called with each claimed pullwake.Wake; imported from the current "
             "directory or PYTHONPATH (async def runs on the loop, def in a thread)")
    subscription: str | None = option(
        metavar="ID", help="the id of the worker's subscription (one; several: "
                           "[[subscription]] tables in --config)")
    pattern: str | None = option(
        metavar="GLOB", help="glob of the streams that wake the subscription, e.g. 'events/*'")
    stream: tuple[str, ...] = option(
        repeat=True, metavar="PATH",
        help="a stream that wakes the subscription (repeatable)")
    wake_stream: str = option(
        "wake/pool", metavar="PATH",
        help="the stream the server writes wakes to, shared by all subscriptions of "
             "this worker (created if missing)")
    worker: str | None = option(
        metavar="NAME", help="this worker's name in claims (default: host name + a unique id)")
    claim_lease: float = option(
        30.0, convert=_number(1, 600, "seconds"), metavar="SECONDS",
        help="lease on each claimed wake: the worker extends it while its handler runs; "
             "if the worker dies, the server gives the wake to another worker after "
             "this long (the subscription's lease_ttl_ms)")
    max_concurrency: int = option(
        4, convert=_number(1, 10_000, "", integer=True), metavar="N",
        help="handlers running at once, across all subscriptions")
    live: str = option(
        "sse", convert=_choice("sse", "long-poll"), metavar="MODE",
        help="how the wake stream is read: sse or long-poll")
    stop_grace: float = option(
        10.0, convert=_number(0, 86_400, "seconds"), metavar="SECONDS",
        help="at stop, how long running handlers may finish and ack before they are "
             "cancelled and their claims released (a second signal ends it early)")
    handler_timeout: float | None = option(
        convert=_number(0.001, 86_400, "seconds"), metavar="SECONDS",
        help="a handler attempt running longer fails (an async handler is cancelled, a "
             "sync one's thread abandoned) and counts toward --max-attempts "
             "(default: no limit)")
    max_attempts: int | None = option(
        convert=_number(1, 100_000, "", integer=True), metavar="N",
        help="failed handler attempts per wake before it is written to "
             "--dead-letter-stream and acked; needs that stream (default with it: 5; "
             "without it a wake is retried without limit)")
    dead_letter_stream: str | None = option(
        metavar="PATH",
        help="a Durable Stream (created if missing) that gets one JSON record per wake "
             "given up on: subscription, offset ranges, attempts, scrubbed error")
    start_timeout: float = option(
        60.0, convert=_number(0, 86_400, "seconds"), metavar="SECONDS",
        help="at start, how long to keep retrying (with backoff) while the server is "
             "unreachable or answers 5xx; 0 tries once")
    header: tuple[str, ...] = option(
        repeat=True, convert=_header, metavar="NAME:VALUE", env=False,
        help="an extra request header (repeatable); values never appear in logs, but "
             "a flag's value is visible to every local user in /proc/PID/cmdline and "
             "ps: pass secrets with --header-env or --token-env")
    header_env: tuple[str, ...] = option(
        repeat=True, convert=_header_env, metavar="NAME=ENVVAR", env=False,
        help="a request header NAME whose value is read from the environment variable "
             "ENVVAR (repeatable; kept out of the process arguments)")
    token_env: str | None = option(
        convert=_env_var_name, metavar="VAR",
        help="name of an environment variable holding a bearer token "
             "(sent as Authorization: Bearer ...; kept out of the process arguments)")
    health_port: int | None = option(
        convert=_number(0, 65_535, "", integer=True), metavar="PORT",
        help="serve probes (/livez, /readyz), /health, /metrics and a status page (/) "
             "on PORT (0: any free port, logged)")
    health_host: str = option(
        "127.0.0.1", metavar="HOST",
        help="address the health server binds (0.0.0.0 for a Kubernetes probe on the pod IP)")
    log_level: str = option(
        "INFO", convert=_choice(*LOG_LEVELS, fold=str.upper), metavar="LEVEL",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL, any case (logs go to stderr)")
    log_format: str = option(
        "text", convert=_choice(*LOG_FORMATS), metavar="FORMAT",
        help="text or json: one object per line with worker, subscription, wake and "
             "state fields")
    subscriptions: tuple[SubscriptionOptions, ...] = ()

    @property
    def claim_lease_ms(self) -> int:
        return round(self.claim_lease * 1000)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _flag(f: Any) -> str:
    return str(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))


def _option_fields(only: Sequence[str] | None = None) -> list[Any]:
    return [f for f in fields(RunOptions) if "help" in f.metadata
            and (only is None or f.name in only)]


def _default_text(f: Any) -> str:
    if f.metadata["required"]:
        return "required"
    if f.metadata["repeat"] or f.default is None:
        return ""
    return f"default {f.default:g}" if isinstance(f.default, float) else f"default {f.default}"


def option_table() -> list[tuple[str, str, str, str]]:
    """(flag, variable, TOML key, default) of every option: for docs and tests."""
    return [(_flag(f), env_name(f.name) if f.metadata["env"] else "", f.name, _default_text(f))
            for f in _option_fields()]


def _argparse_type(convert: Converter) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = convert.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """Add the flags of :class:`RunOptions` (``only`` some of them) and ``--config``."""
    parser.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help=f"TOML file with these options as keys, and [[subscription]] tables "
             f"(variable {CONFIG_ENV}); flags and PULLWAKE_* variables override it")
    for f in _option_fields(only):
        meta = f.metadata
        env_text = ""
        if meta["env"]:
            env_text = f"variable {env_name(f.name)}" + (", comma-separated" if meta["repeat"]
                                                          else "")
        bits = [x for x in (_default_text(f), env_text) if x]
        help_text = meta["help"] + (f" ({'; '.join(bits)})" if bits else "")
        kwargs: dict[str, Any] = {"dest": f.name, "metavar": meta["metavar"], "help": help_text,
                                  "type": _argparse_type(meta["convert"]),
                                  "default": argparse.SUPPRESS}
        if meta["repeat"]:
            kwargs["action"] = "append"
        parser.add_argument(_flag(f), **kwargs)


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


def _convert(convert: Converter, value: Any, where: str) -> Any:
    try:
        return convert(value)
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None


_SUB_KEYS = ("id", "pattern", "streams", "claim_lease")


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
            only: Sequence[str] | None = None) -> RunOptions:
    """Defaults < TOML file < ``PULLWAKE_*`` variables < flags; then the cross-checks."""
    environ = os.environ if environ is None else environ
    opts = _option_fields(only)
    names = [f.name for f in opts]
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    file_subs: list[tuple[SubscriptionOptions, float | None]] = []

    config = getattr(args, "config", None) or environ.get(CONFIG_ENV) or None
    if config:
        data = _load_toml(config)
        tables = data.pop("subscription", [])
        by_name = {f.name: f for f in fields(RunOptions) if "help" in f.metadata}
        for key, raw in data.items():
            if key not in by_name:
                raise _unknown(key, [*by_name, "subscription"], config)
            if key not in names:
                continue  # an option of `run` in a file shared with another command
            f = by_name[key]
            where = f"{config}: {key} = {raw!r}"
            if f.metadata["repeat"]:
                if not isinstance(raw, list):
                    raise UsageError(f"{where}: must be an array")
                values[key] = tuple(_convert(f.metadata["convert"], x, where) for x in raw)
            else:
                values[key] = _convert(f.metadata["convert"], raw, where)
            origin[key] = f"{config}: {key}"
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise UsageError(f"{config}: subscription must be [[subscription]] tables")
        file_subs = [_file_subscription(t, i, config) for i, t in enumerate(tables)]

    for f in opts:
        if not f.metadata["env"]:
            continue
        var = env_name(f.name)
        raw = environ.get(var, "").strip()
        if not raw:
            continue
        where = f"{var}={raw!r}"
        if f.metadata["repeat"]:
            values[f.name] = tuple(_convert(f.metadata["convert"], x.strip(), where)
                                   for x in raw.split(",") if x.strip())
        else:
            values[f.name] = _convert(f.metadata["convert"], raw, where)
        origin[f.name] = var

    for f in opts:  # flags: already converted by argparse
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if f.metadata["repeat"] else value
            origin[f.name] = _flag(f)

    for f in opts:
        if f.metadata["required"] and values.get(f.name) is None:
            raise UsageError(f"{_flag(f)} is required (or {env_name(f.name)}, or "
                             f"'{f.name}' in --config FILE)")

    if only is None or "subscription" in names:
        values["subscriptions"] = _subscriptions(values, origin, file_subs)
    return RunOptions(**values)


def misspelled_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warnings for ``PULLWAKE_*`` variables that look like a misspelled option."""
    environ = os.environ if environ is None else environ
    known = [env_name(f.name) for f in _option_fields() if f.metadata["env"]] + [CONFIG_ENV]
    out = []
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var in known:
            continue
        close = difflib.get_close_matches(var, known, n=1, cutoff=0.85)
        if close:
            out.append(f"ignoring {var}: not an option (did you mean {close[0]}?)")
    return out


def _file_subscription(table: Mapping[str, Any], index: int, path: str
                       ) -> tuple[SubscriptionOptions, float | None]:
    """A ``[[subscription]]`` table, and its own claim_lease (None: the top-level one)."""
    where = f"{path}: [[subscription]] #{index + 1}"
    for key in table:
        if key not in _SUB_KEYS:
            raise _unknown(key, _SUB_KEYS, where)
    if "id" not in table:
        raise UsageError(f"{where}: needs an id")
    sub_id = _convert(_text, table["id"], f"{where}: id")
    where = f"{path}: subscription {sub_id!r}"
    pattern = _convert(_text, table["pattern"], f"{where}: pattern") \
        if "pattern" in table else None
    raw_streams = table.get("streams", [])
    if not isinstance(raw_streams, list):
        raise UsageError(f"{where}: streams must be an array of stream paths")
    streams = tuple(_convert(_text, s, f"{where}: streams") for s in raw_streams)
    if bool(pattern) == bool(streams):
        raise UsageError(f"{where}: give exactly one of pattern or streams")
    lease = _convert(_number(1, 600, "seconds"), table["claim_lease"],
                     f"{where}: claim_lease") if "claim_lease" in table else None
    return SubscriptionOptions(id=sub_id, pattern=pattern, streams=streams), lease


def _subscriptions(values: Mapping[str, Any], origin: Mapping[str, str],
                   file_subs: Sequence[tuple[SubscriptionOptions, float | None]]
                   ) -> tuple[SubscriptionOptions, ...]:
    lease = values.get("claim_lease", 30.0)
    sub_id, pattern = values.get("subscription"), values.get("pattern")
    streams = tuple(values.get("stream", ()))
    if sub_id is not None:
        if bool(pattern) == bool(streams):
            raise UsageError("give exactly one of --pattern or --stream "
                             f"for subscription {sub_id!r}")
        return (SubscriptionOptions(id=sub_id, pattern=pattern, streams=streams,
                                    claim_lease=lease),)
    if pattern or streams:
        given = origin.get("pattern") or origin.get("stream")
        raise UsageError(f"{given} needs --subscription ID (the subscription it belongs to)")
    if not file_subs:
        raise UsageError("no subscription: give --subscription ID with --pattern or --stream, "
                         "or [[subscription]] tables in --config FILE")
    seen: set[str] = set()
    out = []
    for sub, own_lease in file_subs:
        if sub.id in seen:
            raise UsageError(f"subscription {sub.id!r} is declared twice")
        seen.add(sub.id)
        out.append(dataclasses.replace(sub, claim_lease=own_lease if own_lease is not None
                                       else lease))
    return tuple(out)
