"""`avm inspect` and `avm verify` on damaged stores: real files, real damage, the real CLI in a subprocess.

Whatever the damage, `avm` answers with an exit code of 0, 1 or 2 and at most one line on stderr: never a
signal, never a traceback.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import avm
from avm.memory.lmdb_meta import read_meta

ROOT = Path(__file__).resolve().parent.parent
RUN = "20990101T000000-000001"


def avm_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "avm", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=False)


def _record(i: int, rng: random.Random) -> dict[str, object]:
    return {"id": i, "name": f"agent-{i}", "parent": None, "program": "00", "state": "done",
            "value": rng.randbytes(40).hex(), "error": None, "energy_used": 1.5, "budget": 10.0}


def _make_store(path: Path, agents: int = 5, objects: int = 3000) -> dict[int, avm.Ref]:
    rng = random.Random(12)
    refs = {}
    with avm.ContentStore(str(path), sync=False) as store:
        for i in range(objects):
            store.bind(f"n/{i}", store.put(rng.randbytes(100) + b"x" * (i % 500)))
        for i in range(1, agents + 1):
            refs[i] = store.put_value(_record(i, rng))
            store.bind(f"agents/{RUN}/{i:09d}", refs[i])
    return refs


def _flip(data_file: Path, needle: bytes) -> None:
    raw = bytearray(data_file.read_bytes())
    at = raw.find(needle)
    assert at >= 0 and raw.find(needle, at + 1) < 0
    raw[at + len(needle) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))


def _leaves_holding(raw: bytes | bytearray, page_size: int, key: bytes) -> list[int]:
    """The LMDB leaf pages with a node under ``key`` (the live one, and any stale copy in a free page;
    never a page of another tree that only holds old bytes of it): page header 16 bytes (number, pad,
    flags, lower, upper), then the node offsets; a node is sizes, flags, key size, key."""
    found = []
    for page in range(2, len(raw) // page_size):
        head = page * page_size
        flags, lower = struct.unpack_from("<HH", raw, head + 10)
        if not flags & 0x02 or not 16 <= lower <= page_size:  # P_LEAF
            continue
        for slot in range(16, lower - 1, 2):
            (node,) = struct.unpack_from("<H", raw, head + slot)
            if node + 8 > page_size:
                continue
            (ksize,) = struct.unpack_from("<H", raw, head + node + 6)
            if bytes(raw[head + node + 8:head + node + 8 + ksize]) == key:
                found.append(page)
                break
    return found


def _one_clear_line(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode in (0, 1, 2), (result.returncode, result.stderr[-800:])
    assert "Traceback" not in result.stderr
    if result.returncode == 2:
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_a_healthy_store_verifies(tmp_path: Path) -> None:
    _make_store(tmp_path / "s", objects=200)
    result = avm_cmd("verify", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    assert "205 objects" in result.stdout and "no problems found" in result.stdout
    report = json.loads(avm_cmd("verify", str(tmp_path / "s"), "--json").stdout)
    assert report["ok"] and report["objects"] == report["recorded_objects"] == 205


def test_zeroed_pages_are_one_line_never_a_signal(tmp_path: Path) -> None:
    """A zeroed 4 KiB page trips LMDB's assertions (SIGABRT) in whoever reads it: here, only the child."""
    original = tmp_path / "original"
    _make_store(original)
    meta = read_meta(str(original / "data.mdb"))
    assert meta is not None
    killed = []
    for fraction in (0.55, 0.75, 0.9, 0.97):
        page = int(meta.last_page * fraction)
        damaged = tmp_path / f"page{page}"
        damaged.mkdir()
        raw = bytearray((original / "data.mdb").read_bytes())
        raw[page * meta.page_size:(page + 1) * meta.page_size] = bytes(meta.page_size)
        (damaged / "data.mdb").write_bytes(bytes(raw))
        for command in ("verify", "inspect"):
            result = avm_cmd(command, str(damaged))
            _one_clear_line(result)
            if "killed the process that checked it with SIG" in result.stderr:
                assert str(damaged / "data.mdb") in result.stderr
                killed.append((page, command))
        assert (damaged / "data.mdb").read_bytes() == bytes(raw)  # read, never repaired or written
    assert killed, "no zeroed page reached LMDB's assertions: pick other pages"


def test_a_truncated_store_is_one_line(tmp_path: Path) -> None:
    _make_store(tmp_path)
    data = tmp_path / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    for command in ("verify", "inspect"):
        result = avm_cmd(command, str(tmp_path))
        _one_clear_line(result)
        assert result.returncode == 2 and "is truncated" in result.stderr and str(data) in result.stderr


def test_a_corrupt_agent_record_is_counted_and_reported(tmp_path: Path) -> None:
    refs = _make_store(tmp_path, objects=10)
    with avm.ContentStore(str(tmp_path)) as store:
        blob = bytes(store._cold._blob(refs[3]))  # as stored (maybe compressed)
    _flip(tmp_path / "data.mdb", blob[1:])

    result = avm_cmd("inspect", str(tmp_path))
    _one_clear_line(result)
    assert result.returncode == 1  # damage found: not a silent success
    assert "agents: 5 of 5" in result.stdout and "unreadable 1" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["3"])
    assert "unreadable" in row and "damaged" in row
    assert f"agents/{RUN}/000000003" in result.stdout and "1 of them are damaged" in result.stdout

    report = json.loads(avm_cmd("inspect", str(tmp_path), "--json").stdout)
    assert report["runs"][0]["agents"] == 5 and report["runs"][0]["by_state"] == {"done": 4, "unreadable": 1}
    assert report["damaged_objects"] == 1

    result = avm_cmd("verify", str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert f"1 corrupt objects (digest mismatch): {refs[3].hex()}" in result.stdout


@pytest.mark.parametrize("kind", ["missing", "not a store"])
def test_verify_of_what_is_not_a_store(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "x"
    if kind == "not a store":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    result = avm_cmd("verify", str(target))
    _one_clear_line(result)
    assert result.returncode == 2 and str(target) in result.stderr


def test_a_zeroed_page_under_agent_records_is_damage_for_inspect_as_for_verify(tmp_path: Path) -> None:
    """LMDB reads a zeroed page as MDB_CORRUPTED: a record it cannot read is damaged, not "not a value"."""
    refs = _make_store(tmp_path, agents=5, objects=10)
    meta = read_meta(str(tmp_path / "data.mdb"))
    assert meta is not None
    raw = bytearray((tmp_path / "data.mdb").read_bytes())
    pages = _leaves_holding(raw, meta.page_size, bytes(refs[3]))
    assert pages
    for page in pages:
        raw[page * meta.page_size:(page + 1) * meta.page_size] = bytes(meta.page_size)
    (tmp_path / "data.mdb").write_bytes(bytes(raw))

    result = avm_cmd("inspect", str(tmp_path), "--limit", "0")
    _one_clear_line(result)
    assert result.returncode == 1, (result.stdout[-800:], result.stderr)  # was 0: damage filed as "not a value"
    assert "MDB_CORRUPTED" in result.stdout and "of them are damaged" in result.stdout
    report = json.loads(avm_cmd("inspect", str(tmp_path), "--json").stdout)
    assert report["damaged_objects"] >= 1
    assert avm_cmd("verify", str(tmp_path)).returncode in (1, 2)
