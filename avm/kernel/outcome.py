"""What performing one effect came to: the record an effect handler returns.

A handler performs its effect (awaits the LLM, runs the tool, delivers the
message, creates the child) and describes the result here; it never resumes,
fails, charges or refunds the frame itself. `avm.kernel.trap.apply` is the one
place that turns an outcome into the agent's next state, and where the hooks
(the journal, tracing) see it. The model: trio resumes a task with an
``outcome.Value`` or ``outcome.Error``; curio dispatches every trap once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avm.io.request import Message
    from avm.kernel.record import Agent
    from avm.memory.ref import Ref


class Outcome:
    """``value``: what the program resumes with; or ``fault``: (kind, message), the host's verdict that the
    effect is the program's fault (a tool it was not granted, a message it cannot send).

    ``charge``: energy (units) for host work (LLM tokens, tool seconds); ``transfer``: milli-units of the
    agent's budget moved to the ``child`` it created; ``reply``: the message to append to its conversation
    (a `Message`, or a `Ref` to one stored as its JSON); ``hibernate``: the deadline of a recv that sleeps as
    a snapshot instead of resuming; ``timeout``: a recv that ended without a message (its value is null)."""

    __slots__ = ("charge", "child", "fault", "hibernate", "reply", "timeout", "transfer", "value")

    def __init__(self, value: Any = None, *, fault: tuple[str, str] | None = None, charge: float = 0.0,
                 transfer: int = 0, reply: Message | Ref | None = None, child: Agent | None = None,
                 hibernate: float | None = None, timeout: bool = False):
        self.value = value
        self.fault = fault
        self.charge = charge
        self.transfer = transfer
        self.reply = reply
        self.child = child
        self.hibernate = hibernate
        self.timeout = timeout

    def __repr__(self) -> str:
        parts = [f"{name}={getattr(self, name)!r}" for name in self.__slots__
                 if getattr(self, name) not in (None, 0, 0.0, False)]
        return f"Outcome({', '.join(parts)})"


def faulted(kind: str, message: str) -> Outcome:
    return Outcome(fault=(kind, message))
