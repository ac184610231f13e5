"""One agent can never take the VM down: whatever goes wrong while the VM handles
one agent ends that agent (failed, with the cause), and the others go on."""

from __future__ import annotations

import pytest
import trio

import avm
from avm.errors import SnapshotError, StoreError
from avm.lang.frame import Frame
from avm.runtime import VM, AgentError, VMError
from avm.scheduler.states import AgentState as S

# The reproduction: a value nested 202 levels deep, held while waiting in recv (timeout from the
# input t, null: forever). Values are limited to MAX_DEPTH levels where they are made, so it faults there.
DEEP = "push 0\n" + "list 1\n" * 201 + "store v\n"
DEEP_RECV = DEEP + "load t\nrecv\nreturn\n"
HEALTHY = "push 0.5\nrecv\npop\npush 1\nreturn\n"
WAITER = "load t\nrecv\nreturn\n"


async def test_a_too_deep_value_fails_its_agent_where_it_is_made_beside_healthy_ones(autojump_clock):
    async with VM(hibernate_after_s=0.2) as vm:
        # 100 levels: ~1,000 energy of depth checks to build
        deep = await vm.spawn(DEEP_RECV, inputs={"t": None}, budget=5000)
        healthy = [await vm.spawn(HEALTHY, budget=1000) for _ in range(20)]
        for h in healthy:
            assert await h.result() == 1
        with pytest.raises(AgentError, match="LimitError"):
            await deep.result()
        stats = vm.statistics()
        assert stats.hibernations >= 20 and stats.ended == {"done": 20, "failed": 1}
        assert not vm._kernel.internal_errors


async def test_an_agent_whose_frame_cannot_be_snapshotted_stays_awake_beside_healthy_ones(
        autojump_clock, monkeypatch):
    async with VM(hibernate_after_s=0.2) as vm:
        stuck = await vm.spawn(WAITER, inputs={"t": None}, budget=1000)
        timed = await vm.spawn(WAITER, inputs={"t": 3.0}, budget=1000)
        # Whatever makes a snapshot impossible: the encoder refuses
        refused = {id(stuck._agent.frame), id(timed._agent.frame)}
        snapshot = Frame.snapshot

        def refusing_snapshot(frame: Frame) -> bytes:
            if id(frame) in refused:
                raise SnapshotError("a value nested too deeply to encode")
            return snapshot(frame)

        monkeypatch.setattr(Frame, "snapshot", refusing_snapshot)
        healthy = [await vm.spawn(HEALTHY, budget=1000) for _ in range(20)]
        for h in healthy:
            assert await h.result() == 1
        await trio.sleep(1)
        assert stuck.state is S.WAITING_MESSAGE and stuck._agent.frame is not None  # awake: it cannot hibernate
        assert await stuck.send("hello")
        assert await stuck.result() == "hello"
        assert await timed.result() is None  # its recv still times out
        stats = vm.statistics()
        assert stats.hibernations >= 20 and stats.ended == {"done": 22}
        assert not vm._kernel.internal_errors


async def test_an_agent_stays_awake_when_the_store_refuses_its_snapshot(autojump_clock, monkeypatch):
    async with VM(hibernate_after_s=0.2) as vm:
        put = vm.store.put

        def refusing_put(data, *args, **kwargs):
            if bytes(data[:4]) == b"AVMF":
                raise StoreError("disk full")
            return put(data, *args, **kwargs)

        monkeypatch.setattr(vm.store, "put", refusing_put)
        h = await vm.spawn("push null\nrecv\nreturn\n")
        await trio.sleep(1)
        assert h.state is S.WAITING_MESSAGE
        assert await h.send(7)
        assert await h.result() == 7


async def test_an_exception_while_hibernating_one_agent_fails_that_agent_only(autojump_clock, monkeypatch):
    async with VM(hibernate_after_s=0.2) as vm:
        hibernate = vm._kernel.hibernate
        victim: list = []

        def broken(agent, deadline):
            if agent in victim:
                raise RuntimeError("hibernation broke")
            hibernate(agent, deadline)

        monkeypatch.setattr(vm._kernel, "hibernate", broken)
        bad = await vm.spawn("push null\nrecv\nreturn\n")
        victim.append(bad._agent)
        healthy = [await vm.spawn(HEALTHY, budget=1000) for _ in range(20)]
        with pytest.raises(AgentError, match="RuntimeError: hibernation broke") as info:
            await bad.result()
        assert info.value.state is S.FAILED
        for h in healthy:
            assert await h.result() == 1
        assert [type(e) for e in vm._kernel.internal_errors] == [RuntimeError]


