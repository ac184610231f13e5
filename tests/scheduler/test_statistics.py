"""The VM's fleet-health figures and the per-agent records kept in the store."""

from __future__ import annotations

from contextlib import nullcontext

import pytest

import avm
from avm.runtime import VM

LOOP = """
    push 0
    store i
loop:
    load i
    push 1
    add
    store i
    jump loop
"""

SAME_TOOL_THRICE = """
    push "x"
    tool echo 1
    pop
    push "y"
    tool echo 1
    pop
    push "x"
    tool echo 1
    pop
    push "x"
    tool echo 1
    return
"""

SLEEP_FOREVER = """
loop:
    push 0
    sleep
    pop
    jump loop
"""

FAULT = """
    push 1
    push 0
    mod
    return
"""


@avm.tool
def echo(text: str) -> str:
    """Give the text back."""
    return text


@avm.tool
def constant(text: str) -> str:
    """Always the same answer."""
    return "same"


async def test_budget_terminal_states_faults_and_top_agents():
    async with VM() as vm:
        big = await vm.spawn(LOOP, budget=30, name="big")
        small = await vm.spawn(LOOP, budget=3)
        bad = await vm.spawn(FAULT, budget=5, name="bad")
        done = await vm.spawn("push 7\nreturn", budget=1)
        for h in (big, small, bad, done):
            with pytest.raises(avm.AgentError) if h is not done else nullcontext():
                await h.result()
        stats = vm.statistics(top=3)
        assert stats.energy_budget == pytest.approx(39)
        assert stats.energy_left == pytest.approx(39 - stats.energy_used)
        assert stats.ended == {"budget_exceeded": 2, "failed": 1, "done": 1}
        assert stats.faults == 1
        assert [entry[0] for entry in stats.top_agents] == [big.id, small.id, bad.id]
        assert stats.top_agents[0] == (big.id, "big", "budget_exceeded", pytest.approx(big.energy_used))
        assert vm.statistics().top_agents == ()  # only on request: it reads every live agent

        big.add_budget(5)  # host top-ups count in the budget granted
        with pytest.raises(avm.AgentError):
            await big.result()
        stats = vm.statistics()
        assert stats.energy_budget == pytest.approx(44)
        assert stats.ended["budget_exceeded"] == 3  # it ran out again


async def test_tool_churn_counts_calls_repeating_an_earlier_one_of_the_same_agent():
    async with VM(tools=[echo]) as vm:
        a = await vm.spawn(SAME_TOOL_THRICE, tools=["echo"], budget=50)
        b = await vm.spawn(SAME_TOOL_THRICE, tools=["echo"], budget=50)
        assert await a.result() == "x" and await b.result() == "x"
        stats = vm.statistics()
        assert stats.effects["tool"] == 8
        assert stats.tool_repeats == 4  # per agent: the 3rd and 4th "x"; b's calls do not repeat a's
        assert stats.repeated_effects == 2  # per agent: the 4th call repeats the 3rd, request and result


async def test_repeated_effects_up_to_a_stall():
    async with VM(tools=[constant], stall_limit=3) as vm:
        h = await vm.spawn('loop:\n    push "q"\n    tool constant 1\n    pop\n    jump loop',
                           tools=["constant"], budget=50)
        with pytest.raises(avm.AgentError, match="stalled"):
            await h.result()
        stats = vm.statistics()
        assert stats.ended == {"stalled": 1}
        assert stats.repeated_effects == 2 and stats.tool_repeats == 2


async def test_record_agents_binds_a_summary_per_ended_agent(tmp_path):
    store = avm.ContentStore(str(tmp_path / "store"))
    async with VM(store=store, record_agents=True) as vm:
        ok = await vm.spawn("push 5\nreturn", name="five")
        bad = await vm.spawn(FAULT, budget=5)
        sleeper = await vm.spawn(SLEEP_FOREVER, budget=5)
        assert await ok.result() == 5
        with pytest.raises(avm.AgentError):
            await bad.result()
        run = vm.run_id
    # leaving the VM cancelled the sleeper and recorded it too
    store.close()
    store = avm.ContentStore(str(tmp_path / "store"))
    try:
        names = store.names(f"agents/{run}/")
        records = {store.get_value(ref)["id"]: store.get_value(ref) for ref in names.values()}
    finally:
        store.close()
    assert sorted(records) == [ok.id, bad.id, sleeper.id]
    assert records[ok.id] == {"id": ok.id, "name": "five", "parent": None, "program": avm.compile("push 5\nreturn").id,
                              "state": "done", "value": 5, "error": None,
                              "energy_used": pytest.approx(ok.energy_used), "budget": 100.0}
    assert records[bad.id]["state"] == "failed" and "line 4" in records[bad.id]["error"]
    assert records[sleeper.id]["state"] == "cancelled"


async def test_program_ref_is_spawnable_by_agents():
    async with VM() as vm:
        ref = vm.program_ref("load x\npush 2\nmul\nreturn")
        parent = await vm.spawn("load child\npush x\npush 21\nmap 1\npush 5\ndelegate\nreturn",
                                inputs={"child": ref}, budget=20)
        assert await parent.result() == 42
        assert vm.program_ref(avm.compile("load x\npush 2\nmul\nreturn")) == ref



async def test_agent_errors_pickle():
    import pickle

    async with VM() as vm:
        h = await vm.spawn(FAULT, budget=5, name="bad")
        with pytest.raises(avm.AgentError) as info:
            await h.result()
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is avm.AgentError and str(copy) == str(info.value)
    assert (copy.agent_id, copy.agent_name, copy.state, copy.detail) == (h.id, "bad", h.state, h.detail)
