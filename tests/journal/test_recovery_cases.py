"""Crash recovery, case by case: each test fails without the fix it guards (found by review and by
bench/chaos.py). A crash is either a real interruption or the state a SIGKILL leaves when the last commit
fell between two journal appends: the journal heads are put back to what that commit held."""

from __future__ import annotations

from pathlib import Path

import trio

import avm
from avm.journal import journals, read_journal
from avm.journal.replay import replay_journal
from avm.kernel.hooks import Hook

LLM_TWICE = 'push "a"\nllm\npop\npush 0.5\nsleep\npop\npush "b"\nllm\nreturn\n'


class StopAt(Hook):
    """Interrupt the VM at a moment a host's interrupt can land: after an agent's effect of a kind, or at a
    child's end."""

    def __init__(self, vm: avm.VM, effect: str | None = None, child_end: bool = False):
        self.vm, self.kind, self.child_end = vm, effect, child_end

    def effect(self, agent, effect, outcome):  # type: ignore[no-untyped-def]
        if effect.kind == self.kind:
            self.vm.interrupt()

    def ended(self, agent):  # type: ignore[no-untyped-def]
        if self.child_end and agent.parent is not None:
            self.vm.interrupt()


async def _interrupted(path: Path, program: str, after: float, **settings: object) -> str:
    with avm.ContentStore(path) as store:
        async with avm.VM(store, journal=True, **settings) as vm:  # type: ignore[arg-type]
            await vm.spawn(program)
            await trio.sleep(after)
            vm.interrupt()
            return vm.run_id


async def _resumed(path: Path, run_id: str, **settings: object) -> list[object]:
    with avm.ContentStore(path) as store:
        async with avm.VM(store, journal=True, **settings) as vm:  # type: ignore[arg-type]
            handles = await vm.resume(run_id)
            values = [await h.result() for h in handles]
        for key, head in journals(store).items():  # and the journals that come out are the programs'
            report = replay_journal(store, key, head)
            assert report.ok, report.line()
        return values


async def test_a_turn_in_the_snapshot_is_not_added_to_the_conversation_again(tmp_path: Path) -> None:
    # snapshot_every=1: a snapshot right after the first llm, which holds its turn; replay checks the
    # conversation at the snapshot after the second llm: a turn added twice does not match
    run_id = await _interrupted(tmp_path, LLM_TWICE, 0.3, snapshot_every=1)
    assert len(await _resumed(tmp_path, run_id, snapshot_every=1)) == 1


async def test_a_request_that_failed_still_joins_the_conversation_on_replay(tmp_path: Path) -> None:
    failing = {"llm_server": {"rate_500": 1.0}, "gateway": {"max_retries": 0}, "snapshot_every": 2}
    run_id = await _interrupted(tmp_path, LLM_TWICE, 0.3, **failing)
    (value,) = await _resumed(tmp_path, run_id, **failing)
    assert value["error"]["tool"] == "llm"  # type: ignore[index]


SPAWN_THEN_WAIT = ('push "push 7\\nreturn\\n"\npush null\npush 5\nspawn\npop\npush 0.5\nsleep\npop\npush null\n'
                   "recv\nreturn\n")


async def test_a_child_refund_after_the_last_effect_is_not_lost(tmp_path: Path) -> None:
    async with avm.VM() as vm:
        whole = await vm.spawn(SPAWN_THEN_WAIT)
        await whole.result()
    run_id = await _interrupted(tmp_path / "s", SPAWN_THEN_WAIT, 0.2, hibernate_after_s=None)
    with avm.ContentStore(tmp_path / "s") as store:
        async with avm.VM(store, journal=True, hibernate_after_s=None) as vm:
            parent, _child = await vm.resume(run_id)
            assert (await parent.result())["value"] == 7
            assert parent.energy_used == whole.energy_used
            assert vm.statistics().energy_used == parent.energy_used  # transfers are not energy used


def _rewind(path: Path, to: dict[int, str]) -> None:
    """Put each journal's head back to its entry of that kind (the first one), as a crash can leave it."""
    with avm.ContentStore(path) as store:
        for key, head in journals(store).items():
            kind = to.get(int(key.rsplit("/", 1)[1]))
            if kind is not None:
                ref = next(ref for ref, e in read_journal(store, head) if e.kind == kind)
                store.bind(f"journal/{key}", ref)


async def _finished(path: Path, *programs: str) -> str:
    with avm.ContentStore(path) as store:
        async with avm.VM(store, journal=True) as vm:
            handles = [await vm.spawn(p, name=f"a{i}") for i, p in enumerate(programs)]
            for h in handles:
                await h.result()
            return vm.run_id


async def test_a_child_whose_end_notice_was_lost_notifies_its_parent_on_resume(tmp_path: Path) -> None:
    run_id = await _finished(tmp_path,
                             'push "push 7\\nreturn\\n"\npush null\npush 5\nspawn\npop\npush 1\nrecv\nreturn\n')
    _rewind(tmp_path, {1: "spawn"})  # the child's end committed, the parent's notice not
    values = await _resumed(tmp_path, run_id)
    assert values[0] == {"child": 2, "state": "done", "value": 7, "error": None}


