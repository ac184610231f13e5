"""The one trap: the loop each agent's trio task runs, and `apply`, where an effect becomes a fact.

    frame.run(quantum) -> Effect     -> its handler performs it -> Outcome -> apply()
                       -> Preempted  -> wait in the run queue for the next turn
                       -> Done, Fault, BudgetExceeded, Stalled -> the end (or a restart)

`apply` is the only caller of the frame's ``resume``, ``fail``, ``charge`` and
``refund`` (through `settle`), wake-up from hibernation included; the kernel's
hooks see every (agent, effect, outcome) there, before the program does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from avm.conversation import journaled_reply, llm_error_value
from avm.errors import Erased, InternalError, LLMError
from avm.io.request import LLMRequest, RequestError
from avm.kernel.effects import HANDLERS, llm_reply, llm_request
from avm.kernel.outcome import Outcome, faulted
from avm.kernel.record import Agent
from avm.lang.frame import Frame
from avm.lang.outcomes import BudgetExceeded, Done, Effect, Fault, Preempted, Stalled
from avm.lang.values import canonical_order, render
from avm.memory.values import decode_value
from avm.scheduler.states import TERMINAL, WAITING_ON, AgentState
from avm.scheduler.supervision import RestartHistory
from avm.tools.registry import error_value, is_error_value

if TYPE_CHECKING:
    from avm.kernel.kernel import Kernel

S = AgentState
_RUNNING, _READY, _HIBERNATED = S.RUNNING, S.READY, S.HIBERNATED


def apply(kernel: Kernel, agent: Agent, effect: Effect, outcome: Outcome, record: bool = True) -> bool:
    """Make ``outcome`` of ``effect`` the agent's: charge its energy, append its reply, tell the hooks
    (unless ``record`` is false: an outcome replayed from the journal), then resume the frame with its
    value (True), or fail it, or let the agent hibernate (False)."""
    frame = agent.frame
    assert frame is not None
    if outcome.transfer:  # budget moved to a child: not energy used, so the VM's total is left alone
        frame.charge(outcome.transfer / 1000)
        agent.lent = 0
    if agent.refund_due:
        settle(agent, frame)
    if outcome.charge:
        before = frame.used
        if not frame.charge(outcome.charge):  # (the end's message says what the energy went to)
            agent.detail = _overdrawn(effect, outcome, frame.budget - before)
        kernel.energy += frame.used - before
    reply = outcome.reply
    if reply is not None:
        conversation = agent.conversation
        if conversation is not None:  # (None: the agent ended while its request was out)
            conversation.append(reply)
        kernel.tick_gc()  # the conversation grew: long-lived objects the cyclic GC need not scan again
    hooks = kernel.hooks
    if hooks and record:
        for hook in hooks:
            hook.effect(agent, effect, outcome)
    fault = outcome.fault
    if fault is not None:
        frame.fail(*fault)
        return False
    if outcome.hibernate is not None:
        kernel.hibernate(agent, outcome.hibernate)
        return False
    value = outcome.value
    if type(value) is dict or type(value) is list:
        value = canonical_order(value)  # (as a journal gives it back: a replay renders it the same)
    frame.resume(value)
    if frame.stall_count > 1:
        kernel.repeated_effects += 1
    return True


def _overdrawn(effect: Effect, outcome: Outcome, left: int) -> str:
    """What an effect whose host work (tokens, a tool's time) cost more than the energy left was."""
    what = f"tool {effect.args[0]}" if effect.kind == "tool" else effect.kind
    value = outcome.value
    if is_error_value(value):
        error = value["error"]
        what += f" ({error.get('type')}: {error.get('message')})"
    return f"line {effect.line}: {what} cost {outcome.charge:g} energy, more than the {max(0, left) / 1000:g} left"


def replayed(kernel: Kernel, agent: Agent, effect: Effect) -> tuple[Outcome, bool]:
    """A recovering agent's effect: the outcome its journal recorded (`avm.journal.recovery`), not performed
    again; a fault naming the first difference if the program asks something else than it did. With it,
    whether the outcome is a new fact to journal (a side-effecting call the crash interrupted: its journal
    holds the intent only)."""
    queue = agent.replay
    store = kernel.store
    entry = queue.popleft()
    request = store.put_value(list(effect.args))
    interrupted = entry.kind == "intent" and not queue
    if entry.kind == "intent" and queue:
        entry = queue.popleft()
    in_snapshot = agent.id in kernel.in_snapshot  # (its snapshot's conversation holds this effect's turn)
    if in_snapshot:
        kernel.in_snapshot.discard(agent.id)
    if not queue:
        agent.replay = None  # the last entry replayed: what children gave back after it is due too
        agent.refund_due += kernel.refund_tail.pop(agent.id, 0)
    if ("tool" if interrupted else entry.kind) != effect.kind or entry.request != request:
        asked = _short(store.get_value(entry.request)) if entry.request is not None else "nothing"
        return faulted("ReplayDiverged", f"{effect.kind} {_short(list(effect.args))} at line {effect.line}, but "
                                         f"journal entry {entry.seq} is {entry.kind} {asked}"), False
    if interrupted:  # a side-effecting call the crash interrupted: it may have happened; never twice
        name = effect.args[0]
        return Outcome(error_value(name, "Interrupted", f"{name}: the call was interrupted by a crash and is not "
                                                       f"made again (it may or may not have happened)")), True
    # (not used_milli(): a refund still due, one the resume re-sent, comes on top of the journaled energy)
    diff = entry.energy - (agent.spent + agent.frame.used + agent.lent)  # type: ignore[union-attr]
    if diff < 0:  # a child's unspent energy came back before the crash
        agent.refund_due -= diff
        diff = 0
    if entry.result is None:  # a recv that timed out
        return Outcome(None, charge=diff / 1000, timeout=True), False
    try:
        result = store.get_value(entry.result)
    except Erased:
        return faulted("Erased", f"journal entry {entry.seq} ({entry.kind} at line {effect.line}): its result was "
                                 f"erased, so the agent cannot go on from its journal"), False
    if "fault" in result:
        kind, message = result["fault"]
        return Outcome(fault=(kind, message), charge=diff / 1000), False
    if effect.kind in ("spawn", "delegate"):  # the child's budget, moved: not energy the VM used
        return Outcome(result["value"], transfer=diff), False
    reply = result.get("reply")
    if effect.kind == "llm" and not in_snapshot:
        llm_request(kernel, agent, effect)  # its messages join the conversation, as they did (reply or error)
    if reply is not None and not in_snapshot:
        return Outcome(result["value"], charge=diff / 1000, reply=journaled_reply(reply, store)), False
    return Outcome(result["value"], charge=diff / 1000), False


def _short(value: Any) -> str:
    text = render(value)
    return text if len(text) <= 80 else text[:77] + "..."


def settle(agent: Agent, frame: Frame) -> None:
    """Refund to the frame what children gave back while it was out of reach."""
    frame.refund(agent.refund_due / 1000)
    agent.refund_due = 0
    agent.detail = ""  # (an effect that overdrew it, see apply, no longer ends it)


async def live(kernel: Kernel, agent: Agent, woken: bool = False) -> None:
    """An agent's trio task, from its start (or wake-up) to its end or hibernation.

    One coroutine for the task's whole life, the loop and the llm effect inlined: an agent waiting for
    its reply holds every frame of its chain of awaits, and there are 10,000 of them."""
    try:
        if agent.cancel_requested:  # cancelled before it ever ran
            if woken:
                kernel.unpin_snapshot(agent)
            finish(kernel, agent, S.CANCELLED, "cancelled")
            return
        with trio.CancelScope() as scope:
            agent.scope = scope
            try:
                if woken and not _wake(kernel, agent):
                    return
                frame = agent.frame
                assert frame is not None
                if agent.refund_due:
                    settle(agent, frame)
                # a frame recovered from a snapshot waits on an effect: that effect comes first
                first = frame.pending if frame.status == "waiting" else None
                quantum = kernel.settings.quantum_milli
                handlers = HANDLERS
                counts = kernel.effects
                runq = kernel.runq
                set_state = kernel.set_state
                while True:
                    if first is None:
                        set_state(agent, _RUNNING)
                        before = frame.used
                        out = frame.run(quantum)
                        kernel.energy += frame.used - before
                    else:
                        out, first = first, None
                    kind_of = type(out)
                    if kind_of is Effect:
                        if agent.cancel_requested:  # cancelled (or stopped with the VM) while it ran: it
                            await trio.lowlevel.checkpoint()  # performs nothing more (its scope raises here)
                        kind = out.kind  # type: ignore[union-attr]
                        set_state(agent, WAITING_ON[kind])
                        counts[kind] += 1
                        outcome: Any
                        fresh = agent.replay is None
                        if not fresh:  # recovering: the journal has this effect's result
                            outcome, fresh = replayed(kernel, agent, out)  # type: ignore[arg-type]
                        elif kind == "llm":
                            outcome = llm_request(kernel, agent, out)  # type: ignore[arg-type]
                            if type(outcome) is LLMRequest:
                                request, outcome = outcome, None
                                try:
                                    response = await kernel.submit(request, priority=agent.rank)
                                except LLMError as exc:
                                    kernel.note_llm_error(exc)
                                    outcome = Outcome(llm_error_value(exc.kind, str(exc)))
                                except RequestError as exc:
                                    outcome = faulted("RequestError", f"llm: {exc}")
                                else:
                                    outcome = llm_reply(kernel, agent, response)
                                del request
                        else:
                            outcome = await handlers[kind](kernel, agent, out)  # type: ignore[arg-type]
                        resumed = apply(kernel, agent, out, outcome, fresh)  # type: ignore[arg-type]
                        del outcome  # (an agent waiting for its next reply holds no earlier one)
                        if resumed:
                            continue
                        if agent.state is _HIBERNATED or agent.state in TERMINAL:  # (a hook may cancel it
                            return                                                      # as it hibernates)
                        out = frame.outcome  # type: ignore[assignment]  # the host ruled the effect a fault
                    elif kind_of is Preempted:
                        set_state(agent, _READY)
                        kernel.preemptions += 1
                        await runq.wait_turn(agent.rank)
                        if agent.refund_due:
                            settle(agent, frame)
                        continue
                    if not _ended(kernel, agent, out):
                        break
                    frame = agent.frame  # restarted with a fresh frame
                    assert frame is not None
            finally:
                agent.scope = None
        if agent.state not in TERMINAL:
            how = agent.cancel_requested
            if type(how) is str:  # ended by the kernel (a fleet that can make no progress)
                finish(kernel, agent, S.STALLED, how)
            else:
                finish(kernel, agent, S.CANCELLED, "stopped with the run" if kernel.stopping else "cancelled")
    except trio.Cancelled:  # the VM is closing
        if agent.state not in TERMINAL:
            finish(kernel, agent, S.CANCELLED, "cancelled: the VM exited")
        raise
    except Exception as exc:  # noqa: BLE001 - whatever went wrong handling this agent: it fails, the others go on
        crashed(kernel, agent, exc)


def _wake(kernel: Kernel, agent: Agent) -> bool:
    """Restore a hibernated frame and answer its recv (a message, or null after the deadline) through
    `apply`; False if there is nothing to say yet (a message taken back): it sleeps on as it was."""
    box = agent.mailbox
    if (box is None or not len(box)) and trio.current_time() < agent.deadline:
        kernel.hibernate(agent, agent.deadline)
        return False
    frame = Frame.restore(agent.code, kernel.store.get(agent.snapshot))  # type: ignore[arg-type]
    frame.set_memory_limit(agent.memory_limit)
    frame.set_instruction_limit(kernel.settings.quantum)
    kernel.unpin_snapshot(agent)
    agent.frame = frame
    if type(agent.inputs) is bytes:  # packed while hibernated
        agent.inputs = decode_value(agent.inputs)
    found, message = box.take() if box is not None else (False, None)
    effect = frame.pending
    assert effect is not None
    apply(kernel, agent, effect, Outcome(message) if found else Outcome(None, timeout=True))
    return True


def _ended(kernel: Kernel, agent: Agent, out: Any) -> bool:
    """Handle a final outcome; True if the agent restarts (the loop goes on)."""
    kind_of = type(out)
    if kind_of is Done:
        agent.value = out.value
        finish(kernel, agent, S.DONE, "")
        return False
    if kind_of is Fault:
        detail = str(out)
        kernel.record_fault(agent, out)
        policy = agent.policy
        replay = agent.replay
        if replay and replay[0].kind == "restart":  # it restarted here before the crash: so again
            _restart(kernel, agent)
            return True
        if policy.mode != "never":
            if agent.history is None:
                agent.history = RestartHistory()
            if agent.history.allow(policy):
                _restart(kernel, agent)
                return True
            detail += f" (no restart left: {policy.max_restarts} in {policy.window_s:g} s)"
        finish(kernel, agent, S.FAILED, detail)
        return False
    if kind_of is BudgetExceeded:
        if agent.detail:  # an effect's host work overdrew it (see apply)
            finish(kernel, agent, S.BUDGET_EXCEEDED, f"{agent.detail}; used {out.energy_used:g} of {out.budget:g}")
        else:
            finish(kernel, agent, S.BUDGET_EXCEEDED, f"line {out.line}: needed {out.needed:g} energy, "
                                                     f"used {out.energy_used:g} of {out.budget:g}")
        return False
    if kind_of is Stalled:
        finish(kernel, agent, S.STALLED, f"line {out.line}: {out.count} identical {out.kind} effects "
                                         f"with identical results")
        return False
    raise InternalError(f"unexpected outcome {out!r}")  # pragma: no cover


def _restart(kernel: Kernel, agent: Agent) -> None:
    old = agent.frame
    assert old is not None
    agent.spent += old.used
    left = max(0, agent.budget - agent.spent)
    agent.frame = kernel.new_frame(agent.code, left, agent.inputs, agent.memory_limit)
    agent.conversation = None
    kernel.restarts += 1
    replay = agent.replay
    if replay and replay[0].kind == "restart":  # journaled already
        replay.popleft()
        if not replay:
            agent.replay = None
            agent.refund_due += kernel.refund_tail.pop(agent.id, 0)
        return
    for hook in kernel.hooks:
        hook.restarted(agent)


def finish(kernel: Kernel, agent: Agent, state: AgentState, detail: str) -> None:
    """Enter a terminal state: tell waiters, the parent, and give back unspent energy."""
    agent.detail = detail
    frame = agent.frame
    if frame is not None:
        agent.final_used = frame.used
        if state is not S.BUDGET_EXCEEDED:
            agent.frame = None  # nothing will run it again; keep the agent small
    if state is not S.BUDGET_EXCEEDED:
        agent.conversation = None  # nor send a request again (out of budget, it may go on)
    kernel.set_state(agent, state)
    try:
        if state is S.CANCELLED and kernel.stopping:  # stopped with the VM, it has not ended: resumable
            kernel.stopped.add(agent.id)
        else:
            for hook in kernel.hooks:
                hook.ended(agent)
        kernel.on_finished(agent, state)
    finally:  # whatever the bookkeeping met, whoever waits for this agent learns it ended
        if agent.done is not None:
            agent.done.set()
            agent.done = None


def crashed(kernel: Kernel, agent: Agent, exc: Exception) -> None:
    """An exception escaped while the kernel handled this agent (a bug in AVM): the agent ends FAILED
    naming it, its snapshot (if any) is let go, and the kernel keeps the exception for tests."""
    agent.scope = None
    kernel.internal_errors.append(exc)
    if agent.snapshot is not None:
        try:
            kernel.unpin_snapshot(agent)
        except Exception as again:  # noqa: BLE001 - a closed or failing store: the pin goes with the process
            kernel.internal_errors.append(again)
    if agent.state not in TERMINAL:
        finish(kernel, agent, S.FAILED, f"InternalError: {type(exc).__name__}: {exc} (a bug in AVM)")
