"""`ContentStore`: the deduplicated, content-addressed store every agent shares.

An object is named by its `Ref` (blake3 digest), so putting known content
stores nothing new. Objects live in up to three tiers:

- **hot**: decoded bytes in an LRU bounded by ``hot_bytes``. New objects and
  objects read from below land here.
- **warm**: zstd blobs (trained dictionaries for small objects) in an LRU
  bounded by ``warm_bytes``. The hot tier's evictions land here; reading a
  warm object promotes it back to hot.
- **cold**: LMDB under ``path``. With a path, every put is also queued for
  the cold tier (flushed in batches, by `flush`, by `gc` and at `close`), so
  cold holds everything and hot and warm are caches above it; warm's
  evictions are simply dropped. With ``path=None`` there is no cold tier and
  warm keeps everything hot evicts (its budget is not enforced).

**Pins** are reference counts that `gc` respects; they are persisted in the
cold tier with the next flush, so a pin survives a restart once flushed
(`close` flushes). `gc` removes every unpinned object from every tier, except
the zstd dictionaries that stored blobs still need; it does not look inside
objects for refs, so callers pin every ref they must keep.

**Names** bind a caller's key (bytes, up to 500) to a ref: `bind`,
`lookup`, `unbind`, `names`. A bound ref is a root for `gc` like a pinned
one, and bindings persist in the cold tier with the next flush. They are how
a content-addressed store also answers "what is the response for this cache
key" or "which snapshot is agent 7's": the value is content-addressed, the
name is not.

**Dictionaries** are trained from small objects once enough have been seen
(see `avm.memory.dictionary`); each is itself an object of the store, listed
in a registry that the cold tier persists.

**Threads**: every method takes one lock, so the store may be used from trio
worker threads (``trio.to_thread.run_sync(store.get, ref)``) as well as from
the event loop. The hot path is the lock, a dict lookup and an LRU touch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from blake3 import blake3

from avm.errors import CorruptObject, Erased, NotFound, StoreError
from avm.memory.codec import Codec, tombstone
from avm.memory.cold import ColdTier
from avm.memory.dictionary import DictionaryTrainer
from avm.memory.hot import HotTier
from avm.memory.ref import REF_SIZE, Ref, hash_bytes
from avm.memory.settings import resolve_settings
from avm.memory.stats import StoreCheck, StoreStatistics, TierStatistics
from avm.memory.values import decode_value, encode_value
from avm.memory.warm import WarmTier

__all__ = ["ContentStore"]

_DICTS_KEY = b"dictionaries"


MAX_NAME_BYTES = 500  # LMDB keys are at most 511 bytes


def _name(name: object) -> bytes:
    if isinstance(name, str):
        key = name.encode("utf-8")
    elif isinstance(name, (bytes, bytearray, memoryview)):
        key = bytes(name)
    else:
        raise TypeError(f"a name is bytes or text, not {type(name).__name__}")
    if not 0 < len(key) <= MAX_NAME_BYTES:
        raise ValueError(f"a name must be 1 to {MAX_NAME_BYTES} bytes, not {len(key)}")
    return key


def _as_bytes(data: object) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"put() takes bytes, not {type(data).__name__}; use put_value() for structured values")


def _as_ref(ref: object) -> Ref:
    if type(ref) is Ref:
        return ref  # type: ignore[return-value]
    if isinstance(ref, (bytes, bytearray, memoryview)) and len(ref) == REF_SIZE:
        return Ref(ref)
    if isinstance(ref, (bytes, bytearray, memoryview)):
        raise ValueError(f"a ref is {REF_SIZE} bytes, got {len(ref)}")
    raise TypeError(f"expected a Ref, got {type(ref).__name__}")


class ContentStore:
    """A content-addressed object store with hot, warm and cold tiers.

    ``ContentStore(path=None, **settings)``: ``path`` is the cold tier's
    directory (created if missing; refused with `StoreFormatError` if it
    holds anything but an AVM store); ``settings`` override entries of
    `avm.memory.settings.DEFAULT_SETTINGS`. Use it as a context manager, or
    call `close`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, **settings: Any):
        self._settings = resolve_settings(settings)
        s = self._settings
        self._lock = threading.Lock()
        self._closed = True  # until fully open
        self._codec = Codec(level=s["compress_level"], compress_min_bytes=s["compress_min_bytes"],
                            dict_use_max_bytes=s["dict_use_max_bytes"], load_dictionary=self._load_dictionary)
        self._trainer = DictionaryTrainer(s)
        self._cold = ColdTier(path, self._codec, s, encode=self._encode_for_cold) if path is not None else None
        self._warm = WarmTier(self._codec, s["warm_bytes"] if self._cold else None, self._on_warm_evict)
        self._hot = HotTier(s["hot_bytes"], self._on_hot_evict)
        self._hot_cache = self._hot.cache
        self._pins: dict[Ref, int] = {}
        self._names: dict[bytes, Ref] = {}  # the bindings of an in-memory store (the cold tier keeps its own)
        self._erased: set[Ref] = set()  # refs erased by this store (the cold tier also keeps their tombstones)
        self._dicts: list[Ref] = []  # registry, oldest first; the last one is current
        self._puts = self._dedup_hits = self._logical = 0
        self._promotions = self._demotions = 0
        self._gc_runs = self._gc_removed = 0
        if self._cold is not None:
            try:
                self._pins = self._cold.load_pins()
                self._load_registry()
            except BaseException:
                self._cold.close()
                raise
        self._closed = False

    # --- opening --------------------------------------------------------------

    def _load_registry(self) -> None:
        assert self._cold is not None
        raw = self._cold.get_meta(_DICTS_KEY) or b""
        if len(raw) % REF_SIZE:
            raise StoreError(f"{self._cold.path} is damaged: its dictionary registry is {len(raw)} bytes, "
                             f"not a multiple of {REF_SIZE}")
        self._dicts = [Ref._trusted(raw[i : i + REF_SIZE]) for i in range(0, len(raw), REF_SIZE)]
        for ref in self._dicts:
            self._codec.register_dictionary(ref)
        if self._dicts:
            current = self._dicts[-1]
            try:
                self._codec.use_dictionary(current, self._load_dictionary(current))
            except StoreError:
                pass  # unreadable dictionary: its blobs will raise CorruptObject; compress without it

    def _load_dictionary(self, ref: Ref) -> bytes:
        data = self._peek(ref)
        if data is None:
            raise NotFound(ref)
        return data

    def _peek(self, ref: Ref) -> bytes | None:
        """An object's bytes from any tier, without promotion or counters."""
        if ref in self._hot_cache:
            return self._hot_cache.peek(ref)
        data = self._warm.peek(ref)
        if data is None and self._cold is not None:
            data = self._cold.peek(ref)
        return data

    # --- tier movements --------------------------------------------------------

    def _on_hot_evict(self, ref: Ref, data: bytes) -> None:
        self._demotions += 1
        self._warm.put(ref, data)

    def _encode_for_cold(self, ref: Ref, data: bytes) -> bytes:
        """The blob to commit: the warm tier's if it has one, else a fresh one."""
        blob = self._warm.blob(ref)
        return blob if blob is not None else self._codec.encode(ref, data)

    def _on_warm_evict(self, ref: Ref) -> None:
        self._demotions += 1  # the cold tier already holds it

    def _place(self, ref: Ref, data: bytes) -> None:
        """Put a new or promoted object in the fastest tier that takes it."""
        if self._hot.fits(data):
            self._hot.put(ref, data)
        else:
            self._warm.put(ref, data)

    # --- the API -----------------------------------------------------------------

    def put(self, data: bytes, *, hot: bool = True, cache: bool = True) -> Ref:
        """Store ``data`` and return its ref; known content stores nothing new.

        ``hot=False`` places a new object in the warm tier (compressed) rather
        than the hot one: for an object written once and seldom read, whose
        reader keeps its own form of it (a conversation's message, whose JSON
        the message itself keeps for its next requests), so that process
        memory holds one uncompressed copy of it, not two.

        ``cache=False`` (with a cold tier) writes a new object to the cold tier only: for an object
        written once and read back only after a restart or by a check (a journal entry), which no tier
        of this process's memory should keep. Without a cold tier it has no effect.
        """
        if type(data) is not bytes:
            data = _as_bytes(data)
        ref = Ref._trusted(blake3(data).digest())
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            self._puts += 1
            self._logical += len(data)
            if ref in self._hot_cache:
                self._hot.touch(ref)
                self._dedup_hits += 1
            elif self._warm.touch(ref) or (self._cold is not None and ref in self._cold) or ref in self._erased:
                self._dedup_hits += 1  # (erased content put again stays erased)
            else:
                if self._cold is not None:
                    self._cold.put(ref, data)
                    if not cache:
                        return ref
                if hot:
                    self._place(ref, data)
                else:
                    self._warm.put(ref, data)
                if self._trainer.offer(data):
                    self._train()
        return ref

    def get(self, ref: Ref, *, promote: bool = True) -> bytes:
        """The bytes stored under ``ref``; `NotFound` if none, `CorruptObject` if damaged.

        An object read from the warm or cold tier moves to the hot one (uncompressed) if it fits;
        ``promote=False`` leaves it where it is: for an object read often but by one reader, who
        keeps no copy (an agent's stored turns, read for each of its requests)."""
        with self._lock:
            cache = self._hot_cache
            try:
                if ref in cache:  # a test, not a KeyError: most objects read below the hot tier are read often
                    self._hot.hits += 1
                    return cache[ref]  # type: ignore[no-any-return]
            except TypeError:  # an unhashable ref, reported below
                pass
            return self._get_below(ref, promote)

    def _get_below(self, ref: object, promote: bool = True) -> bytes:
        if self._closed:
            raise StoreError("the store is closed")
        ref = _as_ref(ref)
        if ref in self._hot_cache:  # asked with an unhashable spelling (a bytearray)
            self._hot.hits += 1
            return self._hot_cache[ref]  # type: ignore[no-any-return]
        self._hot.misses += 1
        data = self._warm.get(ref)
        if data is not None:
            if promote and self._hot.fits(data):
                self._warm.delete(ref)
                self._hot.put(ref, data)
                self._promotions += 1
            return data
        if self._cold is not None:
            data = self._cold.get(ref)  # (a tombstone raises Erased)
            if data is not None:
                if promote and (self._hot.fits(data) or self._warm.budget):
                    self._place(ref, data)
                    self._promotions += 1
                return data
        if ref in self._erased:
            raise Erased(ref)
        raise NotFound(ref)

    def contains(self, ref: Ref) -> bool:
        """True if the store holds ``ref`` (in any tier; not verified)."""
        with self._lock:
            return self._contains(_as_ref(ref))

    __contains__ = contains

    def _contains(self, ref: Ref) -> bool:
        if self._closed:
            raise StoreError("the store is closed")
        return (ref in self._hot_cache or ref in self._warm or (self._cold is not None and ref in self._cold)
                or ref in self._erased)

    def erase(self, ref: Ref, reason: str = "") -> None:
        """Replace the content of ``ref`` with a tombstone, in every tier and on disk at once (an erasure
        request for personal data): reading it then raises `Erased`; its ref, pins and names stay, so
        whatever refers to it (a journal's hash chain) still verifies. `NotFound` if the store does not
        hold it. LMDB reuses the pages the content was in; until then its bytes may remain in the file's
        free pages (``mdb_copy -c`` writes a compacted copy without them)."""
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            ref = _as_ref(ref)
            if not self._contains(ref):
                raise NotFound(ref)
            self._hot.delete(ref)
            self._warm.delete(ref)
            self._erased.add(ref)
            if self._cold is not None:
                self._cold.erase(ref, tombstone(reason))

    def pin(self, ref: Ref) -> int:
        """Add a pin to ``ref`` (protecting it from `gc`); the new pin count."""
        with self._lock:
            ref = _as_ref(ref)
            if not self._contains(ref):
                raise NotFound(ref)
            count = self._pins.get(ref, 0) + 1
            self._pins[ref] = count
            if self._cold is not None:
                self._cold.set_pin(ref, count)
            return count

    def unpin(self, ref: Ref) -> int:
        """Remove one pin from ``ref``; the new pin count. `StoreError` if not pinned."""
        with self._lock:
            ref = _as_ref(ref)
            if self._closed:
                raise StoreError("the store is closed")
            count = self._pins.get(ref, 0)
            if count == 0:
                raise StoreError(f"object {ref.hex()} is not pinned")
            count -= 1
            if count:
                self._pins[ref] = count
            else:
                del self._pins[ref]
            if self._cold is not None:
                self._cold.set_pin(ref, count)
            return count

    def pins(self, ref: Ref) -> int:
        """The pin count of ``ref`` (0 if unpinned or unknown)."""
        with self._lock:
            return self._pins.get(_as_ref(ref), 0)

    # --- names ----------------------------------------------------------------------

    def bind(self, name: bytes | str, ref: Ref) -> None:
        """Bind ``name`` to ``ref`` (replacing any earlier binding); the ref must be stored."""
        key = _name(name)
        with self._lock:
            ref = _as_ref(ref)
            if not self._contains(ref):
                raise NotFound(ref)
            if self._cold is not None:
                self._cold.set_name(key, ref)
            else:
                self._names[key] = ref

    def lookup(self, name: bytes | str) -> Ref | None:
        """The ref bound to ``name``, or None."""
        key = _name(name)
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._cold is not None:
                return self._cold.get_name(key)
            return self._names.get(key)

    def unbind(self, name: bytes | str) -> bool:
        """Remove the binding of ``name``; True if there was one."""
        key = _name(name)
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._cold is not None:
                if self._cold.get_name(key) is None:
                    return False
                self._cold.set_name(key, None)
                return True
            return self._names.pop(key, None) is not None

    def names(self, prefix: bytes | str = b"") -> dict[bytes, Ref]:
        """Every binding whose name starts with ``prefix``."""
        key = prefix.encode("utf-8") if isinstance(prefix, str) else bytes(prefix)
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._cold is not None:
                return self._cold.names(key)
            return {k: v for k, v in self._names.items() if k.startswith(key)}

    def gc(self, *, drop_journals: bool = False) -> int:
        """Remove every unpinned object from every tier; the number removed.

        Dictionaries that some remaining blob needs (and the current one) are
        kept; the others are dropped with the objects. Only pinned and bound
        objects survive, so a store holding journals (``journal/...`` names,
        see `avm.journal`) is refused with `StoreError`: their older entries
        and what they name would go, and no run could be resumed or replayed
        from them; ``drop_journals=True`` says that is meant.
        """
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            names = self._cold.names() if self._cold is not None else self._names
            if not drop_journals and any(name.startswith(b"journal/") for name in names):
                raise StoreError("the store holds journals: gc() keeps only pinned and bound objects, so it would "
                                 "remove their entries and what they name (gc(drop_journals=True) if that is meant)")
            pins, is_dict = self._pins, self._codec.is_dictionary
            bound = set(names.values())

            def keep(ref: Ref) -> bool:
                return ref in pins or ref in bound or is_dict(ref)

            removed = 0
            for tier in (self._hot, self._warm):
                for ref in tier.refs():
                    if not keep(ref):
                        tier.delete(ref)
                        removed += 1
            used = self._warm.dictionaries_in_use()
            if self._cold is not None:
                removed, used_ids = self._cold.collect(keep)
                used.update(ref for ref in self._dicts if self._codec.dict_id(ref) in used_ids)
            removed += self._release_dictionaries(used)
            self._gc_runs += 1
            self._gc_removed += removed
            return removed

    def _release_dictionaries(self, used: set[Ref]) -> int:
        current = self._codec.current_dictionary
        released = [ref for ref in self._dicts if ref != current and ref not in used]
        if not released:
            return 0
        self._dicts = [ref for ref in self._dicts if ref not in released]
        for ref in released:
            self._codec.forget_dictionary(ref)
        doomed = [ref for ref in released if ref not in self._pins]
        for ref in doomed:
            self._hot.delete(ref)
            self._warm.delete(ref)
        if self._cold is not None:
            self._cold.set_meta(_DICTS_KEY, b"".join(self._dicts))
            self._cold.delete_many(doomed)  # flushes the registry first
        return len(doomed)

    def _train(self) -> None:
        data = self._trainer.train()
        if data is None:
            return
        ref = hash_bytes(data)
        if ref in self._dicts:
            return
        try:
            self._codec.use_dictionary(ref, data)
        except ValueError:
            return  # its 8-byte id collides with another dictionary's: keep the old one
        self._dicts.append(ref)
        self._warm.reencode(self._settings["dict_reencode_bytes"])
        if not (ref in self._hot_cache or ref in self._warm or (self._cold is not None and ref in self._cold)):
            if self._cold is not None:
                self._cold.put(ref, data)
            self._place(ref, data)
        if self._cold is not None:
            self._cold.set_meta(_DICTS_KEY, b"".join(self._dicts))

    def flush(self) -> None:
        """Commit every queued cold-tier write (objects, pins) in one transaction."""
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._cold is not None:
                self._cold.flush()

    def close(self) -> None:
        """Flush and release everything; further use raises `StoreError`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._cold is not None:
                    self._cold.close()
            finally:
                self._hot.clear()
                self._warm.clear()

    @property
    def closed(self) -> bool:
        """True once `close` has been called."""
        return self._closed

    def __enter__(self) -> ContentStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- structured values ---------------------------------------------------------

    def put_value(self, value: object) -> Ref:
        """Store a structured value (see `avm.memory.values`); equal values, equal refs."""
        return self.put(encode_value(value))

    def get_value(self, ref: Ref) -> Any:
        """The value stored by `put_value` under ``ref``; `ValueFormatError` if not a value."""
        return decode_value(self.get(ref))

    # --- introspection ----------------------------------------------------------

    def verify(self) -> StoreCheck:
        """Read and check every committed object of the cold tier, and what refers to them.

        Nothing is changed or cached; pending writes are not checked (`flush`
        first to include them). Raises `StoreError` for a store without a
        cold tier, or when LMDB itself reports an error.
        """
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            cold = self._cold
            if cold is None:
                raise StoreError("verify() reads the cold tier; this store has no path")
            objects = size = 0
            corrupt: list[bytes] = []
            bad_keys: list[bytes] = []
            erased = 0
            for key, blob in cold.scan():
                objects += 1
                size += len(blob)
                if len(key) != REF_SIZE:
                    bad_keys.append(key)
                    continue
                try:
                    self._codec.decode(Ref._trusted(key), blob, "cold")
                except Erased:
                    erased += 1  # a tombstone: erased on request, not damage
                except CorruptObject:
                    corrupt.append(key)
            names = cold.names()
            return StoreCheck(
                objects, size, cold.objects, cold.bytes, tuple(corrupt), tuple(bad_keys),
                tuple(sorted(name for name, ref in names.items() if ref not in cold)),
                tuple(sorted(bytes(ref) for ref in self._pins if ref not in cold)),
                tuple(bytes(ref) for ref in self._dicts if ref not in cold), erased)

    @property
    def path(self) -> str | None:
        """The cold tier's directory, or None for an in-memory store."""
        return self._cold.path if self._cold is not None else None

    @property
    def settings(self) -> Mapping[str, Any]:
        """The settings in force (a copy)."""
        return dict(self._settings)

    @property
    def dictionaries(self) -> tuple[Ref, ...]:
        """The refs of the zstd dictionaries in use, oldest first (the last is current)."""
        with self._lock:
            return tuple(self._dicts)

    def statistics(self) -> StoreStatistics:
        """A frozen record of the store's numbers now (see `StoreStatistics`)."""
        with self._lock:
            hot, warm = self._hot.statistics(), self._warm.statistics()
            cold_tier = self._cold
            if cold_tier is not None:
                cold = cold_tier.statistics()
                unique_objects = cold.objects + len(cold_tier._pending)
                unique_bytes = cold.raw_bytes + cold_tier.pending_bytes
                physical = cold.bytes + cold_tier.pending_bytes
                pending = cold_tier.pending_writes
            else:
                cold = TierStatistics("cold", 0, 0, 0, 0, 0, enabled=False)
                unique_objects = hot.objects + warm.objects
                unique_bytes = hot.raw_bytes + warm.raw_bytes
                physical = hot.bytes + warm.bytes
                pending = 0
            encoded = warm.bytes + cold.bytes
            return StoreStatistics(
                hot=hot, warm=warm, cold=cold, puts=self._puts, dedup_hits=self._dedup_hits,
                logical_bytes=self._logical, unique_objects=unique_objects, unique_bytes=unique_bytes,
                physical_bytes=physical,
                dedup_ratio=self._logical / unique_bytes if unique_bytes else 1.0,
                compression_ratio=(warm.raw_bytes + cold.raw_bytes) / encoded if encoded else 1.0,
                promotions=self._promotions, demotions=self._demotions, pinned_objects=len(self._pins),
                dictionaries=len(self._dicts), pending_writes=pending, gc_runs=self._gc_runs,
                gc_removed=self._gc_removed)

    def __repr__(self) -> str:
        where = self.path or "memory"
        state = "closed" if self._closed else "open"
        return f"<ContentStore {where} {state}>"
