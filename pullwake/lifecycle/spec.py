"""Load ``machine_spec.yaml``: read, parse and validate it into an immutable :class:`LifecycleSpec`.

This module owns the loader: where the spec is (:func:`default_spec_path`),
reading it, YAML with PyYAML's safe loader (libyaml's ``CSafeLoader`` when
installed, the pure-Python one re-parsing for error messages), the line of
every key, the per-content cache of :func:`load_spec`, and the order the
rules run in (the top-level schema here, the declarations in
:mod:`.validate`, the state tree in :mod:`.validate_states`). The model it
builds is :mod:`.model` (re-exported here: ``from pullwake.lifecycle.spec
import LifecycleSpec`` keeps working). It knows nothing of ``transitions``,
asyncio or HTTP. Every problem becomes a
:class:`~pullwake.errors.SpecError` naming the file, state, event and line;
validation collects all problems and raises them together as
:class:`~pullwake.errors.SpecErrors`.

Rules checked (the ``kind`` of each SpecError in brackets):

- [yaml] the file parses and is a mapping; [schema] unknown or missing keys,
  wrong types;
- [unknown-state] / [unknown-event] / [unknown-work] names that are not declared;
- [unknown-hook] / [unknown-guard] hooks and guards that nothing provides;
- [backoff] a malformed backoff policy;
- [unreachable] a state no transition can reach;
- [undecided] a (leaf state, event) pair with no decision, or whose every
  branch is guarded (the pair would do nothing by accident);
- [conflict] an event both ignored and handled in the same state;
- [property] a malformed ``properties:`` entry (the model-checked claims
  ``pullwake check`` verifies; see :class:`PropertySpec`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from pullwake.errors import SpecError, SpecErrors
from pullwake.lifecycle.effects import effect_hook_names
from pullwake.lifecycle.model import (
    SEPARATOR,
    BackoffSpec,
    EventSpec,
    LifecycleSpec,
    PropertySpec,
    StateSpec,
    TransitionSpec,
    WorkSpec,
)
from pullwake.lifecycle.validate import (
    Collector,
    parse_backoff,
    parse_events,
    parse_properties,
    parse_work,
    state_at,
)
from pullwake.lifecycle.validate_states import (
    check_decided,
    check_reachable,
    parse_states,
    resolve_dest,
)

__all__ = [
    "SEPARATOR",
    "BackoffSpec",
    "EventSpec",
    "LifecycleSpec",
    "PropertySpec",
    "StateSpec",
    "TransitionSpec",
    "WorkSpec",
    "default_spec_path",
    "load_spec",
    "parse_spec",
]

_TOP_KEYS = {"version", "name", "initial", "backoff", "events", "work", "states", "properties"}


# ---------------------------------------------------------------- line lookup


class _Lines:
    """Maps key paths of the YAML document to line numbers (read off the composed node)."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root
        self._map: dict[tuple[str, ...], int] | None = None

    def _build(self) -> dict[tuple[str, ...], int]:
        out: dict[tuple[str, ...], int] = {}
        root = self._root

        def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
            out.setdefault(path, node.start_mark.line + 1)
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    key = str(k.value)
                    out[(*path, key)] = k.start_mark.line + 1
                    walk(v, (*path, key))
            elif isinstance(node, yaml.SequenceNode):
                for i, v in enumerate(node.value):
                    walk(v, (*path, str(i)))

        if root is not None:
            walk(root, ())
        return out

    def __call__(self, *path: str) -> int | None:
        if self._map is None:
            self._map = self._build()
        p = tuple(path)
        while p:
            if p in self._map:
                return self._map[p]
            p = p[:-1]
        return None


# -------------------------------------------------------------------- loading


def default_spec_path() -> Path:
    """The spec the package loads: packaged copy (wheel) or the checkout's top-level file.

    ``PULLWAKE_SPEC`` overrides both.
    """
    env = os.environ.get("PULLWAKE_SPEC")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent.parent  # pullwake/
    packaged = package / "machine_spec.yaml"
    if packaged.is_file():
        return packaged
    return package.parent / "machine_spec.yaml"


def load_spec(
    path: str | os.PathLike[str] | None = None, *, hooks: Iterable[str] | None = None
) -> LifecycleSpec:
    """Read, parse and validate a spec file (the default spec when ``path`` is None).

    ``hooks`` are the names the machine's owner provides; by default those of
    :class:`pullwake.lifecycle.effects.LifecycleEffects`. Results are cached per file
    content, so many runners in one process parse the file once.
    """
    p = Path(path) if path is not None else default_spec_path()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror or exc}", path=str(p), kind="io") from exc
    if hooks is None:
        hooks = effect_hook_names()
    return _parse_cached(text, str(p), frozenset(hooks))


