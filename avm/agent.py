"""One agent: the trio task that drives its Frame and performs its effects.

The loop is the whole of an agent's life (DESIGN.md, "one await point per
agent"):

    frame.run(quantum) -> Effect     -> perform it (the only await) -> frame.resume(result)
                       -> Preempted  -> wait in the run queue for the next turn
                       -> Done, Fault, BudgetExceeded, Stalled -> the end (or a restart)

`AgentHandle` is the agent: the object `VM.spawn` returns is the same one the
runtime drives, so an agent costs one object plus its frame and its task.
Its public face is `id`, `name`, `state`, `energy_used`, `result()`,
`cancel()`, `send()` and `add_budget()`; everything else is the runtime's.

Energy: the frame meters instructions; the runtime charges on top, at the
rates in `VMSettings` (LLM tokens, tool seconds), and moves budget between
parent and child: a child's budget is charged to its parent when it is
created, and its unspent energy is refunded when it ends, so a parent's
``energy_used`` counts the energy its children actually used.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from avm.conversation import (
    MessageError,
    llm_error_value,
    reply_message,
    reply_value,
    to_messages,
)
from avm.errors import AvmError, LLMError, StoreError
from avm.io.request import LLMRequest, LLMResponse, Message, RequestError
from avm.io.wire import message_json
from avm.lang.code import Code
from avm.lang.frame import Frame
from avm.lang.outcomes import BudgetExceeded, Done, Effect, Fault, Preempted, Stalled
from avm.lang.values import is_value, lone_surrogate
from avm.memory.ref import Ref
from avm.memory.values import decode_value
from avm.scheduler.mailbox import Mailbox
from avm.scheduler.states import TERMINAL, WAITING_ON, AgentState
from avm.scheduler.supervision import RestartHistory, RestartPolicy
from avm.tools.registry import ToolDenied, error_value

if TYPE_CHECKING:
    from avm.runtime import VM

S = AgentState
_RUNNING, _READY, _HIBERNATED = S.RUNNING, S.READY, S.HIBERNATED


class AgentError(AvmError):
    """`AgentHandle.result()` of an agent that did not finish with a value.

    ``state`` is the terminal state; ``detail`` what ended it (the fault and
    its line, the energy, the repeated effect).
    """

    def __init__(self, agent: AgentHandle, state: AgentState, detail: str):
        self.agent_id = agent.id
        self.agent_name = agent.name
        self.state = state
        self.detail = detail
        super().__init__(_ended_message(agent.id, agent.name, state, detail))

    def __reduce__(self) -> Any:  # picklable (results cross process boundaries); the agent itself is not kept
        return _agent_error, (self.agent_id, self.agent_name, self.state, self.detail)


def _agent_error(agent_id: int, name: str | None, state: AgentState, detail: str) -> AgentError:
    error = AgentError.__new__(AgentError)
    error.agent_id, error.agent_name, error.state, error.detail = agent_id, name, state, detail
    AvmError.__init__(error, _ended_message(agent_id, name, state, detail))
    return error


def _ended_message(agent_id: int, name: str | None, state: AgentState, detail: str) -> str:
    who = f"agent {agent_id}" + (f" ({name})" if name else "")
    return f"{who} ended {state.value}: {detail}" if detail else f"{who} ended {state.value}"


class _Hibernate(Exception):
    """Raised inside recv when the agent should become a snapshot; carries the recv deadline."""

    def __init__(self, deadline: float):
        self.deadline = deadline


class AgentHandle:
    """A live or finished agent (see the module docstring)."""

    __slots__ = (
        "id", "name", "vm", "code", "frame", "state", "rank", "granted", "system", "tools_ref",
        "conversation", "inputs", "budget", "spent", "mailbox", "scope", "snapshot", "deadline",
        "parent", "child_budget", "delegated", "policy", "history", "value", "detail", "_done",
        "cancel_requested", "refund_due", "final_used", "memory_limit",
    )

    def __init__(self, vm: VM, ident: int, code: Code, inputs: dict[str, Any] | None, budget: int, *,
                 name: str | None, rank: int, granted: frozenset[str], system: Ref | None,
                 tools_ref: Ref | None, policy: RestartPolicy, parent: AgentHandle | None = None):
        self.id = ident
        self.name = name
        self.vm = vm
        self.code = code
        self.inputs = inputs
        self.budget = budget  # milli-units, for the agent's whole life (restarts included)
        self.memory_limit = vm.settings.agent_memory_bytes
        self.frame: Frame | None = Frame(code, budget / 1000, inputs, stall_limit=vm.settings.stall_limit,
                                         memory_limit=self.memory_limit, instruction_limit=vm.settings.quantum)
        self.state = _READY
        self.rank = rank
        self.granted = granted
        self.system = system
        self.tools_ref = tools_ref
        self.conversation: list[Message | Ref] | None = None  # a Ref: a turn's messages, stored
        self.spent = 0  # milli-units used by earlier runs (before a restart)
        self.mailbox: Mailbox | None = None  # made on first use, dropped again while hibernated
        self.scope: trio.CancelScope | None = None
        self.snapshot: Ref | None = None
        self.deadline = math.inf
        self.parent = parent
        self.child_budget = 0  # milli-units charged to the parent for this child
        self.delegated = False  # the parent waits for this child's result
        self.policy = policy
        self.history: RestartHistory | None = None
        self.value: Any = None
        self.detail = ""
        self._done: trio.Event | None = None
        self.cancel_requested = False
        self.refund_due = 0  # milli-units a child gave back while this agent had no frame
        self.final_used = 0

    # --- the public face ---------------------------------------------------------

    @property
    def energy_used(self) -> float:
        """Energy used so far (children included, their unspent energy refunded)."""
        frame = self.frame
        used = self.spent + (frame.used if frame is not None else self.final_used)
        return max(0, used - self.refund_due) / 1000

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    async def result(self) -> Any:
        """Wait for the agent to end; its Done value, or `AgentError` naming how it ended."""
        while self.state not in TERMINAL:
            if self._done is None:
                self._done = trio.Event()
            await self._done.wait()
        if self.state is S.DONE:
            return self.value
        raise AgentError(self, self.state, self.detail)

    def cancel(self) -> None:
        """End the agent (CANCELLED) at its next await; idempotent, harmless once ended."""
        if self.state in TERMINAL:
            return
        self.cancel_requested = True
        if self.scope is not None:
            self.scope.cancel()
        elif self.state is _HIBERNATED:
            self.vm._unpin_snapshot(self)
            self._finish(S.CANCELLED, "cancelled while hibernated")

    async def send(self, value: Any) -> bool:
        """Put a VM value in the agent's mailbox (waiting while it is full); False if it ended."""
        if not is_value(value):
            raise TypeError(f"a message must be a VM value, not {type(value).__name__}")
        bad = lone_surrogate(value)
        if bad is not None:  # refused here, or the agent that receives it would fault
            raise ValueError(f"a message holds a lone surrogate ({bad}), which is not text")
        return await self.vm._deliver(self, value)

    def add_budget(self, units: float) -> None:
        """Give an agent that ran out of energy more, and let it go on."""
        frame = self.frame
        if frame is None or self.state in TERMINAL and self.state is not S.BUDGET_EXCEEDED:
            raise AvmError(f"agent {self.id} has ended {self.state.value}; it cannot take more budget")
        frame.add_budget(units)
        self.budget += round(units * 1000)
        if self.parent is None:
            self.vm._budgeted += round(units * 1000)
        if self.state is S.BUDGET_EXCEEDED:
            self.vm._restart_task(self, S.BUDGET_EXCEEDED)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<AgentHandle {self.id}{label} {self.state.value} energy={self.energy_used:g}>"

    # --- the task ------------------------------------------------------------------

    async def _main(self, woken: bool = False) -> None:
        # One coroutine for the task's whole life (not a wrapper catching for another): an agent waiting
        # for its reply holds every frame of its chain of awaits.
        vm = self.vm
        try:
            if self.cancel_requested:  # cancelled before it ever ran
                if woken:
                    vm._unpin_snapshot(self)
                self._finish(S.CANCELLED, "cancelled")
                return
            try:
                with trio.CancelScope() as scope:
                    self.scope = scope
                    if woken:
                        self._wake_frame()
                    # The run loop, here rather than in a coroutine of its own (a waiting agent holds every
                    # frame of its chain of awaits): run a quantum, perform its effect, resume, until the
                    # program ends. An llm effect is performed here too (`_llm_request`, `_llm_reply`).
                    frame = self.frame
                    assert frame is not None
                    quantum = vm.settings.quantum_milli
                    perform = vm._performers
                    counts = vm._effects
                    runq = vm.runq
                    while True:
                        self._set(_RUNNING)
                        before = frame.used
                        out = frame.run(quantum)
                        vm._energy += frame.used - before
                        kind_of = type(out)
                        if kind_of is Effect:
                            kind = out.kind  # type: ignore[union-attr]
                            self._set(WAITING_ON[kind])
                            counts[kind] += 1
                            if kind == "llm":
                                request = self._llm_request(out)  # type: ignore[arg-type]
                                if request is None:  # the messages were refused: the frame faulted
                                    result = None
                                else:
                                    try:
                                        response = await vm._submit(request, priority=self.rank)
                                    except LLMError as exc:
                                        vm._note_llm_error(exc)
                                        result = llm_error_value(exc.kind, str(exc))
                                    except RequestError as exc:
                                        frame.fail("RequestError", f"llm: {exc}")
                                        result = None
                                    else:
                                        result = self._llm_reply(response)
                                    del request
                            else:
                                result = await perform[kind](self, out)
                            if frame.status == "faulted":  # the host ruled the effect a fault (a denied tool...)
                                out = frame.outcome
                            else:
                                frame.resume(result)
                                if frame.stall_count > 1:
                                    vm._repeated_effects += 1
                                continue
                        elif kind_of is Preempted:
                            self._set(_READY)
                            vm._preemptions += 1
                            await runq.wait_turn(self.rank)
                            continue
                        if not self._ended(out):
                            break
                        frame = self.frame  # restarted with a fresh frame
                        assert frame is not None
            except _Hibernate as h:
                self.scope = None
                vm._hibernate(self, h.deadline)
                return
            except trio.Cancelled:  # the VM is closing
                self.scope = None
                if self.state not in TERMINAL:
                    self._finish(S.CANCELLED, "cancelled: the VM exited")
                raise
            self.scope = None
            if self.state not in TERMINAL:
                self._finish(S.CANCELLED, "cancelled")
        except Exception as exc:  # noqa: BLE001 - whatever went wrong handling this agent: it fails, the others go on
            self._crashed(exc)

    def _crashed(self, exc: Exception) -> None:
        """An exception escaped while the VM handled this agent (a bug in AVM): the agent ends FAILED
        naming it, its snapshot (if any) is let go, and the VM keeps the exception for tests."""
        vm = self.vm
        self.scope = None
        vm._internal_errors.append(exc)
        if self.snapshot is not None:
            try:
                vm._unpin_snapshot(self)
            except Exception as again:  # noqa: BLE001 - a closed or failing store: the pin goes with the process
                vm._internal_errors.append(again)
        if self.state not in TERMINAL:
            self._finish(S.FAILED, f"InternalError: {type(exc).__name__}: {exc} (a bug in AVM)")

    def _wake_frame(self) -> None:
        """Restore the hibernated frame and answer its recv (a message, or null after the deadline)."""
        vm = self.vm
        box = self.mailbox
        if (box is None or not len(box)) and trio.current_time() < self.deadline:
            raise _Hibernate(self.deadline)  # woken with nothing to say (a message taken back): sleep on
        frame = Frame.restore(self.code, vm.store.get(self.snapshot))  # type: ignore[arg-type]
        frame.set_memory_limit(self.memory_limit)
        frame.set_instruction_limit(vm.settings.quantum)
        vm._unpin_snapshot(self)
        if self.refund_due:
            frame.refund(self.refund_due / 1000)
            self.refund_due = 0
        self.frame = frame
        if type(self.inputs) is bytes:  # packed while hibernated
            self.inputs = decode_value(self.inputs)
        found, message = box.take() if box is not None else (False, None)
        frame.resume(message if found else None)  # null: the recv timed out

    def _ended(self, out: Any) -> bool:
        """Handle a final outcome; True if the agent restarts (the loop goes on)."""
        frame = self.frame
        assert frame is not None
        kind_of = type(out)
        if kind_of is Done:
            self.value = out.value
            self._finish(S.DONE, "")
            return False
        if kind_of is Fault:
            detail = str(out)
            self.vm._record_fault(self, out)
            if self.policy.mode != "never":
                if self.history is None:
                    self.history = RestartHistory()
                if self.history.allow(self.policy):
                    self._restart()
                    return True
                detail += f" (no restart left: {self.policy.max_restarts} in {self.policy.window_s:g} s)"
            self._finish(S.FAILED, detail)
            return False
        if kind_of is BudgetExceeded:
            self._finish(S.BUDGET_EXCEEDED, f"line {out.line}: needed {out.needed:g} energy, "
                                            f"used {out.energy_used:g} of {out.budget:g}")
            return False
        if kind_of is Stalled:
            self._finish(S.STALLED, f"line {out.line}: {out.count} identical {out.kind} effects "
                                    f"with identical results")
            return False
        raise AssertionError(f"unexpected outcome {out!r}")  # pragma: no cover

    def _restart(self) -> None:
        old = self.frame
        assert old is not None
        self.spent += old.used
        left = max(0, self.budget - self.spent)
        self.frame = Frame(self.code, left / 1000, self.inputs, stall_limit=self.vm.settings.stall_limit,
                           memory_limit=self.memory_limit, instruction_limit=self.vm.settings.quantum)
        self.conversation = None
        self.vm._restarts += 1

    def _box(self) -> Mailbox:
        box = self.mailbox
        if box is None:
            box = self.mailbox = Mailbox(self.vm.settings.mailbox_capacity)
        return box

    def _set(self, state: AgentState) -> None:
        old = self.state
        if old is not state:
            counts = self.vm._counts
            counts[old] -= 1
            counts[state] += 1
            self.state = state
            self.vm._transitions += 1

    def _finish(self, state: AgentState, detail: str) -> None:
        """Enter a terminal state: tell waiters, the parent, and give back unspent energy."""
        self.detail = detail
        frame = self.frame
        if frame is not None:
            self.final_used = frame.used
            if state is not S.BUDGET_EXCEEDED:
                self.frame = None  # nothing will run it again; keep the agent small
        if state is not S.BUDGET_EXCEEDED:
            self.conversation = None  # nor send a request again (out of budget, it may go on)
        self._set(state)
        try:
            self.vm._on_finished(self, state)
        finally:  # whatever the bookkeeping met, whoever waits for this agent learns it ended
            if self._done is not None:
                self._done.set()
                self._done = None

    def _refund(self, milli: int) -> None:
        """A child gave back ``milli`` unspent energy.

        Budget moved between parent and child is not energy used, so the VM's
        total (which counts instructions and host work where they happen) is
        not touched by the charge at spawn nor by this refund.
        """
        if milli <= 0:
            return
        frame = self.frame
        if frame is not None:
            frame.refund(milli / 1000)
        elif self.state in TERMINAL:
            self.final_used = max(0, self.final_used - milli)
        else:
            self.refund_due += milli  # hibernated: applied when it wakes

    def _charge(self, units: float) -> bool:
        frame = self.frame
        assert frame is not None
        before = frame.used
        ok = frame.charge(units)
        self.vm._energy += frame.used - before
        return ok

    # --- effects (each returns the value to resume with) ----------------------------------

    def _llm_request(self, effect: Effect) -> LLMRequest | None:
        """An llm effect's request: its message(s) joined to the conversation (None if they are refused:
        the frame has faulted). `_main` awaits the reply itself."""
        vm = self.vm
        frame = self.frame
        assert frame is not None
        try:
            messages = to_messages(effect.args[0])
        except MessageError as exc:
            frame.fail("MessageError", str(exc))
            return None
        conversation = self.conversation
        if conversation is None:
            conversation = self.conversation = []
        conversation.extend(messages)
        store_turn(conversation, vm.store)
        return vm._request(self, conversation)

    def _llm_reply(self, response: LLMResponse) -> Any:
        """Charge a reply, join it to the conversation, and give the value the program resumes with."""
        vm = self.vm
        usage = response.usage
        vm._prompt_tokens += usage.prompt_tokens
        vm._completion_tokens += usage.completion_tokens
        settings = vm.settings
        self._charge(usage.prompt_tokens * settings.energy_per_prompt_token
                     + usage.completion_tokens * settings.energy_per_completion_token)
        conversation = self.conversation
        if conversation is not None:  # (None: the agent ended while its request was out)
            conversation.append(reply_message(response.text, response.tool_calls))
        vm._tick_gc()  # the conversation grew: long-lived objects the cyclic GC need not scan again
        return reply_value(response.text, response.tool_calls)

    async def _tool(self, effect: Effect) -> Any:
        name, arguments = effect.args
        frame = self.frame
        assert frame is not None
        self.vm._note_tool_call(self, name, arguments)
        try:
            result = await self.vm.tools.invoke(name, arguments, self.granted)
        except ToolDenied as exc:
            frame.fail("ToolDenied", str(exc))
            return None
        self._charge(result.seconds * self.vm.settings.energy_per_tool_second)
        return result.value

    async def _send(self, effect: Effect) -> Any:
        target, message = effect.args
        vm = self.vm
        agent = vm._agents.get(target) if type(target) is int else vm._names.get(target)
        if agent is None or agent.state in TERMINAL:
            how = "has ended" if agent is not None else "does not exist"
            return error_value("send", "NoSuchAgent", f"send: agent {target!r} {how}")
        vm._messages += 1
        return await vm._deliver(agent, message)

    async def _recv(self, effect: Effect) -> Any:
        timeout = effect.args[0]
        mailbox = self._box()
        found, message = mailbox.take()
        if found:
            return message
        if timeout is not None and timeout <= 0:
            return None
        now = trio.current_time()
        deadline = math.inf if timeout is None else now + timeout
        idle = self.vm.settings.hibernate_after_s
        if idle is not None and deadline > now + idle:
            found, message = await mailbox.receive(now + idle)
            if found:
                return message
            if self.vm._store_snapshot(self):
                raise _Hibernate(deadline)
            # a frame that cannot be a snapshot (a value too deep to encode, a store that refuses it)
            # stays awake in its recv
        found, message = await mailbox.receive(deadline)
        return message if found else None

    async def _sleep(self, effect: Effect) -> Any:
        await trio.sleep(effect.args[0])
        return None

    async def _spawn(self, effect: Effect) -> Any:
        child = self.vm._spawn_child(self, effect)
        if type(child) is not AgentHandle:
            return child  # an error value
        return child.id

    async def _delegate(self, effect: Effect) -> Any:
        child = self.vm._spawn_child(self, effect)
        if type(child) is not AgentHandle:
            return child
        child.delegated = True
        try:
            while child.state not in TERMINAL:
                if child._done is None:
                    child._done = trio.Event()
                await child._done.wait()
        except trio.Cancelled:
            child.cancel()  # a delegate is the parent's work: it does not outlive the wait
            raise
        return child_result(child)


def child_result(child: AgentHandle) -> Any:
    """What a parent gets for a child that ended: its value, or an error value naming how it ended."""
    if child.state is S.DONE:
        return child.value
    return error_value("delegate", "Child" + child.state.value.title().replace("_", ""),
                       f"child agent {child.id} ended {child.state.value}: {child.detail}")


def store_turn(conversation: list[Any], store: Any) -> None:
    """Store the messages at the end of ``conversation`` (the last reply and what the program sent since) as
    one object, their JSON, and put its ref in their place: an agent keeps a ref per turn, not a `Message`
    per message with its text and JSON (~0.4 KB a turn in bench/fleet.py). If the store refuses them,
    they stay as they are (and are sent so)."""
    start = end = len(conversation)
    while start and type(conversation[start - 1]) is not Ref:
        start -= 1
    if start == end:
        return
    try:
        data = b",".join([message_json(m) for m in conversation[start:]])
        ref = store.put(data, hot=False)
    except (StoreError, RequestError):
        return
    conversation[start:] = [ref]
