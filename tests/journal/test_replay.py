"""Deterministic replay: an agent's program run again against its journal reproduces it, hash for hash;
a journal that is not what the program does is named at its first differing entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

import avm
from avm.journal import Entry, journals, read_journal
from avm.journal.replay import replay_journal

ROOT = Path(__file__).resolve().parent.parent.parent


@avm.tool
async def add(a: int, b: int) -> int:
    return a + b


PROGRAMS = {
    "asker": 'push "hi"\nllm\npop\npush 1\npush 2\ntool add 2\npush null\nrecv\npop\npush 0.01\nsleep\npop\nreturn\n',
    "delegator": 'push "push 7\\nreturn\\n"\npush null\npush 5\ndelegate\nreturn\n',
    "spawner": 'push "push 8\\nreturn\\n"\npush null\npush 5\nspawn\npop\npush 5\nrecv\nreturn\n',
    "faulty": "push 1\npush 0\ndiv\nreturn\n",
    "researcher": (ROOT / "examples" / "researcher.avm").read_text(),
}


async def _run(store: avm.ContentStore) -> dict[str, avm.AgentHandle]:
    async with avm.VM(store, tools=[add], journal=True, snapshot_every=2, hibernate_after_s=0.1) as vm:
        handles = {name: await vm.spawn(source, tools=["add"] if name == "asker" else (), name=name,
                                        restart="on-fault" if name == "faulty" else "never")
                   for name, source in PROGRAMS.items()}
        await trio.sleep(0.5)
        assert await handles["asker"].send("hello")
        await vm.join()
        return handles


async def test_every_agent_of_a_run_is_reproduced_hash_for_hash(tmp_path: Path) -> None:
    with avm.ContentStore(tmp_path) as store:
        handles = await _run(store)
        assert handles["asker"].state is avm.AgentState.DONE and handles["faulty"].state is avm.AgentState.FAILED
        found = journals(store)
        assert len(found) == 7  # five agents, two children
        reports = [replay_journal(store, key, head) for key, head in sorted(found.items())]
    assert all(r.ok for r in reports), [r.line() for r in reports if not r.ok]
    assert sum(r.entries for r in reports) == sum(r.replayed for r in reports) > 30


def _forge(store: avm.ContentStore, chain: list[Entry], change: dict[int, Entry]) -> avm.Ref:
    """A chain with some entries replaced, relinked and rehashed: intact as a chain, false as a record."""
    prev = None
    for entry in chain:
        entry = change.get(entry.seq, entry)
        prev = store.put(entry._replace(prev=prev).encode())
    assert prev is not None
    return prev


async def test_a_journal_the_program_did_not_write_is_named_at_its_first_difference(tmp_path: Path) -> None:
    with avm.ContentStore(tmp_path) as store:
        handles = await _run(store)
        key = next(k for k in journals(store) if k.endswith(f"/{handles['asker'].id:09d}"))
        chain = [e for _, e in read_journal(store, journals(store)[key])]
        tool = next(e for e in chain if e.kind == "tool")
        other = store.put_value(["add", [2, 2]])  # an effect the program never asked for
        head = _forge(store, chain, {tool.seq: tool._replace(request=other)})
        report = replay_journal(store, "forged", head)
        assert not report.ok and report.replayed == tool.seq
        assert f"entry {tool.seq}: the journal has tool [\"add\", [2, 2]], the program (line 6) asks tool " \
               f"[\"add\", [1, 2]]" in report.problem
        # a result the program keeps, changed: the snapshot after it (the frame holds 4, not 3) is the first
        # entry that no longer follows; without snapshots, the end entry
        head = _forge(store, chain, {tool.seq: tool._replace(result=store.put_value({"value": 4}))})
        report = replay_journal(store, "forged", head)
        assert not report.ok and report.replayed > tool.seq  # (the snapshot taken at the tool call still matches)
        assert f"entry {report.replayed}: the snapshot in the journal is not the frame" in report.problem
        bare = [e for e in chain if e.kind != "snapshot"]
        bare = [e._replace(seq=i) for i, e in enumerate(bare)]
        tool = next(e for e in bare if e.kind == "tool")
        head = _forge(store, bare, {tool.seq: tool._replace(result=store.put_value({"value": 4}))})
        report = replay_journal(store, "forged", head)
        assert not report.ok and "the journal says the agent ended done 3, the replay ends done 4" in report.problem
        swapped = {chain[1].seq: chain[2]._replace(seq=chain[1].seq), chain[2].seq: chain[1]._replace(seq=chain[2].seq)}
        report = replay_journal(store, "forged", _forge(store, chain, swapped))
        assert not report.ok and "entry 1: the journal has tool" in report.problem  # results out of order


def test_avm_replay_checks_a_run_from_the_command_line(tmp_path: Path) -> None:
    program = tmp_path / "p.avm"
    program.write_text(PROGRAMS["researcher"])
    store = tmp_path / "store"
    ran = subprocess.run([sys.executable, "-m", "avm", "run", str(program), "--agents", "3", "--store", str(store),
                          "--no-dashboard"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr
    every = subprocess.run([sys.executable, "-m", "avm", "replay", str(store), "--all", "--json"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, check=False)
    assert every.returncode == 0, every.stderr
    assert json.loads(every.stdout) == {"store": str(store), "journals": 3, "reproduced": 3, "mismatches": []}
    one = subprocess.run([sys.executable, "-m", "avm", "replay", str(store), "2"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert one.returncode == 0 and "entries reproduced, the same hash chain" in one.stdout


@avm.tool
def unordered() -> dict:
    """A result whose keys are not in order: its JSON must read the same live and from the journal."""
    return {"zeta": 1, "alpha": {"y": 2, "b": 3}}


async def test_a_map_from_outside_renders_the_same_live_and_from_the_journal(tmp_path: Path) -> None:
    program = ('tool unordered 0\nstore r\npush "role"\npush "user"\npush "content"\nload r\nmap 2\n'
               'llm\npop\nload r\nreturn\n')
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, tools=[unordered], journal=True, snapshot_every=1) as vm:
            h = await vm.spawn(program, tools=["unordered"])
            value = await h.result()
        (key, head), = journals(store).items()
        report = replay_journal(store, key, head)
    assert list(value) == ["alpha", "zeta"] and list(value["alpha"]) == ["b", "y"]  # the store's order, live
    assert report.ok, report.line()


def test_canonical_order_copies_only_what_is_out_of_order() -> None:
    from avm.lang.values import canonical_order

    ordered = {"a": [1, {"b": 2, "c": 3}], "d": "x"}
    assert canonical_order(ordered) is ordered
    mixed = [1, {"b": 1, "a": 2}, "z"]
    out = canonical_order(mixed)
    assert out == mixed and out is not mixed and list(out[1]) == ["a", "b"] and list(mixed[1]) == ["b", "a"]
