"""The VM's settings and statistics records, and the error for a VM used wrongly.

They are the kernel's vocabulary; `avm.runtime` re-exports them as the public names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from avm.errors import AvmError
from avm.lang.frame import DEFAULT_STALL_LIMIT, to_milli
from avm.scheduler.mailbox import DEFAULT_CAPACITY
from avm.tools.registry import ToolDefinitionError, ToolRegistry

__all__ = ["DEFAULT_BUDGET", "GrantError", "VMError", "VMSettings", "VMStatistics", "check_grant"]


DEFAULT_BUDGET = 100.0  # energy of an agent given no budget (a spec's groups too)


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
    default_budget: float = DEFAULT_BUDGET  # energy of an agent spawned without a budget
    # Energy an agent may run without an effect before it yields (about 2,000 plain instructions,
    # ~0.25 ms of CPU); also the most metered work one instruction may do (avm.lang.meter): an
    # instruction cannot be cut in two, so one that would need more faults with LimitError.
    quantum: float = 200.0
    aging_s: float = 0.05  # run-queue aging: background waits at most 2 * aging_s behind fresh interactive work
    hibernate_after_s: float | None = 10.0  # a recv idle this long hibernates the agent; None: never
    mailbox_capacity: int = DEFAULT_CAPACITY  # messages queued per agent; senders wait beyond it
    send_timeout_s: float = 30.0  # how long a send waits for space in a full mailbox, then returns false
    # Identical effects with identical results that end an agent as STALLED (0: off)
    stall_limit: int = DEFAULT_STALL_LIMIT
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
    # Append every agent's effects to its hash-chained journal in the store (`avm.journal`): what
    # `avm inspect STORE AGENT`, `avm verify`, `--resume` and `avm replay` read. A snapshot of the agent
    # is journaled every ``snapshot_every`` effects (and at each hibernation).
    journal: bool = False
    # Whether the host may send agents messages (VM.send, AgentHandle.send). While it may, an agent
    # waiting for a message waits for ever. False (`avm run`, `run_agents`): when every live agent waits
    # for a message none of them can send, those waiting end STALLED (see avm.kernel.stalls).
    host_sends: bool = True
    snapshot_every: int = 64
    # With a journal and a store on disk, what is journaled is committed at least this often (besides the
    # store's own batches): a SIGKILL loses at most this much of the run's progress.
    journal_commit_s: float = 0.5
    # Requests in flight to the LLM server at once, one HTTP/1.1 connection each (None: the gateway's
    # max_connections, 1,024 by default). A fleet of N agents at full speed needs about N.
    llm_connections: int | None = None
    llm_server: dict[str, Any] = field(default_factory=dict)  # ServerSettings of the embedded server
    gateway: dict[str, Any] = field(default_factory=dict)  # GatewaySettings of the gateway the VM opens

    def __post_init__(self) -> None:
        if self.on_exit not in ("cancel", "wait"):
            raise VMError(f"on_exit must be 'cancel' or 'wait', not {self.on_exit!r}")
        for name in ("quantum", "aging_s", "send_timeout_s", "default_budget", "journal_commit_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
                raise VMError(f"{name} must be a positive number, not {value!r}")
        if self.llm_connections is not None and (type(self.llm_connections) is not int or self.llm_connections < 1):
            raise VMError(f"llm_connections must be a positive int or None, not {self.llm_connections!r}")
        if self.agent_memory_bytes is not None and (type(self.agent_memory_bytes) is not int
                                                    or self.agent_memory_bytes <= 0):
            raise VMError(f"agent_memory_bytes must be a positive int or None, not {self.agent_memory_bytes!r}")
        if type(self.snapshot_every) is not int or self.snapshot_every < 1:
            raise VMError(f"snapshot_every must be a positive int, not {self.snapshot_every!r}")
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
    tool_injections: int = 0  # LLM replies that called a tool the agent was not granted (the calls refused)
    deadlocked: int = 0  # agents ended STALLED waiting for a message no live agent could send (host_sends off)
    tool_calls: int = 0  # tool calls programs made (refused ones included)
    tool_errors: int = 0  # of them, those that came back as error values: raised, timed out, bad arguments...
    tool_timeouts: int = 0  # of the errors, those that did not finish within their tool's timeout
    memory_held: int = 0  # bytes the live agents' values hold (each measured when it last made enough
    # to be checked against its ceiling, plus what it made since: an upper bound)

    @property
    def energy_left(self) -> float:
        """Budget granted by the host and not used yet (children's budgets come out of their parents')."""
        return max(0.0, self.energy_budget - self.energy_used)
