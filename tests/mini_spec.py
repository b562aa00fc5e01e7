"""A small lifecycle spec for tests that must not touch the shipped one.

``stopped`` -> ``running`` (``working`` owns a task reporting DONE/FAIL,
``waiting`` owns a backoff timer reporting RETRY) -> ``stopping`` (owns a
task reporting HALTED) -> ``stopped``. Hooks are names ``LifecycleEffects``
provides, so ``load_spec`` accepts it as a file. ``edit`` replaces text that
must occur exactly once, so a planted defect cannot silently miss.
"""

from __future__ import annotations

import textwrap

MINI = textwrap.dedent("""\
    version: 1
    name: mini
    initial: stopped
    backoff: {initial_s: 0.5, factor: 2, cap_s: 8, reset_on: [START]}
    events:
      START: {}
      STOP: {}
      DONE: {}
      FAIL: {payload: [error]}
      RETRY: {}
      HALTED: {}
    work:
      job: {kind: task, start: start_connect_attempt, reports: [DONE, FAIL], fails: FAIL}
      pause: {kind: timer, start: start_backoff_timer, delay: backoff, reports: [RETRY],
              fails: RETRY}
      halt: {kind: task, start: start_shutdown, reports: [HALTED], fails: HALTED}
    states:
      stopped:
        transitions:
          START: {to: running, before: [on_start]}
        ignore:
          not_running: [STOP]
          stale_result: [DONE, FAIL, RETRY, HALTED]
      running:
        initial: working
        transitions:
          STOP: {to: stopping}
        ignore:
          already_running: [START]
          stale_result: [HALTED]
        states:
          working:
            owns: job
            transitions:
              DONE: {to: working, after: [report_stream_end]}
              FAIL: {to: waiting, after: [report_connect_failure]}
            ignore:
              stale_result: [RETRY]
          waiting:
            owns: pause
            transitions:
              RETRY: {to: working}
            ignore:
              stale_result: [DONE, FAIL]
      stopping:
        owns: halt
        transitions:
          HALTED: {to: stopped}
        ignore:
          already_stopping: [START, STOP]
          stale_result: [DONE, FAIL, RETRY]
    """)


def edit(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text