async def test_a_failing_end_of_one_agent_still_releases_its_waiters(autojump_clock, monkeypatch):
    async with VM(record_agents=True) as vm:
        record = vm._kernel.record_agent

        def broken(agent, state):
            if agent.name == "bad":
                raise RuntimeError("record broke")
            record(agent, state)

        monkeypatch.setattr(vm._kernel, "record_agent", broken)
        bad = await vm.spawn("push 1\nreturn\n", name="bad")
        good = [await vm.spawn("push 2\nreturn\n") for _ in range(5)]
        with trio.fail_after(10):
            await bad.result()
            await vm.join()
        assert [await g.result() for g in good] == [2] * 5
        assert [str(e) for e in vm._kernel.internal_errors] == ["record broke"]
        assert vm.agent("bad") is None and vm.live == 0


async def test_a_timer_that_cannot_wake_an_agent_fails_it_and_not_the_vm(autojump_clock, monkeypatch):
    async with VM(hibernate_after_s=0.2) as vm:
        h = await vm.spawn("push 2\nrecv\nreturn\n")
        other = await vm.spawn(HEALTHY, budget=1000)
        await trio.sleep(1)
        assert h.state is S.HIBERNATED
        import avm.kernel.kernel as kernel_module

        live = kernel_module.live

        def refuse(kernel, agent, woken=False):
            if agent is h._agent:
                raise RuntimeError("no task for you")
            return live(kernel, agent, woken)

        monkeypatch.setattr(kernel_module, "live", refuse)
        with pytest.raises(AgentError, match="RuntimeError: no task for you"):
            await h.result()
        assert await other.result() == 1


@pytest.mark.parametrize("kind", ["delegate", "spawn"])
async def test_a_program_with_a_count_of_thousands_of_digits_is_an_error_value_for_its_parent(kind):
    parent = f'push "list {"9" * 5000}\\nreturn\\n"\nmap 0\npush 5\n{kind}\nreturn\n'
    async with VM() as vm:
        h = await vm.spawn(parent, budget=100)
        value = await h.result()
        assert value["error"]["type"] == "ProgramError" and "bad count" in value["error"]["message"]
        assert not vm._kernel.internal_errors and h.energy_used < 10


async def test_text_with_a_lone_surrogate_fails_the_agent_as_a_fault_never_a_host_error():
    @avm.tool
    async def garbled() -> str:
        return "bad \ud800 text"

    made = ('push "[\\"push 1\\\\nreturn \\\\ud800\\"]"\ncall json_parse 1\npush 0\nget\nmap 0\npush 5\ndelegate\n'
            "return\n")
    async with VM(tools=[garbled]) as vm:
        parsed = await vm.spawn(made, budget=100)
        told = await vm.spawn("tool garbled 0\nreturn\n", tools=["garbled"], budget=100)
        for h in (parsed, told):
            with pytest.raises(AgentError, match=r"ValueError: .*lone surrogate \(U\+D800\)") as info:
                await h.result()
            assert info.value.state is S.FAILED
        with pytest.raises(avm.CompileError, match="lone surrogate"):
            await vm.spawn('push "\ud800"\nreturn\n')
        with pytest.raises(VMError, match="lone surrogate"):
            await vm.spawn("halt\n", inputs={"x": "\udc00"})
        listener = await vm.spawn("push null\nrecv\nreturn\n")
        with pytest.raises(ValueError, match="lone surrogate"):
            await listener.send({"k": ["\ud800"]})
        assert await listener.send("fine") and await listener.result() == "fine"
        assert not vm._kernel.internal_errors



async def test_the_same_big_value_sent_twice_ends_sender_and_receiver_as_programs_say():
    sender = ("push 1\nlist 1\npush 64\ncall repeat 2\nlist 1\npush 65536\ncall repeat 2\nstore m\n"
              + 'push "sink"\nload m\nsend\npop\n' * 2 + "push 1\nreturn\n")
    sink = "push null\nrecv\npop\npush null\nrecv\npop\npush 2\nreturn\n"
    async with VM() as vm:
        received = await vm.spawn(sink, budget=1000.0, name="sink")
        sent = await vm.spawn(sender, budget=1000.0)
        assert await sent.result() == 1 and await received.result() == 2
        assert not vm._kernel.internal_errors
