"""ContentStore in memory (path=None): dedup, tiers, pins, gc, statistics."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from conftest import chat_message

from avm.errors import CorruptObject, NotFound, StoreError
from avm.memory import ContentStore, Ref, hash_bytes
from avm.memory.tier import Tier


def test_put_get_and_dedup() -> None:
    store = ContentStore()
    ref = store.put(b"system prompt" * 100)
    assert isinstance(ref, Ref) and ref == hash_bytes(b"system prompt" * 100)
    assert store.put(b"system prompt" * 100) == ref
    assert store.get(ref) == b"system prompt" * 100
    stats = store.statistics()
    assert stats.puts == 2 and stats.dedup_hits == 1
    assert stats.logical_bytes == 2 * 1300 and stats.unique_bytes == 1300 and stats.unique_objects == 1
    assert stats.dedup_ratio == 2.0


def test_bytes_like_inputs_and_plain_bytes_refs() -> None:
    store = ContentStore()
    ref = store.put(bytearray(b"abc"))
    assert store.put(memoryview(b"abc")) == ref
    assert store.get(bytes(ref)) == b"abc"
    assert store.contains(bytes(ref)) and bytes(ref) in store
    with pytest.raises(TypeError, match="put_value"):
        store.put("a string")  # type: ignore[arg-type]


def test_unknown_ref_is_not_found_naming_it() -> None:
    store = ContentStore()
    ref = hash_bytes(b"never stored")
    with pytest.raises(NotFound) as info:
        store.get(ref)
    assert info.value.ref == ref and ref.hex() in str(info.value)
    assert not store.contains(ref)
    with pytest.raises(TypeError):
        store.get("not a ref")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.get(b"short")  # type: ignore[arg-type]


def test_empty_object() -> None:
    store = ContentStore()
    ref = store.put(b"")
    assert store.get(ref) == b""


def test_hot_evicts_to_warm_and_reads_promote() -> None:
    store = ContentStore(hot_bytes=3000, dict_enabled=False)
    refs = [store.put(chat_message(i)) for i in range(40)]
    stats = store.statistics()
    assert stats.hot.bytes <= 3000
    assert stats.warm.objects > 0 and stats.demotions >= stats.warm.objects
    assert stats.hot.objects + stats.warm.objects == 40
    assert stats.warm.bytes < stats.warm.raw_bytes  # compressed
    first = refs[0]  # least recently used: demoted
    assert first in store._warm and first not in store._hot
    assert store.get(first) == chat_message(0)
    stats = store.statistics()
    assert stats.promotions == 1 and stats.warm.hits == 1 and stats.hot.misses == 1
    assert first in store._hot and first not in store._warm
    for i, ref in enumerate(refs):  # every object readable, wherever it is
        assert store.get(ref) == chat_message(i)


def test_objects_larger_than_hot_live_in_warm() -> None:
    store = ContentStore(hot_bytes=100)
    big = b"x" * 10_000
    ref = store.put(big)
    assert ref in store._warm
    assert store.get(ref) == big
    assert ref in store._warm  # too big to promote


def test_warm_is_unbounded_without_cold() -> None:
    store = ContentStore(hot_bytes=0, warm_bytes=10)
    refs = [store.put(chat_message(i)) for i in range(50)]
    assert store.statistics().warm.objects == 50
    assert all(store.get(r) == chat_message(i) for i, r in enumerate(refs))


def test_corrupt_warm_blob_raises_naming_tier() -> None:
    store = ContentStore(hot_bytes=0)
    ref = store.put(chat_message(1))
    blob = bytearray(store._warm._blobs[ref])
    blob[-3] ^= 0xFF
    store._warm._blobs[ref] = bytes(blob)
    with pytest.raises(CorruptObject) as info:
        store.get(ref)
    assert info.value.tier == "warm" and info.value.ref == ref


def test_pin_unpin_counts() -> None:
    store = ContentStore()
    ref = store.put(b"keep me")
    assert store.pin(ref) == 1 and store.pin(ref) == 2
    assert store.pins(ref) == 2
    assert store.unpin(ref) == 1 and store.unpin(ref) == 0
    with pytest.raises(StoreError, match="not pinned"):
        store.unpin(ref)
    with pytest.raises(NotFound):
        store.pin(hash_bytes(b"absent"))


def test_gc_removes_unpinned_from_every_tier() -> None:
    store = ContentStore(hot_bytes=2000, dict_enabled=False)
    refs = [store.put(chat_message(i)) for i in range(30)]
    keep = refs[::7]
    for ref in keep:
        store.pin(ref)
    assert store.statistics().warm.objects > 0
    removed = store.gc()
    assert removed == 30 - len(keep)
    for i, ref in enumerate(refs):
        if ref in keep:
            assert store.get(ref) == chat_message(i)
        else:
            assert not store.contains(ref)
            with pytest.raises(NotFound):
                store.get(ref)
    stats = store.statistics()
    assert stats.unique_objects == len(keep) and stats.gc_runs == 1 and stats.gc_removed == removed


def test_dictionary_training_and_retraining_keep_blobs_readable() -> None:
    store = ContentStore(hot_bytes=0, dict_train_samples=60, dict_train_min_bytes=10_000,
                         dict_retrain_samples=60, dict_size_bytes=2048)
    refs = [store.put(chat_message(i)) for i in range(200)]
    dicts = store.dictionaries
    assert len(dicts) >= 2  # trained, then retrained
    stats = store.statistics()
    assert stats.dictionaries == len(dicts)
    users = store._warm.dictionaries_in_use()
    assert len(users) >= 2  # blobs made with an older dictionary are still there
    for i, ref in enumerate(refs):
        assert store.get(ref) == chat_message(i)
    for ref in dicts:  # the dictionaries are objects of the store
        assert hash_bytes(store.get(ref)) == ref


def test_gc_keeps_dictionaries_in_use_and_drops_unused_ones() -> None:
    store = ContentStore(hot_bytes=0, dict_train_samples=60, dict_train_min_bytes=10_000,
                         dict_retrain_samples=60, dict_size_bytes=2048)
    refs = [store.put(chat_message(i)) for i in range(200)]
    old = store.dictionaries[0]
    pinned = next(r for r in refs if store._codec.dictionary_of(store._warm.blob(r)) == old)
    store.pin(pinned)
    store.gc()
    assert old in store.dictionaries and store.contains(old)
    assert store.get(pinned) == chat_message(refs.index(pinned))
    store.unpin(pinned)
    store.gc()
    current = store.dictionaries[-1]
    assert store.dictionaries == (current,)  # only the current dictionary survives
    assert not store.contains(old)


def test_dictionaries_improve_compression() -> None:
    def ratio(**kw: object) -> float:
        store = ContentStore(hot_bytes=0, dict_train_samples=100, dict_train_min_bytes=10_000, **kw)
        for i in range(400):
            store.put(chat_message(i, seed=3))
        return store.statistics().warm.compression_ratio

    assert ratio() > 1.3 * ratio(dict_enabled=False)


def test_statistics_is_frozen() -> None:
    store = ContentStore()
    stats = store.statistics()
    with pytest.raises(AttributeError):
        stats.puts = 3  # type: ignore[misc]
    assert not stats.cold.enabled and stats.cold.objects == 0
    assert [t.name for t in stats.tiers()] == ["hot", "warm", "cold"]


def test_close_and_context_manager() -> None:
    with ContentStore() as store:
        ref = store.put(b"x")
    assert store.closed
    for call in (lambda: store.get(ref), lambda: store.put(b"y"), store.flush, store.gc, lambda: store.contains(ref)):
        with pytest.raises(StoreError, match="closed"):
            call()
    store.close()  # idempotent
    assert "closed" in repr(store)


def test_random_objects_round_trip() -> None:
    store = ContentStore(hot_bytes=5000, compress_min_bytes=16)
    blobs = [os.urandom(n) for n in (0, 1, 15, 16, 17, 100, 4000, 9000)] + [b"ab" * n for n in (8, 100, 5000)]
    refs = [store.put(b) for b in blobs]
    for ref, b in zip(refs, blobs, strict=True):
        assert store.get(ref) == b


def test_differential_tiers_agree(tmp_path: Path) -> None:
    """A store that keeps everything hot and one that pushes everything to cold agree."""
    rng = random.Random(11)
    roomy = ContentStore(hot_bytes=1 << 30)
    tight = ContentStore(tmp_path, hot_bytes=700, warm_bytes=900, write_batch_count=13, sync=False,
                         dict_train_samples=40, dict_train_min_bytes=5000, dict_retrain_samples=50,
                         dict_size_bytes=1024)
    refs: list[Ref] = []
    for _ in range(600):
        if rng.random() < 0.55 or not refs:
            data = chat_message(rng.randrange(300)) if rng.random() < 0.8 else os.urandom(rng.randrange(200))
            ref = roomy.put(data)
            assert tight.put(data) == ref
            refs.append(ref)
        else:
            ref = rng.choice(refs)
            assert tight.get(ref) == roomy.get(ref)
    tight.flush()
    a, b = roomy.statistics(), tight.statistics()
    assert (a.puts, a.logical_bytes, a.dedup_hits) == (b.puts, b.logical_bytes, b.dedup_hits)
    dict_bytes = sum(len(tight.get(d)) for d in tight.dictionaries)
    assert b.unique_objects == a.unique_objects + len(tight.dictionaries)
    assert b.unique_bytes == a.unique_bytes + dict_bytes
    assert b.warm.hits + b.cold.hits > 50 and b.promotions > 50
    tight.close()


def test_every_tier_speaks_the_tier_protocol(tmp_path: Path) -> None:
    with ContentStore(tmp_path, sync=False) as store:
        tiers = [store._hot, store._warm, store._cold]
        assert all(isinstance(tier, Tier) for tier in tiers)
        assert [tier.name for tier in tiers] == ["hot", "warm", "cold"]
        data = chat_message(3)
        ref = hash_bytes(data)
        for tier in tiers:  # the same object through each tier alone
            tier.put(ref, data)
            assert ref in tier and tier.get(ref) == data and ref in list(tier.refs())
            assert tier.statistics().objects >= 0
            assert tier.delete(ref) and ref not in tier and tier.get(ref) is None


def test_bytes_like_and_unhashable_refs() -> None:
    store = ContentStore()
    ref = store.put(b"z")
    assert store.get(bytearray(ref)) == b"z"  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.get(bytearray(32))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.get([1, 2])  # type: ignore[arg-type]
