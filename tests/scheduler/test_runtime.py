"""The VM: agents as trio tasks, their states, messages, children, supervision."""

from __future__ import annotations

import pytest
import trio

import avm
from avm.runtime import VM, AgentError, VMError
from avm.scheduler.states import AgentState as S
from tests.agent_programs import COUNT

ECHO = """
    push null
    recv
    push " back"
    concat
    return
"""


def count_energy(n: int) -> float:
    frame = avm.Frame(avm.compile(COUNT), budget=1e9, inputs={"n": n})
    assert frame.run() == avm.Done(n)
    return frame.energy_used


async def test_spawn_runs_to_a_value_with_exact_energy():
    async with VM() as vm:
        h = await vm.spawn(COUNT, inputs={"n": 100}, budget=1000)
        assert h.id == 1 and h.name is None
        assert await h.result() == 100
        assert h.state is S.DONE
        assert h.energy_used == pytest.approx(count_energy(100))
        stats = vm.statistics()
        assert stats.agents == 1 and stats.live == 0 and stats.completions == 1
        assert stats.by_state == {"done": 1}
        assert stats.energy_used == pytest.approx(count_energy(100))


async def test_program_as_code_or_as_a_stored_ref():
    code = avm.compile(COUNT)
    async with VM() as vm:
        a = await vm.spawn(code, inputs={"n": 3})
        ref = vm.store.put(code.to_bytes())
        b = await vm.spawn(ref, inputs={"n": 4})
        assert (await a.result(), await b.result()) == (3, 4)
        with pytest.raises(VMError, match="no program"):
            await vm.spawn(avm.Ref(b"\x00" * 32))


async def test_a_fault_ends_the_agent_failed_naming_the_line():
    async with VM() as vm:
        h = await vm.spawn("push 1\npush 0\nmod\nreturn\n")
        with pytest.raises(AgentError, match=r"agent 1 ended failed: line 3") as info:
            await h.result()
        assert info.value.state is S.FAILED
        assert vm.statistics().recent_faults[-1][:3] == (1, None, 3)


async def test_running_out_of_budget_is_resumable_with_more():
    async with VM() as vm:
        h = await vm.spawn(COUNT, inputs={"n": 100}, budget=10)
        with pytest.raises(AgentError, match="budget_exceeded"):
            await h.result()
        assert h.energy_used <= 10
        h.add_budget(100)
        assert await h.result() == 100
        assert h.energy_used == pytest.approx(count_energy(100))


async def test_repeating_the_same_failing_effect_stalls():
    source = "again:\npush \"nobody\"\npush 1\nsend\npop\njump again\n"
    async with VM() as vm:
        h = await vm.spawn(source)
        with pytest.raises(AgentError, match="stalled: line 4: 5 identical send"):
            await h.result()


async def test_send_and_recv_by_name_and_by_id(autojump_clock):
    relay = """
        push null
        recv
        store m
        push "echo"
        load m
        send
        return
    """
    async with VM() as vm:
        echo = await vm.spawn(ECHO, name="echo")
        r = await vm.spawn(relay)
        assert await r.send("ping") is True
        assert await echo.result() == "ping back"
        assert await r.result() is True
        timed = await vm.spawn("push 2.5\nrecv\nreturn\n")
        start = trio.current_time()
        assert await timed.result() is None  # recv timed out: null
        assert trio.current_time() - start == pytest.approx(2.5)
        assert await vm.spawn("push 7\npush 1\nsend\nreturn\n") is not None
        assert vm.statistics().messages == 1


async def test_sending_to_an_unknown_agent_is_an_error_value():
    async with VM() as vm:
        h = await vm.spawn('push "ghost"\npush 1\nsend\nreturn\n')
        assert (await h.result())["error"]["type"] == "NoSuchAgent"


async def test_a_full_mailbox_makes_the_sender_wait_then_give_up(autojump_clock):
    source = """
        push 0
        store i
    loop:
        push "sink"
        load i
        send
        store ok
        load ok
        jump_unless full
        load i
        push 1
        add
        store i
        jump loop
    full:
        load i
        return
    """
    async with VM(mailbox_capacity=3, send_timeout_s=1.0) as vm:
        sink = await vm.spawn("push 1000\nsleep\nhalt\n", name="sink")
        sender = await vm.spawn(source)
        assert await sender.result() == 3  # three queued, the fourth waited 1 s and got false
        assert len(sink._agent.mailbox) == 3


