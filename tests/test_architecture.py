"""The package's architecture, checked: layers, no cycles, one owner per mechanism.

Run alone with ``python -m pytest tests/test_architecture.py`` (no server, no
network: it reads the source). The layers, lowest first; a module may import
its own layer and the layers below it, never one above:

=========  ==================================================================
rank       layer
=========  ==================================================================
0          ``pullwake.errors`` (the shared vocabulary), ``pullwake.testing``
1          ``pullwake.lifecycle`` (the statechart; no asyncio/aiohttp/requests)
2          ``pullwake.protocol`` (sans-I/O Durable Streams; same ban)
3          ``pullwake.io`` (aiohttp, requests, files, the clock)
4          ``pullwake.runtime`` (runner, control planes, claims, jobs, health)
5          ``pullwake.ops`` (health server, probes, metrics)
6          ``pullwake.worker`` (the application facade)
7          ``pullwake.cli``; ``pullwake`` itself and ``python -m pullwake``
=========  ==================================================================

``pullwake.testing`` (the servers a test or the demo runs) imports nothing of
the package outside itself, so anything may use it without a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pullwake"

RANKS = {
    "pullwake.errors": 0,
    "pullwake._version": 0,
    "pullwake.testing": 0,
    "pullwake.lifecycle": 1,
    "pullwake.protocol": 2,
    "pullwake.io": 3,
    "pullwake.runtime": 4,
    "pullwake.ops": 5,
    "pullwake.worker": 6,
    "pullwake.cli": 7,
    "pullwake.__main__": 7,
    "pullwake": 8,
}

#: Libraries the no-I/O layers must not import.
IO_LIBRARIES = ("asyncio", "aiohttp", "requests", "requests_cache")
NO_IO_LAYERS = ("pullwake.lifecycle", "pullwake.protocol")

#: The largest a module may grow, in lines.
MAX_LINES = 500
#: Modules allowed past it, each with its reason (none today).
LONG_MODULES: dict[str, str] = {}

#: The one owner of spawned tasks: nothing else creates an asyncio task.
TASK_OWNER = "pullwake.runtime.jobs"

#: The one backoff.
BACKOFF_OWNER = "pullwake.lifecycle.backoff"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> str:
    best = ""
    for layer in RANKS:
        if (name == layer or name.startswith(layer + ".")) and len(layer) > len(best):
            best = layer
    return best


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, name: str, *, runtime_only: bool) -> Iterator[tuple[str, int]]:
    """Every module ``name`` imports, with its line (``runtime_only``: module level, not typing)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]

    def walk(nodes: list[ast.stmt], top: bool) -> Iterator[tuple[str, int]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, node.lineno
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                yield mod, node.lineno
                for alias in node.names:  # "from pullwake.x import module"
                    yield f"{mod}.{alias.name}", node.lineno
            elif isinstance(node, ast.If) and _is_type_checking(node):
                if not runtime_only:
                    yield from walk(node.body, top)
                yield from walk(node.orelse, top)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not runtime_only:
                    yield from walk(node.body, False)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody"):
                    yield from walk(getattr(node, field, []), top)
                for handler in getattr(node, "handlers", []):
                    yield from walk(handler.body, top)

    yield from walk(tree.body, True)


def internal_imports(name: str, path: Path, known: dict[str, Path], *,
                     runtime_only: bool) -> set[tuple[str, int]]:
    out = set()
    for mod, line in imports(path, name, runtime_only=runtime_only):
        if mod in known and mod != name:
            out.add((mod, line))
    return out


def test_every_module_has_a_layer() -> None:
    unplaced = [name for name in modules() if not layer_of(name)]
    assert not unplaced, f"modules outside every layer: {unplaced}"


def test_no_layer_imports_a_layer_above_it() -> None:
    known = modules()
    upward = []
    for name, path in known.items():
        rank = RANKS[layer_of(name)]
        for mod, line in internal_imports(name, path, known, runtime_only=False):
            target = layer_of(mod)
            if target == "pullwake.testing" and layer_of(name) != "pullwake.testing":
                continue  # anything may use the test servers (the demo does)
            if layer_of(name) == "pullwake.testing" and target != "pullwake.testing":
                upward.append(f"{name}:{line} imports {mod} (testing stands alone)")
            elif RANKS[target] > rank:
                upward.append(f"{name}:{line} ({layer_of(name)}) imports {mod} ({target})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    """No cycles, counting every import (lazy and typing-only ones too): a cycle is a design's."""
    known = modules()
    graph = {name: {m for m, _ in internal_imports(name, path, known, runtime_only=False)}
             for name, path in known.items()}
    # a package's __init__ importing its own submodules is not a cycle of design
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer", NO_IO_LAYERS)
def test_the_no_io_layers_import_no_io_library(layer: str) -> None:
    found = []
    for name, path in modules().items():
        if layer_of(name) != layer:
            continue
        for mod, line in imports(path, name, runtime_only=False):
            if mod.split(".")[0] in IO_LIBRARIES:
                found.append(f"{name}:{line} imports {mod}")
    assert not found, "\n".join(found)


def test_module_sizes() -> None:
    long = {}
    for name, path in modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and name not in LONG_MODULES:
            long[name] = lines
    assert not long, f"modules over {MAX_LINES} lines (split, or say why in LONG_MODULES): {long}"
    stale = [name for name in LONG_MODULES
             if name in modules()
             and len(modules()[name].read_text(encoding="utf-8").splitlines()) <= MAX_LINES]
    assert not stale, f"LONG_MODULES lists modules that are short now: {stale}"


def test_every_package_says_what_its_layer_owns() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 80, f"{init} needs a docstring saying what the layer owns"


SPAWNERS = {"create_task", "ensure_future", "TaskGroup", "run_coroutine_threadsafe"}


def test_one_task_owner() -> None:
    spawning = {}
    for name, path in modules().items():
        if name == TASK_OWNER or layer_of(name) == "pullwake.testing":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lines = [node.lineno for node in ast.walk(tree)
                 if isinstance(node, ast.Attribute) and node.attr in SPAWNERS]
        if lines:
            spawning[name] = lines
    assert not spawning, f"tasks spawned outside {TASK_OWNER}: {spawning}"


BACKOFF_NAMES = ("INITIAL_S", "CAP_S", "MULTIPLIER", "FALLBACK_S", "BACKOFF")


def test_one_backoff() -> None:
    """Nothing but the backoff module grows a delay exponentially or keeps backoff constants."""
    found = []
    for name, path in modules().items():
        if name == BACKOFF_OWNER or layer_of(name) == "pullwake.testing":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
                found.append(f"{name}:{node.lineno} raises to a power")
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.isupper() and any(
                            target.id.endswith(s) or s + "_" in target.id for s in BACKOFF_NAMES):
                        found.append(f"{name}:{node.lineno} defines {target.id}")
    assert not found, f"backoff outside {BACKOFF_OWNER}:\n" + "\n".join(found)
