"""The command line: ``pullwake validate|table|diagram|review|check|run|demo|subscriptions``.

This layer owns argument parsing, the run options (:mod:`.options`: flags,
environment and TOML resolved into one value), exit codes and what a command
prints. It builds a :class:`pullwake.Worker` and runs it; it owns no
behaviour of the worker. Nothing in the package imports it except
``python -m pullwake``.
"""

from pullwake.cli.main import main

__all__ = ["main"]