async def test_spawned_child_budget_is_conserved_and_its_end_reported(autojump_clock):
    parent_src = """
        load child
        push null
        push 30
        spawn
        store id
        push null
        recv
        store report
        load report
        return
    """
    async with VM() as vm:
        p = await vm.spawn(parent_src, inputs={"child": COUNT.replace("load n", "push 10")}, budget=100)
        report = await p.result()
        assert report["state"] == "done" and report["value"] == 10 and report["error"] is None
        # the parent's energy is its own instructions plus what the child actually used (30 charged, rest refunded)
        child_energy = count_energy(10)
        assert p.energy_used == pytest.approx(_own_energy(parent_src) + child_energy)
        assert vm.statistics().energy_used == pytest.approx(p.energy_used)


def _own_energy(source: str) -> float:
    """Energy of a program's instructions alone, answering effects with null."""
    frame = avm.Frame(avm.compile(source), budget=1e6, inputs={"child": ""})
    while isinstance(frame.run(), avm.Effect):
        frame.resume(None)
    return frame.energy_used


async def test_delegate_waits_for_the_child_and_gets_its_value_or_error():
    parent = "load prog\npush null\npush 40\ndelegate\nreturn\n"
    async with VM() as vm:
        ok = await vm.spawn(parent, inputs={"prog": "push 6\npush 7\nmul\nreturn\n"}, budget=100)
        assert await ok.result() == 42
        bad = await vm.spawn(parent, inputs={"prog": "push 1\npush 0\ndiv\nreturn\n"}, budget=100)
        error = (await bad.result())["error"]
        assert error["type"] == "ChildFailed" and "ended failed" in error["message"]
        broke = await vm.spawn(parent, inputs={"prog": "pusj 1\n"}, budget=100)
        assert (await broke.result())["error"]["type"] == "ProgramError"
        greedy = await vm.spawn(parent, inputs={"prog": "halt\n"}, budget=10)
        assert (await greedy.result())["error"]["type"] == "BudgetError"
        assert vm.statistics().spawns == 2


async def test_restart_on_fault_up_to_the_limit():
    source = """
        push null
        recv
        push "ok"
        eq
        assert the message was not ok
        push "fine"
        return
    """
    async with VM() as vm:
        h = await vm.spawn(source, restart="on-fault")
        for _ in range(2):
            await h.send("bad")
        await h.send("ok")
        assert await h.result() == "fine"
        assert vm.statistics().restarts == 2
        limited = await vm.spawn(source, restart=avm.runtime.RestartPolicy("on-fault", max_restarts=1))
        for _ in range(3):
            await limited.send("bad")
        with pytest.raises(AgentError, match="no restart left"):
            await limited.result()


async def test_a_hibernated_agent_wakes_on_a_message_and_replies(autojump_clock):
    server_src = """
        push null
        recv
        store request
        load request
        push "from"
        get
        push "pong"
        send
        return
    """
    client_src = """
        push "server"
        push "from"
        load me
        map 1
        send
        pop
        push null
        recv
        return
    """
    async with VM(hibernate_after_s=1.0) as vm:
        server = await vm.spawn(server_src, name="server")
        await trio.sleep(5)
        assert server.state is S.HIBERNATED and server._agent.frame is None
        assert vm.store.pins(server._agent.snapshot) == 1
        client = await vm.spawn(client_src, name="client", inputs={"me": "client"})
        assert await client.result() == "pong"
        assert await server.result() is True
        stats = vm.statistics()
        assert stats.hibernations >= 1 and stats.wakeups >= 1


async def test_a_hibernated_agent_keeps_its_inputs_through_wake_and_restart(autojump_clock):
    # A hibernated agent holds its inputs packed and no mailbox; waking restores both, and
    # a restart after the wake starts from the original inputs again.
    src = """
        push null
        recv
        push "boom"
        eq
        jump_if boom
        load who
        return
    boom:
        push 1
        push 0
        div
    """
    inputs = {"who": ["a", {"k": 1.5}, None, True]}
    async with VM(hibernate_after_s=1.0) as vm:
        h = await vm.spawn(src, inputs=inputs, restart="on-fault", name="h")
        await trio.sleep(5)
        assert h.state is S.HIBERNATED and h._agent.mailbox is None
        assert await h.send("boom")
        await trio.sleep(5)  # it faulted, restarted, and hibernated again in its recv
        assert h.state is S.HIBERNATED and vm.statistics().restarts == 1
        assert await h.send("hello")
        assert await h.result() == inputs["who"]


