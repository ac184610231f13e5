"""Reading journals back, and checking them.

`read_journal` walks an agent's chain from its head to its first entry and
returns the entries oldest first; `check_journal` also reads every value an
entry refers to. Either raises `JournalError` naming the agent and the first
broken link (walking from the oldest entry): an entry that is missing (a
deleted entry leaves its successor naming nothing), one whose bytes no longer
hash to its ref (tampered: the store refuses it as corrupt), one that does
not decode, or a sequence number that skips (an entry cut out of the chain
and the next one relinked).
"""

from __future__ import annotations

from typing import Any

from avm.errors import Erased, NotFound, StoreError
from avm.journal.entry import Entry, JournalError, decode_entry
from avm.journal.writer import PREFIX
from avm.memory.ref import Ref
from avm.memory.store import ContentStore


def journals(store: ContentStore, run: str | None = None) -> dict[str, Ref]:
    """The journals in ``store`` (of one run, or all): ``"<run id>/<agent id>"`` -> its head's ref."""
    prefix = PREFIX + (f"{run}/" if run else "")
    return {name.decode("utf-8", "replace")[len(PREFIX):]: ref for name, ref in store.names(prefix).items()}


def read_journal(store: ContentStore, head: Ref, *, who: str = "journal") -> list[tuple[Ref, Entry]]:
    """Every entry of the chain ending at ``head``, oldest first, each with its ref."""
    chain: list[tuple[Ref, Entry]] = []
    ref: Ref | None = head
    newer: Entry | None = None
    while ref is not None:
        where = f"{who}: entry {ref.hex()[:16]}" + (f" (before seq {newer.seq})" if newer is not None else " (head)")
        try:
            data = store.get(ref, promote=False)
        except NotFound:
            raise JournalError(f"{where} is missing: the chain is broken there") from None
        except Erased:
            raise JournalError(f"{where} was erased: the chain cannot be followed past it") from None
        except StoreError as exc:
            raise JournalError(f"{where}: {exc}") from None
        try:
            entry = decode_entry(data)
        except JournalError as exc:
            raise JournalError(f"{where}: {exc}") from None
        if newer is not None and entry.seq != newer.seq - 1:
            raise JournalError(f"{who}: entry seq {newer.seq} follows seq {entry.seq}: "
                               f"{newer.seq - entry.seq - 1} entr{'y' if newer.seq - entry.seq == 2 else 'ies'} "
                               f"missing from the chain")
        chain.append((ref, entry))
        newer = entry
        ref = entry.prev
    chain.reverse()
    return chain


def check_journal(store: ContentStore, head: Ref, *, who: str = "journal") -> list[tuple[Ref, Entry]]:
    """`read_journal`, and every request and result an entry names read (so verified) too; a value erased
    on request (`ContentStore.erase`) is no damage: the chain still holds its ref."""
    chain = read_journal(store, head, who=who)
    for _, entry in chain:
        for what, ref in (("request", entry.request), ("result", entry.result)):
            if ref is None:
                continue
            try:
                store.get_value(ref)
            except Erased:
                continue
            except NotFound:
                raise JournalError(f"{who}: seq {entry.seq} ({entry.kind}): its {what} {ref.hex()[:16]} "
                                   f"is missing") from None
            except StoreError as exc:
                raise JournalError(f"{who}: seq {entry.seq} ({entry.kind}): its {what} {ref.hex()[:16]}: "
                                   f"{exc}") from None
    return chain


def check_journals(store: ContentStore) -> tuple[int, int, list[str]]:
    """Check every journal in ``store``: (journals, entries, problems), one problem per broken journal."""
    problems: list[str] = []
    entries = 0
    found = journals(store)
    for key, head in sorted(found.items()):
        try:
            entries += len(check_journal(store, head, who=f"journal {key}"))
        except JournalError as exc:
            problems.append(str(exc))
    return len(found), entries, problems


def value_of(store: ContentStore, ref: Ref | None) -> Any:
    return None if ref is None else store.get_value(ref)
