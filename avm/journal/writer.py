"""The journal hook: every agent's effects appended to its hash-chained journal in the store.

Each agent's journal is a chain of entries (`avm.journal.entry`) in the
content store; the name ``journal/<run id>/<agent id>`` is bound to the newest
one (its head), and each entry names the one before. An append stores one
entry, its request and result values, and moves the head: O(1) in the
journal's length.

**When.** An effect's entry is appended at the trap, after its energy is
charged and before the program sees the result (`Hook.effect`). A recv that
hibernates appends nothing then; its result is appended when the agent
wakes (a recv that timed out has no result ref: its value is null). Every
message put in an agent's mailbox (by an agent, the host, or a child's end
notice) is a ``mail`` entry of the receiver, so a recovery knows the
messages that were delivered and not yet received. A result is a map:
``{"value": v}``; ``{"fault": [kind, message]}`` when the host ruled the effect
a fault; an llm reply adds ``"reply"`` (the message's JSON), a spawn or
delegate ``"child"`` (the child's id).

**Snapshots.** Every ``snapshot_every`` effects, and whenever the agent
hibernates, a ``snapshot`` entry names the agent's state then (its frame's
snapshot, its conversation's refs, the energy of its earlier runs), so a
recovery restores the last snapshot and replays at most ``snapshot_every``
entries after it.

**Durability.** Entries are written like every object: into the hot or warm
tier at once, and into the cold tier (LMDB) by the store's single writer,
which commits its queue in one transaction when it holds
``write_batch_count`` writes or ``write_batch_bytes`` bytes, at every
``flush``, at ``close``, and (the VM sees to it) every
``VMSettings.journal_commit_s`` (0.5 s). A transaction holds entries and the
journal heads that name them, so a crash leaves every chain whole. A SIGKILL
loses what was not yet committed: at most the last half second of entries. Recovery then performs those effects again,
except a tool declared ``side_effects=True``: before such a call the journal
appends an ``intent`` entry and flushes the store, so a call whose intent is
committed and whose result is not was interrupted by the crash, and is never
made a second time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from avm.conversation import store_turn
from avm.io.wire import message_json
from avm.journal.entry import Entry
from avm.kernel.hooks import Hook
from avm.lang.code import Code
from avm.memory.ref import Ref
from avm.memory.store import ContentStore
from avm.memory.values import encode_value
from avm.scheduler.states import AgentState

if TYPE_CHECKING:
    from avm.kernel.outcome import Outcome
    from avm.kernel.record import Agent
    from avm.lang.outcomes import Effect

PREFIX = "journal/"
DEFAULT_SNAPSHOT_EVERY = 64


def journal_name(run_id: str, agent_id: int) -> str:
    return f"{PREFIX}{run_id}/{agent_id:09d}"


def call_key(run_id: str, agent_id: int, step: str) -> str:
    return f"{run_id}/{agent_id}/{step}"


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
        self._programs: dict[str, Ref] = {}  # code id -> the stored program's ref

    def head(self, agent_id: int) -> tuple[int, Ref] | None:
        """(seq, ref) of the agent's newest entry, while it lives."""
        found = self._heads.get(agent_id)
        return None if found is None else (found[0], found[1])

    def go_on(self, agent_id: int, seq: int, head: Ref, snapshot_seq: int) -> None:
        """Append a recovered agent's next entries after ``head`` (its entry ``seq``)."""
        self._heads[agent_id] = [seq, head, snapshot_seq]

    def call_key(self, agent: Agent) -> str:
        """The idempotency key of the tool call the agent is about to make: its step (`Agent.step`), so the
        same in every attempt, whatever else its journal holds by then."""
        return call_key(self.run_id, agent.id, agent.step())

    async def intent(self, agent: Agent, effect: Effect) -> None:
        """Before a side-effecting tool call: an ``intent`` entry, committed to disk before the call is made."""
        self._append(agent, "intent", self._put(list(effect.args)), None)
        await trio.to_thread.run_sync(self.store.flush)

    def _append(self, agent: Agent, kind: str, request: Ref | None, result: Ref | None) -> int:
        head = self._heads.get(agent.id)
        if head is None:
            head = self._heads[agent.id] = [-1, None, 0]
        seq = head[0] + 1
        entry = Entry(seq, head[1], kind, request, result, agent.used_milli())
        ref = self.store.put(entry.encode(), hot=False, cache=False)
        self.store.bind(journal_name(self.run_id, agent.id), ref)
        head[0], head[1] = seq, ref
        self.entries += 1
        return seq

    def _program(self, code: Code) -> Ref:
        ref = self._programs.get(code.id)
        if ref is None:
            ref = self._programs[code.id] = self.store.put(code.to_bytes())
        return ref

    def _put(self, value: Any) -> Ref:
        # (to disk only where there is one: a journal is written once and read by a recovery or a check)
        try:
            return self.store.put(encode_value(value), hot=False, cache=False)
        except (TypeError, ValueError) as exc:  # a value nested too deeply to encode: say so, keep the chain
            return self.store.put(encode_value({"unrecorded": str(exc)}), hot=False, cache=False)

    # --- the hook ---------------------------------------------------------------------------------

    def started(self, agent: Agent) -> None:
        parent = agent.parent
        request = self._put({
            "program": self._program(agent.code), "inputs": agent.inputs, "budget": agent.budget,
            "name": agent.name, "system": agent.system, "tools": sorted(agent.granted),
            "parent": parent.id if parent is not None else None, "rank": agent.rank,
            "delegated": agent.delegated, "memory_limit": agent.memory_limit,
            "stall_limit": agent.frame.stall_limit if agent.frame is not None else None,
            "restart": [agent.policy.mode, agent.policy.max_restarts, agent.policy.window_s],
        })
        self._append(agent, "start", request, None)

    def effect(self, agent: Agent, effect: Effect, outcome: Outcome) -> None:
        if outcome.hibernate is not None:
            return  # the result comes with the wake-up
        request = self._put(list(effect.args))
        result: Ref | None
        if outcome.fault is not None:
            result = self._put({"fault": list(outcome.fault)})
        elif outcome.reply is not None:
            reply = outcome.reply
            text = (self.store.get(reply) if isinstance(reply, Ref) else message_json(reply)).decode("utf-8")
            result = self._put({"value": outcome.value, "reply": text})
        elif outcome.child is not None:
            result = self._put({"child": outcome.child.id, "value": outcome.value})
        elif outcome.timeout:
            result = None  # a recv that timed out: null, and no message taken
        else:
            result = self._put({"value": outcome.value})
        seq = self._append(agent, effect.kind, request, result)
        if outcome.fault is None and seq - self._heads[agent.id][2] >= self.snapshot_every:
            self._snapshot(agent, None)

    def mailed(self, agent: Agent, message: Any, key: str | None = None) -> None:
        if agent.id in self._heads:  # (not for an agent a journal of another VM started)
            self._append(agent, "mail", self._put({"from": key}) if key is not None else None, self._put(message))

    def refunded(self, agent: Agent, milli: int, child: int) -> None:
        # (the kernel refunds no agent that has ended, so none after its journal's end entry)
        if agent.id in self._heads:
            self._append(agent, "refund", self._put({"milli": milli, "child": child}), None)

    def hibernated(self, agent: Agent) -> None:
        self._snapshot(agent, agent.snapshot, resumed_by="next")

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

    def _snapshot(self, agent: Agent, frame_ref: Ref | None, resumed_by: str = "previous") -> None:
        """A snapshot of the agent's state, its frame waiting on an effect: the result that resumes it is
        the entry before (``resumed_by`` "previous": taken at the trap) or the next one of its kind (at
        hibernation: the recv's result comes with the wake-up)."""
        frame = agent.frame
        assert frame is not None
        if frame_ref is None:
            frame_ref = self.store.put(frame.snapshot(), hot=False, cache=False)
        conversation = agent.conversation
        if conversation:
            store_turn(conversation, self.store)  # (what its next request would store anyway)
        state = self._put({"frame": frame_ref, "conversation": list(conversation or ()), "spent": agent.spent,
                           "resumed_by": resumed_by})
        seq = self._append(agent, "snapshot", None, state)
        self._heads[agent.id][2] = seq
