"""`VM`: thousands of agents as trio tasks in one process.

    async with avm.VM(store=store, llm=None, tools=[search]) as vm:
        h = await vm.spawn(code, system="You are {name}.", inputs={"name": "a1"}, budget=50.0, tools=["search"])
        value = await h.result()

The VM owns a trio nursery (one task per live agent, plus the run-queue
dispatcher and the hibernation timers), the `ContentStore` (an in-memory one
unless given), the LLM gateway and the tool registry. ``llm=None`` starts the
embedded OpenAI-compatible server on a free loopback port and talks to it;
``llm="http://host:port/v1"`` uses that endpoint (key from
``OPENAI_API_KEY``); a `Gateway` is used as given (its owner closes it).

Leaving the ``async with`` cancels every agent still alive (``on_exit="wait"``
first waits for all of them to end): no agent task outlives the VM. The store
is flushed, and closed if the VM opened it.

Everything shareable is a ref in the store: each program (once per distinct
code), each system prompt template (once per distinct text), each set of tool
specs (once per distinct grant) and each conversation message.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace
from types import TracebackType
from typing import Any

import trio

from avm.agent import AgentError, AgentHandle, child_result, store_turn
from avm.conversation import placeholders
from avm.errors import (
    AvmError,
    CompileError,
    LLMError,
    NotFound,
    SnapshotError,
    StoreError,
    lone_exception,
)
from avm.gc_threshold import Raised, raise_young, restore
from avm.io.request import Filled, LLMRequest, Message
from avm.lang.code import Code, CodeFormatError
from avm.lang.compiler import compile_source
from avm.lang.frame import to_milli
from avm.lang.outcomes import Effect, Fault
from avm.lang.values import render
from avm.memory.ref import Ref
from avm.memory.store import ContentStore
from avm.memory.values import encode_value
from avm.scheduler.runqueue import RunQueue
from avm.scheduler.states import TERMINAL, AgentState, priority_rank
from avm.scheduler.supervision import RestartPolicy
from avm.scheduler.timers import Timers
from avm.tools.registry import ToolDefinitionError, ToolRegistry, error_value

__all__ = ["VM", "AgentError", "VMError", "VMSettings", "VMStatistics"]

S = AgentState
_CACHE_CAP = 1024  # distinct sources, prompts and grants remembered
_NO_TOOLS: frozenset[str] = frozenset()
_TOP_KEPT = 16  # ended agents remembered for statistics(top=...)
_TOOL_CALLS_REMEMBERED = 16384  # (agent, tool call) pairs remembered to count repeats: ~80 bytes each


class VMError(AvmError):
    """The VM used wrongly: spawn after exit, a duplicate agent name, a bad setting."""


class GrantError(VMError, ToolDefinitionError):
    """A grant of a tool nobody registered: a bad argument (`VMError`, as the README promises for
    `run_agents` and `spawn`) that is about tools (`ToolDefinitionError`, as it was before)."""


def check_grant(registry: ToolRegistry, names: Any) -> frozenset[str]:
    """``registry.check_grant(names)``, its refusal a `GrantError`."""
    try:
        return registry.check_grant(names)
    except ToolDefinitionError as exc:
        raise GrantError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class VMSettings:
    """Every knob of the runtime; energy in the seed's units, times in seconds."""

    model: str | None = None  # default: the embedded server's model, or OPENAI_MODEL for an endpoint
    temperature: float | None = None  # None: the backend's default (1.0 for OpenAI)
    max_tokens: int | None = 512  # per LLM reply
    default_budget: float = 100.0  # energy of an agent spawned without a budget
    # Energy an agent may run without an effect before it yields (about 2,000 plain instructions,
    # ~0.25 ms of CPU); also the most metered work one instruction may do (avm.lang.meter): an
    # instruction cannot be cut in two, so one that would need more faults with LimitError.
    quantum: float = 200.0
    aging_s: float = 0.05  # run-queue aging: background waits at most 2 * aging_s behind fresh interactive work
    hibernate_after_s: float | None = 10.0  # a recv idle this long hibernates the agent; None: never
    mailbox_capacity: int = 1024  # messages queued per agent; senders wait beyond it
    send_timeout_s: float = 30.0  # how long a send waits for space in a full mailbox, then returns false
    stall_limit: int = 5  # identical effects with identical results that end an agent as STALLED (0: off)
    # Bytes of values one agent may hold (its stack and variables; shared parts once); past it the
    # instruction that made them faults with MemoryLimit. None: no ceiling. spawn(memory_limit=) per agent.
    agent_memory_bytes: int | None = 8 << 20
    # Host work charged to the agent on top of the instruction costs:
    energy_per_prompt_token: float = 0.0005  # 0.5 energy per 1,000 prompt tokens
    energy_per_completion_token: float = 0.002  # 2 energy per 1,000 completion tokens (generation costs more)
    energy_per_tool_second: float = 1.0  # wall time inside a tool
    on_exit: str = "cancel"  # leaving the VM: "cancel" live agents, or "wait" for them first
    faults_kept: int = 32  # recent faults kept for statistics()
    # Python's cyclic GC rescans every live agent on each full collection, for nothing: agent state is
    # acyclic (refs, not object graphs). So after every this many spawns, hibernations and LLM replies
    # (each grows an agent's conversation) the VM collects the young generations and calls gc.freeze()
    # (frozen objects are still freed by reference counting), and gc.unfreeze() at exit. 0: never.
    # Measured at 10,000 agents x 8 turns: without the LLM replies counted, 21 s of 59 s of CPU in the GC.
    gc_freeze_every: int = 2048
    # While a VM runs, the GC's youngest generation is collected after this many allocations (Python's
    # default: 700; never lowered). A fleet makes and drops objects by the million, nearly all freed by
    # reference counting before any collection would look at them; at 700, 1,000 agents x 8 turns ran
    # 600 young and 56 middle collections, 2.3 s of 11 s of CPU (at 20,000: 0.8 s; at 100,000: 0.5 s,
    # and the same RSS). The setting is the process's, restored when the VM exits (unless changed
    # meanwhile). 0: leave it alone.
    gc_young_threshold: int = 100_000
    # Keep a summary of every agent that ends in the store, bound to the name
    # ``agents/<run id>/<agent id>`` (what `avm inspect` lists): id, name, parent, program, state, value,
    # error, energy used and budget. Leaving the VM records the agents it cancels.
    record_agents: bool = False
    # Requests in flight to the LLM server at once, one HTTP/1.1 connection each (None: the gateway's
    # max_connections, 1,024 by default). A fleet of N agents at full speed needs about N.
    llm_connections: int | None = None
    llm_server: dict[str, Any] = field(default_factory=dict)  # ServerSettings of the embedded server
    gateway: dict[str, Any] = field(default_factory=dict)  # GatewaySettings of the gateway the VM opens

    def __post_init__(self) -> None:
        if self.on_exit not in ("cancel", "wait"):
            raise VMError(f"on_exit must be 'cancel' or 'wait', not {self.on_exit!r}")
        for name in ("quantum", "aging_s", "send_timeout_s", "default_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
                raise VMError(f"{name} must be a positive number, not {value!r}")
        if self.llm_connections is not None and (type(self.llm_connections) is not int or self.llm_connections < 1):
            raise VMError(f"llm_connections must be a positive int or None, not {self.llm_connections!r}")
        if self.agent_memory_bytes is not None and (type(self.agent_memory_bytes) is not int
                                                    or self.agent_memory_bytes <= 0):
            raise VMError(f"agent_memory_bytes must be a positive int or None, not {self.agent_memory_bytes!r}")
        for name in ("gc_freeze_every", "gc_young_threshold"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise VMError(f"{name} must be an int >= 0, not {value!r}")
        if self.hibernate_after_s is not None and not (
                isinstance(self.hibernate_after_s, (int, float)) and self.hibernate_after_s >= 0):
            raise VMError(f"hibernate_after_s must be >= 0 seconds or None, not {self.hibernate_after_s!r}")

    @property
    def quantum_milli(self) -> int:
        return to_milli(self.quantum, "quantum")


@dataclass(frozen=True, slots=True)
class VMStatistics:
    """The VM's numbers at one moment (the dashboard and the bench read these)."""

    agents: int  # spawned so far (children included)
    live: int  # not in a terminal state
    by_state: dict[str, int]  # agents per state now (states with none left out)
    transitions: int  # state changes so far
    spawns: int  # children spawned or delegated by programs
    completions: int  # agents that reached a terminal state
    restarts: int
    hibernations: int
    wakeups: int
    preemptions: int  # quanta that ran out (the agent yielded to the run queue)
    energy_used: float  # by every agent so far
    effects: dict[str, int]  # effects performed, per kind
    messages: int  # sends delivered
    llm_errors: int  # LLM requests that came back as error values
    prompt_tokens: int
    completion_tokens: int
    recent_faults: tuple[tuple[int, str | None, int, str], ...]  # (agent id, name, line, message), newest last
    # Fleet health, the signals that show a run degrading before it fails:
    energy_budget: float = 0.0  # granted to agents spawned by the host (spawn budgets plus add_budget)
    ended: dict[str, int] = field(default_factory=dict)  # terminal states entered so far, per state
    faults: int = 0  # program faults so far (restarted ones included)
    repeated_effects: int = 0  # effects identical, request and result, to the agent's previous one (as the
    # stall detector sees them: always 0 with stall_limit=0)
    tool_repeats: int = 0  # tool calls with the same tool and arguments as an earlier call by the same agent
    top_agents: tuple[tuple[int, str | None, str, float], ...] = ()  # (id, name, state, energy), most first
    llm_errors_by_kind: dict[str, int] = field(default_factory=dict)  # the llm_errors by LLMError kind
    llm_first_errors: dict[str, str] = field(default_factory=dict)  # kind -> the first such error, in full
    memory_held: int = 0  # bytes the live agents' values hold (each measured when it last made enough
    # to be checked against its ceiling, plus what it made since: an upper bound)

    @property
    def energy_left(self) -> float:
        """Budget granted by the host and not used yet (children's budgets come out of their parents')."""
        return max(0.0, self.energy_budget - self.energy_used)


class VM:
    """The agent virtual machine (see the module docstring)."""

    def __init__(self, store: ContentStore | None = None, llm: Any = None, tools: Any = (), *,
                 settings: VMSettings | None = None, **overrides: Any):
        if settings is None:
            settings = VMSettings()
        names = {f.name for f in fields(VMSettings)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise VMError(f"unknown VM setting{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
        self.settings = replace(settings, **overrides) if overrides else settings
        self._owns_store = store is None
        self.store = ContentStore() if store is None else store
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        self._llm = llm
        self.gateway: Any = None
        self._submit: Any = None
        self.llm_url: str | None = None
        self.model = ""
        self.runq = RunQueue(self.settings.aging_s)
        self._timers = Timers()
        self._nursery: trio.Nursery | None = None
        self._stack: Any = None
        self._closed = False
        self._next_id = 1
        self._agents: dict[int, AgentHandle] = {}  # live ones (and BUDGET_EXCEEDED, which may go on)
        self._names: dict[str, AgentHandle] = {}
        self._counts: dict[AgentState, int] = dict.fromkeys(AgentState, 0)
        self._effects = dict.fromkeys(("llm", "tool", "send", "recv", "spawn", "delegate", "sleep"), 0)
        self._performers = {
            "tool": AgentHandle._tool, "send": AgentHandle._send,  # llm: AgentHandle._main performs it
            "recv": AgentHandle._recv, "spawn": AgentHandle._spawn, "delegate": AgentHandle._delegate,
            "sleep": AgentHandle._sleep,
        }
        self._transitions = self._spawned = self._child_spawns = self._completions = 0
        self._restarts = self._hibernations = self._wakeups = self._preemptions = 0
        self._messages = self._llm_errors = self._prompt_tokens = self._completion_tokens = 0
        self._llm_error_kinds: dict[str, int] = {}
        self._llm_first_errors: dict[str, str] = {}
        self._energy = 0  # milli-units
        self._budgeted = 0  # milli-units granted by the host
        self._budget_int = 0
        self._ended: dict[str, int] = {}
        self._fault_count = self._repeated_effects = self._tool_repeats = 0
        self._tool_calls_seen: dict[int, None] | None = None  # hashes of (agent, tool, arguments), oldest first
        self._top_ended: list[tuple[float, int, str | None, str]] = []  # a min-heap of the biggest ended agents
        self._faults: deque[tuple[int, str | None, int, str]] = deque(maxlen=self.settings.faults_kept)
        self._idle: trio.Event | None = None
        self._internal_errors: list[BaseException] = []  # bugs of AVM met while driving agents (kept for tests)
        self._sources: dict[str, Code] = {}
        self._stored_code: set[str] = set()
        self._prompts: dict[Any, tuple[Ref, tuple[str, ...], str, Message]] = {}
        self._grants: dict[frozenset[str], Ref | None] = {}
        self._grant_sets: dict[tuple[Any, ...], frozenset[str]] = {}
        self._since_freeze = 0
        self._froze = False
        self._gc_threshold: Raised | None = None  # while raised
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid() % 10000:04d}{self._instance():02d}"

    _made = 0

    @classmethod
    def _instance(cls) -> int:
        cls._made += 1
        return cls._made % 100

    # --- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> VM:
        if self._stack is not None or self._closed:
            raise VMError("a VM is entered once")
        from contextlib import AsyncExitStack

        stack = AsyncExitStack()
        await stack.__aenter__()
        self._gc_threshold = raise_young(self.settings.gc_young_threshold)
        try:
            self.gateway = await self._open_gateway(stack)
            # what an agent's llm awaits: a gateway's `submit` (no frame of its own while the reply is
            # awaited), or the `complete` of a gateway given by the caller that has no `submit`
            self._submit = getattr(self.gateway, "submit", None) or self.gateway.complete
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            self._nursery.start_soon(self.runq.dispatch)
            self._nursery.start_soon(self._timers.run)
        except BaseException:
            self._restore_gc_threshold()
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def _open_gateway(self, stack: Any) -> Any:
        llm = self._llm
        if llm is not None and not isinstance(llm, str):
            self.model = self.settings.model or getattr(llm, "model", None) or ""
            return llm  # a Gateway given by the caller, who owns it
        from avm.io.client.limits import make_room
        from avm.io.client.openai import OpenAIBackend
        from avm.io.gateway import Gateway
        from avm.io.gateway_settings import GatewaySettings

        gateway = dict(self.settings.gateway)
        if self.settings.llm_connections is not None:
            gateway["max_connections"] = self.settings.llm_connections
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
            from avm.io.embedded.faults import DEFAULT_MODEL
            from avm.io.embedded.server import serve_llm

            server = await stack.enter_async_context(serve_llm(**self.settings.llm_server))
            self.model = self.settings.model or DEFAULT_MODEL
            backend = OpenAIBackend(server.url, api_key="", model=self.model, max_connections=connections)
        else:
            self.model = self.settings.model or os.environ.get("OPENAI_MODEL") or ""
            if not self.model:
                raise VMError("name the model (--model, VM(model=...) or OPENAI_MODEL) for the endpoint "
                              f"{llm}")
            backend = OpenAIBackend(llm, model=self.model, max_connections=connections)  # key: OPENAI_API_KEY
        self.llm_url = backend.base_url
        return await stack.enter_async_context(Gateway(backend, store=self.store, settings=gateway_settings))

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        stack, self._stack = self._stack, None
        try:
            if exc is None and self.settings.on_exit == "wait":
                await self.join()
        finally:
            self._closed = True
            for agent in list(self._agents.values()):
                agent.cancel()
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
            try:
                with lone_exception():
                    await stack.__aexit__(None, None, None)
            finally:
                if self._froze:
                    gc.unfreeze()  # what the VM froze is collectable again
                self._restore_gc_threshold()
                if self._owns_store:
                    self.store.close()
                elif not self.store.closed:
                    await trio.to_thread.run_sync(self.store.flush)
        return False

    async def join(self) -> None:
        """Wait until no agent is alive (every one ended, or ran out of budget)."""
        while self.live:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()

    @property
    def live(self) -> int:
        """Agents not in a terminal state."""
        counts = self._counts
        return sum(n for state, n in counts.items() if state not in TERMINAL)

    # --- spawning ------------------------------------------------------------------------

    async def spawn(self, program: str | Code | Ref, *, system: str | Ref | None = None, tools: Any = (),
                    inputs: dict[str, Any] | None = None, budget: float | None = None,
                    priority: str | int = "normal", name: str | None = None,
                    restart: str | RestartPolicy = "never", memory_limit: int | None = None) -> AgentHandle:
        """Start an agent; its handle. ``program`` is source text, a Code, or the ref of a stored Code.
        ``memory_limit``: bytes its values may hold (default: the settings' agent_memory_bytes)."""
        if self._nursery is None or self._closed:
            raise VMError("spawn() needs a running VM: use it inside `async with VM(...) as vm`")
        code = self._code(program)
        if name is not None:
            if type(name) is not str or not name:
                raise VMError(f"an agent name is non-empty text, not {name!r}")
            if name in self._names:
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
        granted = self._grant(tools)
        agent = self._create(code, inputs, budget_milli, name=name, rank=rank, granted=granted,
                             system=self._system_ref(system), policy=policy)
        if memory_limit is not None:
            try:
                agent.frame.set_memory_limit(memory_limit)  # type: ignore[union-attr]
            except ValueError as exc:
                raise VMError(str(exc)) from None
            agent.memory_limit = memory_limit
        self._budgeted += budget_milli
        self._nursery.start_soon(agent._main)
        return agent

    def _create(self, code: Code, inputs: dict[str, Any] | None, budget: int, *, name: str | None, rank: int,
                granted: frozenset[str], system: Ref | None, policy: RestartPolicy,
                parent: AgentHandle | None = None) -> AgentHandle:
        ident = self._next_id
        tools_ref = self._tools_ref(granted)
        try:
            agent = AgentHandle(self, ident, code, inputs, budget, name=name, rank=rank, granted=granted,
                                system=system, tools_ref=tools_ref, policy=policy, parent=parent)
        except (TypeError, ValueError) as exc:  # inputs that are not VM values
            raise VMError(f"cannot spawn: {exc}") from None
        self._next_id = ident + 1
        self._agents[ident] = agent
        if name is not None:
            self._names[name] = agent
        self._counts[S.READY] += 1
        self._spawned += 1
        self._tick_gc()
        return agent

    def _restore_gc_threshold(self) -> None:
        raised, self._gc_threshold = self._gc_threshold, None
        restore(raised)  # unless changed since (by the host, or by another VM)

    def _tick_gc(self) -> None:
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

    def _spawn_child(self, parent: AgentHandle, effect: Effect) -> AgentHandle | dict[str, Any]:
        """A program's spawn/delegate: the child, or an error value for the parent."""
        program, inputs, budget = effect.args
        kind = effect.kind
        try:
            code = self._code(program)
        except (CompileError, VMError, StoreError) as exc:
            return error_value(kind, "ProgramError", f"{kind}: {exc}")
        milli = to_milli(budget, "budget")
        frame = parent.frame
        assert frame is not None
        left = frame.budget - frame.used
        if milli > left:
            return error_value(kind, "BudgetError",
                               f"{kind}: a child budget of {milli / 1000:g} is more than the {left / 1000:g} left")
        frame.charge(milli / 1000)  # a transfer to the child, not energy used: the VM's total is left alone
        try:
            child = self._create(code, inputs, milli, name=None, rank=parent.rank, granted=parent.granted,
                                 system=parent.system, policy=RestartPolicy(), parent=parent)
        except VMError as exc:
            parent._refund(milli)
            return error_value(kind, "ProgramError", str(exc))
        child.child_budget = milli
        self._child_spawns += 1
        assert self._nursery is not None
        self._nursery.start_soon(child._main)
        return child

    def _code(self, program: Any) -> Code:
        if isinstance(program, Code):
            code = program
        elif isinstance(program, Ref):
            try:
                code = Code.from_bytes(self.store.get(program))
            except NotFound:
                raise VMError(f"no program {program.hex()} in the store") from None
            except CodeFormatError as exc:
                raise VMError(f"object {program.hex()} is not a program: {exc}") from None
        elif type(program) is str:
            code = self._sources.get(program)  # type: ignore[assignment]
            if code is None:
                code = compile_source(program)
                if len(self._sources) >= _CACHE_CAP:
                    self._sources.clear()
                self._sources[program] = code
        else:
            raise VMError(f"a program is source text, a Code or a Ref, not {type(program).__name__}")
        if code.id not in self._stored_code:
            self.store.put(code.to_bytes())
            self._stored_code.add(code.id)
        return code

    def _system_ref(self, system: str | Ref | None) -> Ref | None:
        if system is None:
            return None
        entry = self._prompts.get(system)
        if entry is None:
            if isinstance(system, Ref):
                try:
                    text = self.store.get(system).decode("utf-8")
                except (NotFound, UnicodeDecodeError) as exc:
                    raise VMError(f"system prompt {system.hex()}: {exc}") from None
                ref = system
            elif type(system) is str:
                text = system
                ref = self.store.put(text.encode("utf-8", "surrogatepass"))
            else:
                raise VMError(f"a system prompt is text or a Ref, not {type(system).__name__}")
            if len(self._prompts) >= _CACHE_CAP:
                self._prompts.clear()
            entry = (ref, placeholders(text), text, Message("system", ref))
            self._prompts[system] = entry
            self._prompts[ref] = entry
        return entry[0]

    def _grant(self, tools: Any) -> frozenset[str]:
        """The checked grant, one shared frozenset per distinct grant (agents hold it, so share it)."""
        if not tools:
            return _NO_TOOLS
        if isinstance(tools, str):
            raise VMError(f"tools is a list of tool names, not the text {tools!r}")
        key = tools if type(tools) is tuple else tuple(tools)
        grant = self._grant_sets.get(key)
        if grant is None:
            grant = check_grant(self.tools, key)
            grant = next((g for g in self._grants if g == grant), grant)
            if len(self._grant_sets) >= _CACHE_CAP:
                self._grant_sets.clear()
            self._grant_sets[key] = grant
        return grant

    def _tools_ref(self, granted: frozenset[str]) -> Ref | None:
        if granted in self._grants:
            return self._grants[granted]
        ref = self.store.put_value(self.tools.specs(granted)) if granted else None
        if len(self._grants) >= _CACHE_CAP:
            self._grants.clear()
        self._grants[granted] = ref
        return ref

    def _request(self, agent: AgentHandle, conversation: list[Message | Ref]) -> LLMRequest:
        messages: tuple[Message | Ref, ...]
        if agent.system is not None:
            ref, names, text, message = self._prompts.get(agent.system) or self._prompt_entry(agent.system)
            inputs = agent.inputs
            if names and inputs and any(n in inputs for n in names):
                # the shared template and this agent's values: the wire encoder sends the template's pieces
                # with the values between them, so no agent holds a rendered copy of the prompt
                message = Message("system", Filled(text, ref, {n: v if type(v) is str else render(v)
                                                               for n in names if n in inputs
                                                               for v in (inputs[n],)}))
            messages = (message, *conversation)
        else:
            messages = tuple(conversation)
        s = self.settings
        return LLMRequest(self.model, messages, temperature=s.temperature, max_tokens=s.max_tokens,
                          tools=agent.tools_ref)

    def _prompt_entry(self, ref: Ref) -> tuple[Ref, tuple[str, ...], str, Message]:
        self._system_ref(ref)  # evicted from the cache: read it back from the store
        return self._prompts[ref]

    # --- messages, hibernation ---------------------------------------------------------------

    async def _deliver(self, agent: AgentHandle, message: Any) -> bool:
        if agent.state in TERMINAL:
            return False
        box = agent._box()
        if not box.offer(message):
            deadline = trio.current_time() + self.settings.send_timeout_s
            if not await box.put(message, deadline):
                return False
        if agent.state is S.HIBERNATED:
            self._wake(agent)
        return True

    def _hibernate(self, agent: AgentHandle, deadline: float) -> None:
        if agent.conversation:  # a hibernated agent keeps refs only: its last turn goes to the store now
            store_turn(agent.conversation, self.store)
        frame = agent.frame
        if frame is not None:  # (None: woken with nothing to say, it sleeps on as the snapshot it was)
            if agent.snapshot is None:
                raise AssertionError("hibernating an agent whose snapshot is not stored")
            agent.final_used = frame.used
            agent.frame = None
        # What a hibernated agent keeps is what 100,000 of them cost: pack its inputs (a dict is
        # ~180 bytes, its encoding a few dozen) and drop an empty mailbox; waking undoes both.
        if type(agent.inputs) is dict:
            agent.inputs = encode_value(agent.inputs)
        box = agent.mailbox
        if box is not None and not len(box) and box.receiver is None and box.senders is None:
            agent.mailbox = None  # (a box that ever made a sender wait is kept: that sender may still offer)
        agent.deadline = deadline
        agent._set(S.HIBERNATED)
        self._hibernations += 1
        self._tick_gc()
        if agent.cancel_requested:
            agent.cancel()
            return
        self._timers.call_at(deadline, lambda: self._wake(agent))

    def _store_snapshot(self, agent: AgentHandle) -> bool:
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

    def _wake(self, agent: AgentHandle) -> None:
        """Give a hibernated agent a task again. Called by timers and by other agents' sends, so a
        failure here is this agent's alone: it fails, and neither the caller nor the VM sees it."""
        if agent.state is not S.HIBERNATED or self._nursery is None or self._closed:
            return
        agent._set(S.READY)
        self._wakeups += 1
        try:
            self._nursery.start_soon(agent._main, True)
        except Exception as exc:  # noqa: BLE001 - the agent fails, not the caller
            agent._crashed(exc)

    def _unpin_snapshot(self, agent: AgentHandle) -> None:
        ref, agent.snapshot = agent.snapshot, None
        if ref is not None and not self.store.closed:
            self.store.unpin(ref)

    # --- endings ---------------------------------------------------------------------------

    def _on_finished(self, agent: AgentHandle, state: AgentState) -> None:
        try:
            self._account_end(agent, state)
        finally:  # a failure above is the agent's (its task reports it); join() must still see the end
            if self._idle is not None and not self.live:
                self._idle.set()
                self._idle = None

    def _account_end(self, agent: AgentHandle, state: AgentState) -> None:
        self._completions += 1
        ended = self._ended
        ended[state.value] = ended.get(state.value, 0) + 1
        if state is not S.BUDGET_EXCEEDED:
            top = self._top_ended
            entry = (agent.energy_used, agent.id, agent.name, state.value)
            if len(top) < _TOP_KEPT:
                heapq.heappush(top, entry)
            elif entry > top[0]:
                heapq.heapreplace(top, entry)
        if state is not S.BUDGET_EXCEEDED:
            self._agents.pop(agent.id, None)
            if agent.name is not None and self._names.get(agent.name) is agent:
                del self._names[agent.name]
        if agent.mailbox is not None:
            for message in agent.mailbox.drain():
                del message  # undelivered: the agent ended
        parent = agent.parent
        if self.settings.record_agents:
            self._record_agent(agent, state)
        if parent is not None:
            if agent.child_budget:
                used = agent.spent + agent.final_used
                parent._refund(max(0, agent.child_budget - used))
                agent.child_budget = 0
            if not agent.delegated and parent.state not in TERMINAL:
                report = {"child": agent.id, "state": state.value, "value": agent.value if state is S.DONE else None,
                          "error": None if state is S.DONE else child_result(agent)["error"]["message"]}
                if parent._box().offer(report) and parent.state is S.HIBERNATED:
                    self._wake(parent)
            agent.parent = None

    def _record_agent(self, agent: AgentHandle, state: AgentState) -> None:
        """Store the agent's summary under ``agents/<run id>/<id>`` (see VMSettings.record_agents)."""
        if self.store.closed:
            return
        parent = agent.parent
        summary = {
            "id": agent.id, "name": agent.name, "parent": parent.id if parent is not None else None,
            "program": agent.code.id, "state": state.value, "value": agent.value if state is S.DONE else None,
            "error": agent.detail or None, "energy_used": agent.energy_used, "budget": agent.budget / 1000,
        }
        try:
            ref = self.store.put_value(summary)
        except (TypeError, ValueError):  # a value the store cannot encode (too deep): keep the rest
            summary["value"] = None
            ref = self.store.put_value(summary)
        self.store.bind(f"agents/{self.run_id}/{agent.id:09d}", ref)

    def program_ref(self, program: str | Code | Ref) -> Ref:
        """Store a program (source text, a Code or a stored Code's ref) and return its ref.

        A program can pass the ref to ``spawn``/``delegate``, so give it to agents as an input.
        """
        if self._closed:
            raise VMError("the VM has exited")
        return self.store.put(self._code(program).to_bytes())

    def _restart_task(self, agent: AgentHandle, was: AgentState) -> None:
        """An agent that ran out of budget got more: run it again."""
        if self._nursery is None or self._closed:
            raise VMError("the VM has exited")
        self._agents[agent.id] = agent
        if agent.name is not None:
            self._names.setdefault(agent.name, agent)
        agent._set(S.READY)
        self._nursery.start_soon(agent._main)

    def _record_fault(self, agent: AgentHandle, fault: Fault) -> None:
        self._fault_count += 1
        self._faults.append((agent.id, agent.name, fault.line, f"{fault.kind}: {fault.error}"))

    # --- lookups and numbers -------------------------------------------------------------------

    def cancel_all(self) -> int:
        """Cancel every live agent (each ends CANCELLED at its next await); how many were asked."""
        agents = [a for a in self._agents.values() if a.state not in TERMINAL]
        for agent in agents:
            agent.cancel()
        return len(agents)

    def agent(self, key: int | str) -> AgentHandle | None:
        """A live agent by id or name."""
        return self._agents.get(key) if type(key) is int else self._names.get(key)  # type: ignore[arg-type]

    def _note_llm_error(self, error: LLMError) -> None:
        self._llm_errors += 1
        kind = error.kind
        self._llm_error_kinds[kind] = self._llm_error_kinds.get(kind, 0) + 1
        if kind not in self._llm_first_errors:
            self._llm_first_errors[kind] = str(error)

    def _note_tool_call(self, agent: AgentHandle, name: str, arguments: Any) -> None:
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
        """The numbers now. ``top`` > 0 also ranks agents by energy used (live ones and the
        biggest ended ones), which reads every live agent: ask for it at a dashboard's pace."""
        top_agents: tuple[tuple[int, str | None, str, float], ...] = ()
        if top > 0:
            live = ((a.energy_used, a.id, a.name, a.state.value) for a in self._agents.values())
            best = heapq.nlargest(top, itertools.chain(live, self._top_ended), key=lambda e: (e[0], -e[1]))
            top_agents = tuple((i, n, st, e) for e, i, n, st in best)
        return VMStatistics(
            agents=self._spawned, live=self.live,
            by_state={state.value: n for state, n in self._counts.items() if n},
            transitions=self._transitions, spawns=self._child_spawns, completions=self._completions,
            restarts=self._restarts, hibernations=self._hibernations, wakeups=self._wakeups,
            preemptions=self._preemptions, energy_used=self._energy / 1000, effects=dict(self._effects),
            messages=self._messages, llm_errors=self._llm_errors, prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens, recent_faults=tuple(self._faults),
            energy_budget=self._budgeted / 1000, ended=dict(self._ended), faults=self._fault_count,
            repeated_effects=self._repeated_effects, tool_repeats=self._tool_repeats, top_agents=top_agents,
            llm_errors_by_kind=dict(self._llm_error_kinds), llm_first_errors=dict(self._llm_first_errors),
            memory_held=sum(a.frame.memory_held for a in self._agents.values() if a.frame is not None))
