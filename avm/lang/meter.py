"""The meter: energy for the work an instruction does beyond its fixed cost.

Most instructions do a fixed amount of work, and the cost table in
`avm.lang.opcodes` (plus a builtin's own cost) prices them. The rest do work
that grows with their operands: comparing two lists walks both, `repeat`
makes a text as long as asked, a regular expression scans its whole input.
Those instructions report that work here and the frame charges it on top of
the fixed cost.

The rates (milli-units; see bench/energy_calibration.py, which measures them):

    a part of a value walked      NODE_MILLI each     eq/ne on containers, text, concat and
                                                      format of containers, json_dump, the
                                                      check of what json_parse made
    an item looked at             ITEM_MILLI each     contains/index_of, sum, min, max, join, range
    a sorting step                SORT_MILLI each     n * log2(n) steps for sort, keys, values
    bytes made                    1 per BYTES_PER_MILLI  a list item counts ITEM_BYTES, a map
                                                      item MAP_ITEM_BYTES (a dict copy rehashes)
    characters scanned            SCAN_MILLI each     substring search, replace, split, upper,
                                                      regular expressions, json_parse
                                                      (a one-character needle: a sixteenth;
                                                      non-ASCII text: regex 4 each, case
                                                      mapping 4-16 each, ASCII a quarter)
    regular-expression match      MATCH_MILLI each

Why these numbers: energy is meant to bound CPU time whatever an agent runs.
The plain instructions of the cost table run about 1.1 us of CPU per energy
unit (a counting loop: 0.1 energy for a load, push, add or store, each about
0.1 us), i.e. about 1 ns per milli-unit. So a unit of work costs about as many
milli-units as it takes nanoseconds: walking one part of a value in Python
(a pop, a type test, a compare) takes 200-300 ns, a tight loop over items
50-100 ns, copying a byte a few hundredths of a ns, a regular-expression
match through the binding 3-4 us. The first calibration counted 1 milli-unit
per node and per KiB, which made library work 100-4,000x cheaper per CPU
second than plain instructions (one `eq` ran 0.45 s on 0.1 energy). With the
rates below every operation bench/energy_calibration.py measures runs within
about 3x of the plain loop's CPU per energy unit, and none more than 3x
cheaper. Where one rate covers operations of different speeds it is set by
the slowest (a search for "ab" in "aaaa..." is 100x slower per character
than one for "b"): too dear is safe, too cheap is not.

The first FREE milli-units of such work are included in every instruction's
fixed cost, so small values cost exactly what the table says.

Work done is always charged. Work an instruction announces before doing it
(`make` before allocating, `scan` before searching, `reserve`) is checked
first: if it does not fit, it is not done and not charged. Work found while
doing it (`visit` and `look` during a walk) is charged as it is done: a walk
the energy left cannot finish stops when it has used that energy up, and
that energy stays charged (`OutOfEnergy.spent`).

How it is wired: before a metered instruction the interpreter sets ``left``
to what the instruction may spend (the energy the frame has left, at most
the frame's per-instruction work limit, plus FREE); `spend` lowers it and
raises `OutOfEnergy` the moment it would go below zero. Outside a frame (the
host calling the same helpers) ``left`` is UNMETERED and spending never runs
out; the hard limits in `avm.lang.values` still bound the work. Each context
(a thread, a trio task started before the first metered instruction) gets
its own meter, through a context variable.
"""

from __future__ import annotations

from contextvars import ContextVar

UNMETERED = 1 << 62
FREE = 256  # milli-units of work every metered instruction may do within its fixed cost (about one part walked)

NODE_MILLI = 200  # a part of a value walked in Python: 200-330 ns measured
ITEM_MILLI = 40  # an item looked at in a loop of C or a short Python one: 20-100 ns measured
SORT_MILLI = 8  # one of the n * log2(n) steps of a sort: 1-7 ns measured
BYTES_PER_MILLI = 32  # bytes copied or filled: 0.01-0.05 ns a byte measured
ITEM_BYTES = 32  # what one list item counts as, in bytes made (a pointer copied and a reference taken: ~1 ns)
MAP_ITEM_BYTES = 256  # what one map item counts as (a dict copy rehashes: ~10 ns an item)
SCAN_MILLI = 1  # a character scanned: substring search 0.02-2.5 ns, RE2 1.4 ns, json.loads ~1 ns
MATCH_MILLI = 3000  # a regular-expression match found: the binding's match object takes 3-4 us


class OutOfEnergy(Exception):
    """An instruction's work would take its frame past what it may spend; ``needed``
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


# The helpers below are on the path of every metered instruction: each reads the context variable
# itself (one C call) rather than through `current()` and each other (two or three Python calls more).
_get = _CURRENT.get


def spend(milli: int) -> None:
    """Charge ``milli`` units of work the running instruction is about to do. If they
    do not fit, nothing is charged (the work is not done) and OutOfEnergy is raised."""
    try:
        m = _get()
    except LookupError:
        m = current()
    if milli > m.left:
        raise OutOfEnergy(milli - m.left)
    m.left -= milli


def spend_in_turn(first: int, then: int) -> None:
    """``spend(first)`` then ``spend(then)``, in one call: if only the first fits, it stays charged."""
    try:
        m = _get()
    except LookupError:
        m = current()
    left = m.left
    if first + then > left:
        if first > left:
            raise OutOfEnergy(first - left)
        m.left = left - first
        raise OutOfEnergy(first + then - left)
    m.left = left - first - then


def reserve(milli: int) -> None:
    """Check that ``milli`` units of work would fit, without charging them (an upper
    bound known before the work; the work done is charged after it)."""
    m = current()
    if milli > m.left:
        raise OutOfEnergy(milli - m.left)


def spent(milli: int) -> None:
    """Charge ``milli`` units of work already done. If they do not fit, all that was
    left is charged (the work was done) and OutOfEnergy is raised."""
    try:
        m = _get()
    except LookupError:
        m = current()
    if milli > m.left:
        needed = milli - m.left
        m.left = 0
        raise OutOfEnergy(needed)
    m.left -= milli


def visit(nodes: int) -> None:
    """Charge walking ``nodes`` parts of a value (already walked)."""
    spent(nodes * NODE_MILLI)


def look(items: int) -> None:
    """Charge looking at ``items`` items of a container, one by one (call before the loop)."""
    spend(items * ITEM_MILLI)


def sorting(n: int) -> None:
    """Charge sorting ``n`` items: n * log2(n) steps (call before sorting)."""
    spend(n * max(1, n.bit_length()) * SORT_MILLI)


def make(nbytes: int, extra: int = 0) -> None:
    """Charge for making a value of ``nbytes`` bytes (call before allocating it), and
    ``extra`` milli-units of other work announced with it (one announcement: all or nothing)."""
    try:
        m = _get()
    except LookupError:
        m = current()
    milli = nbytes // BYTES_PER_MILLI + extra
    if milli > m.left:
        raise OutOfEnergy(milli - m.left)
    m.left -= milli
    m.allocated += nbytes


def scan(chars: int) -> None:
    """Charge scanning ``chars`` characters (call before scanning)."""
    try:
        m = _get()
    except LookupError:
        m = current()
    milli = chars * SCAN_MILLI
    if milli > m.left:
        raise OutOfEnergy(milli - m.left)
    m.left -= milli


def affordable_nodes() -> int:
    """How many parts of a value the running instruction can still pay to walk."""
    return max(0, current().left) // NODE_MILLI
