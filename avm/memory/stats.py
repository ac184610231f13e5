"""Frozen statistics records returned by ``ContentStore.statistics()``.

The dashboard and the benchmarks read these records, never the store's
private state.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass

__all__ = ["StoreCheck", "StoreStatistics", "TierStatistics"]


@dataclass(frozen=True, slots=True)
class TierStatistics:
    """One tier's numbers at the moment ``statistics()`` was called.

    ``bytes`` is what the tier holds (blobs as stored: compressed in warm and
    cold, raw in hot); ``raw_bytes`` is the size of the same objects once
    decoded. Hits and misses count lookups that reached this tier.
    """

    name: str
    objects: int
    bytes: int
    raw_bytes: int
    hits: int
    misses: int
    enabled: bool = True

    @property
    def compression_ratio(self) -> float:
        """``raw_bytes / bytes``: 1.0 for an empty or uncompressed tier."""
        return self.raw_bytes / self.bytes if self.bytes else 1.0


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """The whole store's numbers.

    - ``logical_bytes``: every byte callers have ``put`` since the store was
      opened, duplicates included (``puts`` counts the calls).
    - ``unique_objects`` / ``unique_bytes``: the distinct objects the store
      holds and their decoded size, each counted once.
    - ``physical_bytes``: the bytes held for those objects, once each, in the
      store's backing tier: cold (plus writes not flushed yet) when the store
      has a path, else hot + warm. Blob bytes only; LMDB's own page and key
      overhead is not counted.
    - ``dedup_ratio``: ``logical_bytes / unique_bytes`` (1.0 when empty); it
      is only meaningful for a store that started empty, because
      ``logical_bytes`` is not persisted across restarts.
    - ``compression_ratio``: decoded over stored bytes, over the tiers that
      compress (warm and cold).
    - ``promotions``: objects copied up to a faster tier by a read;
      ``demotions``: objects moved down (hot to warm, warm to cold).
    """

    hot: TierStatistics
    warm: TierStatistics
    cold: TierStatistics
    puts: int
    dedup_hits: int
    logical_bytes: int
    unique_objects: int
    unique_bytes: int
    physical_bytes: int
    dedup_ratio: float
    compression_ratio: float
    promotions: int
    demotions: int
    pinned_objects: int
    dictionaries: int
    pending_writes: int
    gc_runs: int
    gc_removed: int

    @property
    def hits(self) -> int:
        """Lookups answered by any tier."""
        return self.hot.hits + self.warm.hits + self.cold.hits

    def tiers(self) -> tuple[TierStatistics, TierStatistics, TierStatistics]:
        """The three tiers, hot first."""
        return (self.hot, self.warm, self.cold)


@dataclass(frozen=True, slots=True)
class StoreCheck:
    """What ``ContentStore.verify()`` found reading every committed object of the cold tier.

    ``objects`` and ``bytes`` are what was read; ``recorded_objects`` and
    ``recorded_bytes`` what the store's counters say. ``corrupt`` lists the
    refs whose blobs do not decode to their digest, ``bad_keys`` the keys
    that are not refs at all, ``dangling_names`` the names bound to a missing
    object, ``dangling_pins`` the pinned refs that are missing, and
    ``missing_dictionaries`` the registered dictionaries that are missing.
    """

    objects: int
    bytes: int
    recorded_objects: int
    recorded_bytes: int
    # builtins.bytes: in this class body, ``bytes`` names the field above
    corrupt: tuple[builtins.bytes, ...]
    bad_keys: tuple[builtins.bytes, ...]
    dangling_names: tuple[builtins.bytes, ...]
    dangling_pins: tuple[builtins.bytes, ...]
    missing_dictionaries: tuple[builtins.bytes, ...]
    erased: int = 0  # tombstones (`ContentStore.erase`): not damage

    @property
    def ok(self) -> bool:
        """True if nothing is wrong."""
        return (self.objects, self.bytes) == (self.recorded_objects, self.recorded_bytes) and not (
            self.corrupt or self.bad_keys or self.dangling_names or self.dangling_pins or self.missing_dictionaries)
