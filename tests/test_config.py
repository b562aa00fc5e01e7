"""One config: WorkerConfig contains RunnerConfig; the CLI's options are derived from fields.

Pure tests (no sockets): every field of the config dataclasses is a setting, a
python-only value (with its reason) or a nested config; every setting has
exactly one flag, variable and TOML key and each of those reaches exactly its
one field; Worker's keyword arguments build the same WorkerConfig with the
dataclasses' defaults; a bad value is a ConfigError naming the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import pytest

from pullwake.cli.options import RunOptions, add_arguments, options, resolve
from pullwake.cli.run import add_run_commands
from pullwake.errors import ConfigError
from pullwake.runtime.config import RunnerConfig, SubscriptionConfig
from pullwake.runtime.failures import FailurePolicy
from pullwake.runtime.settings import PYTHON_ONLY, nested_of, setting_of, undeclared
from pullwake.runtime.worker_config import (
    DERIVED_RUNNER_FIELDS,
    WorkerConfig,
    WorkerKeywords,
)

SERVER = "http://127.0.0.1:4437/v1/stream"
CONFIGS = (WorkerConfig, RunnerConfig, SubscriptionConfig, FailurePolicy, RunOptions)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_is_a_setting_python_only_or_nested(cls: type) -> None:
    assert undeclared(cls) == []
    for f in dataclasses.fields(cls):
        if PYTHON_ONLY in f.metadata:
            assert len(f.metadata[PYTHON_ONLY]) > 8, f"{cls.__name__}.{f.name}: say why"


@pytest.mark.parametrize("cls", CONFIGS[:-1], ids=lambda c: c.__name__)
def test_configs_are_frozen_and_keyword_only(cls: type) -> None:
    params = dataclasses.fields(cls)
    assert all(f.kw_only for f in params), cls
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_run_commands(parser.add_subparsers())
    run: argparse.ArgumentParser = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    return run


#: Flags kept for old command lines, hidden from --help: each names the field it sets.
ALIASES = {"--lease-ms": "claim_lease"}


def test_every_setting_has_exactly_one_flag_variable_and_key_and_vice_versa() -> None:
    declared = []
    def walk(cls: type, path: tuple[str, ...]) -> None:
        for f in dataclasses.fields(cls):
            inner = nested_of(f)
            if inner is not None:
                walk(inner, (*path, f.name))
            elif setting_of(f) is not None:
                declared.append((*path, f.name))
    walk(WorkerConfig, ())
    walk(RunOptions, ("run",))
    opts = options()
    assert sorted(o.path for o in opts) == sorted(declared)  # each field: one option
    for attr in ("key", "flag"):
        names = [getattr(o, attr) for o in opts]
        assert len(names) == len(set(names)), attr
    envs = [o.env for o in opts if o.env]
    assert len(envs) == len(set(envs))
    assert {o.key for o in opts if not o.env} == {"header", "header_env"}  # secrets: no variable
    for o in opts:  # the one key spells all three
        assert o.flag == "--" + o.key.replace("_", "-")
        assert o.env in (None, "PULLWAKE_" + o.key.upper())

    run = _run_parser()
    flags = {s for a in run._actions for s in a.option_strings} - {"-h", "--help"}
    assert flags == {o.flag for o in opts} | {"--config"} | set(ALIASES)
    by_dest = {a.dest: a for a in run._actions if a.option_strings}
    for o in opts:  # every flag parses into its own key, nothing else
        assert by_dest[o.key].option_strings == [o.flag]
    assert set(ALIASES.values()) <= {o.key for o in opts}


# A non-default raw value for every option; the test below fails for an option without one.
SAMPLES: dict[str, str] = {
    "server": "http://127.0.0.1:4438/v2/stream", "worker": "w9", "heartbeat_interval": "7",
    "live": "long-poll", "connect_timeout": "3", "read_idle_timeout": "60",
    "request_timeout": "4", "max_message_bytes": "4096", "verify_tls": "false",
    "subscription": "other", "wake_stream": "wake/other", "pattern": "x/*", "stream": "a/1",
    "claim_lease": "45", "handler_timeout": "2", "max_attempts": "9",
    "dead_letter_stream": "dead/other", "cooldown": "2", "cooldown_cap": "40",
    "max_concurrency": "8", "stop_grace": "3", "max_claim_streams": "50",
    "max_tracked_streams": "500", "max_item_bytes": "2048", "handler": "mod:other",
    "start_timeout": "5", "header": "X-Extra:1", "header_env": "X-Key=PULLWAKE_TEST_KEY",
    "token_env": "PULLWAKE_TEST_KEY", "health_port": "0", "health_host": "0.0.0.0",
    "log_level": "debug", "log_format": "json",
}
BASE = ["--server", SERVER, "--handler", "m:f", "--worker", "w0", "--subscription", "s",
        "--pattern", "e/*", "--dead-letter-stream", "dead/letters"]
ENV = {"PULLWAKE_TEST_KEY": "k-123"}
#: Fields that follow from the one set (derived values), besides the option's own.
COUPLED = {
    "worker": {"config.runner.name"},
    "wake_stream": {"config.runner.wake_stream_path"},
    "header": {"run.headers", "config.runner.headers"},
    "header_env": {"run.headers", "config.runner.headers"},
    "token_env": {"run.headers", "config.runner.headers"},
}


def _flat(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _flat(getattr(value, f.name), f"{prefix}.{f.name}", out)
    elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        for i, item in enumerate(value):
            _flat(item, f"{prefix}.{i}", out)
    else:
        out[prefix] = value
    return out


def _resolved(argv: list[str], environ: dict[str, str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    opts = resolve(parser.parse_args(argv), environ)
    assert opts.config is not None and opts.runner is opts.config.runner
    assert opts.server == opts.config.server
    flat = _flat(dataclasses.replace(opts, config=None, runner=None), "run", {})
    flat.pop("run.config")
    flat.pop("run.runner")
    return _flat(opts.config, "config", flat)


def _target(path: tuple[str, ...]) -> str:
    if path[0] == "run":
        return f"run.{path[1]}"
    if path[0] == "subscriptions":
        return f"config.subscriptions.0.{path[1]}"
    return "config." + ".".join(path)


def _without(argv: list[str], flag: str) -> list[str]:
    if flag not in argv:
        return list(argv)
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]


@pytest.mark.parametrize("source", ["flag", "variable", "file"])
def test_each_option_sets_exactly_its_own_field(source: str, tmp_path: Path) -> None:
    assert set(SAMPLES) == {o.key for o in options()}
    for o in options():
        if source == "variable" and o.env is None:
            continue
        base, raw, extra = list(BASE), SAMPLES[o.key], ""
        if o.key == "stream":  # one stream already; the sample adds a second
            base = [*_without(base, "--pattern"), "--stream", "b/1"]
            extra = "b/1,"
        before = _resolved(base, ENV)
        argv, environ = _without(base, o.flag), dict(ENV)
        if source == "flag":
            argv = [*base, o.flag, raw]
        elif source == "variable":
            assert o.env is not None
            environ[o.env] = extra + raw
        else:
            cfg = tmp_path / f"{o.key}.toml"
            values = [*extra.rstrip(",").split(",")] if extra else []
            cfg.write_text(f"{o.key} = " + (repr([*values, raw]).replace("'", '"')
                                            if o.setting.repeat else f'"{raw}"') + "\n")
            argv += ["--config", str(cfg)]
        after = _resolved(argv, environ)
        changed = {k for k in after if after[k] != before.get(k)}
        expected = {_target(o.path)} | COUPLED.get(o.key, set())
        assert changed == expected, (source, o.key, changed)


def test_worker_keywords_are_the_config_fields() -> None:
    runner = {f.name for f in dataclasses.fields(RunnerConfig)} - set(DERIVED_RUNNER_FIELDS)
    # Electric runner API fields a Worker does not use stay reachable through RunnerConfig.
    electric = {"claim_headers", "claim_token_header", "offset", "heartbeat_path",
                "claim_path", "heartbeat_lease"}
    own = {f.name for f in dataclasses.fields(WorkerConfig) if nested_of(f) is None}
    policy = {f.name for f in dataclasses.fields(FailurePolicy)}
    subscription = {"subscription", "wake_stream", "pattern", "streams", "claim_lease",
                    "subscriptions"}
    legacy = {"lease_ms", "runner_options"}
    expected = (runner - electric) | own | policy | subscription | legacy | {
        "server", "worker_name"}
    assert set(WorkerKeywords.__annotations__) == expected


def test_keywords_build_the_config_with_the_dataclasses_defaults() -> None:
    built = WorkerConfig.from_keywords(server=SERVER, worker_name="w", subscription="s",
                                       pattern="e/*")
    by_hand = WorkerConfig(runner=RunnerConfig(base_url=SERVER, runner_id="w"),
                           subscriptions=(SubscriptionConfig(id="s", pattern="e/*"),))
    assert built == by_hand
    assert built.runner.heartbeat_interval == 30.0  # one default for runner and worker
    assert built.runner.wake_stream_path == "wake/pool" and built.runner.name == "w"
    assert (built.server, built.worker_name, built.wake_stream) == (SERVER, "w", "wake/pool")
    assert built.subscriptions[0].body()["lease_ttl_ms"] == 30_000  # ms only on the wire


def test_keywords_reach_their_dataclass() -> None:
    c = WorkerConfig.from_keywords(
        server=SERVER, subscription="s", streams=["a/1"], claim_lease=12.5, live="long-poll",
        request_timeout=3.0, max_concurrency=2, cooldown=0.5, dead_letter_stream="dl",
        read_idle_timeout=None, verify_tls=False)
    assert c.subscriptions[0].claim_lease == 12.5 and c.subscriptions[0].streams == ("a/1",)
    assert c.subscriptions[0].lease_ttl_ms == 12_500
    assert (c.runner.live, c.runner.request_timeout, c.runner.verify_tls) == (
        "long-poll", 3.0, False)
    assert c.runner.read_idle_timeout == 45.0  # None: the default
    assert (c.max_concurrency, c.failure_policy.cooldown) == (2, 0.5)
    assert c.failure_policy.max_attempts == 5  # the default with a dead-letter stream


def test_deprecated_spellings_still_work_and_warn() -> None:
    with pytest.warns(DeprecationWarning, match="claim_lease"):
        c = WorkerConfig.from_keywords(server=SERVER, subscription="s", pattern="p",
                                       lease_ms=5000)
    assert c.subscriptions[0].claim_lease == 5.0
    with pytest.warns(DeprecationWarning, match="runner_options"):
        c = WorkerConfig.from_keywords(server=SERVER, subscription="s", pattern="p",
                                       runner_options={"claim_grace": 0.5,
                                                       "heartbeat_path": "/hb"})
    assert c.runner.claim_grace == 0.5 and c.runner.heartbeat_path == "/hb"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ConfigError, match="'claim_grace_s' is not a RunnerConfig field"):
            WorkerConfig.from_keywords(server=SERVER, subscription="s", pattern="p",
                                       runner_options={"claim_grace_s": 1})
        with pytest.raises(ConfigError, match="'runner_id' is set by the worker"):
            WorkerConfig.from_keywords(server=SERVER, subscription="s", pattern="p",
                                       runner_options={"runner_id": "x"})
        with pytest.raises(ConfigError, match="'live' is also given as a keyword"):
            WorkerConfig.from_keywords(server=SERVER, subscription="s", pattern="p",
                                       live="sse", runner_options={"live": "long-poll"})
        with pytest.raises(ConfigError, match="not both"):
            WorkerConfig.from_keywords(server=SERVER, subscription="s", pattern="p",
                                       lease_ms=5000, claim_lease=5)


@pytest.mark.parametrize(("change", "needle"), [
    ({"subscriptions": ()}, "needs a subscription"),
    ({"subscriptions": (SubscriptionConfig(id="s", pattern="a"),
                        SubscriptionConfig(id="s", pattern="b"))}, "'s' is declared twice"),
    ({"subscriptions": (SubscriptionConfig(id="a", pattern="a"),
                        SubscriptionConfig(id="b", pattern="b", wake_stream="w2"))},
     "share its wake stream"),
    ({"max_concurrency": 0}, "max_concurrency must be an int >= 1"),
    ({"max_concurrency": True}, "max_concurrency"),
    ({"stop_grace": -1}, "stop_grace"),
    ({"stop_grace": float("inf")}, "stop_grace"),
    ({"max_item_bytes": 0}, "max_item_bytes"),
    ({"fetch_cache": "memory"}, "fetch_cache must be None or a pullwake.FetchCache"),
    ({"runner": {"base_url": SERVER}}, "runner must be a RunnerConfig"),
    ({"failure_policy": None}, "failure_policy must be a FailurePolicy"),
    ({"runner": RunnerConfig(base_url=SERVER, runner_id="r", wake_stream_path="other")},
     "not the subscriptions' wake stream"),
])
def test_a_bad_value_is_a_config_error_naming_the_field(change: dict[str, Any],
                                                        needle: str) -> None:
    kwargs: dict[str, Any] = {"runner": RunnerConfig(base_url=SERVER, runner_id="r"),
                              "subscriptions": (SubscriptionConfig(id="s", pattern="e/*"),)}
    kwargs.update(change)
    with pytest.raises(ConfigError, match=needle):
        WorkerConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"claim_lease": 0.5}, "claim_lease must be a number of seconds from 1 to 600"),
    ({"claim_lease": 601}, "claim_lease"),
    ({"claim_lease": "30"}, "claim_lease"),
    ({"pattern": None}, "needs a pattern or streams"),
    ({"wake_stream": "/"}, "wake_stream"),
])
def test_a_bad_subscription_names_the_field(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        SubscriptionConfig(**{"id": "s", "pattern": "e/*", **kwargs})


def test_the_two_leases_have_two_names_in_seconds() -> None:
    runner = RunnerConfig(base_url=SERVER, runner_id="r", heartbeat_interval=10)
    assert runner.heartbeat_lease is None and runner.effective_lease_ms == 30_000
    runner = dataclasses.replace(runner, heartbeat_lease=2.5)
    assert runner.effective_lease_ms == 2_500
    with pytest.raises(ConfigError, match="heartbeat_lease"):
        RunnerConfig(base_url=SERVER, runner_id="r", heartbeat_lease=0)
    assert SubscriptionConfig(id="s", pattern="p", claim_lease=2).body()["lease_ttl_ms"] == 2000


@pytest.mark.parametrize("key", ["pattern", "streams", "claim_lease", "wake_stream"])
def test_the_default_subscription_fields_need_its_id(key: str) -> None:
    value: Any = {"pattern": "e/*", "streams": ["a"], "claim_lease": 5.0,
                  "wake_stream": "wake/other"}[key]
    others = (SubscriptionConfig(id="s", pattern="x/*"),)
    with pytest.raises(ConfigError, match=f"{key} describes the default subscription"):
        WorkerConfig.from_keywords(server=SERVER, subscriptions=others, **{key: value})


def test_unknown_keyword_and_missing_server() -> None:
    with pytest.raises(ConfigError, match="unknown keyword 'lease'"):
        WorkerConfig.from_keywords(server=SERVER, subscription="s", pattern="p", lease=3)
    with pytest.raises(ConfigError, match="needs server"):
        WorkerConfig.from_keywords(subscription="s", pattern="p")


async def _handle(wake: Any) -> None:
    return None


def test_worker_is_built_from_one_config_or_the_keywords_that_build_it() -> None:
    from pullwake import Worker

    config = WorkerConfig(runner=RunnerConfig(base_url=SERVER, runner_id="w1", live="long-poll"),
                          subscriptions=(SubscriptionConfig(id="s", pattern="e/*",
                                                            claim_lease=12),),
                          max_concurrency=2)
    worker = Worker(config=config, handler=_handle)
    assert worker.config is config and worker.runner.config is config.runner
    assert (worker.server, worker.worker_name, worker.wake_stream) == (SERVER, "w1", "wake/pool")
    assert worker.max_concurrency == 2 and worker.runner.config.live == "long-poll"
    same = Worker(server=SERVER, worker_name="w1", live="long-poll", subscription="s",
                  pattern="e/*", claim_lease=12, max_concurrency=2, handler=_handle)
    assert same.config == config
    with pytest.raises(ConfigError, match="not both"):
        Worker(config=config, handler=_handle, max_concurrency=3)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="config must be a WorkerConfig"):
        Worker(config={"server": SERVER}, handler=_handle)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="handler must be callable"):
        Worker(config=config, handler="mod:f")  # type: ignore[arg-type]


def test_worker_keeps_the_old_keywords_working() -> None:
    from pullwake import Worker

    with pytest.warns(DeprecationWarning, match="claim_lease") as caught:
        worker = Worker(server=SERVER, subscription="s", pattern="e/*", lease_ms=4000,
                        handler=_handle)
    assert caught[0].filename == __file__  # reported at the caller's line
    assert worker.subscriptions["s"].claim_lease == 4.0
    with pytest.warns(DeprecationWarning, match="runner_options"):
        worker = Worker(server=SERVER, subscription="s", pattern="e/*", handler=_handle,
                        runner_options={"heartbeat_failures_before_reset": 3})
    assert worker.runner.config.heartbeat_failures_before_reset == 3


def test_the_documented_worker_defaults_are_the_dataclasses_defaults() -> None:
    import ast
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "worker.md").read_text()
    signature = doc.split("`Worker(*, server, handler,", 1)[1].split(")`", 1)[0]
    pairs = dict(re.findall(r"(\w+)=([^,]+?)(?:,|$)", " ".join(signature.split())))
    assert len(pairs) > 20, pairs
    owners = (RunnerConfig, FailurePolicy, WorkerConfig, SubscriptionConfig)
    defaults = {f.name: f.default for cls in owners for f in dataclasses.fields(cls)}
    not_fields = {"subscription": None, "streams": (), "subscriptions": (), "worker_name": None}
    for name, text in pairs.items():
        value = 16 * 1024 * 1024 if text.strip() == "16 MiB" else ast.literal_eval(text.strip())
        expected = not_fields[name] if name in not_fields else defaults[name]
        assert value == expected, f"docs/worker.md says {name}={text}, the default is {expected!r}"
