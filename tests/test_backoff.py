"""The one backoff (:mod:`pullwake.lifecycle.backoff`): policy, jitter, rng, Retry-After, reset.

Pure: no sockets, no clock. The random source is injected everywhere a value
is checked; ``rng=lambda: 1.0`` pins the un-jittered bound, the original's
1 s, 2 s, 4 s … sequence.
"""

from __future__ import annotations

import doctest
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pullwake.lifecycle.backoff as backoff_module
from pullwake.errors import ConfigError
from pullwake.lifecycle.backoff import JITTERS, Backoff, BackoffPolicy
from pullwake.lifecycle.spec import load_spec

BOUND = lambda: 1.0  # noqa: E731  # the top of every jitter range: the bound itself


def test_the_docstring_example_runs() -> None:
    result = doctest.testmod(backoff_module, raise_on_error=False, verbose=False)
    assert result.attempted >= 8 and result.failed == 0


def test_jitter_is_on_by_default() -> None:
    assert BackoffPolicy().jitter == "full"
    assert Backoff().policy == BackoffPolicy()


def test_the_bound_is_the_originals_sequence() -> None:
    b = Backoff(BackoffPolicy(), rng=BOUND)
    assert [b.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert b.attempt == 8


def test_policy_arithmetic_with_an_injected_rng() -> None:
    values = iter([0.0, 1.0, 0.5])
    b = Backoff(BackoffPolicy(initial_s=0.5, factor=3.0, cap_s=10.0, jitter="full"),
                rng=lambda: next(values))
    assert [b.next_delay() for _ in range(3)] == [0.0, 1.5, 2.25]
    assert [b.base_delay(n) for n in range(5)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert b.base_delay(100_000) == 10.0  # no float overflow on a long outage
    b.reset()
    assert b.attempt == 0
    flat = Backoff(BackoffPolicy(initial_s=2.0, factor=1.0, cap_s=2.0, jitter="none"))
    assert [flat.next_delay() for _ in range(3)] == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(("jitter", "low", "high"),
                         [("full", 0.0, 1.0), ("equal", 0.5, 1.0), ("none", 1.0, 1.0)])
def test_each_jitter_maps_the_rng_onto_its_range(jitter: str, low: float, high: float) -> None:
    policy = BackoffPolicy(initial_s=4.0, factor=2.0, cap_s=64.0, jitter=jitter)  # type: ignore[arg-type]
    assert Backoff(policy, rng=lambda: 0.0).next_delay() == 4.0 * low
    assert Backoff(policy, rng=BOUND).next_delay() == 4.0 * high


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=40),
       st.sampled_from(JITTERS))
def test_a_jittered_delay_never_passes_its_bound(draws: list[float], jitter: str) -> None:
    values = iter(draws)
    b = Backoff(BackoffPolicy(jitter=jitter), rng=lambda: next(values))  # type: ignore[arg-type]
    for n in range(len(draws)):
        d = b.next_delay()
        assert 0.0 <= d <= b.base_delay(n)


def test_clients_failing_together_do_not_retry_in_lock_step() -> None:
    # 200 clients dropped by one outage, each with its own random source: their
    # first retries spread over the window instead of landing on one instant.
    firsts = [BackoffPolicy().start(rng=random.Random(seed).random).next_delay()
              for seed in range(200)]
    assert all(0.0 <= d < 1.0 for d in firsts)
    assert len({round(d, 3) for d in firsts}) > 150
    lock_step = [BackoffPolicy(jitter="none").start().next_delay() for _ in range(200)]
    assert set(lock_step) == {1.0}


def test_retry_after_overrides_the_next_delay_and_the_count_moves_on() -> None:
    b = Backoff(BackoffPolicy(initial_s=0.1, factor=2.0, cap_s=5.0), rng=BOUND)
    assert b.next_delay() == 0.1
    assert b.next_delay(retry_after=7) == 7.0  # the server's word: unjittered, uncapped
    assert b.next_delay(retry_after=0) == 0.0
    assert b.next_delay() == 0.8  # attempt 3: the computed sequence carried on
    assert b.attempt == 4


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan, True, "3"])
def test_a_bad_retry_after_is_a_clear_error(bad: object) -> None:
    b = Backoff(BackoffPolicy())
    with pytest.raises(ValueError, match="retry_after must be a finite number of seconds"):
        b.next_delay(retry_after=bad)  # type: ignore[arg-type]
    assert b.attempt == 1  # counted: the caller asked for a delay


def test_reset_starts_over() -> None:
    b = Backoff(BackoffPolicy(), rng=BOUND)
    assert [b.next_delay() for _ in range(3)] == [1, 2, 4]
    b.reset()
    assert b.next_delay() == 1


@pytest.mark.parametrize(("fields", "message"), [
    ({"initial_s": 0}, "initial_s must be > 0"),
    ({"initial_s": math.inf}, "initial_s must be a finite number"),
    ({"factor": 0.5}, "factor must be >= 1"),
    ({"cap_s": 0.5}, r"cap_s \(0.5\) must be >= initial_s \(1.0\)"),
    ({"jitter": "some"}, "jitter must be one of"),
    ({"cap_s": True}, "cap_s must be a finite number"),
])
def test_a_bad_policy_is_a_config_error_naming_the_field(fields: dict[str, object],
                                                         message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BackoffPolicy(**fields)  # type: ignore[arg-type]


def test_policies_are_frozen_and_keyword_only() -> None:
    p = BackoffPolicy(initial_s=0.5)
    with pytest.raises(AttributeError):
        p.initial_s = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        BackoffPolicy(0.5)  # type: ignore[misc]


def test_each_use_has_its_own_attempts() -> None:
    policy = BackoffPolicy(jitter="none")
    a, b = policy.start(), policy.start()
    a.next_delay()
    a.next_delay()
    assert (a.attempt, b.attempt) == (2, 0)
    assert b.next_delay() == 1.0


def test_the_specs_reconnect_policy_is_a_backoff_policy_with_jitter() -> None:
    spec = load_spec()
    policy = spec.backoff.policy
    assert policy == BackoffPolicy(initial_s=1.0, factor=2.0, cap_s=30.0, jitter="full")
    assert spec.backoff.reset_on == ("START", "CONNECTED")
