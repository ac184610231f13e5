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
specs (once per distinct grant) and each turn of a conversation.

`VM` and `AgentHandle` are facades over the kernel (`avm.kernel`): the VM
forwards to its `Kernel`, a handle names one agent's record and asks the
kernel to act on it, so a handle is not the agent and can one day stand for
an agent in another process.
"""

from __future__ import annotations

from dataclasses import fields, replace
from types import TracebackType
from typing import Any

import trio

from avm.kernel.hooks import Hook
from avm.kernel.kernel import Kernel
from avm.kernel.record import Agent, AgentError
from avm.kernel.settings import (
    GrantError,
    VMError,
    VMSettings,
    VMStatistics,
    check_grant,
)
from avm.lang.code import Code
from avm.memory.ref import Ref
from avm.memory.store import ContentStore
from avm.scheduler.runqueue import RunQueue
from avm.scheduler.states import TERMINAL, AgentState
from avm.scheduler.supervision import RestartPolicy
from avm.tools.registry import ToolRegistry

__all__ = ["VM", "AgentError", "AgentHandle", "GrantError", "RestartPolicy", "VMError", "VMSettings",
           "VMStatistics", "check_grant"]

S = AgentState


class AgentHandle:
    """A live or finished agent, as the host sees it: ``id``, ``name``, ``state``, ``energy_used``,
    ``value`` and ``detail`` once it ended, ``result()``, ``cancel()``, ``send()``, ``add_budget()``.

    Two handles of one agent are equal."""

    __slots__ = ("_agent", "_kernel")

    def __init__(self, kernel: Kernel, agent: Agent):
        self._kernel = kernel
        self._agent = agent

    @property
    def id(self) -> int:
        return self._agent.id

    @property
    def name(self) -> str | None:
        return self._agent.name

    @property
    def state(self) -> AgentState:
        return self._agent.state

    @property
    def value(self) -> Any:
        """The program's return value, once it ended DONE (else None)."""
        return self._agent.value

    @property
    def detail(self) -> str:
        """What ended the agent (empty while it lives, or when it ended DONE)."""
        return self._agent.detail

    @property
    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens of the LLM replies the agent got (in this process: not those a
        resumed agent's journal gave back)."""
        agent = self._agent
        return agent.prompt_tokens, agent.completion_tokens

    @property
    def energy_used(self) -> float:
        """Energy used so far (children included, their unspent energy refunded)."""
        return self._agent.used_milli() / 1000

    @property
    def finished(self) -> bool:
        return self._agent.state in TERMINAL

    async def result(self) -> Any:
        """Wait for the agent to end; its Done value, or `AgentError` naming how it ended."""
        agent = self._agent
        await self._kernel.result(agent)
        if agent.state is S.DONE:
            return agent.value
        raise AgentError(agent, agent.state, agent.detail)

    def cancel(self) -> None:
        """End the agent (CANCELLED) at its next await; idempotent, harmless once ended."""
        self._kernel.cancel(self._agent)

    async def send(self, value: Any) -> bool:
        """Put a VM value in the agent's mailbox (waiting while it is full); False if it ended."""
        return await self._kernel.send(self._agent, value)

    def add_budget(self, units: float) -> None:
        """Give an agent that ran out of energy more, and let it go on."""
        self._kernel.add_budget(self._agent, units)

    def __eq__(self, other: object) -> bool:
        return type(other) is AgentHandle and other._agent is self._agent

    def __hash__(self) -> int:
        return hash(self._agent.id) ^ id(self._kernel)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<AgentHandle {self.id}{label} {self.state.value} energy={self.energy_used:g}>"


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
        self._kernel = Kernel(store, llm, tools, replace(settings, **overrides) if overrides else settings)

    # What the kernel holds that the host may read.
    @property
    def settings(self) -> VMSettings:
        return self._kernel.settings

    @property
    def store(self) -> ContentStore:
        return self._kernel.store

    @property
    def tools(self) -> ToolRegistry:
        return self._kernel.tools

    @property
    def gateway(self) -> Any:
        """The LLM gateway (while the VM runs)."""
        return self._kernel.gateway

    @property
    def llm_url(self) -> str | None:
        """The LLM endpoint's base URL (while the VM runs)."""
        return self._kernel.llm_url

    @property
    def model(self) -> str:
        return self._kernel.model

    @property
    def run_id(self) -> str:
        """Names this run's records in the store."""
        return self._kernel.run_id

    @property
    def runq(self) -> RunQueue:
        return self._kernel.runq

    async def __aenter__(self) -> VM:
        await self._kernel.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        await self._kernel.close(exc)
        return False

    async def join(self) -> None:
        """Wait until no agent is alive (every one ended, or ran out of budget)."""
        await self._kernel.join()

    @property
    def live(self) -> int:
        """Agents not in a terminal state."""
        return self._kernel.live

    async def spawn(self, program: str | Code | Ref, *, system: str | Ref | None = None, tools: Any = (),
                    inputs: dict[str, Any] | None = None, budget: float | None = None,
                    priority: str | int = "normal", name: str | None = None,
                    restart: str | RestartPolicy = "never", memory_limit: int | None = None) -> AgentHandle:
        """Start an agent; its handle. ``program`` is source text, a Code, or the ref of a stored Code.
        ``memory_limit``: bytes its values may hold (default: the settings' agent_memory_bytes)."""
        kernel = self._kernel
        agent = kernel.spawn(program, system=system, tools=tools, inputs=inputs, budget=budget, priority=priority,
                             name=name, restart=restart, memory_limit=memory_limit)
        return AgentHandle(kernel, agent)

    async def resume(self, run_id: str) -> list[AgentHandle]:
        """Continue a run killed before it ended (SIGKILL, power loss): every agent of run ``run_id`` that
        had not ended goes on from its last journaled snapshot, fed the results its journal holds instead
        of performing those effects again; agents that ended are not run again. Handles of all of them,
        by id. Needs ``journal=True`` and the store the run journaled into; call it before any spawn (the
        VM takes the run's id, so its records and journals go on under it). `avm.journal.recovery` says
        what is performed again (what the crash kept from the disk) and what never is."""
        kernel = self._kernel
        handles = [AgentHandle(kernel, agent) for agent in kernel.resume(run_id)]
        await trio.lowlevel.checkpoint()
        return handles

    def program_ref(self, program: str | Code | Ref) -> Ref:
        """Store a program (source text, a Code or a stored Code's ref) and return its ref.

        A program can pass the ref to ``spawn``/``delegate``, so give it to agents as an input.
        """
        return self._kernel.program_ref(program)

    def cancel_all(self) -> int:
        """Cancel every live agent (each ends CANCELLED at its next await); how many were asked."""
        return self._kernel.cancel_all()

    def interrupt(self) -> int:
        """Stop every live agent as leaving the VM does (Ctrl+C, SIGTERM): each ends CANCELLED here, but
        its journal does not say it ended, so `resume` continues it. How many were stopped."""
        return self._kernel.cancel_all(interrupt=True)

    def agent(self, key: int | str) -> AgentHandle | None:
        """A live agent by id or name."""
        agent = self._kernel.agent(key)
        return None if agent is None else AgentHandle(self._kernel, agent)

    def add_hook(self, hook: Hook) -> None:
        """Tell ``hook`` (an `avm.kernel.hooks.Hook`) of every agent's start, effects, hibernations,
        restarts and end; its ``effect`` is called before the program sees the effect's result (the
        journal is one such hook; tracing and statistics can be others)."""
        self._kernel.hooks.append(hook)

    def statistics(self, *, top: int = 0) -> VMStatistics:
        """The numbers now. ``top`` > 0 also ranks agents by energy used (live ones and the
        biggest ended ones), which reads every live agent: ask for it at a dashboard's pace."""
        return self._kernel.statistics(top=top)

