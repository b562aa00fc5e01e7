"""Every ```python block in README.md and docs/*.md runs as written.

Each block runs as its own ``python`` process (what a user gets by pasting it
into a file), in a temporary directory shared by the blocks of one Markdown
file, against an :class:`~pullwake.testing.EmbeddedServer` started for that
file. The convention, also described in docs/development.md:

* ``http://127.0.0.1:4437`` in a block (the reference server's address in
  the docs) is pointed at the embedded server; nothing else is rewritten.
* An HTML comment right before the fence (invisible when rendered) may say
  how the block is run, ``<!-- example: KEY=VALUE ... -->``:

  - ``file=NAME``: the block is saved as NAME in the shared directory (for
    later blocks and commands to import), then run;
  - ``interrupt-on=TEXT``: the block runs until TEXT appears in its output,
    then gets SIGINT (Ctrl-C), and must exit 0 without a traceback;
  - ``streams=PATH,PATH``: these JSON streams exist on the server, with one
    message each (``{"hello": 1}``), before the block runs;
  - ``timeout=SECONDS``: how long it may take (default 60).

A failure names the file, the block's line and number, and shows its output.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pullwake.testing import EmbeddedServer

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ADDRESS = "http://127.0.0.1:4437"
_FENCE = re.compile(r"^(?P<indent>[ ]{0,3})```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$",
                    re.S | re.M)
_DIRECTIVE = re.compile(r"<!--\s*example:(?P<opts>(?:(?!-->).)*)-->\s*\Z", re.S)


@dataclass(frozen=True)
class Block:
    path: Path
    number: int  # 1-based among the file's python blocks
    line: int
    code: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        shown = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{shown}:{self.line} (python block #{self.number})"


def python_blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in _FENCE.finditer(text):
        lang = m.group("lang").strip().split()[0] if m.group("lang").strip() else ""
        if lang not in ("python", "py", "python3"):
            continue
        options: dict[str, str] = {}
        directive = _DIRECTIVE.search(text[:m.start()])
        if directive:
            for item in shlex.split(directive.group("opts")):
                key, _, value = item.partition("=")
                if key not in ("file", "interrupt-on", "streams", "timeout"):
                    raise AssertionError(f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: "
                                         f"unknown example option {key!r}")
                options[key] = value
        body = m.group("body")
        if m.group("indent"):
            body = "\n".join(line[len(m.group("indent")):] for line in body.splitlines())
        blocks.append(Block(path=path, number=len(blocks) + 1,
                            line=text.count("\n", 0, m.start()) + 1, code=body,
                            options=options))
    return blocks


def _by_file() -> list[tuple[Path, list[Block]]]:
    return [(p, python_blocks(p)) for p in DOCS if python_blocks(p)]


def test_the_collector_finds_the_readme_examples() -> None:
    readme = python_blocks(REPO / "README.md")
    assert len(readme) >= 2
    assert any("Worker(" in b.code for b in readme)


def test_the_collector_reads_directives_and_indented_fences(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text('text\n\n<!-- example: file=a.py interrupt-on="ready now" -->\n```python\n'
                  'print(1)\n```\n\n- item\n\n  ```python\n  print(2)\n  ```\n\n```text\nno\n```\n')
    blocks = python_blocks(md)
    assert [b.code for b in blocks] == ["print(1)\n", "print(2)"]
    assert blocks[0].options == {"file": "a.py", "interrupt-on": "ready now"}
    assert blocks[1].options == {} and blocks[1].line == 10
    md.write_text("<!-- example: file=a.py -->\n```python\n1\n```\n<!-- note -->\n"
                  "<!-- example: timeout=5 -->\n```python\n2\n```\n")
    assert [b.options for b in python_blocks(md)] == [{"file": "a.py"}, {"timeout": "5"}]
    md.write_text("<!-- example: nonsense=1 -->\n```python\n1\n```\n")
    with pytest.raises(AssertionError,
                       match=re.escape("x.md:2: unknown example option 'nonsense'")):
        python_blocks(md)


def _ctrl_c_as_in_a_terminal() -> None:
    """In the example's child: SIGINT raises KeyboardInterrupt, as in a terminal.

    A suite run as a background job (``cmd &``, nohup) ignores SIGINT, the
    child would inherit that, and Python keeps an inherited ignore: the Ctrl-C
    examples would never stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_a_failing_block_names_its_file_and_line(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text("# t\n\n```python\nprint('hi')\nraise SystemExit(3)\n```\n")
    block = python_blocks(md)[0]
    async with EmbeddedServer() as server:
        problem = await _run_block(block, tmp_path, server)
    assert problem is not None and problem.startswith("exited 3:") and "hi" in problem
    assert block.where.endswith("x.md:3 (python block #1)")


async def _run_block(block: Block, workdir: Path, server: EmbeddedServer) -> str | None:
    """Run one block; None if it behaved, else what went wrong (with its output)."""
    for path in filter(None, block.options.get("streams", "").split(",")):
        await server.create_stream(path)
        await server.append(path, {"hello": 1})
    code = block.code.replace(ADDRESS, server.origin)
    name = block.options.get("file") or f"_example_{block.number}.py"
    (workdir / name).write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULLWAKE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, name, cwd=str(workdir), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, preexec_fn=_ctrl_c_as_in_a_terminal)
    out = bytearray()
    needle = block.options.get("interrupt-on")
    interrupted = False

    async def pump() -> None:
        nonlocal interrupted
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(4096):
            out.extend(chunk)
            if needle and not interrupted and needle.encode() in out:
                interrupted = True
                proc.send_signal(signal.SIGINT)

    timeout = float(block.options.get("timeout", "60"))
    try:
        await asyncio.wait_for(asyncio.gather(pump(), proc.wait()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"did not finish within {timeout:g} s" + (
            f" (waiting for {needle!r} to interrupt it)" if needle and not interrupted else ""
        ) + ":\n" + out.decode(errors="replace")
    text = out.decode(errors="replace")
    if needle and not interrupted:
        return f"exited {proc.returncode} before printing {needle!r}:\n{text}"
    if proc.returncode != 0:
        return f"exited {proc.returncode}:\n{text}"
    if "Traceback (most recent call last)" in text:
        return f"printed a traceback:\n{text}"
    return None


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("path", "blocks"), _by_file(),
                         ids=[str(p.relative_to(REPO)) for p, _ in _by_file()])
async def test_python_blocks_run_as_written(path: Path, blocks: list[Block],
                                            tmp_path: Path) -> None:
    failures = []
    async with EmbeddedServer() as server:
        for block in blocks:
            problem = await _run_block(block, tmp_path, server)
            if problem is not None:
                failures.append(f"{block.where} {problem}")
    assert not failures, "\n\n".join(failures)
