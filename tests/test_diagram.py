"""Diagram gate: the committed diagrams/lifecycle.* are what the spec renders now.

The DOT source needs no Graphviz binary and is compared byte for byte with a
fresh render. SVG and PNG are derived: they depend on the Graphviz version and
the installed fonts, so they are never compared byte for byte; each carries the
SHA-256 of the DOT it was rendered from, and the gate compares that. The gate
passes with another Graphviz version on PATH (a fake ``dot``) and without one,
and fails on a real DOT change, each time with the right advice. ``pullwake
diagram --check`` is exercised against copies in a temp dir, so the committed
files are never touched.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from layout_helpers import boxes, collisions, layout

from pullwake.cli.main import main
from pullwake.lifecycle.diagram import (
    check_diagrams,
    dot_fingerprint,
    graphviz_version,
    image_fingerprint,
    render_dot,
    render_mermaid,
    render_with_dot,
    stamp_image,
)
from pullwake.lifecycle.diagram_dot import INITIAL_NODE, LEGEND_NODE
from pullwake.lifecycle.drawing import COLORS, drawing_of
from pullwake.lifecycle.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
DIAGRAMS = REPO / "diagrams"
SPEC = load_spec()
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz 'dot' is not installed")
STALE = "diagrams/ are stale: run `pullwake diagram` and commit the result"
STALE_ADVICE = ("diagrams are stale: the spec renders a different diagram now; run "
                "`pullwake diagram` and commit diagrams/")
IMAGES_ADVICE = ("images are out of date with the committed DOT source: run `pullwake "
                 "diagram` and commit diagrams/")
FAKE_VERSION = "99.1.0"


@functools.cache
def fresh(fmt: str) -> bytes:
    source = render_dot(SPEC)
    return source.encode() if fmt == "dot" else render_with_dot(source, fmt)


def changed_spec(tmp_path: Path) -> Path:
    text = Path(SPEC.path).read_text(encoding="utf-8")
    old = "BACKOFF_ELAPSED: {to: connecting}"
    assert text.count(old) == 1
    path = tmp_path / "changed.yaml"
    path.write_text(text.replace(old, "BACKOFF_ELAPSED: {to: streaming}"), encoding="utf-8")
    return path


def copy_of_diagrams(tmp_path: Path) -> Path:
    out = tmp_path / "diagrams"
    shutil.copytree(DIAGRAMS, out)
    return out


def fake_dot_dir(tmp_path: Path) -> Path:
    """A ``dot`` that claims another Graphviz version; it renders with the real one
    (when installed) and rewrites the version its SVG names, as another release would."""
    real = shutil.which("dot")
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    script = bindir / "dot"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import subprocess, sys
        if sys.argv[1:] == ["-V"]:
            sys.stderr.write("dot - graphviz version {FAKE_VERSION} (20990101.0000)\\n")
            sys.exit(0)
        out = subprocess.run([{real!r}, *sys.argv[1:]], input=sys.stdin.buffer.read(),
                             capture_output=True, check=True).stdout
        out = out.replace(b"graphviz version ", b"graphviz version {FAKE_VERSION} was ")
        sys.stdout.buffer.write(out)
        """), encoding="utf-8")
    script.chmod(0o755)
    return bindir


