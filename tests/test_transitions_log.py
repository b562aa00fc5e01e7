"""`transitions` logs every state change at INFO; pullwake keeps it quiet unless asked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
    if sys.argv[1] == "asked":
        logging.getLogger("transitions").setLevel(logging.INFO)
    from pullwake.lifecycle.machine import build_machine
    from pullwake.lifecycle.spec import load_spec
    from transitions.extensions.nesting import HierarchicalMachine

    class Model:
        pass

    model = Model()
    machine = HierarchicalMachine(model=model, states=["a", "b"], initial="a",
                                  transitions=[["go", "a", "b"]], auto_transitions=False)
    model.go()
    print("state", model.state)
''')


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("mode", "expect_lines"), [("default", False), ("asked", True)])
def test_transitions_logger(mode: str, expect_lines: bool) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True,
                          text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stderr
    assert "state b" in done.stdout
    lines = [x for x in done.stdout.splitlines() if x.startswith("transitions")]
    assert bool(lines) is expect_lines, done.stdout
