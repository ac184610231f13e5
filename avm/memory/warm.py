"""The warm tier: zstd-compressed blobs in process memory, LRU-bounded by bytes.

Objects land here when the hot tier evicts them. Each is encoded by the
`Codec` (raw below ``compress_min_bytes``, zstd with the current trained
dictionary for small objects, plain zstd for big ones) and every read
decodes and verifies the blake3 digest. When the blobs pass ``budget`` bytes
the least recently used are dropped and reported to ``on_evict``: the store
only gives the warm tier a budget when a cold tier below already holds every
object, so dropping is a demotion, never a loss.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

from avm.memory.codec import CODEC_ZSTD_DICT, Codec, blob_info
from avm.memory.ref import Ref
from avm.memory.stats import TierStatistics

__all__ = ["WarmTier"]


def _raw_size(blob: bytes) -> int:
    try:
        return blob_info(blob).raw_size
    except ValueError:
        return len(blob)


class WarmTier:
    """Compressed blobs, most recently used last.

    ``budget=None`` means unbounded (the store's last tier when it has no
    path).
    """

    name = "warm"

    def __init__(self, codec: Codec, budget: int | None, on_evict: Callable[[Ref], None]):
        self._codec = codec
        self.budget = budget
        self._on_evict = on_evict
        # Most recently used last: an OrderedDict when there is a budget to evict by; unbounded, the
        # order never matters and a plain dict holds each blob for ~45 bytes less (a fleet keeps a
        # stored turn per agent and turn here).
        self._blobs: dict[Ref, bytes] = OrderedDict() if budget is not None else {}
        self.bytes = 0
        self.raw_bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, ref: Ref) -> bytes | None:
        """The object's verified bytes, or None; raises `CorruptObject` on a bad blob."""
        blob = self._blobs.get(ref)
        if blob is None:
            self.misses += 1
            return None
        data = self._codec.decode(ref, blob, "warm")
        if self.budget is not None:
            self._blobs.move_to_end(ref)  # type: ignore[attr-defined]
        self.hits += 1
        return data

    def peek(self, ref: Ref) -> bytes | None:
        """Like `get` but leaves the LRU order and the counters alone."""
        blob = self._blobs.get(ref)
        return None if blob is None else self._codec.decode(ref, blob, "warm")

    def touch(self, ref: Ref) -> bool:
        """Mark ``ref`` most recently used; True if held."""
        if self.budget is None:
            return ref in self._blobs
        try:
            self._blobs.move_to_end(ref)  # type: ignore[attr-defined]
        except KeyError:
            return False
        return True

    def blob(self, ref: Ref) -> bytes | None:
        """The encoded blob held for ``ref`` (no decoding), or None."""
        return self._blobs.get(ref)

    def put(self, ref: Ref, data: bytes) -> None:
        """Encode and hold ``data``, then evict past the budget.

        With a budget, an object whose blob exceeds the whole budget is not
        held: the store only sets a budget when the cold tier holds it.
        """
        if ref in self._blobs:
            if self.budget is not None:
                self._blobs.move_to_end(ref)  # type: ignore[attr-defined]
            return
        if self.budget == 0:
            return  # warm disabled: the cold tier below holds the object
        blob = self._codec.encode(ref, data)
        if self.budget is not None and len(blob) > self.budget:
            return  # larger than the whole budget: left to the cold tier
        self._blobs[ref] = blob
        self.bytes += len(blob)
        self.raw_bytes += len(data)
        if self.budget is not None:
            blobs = self._blobs
            while self.bytes > self.budget:
                old, old_blob = blobs.popitem(last=False)  # type: ignore[call-arg]
                self.bytes -= len(old_blob)
                self.raw_bytes -= _raw_size(old_blob)
                self._on_evict(old)

    def delete(self, ref: Ref) -> bool:
        """Drop ``ref`` without reporting it as evicted."""
        blob = self._blobs.pop(ref, None)
        if blob is None:
            return False
        self.bytes -= len(blob)
        self.raw_bytes -= _raw_size(blob)
        return True

    def __contains__(self, ref: object) -> bool:
        return ref in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    def refs(self) -> Iterator[Ref]:
        """A snapshot of the refs held."""
        return iter(list(self._blobs))

    def reencode(self, max_raw_bytes: int) -> int:
        """Re-encode blobs made without a dictionary, now that there is one.

        Called when the first (or a new) dictionary is trained, so that the
        objects seen before training get the dictionary's ratio too. At most
        ``max_raw_bytes`` of objects are redone; returns how many blobs
        changed.
        """
        codec, changed, budget = self._codec, 0, max_raw_bytes
        for ref, blob in list(self._blobs.items()):
            if budget <= 0:
                break
            if blob[0] == CODEC_ZSTD_DICT:
                continue
            data = codec.decode(ref, blob, "warm")
            new = codec.encode(ref, data)
            budget -= len(data)
            if len(new) < len(blob):
                self._blobs[ref] = new
                self.bytes += len(new) - len(blob)
                changed += 1
        return changed

    def dictionaries_in_use(self) -> set[Ref]:
        """The dictionaries some held blob needs."""
        found = set()
        dictionary_of = self._codec.dictionary_of
        for blob in self._blobs.values():
            ref = dictionary_of(blob)
            if ref is not None:
                found.add(ref)
        return found

    def clear(self) -> None:
        """Drop everything (nothing is reported as evicted)."""
        self._blobs.clear()
        self.bytes = self.raw_bytes = 0

    def statistics(self) -> TierStatistics:
        """Objects, bytes (compressed), raw bytes, hits and misses now."""
        return TierStatistics("warm", len(self._blobs), self.bytes, self.raw_bytes, self.hits, self.misses)
