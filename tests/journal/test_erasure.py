"""Erasure: an object's content replaced by a tombstone; chains still verify, replay stops at it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import avm
from avm.errors import Erased

ROOT = Path(__file__).resolve().parent.parent.parent
PERSONAL = b"Jane Doe, 12 Example Street, born 1980-01-01. " * 20


def avm_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "avm", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=False)


@pytest.mark.parametrize("on_disk", [False, True])
def test_an_erased_object_reads_as_erased_and_stays_erased(tmp_path: Path, on_disk: bool) -> None:
    store = avm.ContentStore(tmp_path if on_disk else None)
    ref = store.put(PERSONAL)
    store.bind("kept", ref)
    store.erase(ref, "request 17")
    with pytest.raises(Erased, match=f"object {ref.hex()} was erased"):
        store.get(ref)
    assert ref in store and store.lookup("kept") == ref  # the ref stays: whatever names it still does
    assert store.put(PERSONAL) == ref  # putting the content again does not bring it back
    with pytest.raises(Erased):
        store.get_value(ref)
    with pytest.raises(avm.NotFound):
        store.erase(avm.Ref(b"\x07" * 32))
    store.close()
    if on_disk:
        with avm.ContentStore(tmp_path) as again:
            with pytest.raises(Erased):
                again.get(ref)
            check = again.verify()
            assert check.ok and check.erased == 1


def test_content_erased_before_it_was_committed_never_reaches_the_file(tmp_path: Path) -> None:
    with avm.ContentStore(tmp_path) as store:
        ref = store.put(PERSONAL)  # queued for the cold tier, not yet committed
        store.erase(ref)
    data = (tmp_path / "data.mdb").read_bytes()
    assert PERSONAL[:40] not in data
    with avm.ContentStore(tmp_path) as store, pytest.raises(Erased):
        store.get(ref)


def test_erasing_a_journaled_result_keeps_the_chains_and_stops_replay(tmp_path: Path) -> None:
    program = tmp_path / "p.avm"
    program.write_text('push "hello"\nllm\nreturn\n')
    store = tmp_path / "store"
    assert avm_cmd("run", str(program), "--store", str(store), "--no-dashboard").returncode == 0
    journal = json.loads(avm_cmd("inspect", str(store), "1", "--json").stdout)
    llm = next(e for e in journal["entries"] if e["kind"] == "llm")
    erased = avm_cmd("erase", str(store), llm["result_ref"], "--reason", "request 17")
    assert erased.returncode == 0 and "erased" in erased.stdout
    verify = avm_cmd("verify", str(store))
    assert verify.returncode == 0 and "1 erased on request" in verify.stdout
    replay = avm_cmd("replay", str(store), "1")
    assert replay.returncode == 1 and "stopped: erased input" in replay.stdout
    shown = json.loads(avm_cmd("inspect", str(store), "1", "--json").stdout)
    assert next(e for e in shown["entries"] if e["kind"] == "llm")["result"] == "<erased>"
    again = avm_cmd("erase", str(store), llm["result_ref"])
    assert again.returncode == 0 and "erased already" in again.stdout
    entry = avm_cmd("erase", str(store), llm["ref"])  # the entry itself: refused, the chain must stay followable
    assert entry.returncode == 2 and "is a journal entry" in entry.stderr
    for bad, said in (("xyz", "not a ref"), ("ab" * 32, "no object")):
        result = avm_cmd("erase", str(store), bad)
        assert result.returncode == 2 and said in result.stderr
