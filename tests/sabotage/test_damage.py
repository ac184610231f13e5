"""Damage to a journaled store: a bit flip in a stored value, a truncated LMDB value, a tampered journal
entry, a deleted one. Each is found by `avm verify` (exit 1, naming the first broken link) and refused by
`avm run --resume` (exit 2, one line): never a guess, never a silent repair. The real CLI, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

import avm
from avm.journal import journals, read_journal

ROOT = Path(__file__).resolve().parent.parent.parent
PROGRAM = 'push "hello"\nllm\npop\npush 0.5\nsleep\npop\npush 0.5\nsleep\npop\npush 42\nreturn\n'


def avm_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "avm", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=False)


def _objects(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    env = lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True, db=env.open_db(b"objects", create=False)) as txn:
            change(txn)
    finally:
        env.close()


@pytest.mark.parametrize("damage", ["bit_flip_in_a_value", "truncated_value", "tampered_entry", "deleted_entry"])
def test_damage_is_named_by_verify_and_refused_by_resume(tmp_path: Path, damage: str) -> None:
    program = tmp_path / "p.avm"
    program.write_text(PROGRAM)
    store = tmp_path / "store"
    run = ["run", str(program), "--store", str(store), "--no-dashboard"]
    assert avm_cmd(*run).returncode == 0
    with avm.ContentStore(store) as opened:
        (key, head), = journals(opened).items()
        chain = read_journal(opened, head)
    llm_ref, llm = next((ref, e) for ref, e in chain if e.kind == "llm")
    sleep_ref = next(ref for ref, e in chain if e.kind == "sleep")

    def change(txn: lmdb.Transaction) -> None:
        if damage == "bit_flip_in_a_value":
            blob = bytearray(txn.get(llm.result))
            blob[-3] ^= 0x10
            txn.put(llm.result, bytes(blob))
        elif damage == "truncated_value":
            txn.put(sleep_ref, txn.get(sleep_ref)[:-4])
        elif damage == "tampered_entry":
            blob = bytearray(txn.get(llm_ref))
            blob[-1] ^= 0x01  # the energy's last byte
            txn.put(llm_ref, bytes(blob))
        else:
            assert txn.delete(sleep_ref)

    _objects(store, change)
    verify = avm_cmd("verify", str(store))
    assert verify.returncode == 1
    line = next(t for t in verify.stdout.splitlines() if t.startswith("problem: broken journal"))
    assert f"journal {key}" in line
    if damage == "bit_flip_in_a_value":
        assert f"seq {llm.seq} (llm): its result {llm.result.hex()[:16]}" in line and "corrupt" in line
    elif damage == "deleted_entry":
        assert f"entry {sleep_ref.hex()[:16]}" in line and "is missing" in line
    else:
        target = sleep_ref if damage == "truncated_value" else llm_ref
        assert f"entry {target.hex()[:16]}" in line and "corrupt" in line
    resumed = avm_cmd(*run, "--resume")
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert f"cannot resume run {key.split('/')[0]}" in resumed.stderr and f"journal {key}" in resumed.stderr
    replay = avm_cmd("replay", str(store), "--all")
    assert replay.returncode == 1
