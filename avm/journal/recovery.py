"""What a run's journals say about each of its agents, for `--resume`.

After a crash (SIGKILL, power loss) the store holds, for every agent of the
run, the journal entries committed before it. `recover` reads them all:

- an agent whose journal ends with ``end`` finished: it is not run again
  (it keeps its state, value or error, and energy);
- any other agent goes on from its last ``snapshot`` (or from its start),
  and is fed the results of the entries after it (`Recovered.replay`) instead
  of performing those effects again; what it does after them is performed;
- the messages journaled as ``mail`` and not yet taken by a recv go back in
  its mailbox;
- a side-effecting tool call whose ``intent`` is journaled and whose result
  is not was interrupted by the crash: it is not made again (the program gets
  an ``Interrupted`` error value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from avm.journal.entry import Entry, JournalError
from avm.journal.reader import check_journal, journals
from avm.lang.opcodes import EFFECT_KINDS
from avm.memory.ref import Ref
from avm.memory.store import ContentStore

_REPLAYED = frozenset(EFFECT_KINDS) | {"restart", "intent"}


@dataclass
class Recovered:
    id: int
    start: dict[str, Any]  # what it was spawned with (the start entry's request)
    energy: int  # milli-units, after its last entry
    head: tuple[int, Ref, int]  # (seq, ref) of its last entry, and the seq of its last snapshot
    ended: dict[str, Any] | None = None  # {"state", "value", "error"} if it ended
    snapshot: dict[str, Any] | None = None  # the last snapshot's state
    replay: list[Entry] = field(default_factory=list)  # entries to feed it, oldest first
    mailbox: list[Any] = field(default_factory=list)  # delivered, not yet received
    children: set[int] = field(default_factory=set)  # the ids its journaled spawns and delegates name
    refunded_children: set[int] = field(default_factory=set)  # children whose refund its journal has
    mail_keys: set[str] = field(default_factory=set)  # the keys of the messages delivered to it (Kernel.deliver)
    tail_refund: int = 0  # milli-units children gave back after the last entry its frame will match
    # Its own work (instructions and host work, in milli-units: not its children's budgets, which are theirs):
    own_energy: int = 0  # in all its journal
    base_energy: int = 0  # up to the snapshot it goes on from (0: from its start)


def recover(store: ContentStore, run_id: str) -> list[Recovered]:
    """Every agent of the run ``run_id``, by id; `JournalError` if a journal is broken (no guessing)."""
    found = journals(store, run_id)
    if not found:
        raise JournalError(f"no journals of run {run_id} in the store")
    out = []
    chains = {}
    for key, head in sorted(found.items()):
        chain = check_journal(store, head, who=f"journal {key}")
        agent_id = int(key.rsplit("/", 1)[1])
        chains[agent_id] = [e for _, e in chain]
        out.append(_recovered(store, agent_id, chain))
    budgets = {rec.id: rec.start["budget"] for rec in out}
    for rec in out:
        entries = chains[rec.id]
        snap_at = max((i for i, e in enumerate(entries) if e.kind == "snapshot"), default=None)
        lent = refunded = 0
        for i, e in enumerate(entries):
            if snap_at is not None and i == snap_at:
                rec.base_energy = e.energy - lent + refunded
            if e.kind in ("spawn", "delegate"):
                result = store.get_value(e.result) if e.result is not None else None
                if type(result) is dict and type(result.get("child")) is int:
                    lent += budgets.get(result["child"], 0)
            elif e.kind == "refund":
                refund = _value(store, rec.id, e, e.request, "request")
                if refund.get("child") in rec.children:
                    refunded += refund["milli"]
        rec.own_energy = entries[-1].energy - lent + refunded
    return out


def _value(store: ContentStore, agent_id: int, entry: Entry, ref: Ref | None, what: str) -> Any:
    """The value ``entry`` names as its ``what`` (request or result), which an entry of its kind always
    has; `JournalError` if it has none (a journal the writer did not write)."""
    if ref is None:
        raise JournalError(f"journal of agent {agent_id}: seq {entry.seq} ({entry.kind}) has no {what}")
    return store.get_value(ref)


def _recovered(store: ContentStore, agent_id: int, chain: list[tuple[Ref, Entry]]) -> Recovered:
    value = store.get_value

    def request_of(e: Entry) -> Any:
        return _value(store, agent_id, e, e.request, "request")

    def result_of(e: Entry) -> Any:
        return _value(store, agent_id, e, e.result, "result")

    entries = [e for _, e in chain]
    first = entries[0]
    if first.kind != "start":
        raise JournalError(f"journal of agent {agent_id} does not begin with its start")
    last_ref, last = chain[-1]
    snap_at = max((i for i, e in enumerate(entries) if e.kind == "snapshot"), default=None)
    rec = Recovered(agent_id, request_of(first), last.energy,
                    (last.seq, last_ref, entries[snap_at].seq if snap_at is not None else 0))
    # (what a child's end adds after the agent's own end: a notice or a refund, is no sign of life)
    final = next((e for e in reversed(entries) if e.kind not in ("mail", "refund")), last)
    if final.kind == "end":
        rec.ended = result_of(final)
    mails: list[Any] = []
    received = 0
    for e in entries:
        if e.kind == "mail":
            mails.append(result_of(e))
            if e.request is not None:
                key = value(e.request).get("from")
                if type(key) is str:
                    rec.mail_keys.add(key)
        elif e.kind == "recv" and e.result is not None:
            received += 1
        elif e.kind in ("spawn", "delegate"):
            result = result_of(e)
            if type(result) is dict and type(result.get("child")) is int:
                rec.children.add(result["child"])
    rec.mailbox = mails[received:]
    # refunds of children whose transfer the journal holds (a child whose spawn or delegate the crash lost
    # is adopted again, and refunds its parent then: see Kernel._adopt)
    refunds = [(i, request_of(e)) for i, e in enumerate(entries) if e.kind == "refund"]
    refunds = [(i, r) for i, r in refunds if r.get("child") in rec.children]
    rec.refunded_children = {r["child"] for _, r in refunds}
    if snap_at is None:
        tail = entries[1:]
    else:
        rec.snapshot = result_of(entries[snap_at])
        tail = entries[snap_at + 1:]
        if rec.snapshot.get("resumed_by") == "previous":  # the effect its frame waits on is the entry before
            tail = [next(e for e in reversed(entries[:snap_at]) if e.kind in EFFECT_KINDS), *tail]
    rec.replay = [e for e in tail if e.kind in _REPLAYED]
    # the energy the frame has once fed its replay: its last effect's (or its snapshot's, or the start's); a
    # child's refund after it shows only in later entries (mail), and is the agent's to get back
    matched = max((i for i, e in enumerate(entries) if e.kind in EFFECT_KINDS or e.kind in ("snapshot", "start",
                                                                                             "restart")), default=0)
    rec.tail_refund = sum(r["milli"] for i, r in refunds if i > matched)
    return rec
