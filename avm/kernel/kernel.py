"""The kernel: the agents of one VM, their tasks, and what happens between them.

It owns a trio nursery (one task per live agent, plus the run-queue dispatcher
and the hibernation timers), the store, the LLM gateway and the tool registry,
the records of the live agents, and the VM's numbers. Each agent's task runs
`avm.kernel.trap.live`; what happens to an agent from outside its task (a
message delivered, a wake-up, a cancel, a child's end) happens here.
`avm.runtime.VM` is the public facade.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import os
import time
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from avm.conversation import store_turn
from avm.errors import (
    AvmError,
    CompileError,
    InternalError,
    LLMError,
    SnapshotError,
    StoreError,
    lone_exception,
)
from avm.gc_threshold import Raised, raise_young, restore
from avm.kernel.hooks import Hook

if TYPE_CHECKING:
    from avm.journal.writer import Journal
from avm.kernel.record import Agent, child_result
from avm.kernel.settings import VMError, VMSettings, VMStatistics, check_grant
from avm.kernel.shared import Shared
from avm.kernel.trap import crashed, finish, live
from avm.lang.code import Code
from avm.lang.frame import Frame, check_memory_limit, to_milli
from avm.lang.opcodes import EFFECT_KINDS
from avm.lang.outcomes import Effect, Fault
from avm.lang.values import canonical_order, is_value, lone_surrogate
from avm.memory.ref import Ref
from avm.memory.store import ContentStore
from avm.memory.values import encode_value
from avm.scheduler.mailbox import Mailbox
from avm.scheduler.runqueue import RunQueue
from avm.scheduler.states import TERMINAL, AgentState, priority_rank
from avm.scheduler.supervision import RestartPolicy
from avm.scheduler.timers import Timers
from avm.tools.registry import ToolDefinitionError, ToolRegistry, error_value

S = AgentState
_TOP_KEPT = 16  # ended agents remembered for statistics(top=...)
_TOOL_CALLS_REMEMBERED = 16384  # (agent, tool call) pairs remembered to count repeats: ~80 bytes each

class Kernel:
    def __init__(self, store: ContentStore | None, llm: Any, tools: Any, settings: VMSettings):
        self.settings = settings
        self.owns_store = store is None
        self.store = ContentStore() if store is None else store
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        self.shared = Shared(self.store, self.tools, settings)
        self.hooks: list[Hook] = []
        self._llm = llm
        self.gateway: Any = None
        self.submit: Any = None  # what an agent's llm awaits
        self.llm_url: str | None = None
        self.runq = RunQueue(settings.aging_s)
        self._timers = Timers()
        self._nursery: trio.Nursery | None = None
        self._stack: AsyncExitStack | None = None
        self.closed = False
        self.stopping = False  # closing, or interrupted: agents cancelled now have not ended (see finish)
        self.stopped: set[int] = set()  # the agents stopped so: they have no end, and may still take refunds
        self._next_id = 1
        self.agents: dict[int, Agent] = {}  # live ones (and BUDGET_EXCEEDED, which may go on)
        self.names: dict[str, Agent] = {}
        self.counts: dict[AgentState, int] = dict.fromkeys(AgentState, 0)
        self.effects = dict.fromkeys(EFFECT_KINDS, 0)
        self.transitions = self._spawned = self._child_spawns = self._completions = 0
        self.restarts = self._hibernations = self._wakeups = self.preemptions = 0
        self.messages = self._llm_errors = self.prompt_tokens = self.completion_tokens = 0
        self.tool_injections = 0  # LLM replies that called tools the agent was not granted (refused)
        self.deadlocked = 0  # agents ended STALLED waiting for a message no one could send (avm.kernel.stalls)
        self.host_waits = 0  # the host's join() and result() calls waiting now
        self._llm_error_kinds: dict[str, int] = {}
        self._llm_first_errors: dict[str, str] = {}
        self.energy = 0  # milli-units
        self.budgeted = 0  # milli-units granted by the host
        self._budget_int = 0
        self._ended: dict[str, int] = {}
        self._fault_count = self.repeated_effects = self._tool_repeats = 0
        self._tool_calls_seen: dict[int, None] | None = None  # hashes of (agent, tool, arguments), oldest first
        self._top_ended: list[tuple[float, int, str | None, str]] = []  # a min-heap of the biggest ended agents
        self._faults: deque[tuple[int, str | None, int, str]] = deque(maxlen=settings.faults_kept)
        self._idle: trio.Event | None = None
        self.internal_errors: list[BaseException] = []  # bugs of AVM met while driving agents (kept for tests)
        self._since_freeze = 0
        self._froze = False
        self._gc_threshold: Raised | None = None  # while raised
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid() % 10000:04d}{self._instance():02d}"
        self.journal: Journal | None = None
        if settings.journal:
            from avm.journal.writer import Journal

            self.journal = Journal(self.store, self.run_id, snapshot_every=settings.snapshot_every)
            self.hooks.append(self.journal)
        # children of recovered agents whose spawn the journal lost (the crash came first), by parent id:
        # the parent's next spawn or delegate takes the child it made before instead of making another
        self.orphans: dict[int, list[Agent]] = {}
        # recovered agents: the keys of the messages their journals show delivered (see deliver), and
        # those whose snapshot holds the conversation of the effect they wait on (see trap.replayed)
        self.delivered: dict[int, set[str]] = {}
        self.in_snapshot: set[int] = set()
        self.refund_tail: dict[int, int] = {}  # milli-units children gave back after the last replayed effect
        self.refunded: dict[int, set[int]] = {}  # the children whose refund each recovered agent's journal has

    _made = 0

    @classmethod
    def _instance(cls) -> int:
        cls._made += 1
        return cls._made % 100

    @property
    def model(self) -> str:
        return self.shared.model

    # --- lifetime ------------------------------------------------------------------------

    async def open(self) -> None:
        if self._stack is not None or self.closed:
            raise VMError("a VM is entered once")
        stack = AsyncExitStack()
        await stack.__aenter__()
        self._gc_threshold = raise_young(self.settings.gc_young_threshold)
        try:
            self.gateway = await self._open_gateway(stack)
            # what an agent's llm awaits: a gateway's `submit` (no frame of its own while the reply is
            # awaited), or the `complete` of a gateway given by the caller that has no `submit`
            self.submit = getattr(self.gateway, "submit", None) or self.gateway.complete
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            self._nursery.start_soon(self.runq.dispatch)
            self._nursery.start_soon(self._timers.run)
            if self.journal is not None and self.store.path is not None:
                self._nursery.start_soon(self._commit_journal)
            if not self.settings.host_sends:
                from avm.kernel.stalls import watch

                self._nursery.start_soon(watch, self)
        except BaseException:
            self._restore_gc_threshold()
            await stack.aclose()
            raise
        self._stack = stack

    async def _open_gateway(self, stack: AsyncExitStack) -> Any:
        llm = self._llm
        settings = self.settings
        if llm is not None and not isinstance(llm, str):
            self.shared.model = settings.model or getattr(llm, "model", None) or ""
            return llm  # a Gateway given by the caller, who owns it
        from avm.io.client.limits import make_room
        from avm.io.client.openai import OpenAIBackend
        from avm.io.gateway import Gateway
        from avm.io.gateway_settings import GatewaySettings

        gateway = dict(settings.gateway)
        if settings.llm_connections is not None:
            gateway["max_connections"] = settings.llm_connections
        try:
            gateway_settings = GatewaySettings.from_mapping(gateway)
        except AvmError as exc:
            raise VMError(f"gateway settings: {exc}") from None
        # raises the open-file limit if need be; the embedded server in this process holds the other end of each
        connections = make_room(gateway_settings.max_connections * (2 if llm is None else 1))
        connections //= 2 if llm is None else 1
        if connections < gateway_settings.max_connections:
            gateway_settings = replace(gateway_settings, max_connections=connections)
        if llm is None:
            from avm.io.embedded.faults import ServerSettings
            from avm.io.embedded.server import serve_llm

            served = ServerSettings.from_mapping(settings.llm_server)
            if settings.model and not served.any_model and settings.model not in served.models:
                # the server answers 404 to a model it does not serve, as OpenAI does: it serves the VM's
                served = served.replace(models=(settings.model, *served.models))
            server = await stack.enter_async_context(serve_llm(served))
            model = self.shared.model = settings.model or served.models[0]
            backend = OpenAIBackend(server.url, api_key="", model=model, max_connections=connections)
        else:
            model = self.shared.model = settings.model or os.environ.get("OPENAI_MODEL") or ""
            if not model:
                raise VMError("name the model (--model, VM(model=...) or OPENAI_MODEL) for the endpoint "
                              f"{llm}")
            backend = OpenAIBackend(llm, model=model, max_connections=connections)  # key: OPENAI_API_KEY
        self.llm_url = backend.base_url
        return await stack.enter_async_context(Gateway(backend, store=self.store, settings=gateway_settings))

    async def close(self, exc: BaseException | None) -> None:
        stack, self._stack = self._stack, None
        try:
            if exc is None and self.settings.on_exit == "wait":
                await self.join()
        finally:
            self.closed = self.stopping = True
            for agent in list(self.agents.values()):
                self.cancel(agent)
            assert self._nursery is not None and stack is not None
            self._nursery.cancel_scope.cancel()
            try:
                with lone_exception():
                    await stack.__aexit__(None, None, None)
            finally:
                if self._froze:
                    gc.unfreeze()  # what the VM froze is collectable again
                self._restore_gc_threshold()
                if self.owns_store:
                    self.store.close()
                elif not self.store.closed:
                    await trio.to_thread.run_sync(self.store.flush)

    async def _commit_journal(self) -> None:
        """Commit what was journaled every ``journal_commit_s`` (the store's single writer, in a thread)."""
        every = self.settings.journal_commit_s
        while True:
            await trio.sleep(every)
            if self.store.closed:
                return
            await trio.to_thread.run_sync(self.store.flush)

    async def join(self) -> None:
        """Wait until no agent is alive (every one ended, or ran out of budget)."""
        self.host_waits += 1  # (the host spawns nothing more meanwhile: see avm.kernel.stalls)
        try:
            while self.live:
                if self._idle is None:
                    self._idle = trio.Event()
                await self._idle.wait()
        finally:
            self.host_waits -= 1

    @property
    def live(self) -> int:
        """Agents not in a terminal state."""
        counts = self.counts
        return sum(n for state, n in counts.items() if state not in TERMINAL)

    def set_state(self, agent: Agent, state: AgentState) -> None:
        old = agent.state
        if old is not state:
            counts = self.counts
            counts[old] -= 1
            counts[state] += 1
            agent.state = state
            self.transitions += 1

    # --- spawning ------------------------------------------------------------------------

    def spawn(self, program: Any, *, system: Any, tools: Any, inputs: dict[str, Any] | None,
              budget: float | None, priority: str | int, name: str | None, restart: Any,
              memory_limit: int | None) -> Agent:
        if self._nursery is None or self.closed:
            raise VMError("spawn() needs a running VM: use it inside `async with VM(...) as vm`")
        shared = self.shared
        code = shared.code(program)
        if name is not None:
            if type(name) is not str or not name:
                raise VMError(f"an agent name is non-empty text, not {name!r}")
            if name in self.names:
                raise VMError(f"an agent named {name!r} is already alive")
        try:
            rank = priority_rank(priority)
            policy = RestartPolicy.of(restart)
            budget_milli = to_milli(self.settings.default_budget if budget is None else budget, "budget")
            if budget_milli == self._budget_int:  # a fleet shares one budget: share its int object too
                budget_milli = self._budget_int
            else:
                self._budget_int = budget_milli
        except (ValueError, TypeError) as exc:
            raise VMError(str(exc)) from None
        granted = shared.grant(tools)
        if memory_limit is not None:
            try:
                check_memory_limit(memory_limit)
            except ValueError as exc:
                raise VMError(str(exc)) from None
        agent = self._create(code, inputs, budget_milli, name=name, rank=rank, granted=granted,
                             system=shared.system_ref(system), policy=policy,
                             memory_limit=self.settings.agent_memory_bytes if memory_limit is None else memory_limit)
        self.budgeted += budget_milli
        for hook in self.hooks:
            hook.started(agent)
        self._nursery.start_soon(live, self, agent)
        return agent

    def new_frame(self, code: Code, budget: int, inputs: Any, memory_limit: int | None) -> Frame:
        settings = self.settings
        if type(inputs) is dict:
            inputs = canonical_order(inputs)  # (a journal keeps maps so: a resumed frame sees them the same)
        return Frame(code, budget / 1000, inputs, stall_limit=settings.stall_limit, memory_limit=memory_limit,
                     instruction_limit=settings.quantum)

    def _create(self, code: Code, inputs: dict[str, Any] | None, budget: int, *, name: str | None, rank: int,
                granted: frozenset[str], system: Ref | None, policy: RestartPolicy, memory_limit: int | None,
                parent: Agent | None = None) -> Agent:
        ident = self._next_id
        tools_ref = self.shared.tools_ref(granted)
        try:
            frame = self.new_frame(code, budget, inputs, memory_limit)
        except (TypeError, ValueError) as exc:  # inputs that are not VM values
            raise VMError(f"cannot spawn: {exc}") from None
        agent = Agent(ident, code, inputs, budget, frame, name=name, rank=rank, granted=granted, system=system,
                      tools_ref=tools_ref, policy=policy, memory_limit=memory_limit, parent=parent)
        self._next_id = ident + 1
        self.agents[ident] = agent
        if name is not None:
            self.names[name] = agent
        self.counts[S.READY] += 1
        self._spawned += 1
        self.tick_gc()
        return agent

    def _restore_gc_threshold(self) -> None:
        raised, self._gc_threshold = self._gc_threshold, None
        restore(raised)  # unless changed since (by the host, or by another VM)

    def tick_gc(self) -> None:
        every = self.settings.gc_freeze_every
        if every:
            self._since_freeze += 1
            if self._since_freeze >= every:
                self._since_freeze = 0
                self._froze = True
                # young garbage cycles (trio's, exceptions') are freed, not frozen. A full collection here
                # would also free older ones (a closed TLS stream is a cycle) but cost 10 s instead of 6 of
                # the 48 s of CPU of 10,000 agents x 8 turns (measured); cycles frozen live until the VM exits.
                gc.collect(1)
                gc.freeze()

    def spawn_child(self, parent: Agent, effect: Effect) -> Agent | dict[str, Any]:
        """A program's spawn/delegate: the child (its budget, ``child_budget``, is the parent's to
        transfer), or an error value for the parent."""
        program, inputs, budget = effect.args
        kind = effect.kind
        if self.orphans:
            adopted = self._adopt(parent, kind)
            if adopted is not None:
                return adopted
        try:
            code = self.shared.code(program)
        except (CompileError, VMError, StoreError) as exc:
            return error_value(kind, "ProgramError", f"{kind}: {exc}")
        milli = to_milli(budget, "budget")
        frame = parent.frame
        assert frame is not None
        left = frame.budget - frame.used - parent.lent
        if milli > left:
            return error_value(kind, "BudgetError",
                               f"{kind}: a child budget of {milli / 1000:g} is more than the {left / 1000:g} left")
        try:
            child = self._create(code, inputs, milli, name=None, rank=parent.rank, granted=parent.granted,
                                 system=parent.system, policy=RestartPolicy(),
                                 memory_limit=self.settings.agent_memory_bytes,
                                 parent=parent)
        except VMError as exc:
            return error_value(kind, "ProgramError", str(exc))
        child.child_budget = milli
        child.delegated = kind == "delegate"
        self._child_spawns += 1
        for hook in self.hooks:
            hook.started(child)
        assert self._nursery is not None
        self._nursery.start_soon(live, self, child)
        return child

    def _adopt(self, parent: Agent, kind: str) -> Agent | None:
        """A recovered parent's spawn or delegate: the child it made before the crash, if the journal lost
        the parent's entry for it (see `resume`); its budget moves to it again, its unspent part comes back."""
        waiting = self.orphans.get(parent.id)
        if not waiting:
            return None
        child = waiting.pop(0)
        if not waiting:
            del self.orphans[parent.id]
        child.delegated = kind == "delegate"
        if child.state in TERMINAL:  # it ended before the crash: what it left is the parent's again
            if child.id not in self.refunded.get(parent.id, ()):  # (unless the journal has it already)
                self._refund(parent, child.child_budget - child.used_milli(), child)
            if kind == "spawn":
                self._notify_parent(parent, child)  # (its notice had no parent to go to)
        else:
            child.parent = parent
        return child

    def resume(self, run_id: str) -> list[Agent]:
        """Continue the run ``run_id`` from its journals in the store (`avm.journal.recovery`): every agent
        that had not ended goes on, fed its journaled results first; those that ended are returned as they
        ended. Called once, on a VM with a journal that has spawned nothing yet."""
        from avm.journal.recovery import recover

        if self._nursery is None or self.closed:
            raise VMError("resume() needs a running VM: use it inside `async with VM(...) as vm`")
        journal = self.journal
        if journal is None:
            raise VMError("resume() needs a VM with journal=True, over the store the run journaled into")
        if self._spawned:
            raise VMError("resume() comes before any spawn")
        if type(run_id) is not str or not run_id or "/" in run_id:
            raise VMError(f"a run id is text without '/', not {run_id!r}")
        from avm.journal.reader import journals

        runs = sorted({key.split("/", 1)[0] for key in journals(self.store)})
        matches = [r for r in runs if r == run_id] or [r for r in runs if r.startswith(run_id)]
        if len(matches) != 1:
            what = "more than one journaled run starts with" if matches else "no journaled run"
            raise VMError(f"{what} {run_id!r} in the store (runs: {', '.join(runs[-5:]) or 'none'})")
        run_id = matches[0]
        plans = recover(self.store, run_id)
        self.run_id = journal.run_id = run_id
        records: dict[int, Agent] = {}
        live_ones: list[Agent] = []
        for plan in plans:
            agent = self._recovered(plan)
            records[plan.id] = agent
            if agent.state not in TERMINAL:
                live_ones.append(agent)
                journal.go_on(plan.id, *plan.head)
        by_id = {plan.id: plan for plan in plans}
        notices: list[tuple[Agent, Agent]] = []
        for plan in plans:
            parent_id = plan.start.get("parent")
            parent = records.get(parent_id) if type(parent_id) is int else None
            if parent is None or parent.state in TERMINAL:
                continue
            child = records[plan.id]
            child.child_budget = child.budget
            if plan.id in by_id[parent.id].children:
                if child.state not in TERMINAL:
                    child.parent = parent
                elif not child.delegated and f"end/{child.id}" not in by_id[parent.id].mail_keys:
                    notices.append((parent, child))  # it ended, and the crash lost its notice and refund
            else:  # the parent's spawn of it was lost: its next spawn takes this child
                self.orphans.setdefault(parent.id, []).append(child)
        for parent, child in notices:
            if child.id not in by_id[parent.id].refunded_children:
                self._refund(parent, child.budget - child.used_milli(), child)
            self._notify_parent(parent, child)
        self._next_id = max(records) + 1
        assert self._nursery is not None
        for agent in live_ones:
            self._nursery.start_soon(live, self, agent)
        return list(records.values())

    def _recovered(self, plan: Any) -> Agent:
        """The record of one agent of a resumed run: ended as it ended, or ready to go on (registered)."""
        start = plan.start
        budget = start["budget"]
        problem = ""
        code: Code | None = None
        granted: frozenset[str] = frozenset()
        frame: Frame | None = None
        try:
            code = self.shared.code(start["program"])
            granted = check_grant(self.tools, start["tools"]) if start["tools"] else frozenset()
            if plan.ended is None and plan.snapshot is not None:
                frame = Frame.restore(code, self.store.get(plan.snapshot["frame"]))
        except (VMError, StoreError, ToolDefinitionError, SnapshotError) as exc:
            problem = f"cannot resume: {exc}"
        agent = Agent(plan.id, code, start["inputs"], budget, None,  # type: ignore[arg-type]
                      name=start["name"], rank=start["rank"], granted=granted, system=start["system"],
                      tools_ref=self.shared.tools_ref(granted), policy=RestartPolicy(*start["restart"]),
                      memory_limit=start["memory_limit"])
        agent.delegated = bool(start.get("delegated"))
        agent.final_used = plan.energy
        self._spawned += 1
        if start.get("parent") is None:
            self.budgeted += budget
        ended = plan.ended
        if ended is not None or problem:
            state = AgentState(ended["state"]) if ended is not None else S.FAILED
            agent.state = state
            agent.value = ended["value"] if ended is not None else None
            agent.detail = (ended["error"] or "") if ended is not None else problem
            self.counts[state] += 1
            self._ended[state.value] = self._ended.get(state.value, 0) + 1
            self._completions += 1
            self.energy += plan.own_energy  # (its children's work is theirs: each counts its own)
            return agent
        assert code is not None
        snapshot = plan.snapshot
        if frame is not None:
            frame.set_memory_limit(agent.memory_limit)
            frame.set_instruction_limit(self.settings.quantum)
            agent.spent = snapshot["spent"]
            agent.conversation = list(snapshot["conversation"]) or None
            if snapshot.get("resumed_by") == "previous" and plan.replay:
                self.in_snapshot.add(plan.id)  # the conversation holds the turn of the effect it waits on
        else:
            frame = self.new_frame(code, budget, agent.inputs, agent.memory_limit)
        self.energy += plan.base_energy if plan.snapshot is not None else 0  # the replay counts the rest again
        agent.frame = frame
        if plan.replay:
            agent.replay = deque(plan.replay)
            if plan.tail_refund:
                self.refund_tail[plan.id] = plan.tail_refund
        else:
            agent.refund_due += plan.tail_refund
        if plan.mailbox:
            self.box(agent).items = deque(plan.mailbox)
        if plan.mail_keys:
            self.delivered[plan.id] = set(plan.mail_keys)
        if plan.refunded_children:
            self.refunded[plan.id] = set(plan.refunded_children)
        self.agents[plan.id] = agent
        if agent.name is not None:
            self.names[agent.name] = agent
        self.counts[S.READY] += 1
        return agent

    def program_ref(self, program: Any) -> Ref:
        if self.closed:
            raise VMError("the VM has exited")
        return self.store.put(self.shared.code(program).to_bytes())

    # --- from outside the agent's task: messages, budget, cancel ---------------------------------

    def box(self, agent: Agent) -> Mailbox:
        box = agent.mailbox
        if box is None:
            box = agent.mailbox = Mailbox(self.settings.mailbox_capacity)
        return box

    async def send(self, agent: Agent, value: Any) -> bool:
        """The host's send: a VM value into the agent's mailbox."""
        if not is_value(value):
            raise TypeError(f"a message must be a VM value, not {type(value).__name__}")
        bad = lone_surrogate(value)
        if bad is not None:  # refused here, or the agent that receives it would fault
            raise ValueError(f"a message holds a lone surrogate ({bad}), which is not text")
        return await self.deliver(agent, value)

    async def deliver(self, agent: Agent, message: Any, key: str | None = None) -> bool:
        """Put a message in the agent's mailbox (waiting while it is full). ``key`` names an agent's send
        the same way in every attempt: one the journal shows delivered before a crash is not delivered
        again (the sender's own entry for it was lost with the crash)."""
        if agent.state in TERMINAL:
            return False
        if key is not None and self.delivered:
            seen = self.delivered.get(agent.id)
            if seen is not None and key in seen:
                seen.discard(key)
                return True
        box = self.box(agent)
        if not box.offer(message):
            deadline = trio.current_time() + self.settings.send_timeout_s
            if not await box.put(message, deadline):
                return False
        for hook in self.hooks:
            hook.mailed(agent, message, key)
        if agent.state is S.HIBERNATED:
            self._wake(agent)
        return True

    def cancel(self, agent: Agent) -> None:
        """End the agent (CANCELLED) at its next await; idempotent, harmless once ended."""
        if agent.state in TERMINAL:
            return
        agent.cancel_requested = True
        if agent.scope is not None:
            agent.scope.cancel()
        elif agent.state is S.HIBERNATED:
            self.unpin_snapshot(agent)
            finish(self, agent, S.CANCELLED, "cancelled while hibernated")

    def stall(self, agent: Agent, detail: str) -> None:
        """End an agent STALLED (see `avm.kernel.stalls`): at its next await, or at once if hibernated."""
        if agent.state in TERMINAL or agent.cancel_requested or self.stopping:  # (a cancel or a stop came first)
            return
        if agent.scope is not None:
            agent.cancel_requested = detail  # (live() ends it so, not CANCELLED)
            agent.scope.cancel()
        elif agent.state is S.HIBERNATED:
            self.unpin_snapshot(agent)
            finish(self, agent, S.STALLED, f"{detail} (hibernated)")

    def add_budget(self, agent: Agent, units: float) -> None:
        frame = agent.frame
        if frame is None or agent.state in TERMINAL and agent.state is not S.BUDGET_EXCEEDED:
            raise AvmError(f"agent {agent.id} has ended {agent.state.value}; it cannot take more budget")
        frame.add_budget(units)
        agent.budget += round(units * 1000)
        if agent.parent is None:
            self.budgeted += round(units * 1000)
        if agent.state is S.BUDGET_EXCEEDED:
            self._restart_task(agent)

    async def result(self, agent: Agent) -> None:
        """Wait for the agent to end."""
        self.host_waits += 1
        try:
            while agent.state not in TERMINAL:
                if agent.done is None:
                    agent.done = trio.Event()
                await agent.done.wait()
        finally:
            self.host_waits -= 1

    def _restart_task(self, agent: Agent) -> None:
        """An agent that ran out of budget got more: run it again."""
        if self._nursery is None or self.closed:
            raise VMError("the VM has exited")
        self.agents[agent.id] = agent
        if agent.name is not None:
            self.names.setdefault(agent.name, agent)
        agent.detail = ""  # (what it ran out on is history)
        self.set_state(agent, S.READY)
        self._nursery.start_soon(live, self, agent)

    # --- hibernation -----------------------------------------------------------------------------

    def hibernate(self, agent: Agent, deadline: float) -> None:
        """The agent, idle in recv, becomes its stored snapshot and leaves its task (see `store_snapshot`)."""
        agent.scope = None  # it has no task from now on: a cancel ends it here, not in a task
        if agent.conversation:  # a hibernated agent keeps refs only: its last turn goes to the store now
            store_turn(agent.conversation, self.store)
        frame = agent.frame
        if frame is not None:  # (None: woken with nothing to say, it sleeps on as the snapshot it was)
            if agent.snapshot is None:
                raise InternalError("hibernating an agent whose snapshot is not stored")
            for hook in self.hooks:
                hook.hibernated(agent)
            agent.final_used = frame.used
            agent.frame = None
        # What a hibernated agent keeps is what 100,000 of them cost: pack its inputs (a dict is
        # ~180 bytes, its encoding a few dozen) and drop an empty mailbox; waking undoes both.
        if type(agent.inputs) is dict:
            agent.inputs = encode_value(agent.inputs)  # type: ignore[assignment]
        box = agent.mailbox
        if box is not None and not len(box) and box.receiver is None and box.senders is None:
            agent.mailbox = None  # (a box that ever made a sender wait is kept: that sender may still offer)
        agent.deadline = deadline
        self.set_state(agent, S.HIBERNATED)
        self._hibernations += 1
        self.tick_gc()
        if agent.cancel_requested:
            self.cancel(agent)
            return
        self._timers.call_at(deadline, lambda: self._wake(agent))

    def store_snapshot(self, agent: Agent) -> bool:
        """Put the frame of an agent idle in recv into the store, pinned, before it hibernates.

        False if it cannot be done (a value too deep or too big to encode, a store that refuses the
        bytes): the agent then stays awake, which costs memory, never the agent."""
        frame = agent.frame
        assert frame is not None
        try:
            ref = self.store.put(frame.snapshot())
            self.store.pin(ref)
        except (SnapshotError, StoreError):
            return False
        agent.snapshot = ref
        return True

    def _wake(self, agent: Agent) -> None:
        """Give a hibernated agent a task again. Called by timers and by other agents' sends, so a
        failure here is this agent's alone: it fails, and neither the caller nor the VM sees it."""
        if agent.state is not S.HIBERNATED or self._nursery is None or self.closed:
            return
        self.set_state(agent, S.READY)
        self._wakeups += 1
        try:
            self._nursery.start_soon(live, self, agent, True)
        except Exception as exc:  # noqa: BLE001 - the agent fails, not the caller
            crashed(self, agent, exc)

    def unpin_snapshot(self, agent: Agent) -> None:
        ref, agent.snapshot = agent.snapshot, None
        if ref is not None and not self.store.closed:
            self.store.unpin(ref)

    # --- endings ---------------------------------------------------------------------------

    def on_finished(self, agent: Agent, state: AgentState) -> None:
        try:
            self._account_end(agent, state)
        finally:  # a failure above is the agent's (its task reports it); join() must still see the end
            if self.stopping and not self.closed and not self.live:
                self.stopping = False  # interrupted, then used again: cancels from now on are final
            if self._idle is not None and not self.live:
                self._idle.set()
                self._idle = None

    def _account_end(self, agent: Agent, state: AgentState) -> None:
        self._completions += 1
        ended = self._ended
        ended[state.value] = ended.get(state.value, 0) + 1
        if state is not S.BUDGET_EXCEEDED:
            top = self._top_ended
            entry = (agent.used_milli() / 1000, agent.id, agent.name, state.value)
            if len(top) < _TOP_KEPT:
                heapq.heappush(top, entry)
            elif entry > top[0]:
                heapq.heapreplace(top, entry)
            self.agents.pop(agent.id, None)
            if agent.name is not None and self.names.get(agent.name) is agent:
                del self.names[agent.name]
        if agent.mailbox is not None:
            for message in agent.mailbox.drain():
                del message  # undelivered: the agent ended
        parent = agent.parent
        if self.settings.record_agents:
            self.record_agent(agent, state)
        if parent is not None:
            if agent.child_budget and not (state is S.CANCELLED and self.stopping):  # (stopped: not ended)
                self._refund(parent, agent.child_budget - agent.used_milli(), agent)
                agent.child_budget = 0
            # (stopped with the VM, the child has not ended: it is resumed, and its parent waits on)
            if not agent.delegated and parent.state not in TERMINAL and not (state is S.CANCELLED and self.stopping):
                self._notify_parent(parent, agent)
            agent.parent = None

    def _refund(self, parent: Agent, milli: int, child: Agent) -> None:
        """A child's unspent budget back to its parent (the trap refunds it to the parent's frame), unless
        the parent has ended: it keeps the energy it ended with, which its journal's end entry records."""
        if milli > 0 and (parent.state not in TERMINAL or parent.id in self.stopped):
            if parent.replay is None:
                parent.refund_due += milli
            else:  # recovering: it comes after every journaled effect, so after the replay's last one
                self.refund_tail[parent.id] = self.refund_tail.get(parent.id, 0) + milli
            for hook in self.hooks:
                hook.refunded(parent, milli, child.id)

    def _notify_parent(self, parent: Agent, child: Agent) -> None:
        """A child the parent spawned (not delegated) ended: its end notice, a message to the parent."""
        state = child.state
        report = {"child": child.id, "state": state.value, "value": child.value if state is S.DONE else None,
                  "error": None if state is S.DONE else child_result(child)["error"]["message"]}
        if self.box(parent).offer(report):
            for hook in self.hooks:
                hook.mailed(parent, report, f"end/{child.id}")
            if parent.state is S.HIBERNATED:
                self._wake(parent)

    def record_agent(self, agent: Agent, state: AgentState) -> None:
        """Store the agent's summary under ``agents/<run id>/<id>`` (see VMSettings.record_agents)."""
        if self.store.closed:
            return
        parent = agent.parent
        summary = {
            "id": agent.id, "name": agent.name, "parent": parent.id if parent is not None else None,
            "program": agent.code.id, "state": state.value, "value": agent.value if state is S.DONE else None,
            "error": agent.detail or None, "energy_used": agent.used_milli() / 1000, "budget": agent.budget / 1000,
        }
        try:
            ref = self.store.put_value(summary)
        except (TypeError, ValueError):  # a value the store cannot encode (too deep): keep the rest
            summary["value"] = None
            ref = self.store.put_value(summary)
        self.store.bind(f"agents/{self.run_id}/{agent.id:09d}", ref)

    def record_fault(self, agent: Agent, fault: Fault) -> None:
        self._fault_count += 1
        self._faults.append((agent.id, agent.name, fault.line, f"{fault.kind}: {fault.error}"))

    # --- lookups and numbers -------------------------------------------------------------------

    def cancel_all(self, interrupt: bool = False) -> int:
        if interrupt:
            self.stopping = True
        agents = [a for a in self.agents.values() if a.state not in TERMINAL]
        for agent in agents:
            self.cancel(agent)
        return len(agents)

    def agent(self, key: int | str) -> Agent | None:
        return self.agents.get(key) if type(key) is int else self.names.get(key)  # type: ignore[arg-type]

    def note_llm_error(self, error: LLMError) -> None:
        self._llm_errors += 1
        kind = error.kind
        self._llm_error_kinds[kind] = self._llm_error_kinds.get(kind, 0) + 1
        if kind not in self._llm_first_errors:
            self._llm_first_errors[kind] = str(error)

    def note_tool_call(self, agent: Agent, name: str, arguments: Any) -> None:
        """Count a tool call that repeats one the same agent made before (tool churn).

        The calls are remembered as 64-bit hashes in an insertion-ordered dict, the oldest forgotten
        first: a fleet makes a call per agent per turn, and a tuple with the arguments' encoding in an
        LRU cost ~250 bytes a call (a hash ~80)."""
        seen = self._tool_calls_seen
        if seen is None:
            seen = self._tool_calls_seen = {}
        try:
            key = hash((agent.id, name, encode_value(arguments)))
        except (TypeError, ValueError):
            return
        if key in seen:
            self._tool_repeats += 1
            return
        if len(seen) >= _TOOL_CALLS_REMEMBERED:
            del seen[next(iter(seen))]
        seen[key] = None

    def statistics(self, *, top: int = 0) -> VMStatistics:
        top_agents: tuple[tuple[int, str | None, str, float], ...] = ()
        if top > 0:
            live_ones = ((a.used_milli() / 1000, a.id, a.name, a.state.value) for a in self.agents.values())
            best = heapq.nlargest(top, itertools.chain(live_ones, self._top_ended), key=lambda e: (e[0], -e[1]))
            top_agents = tuple((i, n, st, e) for e, i, n, st in best)
        tools = self.tools.statistics()
        return VMStatistics(
            agents=self._spawned, live=self.live,
            by_state={state.value: n for state, n in self.counts.items() if n},
            transitions=self.transitions, spawns=self._child_spawns, completions=self._completions,
            restarts=self.restarts, hibernations=self._hibernations, wakeups=self._wakeups,
            preemptions=self.preemptions, energy_used=self.energy / 1000, effects=dict(self.effects),
            messages=self.messages, llm_errors=self._llm_errors, prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens, recent_faults=tuple(self._faults),
            energy_budget=self.budgeted / 1000, ended=dict(self._ended), faults=self._fault_count,
            repeated_effects=self.repeated_effects, tool_repeats=self._tool_repeats, top_agents=top_agents,
            llm_errors_by_kind=dict(self._llm_error_kinds), llm_first_errors=dict(self._llm_first_errors),
            memory_held=sum(a.frame.memory_held for a in self.agents.values() if a.frame is not None),
            tool_injections=self.tool_injections, deadlocked=self.deadlocked, tool_calls=tools.calls,
            tool_errors=tools.errors, tool_timeouts=tools.timeouts)

