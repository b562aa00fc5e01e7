"""Where the Durable Streams reference server is installed, and installing it with npm.

This module owns the install side of :mod:`pullwake.testing.realserver`:
the pinned version (:data:`DS_SERVER_VERSION`), where it lives
(:func:`install_dir`: ``$PULLWAKE_DS_SERVER_DIR`` or the user cache), finding a
complete install (:func:`find_installed`), installing it safely from several
processes at once (:func:`ensure_installed`: a ``flock``, a staging directory
renamed into place), and finding ``node`` and the shipped launcher. Running
the server is :class:`~pullwake.testing.realserver.RealServer`'s, which
re-exports every name here. Importing it needs neither node nor npm.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DS_SERVER_VERSION", "PACKAGE", "STDERR_TAIL_LINES", "RealServerError",
           "ensure_installed", "find_installed", "install_dir", "launcher_path",
           "node_executable"]

#: The reference server version pullwake is tested against.
DS_SERVER_VERSION = "0.3.7"
#: The npm package of the reference server.
PACKAGE = "@durable-streams/server"
#: How many lines of npm's or node's stderr an error message quotes.
STDERR_TAIL_LINES = 40


class RealServerError(RuntimeError):
    """The reference server could not be installed, started or controlled."""


def install_dir() -> Path:
    """Where the server is installed: ``$PULLWAKE_DS_SERVER_DIR`` or the user cache."""
    env = os.environ.get("PULLWAKE_DS_SERVER_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "pullwake" / f"ds-server-{DS_SERVER_VERSION}"


def launcher_path() -> Path:
    """The ES-module launcher shipped inside this package."""
    return Path(__file__).with_name("ds_server_launch.mjs")


def node_executable() -> str | None:
    """``$PULLWAKE_NODE`` or ``node`` on PATH, or None."""
    return os.environ.get("PULLWAKE_NODE") or shutil.which("node")


def _package_dir(root: Path) -> Path:
    return root / "node_modules" / "@durable-streams" / "server"


def find_installed(root: Path | None = None) -> Path | None:
    """The ESM entry of the pinned server under ``root`` if installed, else None."""
    pkg = _package_dir(root or install_dir())
    try:
        meta = json.loads((pkg / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = pkg / "dist" / "index.js"
    if meta.get("version") != DS_SERVER_VERSION or not entry.is_file():
        return None
    return entry


def ensure_installed(root: Path | None = None, *, timeout: float = 300.0) -> Path:
    """Install the pinned server with npm unless present; return its ESM entry.

    Safe to run from several processes at once: installs hold an exclusive
    lock on ``<root>.lock`` (a sibling of ``root``), re-check under it, and
    npm installs into a temporary sibling directory that is renamed to
    ``root`` only when complete, so no reader ever sees half an install and
    two npm runs never share a directory (npm's ``ENOTEMPTY``).
    """
    root = root or install_dir()
    found = find_installed(root)
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise RealServerError("npm is not on PATH: cannot install the reference server")
    root.parent.mkdir(parents=True, exist_ok=True)
    with _install_lock(root.parent / f"{root.name}.lock", timeout=timeout):
        found = find_installed(root)  # another process may have installed it meanwhile
        if found is not None:
            return found
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial",
                                        dir=root.parent))
        try:
            cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(staging),
                   f"{PACKAGE}@{DS_SERVER_VERSION}"]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                      check=False)
            except subprocess.TimeoutExpired as exc:
                raise RealServerError(f"npm install timed out after {timeout:.0f} s") from exc
            if done.returncode != 0 or find_installed(staging) is None:
                tail = "\n".join((done.stderr or done.stdout).splitlines()[-STDERR_TAIL_LINES:])
                raise RealServerError(
                    f"npm install of {PACKAGE}@{DS_SERVER_VERSION} into {root} failed "
                    f"(exit {done.returncode}):\n{tail}"
                )
            if root.exists():  # an older or broken install: move it aside, then drop it
                old = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old",
                                            dir=root.parent))
                root.rename(old / "install")
                shutil.rmtree(old, ignore_errors=True)
            staging.rename(root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    found = find_installed(root)
    if found is None:
        raise RealServerError(f"{PACKAGE}@{DS_SERVER_VERSION} vanished from {root}")
    return found


@contextlib.contextmanager
def _install_lock(path: Path, *, timeout: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (POSIX; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another install of the reference server ({path})",
                  file=sys.stderr, flush=True)
            give_up = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > give_up:
                        raise RealServerError(
                            f"another install held {path} for more than {timeout:.0f} s"
                        ) from None
                    time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
