"""One journal entry, and its canonical encoding.

An entry is ``(seq, prev, kind, request, result, energy)``:

- ``seq``: 0 for the agent's first entry (``start``), then one more for each;
- ``prev``: the ref (hash) of the entry before, None for the first;
- ``kind``: an effect kind (llm, tool, send, recv, spawn, delegate, sleep) or one of the kernel's own:
  ``start`` (request: what the agent was spawned with), ``mail`` (result: a message put in its mailbox),
  ``refund`` (request: ``{"milli": n}``, a child's unspent budget given back),
  ``snapshot`` (result: the agent's state then),
  ``intent`` (a side-effecting tool call about to be made), ``restart`` (a fresh frame after a fault),
  ``end`` (result: the state it ended in and its value or error);
- ``request``, ``result``: refs of stored values (None where there is none);
- ``energy``: the agent's energy used after the entry, in milli-units.

It is encoded as the list ``[seq, prev, kind, request, result, energy]`` with the store's canonical value
encoding (`avm.memory.values`), so its hash is blake3 of that encoding and is its ref in the store: an
entry is stored like any object, and the chain of ``prev`` refs is a hash chain. Changing one byte of an
entry changes its ref, so the next entry no longer names it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from avm.errors import StoreError
from avm.lang.opcodes import EFFECT_KINDS
from avm.memory.ref import Ref
from avm.memory.values import decode_value, encode_value

OWN_KINDS = ("start", "mail", "refund", "snapshot", "intent", "restart", "end")
KINDS = frozenset(EFFECT_KINDS) | frozenset(OWN_KINDS)


class JournalError(StoreError):
    """A journal that is not what it must be: a broken hash chain, a missing entry, an entry that does
    not decode. The message names the agent and the first broken link."""


class Entry(NamedTuple):
    seq: int
    prev: Ref | None
    kind: str
    request: Ref | None
    result: Ref | None
    energy: int  # milli-units

    def encode(self) -> bytes:
        return encode_value([self.seq, self.prev, self.kind, self.request, self.result, self.energy])


def decode_entry(data: bytes) -> Entry:
    """The entry encoded in ``data``; `JournalError` if it is not one."""
    try:
        value: Any = decode_value(data)
    except StoreError as exc:
        raise JournalError(f"not a journal entry: {exc}") from None
    if type(value) is not list or len(value) != 6:
        raise JournalError("not a journal entry: expected a list of 6")
    seq, prev, kind, request, result, energy = value
    if type(seq) is not int or seq < 0 or type(energy) is not int or energy < 0:
        raise JournalError("not a journal entry: bad sequence number or energy")
    if kind not in KINDS:
        raise JournalError(f"not a journal entry: unknown kind {kind!r}")
    for ref in (prev, request, result):
        if ref is not None and type(ref) is not Ref:
            raise JournalError("not a journal entry: a link that is not a ref")
    if (seq == 0) != (prev is None):
        raise JournalError("not a journal entry: only the first entry has no previous one")
    return Entry(seq, prev, kind, request, result, energy)