async def test_a_child_whose_spawn_was_lost_is_adopted_with_its_notice(tmp_path: Path) -> None:
    run_id = await _finished(tmp_path,
                             'push "push 7\\nreturn\\n"\npush null\npush 5\nspawn\npop\npush 2\nrecv\nreturn\n')
    _rewind(tmp_path, {1: "start", 2: "end"})  # the child's life committed, the parent's spawn not
    values = await _resumed(tmp_path, run_id)
    assert values[0] == {"child": 2, "state": "done", "value": 7, "error": None}


async def test_a_message_whose_send_was_lost_is_not_delivered_twice(tmp_path: Path) -> None:
    receiver = "push 1\nrecv\npush 1\nrecv\nlist 2\nreturn\n"
    sender = 'push "a0"\npush "hi"\nsend\nreturn\n'
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True) as vm:
            r = await vm.spawn(receiver, name="a0")
            await trio.sleep(0.05)
            await vm.spawn(sender, name="a1")
            assert await r.result() == ["hi", None]
            run_id = vm.run_id
    _rewind(tmp_path, {1: "mail", 2: "start"})  # the receiver's mail committed, the sender's send not
    values = await _resumed(tmp_path, run_id)
    assert values[0] == ["hi", None]


async def test_agents_cancelled_after_an_interrupt_are_cancelled_for_good(tmp_path: Path) -> None:
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True) as vm:
            first = await vm.spawn("push 5\nsleep\nreturn\n", name="first")
            await trio.sleep(0.1)
            vm.interrupt()
            await trio.sleep(0.1)
            assert first.state is avm.AgentState.CANCELLED
            unwanted = await vm.spawn("push 5\nsleep\nreturn\n", name="unwanted")
            await trio.sleep(0.1)
            unwanted.cancel()  # the host's own cancel: final
            await trio.sleep(0.1)
            run_id = vm.run_id
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True) as vm:
            first, unwanted = await vm.resume(run_id)
            assert unwanted.state is avm.AgentState.CANCELLED and first.state is not avm.AgentState.CANCELLED
            first.cancel()


async def test_a_delegate_that_ends_as_the_vm_stops_refunds_its_parent_once(tmp_path: Path) -> None:
    child = "push 0.05\\nsleep\\npop\\npush 7\\nreturn\\n"
    parent = f'push 0.001\nsleep\npop\npush "{child}"\npush null\npush 15\ndelegate\nreturn\n'
    async with avm.VM() as vm:
        whole = await vm.spawn(parent, budget=40)
        assert await whole.result() == 7
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True, snapshot_every=1) as vm:
            vm.add_hook(StopAt(vm, child_end=True))  # the moment a host's interrupt can land
            await vm.spawn(parent, budget=40)
            await vm.join()
            run_id = vm.run_id
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True, snapshot_every=1) as vm:
            resumed = (await vm.resume(run_id))[0]
            assert await resumed.result() == 7
            assert resumed.energy_used == whole.energy_used


async def test_a_parent_out_of_budget_stays_ended_when_its_child_ends_later(tmp_path: Path) -> None:
    child = "push 0.05\\nsleep\\npop\\npush 7\\nreturn\\n"
    parent = f'push "{child}"\npush null\npush 5\nspawn\npop\npush "hi"\nllm\nreturn\n'
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True) as vm:
            h = await vm.spawn(parent, budget=10)
            await vm.join()
            assert h.state is avm.AgentState.BUDGET_EXCEEDED
            run_id = vm.run_id
        (_key, head), *_ = sorted(journals(store).items())
        assert [e.kind for _, e in read_journal(store, head)][-1] == "end"  # nothing after its end
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True) as vm:
            again = (await vm.resume(run_id))[0]
            assert again.state is avm.AgentState.BUDGET_EXCEEDED


async def test_an_agent_that_runs_on_after_an_interrupt_sends_nothing_to_a_stopped_agent(tmp_path: Path) -> None:
    # the interrupt lands while the sender is between two effects (here: in a hook, as a host's can);
    # the hibernated receiver is stopped at once. Were the send performed, it would find no receiver and
    # its NoSuchAgent would be journaled: the resumed receiver would then wait for ever.
    sender = 'push 0.2\nsleep\npop\npush "b"\npush "hi"\nsend\nreturn\n'
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True, hibernate_after_s=0.01) as vm:
            vm.add_hook(StopAt(vm, effect="sleep"))
            b = await vm.spawn("push null\nrecv\nreturn\n", name="b")
            await trio.sleep(0.1)
            assert b.state is avm.AgentState.HIBERNATED
            await vm.spawn(sender, name="a")
            await vm.join()
            run_id = vm.run_id
    with trio.fail_after(10):
        values = await _resumed(tmp_path, run_id, hibernate_after_s=0.01)
    assert values == ["hi", True]