async def test_a_hibernated_recv_still_times_out(autojump_clock):
    async with VM(hibernate_after_s=1.0) as vm:
        h = await vm.spawn("push 30\nrecv\nreturn\n")
        await trio.sleep(2)
        assert h.state is S.HIBERNATED
        start = trio.current_time()
        assert await h.result() is None
        assert trio.current_time() == pytest.approx(start + 28, abs=1e-6)


async def test_cancel_in_every_kind_of_wait(autojump_clock):
    async with VM(hibernate_after_s=1.0) as vm:
        waiting = await vm.spawn("push null\nrecv\nreturn\n")
        sleeping = await vm.spawn("push 100\nsleep\nhalt\n")
        never_ran = await vm.spawn("halt\n")
        never_ran.cancel()
        await trio.sleep(0.5)
        waiting.cancel()
        sleeping.cancel()
        hibernating = await vm.spawn("push null\nrecv\nreturn\n")
        await trio.sleep(2)
        assert hibernating.state is S.HIBERNATED
        hibernating.cancel()
        for h in (waiting, sleeping, never_ran, hibernating):
            with pytest.raises(AgentError, match="cancelled"):
                await h.result()
            assert h.state is S.CANCELLED


def _all_tasks() -> list[trio.lowlevel.Task]:
    found = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


async def test_leaving_the_vm_cancels_every_agent_and_leaves_no_task():
    before = len(_all_tasks())
    async with VM(hibernate_after_s=0.01) as vm:
        handles = [await vm.spawn("push null\nrecv\nreturn\n") for _ in range(20)]
        handles.append(await vm.spawn("push 1000\nsleep\nhalt\n"))
        await trio.sleep(0.05)
        assert len(_all_tasks()) > before
    assert len(_all_tasks()) == before
    assert all(h.state is S.CANCELLED for h in handles)
    with pytest.raises(VMError):
        await vm.spawn("halt\n")


async def test_on_exit_wait_lets_agents_finish(autojump_clock):
    async with VM(on_exit="wait") as vm:
        h = await vm.spawn("push 3\nsleep\npush 1\nreturn\n")
    assert h.state is S.DONE


async def test_an_exception_in_the_body_comes_out_as_itself():
    with pytest.raises(KeyError):
        async with VM() as vm:
            await vm.spawn("push null\nrecv\nreturn\n")
            raise KeyError("mine")


async def test_bad_spawns_are_clear_errors():
    async with VM() as vm:
        with pytest.raises(avm.CompileError):
            await vm.spawn("pusj 1\n")
        with pytest.raises(VMError, match="priority"):
            await vm.spawn("halt\n", priority="urgent")
        with pytest.raises(VMError, match="restart"):
            await vm.spawn("halt\n", restart="always")
        with pytest.raises(VMError, match="not a VM value|input"):
            await vm.spawn("halt\n", inputs={"x": object()})
        await vm.spawn("push null\nrecv\nreturn\n", name="a")
        with pytest.raises(VMError, match="already alive"):
            await vm.spawn("halt\n", name="a")
        with pytest.raises(avm.tools.ToolDefinitionError, match="unknown tool"):
            await vm.spawn("halt\n", tools=["nope"])
        with pytest.raises(VMError, match="unknown tool"):  # a bad argument to spawn, too
            await vm.spawn("halt\n", tools=["nope"])
    with pytest.raises(VMError, match="unknown VM setting"):
        VM(quantm=3)


TWO_RECVS = """
    push 30
    recv
    store a
    push 30
    recv
    store b
    load a
    load b
    list 2
    return
"""


@pytest.mark.parametrize("attempt", range(30))  # trio varies the order of a batch of runnable tasks
async def test_senders_waiting_on_a_full_mailbox_of_a_hibernating_agent_lose_nothing(attempt, autojump_clock):
    async with VM(hibernate_after_s=0, mailbox_capacity=1) as vm:
        h = await vm.spawn(TWO_RECVS, name="r", budget=1000)
        await trio.sleep(1)
        assert h.state is S.HIBERNATED
        sent = []

        async def send(i):
            sent.append(await h.send(i))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, 1)
            nursery.start_soon(send, 2)
        assert sorted(await h.result()) == [1, 2] and sent == [True, True]


@pytest.mark.parametrize("attempt", range(30))
async def test_a_message_sent_as_the_idle_deadline_fires_is_received(attempt, autojump_clock):
    async with VM(hibernate_after_s=1.0) as vm:
        h = await vm.spawn("push 1000\nrecv\nreturn", budget=10)
        start = trio.current_time()
        await trio.sleep_until(start + 0.999 + (attempt % 5) * 0.0005)
        assert await h.send("x")
        with trio.fail_after(100):
            assert await h.result() == "x"
