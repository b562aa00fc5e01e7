"""The status page in a real headless browser: Debian's chromium driven by Playwright.

The page is served by the worker's own health server on 127.0.0.1 and updated
by its server-sent events; the test hangs the EmbeddedServer and resumes it,
and waits (bounded) for the highlighted node of the lifecycle diagram to
follow. Chromium runs with networking extras off, so it contacts nothing but
the loopback page. Without chromium or playwright the test is skipped, except
in CI (``CI`` set) or with ``PULLWAKE_REQUIRE_BROWSER=1``, where it fails and
says to run ``.ci/setup``. ``PULLWAKE_WRITE_SCREENSHOT=1`` also writes the
screenshot taken during the hang to ``docs/status-page.png``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from observe_helpers import make_worker, serving
from runner_helpers import eventually

from pullwake.testing import EmbeddedServer

pytestmark = pytest.mark.timeout(90)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "status-page.png"

CURRENT = """() => {
  const cur = document.querySelectorAll('#diagram g.node.pw-current');
  return cur.length === 1 ? cur[0].querySelector(':scope > title').textContent : null;
}"""


def _browser_problem() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (dev extra)"
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        return f"{CHROMIUM} is missing (Debian package chromium)"
    return None


@pytest.fixture
def chromium() -> str:
    """The chromium executable (skip or fail as the module docstring says)."""
    problem = _browser_problem()
    if problem is None:
        return CHROMIUM if os.path.exists(CHROMIUM) else str(shutil.which("chromium"))
    if os.environ.get("CI") or os.environ.get("PULLWAKE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the status-page test needs a browser: {problem}; run `bash .ci/setup`",
                    pytrace=False)
    pytest.skip(f"no browser: {problem} (bash .ci/setup installs it)")
    raise AssertionError("unreachable")


async def _wait_state(page: Any, predicate_js: str, timeout_s: float) -> str:
    handle = await page.wait_for_function(
        f"() => {{ const s = ({CURRENT})(); return ({predicate_js})(s) ? s : null; }}",
        timeout=timeout_s * 1000, polling=50)
    value = await handle.json_value()
    assert isinstance(value, str)
    return value


async def test_status_page_highlights_the_state_as_the_server_hangs_and_recovers(
        chromium: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    async with EmbeddedServer(long_poll_timeout=1.0) as srv:
        worker = make_worker(srv)
        async with serving(worker, push_interval=0.5) as health:
            await eventually(lambda: worker.runner.status == "streaming", timeout=10)
            await srv.create_stream("events/a")
            await srv.append("events/a", {"n": 1})
            await eventually(lambda: worker.stats.wakes_acked >= 1, timeout=20)
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS,
                                                  headless=True)
                try:
                    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                    problems: list[str] = []
                    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
                    page.on("console", lambda m: problems.append(f"console: {m.text}")
                            if m.type == "error" else None)
                    await page.goto(health.url + "/")
                    first = await _wait_state(page, "s => s === 'running.streaming'", 20)
                    assert first == "running.streaming"
                    assert await page.inner_text("#ready") == "yes"
                    assert await page.inner_text("#subs tbody") != ""

                    srv.pause()  # hangs every request: heartbeats fail, the stream resets
                    during = await _wait_state(
                        page, "s => s !== null && s !== 'running.streaming'", 30)
                    assert during in ("running.reconnecting", "running.connecting")
                    await page.wait_for_function(
                        "() => document.querySelector('#ready').textContent === 'no'"
                        " && document.querySelectorAll('#errors tbody tr').length > 0",
                        timeout=30_000, polling=50)
                    assert await page.inner_text("#live") == "yes"  # upstream, not us
                    shot = tmp_path / "status-page.png"
                    await page.screenshot(path=str(shot), full_page=True)
                    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                    if os.environ.get("PULLWAKE_WRITE_SCREENSHOT") == "1":
                        shutil.copyfile(shot, DOCS_SCREENSHOT)

                    srv.resume()
                    back = await _wait_state(page, "s => s === 'running.streaming'", 30)
                    assert back == "running.streaming"
                    await page.wait_for_function(
                        "() => document.querySelector('#ready').textContent === 'yes'",
                        timeout=30_000, polling=50)
                    transitions = await page.inner_text("#transitions tbody")
                    assert "reconnecting" in transitions
                    assert problems == []  # no script error, no failed request
                finally:
                    await browser.close()
