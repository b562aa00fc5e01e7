"""The mistakes a new user makes with `pullwake`, each run as a real process.

Every case checks the exit code (docs/cli.md) and that the message names
what was wrong; none may end in a traceback. Usage errors are found before
anything is contacted (the URLs below point at the discard port, 9, which
nothing listens on).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

NOWHERE = "http://127.0.0.1:9/v1/stream"
BASE = ["run", "--server", NOWHERE, "--subscription", "s1", "--pattern", "e/*",
        "--handler", "good:handle", "--start-timeout", "0"]
GOOD = "async def handle(wake):\n    pass\n"


def pullwake(args: list[str], cwd: Path, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PULLWAKE_")}
    return subprocess.run([sys.executable, "-m", "pullwake", *args], cwd=cwd,
                          env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=50, check=False)


def usage_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "good.py").write_text(GOOD)
    return tmp_path


def test_version(cwd: Path) -> None:
    from importlib.metadata import version

    done = pullwake(["--version"], cwd)
    assert done.returncode == 0
    assert done.stdout.strip() == f"pullwake {version('pullwake')}"


def test_every_flag_has_help(cwd: Path) -> None:
    for command in (["run"], ["subscriptions", "list"], ["subscriptions", "show"],
                    ["subscriptions", "delete"], ["validate"], ["table"], ["diagram"], ["demo"]):
        done = pullwake([*command, "--help"], cwd)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.split("options:", 1)[1].splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("-") and "  " not in stripped:
                # a long flag alone on its line: its help is on the next line
                assert i + 1 < len(lines) and lines[i + 1].startswith(" " * 10), \
                    (command, stripped)


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--stop-grace", "-1", "argument --stop-grace: must be a number from 0 to 86400 seconds"),
    ("--stop-grace", "nan", "argument --stop-grace: must be a number"),
    ("--stop-grace", "ten", "argument --stop-grace: must be a number"),
    ("--start-timeout", "-5", "argument --start-timeout: must be a number from 0"),
    ("--claim-lease", "0.5", "argument --claim-lease: must be a number from 1 to 600 seconds"),
    ("--claim-lease", "601", "argument --claim-lease: must be a number from 1 to 600"),
    ("--max-concurrency", "0", "argument --max-concurrency: must be an integer from 1"),
    ("--max-concurrency", "2.5", "argument --max-concurrency: must be an integer"),
    ("--health-port", "70000", "argument --health-port: must be an integer from 0 to 65535"),
    ("--health-port", "-1", "argument --health-port: must be an integer from 0 to 65535"),
    ("--lease-ms", "500", "argument --lease-ms: must be from 1000 to 600000 ms"),
    ("--live", "websocket", "argument --live: must be one of sse, long-poll"),
    ("--log-level", "LOUD", "argument --log-level: must be one of DEBUG, INFO"),
    ("--header", "no-colon", "argument --header: must be NAME:VALUE"),
    ("--token-env", "not a name", "argument --token-env: must be an environment variable"),
])
def test_bad_flag_values_are_usage_errors_naming_the_flag(
        cwd: Path, flag: str, value: str, needle: str) -> None:
    usage_error(pullwake([*BASE, f"{flag}={value}"], cwd), needle)


@pytest.mark.parametrize(("server", "needle"), [
    ("http://", "--server: the URL has no host"),
    ("http:///v1/stream", "--server: the URL has no host"),
    ("ftp://127.0.0.1/v1/stream", "must be an absolute http(s) URL, got scheme 'ftp'"),
    ("127.0.0.1:4437/v1/stream", "did you mean http://127.0.0.1:4437/v1/stream?"),
    ("http://127.0.0.1:99999/v1/stream", "bad port '99999'"),
    ("http://127.0.0.1:abc/v1/stream", "bad port 'abc'"),
    ("http://127.0.0.1:4437/v1/stream?x=1", "must not carry a query"),
])
def test_bad_server_urls(cwd: Path, server: str, needle: str) -> None:
    args = list(BASE)
    args[args.index(NOWHERE)] = server
    usage_error(pullwake(args, cwd), needle)


def test_missing_required_options(cwd: Path) -> None:
    usage_error(pullwake(["run"], cwd), "--server is required", "PULLWAKE_SERVER")
    usage_error(pullwake(["run", "--server", NOWHERE], cwd), "--handler is required")
    usage_error(pullwake(["run", "--server", NOWHERE, "--handler", "good:handle"], cwd),
                "no subscription")


@pytest.mark.parametrize(("extra", "needle"), [
    (["--subscription", "s", "--pattern", "e/*", "--stream", "x"], "exactly one of --pattern"),
    (["--subscription", "s"], "exactly one of --pattern"),
    (["--pattern", "e/*"], "--pattern needs --subscription"),
])
def test_subscription_flags(cwd: Path, extra: list[str], needle: str) -> None:
    usage_error(pullwake(["run", "--server", NOWHERE, "--handler", "good:handle", *extra], cwd),
                needle)


@pytest.mark.parametrize(("source", "needle"), [
    ("def handle(wake)\n    pass\n", "bad.py:1: SyntaxError"),
    ("import nope_not_a_module\n", "cannot import handler module 'bad'"),
    ("raise RuntimeError('boom at import')\n", "raised RuntimeError: boom at import"),
    ("x = 1\n", "module 'bad' has no attribute 'handle'"),
    ("handle = 3\n", "is not callable"),
])
def test_bad_handlers_exit_2_without_a_traceback(cwd: Path, source: str, needle: str) -> None:
    (cwd / "bad.py").write_text(source)
    args = list(BASE)
    args[args.index("good:handle")] = "bad:handle"
    usage_error(pullwake(args, cwd), needle)


def test_handler_without_function(cwd: Path) -> None:
    args = list(BASE)
    args[args.index("good:handle")] = "good"
    usage_error(pullwake(args, cwd), "must be module:function")


def test_token_env_not_set(cwd: Path) -> None:
    usage_error(pullwake([*BASE, "--token-env", "PW_TEST_UNSET_TOKEN"], cwd),
                "--token-env PW_TEST_UNSET_TOKEN: the variable is not set")


@pytest.mark.parametrize(("var", "value", "needle"), [
    ("PULLWAKE_STOP_GRACE", "-1", "PULLWAKE_STOP_GRACE='-1': must be a number from 0"),
    ("PULLWAKE_MAX_CONCURRENCY", "many", "PULLWAKE_MAX_CONCURRENCY='many': must be an integer"),
    ("PULLWAKE_SERVER", "http://", "PULLWAKE_SERVER='http://': the URL has no host"),
])
def test_bad_environment_values_name_the_variable(cwd: Path, var: str, value: str,
                                                  needle: str) -> None:
    args = list(BASE)
    if var == "PULLWAKE_SERVER":
        del args[1:3]
    usage_error(pullwake(args, cwd, {var: value}), needle)


@pytest.mark.parametrize(("text", "needle"), [
    ("stop_grace = -1\n", "run.toml: stop_grace = -1: must be a number from 0"),
    ("stop_grac = 1\n", "run.toml: unknown key 'stop_grac' (did you mean 'stop_grace'?)"),
    ("stop_grace = \n", "run.toml: not valid TOML"),
    ("[[subscription]]\npattern = 'a/*'\n", "[[subscription]] #1: needs an id"),
    ("[[subscription]]\nid = 'a'\n", "subscription 'a': give exactly one of pattern or streams"),
    ("[[subscription]]\nid = 'a'\npattern = 'a/*'\nclaim_lease = 0\n",
     "subscription 'a': claim_lease: must be a number from 1 to 600 seconds"),
    ("[[subscription]]\nid = 'a'\npattern = 'a/*'\nlease = 5\n",
     "unknown key 'lease'"),
    ("[[subscription]]\nid = 'a'\npattern = 'a/*'\n[[subscription]]\nid = 'a'\n"
     "streams = ['x']\n", "subscription 'a' is declared twice"),
    ("[subscription]\nid = 'a'\n", "subscription must be [[subscription]] tables"),
    # the --subscription key: one subscription's id, which needs its pattern or streams
    ("subscription = 'a'\n", "give exactly one of --pattern or --stream for subscription 'a'"),
])
def test_bad_config_files(cwd: Path, text: str, needle: str) -> None:
    (cwd / "run.toml").write_text(f"server = '{NOWHERE}'\nhandler = 'good:handle'\n" + text)
    usage_error(pullwake(["run", "--config", "run.toml"], cwd), needle)


def test_missing_config_file(cwd: Path) -> None:
    usage_error(pullwake(["run", "--config", "nope.toml"], cwd), "--config nope.toml: no such file")
    usage_error(pullwake(["run"], cwd, {"PULLWAKE_CONFIG": "nope.toml"}), "nope.toml: no such file")


def _started_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr  # nothing listens on port 9: cannot start
    assert "Traceback" not in done.stderr, done.stderr
    line = next((x for x in done.stderr.splitlines() if "starting worker" in x), None)
    assert line is not None, done.stderr
    return line


def test_precedence_flags_over_environment_over_file_over_defaults(cwd: Path) -> None:
    (cwd / "run.toml").write_text(textwrap.dedent(f"""\
        server = "{NOWHERE}"
        handler = "good:handle"
        worker = "from-file"
        wake_stream = "wake/file"
        start_timeout = 0

        [[subscription]]
        id = "orders"
        pattern = "orders/*"

        [[subscription]]
        id = "audit"
        streams = ["audit/main"]
        claim_lease = 120
    """))
    line = _started_line(pullwake(["run", "--config", "run.toml"], cwd))
    assert "worker 'from-file'" in line and "'orders', 'audit'" in line
    assert "wake stream 'wake/file'" in line
    env = {"PULLWAKE_WORKER": "from-env", "PULLWAKE_WAKE_STREAM": "wake/env"}
    line = _started_line(pullwake(["run", "--config", "run.toml"], cwd, env))
    assert "worker 'from-env'" in line and "wake stream 'wake/env'" in line
    line = _started_line(pullwake(["run", "--config", "run.toml", "--worker", "from-flag"],
                                  cwd, env))
    assert "worker 'from-flag'" in line and "wake stream 'wake/env'" in line
    # One subscription from flags replaces the file's list.
    line = _started_line(pullwake(["run", "--config", "run.toml", "--subscription", "solo",
                                   "--stream", "s/1"], cwd, env))
    assert "subscriptions 'solo'" in line
    # The file itself may come from the environment.
    line = _started_line(pullwake(["run"], cwd, {"PULLWAKE_CONFIG": "run.toml"}))
    assert "worker 'from-file'" in line


def test_start_timeout_zero_tries_once_and_exits_1(cwd: Path) -> None:
    done = pullwake(BASE, cwd)
    assert done.returncode == 1
    assert "cannot start" in done.stderr
    assert "waiting for the server" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_misspelled_variable_is_named(cwd: Path) -> None:
    done = pullwake(BASE, cwd, {"PULLWAKE_STOP_GRAC": "5", "PULLWAKE_NODE": "/usr/bin/node"})
    assert done.returncode == 1  # nothing listens on port 9
    assert "ignoring PULLWAKE_STOP_GRAC: not an option (did you mean PULLWAKE_STOP_GRACE?)" \
        in done.stderr
    assert "PULLWAKE_NODE" not in done.stderr


@pytest.mark.parametrize(("args", "needle"), [
    ([], "the following arguments are required: COMMAND"),
    (["runn"], "invalid choice: 'runn'"),
    (["subscriptions"], "the following arguments are required: SUBCOMMAND"),
    (["subscriptions", "show", "s1"], "--server is required"),
    (["subscriptions", "delete", "--server", NOWHERE], "the following arguments are required: ID"),
    (["subscriptions", "list", "--server", NOWHERE], "no subscription"),
    (["subscriptions", "show", "s1", "--server", "http://"], "the URL has no host"),
])
def test_command_mistakes(cwd: Path, args: list[str], needle: str) -> None:
    usage_error(pullwake(args, cwd), needle)


def test_subscriptions_against_nothing_exits_1(cwd: Path) -> None:
    done = pullwake(["subscriptions", "show", "s1", "--server", NOWHERE], cwd)
    assert done.returncode == 1, done.stderr
    assert "verify server root" in done.stderr and "Traceback" not in done.stderr
