"""Agent states and priorities.

An agent is READY (spawned or woken, not yet running), RUNNING (its frame is
executing instructions), waiting on one kind of effect (WAITING_LLM,
WAITING_TOOL, WAITING_MESSAGE, SLEEPING), HIBERNATED (parked in ``recv`` past
the idle threshold: its frame is a snapshot in the store and it has no trio
task), or in one of the terminal states. BUDGET_EXCEEDED is terminal until
the host adds budget (`AgentHandle.add_budget`), which makes the agent READY
again.

Spawning and delegating (waiting for a child) show as WAITING_MESSAGE when the
parent waits for the child's result, since the result arrives as a message
would.
"""

from __future__ import annotations

from enum import StrEnum


class AgentState(StrEnum):
    READY = "ready"
    RUNNING = "running"
    WAITING_LLM = "waiting_llm"
    WAITING_TOOL = "waiting_tool"
    WAITING_MESSAGE = "waiting_message"
    SLEEPING = "sleeping"
    HIBERNATED = "hibernated"
    DONE = "done"
    FAILED = "failed"
    BUDGET_EXCEEDED = "budget_exceeded"
    STALLED = "stalled"
    CANCELLED = "cancelled"


TERMINAL = frozenset({AgentState.DONE, AgentState.FAILED, AgentState.BUDGET_EXCEEDED, AgentState.STALLED,
                      AgentState.CANCELLED})

# The state an agent is in while an effect of each kind is performed.
WAITING_ON = {
    "llm": AgentState.WAITING_LLM,
    "tool": AgentState.WAITING_TOOL,
    "send": AgentState.WAITING_MESSAGE,
    "recv": AgentState.WAITING_MESSAGE,
    "spawn": AgentState.RUNNING,
    "delegate": AgentState.WAITING_MESSAGE,
    "sleep": AgentState.SLEEPING,
}

# Rank 0 is served first. Where agents compete (the CPU run queue, the LLM
# gateway's queue), a waiter's key is ``enqueued_at + rank * aging_s``: a
# background request that has waited 2 * aging_s ranks with a fresh
# interactive one, so nothing starves.
PRIORITIES = {"interactive": 0, "normal": 1, "background": 2}


def priority_rank(priority: str | int) -> int:
    """The rank of a priority name (or a rank given as is)."""
    if isinstance(priority, int) and not isinstance(priority, bool) and priority in PRIORITIES.values():
        return priority
    try:
        return PRIORITIES[priority]  # type: ignore[index]
    except (KeyError, TypeError):
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}") from None
