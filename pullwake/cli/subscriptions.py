"""``pullwake subscriptions list|show|delete``: a worker's subscriptions on a server.

This module owns these commands only. The calls are
:class:`pullwake.runtime.subscriptions.SubscriptionClient`'s (PROTOCOL.md §6.3: ``GET``
and ``DELETE`` of ``{root}/__ds/subscriptions/{id}``); the options are
:mod:`pullwake.cli.options`' (the same flags, variables and ``--config`` file
as ``pullwake run``).

The protocol has no route listing every subscription, so ``list`` shows the
subscriptions the configuration declares and what the server knows of each.

Exit codes: 0 done; 1 the server failed, or ``show`` found no such
subscription; 2 bad arguments, including a ``--server`` that is not a stream root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pullwake.cli.options import RunOptions, add_arguments, resolve
from pullwake.runtime.config import SubscriptionConfig

__all__ = ["add_subscription_commands"]

_CONNECTION = ("server", "header", "header_env", "token_env", "request_timeout", "verify_tls")
_DECLARED = (*_CONNECTION, "subscription", "pattern", "stream", "wake_stream", "claim_lease")


def _differences(sub: SubscriptionConfig, wake_stream: str, body: dict[str, Any]) -> list[str]:
    out = []
    if (body.get("pattern") or None) != sub.pattern:
        out.append(f"pattern {body.get('pattern')!r} on the server, {sub.pattern!r} here")
    if sub.streams:
        theirs = {s.get("path") for s in body.get("streams", []) if isinstance(s, dict)}
        missing = sorted(set(sub.streams) - theirs)
        if missing:
            out.append(f"streams {missing} not linked on the server")
    if str(body.get("wake_stream", "")).strip("/") != wake_stream.strip("/"):
        out.append(f"wake stream {body.get('wake_stream')!r} on the server, "
                   f"{wake_stream!r} here")
    lease = body.get("lease_ttl_ms")
    if lease != round(sub.claim_lease * 1000):
        shown = f"{lease / 1000:g} s" if isinstance(lease, (int, float)) else repr(lease)
        out.append(f"claim lease {shown} on the server, {sub.claim_lease:g} s here")
    return out


def _summary(body: dict[str, Any]) -> str:
    streams = [s for s in body.get("streams", []) if isinstance(s, dict)]
    what = (f"pattern {body['pattern']!r}" if body.get("pattern")
            else f"{len(streams)} explicit stream(s)")
    lease = body.get("lease_ttl_ms")
    lease_text = f"{lease / 1000:g} s" if isinstance(lease, (int, float)) else "?"
    return (f"{body.get('status', '?')}; {what}; wake stream {body.get('wake_stream')!r}; "
            f"claim lease {lease_text}; {len(streams)} linked stream(s)")


async def _list(client: Any, http: Any, opts: RunOptions, _: argparse.Namespace) -> int:
    config = opts.config
    assert config is not None  # `list` declares subscriptions
    for sub in config.subscriptions:
        body = await client.get_subscription(http, sub.id)
        if body is None:
            print(f"{sub.id}: not on the server (a worker creates it when it starts)")
            continue
        diffs = _differences(sub, config.wake_stream, body)
        verdict = ("matches this configuration" if not diffs else
                   "DIFFERS from this configuration: " + "; ".join(diffs)
                   + f" (a worker would fail with SUBSCRIPTION_ALREADY_EXISTS; "
                     f"`pullwake subscriptions delete --server {opts.server} {sub.id}` "
                     "removes it)")
        print(f"{sub.id}: on the server ({_summary(body)}); {verdict}")
    return 0


async def _show(client: Any, http: Any, opts: RunOptions, args: argparse.Namespace) -> int:
    rc = 0
    for sub_id in args.ids:
        body = await client.get_subscription(http, sub_id)
        if body is None:
            print(f"pullwake subscriptions show: no subscription {sub_id!r} at {opts.server}",
                  file=sys.stderr)
            rc = 1
            continue
        print(json.dumps(body, indent=2, sort_keys=True))
    return rc


async def _delete(client: Any, http: Any, opts: RunOptions, args: argparse.Namespace) -> int:
    for sub_id in args.ids:
        body = await client.get_subscription(http, sub_id)
        if body is None:
            print(f"{sub_id}: not on the server (nothing to delete)")
            continue
        await client.delete_subscription(http, sub_id)
        acked = ", ".join(f"{s.get('path')}@{s.get('acked_offset')}"
                          for s in body.get("streams", []) if isinstance(s, dict))
        print(f"deleted {sub_id} ({_summary(body)}); its acked offsets were: "
              f"{acked or 'none'}")
    return 0


Action = Callable[[Any, Any, RunOptions, argparse.Namespace], Awaitable[int]]


async def _with_client(opts: RunOptions, first_id: str, action: Action,
                       args: argparse.Namespace) -> int:
    from pullwake.errors import PullwakeError, ServerRootError
    from pullwake.io.clock import LoopClock
    from pullwake.io.http import HttpClient
    from pullwake.runtime.subscriptions import SubscriptionClient

    # the same credentials as `pullwake run` (resolved with the options)
    runner = opts.runner
    assert runner is not None  # resolve() always builds it
    http = HttpClient(headers=runner.headers, clock=LoopClock(),
                      request_timeout=runner.request_timeout, verify_tls=runner.verify_tls)
    client = SubscriptionClient(opts.server)
    try:
        await client.verify_root(http, first_id)
        return await action(client, http, opts, args)
    except ServerRootError as exc:
        print(f"pullwake subscriptions: error: --server: {exc}", file=sys.stderr)
        return 2
    except PullwakeError as exc:
        print(f"pullwake subscriptions: {http.scrub(str(exc))}", file=sys.stderr)
        return 1
    finally:
        await http.close()


def _command(action: Action, only: Sequence[str]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            opts = resolve(args, only=only)
        except ValueError as exc:
            args.parser.error(str(exc))
        ids = getattr(args, "ids", None) or [
            s.id for s in (opts.config.subscriptions if opts.config else ())]
        return asyncio.run(_with_client(opts, ids[0], action, args))

    return run


def add_subscription_commands(sub: Any) -> None:
    p = sub.add_parser(
        "subscriptions", help="list, show or delete subscriptions on a server",
        description="Subscriptions on a Durable Streams server (PROTOCOL.md §6.3). The "
                    "server is given like for `pullwake run` (flags, PULLWAKE_* variables "
                    "or --config FILE).")
    cmds = p.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    c = cmds.add_parser(
        "list", help="the subscriptions this configuration declares, as the server has them",
        description="For every subscription declared by --config FILE or --subscription "
                    "(the protocol has no route listing all of a server's subscriptions): "
                    "is it on the server, and does it match this configuration?")
    add_arguments(c, only=_DECLARED)
    c.set_defaults(func=_command(_list, _DECLARED), parser=c)

    c = cmds.add_parser("show", help="print subscriptions as the server has them (JSON)",
                        description="GET each subscription and print it; exit 1 if one is "
                                    "not on the server.")
    c.add_argument("ids", nargs="+", metavar="ID", help="subscription id")
    add_arguments(c, only=_CONNECTION)
    c.set_defaults(func=_command(_show, _CONNECTION), parser=c)

    c = cmds.add_parser(
        "delete", help="delete subscriptions (their acked offsets are lost)",
        description="DELETE each subscription; its acked offsets are printed first, so "
                    "they can be found again. A subscription that is not on the server is "
                    "reported and skipped (exit 0).")
    c.add_argument("ids", nargs="+", metavar="ID", help="subscription id")
    add_arguments(c, only=_CONNECTION)
    c.set_defaults(func=_command(_delete, _CONNECTION), parser=c)
