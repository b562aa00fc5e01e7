"""Lack-of-progress bounds for one answer: :class:`ProgressWindow` (no I/O, no clock).

Split from :mod:`pullwake.protocol.read` (which re-exports it); the read
shells (:mod:`pullwake.io.areader`, :mod:`pullwake.io.reader`) keep one per
answer read in pieces and pass it the time themselves.
"""

from __future__ import annotations

__all__ = ["PROGRESS_BYTES", "ProgressWindow"]

#: Bytes that count as progress within one idle window (see ProgressWindow).
PROGRESS_BYTES = 4096


class ProgressWindow:
    """Lack-of-progress bound for one answer (no clock: callers pass ``now``).

    A read is stalled when, ``idle_s`` after the first byte of an unfinished
    unit (a message, an SSE event, an answer), fewer than
    :data:`PROGRESS_BYTES` arrived and nothing completed. Silence between
    units is not counted (a long-poll or an idle SSE stream waits legitimately;
    the per-read idle timeout bounds that), and a slow but steady link keeps
    going however long a large answer takes (issue 14, classes 5 and 8).
    """

    __slots__ = ("_bytes", "_since", "idle_s")

    def __init__(self, idle_s: float | None) -> None:
        self.idle_s = idle_s
        self._since: float | None = None
        self._bytes = 0

    def update(self, now: float, nbytes: int, completed: bool) -> bool:
        """Account for one read; True when the answer is stalled."""
        if completed or self.idle_s is None:
            self._since, self._bytes = None, 0
            return False
        if self._since is None:
            self._since, self._bytes = now, nbytes
            return False
        self._bytes += nbytes
        if self._bytes >= PROGRESS_BYTES:
            self._since, self._bytes = now, 0
            return False
        return now - self._since > self.idle_s
