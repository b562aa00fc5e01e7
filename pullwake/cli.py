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

from .errors import SpecError, SpecErrors

__all__ = ["main"]


def _default_diagram_dir() -> Path:
    here = Path(__file__).resolve().parent
    checkout = here.parent / "diagrams"
    return checkout if checkout.is_dir() else Path("diagrams")


def _load(path: str | None):  # type: ignore[no-untyped-def]
    from .spec import load_spec

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
    from .table import compute_table

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

    from .diagram import TEXT_FORMATS, check_advice, check_diagrams, render_diagrams

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pullwake",
        description="Resilient pull-wake workers for Durable Streams servers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check machine_spec.yaml; exit 1 listing every problem")
    p.add_argument("--spec", help="spec file (default: the packaged/checkout spec)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("table", help="print the full (leaf state x event) transition table")
    p.add_argument("--spec")
    p.add_argument("--format", choices=("markdown", "json", "lines"), default="markdown")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("diagram", help="render diagrams/lifecycle.{dot,svg,png} from the spec")
    p.add_argument("--spec")
    p.add_argument("--out", help="output directory (default: the checkout's diagrams/)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when the committed diagrams differ from a fresh render")
    p.set_defaults(func=cmd_diagram)

    try:
        from .cli_run import add_run_commands
    except ImportError:  # pragma: no cover - run/demo land with the worker
        pass
    else:
        add_run_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
