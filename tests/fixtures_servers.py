"""pytest fixtures for the two Durable Streams servers pullwake is tested against.

Loaded from ``tests/conftest.py`` with ``pytest_plugins = ["fixtures_servers"]``.

* ``embedded_ds_server``: a fresh :class:`~pullwake.testing.EmbeddedServer`.
* ``real_ds_server``: a fresh file-backed ``@durable-streams/server`` in
  ``tmp_path`` (so ``restart()`` keeps streams), marked ``realserver``.
* ``ds_server``: parametrized over ``["embedded", "real"]``; both satisfy
  :class:`~pullwake.testing.interface.DurableStreamsServer`.

Options go through a marker, e.g.
``@pytest.mark.ds_server_options(long_poll_timeout=0.5)`` (seconds). Options
only one server understands (``prefix`` for the embedded one, ``start_timeout``
for the real one) are dropped for the other.

When node or the installed server is missing, real-server tests are skipped,
unless ``PULLWAKE_REQUIRE_REAL_SERVER=1``: then they fail and say how to install
(``python -m pullwake.testing.realserver install``). Either way the reason is
printed in the pytest header and, when tests were skipped for it, again in the
summary, so a run without node never passes silently.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pullwake.testing.interface import DurableStreamsServer
from pullwake.testing.realserver import (
    DS_SERVER_VERSION,
    RealServer,
    find_installed,
    install_dir,
    node_executable,
)
from pullwake.testing.server import EmbeddedServer

_COMMON = {"long_poll_timeout", "cursor_interval_seconds", "compression"}
_EMBEDDED_ONLY = {"prefix", "shutdown_timeout", "record"}
_REAL_ONLY = {"start_timeout", "stop_timeout"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ds_server_options(**kwargs): options for the ds_server / real_ds_server / "
        "embedded_ds_server fixtures (long_poll_timeout in seconds, ...)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    problem = real_server_problem()
    if problem is None:
        return (f"reference server: @durable-streams/server@{DS_SERVER_VERSION} in "
                f"{install_dir()}, node {node_executable()}")
    then = ("they FAIL (PULLWAKE_REQUIRE_REAL_SERVER=1)"
            if os.environ.get("PULLWAKE_REQUIRE_REAL_SERVER") == "1" else
            "they are SKIPPED (PULLWAKE_REQUIRE_REAL_SERVER=1 makes them fail)")
    return f"reference server UNAVAILABLE: {problem}; real-server tests: {then}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config
                            ) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if "reference server unavailable" in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_sep("=", "real-server tests skipped", yellow=True)
        terminalreporter.write_line(
            f"{len(skipped)} test(s) against the reference server were skipped: "
            f"{real_server_problem()}. Install it with `bash .ci/setup` (or `python -m "
            "pullwake.testing.realserver install`); PULLWAKE_REQUIRE_REAL_SERVER=1 makes "
            "this a failure.")


def real_server_problem() -> str | None:
    """Why the reference server cannot run here, or None."""
    if node_executable() is None:
        return "node is not on PATH"
    if find_installed() is None:
        return (
            f"@durable-streams/server@{DS_SERVER_VERSION} is not installed in {install_dir()} "
            "(run `python -m pullwake.testing.realserver install`)"
        )
    return None


def _skip_or_fail_real() -> None:
    problem = real_server_problem()
    if problem is None:
        return
    if os.environ.get("PULLWAKE_REQUIRE_REAL_SERVER") == "1":
        pytest.fail(f"PULLWAKE_REQUIRE_REAL_SERVER=1 but the reference server cannot run: "
                    f"{problem}", pytrace=False)
    pytest.skip(f"reference server unavailable: {problem}")


def _options(request: pytest.FixtureRequest, kind: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("ds_server_options"))):
        opts.update(marker.kwargs)
    unknown = set(opts) - _COMMON - _EMBEDDED_ONLY - _REAL_ONLY
    if unknown:
        raise pytest.UsageError(f"unknown ds_server_options: {sorted(unknown)}")
    drop = _REAL_ONLY if kind == "embedded" else _EMBEDDED_ONLY
    return {k: v for k, v in opts.items() if k not in drop}


async def _embedded(request: pytest.FixtureRequest) -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer(**_options(request, "embedded")) as srv:
        yield srv


async def _real(request: pytest.FixtureRequest, data_dir: Path) -> AsyncIterator[RealServer]:
    _skip_or_fail_real()
    srv = RealServer(data_dir=data_dir, **_options(request, "real"))
    async with srv:
        yield srv


@pytest.fixture
async def embedded_ds_server(request: pytest.FixtureRequest) -> AsyncIterator[EmbeddedServer]:
    async for srv in _embedded(request):
        yield srv


@pytest.fixture
async def real_ds_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RealServer]:
    async for srv in _real(request, tmp_path / "ds-data"):
        yield srv


@pytest.fixture(params=["embedded", pytest.param("real", marks=pytest.mark.realserver)])
async def ds_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DurableStreamsServer]:
    if request.param == "embedded":
        async for emb in _embedded(request):
            yield emb
    else:
        async for real in _real(request, tmp_path / "ds-data"):
            yield real


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Direct users of ``real_ds_server`` get the ``realserver`` marker too."""
    for item in items:
        if "real_ds_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realserver)
