"""One agent can never hurt the fleet: bombs beside 1,000 healthy agents in one VM."""

from __future__ import annotations

import avm
from avm import AgentError
from avm.lang.values import MAX_DEPTH
from tests.sandbox.bombs import BOMBS, BUDGET

HEALTHY = "push 0\nstore i\nloop:\nload i\npush 1\nadd\nstore i\nload i\npush 50\nlt\njump_if loop\nload i\nreturn\n"


async def test_a_bomb_beside_a_thousand_healthy_agents_ends_and_every_healthy_one_finishes():
    async with avm.VM(quantum=20.0) as vm:
        bombs = [await vm.spawn(BOMBS[name][0], budget=BUDGET)
                 for name in ("eq_shared_19", "regex_stars", "hold_distinct_texts", "join_64Gi")]
        healthy = [await vm.spawn(HEALTHY, budget=100.0) for _ in range(1000)]
        for h in healthy:
            assert await h.result() == 50
        for b in bombs:
            try:
                await b.result()
            except AgentError:
                pass
            assert b.state.value in ("failed", "budget_exceeded")
            assert 0 < b.energy_used <= BUDGET
        assert vm.statistics().live == 0


async def test_the_memory_ceiling_is_a_setting_and_per_agent_and_statistics_report_what_agents_hold():
    source, _ = BOMBS["hold_distinct_texts"]
    keep = "push \"x\"\npush 200000\ncall repeat 2\nstore t\npush null\nrecv\nreturn\n"
    async with avm.VM(agent_memory_bytes=4 << 20) as vm:
        small = await vm.spawn(source, budget=BUDGET)
        roomy = await vm.spawn(source, budget=BUDGET, memory_limit=8 << 20)
        await vm.spawn(keep, budget=BUDGET)  # holds its text while it waits; leaving the VM cancels it
        for h in (small, roomy):
            try:
                await h.result()
            except AgentError:
                pass
        assert small.state.value == "failed" and "4194304 bytes" in small.detail
        assert roomy.state.value == "failed" and "8388608 bytes" in roomy.detail
        assert small.energy_used < roomy.energy_used  # it stopped at 4 MiB, the other at 8
        assert vm.statistics().memory_held >= 200000  # the holder's text, still held while it waits


def test_values_as_deep_as_the_limit_hibernate_and_wake_and_deeper_ones_cannot_be_made():
    # Issue 12 item 2: 150 levels used to hibernate and fail to wake. One limit now: making it faults.
    deep = "push 0\n" + "list 1\n" * MAX_DEPTH + "store v\npush 1.0\nrecv\npop\nload v\nreturn\n"
    # (each `list 1` checks the depth of what it nests: 100 levels cost ~1,000 energy to build)
    results = avm.run_agents(deep, count=2, budget=5000.0, hibernate_after_s=0.2)
    assert all(type(r) is list for r in results)
    deeper = "push 0\n" + "list 1\n" * (MAX_DEPTH + 1) + "store v\npush 1.0\nrecv\nreturn\n"
    results = avm.run_agents(deeper, count=2, budget=5000.0, hibernate_after_s=0.2)
    assert all("LimitError" in str(r) and "nested" in str(r) for r in results), results
