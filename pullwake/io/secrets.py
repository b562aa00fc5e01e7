"""The secrets one HTTP client scrubs from text: bounded, O(1) per request.

This module owns :class:`Secrets` (configured header values *kept*, the most
recent :attr:`Secrets.keep_limit`; values scoped to a piece of work *held*
while it runs, e.g. a claim token for the life of its wake) and
:func:`secret_values` (the secret-looking parts of header values). It does
no I/O; :class:`pullwake.io.http.HttpClient` owns one per runner.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

from pullwake.errors import redact_text

__all__ = ["MIN_SECRET", "Secrets", "secret_values"]

#: Shorter values are not treated as secrets (they would scrub ordinary words).
MIN_SECRET = 4


def secret_values(headers: Mapping[str, str]) -> Iterator[str]:
    """The secret-looking parts of header values: each value, and ``xyz`` of ``Bearer xyz``."""
    for value in headers.values():
        if isinstance(value, str) and len(value) >= MIN_SECRET:
            yield value
            if " " in value:  # "Bearer xyz": the credential alone too
                cred = value.split(" ", 1)[1]
                if len(cred) >= MIN_SECRET:
                    yield cred


class Secrets:
    """The secrets one client scrubs from text; bounded however long it runs.

    Two kinds, so the set never grows with the number of requests or wakes:

    - *kept*: values of configured headers (a mapping, or what a provider
      returns). A provider that rotates credentials yields new values: the
      :attr:`keep_limit` most recently seen are kept, the oldest forgotten.
    - *held*: values scoped to a piece of work (a claim token for the life of
      its wake, a request's own headers for that request), counted, and
      forgotten when the last holder lets go (:meth:`hold`).

    Adding or forgetting costs O(1); the snapshot (:meth:`snapshot`, iteration)
    and the compiled pattern behind :meth:`scrub` are rebuilt only after the
    set changed, and only when something reads them (error paths).
    """

    __slots__ = ("_held", "_kept", "_pattern", "_snapshot", "keep_limit")

    def __init__(self, *, keep_limit: int = 64) -> None:
        self.keep_limit = keep_limit
        self._kept: dict[str, None] = {}  # insertion-ordered: oldest first
        self._held: dict[str, int] = {}
        self._snapshot: tuple[str, ...] | None = None
        self._pattern: re.Pattern[str] | None = None

    def keep(self, values: Iterable[str]) -> None:
        """Remember ``values`` (most recent last); beyond the limit the oldest go."""
        kept = self._kept
        for value in values:
            if value in kept:
                if next(reversed(kept)) != value:  # keep recency order
                    del kept[value]
                    kept[value] = None
                continue
            kept[value] = None
            if len(kept) > self.keep_limit:
                del kept[next(iter(kept))]
            self._changed()

    def hold(self, values: Iterable[str]) -> _Hold:
        """Scrub ``values`` while the block runs; forget them after (unless held elsewhere)."""
        return _Hold(self, tuple(values))

    def _changed(self) -> None:
        self._snapshot = None
        self._pattern = None

    def snapshot(self) -> tuple[str, ...]:
        """Every secret now known, longest first (rebuilt only after a change)."""
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = tuple(sorted({*self._kept, *self._held}, key=len,
                                                 reverse=True))
        return snap

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        return len(self.snapshot())

    def __contains__(self, value: object) -> bool:
        return value in self._kept or value in self._held

    def __repr__(self) -> str:  # never the values themselves
        return f"<Secrets: {len(self._kept)} kept, {len(self._held)} held>"

    def scrub(self, text: str) -> str:
        """``text`` with every known secret and any ``Bearer xyz`` credential replaced."""
        text = redact_text(text)
        pattern = self._pattern
        if pattern is None:
            snap = self.snapshot()
            if not snap:
                return text
            pattern = self._pattern = re.compile("|".join(map(re.escape, snap)))
        return pattern.sub("***", text)


class _Hold:
    """``with secrets.hold(values):`` (a class, not a generator: it wraps requests).

    Entering counts each value held once more, exiting once less; a value no
    longer held (and not kept) is forgotten: the snapshot and pattern are
    rebuilt when next read.
    """

    __slots__ = ("_owner", "_vals")

    def __init__(self, owner: Secrets, vals: tuple[str, ...]) -> None:
        self._owner = owner
        self._vals = vals

    def __enter__(self) -> None:
        owner = self._owner
        held = owner._held
        for v in self._vals:
            if v in held:
                held[v] += 1
            else:
                held[v] = 1
                if v not in owner._kept:
                    owner._snapshot = owner._pattern = None

    def __exit__(self, *exc: object) -> None:
        owner = self._owner
        held = owner._held
        for v in self._vals:
            n = held[v] - 1
            if n:
                held[v] = n
            else:
                del held[v]
                if v not in owner._kept:
                    owner._snapshot = owner._pattern = None
