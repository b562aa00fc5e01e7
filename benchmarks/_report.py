"""Shared by benchmark scripts: write one section of docs/performance.md.

Each benchmark owns one ``## <title>`` section and replaces only that section,
so scripts can run in any order and the file keeps every other figure.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

PERF = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def machine_line() -> str:
    return (f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}.")


def write_section(title: str, body: str, path: Path = PERF) -> None:
    text = path.read_text() if path.exists() else "# Performance\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
