"""The committed lifecycle diagrams: render them, write them, and gate them.

This module owns the files under ``diagrams/`` (``lifecycle.dot``, ``.mmd``,
``.svg``, ``.png``) and the gate ``pullwake diagram --check`` runs: the text
sources (DOT from :mod:`.diagram_dot`, Mermaid from :mod:`.diagram_mermaid`,
both drawn from :func:`~pullwake.lifecycle.drawing.drawing_of`) must equal a
fresh render byte for byte; the images, rendered by Graphviz's ``dot`` (the
only process this layer runs), carry the fingerprint of the DOT they came
from and are never compared across Graphviz versions or fonts.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from pullwake.lifecycle.diagram_dot import dot_of
from pullwake.lifecycle.diagram_mermaid import mermaid_of
from pullwake.lifecycle.drawing import drawing_of
from pullwake.lifecycle.model import LifecycleSpec

__all__ = [
    "FORMATS",
    "IMAGE_FORMATS",
    "TEXT_FORMATS",
    "DiagramDrift",
    "check_advice",
    "check_diagrams",
    "dot_fingerprint",
    "graphviz_version",
    "image_fingerprint",
    "render_diagrams",
    "render_dot",
    "render_mermaid",
    "render_with_dot",
    "stamp_image",
]

BASENAME = "lifecycle"
TEXT_FORMATS = ("dot", "mmd")
IMAGE_FORMATS = ("svg", "png")
FORMATS = (*TEXT_FORMATS, *IMAGE_FORMATS)


def render_mermaid(spec: LifecycleSpec) -> str:
    """The Mermaid source of the lifecycle diagram of ``spec``."""
    return mermaid_of(drawing_of(spec))


def render_dot(spec: LifecycleSpec) -> str:
    """The DOT source of the lifecycle diagram of ``spec``."""
    return dot_of(drawing_of(spec))


def graphviz_version() -> str | None:
    """The local Graphviz version (``2.43.0``), or None without a ``dot`` binary."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    out = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False, timeout=60)
    found = _VERSION.search(out.stderr + out.stdout)
    return found.group(1) if found else "unknown"


def render_with_dot(dot_source: str, fmt: str) -> bytes:
    """Run Graphviz ``dot`` on DOT source. Raises FileNotFoundError without ``dot``."""
    exe = shutil.which("dot")
    if exe is None:
        raise FileNotFoundError(
            "Graphviz 'dot' not found: install the Debian package 'graphviz' "
            "(apt-get install graphviz; brew/dnf install graphviz)"
        )
    out = subprocess.run([exe, f"-T{fmt}"], input=dot_source.encode(), capture_output=True,
                         check=True, timeout=60)
    return out.stdout


# ------------------------------------------------------------ fingerprints
#
# SVG and PNG are derived from the DOT source and depend on the Graphviz
# version and the fonts installed, so they are never compared byte for byte.
# Each image carries the SHA-256 of the DOT it was rendered from (an XML
# comment in SVG, a tEXt chunk in PNG); the gate compares that fingerprint with
# the committed DOT, which it compares with a fresh render of the spec.

_VERSION = re.compile(r"graphviz version (\S+)")
_SVG_MARK = re.compile(r"<!-- pullwake: rendered from DOT sha256=([0-9a-f]{64}) -->")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEY = b"pullwake-dot-sha256"


def dot_fingerprint(dot_source: str | bytes) -> str:
    """SHA-256 (hex) of DOT source: what an image records as its origin."""
    data = dot_source.encode() if isinstance(dot_source, str) else dot_source
    return hashlib.sha256(data).hexdigest()


def stamp_image(fmt: str, data: bytes, fingerprint: str) -> bytes:
    """Record ``fingerprint`` inside a rendered SVG or PNG."""
    if fmt == "svg":
        text = data.decode("utf-8")
        head, sep, rest = text.partition("\n")
        mark = f"<!-- pullwake: rendered from DOT sha256={fingerprint} -->"
        return (head + sep + mark + "\n" + rest).encode("utf-8")
    if fmt == "png":
        if not data.startswith(_PNG_SIGNATURE):
            raise ValueError("not a PNG")
        ihdr_end = len(_PNG_SIGNATURE) + 8 + struct.unpack(">I", data[8:12])[0] + 4
        body = _PNG_KEY + b"\x00" + fingerprint.encode()
        chunk = (struct.pack(">I", len(body)) + b"tEXt" + body
                 + struct.pack(">I", zlib.crc32(b"tEXt" + body)))
        return data[:ihdr_end] + chunk + data[ihdr_end:]
    raise ValueError(f"cannot stamp {fmt!r}")


def image_fingerprint(fmt: str, data: bytes) -> str | None:
    """The DOT fingerprint an image records, or None (not stamped, not parseable)."""
    if fmt == "svg":
        found = _SVG_MARK.search(data[:4096].decode("utf-8", "replace"))
        return found.group(1) if found else None
    if fmt == "png":
        if not data.startswith(_PNG_SIGNATURE):
            return None
        pos = len(_PNG_SIGNATURE)
        while pos + 8 <= len(data):
            length = struct.unpack(">I", data[pos:pos + 4])[0]
            kind = data[pos + 4:pos + 8]
            body = data[pos + 8:pos + 8 + length]
            if kind == b"tEXt" and body.startswith(_PNG_KEY + b"\x00"):
                return body[len(_PNG_KEY) + 1:].decode("ascii", "replace")
            if kind == b"IDAT":
                return None
            pos += 12 + length
    return None


