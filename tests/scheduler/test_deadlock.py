"""A fleet that can make no progress (every live agent waits for a message none can send) ends those
agents STALLED when the host sends nothing (VMSettings.host_sends false); otherwise they wait."""

from __future__ import annotations

import trio

import avm
from avm.kernel.stalls import DETAIL

WAIT = "push null\nrecv\nreturn\n"


async def test_agents_waiting_for_a_message_no_one_can_send_end_stalled() -> None:
    for hibernate in (None, 0.01):  # awake in their recv, or hibernated
        async with avm.VM(host_sends=False, hibernate_after_s=hibernate) as vm:
            handles = [await vm.spawn(WAIT) for _ in range(3)]
            with trio.fail_after(5):
                await vm.join()
            assert [h.state for h in handles] == [avm.AgentState.STALLED] * 3
            assert all(DETAIL in h.detail for h in handles)
            assert vm.statistics().deadlocked == 3
            assert vm._kernel.internal_errors == []


async def test_a_message_on_its_way_is_waited_for() -> None:
    async with avm.VM(host_sends=False) as vm:
        receiver = await vm.spawn(WAIT, name="r")
        await vm.spawn('push 1\nsleep\npop\npush "r"\npush "hi"\nsend\nreturn\n')
        with trio.fail_after(5):
            assert await receiver.result() == "hi"
        assert vm.statistics().deadlocked == 0


async def test_a_recv_with_a_timeout_is_not_stuck() -> None:
    async with avm.VM(host_sends=False) as vm:
        h = await vm.spawn("push 1\nrecv\nreturn\n")
        assert await h.result() is None
        assert h.state is avm.AgentState.DONE


async def test_a_delegating_parent_gets_its_stuck_childs_end_and_goes_on() -> None:
    parent = 'push "push null\\nrecv\\nreturn\\n"\npush null\npush 5\ndelegate\nreturn\n'
    async with avm.VM(host_sends=False) as vm:
        h = await vm.spawn(parent)
        with trio.fail_after(5):
            value = await h.result()
        assert value["error"]["type"] == "ChildStalled"  # type: ignore[index]
        assert DETAIL in value["error"]["message"]  # type: ignore[index]


async def test_while_the_host_may_send_an_agent_waits_for_it() -> None:
    async with avm.VM() as vm:  # host_sends: True by default
        h = await vm.spawn(WAIT)
        await trio.sleep(1)
        assert h.state is avm.AgentState.WAITING_MESSAGE
        await h.send("late")
        assert await h.result() == "late"


def test_run_agents_ends_a_stuck_fleet() -> None:
    results = avm.run_agents(WAIT, count=2)
    assert all(isinstance(r, avm.AgentError) and r.state is avm.AgentState.STALLED for r in results)


async def test_agents_waiting_while_the_host_is_still_spawning_are_not_stalled() -> None:
    async with avm.VM(host_sends=False) as vm:
        receiver = await vm.spawn(WAIT, name="r")
        await trio.sleep(1)  # the host is busy (reading inputs, compiling): it has not said it waits
        assert receiver.state is avm.AgentState.WAITING_MESSAGE
        await vm.spawn('push "r"\npush "late"\nsend\nreturn\n')
        with trio.fail_after(5):
            assert await receiver.result() == "late"


async def test_a_parent_waiting_for_a_stuck_childs_end_notice_gets_it() -> None:
    parent = 'push "push null\\nrecv\\nreturn\\n"\npush null\npush 5\nspawn\npop\npush null\nrecv\nreturn\n'
    async with avm.VM(host_sends=False) as vm:
        h = await vm.spawn(parent)
        with trio.fail_after(5):
            notice = await h.result()
        assert notice["state"] == "stalled" and DETAIL in notice["error"]  # type: ignore[index]
