"""Crash recovery: a run stopped (interrupted, or killed with SIGKILL) goes on from its journals.

Journaled effects are not performed again, agents that ended are not run again, and a side-effecting tool
call is made at most once, however the run was stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import trio

import avm
from avm.journal import check_journals, journals, read_journal
from avm.journal.replay import replay_journal

ROOT = Path(__file__).resolve().parent.parent.parent

# five notes, each a side-effecting call followed by a sleep; then "done"
NOTES = """
push 0
store i
loop:
load i
push 5
lt
jump_unless out
load name
tool note 1
pop
push 0.2
sleep
pop
load i
push 1
add
store i
jump loop
out:
push "done"
return
"""


def note_tool(log: Path) -> avm.Tool:
    @avm.tool(side_effects=True)
    def note(text: str) -> int:
        """Append a line to the log: a call that changes the world (in a worker thread: the key goes along)."""
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{avm.idempotency_key()} {text}\n")
        return 1

    return note


def _notes(log: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in log.read_text().splitlines()] if log.exists() else []  # type: ignore[misc]


async def _fleet(store: avm.ContentStore, log: Path, stop_after: float | None) -> tuple[str, list[float]]:
    async with avm.VM(store, tools=[note_tool(log)], journal=True, snapshot_every=3) as vm:
        handles = [await vm.spawn(NOTES, tools=["note"], inputs={"name": f"a{i}"}, name=f"a{i}") for i in range(6)]
        if stop_after is None:
            return vm.run_id, [(await h.result(), h.energy_used)[1] for h in handles]
        await trio.sleep(stop_after)
        assert vm.interrupt() == 6
        return vm.run_id, []


async def test_an_interrupted_run_goes_on_and_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    with avm.ContentStore(tmp_path / "whole") as store:
        _, energies = await _fleet(store, tmp_path / "whole.log", None)
    with avm.ContentStore(tmp_path / "s") as store:
        run_id, _ = await _fleet(store, tmp_path / "s.log", 0.5)
    written = len(_notes(tmp_path / "s.log"))
    assert 6 <= written < 30
    with avm.ContentStore(tmp_path / "s") as store:
        async with avm.VM(store, tools=[note_tool(tmp_path / "s.log")], journal=True) as vm:
            handles = await vm.resume(run_id)
            assert vm.run_id == run_id and [h.name for h in handles] == [f"a{i}" for i in range(6)]
            assert [await h.result() for h in handles] == ["done"] * 6
            # the energy of a run that was never stopped (but for the tools' wall time, charged per second)
            assert [h.energy_used for h in handles] == pytest.approx(energies, abs=0.01)
        assert check_journals(store)[2] == []
    notes = _notes(tmp_path / "s.log")
    assert Counter(name for _, name in notes) == {f"a{i}": 5 for i in range(6)}  # none twice, none lost
    assert len({key for key, _ in notes}) == 30  # each call its own key


async def test_agents_that_ended_are_not_run_again(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with avm.ContentStore(tmp_path / "s") as store:
        async with avm.VM(store, tools=[note_tool(log)], journal=True) as vm:
            quick = await vm.spawn('push "x"\ntool note 1\nreturn\n', tools=["note"], name="quick")
            slow = await vm.spawn(NOTES, tools=["note"], inputs={"name": "slow"}, name="slow")
            assert await quick.result() == 1
            await trio.sleep(0.3)
            vm.interrupt()
            run_id = vm.run_id
    with avm.ContentStore(tmp_path / "s") as store:
        async with avm.VM(store, tools=[note_tool(log)], journal=True) as vm:
            quick, slow = await vm.resume(run_id)
            assert quick.state is avm.AgentState.DONE and await quick.result() == 1
            assert await slow.result() == "done"
    assert Counter(name for _, name in _notes(log)) == {"x": 1, "slow": 5}


async def test_resume_needs_a_journal_and_comes_first(tmp_path: Path) -> None:
    async with avm.VM() as vm:
        with pytest.raises(avm.VMError, match="journal=True"):
            await vm.resume("r")
    async with avm.VM(journal=True) as vm:
        await vm.spawn("push 1\nreturn\n")
        with pytest.raises(avm.VMError, match="before any spawn"):
            await vm.resume("r")
    async with avm.VM(journal=True) as vm:
        with pytest.raises(avm.VMError, match=r"no journaled run .nope. in the store \(runs: none\)"):
            await vm.resume("nope")


def _run_and_kill(script: str, log: Path, kill_after_notes: int) -> str:
    """Run ``script`` in a child process, SIGKILL it once the log has that many notes; the run id it printed."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    deadline = time.monotonic() + 60
    while len(_notes(log)) < kill_after_notes and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    return run_id


CRASHING = textwrap.dedent('''
    import sys, trio, avm
    sys.path.insert(0, {tests!r})
    from journal.test_recovery import NOTES, note_tool

    async def main():
        store = avm.ContentStore({store!r})
        async with avm.VM(store, tools=[note_tool(__import__("pathlib").Path({log!r}))], journal=True,
                          snapshot_every=2) as vm:
            print(vm.run_id, flush=True)
            for i in range(20):
                await vm.spawn(NOTES, tools=["note"], inputs={{"name": f"a{{i}}"}}, name=f"a{{i}}")
            await vm.join()

    trio.run(main)
''')


@pytest.mark.parametrize("kill_after_notes", [1, 30, 70])
async def test_a_run_killed_with_sigkill_goes_on_and_no_side_effect_happens_twice(
        tmp_path: Path, kill_after_notes: int) -> None:
    log, store_dir = tmp_path / "log", tmp_path / "s"
    run_id = _run_and_kill(CRASHING.format(tests=str(ROOT / "tests"), store=str(store_dir), log=str(log)), log,
                           kill_after_notes)
    before = _notes(log)
    with avm.ContentStore(store_dir) as store:
        assert check_journals(store)[2] == []  # what the crash left is whole
        async with avm.VM(store, tools=[note_tool(log)], journal=True) as vm:
            handles = await vm.resume(run_id)
            assert len(handles) == 20  # (the script spawns them all before its first checkpoint)
            results = [await h.result() for h in handles]
        assert check_journals(store)[2] == []
        for key, head in journals(store).items():  # what the lives wrote is what the programs do
            report = replay_journal(store, key, head)
            assert report.ok, report.line()
            kinds = [e.kind for _, e in read_journal(store, head)]
            # an intent is always followed by its call's entry: made, or refused as interrupted
            assert all(kinds[i + 1] == "tool" for i, kind in enumerate(kinds) if kind == "intent")
    assert results == ["done"] * 20
    notes = _notes(log)
    keys = Counter(key for key, _ in notes)
    assert max(keys.values()) == 1, "a side-effecting call was made twice"
    per_agent = Counter(name for _, name in notes)
    # each agent made its five calls once, but for calls the crash interrupted (made or not: never again)
    assert all(per_agent[f"a{i}"] <= 5 for i in range(20))
    assert sum(5 - per_agent[f"a{i}"] for i in range(20)) <= 20  # at most one call per agent was in flight
    assert notes[:len(before)] == before
