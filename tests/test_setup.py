"""`.ci/setup` and the reference-server install, run twice at once.

The registries (PyPI, npm, Debian) are the seam these tests cannot reach (only
loopback is allowed), so `npm`, `dot`, `node`, `chromium` and the venv's `python -m pip`
are small recording fakes on PATH; everything else is the real script and the
real ``python -m pullwake.testing.realserver install``. The same run against
the real registries is ``.ci/check-concurrent-setup`` (see docs/development.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent

FAKE_NPM = textwrap.dedent('''\
    #!{python}
    """A fake `npm install --prefix DIR pkg@ver`: logs the call, fails like npm
    (ENOTEMPTY) if DIR is already being installed into, waits for GO if set."""
    import json, os, sys, time
    from pathlib import Path
    args = sys.argv[1:]
    prefix = Path(args[args.index("--prefix") + 1])
    with open(os.environ["FAKE_NPM_LOG"], "a") as log:
        log.write(str(prefix) + "\\n")
    pkg = prefix / "node_modules" / "@durable-streams" / "server"
    if pkg.exists():
        print("npm error code ENOTEMPTY", file=sys.stderr)
        sys.exit(217)
    pkg.mkdir(parents=True)
    (pkg / "package.json").write_text(json.dumps({{"version": "{version}"}}))
    go = os.environ.get("FAKE_NPM_GO")
    while go and not Path(go).exists():
        time.sleep(0.02)
    (pkg / "dist").mkdir()
    (pkg / "dist" / "index.js").write_text("export {{}}\\n")
''')


def _fake_bin(tmp: Path) -> Path:
    from pullwake.testing.realserver import DS_SERVER_VERSION

    bin_dir = tmp / "fakebin"
    bin_dir.mkdir()
    scripts = {
        "npm": FAKE_NPM.format(python=sys.executable, version=DS_SERVER_VERSION),
        "dot": "#!/bin/sh\necho 'dot - graphviz version fake'\n",
        "node": "#!/bin/sh\necho v20.0.0-fake\n",
        "chromium": "#!/bin/sh\necho Chromium fake\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _env(tmp: Path, bin_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PULLWAKE_DS_SERVER_DIR": str(tmp / "cache" / "ds-server"),
            "PULLWAKE_CACHE_DIR": str(tmp / "cache"),
            "FAKE_NPM_LOG": str(tmp / "npm.log"), **extra}


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    give_up = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_two_installs_at_once_run_npm_once_into_a_private_dir(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path)
    env = _env(tmp_path, bin_dir, FAKE_NPM_GO=str(tmp_path / "go"))
    cmd = [sys.executable, "-m", "pullwake.testing.realserver", "install"]
    npm_log = tmp_path / "npm.log"
    err_b = tmp_path / "b.err"
    a = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A is inside npm (which waits for GO) and holds the lock: now start B.
    _wait_for(lambda: npm_log.exists() and npm_log.read_text(), "the first npm run")
    with open(err_b, "w") as fh:
        b = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=fh, text=True)
        _wait_for(lambda: "waiting for another install" in err_b.read_text(),
                  "the second install to wait for the lock")
        (tmp_path / "go").touch()
        out_a, errs_a = a.communicate(timeout=60)
        out_b, _ = b.communicate(timeout=60)
    assert a.returncode == 0, errs_a
    assert b.returncode == 0, err_b.read_text()
    install = tmp_path / "cache" / "ds-server"
    entry = install / "node_modules" / "@durable-streams" / "server" / "dist" / "index.js"
    assert out_a.strip() == out_b.strip() == str(entry)
    runs = npm_log.read_text().splitlines()
    assert len(runs) == 1, runs
    assert Path(runs[0]) != install, "npm must install into a staging dir, then rename"
    leftovers = [p.name for p in install.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def test_an_existing_install_is_not_reinstalled(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path)
    env = _env(tmp_path, bin_dir)
    cmd = [sys.executable, "-m", "pullwake.testing.realserver", "install"]
    for _ in range(2):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert len((tmp_path / "npm.log").read_text().splitlines()) == 1


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # The fake venv python: records pip calls (PyPI is out of reach), runs the rest.
    venv_bin = dest / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(textwrap.dedent(f'''\
        #!/bin/sh
        if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
          echo "$PWD $*" >> "$FAKE_PIP_LOG"; sleep 0.3; exit 0
        fi
        exec {sys.executable} "$@"
    '''))
    (venv_bin / "python").chmod(0o755)


@pytest.mark.skipif(shutil.which("flock") is None or shutil.which("bash") is None,
                    reason="needs bash and flock (util-linux)")
def test_setup_twice_at_once_in_one_checkout_and_once_in_another(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        _copy_checkout(d)
    bin_dir = _fake_bin(tmp_path)
    env = _env(tmp_path, bin_dir, FAKE_PIP_LOG=str(tmp_path / "pip.log"))
    procs = [subprocess.Popen(["bash", ".ci/setup"], cwd=d, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for d in (a, a, b)]
    outs = [p.communicate(timeout=90)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
        assert "setup: done" in out, out
    pip = (tmp_path / "pip.log").read_text().splitlines()
    # One `pip install --upgrade pip` and one `pip install -e .[dev]` per checkout.
    assert sorted(line.split()[0] for line in pip) == sorted([str(a)] * 2 + [str(b)] * 2), pip
    assert len((tmp_path / "npm.log").read_text().splitlines()) == 1
    # A second run only checks.
    again = subprocess.run(["bash", ".ci/setup"], cwd=a, env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "skipping pip" in again.stdout
    assert len((tmp_path / "pip.log").read_text().splitlines()) == 4
    # A changed pyproject.toml makes the venv step run again.
    with open(a / "pyproject.toml", "a") as fh:
        fh.write("\n# changed\n")
    changed = subprocess.run(["bash", ".ci/setup"], cwd=a, env=env, capture_output=True,
                             text=True, timeout=60)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "pip install" in changed.stdout
    assert len((tmp_path / "pip.log").read_text().splitlines()) == 6
