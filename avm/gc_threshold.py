"""Raising the cyclic GC's young threshold for a while, and putting it back.

A process that makes and drops objects by the million (a fleet of agents, a server answering it)
frees nearly all of them by reference counting before a collection would look at them; at
Python's default (a collection of the youngest generation every 700 allocations) the collections
themselves cost a fifth of the CPU (measured in `avm.runtime` and `avm.io.embedded.server`). The
threshold is the process's: `raise_young` raises it (never lowers it) and `restore` puts the old
one back unless someone changed it meanwhile.
"""

from __future__ import annotations

import gc

__all__ = ["Raised", "raise_young", "restore"]

Raised = tuple[tuple[int, ...], tuple[int, ...]]  # (the thresholds before, the thresholds set)


def raise_young(young: int) -> Raised | None:
    """Collect the youngest generation after ``young`` allocations; what `restore` needs, or None if the
    threshold was left alone (``young`` is 0 or not higher, or collection is off)."""
    before = gc.get_threshold()
    if not young or not before[0] or young <= before[0]:
        return None
    gc.set_threshold(young, *before[1:])
    return before, gc.get_threshold()


def restore(raised: Raised | None) -> None:
    """Put back what `raise_young` changed, unless the thresholds were changed since (by the host, or by
    another user of this module)."""
    if raised is not None:
        before, now = raised
        if gc.get_threshold() == now:
            gc.set_threshold(*before)
