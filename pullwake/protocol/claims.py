"""The wire shape of a claim answer (PROTOCOL.md §7.2), read type by type (no I/O).

This module owns :class:`Claim` (a granted claim: wake id, generation, the
token, the claimed streams, the lease) and :class:`ClaimedStream` (one stream's
``(acked_offset, tail_offset]`` range), :meth:`Claim.parse` (a field of the
wrong type is named in a :class:`~pullwake.errors.ControlPlaneError`; a
well-formed answer is read in one pass) and :class:`SkipCode` (a claim that
found nothing to do). :mod:`pullwake.runtime.subscriptions` makes the calls.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pullwake.errors import ControlPlaneError

__all__ = ["Claim", "ClaimFields", "ClaimedStream", "SkipCode", "claim_fields"]


class SkipCode(str):
    """A claim's skip code; for ``ALREADY_CLAIMED``, the holder the server named."""

    holder: str | None

    def __new__(cls, code: str, *, holder: str | None = None) -> SkipCode:
        self = super().__new__(cls, code)
        self.holder = holder
        return self


@dataclass(frozen=True)
class ClaimedStream:
    """A stream of a claimed wake: handle messages in ``(acked_offset, tail_offset]``."""

    path: str
    acked_offset: str
    tail_offset: str
    has_pending: bool = True


_REQUIRED: Any = object()
_KINDS = {str: "a string", int: "an integer", bool: "a boolean", list: "an array"}


def _field(obj: Mapping[str, Any], name: str, kind: type, *, where: str = "",
           default: Any = _REQUIRED, status: int | None = None) -> Any:
    """``obj[name]`` if it has type ``kind`` (a bool is not an integer), else a named error."""
    if name not in obj:
        if default is _REQUIRED:
            raise ControlPlaneError(f"claim answer field '{where}{name}' is missing",
                                    operation="claim", status=status)
        return default
    value = obj[name]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ControlPlaneError(f"claim answer field '{where}{name}' must be {_KINDS[kind]}, "
                                f"got {type(value).__name__}", operation="claim", status=status)
    return value


@dataclass(frozen=True)
class Claim:
    """A granted claim: the token authorises ack and release until the lease ends."""

    subscription_id: str
    wake_id: str
    generation: int
    token: str = field(repr=False)
    streams: tuple[ClaimedStream, ...]
    lease_ttl_ms: int
    #: Streams with pending work the answer listed beyond ``max_claim_streams``:
    #: not handed over now; their work stays pending for the next wake.
    deferred_streams: int = 0

    @classmethod
    def parse(cls, subscription_id: str, body: Mapping[str, Any], *,
              status: int | None = None, deferred_streams: int = 0) -> Claim:
        """Read a claim answer, type by type; a field that is wrong is named in the error.

        ``status`` (of the answer) goes on the error: the server did answer.
        """
        fast = _fast_claim(subscription_id, body, deferred_streams)
        if fast is not None:
            return fast
        streams = []  # field by field, naming the first one that is wrong
        for i, s in enumerate(_field(body, "streams", list, default=[], status=status)):
            if not isinstance(s, Mapping):
                raise ControlPlaneError(f"claim answer field 'streams[{i}]' must be an "
                                        f"object, got {type(s).__name__}", operation="claim",
                                        status=status)
            where = f"streams[{i}]."
            streams.append(ClaimedStream(
                path=_field(s, "path", str, where=where, status=status),
                acked_offset=_field(s, "acked_offset", str, where=where, status=status),
                tail_offset=_field(s, "tail_offset", str, where=where, status=status),
                has_pending=_field(s, "has_pending", bool, where=where, default=True,
                                   status=status)))
        return cls(subscription_id=subscription_id,
                   wake_id=_field(body, "wake_id", str, status=status),
                   generation=_field(body, "generation", int, status=status),
                   token=_field(body, "token", str, status=status), streams=tuple(streams),
                   lease_ttl_ms=_field(body, "lease_ttl_ms", int, default=30_000,
                                       status=status),
                   deferred_streams=deferred_streams)

    def fence(self) -> dict[str, Any]:
        return {"wake_id": self.wake_id, "generation": self.generation}


class ClaimFields(NamedTuple):
    """A claim answer's fields read at once: ``Claim(subscription_id, *fields)``."""

    wake_id: str
    generation: int
    token: str
    streams: tuple[ClaimedStream, ...]
    lease_ttl_ms: int

    def __repr__(self) -> str:  # never the token
        return f"ClaimFields(wake_id={self.wake_id!r}, generation={self.generation!r})"


def claim_fields(value: Any, max_streams: int) -> ClaimFields | None:
    """What reading a small answer item by item and :meth:`Claim.parse` give, from its
    decoded ``value`` (:func:`~pullwake.protocol.answers.decode_small`), when the
    answer is an object whose fields all have their exact types, that lists at most
    ``max_streams`` streams (all kept, in order) and has no dotted key; else None
    (the general path decides, and names what is wrong)."""
    if type(value) is not dict:
        return None
    raw = value.get("streams", [])
    wake_id, gen, token = value.get("wake_id"), value.get("generation"), value.get("token")
    ttl = value.get("lease_ttl_ms", 30_000)
    if type(raw) is not list or len(raw) > max_streams or type(wake_id) is not str \
            or type(gen) is not int or type(token) is not str or type(ttl) is not int:
        return None
    for key in value:
        if not key or "." in key:
            return None
    streams = []
    for s in raw:
        if type(s) is not dict:
            return None
        path, acked, tail = s.get("path"), s.get("acked_offset"), s.get("tail_offset")
        pending = s.get("has_pending", True)
        if type(path) is not str or type(acked) is not str or type(tail) is not str \
                or type(pending) is not bool:
            return None
        for key in s:
            if "." in key:
                return None
        streams.append(ClaimedStream(path, acked, tail, pending))
    return ClaimFields(wake_id, gen, token, tuple(streams), ttl)


def _fast_claim(subscription_id: str, body: Mapping[str, Any],
                deferred_streams: int) -> Claim | None:
    """:meth:`Claim.parse` of a well-formed answer (:func:`claim_fields`, the streams
    already bounded by the reader), or None: then the field-by-field path names
    what is wrong."""
    fields = claim_fields(body, max_streams=sys.maxsize)
    if fields is None:
        return None
    return Claim(subscription_id, *fields, deferred_streams=deferred_streams)
