"""The meter: energy for the work an instruction does beyond its fixed cost.

Most instructions do a fixed amount of work, and the cost table in
`avm.lang.opcodes` (plus a builtin's own cost) prices them. The rest do work
that grows with their operands: comparing two lists walks both, `repeat`
makes a text as long as asked, a regular expression scans its whole input.
Those instructions report that work here while they do it, *before* they do
the expensive part (before allocating a text, before scanning), and the frame
charges it on top of the fixed cost:

    parts of a value visited   1 milli-unit per NODES_PER_MILLI parts
    bytes made                 1 milli-unit per BYTES_PER_MILLI bytes
                               (a character counts one byte, a list or map item eight)
    characters scanned         1 milli-unit per CHARS_PER_MILLI characters
                               (regular expressions, json_parse)
    regular-expression match   MATCH_MILLI each

The first FREE milli-units of such work are included in every instruction's
fixed cost, so small values cost exactly what the table says.

How it is wired: before a metered instruction the interpreter sets ``left``
to the energy the frame has left (plus FREE); `spend` lowers it and raises
`OutOfEnergy` the moment it would go below zero, so no instruction ever does
more work than its agent can pay for. Outside a frame (the host calling the
same helpers) ``left`` is UNMETERED and spending never runs out; the hard
limits in `avm.lang.values` still bound the work. Each context (a thread,
a trio task started before the first metered instruction) gets its own
meter, through a context variable.
"""

from __future__ import annotations

from contextvars import ContextVar

UNMETERED = 1 << 62
FREE = 64  # milli-units of work every metered instruction may do within its fixed cost

NODES_PER_MILLI = 1
BYTES_PER_MILLI = 1024
CHARS_PER_MILLI = 32
MATCH_MILLI = 16
ITEM_BYTES = 8  # what one list or map item counts as, in bytes made


class OutOfEnergy(Exception):
    """An instruction's work would take its frame past the budget; ``needed``
    is how many milli-units beyond what was left it asked for (at least)."""

    def __init__(self, needed: int):
        super().__init__(needed)
        self.needed = needed


class Meter:
    __slots__ = ("left", "allocated")

    def __init__(self) -> None:
        self.left = UNMETERED  # milli-units the running instruction may still spend
        self.allocated = 0  # bytes made since the frame last read it


_CURRENT: ContextVar[Meter] = ContextVar("avm_meter")


def current() -> Meter:
    """This context's meter."""
    try:
        return _CURRENT.get()
    except LookupError:
        m = Meter()
        _CURRENT.set(m)
        return m


def spend(milli: int) -> None:
    """Charge ``milli`` units of work to the running instruction."""
    m = current()
    m.left -= milli
    if m.left < 0:
        raise OutOfEnergy(-m.left)


def visit(nodes: int) -> None:
    spend(nodes // NODES_PER_MILLI)


def make(nbytes: int) -> None:
    """Charge for making a value of ``nbytes`` bytes (call before allocating it)."""
    m = current()
    m.allocated += nbytes
    spend(nbytes // BYTES_PER_MILLI)


def scan(chars: int) -> None:
    spend(chars // CHARS_PER_MILLI)


def affordable_nodes() -> int:
    """How many parts of a value the running instruction can still pay to visit."""
    return current().left * NODES_PER_MILLI
