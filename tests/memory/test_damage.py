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

from avm.errors import StoreError
from avm.memory import ContentStore
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
    return subprocess.run([sys.executable, "-c", OPEN, str(path)], check=False, capture_output=True, text=True, timeout=60)


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
