"""Small helpers shared by pullwake's benchmarks (no pullwake runtime code here).

- process measurements read from ``/proc`` (no psutil): RSS, CPU seconds of
  another process, the fd soft limit;
- :func:`wait_until`: poll a condition on the running loop with a hard limit;
- :class:`ServerProcess`: an :class:`~pullwake.testing.EmbeddedServer` in a
  child process (127.0.0.1 only), so its memory and CPU are not counted;
- statistics and a plain-text table;
- :func:`replace_section`: rewrite one ``## `` section of a Markdown file and
  keep every other section byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as ``python benchmarks/x.py`` from a checkout
    sys.path.insert(0, str(REPO))

_CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- processes

def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (``VmRSS`` in ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")  # pragma: no cover


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        raw = fh.read()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(terse=True)}


async def wait_until(predicate: Callable[[], Any], *, timeout: float,
                     interval: float = 0.001, what: str = "condition") -> None:
    """Poll ``predicate()`` every ``interval`` seconds; TimeoutError after ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
        await asyncio.sleep(interval)


_SERVER_CHILD = r"""
import asyncio, json, sys
sys.path.insert(0, {repo!r})
from pullwake.testing.server import EmbeddedServer

async def main():
    srv = EmbeddedServer(**json.loads({kwargs!r}))
    await srv.start()
    print(srv.url, flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), done.set)   # parent closed stdin (or died)
    await done.wait()
    await srv.kill()

asyncio.run(main())
"""


class ServerProcess:
    """An EmbeddedServer in a child process; it exits when the parent closes stdin."""

    def __init__(self, **server_kwargs: Any) -> None:
        self.kwargs = server_kwargs
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> str:
        code = _SERVER_CHILD.format(repo=str(REPO), kwargs=json.dumps(self.kwargs))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, preexec_fn=lambda: raise_fd_limit(65536))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"server child did not start: {line!r}")
        self.url = line
        return line

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# ------------------------------------------------------------------- numbers

def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (also readable on a terminal)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


# ------------------------------------------------------------------ markdown

def replace_section(path: Path, heading: str, body: str, *, title: str) -> None:
    """Replace the ``heading`` section (up to the next ``## ``) of ``path``.

    ``heading`` is the full line, e.g. ``## Runner``. Other sections are kept
    as they are; a missing file starts with ``title``; a missing section is
    appended at the end.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else f"{title}\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip("\n").rstrip() == heading), None)
    new = heading + "\n\n" + body.strip("\n") + "\n"
    if start is None:
        if lines and not text.endswith("\n"):
            lines[-1] += "\n"
        sep = "" if not lines or text.endswith("\n\n") else "\n"
        out = "".join(lines) + sep + new
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        tail = "".join(lines[end:])
        out = "".join(lines[:start]) + new + ("\n" + tail if tail else "")
    tmp = path.with_suffix(path.suffix + ".tmp-bench-runner")
    tmp.write_text(out, encoding="utf-8")
    os.replace(tmp, path)