async def test_a_refund_replayed_after_a_lost_notice_is_not_lost(tmp_path: Path) -> None:
    # the notice re-sent on resume refunds the parent before its replay: the replayed spawn's energy
    # must not swallow that refund
    program = 'push "push 7\\nreturn\\n"\npush null\npush 5\nspawn\npop\npush 1\nrecv\nreturn\n'
    async with avm.VM() as vm:
        whole = await vm.spawn(program)
        await whole.result()
    run_id = await _finished(tmp_path, program)
    _rewind(tmp_path, {1: "spawn"})
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True) as vm:
            parent, _child = await vm.resume(run_id)
            assert (await parent.result())["value"] == 7  # type: ignore[index]
            assert parent.energy_used == whole.energy_used


async def test_a_parent_keeps_the_energy_it_ended_with_when_a_child_ends_later(tmp_path: Path) -> None:
    child = "push 0.1\\nsleep\\npop\\npush 7\\nreturn\\n"
    parent = f'push "{child}"\npush null\npush 5\nspawn\nreturn\n'
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True) as vm:
            p = await vm.spawn(parent)
            await p.result()
            at_its_end = p.energy_used
            await vm.join()
            assert p.energy_used == at_its_end  # its journal's end entry says so
            run_id = vm.run_id
        (_key, head), *_ = sorted(journals(store).items())
        assert [e for _, e in read_journal(store, head)][-1].energy == round(at_its_end * 1000)
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True) as vm:
            again = (await vm.resume(run_id))[0]
            assert again.energy_used == at_its_end


async def test_a_spawned_child_that_ends_as_the_vm_stops_refunds_its_parent_once(tmp_path: Path) -> None:
    child = "push 0.05\\nsleep\\npop\\npush 7\\nreturn\\n"
    parent = f'push "{child}"\npush null\npush 15\nspawn\npop\npush null\nrecv\nreturn\n'
    async with avm.VM() as vm:
        whole = await vm.spawn(parent, budget=40)
        await whole.result()
    for hibernate in (None, 0.01):  # the parent in its task, or hibernated (stopped at once)
        path = tmp_path / str(hibernate)
        with avm.ContentStore(path) as store:
            async with avm.VM(store, journal=True, hibernate_after_s=hibernate) as vm:
                vm.add_hook(StopAt(vm, child_end=True))  # the moment a host's interrupt can land
                await vm.spawn(parent, budget=40)
                await vm.join()
                run_id = vm.run_id
        with avm.ContentStore(path) as store:
            async with avm.VM(store, journal=True, hibernate_after_s=hibernate) as vm:
                resumed = (await vm.resume(run_id))[0]
                assert (await resumed.result())["value"] == 7  # type: ignore[index]
                assert resumed.energy_used == whole.energy_used


async def test_a_hook_that_cancels_an_agent_as_it_hibernates_ends_it_cancelled(tmp_path: Path) -> None:
    async with avm.VM(hibernate_after_s=0.01) as vm:
        class CancelAtHibernation(Hook):
            def effect(self, agent, effect, outcome):  # type: ignore[no-untyped-def]
                if outcome.hibernate is not None:
                    vm.agent(agent.id).cancel()  # type: ignore[union-attr]
        vm.add_hook(CancelAtHibernation())
        h = await vm.spawn("push null\nrecv\nreturn\n")
        await vm.join()
        assert h.state is avm.AgentState.CANCELLED
        assert vm._kernel.internal_errors == []


async def test_an_agent_that_runs_on_after_an_interrupt_spawns_no_child(tmp_path: Path) -> None:
    parent = 'push 0.05\nsleep\npop\npush "push 7\\nreturn\\n"\npush null\npush 5\nspawn\nreturn\n'
    async with avm.VM(journal=True) as vm:
        vm.add_hook(StopAt(vm, effect="sleep"))
        p = await vm.spawn(parent)
        await vm.join()
        assert p.state is avm.AgentState.CANCELLED
        assert vm.statistics().agents == 1 and vm.statistics().effects["spawn"] == 0


async def test_a_refund_whose_entry_was_lost_is_paid_when_the_replay_ends_on_an_interrupted_call(
        tmp_path: Path) -> None:
    @avm.tool(side_effects=True)
    async def slow(x: str) -> str:
        await trio.sleep(0.5)
        return x

    child = "push 0.2\\nsleep\\npop\\npush 7\\nreturn\\n"
    parent = f'push "{child}"\npush null\npush 5\nspawn\npop\npush "a"\ntool slow 1\nreturn\n'
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True, tools=[slow]) as vm:
            whole = await vm.spawn(parent, tools=["slow"])
            await whole.result()
            run_id = vm.run_id
        (_key, head), *_ = sorted(journals(store).items())
        kinds = [e.kind for _, e in read_journal(store, head)]
        assert kinds.index("intent") < kinds.index("refund")  # the child ended while the call was out
    _rewind(tmp_path, {1: "intent"})  # the crash: the intent committed, the refund and the result not
    with avm.ContentStore(tmp_path) as store:
        async with avm.VM(store, journal=True, tools=[slow]) as vm:
            resumed, _child = await vm.resume(run_id)
            value = await resumed.result()
            assert value["error"]["type"] == "Interrupted"  # type: ignore[index]
            # the child's unspent budget came back (lost, the parent would have used ~3 more than the
            # whole run, which also paid the call's 0.5 s)
            assert resumed.energy_used <= whole.energy_used
