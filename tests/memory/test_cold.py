"""The cold tier: LMDB on disk, restarts, format checks, corruption, threads."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
import trio
from conftest import chat_message

from avm.errors import CorruptObject, NotFound, StoreError, StoreFormatError
from avm.memory import ContentStore, hash_bytes

FAST = {"sync": False}


def test_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with ContentStore(path) as store:
        refs = [store.put(chat_message(i)) for i in range(50)]
        pinned = store.put(b"pinned object")
        store.pin(pinned)
        store.pin(pinned)
    assert sorted(os.listdir(path)) == ["data.mdb", "lock.mdb"]
    with ContentStore(path) as store:
        assert store.statistics().hot.objects == 0  # nothing cached yet: reads come from cold
        for i, ref in enumerate(refs):
            assert store.get(ref) == chat_message(i)
        assert store.pins(pinned) == 2
        stats = store.statistics()
        assert stats.cold.objects == 51 and stats.cold.hits == 50 and stats.unique_objects == 51
        assert stats.physical_bytes == stats.cold.bytes


def test_flushed_puts_are_visible_to_another_process(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "s", **FAST)
    ref = store.put(b"flushed")
    also = store.put(b"also flushed")
    store.flush()
    assert store.statistics().pending_writes == 0
    later = store.put(b"after the flush")
    script = (
        "import sys\n"
        "from avm.memory import ContentStore, Ref\n"
        "with ContentStore(sys.argv[1]) as s:\n"
        "    print(s.get(Ref(sys.argv[2])).decode(), s.contains(Ref(sys.argv[3])))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s"), ref.hex(), later.hex()],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["flushed", "False"]
    assert store.get(also) == b"also flushed" and store.get(later) == b"after the flush"
    store.close()


def test_dedup_against_cold_after_restart(tmp_path: Path) -> None:
    with ContentStore(tmp_path, **FAST) as store:
        ref = store.put(b"shared system prompt " * 50)
    with ContentStore(tmp_path, **FAST) as store:
        assert store.put(b"shared system prompt " * 50) == ref
        stats = store.statistics()
        assert stats.dedup_hits == 1 and stats.pending_writes == 0 and stats.cold.objects == 1


def test_writes_are_batched(tmp_path: Path) -> None:
    with ContentStore(tmp_path, write_batch_count=100, **FAST) as store:
        commits = store._cold.commits
        for i in range(1000):
            store.put(chat_message(i))
        assert store._cold.commits - commits == 10  # one transaction per 100 puts
        assert store.statistics().cold.objects == 1000


def test_batch_flushes_by_bytes(tmp_path: Path) -> None:
    with ContentStore(tmp_path, write_batch_bytes=10_000, **FAST) as store:
        for _ in range(10):
            store.put(os.urandom(3000))
        assert store.statistics().cold.objects >= 6


def test_map_grows_by_itself(tmp_path: Path) -> None:
    with ContentStore(tmp_path, map_size_bytes=64 * 1024, **FAST) as store:
        blobs = [os.urandom(50_000) for _ in range(60)]
        refs = [store.put(b) for b in blobs]
        store.flush()
        assert store._cold.growths >= 5
        assert store._cold.map_size >= 3_000_000
    with ContentStore(tmp_path, map_size_bytes=64 * 1024, hot_bytes=0, warm_bytes=0, **FAST) as store:
        assert [store.get(r) for r in refs] == blobs
        store.gc()  # deleting needs pages too
        assert store.statistics().cold.objects == 0


def test_reads_from_cold_bypass_small_tiers(tmp_path: Path) -> None:
    with ContentStore(tmp_path, **FAST) as store:
        refs = [store.put(chat_message(i)) for i in range(20)]
    with ContentStore(tmp_path, hot_bytes=0, warm_bytes=0, **FAST) as store:
        for _ in range(2):
            assert [store.get(r) for r in refs] == [chat_message(i) for i in range(20)]
        stats = store.statistics()
        assert stats.cold.hits == 40 and stats.hot.objects == 0 and stats.warm.objects == 0


def test_warm_evictions_are_demotions_to_cold(tmp_path: Path) -> None:
    with ContentStore(tmp_path, hot_bytes=2000, warm_bytes=2000, dict_enabled=False, **FAST) as store:
        refs = [store.put(chat_message(i)) for i in range(100)]
        stats = store.statistics()
        assert stats.warm.bytes <= 2000 and stats.hot.bytes <= 2000
        assert stats.hot.objects + stats.warm.objects < 100
        assert store.get(refs[0]) == chat_message(0)  # from cold (pending or committed)
        assert store.statistics().cold.hits == 1


async def test_reads_from_trio_worker_threads(tmp_path: Path) -> None:
    with ContentStore(tmp_path, **FAST) as store:
        refs = [store.put(chat_message(i)) for i in range(200)]
    results: dict[int, bytes] = {}
    with ContentStore(tmp_path, hot_bytes=4000, warm_bytes=4000, **FAST) as store:
        async def read(i: int) -> None:
            for _ in range(3):
                results[i] = await trio.to_thread.run_sync(store.get, refs[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(refs)):
                nursery.start_soon(read, i)
        assert results == {i: chat_message(i) for i in range(200)}
        # Writers from threads are serialised too.
        async with trio.open_nursery() as nursery:
            for i in range(200, 260):
                nursery.start_soon(trio.to_thread.run_sync, store.put, chat_message(i))
        await trio.to_thread.run_sync(store.flush)
        assert store.statistics().cold.objects == 260


def _flip_everywhere(data_file: Path, needle: bytes) -> int:
    """Flip a byte of every copy of ``needle`` in the file; return the count."""
    raw = bytearray(data_file.read_bytes())
    count, start = 0, 0
    while (pos := raw.find(needle, start)) >= 0:
        raw[pos + len(needle) // 2] ^= 0xFF
        count += 1
        start = pos + 1
    data_file.write_bytes(bytes(raw))
    return count


def test_flipped_byte_on_disk_is_corrupt_object(tmp_path: Path) -> None:
    payload = os.urandom(300)  # incompressible: stored raw, so it can be found in the file
    with ContentStore(tmp_path) as store:
        ref = store.put(payload)
        other = store.put(b"an innocent neighbour" * 10)
    assert _flip_everywhere(tmp_path / "data.mdb", payload) >= 1
    with ContentStore(tmp_path) as store:
        with pytest.raises(CorruptObject) as info:
            store.get(ref)
        assert info.value.ref == ref and info.value.tier == "cold"
        assert ref.hex() in str(info.value) and "cold" in str(info.value)
        assert store.get(other) == b"an innocent neighbour" * 10


def test_flipped_byte_in_a_compressed_blob(tmp_path: Path) -> None:
    payload = chat_message(7) * 20
    with ContentStore(tmp_path) as store:
        ref = store.put(payload)
        store.flush()
        blob = store._cold._blob(ref)
    assert blob is not None and blob[0] != 0  # compressed
    assert _flip_everywhere(tmp_path / "data.mdb", blob[4:]) >= 1
    with ContentStore(tmp_path) as store:
        with pytest.raises(CorruptObject):
            store.get(ref)


def test_dictionaries_persist_across_restart(tmp_path: Path) -> None:
    settings = {"hot_bytes": 0, "dict_train_samples": 60, "dict_train_min_bytes": 10_000,
                "dict_retrain_samples": 100, "dict_size_bytes": 2048, **FAST}
    with ContentStore(tmp_path, **settings) as store:
        refs = [store.put(chat_message(i)) for i in range(300)]
        dicts = store.dictionaries
        assert len(dicts) >= 2
    with ContentStore(tmp_path, hot_bytes=0, warm_bytes=0, **FAST) as store:
        assert store.dictionaries == dicts
        for i, ref in enumerate(refs):
            assert store.get(ref) == chat_message(i)
        stored = store._cold.statistics()
        assert stored.raw_bytes > 1.5 * stored.bytes
        # New blobs keep using the persisted current dictionary.
        new = store.put(chat_message(10_000))
        store.flush()
        assert store._codec.dictionary_of(store._cold._blob(new)) == dicts[-1]


def test_gc_in_cold_keeps_pins_and_needed_dictionaries(tmp_path: Path) -> None:
    settings = {"hot_bytes": 0, "dict_train_samples": 60, "dict_train_min_bytes": 10_000,
                "dict_retrain_samples": 100, "dict_size_bytes": 2048, "write_batch_count": 50, **FAST}
    with ContentStore(tmp_path, **settings) as store:
        refs = [store.put(chat_message(i)) for i in range(300)]
        store.flush()
        first_dict = store.dictionaries[0]
        keep = next(r for r in refs if store._codec.dictionary_of(store._cold._blob(r)) == first_dict)
        store.pin(keep)
    with ContentStore(tmp_path, **settings) as store:
        removed = store.gc()
        assert removed >= 290
        assert first_dict in store.dictionaries and store.contains(first_dict)
        assert store.get(keep) == chat_message(refs.index(keep))
        store.unpin(keep)
        store.gc()
        assert first_dict not in store.dictionaries and not store.contains(first_dict)
        assert store.statistics().cold.objects == 1  # the current dictionary
    with ContentStore(tmp_path, **settings) as store:
        with pytest.raises(NotFound):
            store.get(keep)


def test_refuses_a_directory_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreFormatError, match="not an AVM store"):
        ContentStore(tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    with pytest.raises(StoreFormatError):
        ContentStore(tmp_path / "f")


def test_refuses_a_foreign_lmdb_environment(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path))
    with env.begin(write=True) as txn:
        txn.put(b"meta", b"someone else's data")
    env.close()
    before = (tmp_path / "data.mdb").read_bytes()
    with pytest.raises(StoreFormatError, match="not an AVM store"):
        ContentStore(tmp_path)
    assert (tmp_path / "data.mdb").read_bytes() == before


def test_refuses_garbage_named_like_lmdb(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(b"\x00" * 100)
    with pytest.raises(StoreFormatError):
        ContentStore(tmp_path)
    assert (tmp_path / "data.mdb").read_bytes() == b"\x00" * 100


def test_refuses_an_unknown_format_version(tmp_path: Path) -> None:
    ContentStore(tmp_path).close()
    env = lmdb.open(str(tmp_path), max_dbs=4)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"format", b"avm-content-store/99")
    env.close()
    with pytest.raises(StoreFormatError, match="version '99'"):
        ContentStore(tmp_path)


def test_empty_or_new_directories_are_fine(tmp_path: Path) -> None:
    ContentStore(tmp_path / "a" / "b").close()
    (tmp_path / "empty").mkdir()
    with ContentStore(tmp_path / "empty") as store:
        assert store.path == str(tmp_path / "empty")


def test_cannot_open_twice(tmp_path: Path) -> None:
    with ContentStore(tmp_path):
        with pytest.raises(StoreError):
            ContentStore(tmp_path)


def test_counters_are_persisted(tmp_path: Path) -> None:
    with ContentStore(tmp_path, **FAST) as store:
        for i in range(30):
            store.put(chat_message(i))
        store.flush()
        before = store.statistics().cold
    env = lmdb.open(str(tmp_path), readonly=True, lock=False, max_dbs=4)
    with env.begin(db=env.open_db(b"meta", create=False)) as txn:
        objects, size, raw = struct.unpack(">QQQ", txn.get(b"counters"))
    env.close()
    assert (objects, size, raw) == (before.objects, before.bytes, before.raw_bytes) == (30, before.bytes, raw)
    with ContentStore(tmp_path, **FAST) as store:
        assert store.statistics().cold == before.__class__("cold", 30, size, raw, 0, 0)
    assert hash_bytes(b"") is not None


def test_a_forgotten_store_does_not_lock_its_directory_forever(tmp_path: Path) -> None:
    import gc

    store = ContentStore(tmp_path, **FAST)
    ref = store.put(b"flushed before being forgotten")
    store.flush()
    del store
    gc.collect()
    with ContentStore(tmp_path, **FAST) as again:
        assert again.get(ref) == b"flushed before being forgotten"
