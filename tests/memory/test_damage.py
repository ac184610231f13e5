"""A damaged data.mdb: clear StoreErrors instead of a dead process (each open runs in a child process,
so that a regression is a failed test, not a test run killed by SIGBUS)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

import avm.memory.codec as codec_module
from avm.errors import CorruptObject, StoreError
from avm.memory import ContentStore, hash_bytes
from avm.memory.codec import CODEC_ZSTD, Codec, _varint, blob_info
from avm.memory.lmdb_meta import check_data_file, read_meta

OPEN = (
    "import sys\n"
    "from avm.memory import ContentStore\n"
    "try:\n"
    "    ContentStore(sys.argv[1]).close()\n"
    "except Exception as exc:\n"
    "    print(type(exc).__name__, exc)\n"
    "else:\n"
    "    print('opened')\n")


def _store(path: Path, objects: int = 2000) -> None:
    with ContentStore(path, sync=False) as store:
        for i in range(objects):
            store.bind(f"n/{i}", store.put(os.urandom(100) + b"x" * i))


def _open_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", OPEN, str(path)], check=False, capture_output=True, text=True,
                          timeout=60)


def test_the_meta_page_reader_agrees_with_lmdb(tmp_path: Path) -> None:
    _store(tmp_path, 500)
    meta = read_meta(str(tmp_path / "data.mdb"))
    env = lmdb.open(str(tmp_path), readonly=True, lock=False, max_dbs=8)
    try:
        info, stat = env.info(), env.stat()
    finally:
        env.close()
    assert meta is not None
    assert (meta.last_page, meta.page_size, meta.txn_id) == (info["last_pgno"], stat["psize"], info["last_txnid"])
    assert meta.needed_bytes == os.path.getsize(tmp_path / "data.mdb")


@pytest.mark.parametrize("keep", ["half", "one page short", "past the meta pages"])
def test_a_truncated_data_file_is_a_store_error(tmp_path: Path, keep: str) -> None:
    _store(tmp_path)
    data = tmp_path / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, {"half": size // 2, "one page short": size - 4096, "past the meta pages": 2 * 4096 + 100}[keep])
    before = data.read_bytes()
    result = _open_in_child(tmp_path)
    assert result.returncode == 0, f"the process died: {result.returncode} {result.stderr[-500:]}"
    assert result.stdout.startswith("StoreError ") and "truncated" in result.stdout
    assert str(data) in result.stdout
    assert data.read_bytes() == before  # refused before anything was mapped or written
    with pytest.raises(StoreError, match="is truncated"):
        check_data_file(str(data))


def test_an_impossible_page_size_is_a_store_error(tmp_path: Path) -> None:
    _store(tmp_path, 10)
    data = tmp_path / "data.mdb"
    raw = bytearray(data.read_bytes())
    struct.pack_into("=I", raw, 16 + 24, 0)  # the first MDB_db's md_pad: the page size
    data.write_bytes(bytes(raw))
    result = _open_in_child(tmp_path)
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.startswith("StoreError ") and "page size of 0" in result.stdout


def test_a_whole_store_passes_the_length_check(tmp_path: Path) -> None:
    _store(tmp_path, 300)
    check_data_file(str(tmp_path / "data.mdb"))
    assert _open_in_child(tmp_path).stdout.strip() == "opened"


# --- values LMDB holds fine but the store cannot use ---------------------------------------------


def _poke(path: Path, db: bytes, key: bytes, value: bytes) -> None:
    """Overwrite one record of the store's LMDB environment (a real write to the real file)."""
    env = lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True, db=env.open_db(db, create=False)) as txn:
            txn.put(key, value)
    finally:
        env.close()


