"""Options: defaults < --config file < PULLWAKE_* variables < flags, and docs that match.

The options resolve to a WorkerConfig (``opts.config``) plus the process options."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from pullwake.cli.options import (
    RunOptions,
    UsageError,
    add_arguments,
    option_table,
    resolve,
)
from pullwake.runtime.config import SubscriptionConfig
from pullwake.runtime.worker_config import WorkerConfig

REPO = Path(__file__).resolve().parent.parent
CLI_MD = REPO / "docs" / "cli.md"
SERVER = "http://127.0.0.1:4437/v1/stream"


def parse_options(argv: list[str], environ: dict[str, str] | None = None) -> RunOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return resolve(parser.parse_args(argv), environ or {})


def parse(argv: list[str], environ: dict[str, str] | None = None) -> WorkerConfig:
    config = parse_options(argv, environ).config
    assert config is not None
    return config


def test_defaults_are_the_dataclasses_defaults() -> None:
    argv = ["--server", SERVER, "--handler", "m:f", "--subscription", "s", "--pattern", "e/*"]
    opts = parse_options(argv)
    assert opts.start_timeout == 60.0 and opts.log_level == "INFO" and opts.health_port is None
    config = parse(argv)
    assert config.wake_stream == "wake/pool" and config.stop_grace == 10.0
    assert config.max_concurrency == 4 and config.runner.live == "sse"
    assert config.subscriptions == (SubscriptionConfig(id="s", wake_stream="wake/pool",
                                                       pattern="e/*", claim_lease=30.0),)
    by_hand = WorkerConfig(runner=dataclasses.replace(config.runner),
                           subscriptions=config.subscriptions)
    assert config == by_hand  # nothing the CLI left unset differs from WorkerConfig's default


def test_every_layer_overrides_the_one_below(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text(f'server = "{SERVER}"\nhandler = "m:f"\nstop_grace = 5\nworker = "file"\n'
                   'max_concurrency = 2\nlog_level = "debug"\n'
                   '[[subscription]]\nid = "a"\npattern = "a/*"\n')
    opts = parse(["--config", str(cfg)])
    assert (opts.stop_grace, opts.worker_name, opts.max_concurrency) == (5.0, "file", 2)
    assert parse_options(["--config", str(cfg)]).log_level == "DEBUG"
    env = {"PULLWAKE_STOP_GRACE": "7", "PULLWAKE_WORKER": "env"}
    opts = parse(["--config", str(cfg)], env)
    assert (opts.stop_grace, opts.worker_name, opts.max_concurrency) == (7.0, "env", 2)
    opts = parse(["--config", str(cfg), "--stop-grace", "9"], env)
    assert (opts.stop_grace, opts.worker_name) == (9.0, "env")
    opts = parse([], {**env, "PULLWAKE_CONFIG": str(cfg)})
    assert opts.worker_name == "env" and [s.id for s in opts.subscriptions] == ["a"]


def test_an_empty_variable_is_unset() -> None:
    opts = parse(["--server", SERVER, "--handler", "m:f", "--subscription", "s",
                  "--pattern", "e/*"], {"PULLWAKE_WORKER": "", "PULLWAKE_STOP_GRACE": "  "})
    assert opts.worker_name and opts.stop_grace == 10.0  # the default name: host + unique id


def test_streams_from_a_variable_are_comma_separated() -> None:
    opts = parse(["--server", SERVER, "--handler", "m:f", "--subscription", "s"],
                 {"PULLWAKE_STREAM": "a/1, a/2,"})
    assert opts.subscriptions[0].streams == ("a/1", "a/2")


def test_per_subscription_lease_falls_back_to_the_top_level_one(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text(f'server = "{SERVER}"\nhandler = "m:f"\nclaim_lease = 45\n'
                   '[[subscription]]\nid = "a"\npattern = "a/*"\n'
                   '[[subscription]]\nid = "b"\nstreams = ["b/1"]\nclaim_lease = 2.5\n')
    subs = parse(["--config", str(cfg)]).subscriptions
    assert [(s.id, s.claim_lease) for s in subs] == [("a", 45.0), ("b", 2.5)]
    subs = parse(["--config", str(cfg), "--claim-lease", "20"]).subscriptions
    assert [(s.id, s.claim_lease) for s in subs] == [("a", 20.0), ("b", 2.5)]


def test_a_file_value_error_names_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text('max_concurrency = 0\n')
    with pytest.raises(UsageError, match=r"w\.toml: max_concurrency = 0: must be an integer"):
        parse(["--config", str(cfg)])


def _toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, re.S)


def test_the_cli_docs_config_example_resolves(tmp_path: Path) -> None:
    (block,) = _toml_blocks(CLI_MD.read_text())
    cfg = tmp_path / "worker.toml"
    cfg.write_text(block)
    opts = parse(["--config", str(cfg)])
    assert [(s.id, s.claim_lease) for s in opts.subscriptions] == [("orders", 30.0),
                                                                     ("audit", 120.0)]
    assert parse(["--config", str(cfg)], {"PULLWAKE_WORKER": "w2"}).worker_name == "w2"
    assert parse(["--config", str(cfg), "--worker", "w3"],
                 {"PULLWAKE_WORKER": "w2"}).worker_name == "w3"


def test_the_cli_docs_table_lists_every_option_with_its_variable_and_key() -> None:
    rows = [line for line in CLI_MD.read_text().splitlines() if line.startswith("| `--")]
    for flag, var, key, _ in option_table():
        row = next((r for r in rows if r.startswith(f"| `{flag}")), None)
        assert row is not None, f"docs/cli.md has no row for {flag}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert (f"`{var}`" in cells[1]) if var else "none" in cells[1], row
        assert f"`{key}`" in cells[2], row
    documented = {r.split("`")[1].split()[0] for r in rows}
    assert documented == {flag for flag, *_ in option_table()} | {"--config"}
