"""Bounded per-key tables (issue 14, class 8): memory that keys from a server cannot grow.

This module owns :class:`BoundedTable`, a mapping with a fixed capacity that
forgets its least recently written key when full and counts what it forgot.
Tables keyed by names a server chooses (stream paths in claim answers) use it,
so thousands of never-seen names cost at most ``capacity`` entries. What an
eviction costs is the owner's to decide and document (the worker's recovery
ledger: a forgotten stream is recovered from its beginning, so at-least-once
holds with more repeats, never a loss).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Generic, TypeVar, overload

__all__ = ["BoundedTable"]

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class BoundedTable(MutableMapping[K, V], Generic[K, V]):
    """At most ``capacity`` entries; writing a new key when full evicts the oldest."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.evicted = 0
        self._data: OrderedDict[K, V] = OrderedDict()

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    @overload
    def get(self, key: K, /) -> V | None: ...

    @overload
    def get(self, key: K, default: V | T, /) -> V | T: ...

    def get(self, key: K, default: object = None, /) -> object:
        # (The mixin's get goes through __getitem__ and KeyError: a call more per read.)
        return self._data.get(key, default)

    def __setitem__(self, key: K, value: V) -> None:
        data = self._data
        if key in data:
            data.move_to_end(key)
        elif len(data) >= self.capacity:
            data.popitem(last=False)
            self.evicted += 1
        data[key] = value

    def __delitem__(self, key: K) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<BoundedTable {len(self)}/{self.capacity}, {self.evicted} evicted>"