def image_graphviz_version(fmt: str, data: bytes) -> str | None:
    """The Graphviz version an SVG says rendered it (PNG does not say)."""
    if fmt != "svg":
        return None
    found = _VERSION.search(data[:4096].decode("utf-8", "replace"))
    return found.group(1) if found else None


# ------------------------------------------------------------ write, check


def render_diagrams(spec: LifecycleSpec, out_dir: Path, *, formats: tuple[str, ...] = FORMATS,
                    ) -> list[Path]:
    """Write ``lifecycle.{dot,mmd,svg,png}`` into ``out_dir``; return the paths written.

    Raises FileNotFoundError (nothing written) when an image format is asked
    for and Graphviz ``dot`` is missing.
    """
    rendered = _render_all(spec, formats)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, data in rendered.items():
        path = out_dir / f"{BASENAME}.{fmt}"
        path.write_bytes(data)
        written.append(path)
    return written


@dataclass(frozen=True)
class DiagramDrift:
    """One finding of :func:`check_diagrams`; ``fails`` is False for a note."""

    path: Path
    problem: str
    fails: bool = True


def check_diagrams(spec: LifecycleSpec, out_dir: Path, *,
                   formats: tuple[str, ...] = FORMATS) -> list[DiagramDrift]:
    """Gate the committed diagrams; needs no Graphviz and no particular version.

    Text sources (DOT, Mermaid) must equal a fresh render of the spec, byte for byte.
    Images must be stamped with the fingerprint of the committed DOT: they are
    derived files, never compared across Graphviz versions or fonts. A note
    (``fails=False``) says when the images came from another Graphviz version.
    """
    findings: list[DiagramDrift] = []
    fresh = _render_all(spec, tuple(f for f in formats if f in TEXT_FORMATS))
    for fmt, data in fresh.items():
        path = out_dir / f"{BASENAME}.{fmt}"
        if not path.is_file():
            findings.append(DiagramDrift(path, "missing"))
        elif path.read_bytes() != data:
            findings.append(DiagramDrift(path, "differs from what the spec renders now"))
    dot_path = out_dir / f"{BASENAME}.dot"
    committed = dot_path.read_bytes() if dot_path.is_file() else None
    local: str | bool | None = False  # not asked yet
    for fmt in (f for f in formats if f in IMAGE_FORMATS):
        path = out_dir / f"{BASENAME}.{fmt}"
        if not path.is_file():
            findings.append(DiagramDrift(path, "missing"))
            continue
        data = path.read_bytes()
        stamp = image_fingerprint(fmt, data)
        if committed is None:
            continue  # the missing DOT is already reported
        if stamp is None:
            findings.append(DiagramDrift(path, "carries no DOT fingerprint (not rendered by "
                                         "this version of `pullwake diagram`)"))
        elif stamp != dot_fingerprint(committed):
            findings.append(DiagramDrift(path, f"was rendered from another DOT source than "
                                         f"the committed {dot_path.name}"))
        made_by = image_graphviz_version(fmt, data)
        if made_by is not None:
            if local is False:
                local = graphviz_version()
            if isinstance(local, str) and local != made_by:
                findings.append(DiagramDrift(
                    path, f"rendered by Graphviz {made_by}, this machine has {local}: images "
                    "are not compared byte for byte, so this is fine", fails=False))
    return findings


def check_advice(findings: list[DiagramDrift], *, have_dot: bool) -> str | None:
    """What to do about failing findings (None when nothing fails)."""
    failing = [f for f in findings if f.fails]
    if not failing:
        return None
    install = ("" if have_dot else " (Graphviz 'dot' is not installed here: install it first, "
               "e.g. apt-get install graphviz, brew install graphviz, dnf install graphviz)")
    if any(f.path.suffix.lstrip(".") in TEXT_FORMATS for f in failing):
        return ("diagrams are stale: the spec renders a different diagram now; run "
                f"`pullwake diagram` and commit diagrams/{install}")
    return ("images are out of date with the committed DOT source: run `pullwake diagram` "
            f"and commit diagrams/{install}")


def _render_all(spec: LifecycleSpec, formats: tuple[str, ...]) -> dict[str, bytes]:
    drawing = drawing_of(spec)
    dot_source = dot_of(drawing)
    fingerprint = dot_fingerprint(dot_source)
    out: dict[str, bytes] = {}
    for fmt in formats:
        if fmt == "dot":
            out[fmt] = dot_source.encode()
        elif fmt == "mmd":
            out[fmt] = mermaid_of(drawing).encode()
        else:
            out[fmt] = stamp_image(fmt, render_with_dot(dot_source, fmt), fingerprint)
    return out
