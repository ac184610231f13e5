"""Hooks at the trap: who else learns what happens to agents (the journal, tracing, statistics).

A hook subclasses `Hook` and overrides what it wants; the kernel keeps a list
of them and, where the list is empty, pays one ``if`` (the model: trio's
``Instrument``). The agents a hook is handed are the kernel's records, valid
only during the call: a hook reads them and keeps plain values, never the
record. A hook that raises fails the agent it was called for, as any bug in
AVM met while driving that agent does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avm.kernel.outcome import Outcome
    from avm.kernel.record import Agent
    from avm.lang.outcomes import Effect


class Hook:
    def started(self, agent: Agent) -> None:
        """The agent was created (its task is about to run it for the first time)."""

    def effect(self, agent: Agent, effect: Effect, outcome: Outcome) -> None:
        """An effect was performed: called after its energy is charged and before the program sees its
        result (``outcome.hibernate`` set: no result yet; it comes with the wake-up, as another call)."""

    def mailed(self, agent: Agent, message: Any, key: str | None = None) -> None:
        """A message was put in the agent's mailbox (by another agent, the host, or a child that ended);
        ``key`` names it the same way in every attempt to send it (None from the host)."""

    def refunded(self, agent: Agent, milli: int, child: int) -> None:
        """The agent's child ``child`` ended and gave back ``milli`` unspent milli-units (due to its frame)."""

    def hibernated(self, agent: Agent) -> None:
        """The agent, idle in recv, is about to become its stored snapshot (``agent.snapshot``)."""

    def restarted(self, agent: Agent) -> None:
        """The agent faulted and starts again with a fresh frame (its restart policy allowed it)."""

    def ended(self, agent: Agent) -> None:
        """The agent entered a terminal state (``agent.state``, ``agent.value``, ``agent.detail``)."""
