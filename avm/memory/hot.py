"""The hot tier: decoded objects in a dict, LRU-bounded by bytes.

Built on ``cachetools.LRUCache`` with ``getsizeof=len``: a hit is a dict
lookup plus one ``OrderedDict.move_to_end``, about 0.25 microseconds on this
machine, so the store's whole ``get`` stays well under its 2 microsecond
target without a hand-written LRU. Objects evicted to make room are handed
to ``on_evict`` (the store demotes them to the warm tier).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from cachetools import LRUCache

from avm.memory.ref import Ref
from avm.memory.stats import TierStatistics

__all__ = ["HotTier"]


class _EvictingLRU(LRUCache):  # type: ignore[type-arg]
    """An LRUCache that reports what it evicts (not what is deleted)."""

    def __init__(self, maxsize: int, on_evict: Callable[[Ref, bytes], None]):
        super().__init__(maxsize, getsizeof=len)
        self._on_evict = on_evict

    def popitem(self) -> tuple[Ref, bytes]:
        ref, data = super().popitem()
        self._on_evict(ref, data)
        return ref, data


class HotTier:
    """Uncompressed objects, most recently used last, at most ``budget`` bytes.

    ``cache`` is public so that the store's hit path can index it directly
    (``cache[ref]`` raises ``KeyError`` on a miss and refreshes the LRU order
    on a hit); hits and misses are counted by the store in ``hits`` and
    ``misses``.
    """

    name = "hot"

    def __init__(self, budget: int, on_evict: Callable[[Ref, bytes], None]):
        self.budget = budget
        self.cache = _EvictingLRU(budget, on_evict)
        self.hits = 0
        self.misses = 0

    def fits(self, data: bytes) -> bool:
        """True if an object of this size may live in the hot tier at all."""
        return 0 < self.budget and len(data) <= self.budget

    def get(self, ref: Ref) -> bytes | None:
        """The object's bytes (refreshing its LRU position), or None."""
        try:
            data = self.cache[ref]
        except KeyError:
            self.misses += 1
            return None
        self.hits += 1
        return data  # type: ignore[no-any-return]

    def touch(self, ref: Ref) -> bool:
        """Mark ``ref`` most recently used without counting a hit; True if held."""
        try:
            self.cache[ref]
        except KeyError:
            return False
        return True

    def put(self, ref: Ref, data: bytes) -> None:
        """Hold ``data``, evicting least recently used objects past the budget.

        The caller checks `fits` first; an object larger than the whole budget
        is not held (it would only evict everything else).
        """
        if self.fits(data):
            self.cache[ref] = data

    def delete(self, ref: Ref) -> bool:
        """Drop ``ref`` without reporting it as evicted."""
        try:
            del self.cache[ref]
        except KeyError:
            return False
        return True

    def __contains__(self, ref: object) -> bool:
        return ref in self.cache

    def __len__(self) -> int:
        return len(self.cache)

    def refs(self) -> Iterator[Ref]:
        """A snapshot of the refs held."""
        return iter(list(self.cache))

    def clear(self) -> None:
        """Drop everything (nothing is reported as evicted)."""
        cache = self.cache
        for ref in list(cache):  # not cache.clear(): older cachetools pop (and evict) one by one
            del cache[ref]

    @property
    def bytes(self) -> int:
        """Bytes held."""
        return int(self.cache.currsize)

    def statistics(self) -> TierStatistics:
        """Objects, bytes, hits and misses now."""
        size = self.bytes
        return TierStatistics("hot", len(self.cache), size, size, self.hits, self.misses)
