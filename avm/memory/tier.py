"""The small protocol every tier implements.

All three tiers speak in decoded object bytes: ``put`` takes an object's
bytes, ``get`` returns them (verified against the ref when they come from an
encoded blob) or None when the tier does not hold the ref. How a tier stores
them (raw, zstd, LMDB) is its own business.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from avm.memory.ref import Ref
from avm.memory.stats import TierStatistics

__all__ = ["Tier"]


@runtime_checkable
class Tier(Protocol):
    """One level of the store: hot, warm or cold."""

    name: str

    def get(self, ref: Ref) -> bytes | None:
        """The object's bytes, or None when this tier does not hold ``ref``."""

    def put(self, ref: Ref, data: bytes) -> None:
        """Hold ``data`` under ``ref`` (``ref`` is its digest)."""

    def delete(self, ref: Ref) -> bool:
        """Drop ``ref``; True if it was held."""

    def __contains__(self, ref: object) -> bool:
        """True if the tier holds ``ref`` (no verification, no LRU update)."""

    def refs(self) -> Iterator[Ref]:
        """Every ref the tier holds (a snapshot, safe to delete while iterating)."""

    def statistics(self) -> TierStatistics:
        """The tier's counters now."""
