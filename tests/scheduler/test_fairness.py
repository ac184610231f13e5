"""Preemption by energy quantum, priorities and aging in the run queue."""

from __future__ import annotations

import trio
import trio.testing

from avm.runtime import VM
from avm.scheduler.runqueue import RunQueue
from avm.scheduler.states import AgentState as S
from tests.scheduler.test_runtime import COUNT

LOOP = COUNT  # counts to n: a long loop without effects

TICKS = """
    push 0
    store k
tick:
    push 0.02
    sleep
    pop
    load k
    push 1
    add
    store k
    load k
    push 10
    lt
    jump_if tick
    load k
    return
"""


# The clock of the timers test: the busy agent's instructions, not the machine's. Virtual time moves
# by QUANTUM_S per quantum of energy the busy agent uses (about 2,000 instructions: about what it takes
# on a quiet machine) and by TICK_S per trio scheduling round, so how late a timer is counts how much the
# loop ran before it got its turn, the same under any load on the machine.
QUANTUM_S = 0.002
TICK_S = 0.0001


async def test_one_busy_agent_cannot_stall_a_thousand_timers(mock_clock):
    """1,000 agents sleeping 10 x 20 ms, and one agent in a loop of minutes of instructions:
    the timers all finish, about on time, while the loop is still running, because the loop
    yields after every quantum."""
    async with VM(hibernate_after_s=None) as vm:
        quantum = vm.settings.quantum
        busy = await vm.spawn(LOOP, inputs={"n": 20_000_000}, budget=1e8, priority="background")

        async def instruction_clock() -> None:
            seen = 0.0
            while True:
                used = busy.energy_used
                mock_clock.jump(TICK_S + (used - seen) / quantum * QUANTUM_S)
                seen = used
                await trio.sleep(0)

        finished: list[float] = []

        async def wait(h, start):
            assert await h.result() == 10
            finished.append(trio.current_time() - start)

        async with trio.open_nursery() as clock_nursery:
            clock_nursery.start_soon(instruction_clock)
            async with trio.open_nursery() as nursery:
                for _ in range(1000):
                    nursery.start_soon(wait, await vm.spawn(TICKS), trio.current_time())
            clock_nursery.cancel_scope.cancel()
        assert len(finished) == 1000
        assert busy.state is not S.DONE  # still looping: the timers did not wait for it
        # nominal 0.2 s; each of the 10 wakes waits for at most a quantum or two of the loop (2-4 ms)
        assert max(finished) < 0.2 + 10 * 3 * QUANTUM_S, max(finished)
        assert vm.statistics().preemptions > 0
        busy.cancel()


async def _granted_order(queue: RunQueue, clock: trio.testing.MockClock, plan: list[tuple[float, int, str]]):
    """Queue tasks at the given (time, rank, label) moments, then let the dispatcher grant them all."""
    order: list[str] = []

    async def waiter(rank: int, label: str, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        await queue.wait_turn(rank)
        order.append(label)

    async with trio.open_nursery() as nursery:
        for at, rank, label in plan:
            clock.jump(max(0.0, at - trio.current_time()))
            await nursery.start(waiter, rank, label)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(queue.dispatch)
        while len(order) < len(plan):
            await trio.sleep(0)
        nursery.cancel_scope.cancel()
    return order


async def test_run_queue_serves_by_priority(mock_clock):
    clock = mock_clock
    queue = RunQueue(aging_s=0.05)
    order = await _granted_order(queue, clock, [(0.0, 2, "background"), (0.0, 1, "normal"), (0.0, 0, "interactive")])
    assert order == ["interactive", "normal", "background"]


async def test_aging_lets_a_waiting_background_agent_overtake_fresh_interactive_work(mock_clock):
    clock = mock_clock
    queue = RunQueue(aging_s=0.05)
    # waited 0.15 s > 2 * aging: ranks ahead of interactive work queued now
    start = trio.current_time()
    order = await _granted_order(queue, clock, [(start, 2, "old background")]
                                 + [(start + 0.15, 0, f"interactive {i}") for i in range(5)])
    assert order[0] == "old background"
    # waited only 0.05 s < 2 * aging: still behind
    start = trio.current_time()
    order = await _granted_order(queue, clock, [(start, 2, "young background")]
                                 + [(start + 0.05, 0, f"interactive {i}") for i in range(5)])
    assert order[-1] == "young background"


async def test_priorities_order_busy_agents_and_aging_keeps_background_moving():
    async def finish_order(aging_s: float) -> list[str]:
        order: list[str] = []
        async with VM(hibernate_after_s=None, quantum=5.0, aging_s=aging_s) as vm:
            spawned = [("background", await vm.spawn(LOOP, inputs={"n": 2_000}, budget=1e6, priority="background"))]
            for i in range(4):
                spawned.append((f"interactive {i}", await vm.spawn(LOOP, inputs={"n": 8_000}, budget=1e6,
                                                                   priority="interactive")))

            async def wait(label, h):
                await h.result()
                order.append(label)

            async with trio.open_nursery() as nursery:
                for label, h in spawned:
                    nursery.start_soon(wait, label, h)
        return order

    strict = await finish_order(aging_s=1e6)  # aging effectively off: background only when nothing else waits
    assert strict[-1] == "background"
    aged = await finish_order(aging_s=1e-6)  # aging dominant: turns go in arrival order, the short job ends first
    assert aged[0] == "background"
