"""The agent record: everything the kernel knows about one agent.

The record is the kernel's alone. The host holds an `avm.AgentHandle`, a
facade that reads the record and asks the kernel to act on it (cancel, send,
add budget), so a handle could one day stand for an agent in another process.

Energy is kept in integer milli-units: ``spent`` by earlier runs (before a
restart), the frame's ``used`` (or ``final_used`` once the frame is let go),
``lent`` to a delegate whose transfer the trap has not yet charged, minus
``refund_due``: a child's unspent budget given back and not yet refunded to the
frame (the trap settles it at the agent's next effect, wake-up or turn). A child
that outlives its parent gives nothing back: an ended agent keeps the energy it
ended with (its journal's end entry).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from avm.errors import AvmError
from avm.io.request import Message
from avm.lang.code import Code
from avm.lang.frame import Frame
from avm.memory.ref import Ref
from avm.scheduler.mailbox import Mailbox
from avm.scheduler.states import AgentState
from avm.scheduler.supervision import RestartHistory, RestartPolicy
from avm.tools.registry import error_value

if TYPE_CHECKING:
    import trio

S = AgentState


class AgentError(AvmError):
    """`AgentHandle.result()` of an agent that did not finish with a value.

    ``state`` is the terminal state; ``detail`` what ended it (the fault and
    its line, the energy, the repeated effect).
    """

    def __init__(self, agent: Any, state: AgentState, detail: str):
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


class Agent:
    """One agent's record (see the module docstring)."""

    __slots__ = (
        "budget",
        "cancel_requested",
        "child_budget",
        "code",
        "conversation",
        "deadline",
        "delegated",
        "detail",
        "done",
        "final_used",
        "frame",
        "granted",
        "history",
        "id",
        "inputs",
        "lent",
        "mailbox",
        "memory_limit",
        "name",
        "parent",
        "prompt_tokens",
        "completion_tokens",
        "policy",
        "rank",
        "refund_due",
        "replay",
        "scope",
        "snapshot",
        "spent",
        "state",
        "system",
        "tools_ref",
        "value",
    )

    def __init__(self, ident: int, code: Code, inputs: dict[str, Any] | None, budget: int, frame: Frame, *,
                 name: str | None, rank: int, granted: frozenset[str], system: Ref | None,
                 tools_ref: Ref | None, policy: RestartPolicy, memory_limit: int | None,
                 parent: Agent | None = None):
        self.id = ident
        self.name = name
        self.code = code
        self.inputs = inputs  # bytes (its encoding) while hibernated
        self.budget = budget  # milli-units, for the agent's whole life (restarts included)
        self.memory_limit = memory_limit
        self.frame: Frame | None = frame
        self.state = S.READY
        self.rank = rank
        self.granted = granted
        self.system = system
        self.tools_ref = tools_ref
        self.conversation: list[Message | Ref] | None = None  # a Ref: a turn's messages, stored
        self.spent = 0  # milli-units used by earlier runs (before a restart)
        self.mailbox: Mailbox | None = None  # made on first use, dropped again while hibernated
        self.scope: trio.CancelScope | None = None  # the task's, while it has one
        self.snapshot: Ref | None = None  # the stored frame, pinned, while hibernated
        self.deadline = math.inf  # a hibernated recv's
        self.parent = parent
        self.child_budget = 0  # milli-units charged to the parent for this child
        self.delegated = False  # the parent waits for this child's result
        self.policy = policy
        self.history: RestartHistory | None = None
        self.value: Any = None
        self.detail = ""
        self.done: trio.Event | None = None  # made by the first waiter for the end
        self.cancel_requested: bool | str = False  # (text: the kernel ends it STALLED, saying why)
        self.refund_due = 0  # milli-units children gave back, not yet refunded to the frame
        self.lent = 0  # milli-units lent to a delegate, not yet charged to the frame
        self.final_used = 0  # the frame's use when it was let go
        self.prompt_tokens = self.completion_tokens = 0  # of the LLM replies it got (in this process)
        self.replay: Any = None  # while it recovers: the journal entries whose results it is fed (a deque)

    def step(self) -> str:
        """Which effect of its life the agent is at: the same in every attempt to perform it, after a crash
        too (what its program has done, not when): the number of effects its frame performed, after the
        energy of its earlier runs when it was restarted."""
        frame = self.frame
        effects = frame.effects if frame is not None else 0
        return f"{self.spent}.{effects}" if self.spent else str(effects)

    def used_milli(self) -> int:
        frame = self.frame
        used = self.spent + (frame.used if frame is not None else self.final_used) + self.lent
        return max(0, used - self.refund_due)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<Agent {self.id}{label} {self.state.value} energy={self.used_milli() / 1000:g}>"


def child_result(child: Agent) -> Any:
    """What a parent gets for a child that ended: its value, or an error value naming how it ended."""
    if child.state is S.DONE:
        return child.value
    return error_value("delegate", "Child" + child.state.value.title().replace("_", ""),
                       f"child agent {child.id} ended {child.state.value}: {child.detail}")