@functools.lru_cache(maxsize=32)
def _parse_cached(text: str, path: str, hooks: frozenset[str]) -> LifecycleSpec:
    return parse_spec(text, path=path, hooks=hooks)


#: libyaml's safe loader when PyYAML was built with it (about 10x faster here)
_FAST_LOADER: type[Any] | None = getattr(yaml, "CSafeLoader", None)


def _compose_with(loader_cls: type[Any], text: str) -> tuple[yaml.Node | None, Any]:
    # Parse once: the node gives line numbers, the data is constructed from it
    # (what yaml.safe_load does, without composing the text a second time).
    loader = loader_cls(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def _compose(text: str) -> tuple[yaml.Node | None, Any]:
    """The YAML node and data of ``text``: libyaml's loader when present.

    When the fast loader fails, the text is parsed again by PyYAML's
    pure-Python ``SafeLoader``, whose error (wording, line, column) is what the
    SpecError reports, so messages are the same with and without libyaml.
    Both use the same SafeConstructor and resolver, so the data is the same.
    """
    if _FAST_LOADER is not None:
        try:
            return _compose_with(_FAST_LOADER, text)
        except yaml.YAMLError:
            pass  # re-parse below: the pure-Python parser words the error
    return _compose_with(yaml.SafeLoader, text)


def parse_spec(text: str, *, path: str = "<spec>", hooks: Iterable[str]) -> LifecycleSpec:
    """Parse and validate spec text. Raises SpecErrors listing every problem."""
    try:
        root, raw = _compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecErrors([SpecError(f"not valid YAML: {getattr(exc, 'problem', exc)}",
                                    path=path, line=(mark.line + 1) if mark else None,
                                    kind="yaml")]) from exc
    if not isinstance(raw, dict):
        raise SpecErrors([SpecError("the spec must be a YAML mapping", path=path, kind="schema")])
    c = Collector(path, _Lines(root))
    spec = _build(raw, c, frozenset(hooks))
    if c.errors or spec is None:
        raise SpecErrors(c.errors)
    return spec


def _build(raw: dict[str, Any], c: Collector, hooks: frozenset[str]) -> LifecycleSpec | None:
    for key in raw:
        if key not in _TOP_KEYS:
            c.add("schema", f"unknown top-level key {key!r}", at=(str(key),))
    for key in ("initial", "events", "states"):
        if key not in raw:
            c.add("schema", f"missing top-level key {key!r}")
    if raw.get("version", 1) != 1:
        c.add("schema", f"unsupported spec version {raw.get('version')!r}", at=("version",))

    events = parse_events(raw.get("events"), c)
    work = parse_work(raw.get("work") or {}, c, events, hooks)
    backoff = parse_backoff(raw.get("backoff") or {}, c, events)
    states: dict[str, StateSpec] = {}
    transitions: list[TransitionSpec] = []
    raw_states = raw.get("states")
    if not isinstance(raw_states, dict) or not raw_states:
        c.add("schema", "'states' must be a non-empty mapping", at=("states",))
        return None
    parse_states(raw_states, None, ("states",), c, states, transitions, events, work, hooks)

    initial = raw.get("initial")
    top = [p for p, s in states.items() if s.parent is None]
    if not isinstance(initial, str) or initial not in top:
        c.add("unknown-state", f"initial state {initial!r} is not a top-level state",
              at=("initial",), state=str(initial))
        return None

    # Destinations must exist (checked after all states are known).
    checked: list[TransitionSpec] = []
    for t in transitions:
        if t.kind == "transition":
            dest = resolve_dest(t.dest or "", t.source, states)
            if dest is None:
                c.add("unknown-state", f"transition to unknown state {t.dest!r}",
                      at=(*state_at(t.source), "transitions", t.event),
                      state=t.source, event=t.event)
                c.broken.add((t.source, t.event))
                continue
            t = TransitionSpec(**{**t.__dict__, "dest": dest})
        checked.append(t)

    spec = LifecycleSpec(
        path=c.path,
        name=str(raw.get("name", "lifecycle")),
        initial=initial,
        states=states,
        events=events,
        work=work,
        transitions=tuple(checked),
        backoff=backoff,
        hooks=hooks,
        properties=parse_properties(raw.get("properties"), c, states, events),
    )
    check_decided(spec, c)
    check_reachable(spec, c)
    return spec
