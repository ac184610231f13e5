"""Effect results delivered twice, out of order, or stale: refused, named, and nothing runs twice.

A run is stopped part way; its journal is then forged (entries duplicated, swapped, or an old one put in a
later place, the chain relinked and rehashed so that it verifies) and the run resumed: the agent must
refuse the results it is fed, end with a fault that names the entry and the program line, and never make
a side-effecting call a second time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

import avm
from avm.journal import Entry, journals, read_journal

CALLS: list[tuple[str, int]] = []

# five numbered notes (a side-effecting tool), each followed by a sleep
NUMBERED = """
push 0
store i
loop:
load i
push 5
lt
jump_unless out
load name
load i
tool note 2
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


@avm.tool(side_effects=True)
def note(text: str, n: int) -> int:
    """Record a numbered note (a call that changes the world)."""
    CALLS.append((text, n))
    return n


async def _stopped_run(path: Path) -> tuple[str, str]:
    """A run stopped after a few notes; its id and its one journal's key."""
    CALLS.clear()
    with avm.ContentStore(path) as store:
        async with avm.VM(store, tools=[note], journal=True, snapshot_every=1000) as vm:
            await vm.spawn(NUMBERED, tools=["note"], inputs={"name": "a"})
            await trio.sleep(0.5)
            vm.interrupt()
            run_id = vm.run_id
        (key,) = journals(store)
    assert len(CALLS) >= 3
    return run_id, key


def _forge(path: Path, key: str, change: Callable[[list[Entry]], list[Entry]]) -> None:
    """Rewrite the journal through ``change``, renumbered, relinked and rehashed: an intact chain."""
    with avm.ContentStore(path) as store:
        chain = [e for _, e in read_journal(store, journals(store)[key])]
        prev = None
        for seq, entry in enumerate(change(chain)):
            prev = store.put(entry._replace(seq=seq, prev=prev).encode())
        assert prev is not None
        store.bind(f"journal/{key}", prev)


async def _resume(path: Path, run_id: str) -> avm.AgentHandle:
    with avm.ContentStore(path) as store:
        async with avm.VM(store, tools=[note], journal=True) as vm:
            (h,) = await vm.resume(run_id)
            with pytest.raises(avm.AgentError) as info:
                await h.result()
            return info.value  # type: ignore[return-value]


def _tools(chain: list[Entry]) -> list[int]:
    return [i for i, e in enumerate(chain) if e.kind == "tool"]


@pytest.mark.parametrize("sabotage", ["duplicate", "out_of_order", "stale"])
async def test_results_delivered_wrongly_are_refused_and_nothing_runs_twice(tmp_path: Path, sabotage: str) -> None:
    run_id, key = await _stopped_run(tmp_path)
    made = list(CALLS)

    def change(chain: list[Entry]) -> list[Entry]:
        tools = _tools(chain)
        first, second = tools[0], tools[1]
        if sabotage == "duplicate":  # the first call's result delivered twice
            return chain[:first + 1] + [chain[first]] + chain[first + 1:]
        if sabotage == "out_of_order":  # the first call's result after the sleep that followed it
            return chain[:first] + [chain[first + 1], chain[first]] + chain[first + 2:]
        # stale: the first call's entry again where the second call's is
        return chain[:second] + [chain[first]] + chain[second + 1:]

    _forge(tmp_path, key, change)
    error = await _resume(tmp_path, run_id)
    assert error.state is avm.AgentState.FAILED  # type: ignore[attr-defined]
    assert "ReplayDiverged" in error.detail and "journal entry" in error.detail  # type: ignore[attr-defined]
    assert "at line" in error.detail  # type: ignore[attr-defined]
    assert CALLS == made  # no call made again, none made out of turn


def test_a_frame_refuses_a_second_result_for_one_effect() -> None:
    frame = avm.Frame(avm.compile('push "x"\nllm\nreturn\n'))
    assert isinstance(frame.run(), avm.Effect)
    frame.resume("first")
    with pytest.raises(avm.FrameStateError, match="no effect outstanding"):
        frame.resume("again")
    assert frame.run() == avm.Done("first")