def run_cli(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PULLWAKE_SPEC"}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "pullwake", *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=REPO)


# ------------------------------------------------------- committed == fresh


def test_committed_dot_equals_a_fresh_render() -> None:
    assert (DIAGRAMS / "lifecycle.dot").read_text(encoding="utf-8") == render_dot(SPEC), STALE


@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_committed_images_are_renders_of_the_committed_dot(fmt: str) -> None:
    committed_dot = (DIAGRAMS / "lifecycle.dot").read_bytes()
    image = (DIAGRAMS / f"lifecycle.{fmt}").read_bytes()
    assert image_fingerprint(fmt, image) == dot_fingerprint(committed_dot), STALE


def test_diagram_check_passes_on_the_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "--check"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == f"{DIAGRAMS}: diagrams match the spec\n"


# ------------------------------------------- the gate across Graphviz versions


def test_gate_passes_with_another_graphviz_version_on_path(tmp_path: Path) -> None:
    fake = fake_dot_dir(tmp_path)
    path = f"{fake}{os.pathsep}{os.environ.get('PATH', '')}"
    assert subprocess.run(["dot", "-V"], capture_output=True, text=True,
                          env={**os.environ, "PATH": path}).stderr.startswith(
        f"dot - graphviz version {FAKE_VERSION}")
    proc = run_cli("diagram", "--check", path=path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{DIAGRAMS}: diagrams match the spec\n"
    made_by = graphviz_version() if HAVE_DOT else None
    if made_by is not None and made_by != FAKE_VERSION:
        assert (f"note: {DIAGRAMS / 'lifecycle.svg'}: rendered by Graphviz {made_by}, this "
                f"machine has {FAKE_VERSION}: images are not compared byte for byte, so this "
                "is fine") in proc.stderr.splitlines()


@needs_dot
def test_images_rendered_by_another_version_pass_the_gate(tmp_path: Path) -> None:
    fake = fake_dot_dir(tmp_path)
    out = tmp_path / "other"
    proc = run_cli("diagram", "--out", str(out), path=f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert proc.returncode == 0, proc.stderr
    svg = (out / "lifecycle.svg").read_bytes()
    assert f"graphviz version {FAKE_VERSION}".encode() in svg
    assert svg != (DIAGRAMS / "lifecycle.svg").read_bytes()  # different bytes...
    assert (out / "lifecycle.dot").read_bytes() == (DIAGRAMS / "lifecycle.dot").read_bytes()
    proc = run_cli("diagram", "--check", "--out", str(out))  # ...checked with the real dot
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("graphviz", ["real", "fake", "none"])
def test_gate_fails_on_a_real_dot_change_whatever_graphviz(graphviz: str, tmp_path: Path) -> None:
    if graphviz == "real" and not HAVE_DOT:
        pytest.skip("Graphviz 'dot' is not installed")
    out = copy_of_diagrams(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    python_dir = str(Path(sys.executable).parent)
    path = {"real": os.environ.get("PATH", ""),
            "fake": f"{fake_dot_dir(tmp_path)}{os.pathsep}{os.environ.get('PATH', '')}",
            "none": f"{empty}{os.pathsep}{python_dir}"}[graphviz]
    proc = run_cli("diagram", "--check", "--spec", str(changed_spec(tmp_path)), "--out",
                   str(out), path=path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("note: ")]
    install = ("" if graphviz != "none" else
               " (Graphviz 'dot' is not installed here: install it first, e.g. apt-get install "
               "graphviz, brew install graphviz, dnf install graphviz)")
    assert errors == [f"{out / f'lifecycle.{fmt}'}: differs from what the spec renders now"
                      for fmt in ("dot", "mmd")] + [STALE_ADVICE + install]


def test_gate_without_graphviz_checks_everything(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("dot") is None
    assert main(["diagram", "--check"]) == 0, capsys.readouterr().err
    # and it still catches an image that is not a render of the committed DOT
    out = copy_of_diagrams(tmp_path)
    (out / "lifecycle.png").write_bytes((DIAGRAMS / "lifecycle.png").read_bytes()[:-20])
    shutil.copy(DIAGRAMS / "lifecycle.svg", out / "lifecycle.svg")
    svg = (out / "lifecycle.svg").read_text(encoding="utf-8")
    (out / "lifecycle.svg").write_text(svg.replace(dot_fingerprint(fresh("dot")), "0" * 64),
                                       encoding="utf-8")
    capsys.readouterr()
    assert main(["diagram", "--check", "--out", str(out)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{out / 'lifecycle.svg'}: was rendered from another DOT source than the committed "
        "lifecycle.dot",
        IMAGES_ADVICE + " (Graphviz 'dot' is not installed here: install it first, e.g. "
        "apt-get install graphviz, brew install graphviz, dnf install graphviz)"]


# -------------------------------------------------------------- the check


def test_check_fails_after_a_spec_change_until_rendered(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = copy_of_diagrams(tmp_path)
    spec = changed_spec(tmp_path)
    formats = ["dot", "mmd", "svg", "png"] if HAVE_DOT else ["dot", "mmd"]

    assert main(["diagram", "--check", "--spec", str(spec), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{out / f'lifecycle.{fmt}'}: differs from what the spec renders now"
                   for fmt in ("dot", "mmd")] + [
        STALE_ADVICE + ("" if HAVE_DOT else err[-1][len(STALE_ADVICE):])]

    assert main(["diagram", "--spec", str(spec), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out / f"lifecycle.{f}")
                                                     for f in formats]
    assert ('"running.reconnecting" -> "running.streaming" [label=<<B>BACKOFF_ELAPSED</B>'
            in (out / "lifecycle.dot").read_text(encoding="utf-8"))
    if HAVE_DOT:
        assert main(["diagram", "--check", "--spec", str(spec), "--out", str(out)]) == 0
    # the checkout's diagrams are untouched
    assert (DIAGRAMS / "lifecycle.dot").read_bytes() != (out / "lifecycle.dot").read_bytes()


def test_dot_rewritten_without_images_fails_with_image_advice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = copy_of_diagrams(tmp_path)
    spec = changed_spec(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["diagram", "--spec", str(spec), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [str(out / "lifecycle.dot"), str(out / "lifecycle.mmd")]
    assert "Graphviz 'dot' not found" in captured.err and "text sources only" in captured.err
    assert main(["diagram", "--check", "--spec", str(spec), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [
        f"{out / f'lifecycle.{fmt}'}: was rendered from another DOT source than the committed "
        "lifecycle.dot" for fmt in ("svg", "png")]
    assert err[2].startswith(IMAGES_ADVICE + " (Graphviz 'dot' is not installed here")
    with pytest.raises(FileNotFoundError, match="apt-get install graphviz"):
        render_with_dot("digraph {}", "svg")


def test_check_reports_missing_files(tmp_path: Path) -> None:
    drift = check_diagrams(SPEC, tmp_path)
    assert [(d.path.name, d.problem, d.fails) for d in drift] == [
        ("lifecycle.dot", "missing", True), ("lifecycle.mmd", "missing", True),
        ("lifecycle.svg", "missing", True),
        ("lifecycle.png", "missing", True)]


def test_png_stamp_is_a_valid_chunk_and_round_trips() -> None:
    png = (DIAGRAMS / "lifecycle.png").read_bytes()
    pos, kinds = 8, []
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, body = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        kinds.append(kind)
        pos += 12 + length
    assert kinds[:2] == [b"IHDR", b"tEXt"] and kinds[-1] == b"IEND"
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    bare = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))
    assert image_fingerprint("png", bare) is None
    assert image_fingerprint("png", stamp_image("png", bare, "ab" * 32)) == "ab" * 32
    svg = b'<?xml version="1.0"?>\n<svg/>'
    assert image_fingerprint("svg", stamp_image("svg", svg, "cd" * 32)) == "cd" * 32
    assert image_fingerprint("svg", svg) is None


# ---------------------------------------------------------------- content


def _edges(dot: str) -> list[str]:
    return [line.strip() for line in dot.splitlines() if " -> " in line]


def test_initial_state_is_marked_and_the_graph_is_compound() -> None:
    dot = render_dot(SPEC)
    assert "compound=true" in dot
    assert f"{INITIAL_NODE} -> {SPEC.initial} [arrowsize=0.7]" in _edges(dot)
    # each composite state's initial child is marked too (transitions' own dot)
    for path, state in SPEC.states.items():
        if state.initial:
            assert f'{path} -> "{path}.{state.initial}" [arrowsize=0.7]' in _edges(dot)


def test_edges_declared_on_a_composite_state_are_clipped_at_its_border_in_the_layout() -> None:
    if not HAVE_DOT:
        pytest.skip("Graphviz 'dot' is not installed")
    data = layout(render_dot(SPEC))
    objects = data["objects"]
    cluster = next(o for o in objects if o["name"] == "cluster_running")
    x0, y0, x1, y1 = (float(v) for v in cluster["bb"].split(","))

    def on_border(x: float, y: float) -> bool:
        near = 3.0
        inside = x0 - near <= x <= x1 + near and y0 - near <= y <= y1 + near
        return inside and min(abs(x - x0), abs(x - x1), abs(y - y0), abs(y - y1)) <= near

    seen = set()
    for e in data["edges"]:
        label = e.get("label", "")
        tail, head = objects[e["tail"]]["name"], objects[e["head"]]["name"]
        points = [p for p in e["pos"].split() if not p.startswith(("e,", "s,"))]
        first = tuple(float(v) for v in points[0].split(","))
        end = next((p for p in e["pos"].split() if p.startswith("e,")), None)
        if "<B>START</B>" in label:
            assert (tail, head, e.get("lhead")) == ("stopped", "running", "cluster_running")
            assert end is not None
            ex, ey = (float(v) for v in end[2:].split(","))
            assert on_border(ex, ey), (ex, ey, cluster["bb"])  # the arrow ends at the border
            seen.add("START")
        if "<B>STOP</B>" in label:
            assert (tail, head, e.get("ltail")) == ("running", "stopping", "cluster_running")
            assert on_border(*first), (first, cluster["bb"])  # the edge leaves the border
            seen.add("STOP")
    assert seen == {"START", "STOP"}


@pytest.mark.parametrize("which", ["lifecycle", "review"])
def test_no_label_overlaps_another_label_or_a_node_in_dots_layout(which: str) -> None:
    if not HAVE_DOT:
        pytest.skip("Graphviz 'dot' is not installed")
    if which == "lifecycle":
        source = render_dot(SPEC)
    else:
        source = pytest.importorskip("test_review").edited_review_dot()
    labels, nodes, _ = boxes(layout(source))
    assert len(labels) >= (10 if which == "lifecycle" else 7) and len(nodes) >= 6
    assert collisions(source) == []


def test_the_collision_check_finds_the_stock_renders_collisions() -> None:
    """The check can fail: the stock transitions render collided (CONNECTED with the
    self-loop label)."""
    if not HAVE_DOT:
        pytest.skip("Graphviz 'dot' is not installed")
    # the stock render of this spec by transitions' Graphviz engine (before this diagram)
    stock = (REPO / "tests" / "data" / "stock_transitions_lifecycle.dot").read_text("utf-8")
    found = collisions(stock)
    assert any("CONNECTED" in f and "STREAM_RESET [internal]" in f for f in found), found


def test_every_branch_is_its_own_distinguishable_edge() -> None:
    drawing = drawing_of(SPEC)
    dot = render_dot(SPEC)
    drawn = [b for b in drawing.branches if b.kind == "transition"]
    labels = re.findall(r'label=<(<B>[A-Z_]+</B>.*?<BR ALIGN="LEFT"/>)>[ \]]', dot)
    assert len(labels) == len(drawn)
    assert len(set(labels)) == len(labels)  # no two branches read the same
    by_event: dict[tuple[str, str], list[str]] = {}
    for b, label in zip(drawn, labels, strict=True):
        assert label.startswith(f"<B>{b.event}</B>")
        for hook in (*b.before, *b.after):
            assert hook in label, (b, label)
        by_event.setdefault((b.source, b.event), []).append(label)
    # STREAM_END in streaming: two branches, told apart by guard and hooks
    end = by_event[("running.streaming", "STREAM_END")]
    assert end == ['<B>STREAM_END</B> [reset_pending]<BR ALIGN="LEFT"/>after: report_reset_error'
                   '<BR ALIGN="LEFT"/>',
                   '<B>STREAM_END</B> [else]<BR ALIGN="LEFT"/>after: report_stream_end'
                   '<BR ALIGN="LEFT"/>']
    # internal branches are listed inside their state, with their hooks: no self-loops
    assert not any(f'"{p}" -> "{p}"' in dot or f"{p} -> {p} " in dot for p in SPEC.states)
    streaming = _node_label_of(dot, "running.streaming")
    assert "<B>WAKE</B> (internal)" in streaming and "before: claim_wake" in streaming
    assert "<B>STREAM_RESET</B> [!reset_pending] (internal)" in streaming
    assert "<B>STREAM_RESET</B> [else] ignored: reset_pending" in streaming


def _node_label_of(dot: str, path: str) -> str:
    if SPEC.states[path].children:
        block = dot[dot.index(f"subgraph cluster_{path} {{"):]
        return block[:block.index("\n", block.index("label=<"))]
    quoted = f'"{path}"' if "." in path else path
    line = next(x for x in dot.splitlines() if x.strip().startswith(f"{quoted} [label=<"))
    return line


def test_each_state_shows_its_work_what_it_reports_and_the_backoff() -> None:
    dot = render_dot(SPEC)
    for path, state in SPEC.states.items():
        label = _node_label_of(dot, path)
        if state.owns:
            work = SPEC.work[state.owns]
            assert f"owns <B>{work.name}</B> ({work.kind}), reports:" in label, path
            for event in work.reports:
                assert event in label, (path, event)
            assert f"start {work.name}" in label and f"cancel {work.name}" in label
        for hook in (*state.on_enter, *state.on_exit):
            assert hook in label
        for t in SPEC.transitions:
            if t.source == path and t.kind == "ignored" and t.reason:
                assert f"ignores {t.reason}:" in label or f"ignored: {t.reason}" in label
    reconnecting = _node_label_of(dot, "running.reconnecting")
    assert ("backoff 1 s ×2 per attempt, cap 30 s, full jitter: up to 1, 2, 4, 8, 16, 30 … s; "
            "reset by START, CONNECTED") in re.sub(r"<BR ALIGN=\"LEFT\"/>", " ", reconnecting)
    assert f"{LEGEND_NODE} [label=<" in dot and "How to read this diagram" in dot


def test_dot_has_no_runtime_styling() -> None:
    dot = render_dot(SPEC)
    for marker in ("darksalmon", "azure", "peripheries=2", *COLORS.values()):
        assert marker not in dot


def test_dot_is_identical_across_processes_and_hash_seeds() -> None:
    code = "import sys; from pullwake.lifecycle.diagram import render_dot, render_mermaid; " \
           "from pullwake.lifecycle.spec import load_spec; s = load_spec(); " \
           "sys.stdout.write(render_dot(s) + render_mermaid(s))"
    outs = []
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        env.pop("PULLWAKE_SPEC", None)
        outs.append(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                   text=True, check=True, env=env, timeout=60).stdout)
    assert outs[0] == outs[1] == render_dot(SPEC) + render_mermaid(SPEC)


# ---------------------------------------------------------------- Mermaid


def test_committed_mermaid_equals_a_fresh_render() -> None:
    assert (DIAGRAMS / "lifecycle.mmd").read_text(encoding="utf-8") == render_mermaid(SPEC), STALE


def test_mermaid_is_a_state_diagram_of_the_same_machine() -> None:
    mmd = render_mermaid(SPEC)
    lines = mmd.splitlines()
    assert lines[:4] == ["---", f"title: {SPEC.name} (machine_spec.yaml)", "---",
                         "stateDiagram-v2"]
    assert "  [*] --> stopped" in lines and "    [*] --> running__connecting" in lines
    edges = [x.strip() for x in lines if " --> " in x and "[*]" not in x]
    drawn = [b for b in drawing_of(SPEC).branches if b.kind == "transition"]
    assert len(edges) == len(drawn)
    for b, edge in zip(drawn, edges, strict=True):
        src, dst = b.source.replace(".", "__"), (b.dest or "").replace(".", "__")
        assert edge.startswith(f"{src} --> {dst} : {b.event}"), (b, edge)
    assert "running__streaming : WAKE (internal) / before claim_wake" in mmd
    assert ("running__reconnecting : owns backoff_timer (timer), reports BACKOFF_ELAPSED"
            in mmd)
    assert 'state "running - owns heartbeat (task), reports STREAM_RESET" as running' in mmd
    for line in lines[4:]:
        body = line.split(" : ", 1)[1] if " : " in line else ""
        assert ";" not in body and "#" not in body and ":" not in body, line


def test_readme_embeds_the_committed_mermaid() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("```mermaid\n") + len("```mermaid\n"):]
    block = block[:block.index("```\n")]
    assert block == (DIAGRAMS / "lifecycle.mmd").read_text(encoding="utf-8"), (
        "README.md's mermaid block is stale: paste diagrams/lifecycle.mmd (pullwake diagram "
        "prints nothing else to do)")
