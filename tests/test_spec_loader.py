"""The spec's YAML is read by libyaml when PyYAML has it, with identical results.

Both paths are exercised in every run: ``pullwake.lifecycle.spec._FAST_LOADER`` is
libyaml's ``CSafeLoader`` (when installed) or None (the pure-Python loader
only). A valid spec gives the same LifecycleSpec, line numbers included; a
malformed one gives the same SpecError, worded by the pure-Python parser,
because the fast loader's failure is re-parsed by the pure one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pullwake.errors import SpecError, SpecErrors
from pullwake.lifecycle import spec as spec_module
from pullwake.lifecycle.effects import effect_hook_names
from pullwake.lifecycle.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent
TEXT = (REPO / "machine_spec.yaml").read_text(encoding="utf-8")
HOOKS = effect_hook_names()
HAVE_LIBYAML = getattr(yaml, "CSafeLoader", None) is not None
needs_libyaml = pytest.mark.skipif(not HAVE_LIBYAML, reason="PyYAML was built without libyaml")

LOADERS = ["pure"] + (["libyaml"] if HAVE_LIBYAML else [])


def parse_with(loader: str, text: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(spec_module, "_FAST_LOADER",
                        yaml.CSafeLoader if loader == "libyaml" else None)
    try:
        return parse_spec(text, path="s.yaml", hooks=HOOKS)
    except SpecError as exc:
        return [str(e) for e in getattr(exc, "errors", [exc])]


BROKEN_YAML = [
    TEXT.replace("  START: {doc: \"runner.start()\"}", "  START: {doc: \"runner.start()\""),
    TEXT.replace("    owns: heartbeat\n", "    owns: heartbeat\n   initial: x\n"),
    TEXT.replace("version: 1", "version: [1"),
    "a: b: c\n",
    "key: 'unterminated\n",
    "\tbad: tab\n",
]


@needs_libyaml
def test_the_default_is_libyaml() -> None:
    assert spec_module._FAST_LOADER is yaml.CSafeLoader


def test_the_shipped_spec_is_the_same_through_both_loaders(
        monkeypatch: pytest.MonkeyPatch) -> None:
    results = [parse_with(loader, TEXT, monkeypatch) for loader in LOADERS]
    assert all(r == results[0] for r in results)
    assert results[0].transitions[0].line is not None


def test_validation_errors_carry_the_same_lines_through_both_loaders(
        monkeypatch: pytest.MonkeyPatch) -> None:
    text = TEXT.replace("after: [report_connect_failure]", "after: [report_connect_failur]"
                        ).replace("          OFFSET: {internal: true, before: [record_offset]}\n",
                                  "")
    results = [parse_with(loader, text, monkeypatch) for loader in LOADERS]
    assert isinstance(results[0], list) and len(results[0]) == 2
    assert all(r == results[0] for r in results)
    assert all(":" in x.split(" ")[0] for x in results[0])  # every error has its line


@pytest.mark.parametrize("text", BROKEN_YAML)
def test_yaml_errors_read_the_same_with_and_without_libyaml(
        text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert text != TEXT
    results = [parse_with(loader, text, monkeypatch) for loader in LOADERS]
    [message] = results[0]
    assert message.startswith("s.yaml:") and "[yaml] not valid YAML: " in message
    assert all(r == results[0] for r in results), results
    # and it is the pure-Python parser's wording
    try:
        yaml.SafeLoader(text).get_single_node()
    except yaml.YAMLError as exc:
        assert str(getattr(exc, "problem", exc)) in message
    else:  # pragma: no cover - every case above is malformed
        raise AssertionError("not malformed")


@needs_libyaml
def test_the_fast_loader_is_tried_first_and_the_pure_one_only_on_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []

    class Fast(yaml.CSafeLoader):  # type: ignore[misc,name-defined]
        def __init__(self, stream: str) -> None:
            used.append("libyaml")
            super().__init__(stream)

    class Pure(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            used.append("pure")
            super().__init__(stream)

    monkeypatch.setattr(spec_module, "_FAST_LOADER", Fast)
    monkeypatch.setattr(spec_module.yaml, "SafeLoader", Pure)
    parse_spec(TEXT, path="s.yaml", hooks=HOOKS)
    assert used == ["libyaml"]
    used.clear()
    with pytest.raises(SpecErrors) as info:
        parse_spec(BROKEN_YAML[0], path="s.yaml", hooks=HOOKS)
    assert used == ["libyaml", "pure"]
    [error] = info.value.errors
    assert error.kind == "yaml" and error.line is not None