def test_a_size_header_claiming_a_terabyte_is_corrupt_not_memory_error(tmp_path: Path) -> None:
    payload = b"compressible chat message " * 400
    with ContentStore(tmp_path, sync=False) as store:
        ref = store.put(payload)
        store.flush()
        blob = bytes(store._cold._blob(ref))
    assert blob[0] == CODEC_ZSTD
    info = blob_info(blob)
    _poke(tmp_path, b"objects", ref, blob[:1] + _varint(1 << 40) + blob[info.payload_offset:])
    with ContentStore(tmp_path, hot_bytes=0, warm_bytes=0) as store:
        with pytest.raises(CorruptObject) as caught:
            store.get(ref)
        assert caught.value.ref == ref


def test_the_chunked_path_round_trips_and_stops_at_the_claimed_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec_module, "DIRECT_DECOMPRESS_MAX", 1024)
    codec = Codec(level=3, compress_min_bytes=64, dict_use_max_bytes=0, load_dictionary=lambda ref: b"")
    data = b"".join(b"line %d of a long tool result\n" % i for i in range(200_000))  # ~6 MiB: several chunks
    ref = hash_bytes(data)
    blob = codec.encode(ref, data)
    assert blob[0] == CODEC_ZSTD and len(blob) < len(data) // 4
    assert codec.decode(ref, blob, "cold") == data
    payload = blob[blob_info(blob).payload_offset:]
    for claimed in (len(data) - 1, len(data) + 1, 1 << 40, 2000):
        with pytest.raises(CorruptObject):
            codec.decode(ref, blob[:1] + _varint(claimed) + payload, "cold")


@pytest.mark.parametrize("value", [b"", b"\x00" * 5, b"\x00" * 25])
def test_counters_of_the_wrong_length_are_a_store_error(tmp_path: Path, value: bytes) -> None:
    _store(tmp_path, 5)
    _poke(tmp_path, b"meta", b"counters", value)
    with pytest.raises(StoreError, match=r"counters are \d+ bytes, not 24"):
        ContentStore(tmp_path)
    ContentStore(tmp_path / "fresh").close()  # nothing left claimed or open in this process
    with pytest.raises(StoreError):  # and again: the failed open released the directory
        ContentStore(tmp_path)


def test_a_pin_count_of_the_wrong_length_is_a_store_error(tmp_path: Path) -> None:
    with ContentStore(tmp_path, sync=False) as store:
        ref = store.put(b"pinned")
        store.pin(ref)
    _poke(tmp_path, b"pins", ref, b"\x01\x02\x03")
    with pytest.raises(StoreError, match=f"the pin of {ref.hex()} .* 3-byte count"):
        ContentStore(tmp_path)


def test_a_dictionary_registry_of_the_wrong_length_is_a_store_error(tmp_path: Path) -> None:
    _store(tmp_path, 5)
    _poke(tmp_path, b"meta", b"dictionaries", b"\x07" * 33)
    with pytest.raises(StoreError, match="dictionary registry is 33 bytes"):
        ContentStore(tmp_path)


def test_verify_reports_what_points_nowhere_and_counters_that_disagree(tmp_path: Path) -> None:
    with ContentStore(tmp_path, sync=False) as store:
        kept = store.put(b"kept object")
        store.bind("kept", kept)
        store.flush()  # verify() reads what is committed
        assert store.verify().ok and store.verify().objects == 1
    missing = hash_bytes(b"never stored")
    _poke(tmp_path, b"names", b"dangling", bytes(missing))
    _poke(tmp_path, b"pins", bytes(missing), struct.pack(">Q", 1))
    _poke(tmp_path, b"meta", b"counters", struct.pack(">QQQ", 7, 1, 1))
    with ContentStore(tmp_path, hot_bytes=0, warm_bytes=0) as store:
        check = store.verify()
    assert not check.ok
    assert check.dangling_names == (b"dangling",) and check.dangling_pins == (bytes(missing),)
    assert (check.objects, check.recorded_objects) == (1, 7) and not check.corrupt
    with pytest.raises(StoreError, match="no path"), ContentStore() as memory:
        memory.verify()
