"""Deterministic replay: run an agent's program again against its journal, with no network and no tools.

The program is run from its start (and again after each journaled restart)
in a bare `Frame`; each effect it asks for is checked against the next
journaled effect (its kind and operands, by their hash), and the journaled
result is fed back, with the journaled energy for host work (LLM tokens, tool
seconds). Each snapshot entry is checked too: the frame then must snapshot to
the same bytes, its conversation to the same turns. The rebuilt entries are
hashed into a chain of their own, which must end at the journal's head hash.

So replay shows the journal is what this program does given those results:
the first difference is named, with its journal entry and the program line.
A result that was erased (`ContentStore.erase`) stops the replay with an
"erased input" outcome instead of a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from avm.conversation import MessageError, journaled_reply, store_turn, to_messages
from avm.errors import Erased, StoreError
from avm.journal.entry import Entry, JournalError
from avm.journal.reader import check_journal
from avm.lang.code import Code
from avm.lang.frame import DEFAULT_STALL_LIMIT, Frame
from avm.lang.opcodes import EFFECT_KINDS
from avm.lang.outcomes import BudgetExceeded, Done, Effect, Fault, Stalled
from avm.memory.ref import Ref, hash_bytes
from avm.memory.store import ContentStore
from avm.memory.values import encode_value
from avm.scheduler.states import AgentState

_QUANTUM = 200_000  # milli-units run between two looks (a replay has no one to yield to)


@dataclass(frozen=True)
class ReplayReport:
    journal: str
    entries: int  # journal entries
    replayed: int  # entries the replay reproduced
    ok: bool
    problem: str = ""  # the first difference, or why the replay stopped
    erased: bool = False  # it stopped at an erased input

    def line(self) -> str:
        if self.ok:
            return f"journal {self.journal}: {self.entries} entries reproduced, the same hash chain"
        return f"journal {self.journal}: {self.problem}"


class _Diverged(Exception):
    pass


def _ref(value: Any) -> Ref:
    return hash_bytes(encode_value(value))


def replay_journal(store: ContentStore, key: str, head: Ref) -> ReplayReport:
    """Replay the agent whose journal (``run/id``) ends at ``head``."""
    try:
        chain = check_journal(store, head, who=f"journal {key}")
    except JournalError as exc:
        return ReplayReport(key, 0, 0, False, str(exc), erased=isinstance(exc.__cause__, Erased))
    replayer = _Replayer(store, [e for _, e in chain])
    try:
        replayer.run()
    except Erased as exc:
        return ReplayReport(key, len(chain), replayer.done, False, f"stopped: erased input ({exc})", erased=True)
    except _Diverged as exc:
        return ReplayReport(key, len(chain), replayer.done, False, str(exc))
    except (StoreError, MessageError) as exc:
        return ReplayReport(key, len(chain), replayer.done, False, f"could not replay: {exc}")
    if replayer.prev != head:
        return ReplayReport(key, len(chain), replayer.done, False,
                            f"the rebuilt chain ends at {replayer.prev.hex()[:16] if replayer.prev else None}, "
                            f"the journal at {head.hex()[:16]}")
    return ReplayReport(key, len(chain), replayer.done, True)


class _Replayer:
    def __init__(self, store: ContentStore, entries: list[Entry]):
        self.store = store
        self.entries = entries
        self.at = 0  # the next journal entry to reproduce
        self.done = 0
        self.prev: Ref | None = None
        self.scratch = ContentStore()  # where the conversation's turns are stored, for their refs

    def _value(self, ref: Ref | None) -> Any:
        return None if ref is None else self.store.get_value(ref)

    def _emit(self, kind: str, request: Ref | None, result: Ref | None, energy: int) -> None:
        """Rebuild the next entry from what the replay knows; it must be the journal's."""
        entry = Entry(self.done, self.prev, kind, request, result, energy)
        expected = self.entries[self.at]
        if entry != expected:
            what = "kind" if entry.kind != expected.kind else "request" if entry.request != expected.request else \
                "result" if entry.result != expected.result else "energy" if entry.energy != expected.energy else "link"
            raise _Diverged(f"entry {expected.seq} differs ({what}): the journal has {expected.kind} "
                            f"{self._shown(expected.request)}, the replay {kind} {self._shown(request)}")
        self.prev = hash_bytes(entry.encode())
        self.at += 1
        self.done += 1

    def _shown(self, ref: Ref | None) -> str:
        from avm.lang.values import render

        try:
            text = render(self._value(ref))
        except (StoreError, ValueError, TypeError):
            text = ref.hex()[:16] if ref is not None else "-"
        return text if len(text) <= 80 else text[:77] + "..."

    def _next(self) -> Entry:
        if self.at >= len(self.entries):
            raise _Diverged(f"the program goes on past the journal's last entry ({len(self.entries) - 1})")
        return self.entries[self.at]

    def run(self) -> None:
        start_entry = self.entries[0]
        start = self._value(start_entry.request)
        code = Code.from_bytes(self.store.get(start["program"]))
        self._emit("start", start_entry.request, None, 0)
        spent = 0
        budget = start["budget"]
        frame = self._frame(code, budget, start)
        conversation: list[Any] = []
        while True:
            out = frame.run(_QUANTUM)
            if type(out) is Effect:
                self._own_entries(frame, conversation, spent)  # mail, an intent, a hibernation's snapshot
                entry = self._next()
                request = _ref(list(out.args))
                if entry.kind != out.kind or entry.request != request:
                    raise _Diverged(f"entry {entry.seq}: the journal has {entry.kind} {self._shown(entry.request)}, "
                                    f"the program (line {out.line}) asks {out.kind} {_short(list(out.args))}")
                result = self._value(entry.result)  # raises Erased for an erased input
                if out.kind == "llm":
                    try:
                        conversation.extend(to_messages(out.args[0]))
                    except MessageError:
                        pass  # the journal says how the host ruled (a fault)
                    else:
                        store_turn(conversation, self.scratch)
                diff = entry.energy - (spent + frame.used)
                if diff > 0:
                    frame.charge(diff / 1000)  # host work: tokens, tool seconds, a child's budget
                elif diff < 0:
                    frame.refund(-diff / 1000)  # a child's unspent budget came back
                if result is not None and "reply" in result:
                    conversation.append(journaled_reply(result["reply"], self.scratch))
                self._emit(out.kind, request, entry.result, spent + frame.used)
                self._own_entries(frame, conversation, spent, after_effect=True)  # a snapshot taken at this effect
                if result is None:
                    frame.resume(None)  # a recv that timed out
                elif "fault" in result:
                    frame.fail(*result["fault"])
                else:
                    frame.resume(result["value"])
                if frame.status != "faulted":
                    continue
                ended = frame.outcome
                assert ended is not None  # a faulted frame holds its Fault (Frame._fault sets both)
                out = ended
            self._own_entries(frame, conversation, spent)
            if type(out) is Fault and self.at < len(self.entries) and self.entries[self.at].kind == "restart":
                spent += frame.used
                self._emit("restart", None, None, spent)
                frame = self._frame(code, budget - spent, start)
                conversation = []
                continue
            self._end(out, spent + frame.used)
            return

    def _own_entries(self, frame: Frame, conversation: list[Any], spent: int, after_effect: bool = False) -> None:
        """The kernel's entries that come next: mail as it was delivered, snapshots checked against the frame.
        ``after_effect``: up to a hibernation's snapshot, which belongs to the effect after (a recv)."""
        while self.at < len(self.entries) and self.entries[self.at].kind in ("mail", "refund", "snapshot", "intent"):
            entry = self.entries[self.at]
            if entry.kind == "refund":
                frame.refund(self._value(entry.request)["milli"] / 1000)
            if entry.kind == "snapshot":
                if after_effect and self._value(entry.result).get("resumed_by") == "next":
                    return
                self._check_snapshot(entry, frame, conversation, spent)
            self._emit(entry.kind, entry.request, entry.result, entry.energy)

    def _frame(self, code: Code, budget: int, start: dict[str, Any]) -> Frame:
        frame = Frame(code, budget / 1000, start["inputs"], stall_limit=start.get("stall_limit", DEFAULT_STALL_LIMIT))
        frame.set_memory_limit(start["memory_limit"])
        return frame

    def _check_snapshot(self, entry: Entry, frame: Frame, conversation: list[Any], spent: int) -> None:
        state = self._value(entry.result)
        if hash_bytes(frame.snapshot()) != state["frame"]:
            raise _Diverged(f"entry {entry.seq}: the snapshot in the journal is not the frame the replay has "
                            f"there (line {frame.line_at(frame.pc)})")
        store_turn(conversation, self.scratch)
        if list(state["conversation"]) != conversation or state["spent"] != spent:
            raise _Diverged(f"entry {entry.seq}: the snapshot's conversation is not the replay's")

    def _end(self, out: Any, energy: int) -> None:
        entry = self._next()
        if entry.kind != "end":
            raise _Diverged(f"entry {entry.seq}: the journal has {entry.kind}, the replay ends")
        recorded = self._value(entry.result)
        state, value, error = _ending(out)
        if recorded["state"] == AgentState.CANCELLED.value:
            pass  # cancelled by the host there: nothing the program did
        elif (recorded["state"], recorded["value"]) != (state, value) or (error and recorded["error"] and not
                                                                          recorded["error"].startswith(error)):
            raise _Diverged(f"entry {entry.seq}: the journal says the agent ended {recorded['state']} "
                            f"{_short(recorded['value'] if recorded['state'] == 'done' else recorded['error'])}, "
                            f"the replay ends {state} {_short(value if state == 'done' else error)}")
        self._emit("end", None, entry.result, entry.energy if recorded["state"] == "cancelled" else energy)
        if self.at != len(self.entries):
            raise _Diverged(f"entry {self.entries[self.at].seq} comes after the end")


def _ending(out: Any) -> tuple[str, Any, str]:
    if type(out) is Done:
        return "done", out.value, ""
    if type(out) is Fault:
        return "failed", None, str(out)
    if type(out) is BudgetExceeded:
        return "budget_exceeded", None, f"line {out.line}"
    if type(out) is Stalled:
        return "stalled", None, f"line {out.line}"
    raise _Diverged(f"the replay ended with {out!r}")


def _short(value: Any) -> str:
    from avm.lang.values import render

    text = render(value)
    return text if len(text) <= 80 else text[:77] + "..."


assert set(EFFECT_KINDS) <= {"llm", "tool", "send", "recv", "spawn", "delegate", "sleep"}
