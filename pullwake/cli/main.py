"""The ``pullwake`` command line: validate, table, diagram, run, demo.

This module owns argument parsing and exit codes only. Each subcommand calls
into the library (spec, table, diagram, worker, demo); nothing here decides
lifecycle behaviour. Exit codes: 0 success, 1 a check failed (invalid spec,
drifted diagrams), 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pullwake.errors import SpecError, SpecErrors

__all__ = ["main"]


def _version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pullwake")
    except PackageNotFoundError:
        from pullwake._version import __version__

        return __version__


def _default_diagram_dir() -> Path:
    here = Path(__file__).resolve().parent.parent  # pullwake/
    checkout = here.parent / "diagrams"
    return checkout if checkout.is_dir() else Path("diagrams")


def _load(path: str | None):  # type: ignore[no-untyped-def]
    from pullwake.lifecycle.spec import load_spec

    return load_spec(path)


def _print_spec_errors(exc: SpecError) -> None:
    errors = exc.errors if isinstance(exc, SpecErrors) else [exc]
    print(f"invalid spec: {len(errors)} problem(s)", file=sys.stderr)
    for e in errors:
        print(f"  {e}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        spec = _load(args.spec)
    except SpecError as exc:
        _print_spec_errors(exc)
        return 1
    leaves = len(spec.leaf_states)
    print(f"{spec.path}: valid ({len(spec.states)} states, {leaves} leaf states, "
          f"{len(spec.events)} events, {leaves * len(spec.events)} pairs decided)")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from pullwake.lifecycle.table import compute_table

    try:
        spec = _load(args.spec)
    except SpecError as exc:
        _print_spec_errors(exc)
        return 1
    table = compute_table(spec)
    if args.format == "json":
        print(table.to_json())
    elif args.format == "lines":
        sys.stdout.write(table.to_lines())
    else:
        sys.stdout.write(table.to_markdown())
    return 0


def cmd_diagram(args: argparse.Namespace) -> int:
    import shutil

    from pullwake.lifecycle.diagram import (
        TEXT_FORMATS,
        check_advice,
        check_diagrams,
        render_diagrams,
    )

    try:
        spec = _load(args.spec)
    except SpecError as exc:
        _print_spec_errors(exc)
        return 1
    out = Path(args.out) if args.out else _default_diagram_dir()
    if args.check:
        findings = check_diagrams(spec, out)
        for d in findings:
            print(f"{d.path}: {d.problem}" if d.fails else f"note: {d.path}: {d.problem}",
                  file=sys.stderr)
        advice = check_advice(findings, have_dot=shutil.which("dot") is not None)
        if advice is not None:
            print(advice, file=sys.stderr)
            return 1
        print(f"{out}: diagrams match the spec")
        return 0
    try:
        written = render_diagrams(spec, out)
    except FileNotFoundError as exc:
        written = render_diagrams(spec, out, formats=TEXT_FORMATS)
        print(f"warning: {exc}; wrote the text sources only (the images still show the "
              "old diagram: `pullwake diagram --check` fails until they are re-rendered)",
              file=sys.stderr)
    for p in written:
        print(p)
    return 0


# ------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    from pullwake.lifecycle.check import run_checks

    try:
        spec = _load(args.spec)
    except SpecError as exc:
        _print_spec_errors(exc)
        return 1
    result = run_checks(spec)
    (sys.stdout if result.ok else sys.stderr).write(result.report())
    return 0 if result.ok else 1


def add_check_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "check", help="model-check the lifecycle; exit 1 with a counterexample per failure",
        description="Explore every reachable configuration of the loaded machine and check: "
        "STOP then only owned work's events reaches the rest state; every state can reach "
        "it; no dead end; every event a work reports is decided where it can arrive; owned "
        "work is cancelled on every exit; plus the spec's own properties. Exit 0 when all "
        "pass, 1 otherwise (each failure with a shortest counterexample path).")
    p.add_argument("--spec", help="spec file (default: the packaged/checkout spec)")
    p.set_defaults(func=cmd_check)


# ------------------------------------------------------------------ review


def _git_spec_text(rev: str, spec_path: Path) -> tuple[str, str]:
    """(label, text) of ``spec_path`` at git revision ``rev``. Raises ValueError."""
    import subprocess

    where = spec_path.resolve().parent
    try:
        top = subprocess.run(["git", "-C", str(where), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise ValueError("git is not installed: --base needs git") from exc
    if top.returncode != 0:
        raise ValueError(f"{where} is not in a git checkout: {top.stderr.strip()}")
    rel = spec_path.resolve().relative_to(Path(top.stdout.strip()).resolve()).as_posix()
    shown = subprocess.run(["git", "-C", top.stdout.strip(), "show", f"{rev}:{rel}"],
                           capture_output=True, timeout=60)
    if shown.returncode != 0:
        raise ValueError(f"cannot read {rel} at {rev}: "
                         f"{shown.stderr.decode(errors='replace').strip()}")
    return f"{rev}:{rel}", shown.stdout.decode("utf-8", errors="replace")


def _review_side(label: str, *, path: Path | None = None, text: str | None = None):  # type: ignore[no-untyped-def]
    from pullwake.lifecycle.review import ReviewSide
    from pullwake.lifecycle.spec import load_spec, parse_spec

    try:
        if text is not None:
            from pullwake.lifecycle.effects import effect_hook_names

            spec = parse_spec(text, path=label, hooks=effect_hook_names())
        else:
            spec = load_spec(path)
    except SpecError as exc:
        return ReviewSide.of(label, error=exc)
    return ReviewSide.of(label, spec)


def cmd_review(args: argparse.Namespace) -> int:
    from pullwake.lifecycle.diagram import render_with_dot
    from pullwake.lifecycle.spec import default_spec_path

    specs = list(args.specs)
    if args.base is not None:
        if len(specs) > 1:
            print("pullwake review: with --base give at most one spec (the working-tree file)",
                  file=sys.stderr)
            return 2
        head_path = Path(specs[0] if specs else (args.spec or default_spec_path()))
        try:
            label, text = _git_spec_text(args.base, head_path)
        except ValueError as exc:
            print(f"pullwake review: {exc}", file=sys.stderr)
            return 2
        base = _review_side(label, text=text)
        head = _review_side(str(specs[0]) if specs else _display(head_path), path=head_path)
    elif len(specs) == 2:
        base = _review_side(specs[0], path=Path(specs[0]))
        head = _review_side(specs[1], path=Path(specs[1]))
    else:
        print("pullwake review: give two specs (OLD NEW) or --base REV [SPEC]", file=sys.stderr)
        return 2
    from pullwake.lifecycle.review import review

    result = review(base, head)
    svg_name: str | None = None
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if result.drawing is not None:
            (out / "review.mmd").write_text(result.mermaid(), encoding="utf-8")
            (out / "review.dot").write_text(result.dot(), encoding="utf-8")
            try:
                (out / "review.svg").write_bytes(render_with_dot(result.dot(), "svg"))
                svg_name = str(out / "review.svg")
            except FileNotFoundError as exc:
                print(f"warning: {exc}; wrote review.dot and review.mmd, no SVG",
                      file=sys.stderr)
        (out / "review.md").write_text(result.markdown(svg=svg_name), encoding="utf-8")
    sys.stdout.write(result.markdown(svg=svg_name))
    return result.exit_code


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def add_review_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "review", help="review a lifecycle change: table diff and highlighted diagram",
        description="Compare two lifecycle specs (OLD NEW, or --base REV against the working "
        "tree) and print a Markdown review: every changed (state x event) cell, other spec "
        "changes, and the diagram with the changes highlighted (Mermaid inline; SVG with "
        "--out). Exit 0: no transition changed; 1: transitions changed; 2: usage error "
        "(bad arguments, git revision or file not found); 3: a spec does not validate.")
    p.add_argument("specs", nargs="*", metavar="SPEC",
                   help="OLD NEW spec files; with --base, the working-tree spec (default: the "
                   "checkout's machine_spec.yaml)")
    p.add_argument("--base", metavar="REV",
                   help="git revision of the old spec, e.g. origin/main (same file path)")
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--out", metavar="DIR",
                   help="also write review.md, review.mmd, review.dot and review.svg here")
    p.set_defaults(func=cmd_review)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pullwake",
        description="Resilient pull-wake workers for Durable Streams servers.",
    )
    parser.add_argument("--version", action="version", version=f"pullwake {_version()}",
                        help="print pullwake's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check machine_spec.yaml; exit 1 listing every problem")
    p.add_argument("--spec", help="spec file (default: the packaged/checkout spec)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("table", help="print the full (leaf state x event) transition table")
    p.add_argument("--spec", help="spec file (default: the packaged/checkout spec)")
    p.add_argument("--format", choices=("markdown", "json", "lines"), default="markdown",
                   help="markdown (default), json, or lines (the snapshot format)")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("diagram", help="render diagrams/lifecycle.{dot,svg,png} from the spec")
    p.add_argument("--spec", help="spec file (default: the packaged/checkout spec)")
    p.add_argument("--out", help="output directory (default: the checkout's diagrams/)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when the committed diagrams differ from a fresh render")
    p.set_defaults(func=cmd_diagram)

    add_check_command(sub)
    add_review_command(sub)

    from pullwake.cli.run import add_run_commands
    from pullwake.cli.subscriptions import add_subscription_commands

    add_run_commands(sub)
    add_subscription_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
