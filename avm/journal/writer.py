"""The journal hook: every agent's effects appended to its hash-chained journal in the store.

Each agent's journal is a chain of entries (`avm.journal.entry`) in the
content store; the name ``journal/<run id>/<agent id>`` is bound to the newest
one (its head), and each entry names the one before. An append stores one
entry, its request and result values, and moves the head: O(1) in the
journal's length.

**When.** An effect's entry is appended at the trap, after its energy is
charged and before the program sees the result (`Hook.effect`). A recv that
hibernates appends nothing then; its result (the message, or null when the
recv timed out) is appended when the agent wakes. A child's end notice
reaches its parent as a message (so as a recv's result), and a delegate's
result is the delegate entry's.

**Snapshots.** Every ``snapshot_every`` effects, and whenever the agent
hibernates, a ``snapshot`` entry names the agent's state then (its frame's
snapshot, its conversation's refs, the energy of its earlier runs), so a
recovery restores the last snapshot and replays at most ``snapshot_every``
entries after it.

**Durability.** Entries are written like every object: into the hot or warm
tier at once, and into the cold tier (LMDB) by the store's single writer,
which commits its queue in one transaction when it holds
``write_batch_count`` writes or ``write_batch_bytes`` bytes, at every
``flush`` and at ``close``. A SIGKILL loses what was not yet committed: at
most the last batch of entries. Recovery then performs those effects again,
except a tool declared ``side_effects=True``: before such a call the journal
appends an ``intent`` entry and flushes the store, so a call whose intent is
committed and whose result is not was interrupted by the crash, and is never
made a second time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avm.conversation import store_turn
from avm.io.wire import message_json
from avm.journal.entry import Entry
from avm.kernel.hooks import Hook
from avm.memory.ref import Ref
from avm.memory.store import ContentStore
from avm.scheduler.states import AgentState

if TYPE_CHECKING:
    from avm.kernel.outcome import Outcome
    from avm.kernel.record import Agent
    from avm.lang.outcomes import Effect

PREFIX = "journal/"
DEFAULT_SNAPSHOT_EVERY = 64


def journal_name(run_id: str, agent_id: int) -> str:
    return f"{PREFIX}{run_id}/{agent_id:09d}"


class Journal(Hook):
    """The journal of every agent of one run (see the module docstring)."""

    def __init__(self, store: ContentStore, run_id: str, *, snapshot_every: int = DEFAULT_SNAPSHOT_EVERY):
        if type(snapshot_every) is not int or snapshot_every < 1:
            raise ValueError(f"snapshot_every must be a positive int, not {snapshot_every!r}")
        self.store = store
        self.run_id = run_id
        self.snapshot_every = snapshot_every
        # per live agent: [seq of its head, the head's ref, seq of its last snapshot]
        self._heads: dict[int, list[Any]] = {}
        self.entries = 0  # appended by this journal

    def head(self, agent_id: int) -> tuple[int, Ref] | None:
        """(seq, ref) of the agent's newest entry, while it lives."""
        found = self._heads.get(agent_id)
        return None if found is None else (found[0], found[1])

    def _append(self, agent: Agent, kind: str, request: Ref | None, result: Ref | None) -> int:
        head = self._heads.get(agent.id)
        if head is None:
            head = self._heads[agent.id] = [-1, None, 0]
        seq = head[0] + 1
        entry = Entry(seq, head[1], kind, request, result, agent.used_milli())
        ref = self.store.put(entry.encode(), hot=False)
        self.store.bind(journal_name(self.run_id, agent.id), ref)
        head[0], head[1] = seq, ref
        self.entries += 1
        return seq

    def _put(self, value: Any) -> Ref:
        try:
            return self.store.put_value(value)
        except (TypeError, ValueError) as exc:  # a value nested too deeply to encode: say so, keep the chain
            return self.store.put_value({"unrecorded": str(exc)})

    # --- the hook ---------------------------------------------------------------------------------

    def started(self, agent: Agent) -> None:
        parent = agent.parent
        request = self._put({
            "program": Ref(agent.code.digest), "inputs": agent.inputs, "budget": agent.budget,
            "name": agent.name, "system": agent.system, "tools": sorted(agent.granted),
            "parent": parent.id if parent is not None else None, "rank": agent.rank,
        })
        self._append(agent, "start", request, None)

    def effect(self, agent: Agent, effect: Effect, outcome: Outcome) -> None:
        if outcome.hibernate is not None:
            return  # the result comes with the wake-up
        request = self._put(list(effect.args))
        if outcome.fault is not None:
            result = self._put({"fault": list(outcome.fault)})
        elif outcome.reply is not None:
            result = self._put({"value": outcome.value, "reply": message_json(outcome.reply).decode("utf-8")})
        else:
            result = self._put(outcome.value)
        seq = self._append(agent, effect.kind, request, result)
        if outcome.fault is None and seq - self._heads[agent.id][2] >= self.snapshot_every:
            self._snapshot(agent, None)

    def hibernated(self, agent: Agent) -> None:
        self._snapshot(agent, agent.snapshot)

    def restarted(self, agent: Agent) -> None:
        self._append(agent, "restart", None, None)

    def ended(self, agent: Agent) -> None:
        state = agent.state
        done = state is AgentState.DONE
        result = self._put({"state": state.value, "value": agent.value if done else None,
                            "error": None if done else agent.detail})
        self._append(agent, "end", None, result)
        if state is not AgentState.BUDGET_EXCEEDED:  # (out of budget, it may go on)
            self._heads.pop(agent.id, None)

    def _snapshot(self, agent: Agent, frame_ref: Ref | None) -> None:
        frame = agent.frame
        assert frame is not None
        if frame_ref is None:
            frame_ref = self.store.put(frame.snapshot(), hot=False)
        conversation = agent.conversation
        if conversation:
            store_turn(conversation, self.store)  # (what its next request would store anyway)
        state = self._put({"frame": frame_ref, "conversation": list(conversation or ()), "spent": agent.spent})
        seq = self._append(agent, "snapshot", None, state)
        self._heads[agent.id][2] = seq
