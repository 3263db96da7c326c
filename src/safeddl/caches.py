"""Caches keyed by statement text, bounded by entries and by bytes.

Every statement an application sends passes the guard, so what the guard remembers
per text (the reading, the decision, what the lock ledger needs) is looked up on the hot
path, and must not grow without bound: an application that inlines literals sends
millions of distinct texts, some of them large. :class:`TextCache` is a ``dict`` (so a
lookup stays one C-level dictionary operation) that counts what its entries cost,
an estimate of the memory they hold (the text, its size times a factor for what was
built from it, plus a fixed overhead per entry), and forgets its oldest entries when
either bound is passed. An entry that would cost more than a sixteenth of the byte
bound (a statement of megabytes) is not kept at all: it would push out hundreds of
hot entries and pin the large text in memory, for a text that is seldom sent twice.
The README lists every cache with its bounds.
"""

from __future__ import annotations

import sys
import threading
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

MiB = 1 << 20
LARGEST_SHARE = 16  # no entry costs more than this share of a cache's byte bound


class TextCache(dict[K, V], Generic[K, V]):
    """A dict from a statement text (or a key made with one) to what was worked out
    from it, holding at most ``entries`` entries and about ``max_bytes`` bytes; the
    oldest go first."""

    def __init__(self, name: str, entries: int, max_bytes: int, per_char: float,
                 overhead: int) -> None:
        super().__init__()
        self.name = name
        self.max_entries = entries
        self.max_bytes = max_bytes
        self.per_char = per_char  # bytes held per character of the text, text included
        self.overhead = overhead  # bytes per entry besides that
        self.bytes = 0
        self._costs: dict[K, int] = {}
        self._lock = threading.Lock()

    def cost(self, text: str) -> int:
        return int(sys.getsizeof(text) * self.per_char) + self.overhead

    def put(self, key: K, value: V, text: str) -> V:
        """Remember ``value`` for ``key`` (made with ``text``, which its cost depends
        on); returns it."""
        cost = self.cost(text)
        if cost > self.max_bytes // LARGEST_SHARE:
            return value  # too large to keep (the others stay)
        with self._lock:
            old = self._costs.pop(key, None)
            if old is not None:
                self.bytes -= old
            self.bytes += cost
            self._costs[key] = cost
            self[key] = value
            while len(self._costs) > self.max_entries or (
                    self.bytes > self.max_bytes and len(self._costs) > 1):
                oldest = next(iter(self._costs))
                self.bytes -= self._costs.pop(oldest)
                self.pop(oldest, None)
        return value

    def forget(self) -> None:
        with self._lock:
            self.clear()
            self._costs.clear()
            self.bytes = 0


__all__ = ["LARGEST_SHARE", "MiB", "TextCache"]
