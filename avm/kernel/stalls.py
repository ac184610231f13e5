"""A fleet that can make no progress: every live agent waits for a message that no one can send.

With ``VMSettings.host_sends`` false (`avm run`, `run_agents`: no message comes from outside the VM), the
kernel looks every `CHECK_EVERY_S` for such a fleet: each live agent waits in a ``recv`` with no timeout
and an empty mailbox (awake or hibernated), or in a ``delegate`` for a child, and nothing else can happen
(no agent runs or is ready, no LLM request, tool call or sleep is out, no timer will wake anyone, no send
waits for room), and the host waits for agents to end (in ``join()`` or ``result()``: it is not spawning
the agents that would send). Seen so twice, with no state change in between (a change in flight would
show), those waiting in ``recv`` end STALLED: their delegating parents then get their results and go on.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from avm.scheduler.states import TERMINAL, AgentState

if TYPE_CHECKING:
    from avm.kernel.kernel import Kernel
    from avm.kernel.record import Agent

CHECK_EVERY_S = 0.25
DETAIL = "waiting for a message no live agent can send"

S = AgentState


def waiting_for_nothing(kernel: Kernel) -> list[Agent]:
    """The agents waiting in a recv no one can answer, if the whole fleet is stuck; else none."""
    counts = kernel.counts
    live = kernel.live
    if not live or not kernel.host_waits or counts[S.WAITING_MESSAGE] + counts[S.HIBERNATED] != live:
        return []
    stuck: list[Agent] = []
    for agent in kernel.agents.values():
        state = agent.state
        if state in TERMINAL:  # (out of budget: kept, and waits for the host's add_budget)
            continue
        box = agent.mailbox
        if box is not None and len(box):
            return []  # a message it has not taken yet
        if state is S.HIBERNATED:
            if agent.deadline != math.inf:
                return []  # its timer wakes it
            stuck.append(agent)
            continue
        frame = agent.frame
        effect = frame.pending if frame is not None else None
        if effect is None:
            return []
        if effect.kind == "recv" and effect.args[0] is None:
            stuck.append(agent)
        elif effect.kind != "delegate":  # a recv with a timeout, a send waiting for room: it times out
            return []
    return stuck


async def watch(kernel: Kernel) -> None:
    """The kernel's task (host_sends false): end a stuck fleet's waiters STALLED."""
    seen = -1
    while True:
        await trio.sleep(CHECK_EVERY_S)
        stuck = waiting_for_nothing(kernel)
        if not stuck:
            seen = -1
            continue
        if seen != kernel.transitions:  # seen once: look again, to see that nothing moved meanwhile
            seen = kernel.transitions
            continue
        # a parent waiting for the end notice of a child that is stuck too gets it once the child ends:
        # the children first (the parent, if still stuck, in a later round)
        parents = {a.parent.id for a in stuck if a.parent is not None and not a.delegated}
        leaves = [a for a in stuck if a.id not in parents]
        for agent in leaves:
            kernel.stall(agent, DETAIL)
        kernel.deadlocked += len(leaves)
        seen = -1
