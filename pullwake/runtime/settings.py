"""How a config field is set from outside Python: the metadata the CLI derives from.

This module owns the field metadata of pullwake's config dataclasses
(:class:`~pullwake.runtime.config.RunnerConfig`,
:class:`~pullwake.runtime.worker_config.WorkerConfig`,
:class:`~pullwake.runtime.subscriptions.SubscriptionConfig`,
:class:`~pullwake.runtime.failures.FailurePolicy`) and the parsers of their
values. Every field is declared with exactly one of:

- :func:`setting`: an operator setting. Its :class:`Setting` names the one key
  it has outside Python (the field name unless ``key`` says otherwise), from
  which ``pullwake run`` derives the flag (``--key-with-dashes``), the
  variable (``PULLWAKE_KEY``) and the TOML key (``key``), plus its help text
  and the parser that turns a flag's, variable's or file's raw value into the
  field's type (raising ``ValueError`` saying what was expected);
- :func:`python_only`: a value only Python can give (an object, a callable,
  something derived from another field), with the reason it has no flag;
- :func:`nested`: another config dataclass (or a tuple of them) whose own
  fields are the settings (a WorkerConfig's ``runner``, ``failure_policy``,
  ``subscriptions``).

The dataclass default is the one default: the CLI shows it and never has its
own. This module does no I/O and knows nothing of argparse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from pullwake.errors import ConfigError
from pullwake.protocol.urls import validate_base_url

__all__ = [
    "NESTED",
    "PYTHON_ONLY",
    "SETTING",
    "Setting",
    "boolean",
    "choice",
    "nested",
    "nested_of",
    "number",
    "python_only",
    "server_url",
    "setting",
    "setting_of",
    "text",
    "undeclared",
]

#: The metadata key of a field's :class:`Setting`.
SETTING = "pullwake.setting"
#: The metadata key of the reason a field has no flag, variable or TOML key.
PYTHON_ONLY = "pullwake.python_only"
#: The metadata key of the config dataclass a nested field holds.
NESTED = "pullwake.nested"

Parser = Callable[[Any], Any]


# ------------------------------------------------------------------ parsers
# Each takes a raw value (a string from a flag or variable, or a TOML value) and
# returns the typed value, or raises ValueError with what was expected.


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def server_url(value: Any) -> str:
    try:
        return validate_base_url(text(value), field="the URL")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def number(lo: float, hi: float, unit: str = "", *, integer: bool = False) -> Parser:
    """A number (an integer with ``integer``) from ``lo`` to ``hi``."""
    what = f"an integer from {lo:g} to {hi:g}" if integer else f"a number from {lo:g} to {hi:g}"
    what += f" {unit}" if unit else ""

    def parse(value: Any) -> float | int:
        if isinstance(value, bool):
            raise ValueError(f"must be {what}, got {value!r}")
        try:
            if integer:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                parsed: float | int = int(value) if not isinstance(value, str) else int(
                    value.strip(), 10)
            else:
                parsed = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be {what}, got {value!r}") from None
        if math.isnan(parsed) or not lo <= parsed <= hi:
            raise ValueError(f"must be {what}, got {value!r}")
        return parsed

    parse.__name__ = "integer" if integer else "number"
    return parse


def choice(*choices: str, fold: Callable[[str], str] = str.lower) -> Parser:
    def parse(value: Any) -> str:
        folded = fold(text(value))
        if folded not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return folded

    parse.__name__ = "choice"
    return parse


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    folded = text(value).lower() if isinstance(value, str) else None
    if folded in ("true", "yes", "on", "1"):
        return True
    if folded in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"must be true or false, got {value!r}")


# ------------------------------------------------------------------ metadata


@dataclass(frozen=True, kw_only=True)
class Setting:
    """How an operator sets one config field: one key, its help text, its parser."""

    help: str
    #: The one outside name: flag ``--key-with-dashes``, variable ``PULLWAKE_KEY``,
    #: TOML key ``key``. None: the field's name.
    key: str | None = None
    parse: Parser = text
    metavar: str | None = None
    #: A repeatable flag, a comma-separated variable, a TOML array.
    repeat: bool = False
    #: Also a ``PULLWAKE_*`` variable (off for values that hold secrets in flags).
    env: bool = True
    #: The CLI refuses to run without it.
    required: bool = False


def setting(default: Any = MISSING, *, help: str, key: str | None = None,
            parse: Parser = text, metavar: str | None = None, repeat: bool = False,
            env: bool = True, required: bool = False, repr: bool = True) -> Any:
    """A dataclass field that operators set (flag, variable, TOML key)."""
    meta = {SETTING: Setting(help=help, key=key, parse=parse, metavar=metavar, repeat=repeat,
                             env=env, required=required)}
    return field(default=default, metadata=meta, repr=repr)


def python_only(default: Any = MISSING, *, why: str, repr: bool = True,
                default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field only Python sets; ``why`` says why it has no flag."""
    if not why:
        raise ValueError("python_only needs the reason the field has no flag")
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={PYTHON_ONLY: why}, repr=repr)
    return field(default=default, metadata={PYTHON_ONLY: why}, repr=repr)


def nested(cls: type, default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field holding the config dataclass ``cls`` (or a tuple of them)."""
    if default_factory is None:
        return field(metadata={NESTED: cls})
    return field(default_factory=default_factory, metadata={NESTED: cls})


def nested_of(f: Field[Any]) -> type | None:
    """The config dataclass a :func:`nested` field holds, or None."""
    found = f.metadata.get(NESTED)
    return found if isinstance(found, type) else None


def setting_of(f: Field[Any]) -> Setting | None:
    """The field's :class:`Setting`, or None for a :func:`python_only` field."""
    found = f.metadata.get(SETTING)
    return found if isinstance(found, Setting) else None


def undeclared(cls: type) -> list[str]:
    """Fields of the dataclass ``cls`` declared neither a setting nor python-only."""
    return [f.name for f in fields(cls)
            if sum(k in f.metadata for k in (SETTING, PYTHON_ONLY, NESTED)) != 1]
