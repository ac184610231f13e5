"""The journal: every effect an agent performs, hash-chained in the store, with snapshots."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest
import trio

import avm
from avm.journal import (
    Entry,
    JournalError,
    check_journal,
    check_journals,
    journals,
    read_journal,
)
from avm.kernel.hooks import Hook
from avm.memory.ref import Ref

ASK_AND_ADD = """
push "hi"
llm
pop
push 1
push 2
tool add 2
push null
recv
pop
push 0.01
sleep
pop
return
"""


@avm.tool
async def add(a: int, b: int) -> int:
    return a + b


def _entries(store: avm.ContentStore) -> dict[int, list[Entry]]:
    return {int(key.rsplit("/", 1)[1]): [e for _, e in check_journal(store, head)]
            for key, head in journals(store).items()}


async def test_every_effect_is_an_entry_chained_to_the_one_before(tmp_path: Path) -> None:
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, tools=[add], journal=True, hibernate_after_s=None) as vm:
            h = await vm.spawn(ASK_AND_ADD, tools=["add"], name="asker")
            await trio.sleep(0.5)
            assert await h.send("hello")
            assert await h.result() == 3
            run_id = vm.run_id
        (agent_id, chain), = _entries(store).items()
        assert agent_id == h.id and list(journals(store)) == [f"{run_id}/{h.id:09d}"]
        assert [e.kind for e in chain] == ["start", "llm", "tool", "mail", "recv", "sleep", "end"]
        assert [e.seq for e in chain] == list(range(7))
        refs = [ref for ref, _ in check_journal(store, journals(store)[f"{run_id}/{h.id:09d}"])]
        assert [e.prev for e in chain] == [None, *refs[:-1]]
        energies = [e.energy for e in chain]
        assert energies == sorted(energies) and energies[-1] == round(h.energy_used * 1000)
        value = store.get_value
        start = value(chain[0].request)
        assert start["name"] == "asker" and start["tools"] == ["add"] and start["budget"] == 100_000
        assert value(chain[2].request) == ["add", [1, 2]] and value(chain[2].result) == {"value": 3}
        assert value(chain[3].result) == "hello" and value(chain[4].result) == {"value": "hello"}
        llm = value(chain[1].result)
        assert llm["value"] is not None and '"role":"assistant"' in llm["reply"]
        assert value(chain[-1].result) == {"state": "done", "value": 3, "error": None}


async def test_a_journal_survives_the_process_in_the_cold_tier(tmp_path: Path) -> None:
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, tools=[add], journal=True) as vm:
            handles = [await vm.spawn("push 1\npush 2\ntool add 2\nreturn\n", tools=["add"]) for _ in range(3)]
            for h in handles:
                assert await h.result() == 3
    with avm.ContentStore(tmp_path) as store:
        assert check_journals(store) == (3, 9, [])


async def test_snapshots_come_every_cadence_and_at_hibernation(autojump_clock) -> None:
    loop = ("push 0\nstore i\n"
            "loop:\nload i\npush 10\nlt\njump_unless out\npush 0\nsleep\npop\nload i\npush 1\nadd\nstore i\njump loop\n"
            "out:\npush null\nrecv\nreturn\n")
    async with avm.VM(journal=True, snapshot_every=4, hibernate_after_s=1.0) as vm:
        h = await vm.spawn(loop)
        await trio.sleep(5)
        assert h.state is avm.AgentState.HIBERNATED
        assert await h.send("late")
        assert await h.result() == "late"
        (chain,) = _entries(vm.store).values()
        kinds = [e.kind for e in chain]
        assert kinds.count("sleep") == 10 and kinds[-4:] == ["snapshot", "mail", "recv", "end"]
        # at most snapshot_every entries between two snapshots, and one right before the recv's result
        since = 0
        for kind in kinds[1:]:
            since = 0 if kind == "snapshot" else since + 1
            assert since <= 4
        state = vm.store.get_value(chain[-4].result)
        assert state["resumed_by"] == "next"  # the recv's result comes after it
        restored = avm.Frame.restore(avm.compile(loop), vm.store.get(state["frame"]))
        assert restored.status == "waiting" and restored.pending.kind == "recv"


async def test_a_child_names_its_parent_and_the_parent_journals_its_id() -> None:
    parent = 'push "push 7\\nreturn\\n"\npush null\npush 5\nspawn\nstore child\npush null\nrecv\nreturn\n'
    async with avm.VM(journal=True) as vm:
        h = await vm.spawn(parent)
        report = await h.result()
        chains = _entries(vm.store)
        child_id = report["child"]
        assert vm.store.get_value(chains[h.id][1].result) == {"child": child_id, "value": child_id}
        assert vm.store.get_value(chains[child_id][0].request)["parent"] == h.id
        assert [e.kind for e in chains[child_id]] == ["start", "end"]
        assert [e.kind for e in chains[h.id]] == ["start", "spawn",
                                                  "refund", "mail",  # its end: budget, notice
                                                  "recv", "end"]


async def test_no_journal_unless_asked() -> None:
    async with avm.VM(tools=[add]) as vm:
        h = await vm.spawn("push 1\npush 2\ntool add 2\nreturn\n", tools=["add"])
        assert await h.result() == 3
        assert journals(vm.store) == {}


async def test_a_hook_sees_every_effect_before_the_program_does() -> None:
    seen: list[tuple[str, object]] = []

    class Tracer(Hook):
        def effect(self, agent, effect, outcome):  # type: ignore[no-untyped-def]
            assert agent.frame.status == "waiting"  # not resumed yet
            seen.append((effect.kind, outcome.value))

    async with avm.VM(tools=[add]) as vm:
        vm.add_hook(Tracer())
        h = await vm.spawn("push 1\npush 2\ntool add 2\npush 0\nsleep\nreturn\n", tools=["add"])
        assert await h.result() is None
        assert seen == [("tool", 3), ("sleep", None)]
        assert sum(vm.statistics().effects.values()) == 2


# --- damage: each is found and named --------------------------------------------------------------


def _chain_in(store: avm.ContentStore, n: int) -> Ref:
    prev = None
    value = store.put_value("x")
    for seq in range(n):
        prev = store.put(Entry(seq, prev, "start" if seq == 0 else "sleep", value, value, seq).encode())
    assert prev is not None
    return prev


def test_a_deleted_entry_breaks_the_chain_there(tmp_path: Path) -> None:
    with avm.ContentStore(tmp_path) as store:
        head = _chain_in(store, 5)
        chain = read_journal(store, head)
        store.bind("journal/r/000000001", head)
    env = lmdb.open(str(tmp_path), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"objects", create=False)) as txn:
        assert txn.delete(chain[2][0])
    env.close()
    with avm.ContentStore(tmp_path, hot_bytes=0, warm_bytes=0) as store:
        journals_, entries, problems = check_journals(store)
    assert journals_ == 1 and entries == 0 and len(problems) == 1
    assert "journal r/000000001" in problems[0] and "(before seq 3) is missing" in problems[0]


def test_a_tampered_entry_is_refused(tmp_path: Path) -> None:
    with avm.ContentStore(tmp_path, hot_bytes=0, warm_bytes=0) as store:
        head = _chain_in(store, 4)
        victim = read_journal(store, head)[1][0]
        store.bind("journal/r/000000001", head)
        store.flush()
        blob = bytes(store._cold._blob(victim))  # type: ignore[union-attr]
    env = lmdb.open(str(tmp_path), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"objects", create=False)) as txn:
        txn.put(victim, blob[:-1] + bytes([blob[-1] ^ 1]))  # one bit flipped: the energy or the kind
    env.close()
    with avm.ContentStore(tmp_path, hot_bytes=0, warm_bytes=0) as store, \
            pytest.raises(JournalError, match=f"entry {victim.hex()[:16]} \\(before seq 2\\).*corrupt"):
        read_journal(store, store.lookup("journal/r/000000001"))  # type: ignore[arg-type]


def test_an_entry_cut_out_and_the_chain_relinked_is_a_skipped_transition() -> None:
    store = avm.ContentStore()
    head = _chain_in(store, 3)
    chain = read_journal(store, head)
    value = store.put_value("x")
    forged = store.put(Entry(3, chain[1][0], "sleep", value, value, 3).encode())  # seq 2 left out
    with pytest.raises(JournalError, match="entry seq 3 follows seq 1: 1 entry missing"):
        read_journal(store, forged)


def test_an_entry_naming_a_missing_result_is_found_by_check() -> None:
    store = avm.ContentStore()
    first = store.put(Entry(0, None, "start", None, Ref(b"\x01" * 32), 0).encode())
    assert len(read_journal(store, first)) == 1
    with pytest.raises(JournalError, match="seq 0 \\(start\\): its result 0101010101010101 is missing"):
        check_journal(store, first)


@pytest.mark.parametrize("data", [b"", b"\x01not a value", b"plain text", b"\x01i\x02"])
def test_an_object_that_is_no_entry_is_refused(data: bytes) -> None:
    store = avm.ContentStore()
    with pytest.raises(JournalError, match="not a journal entry"):
        read_journal(store, store.put(data))


async def test_gc_refuses_a_store_holding_journals_unless_told(tmp_path: Path) -> None:
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True) as vm:
            await (await vm.spawn('push 0.01\nsleep\nreturn\n')).result()
        with pytest.raises(avm.StoreError, match="holds journals"):
            store.gc()
        assert journals(store)  # nothing went
        store.gc(drop_journals=True)
