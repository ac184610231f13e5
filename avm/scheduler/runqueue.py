"""The CPU run queue: who runs the next energy quantum.

trio runs every ready task in turn; that is enough while agents spend their
time waiting on LLMs. An agent that runs a long stretch of instructions
without an effect is preempted after an energy quantum (`Frame.run(quantum)`)
and must then wait here for its next turn. One dispatcher task hands out
turns, one per trio scheduling round, in key order, the key being
``enqueued_at + rank * aging_s`` (rank 0 interactive, 1 normal, 2
background): interactive work goes first, and a background agent that has
waited ``2 * aging_s`` ranks with a fresh interactive one, so nothing starves.
Between two turns every task that became ready (timers, replies, messages)
runs, so one busy agent delays the others by about one quantum.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any

import outcome
import trio
from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled


class RunQueue:
    def __init__(self, aging_s: float = 0.05):
        if not (isinstance(aging_s, (int, float)) and aging_s > 0 and math.isfinite(aging_s)):
            raise ValueError(f"aging_s must be a positive number of seconds, not {aging_s!r}")
        self.aging_s = float(aging_s)
        self._heap: list[list[Any]] = []  # [key, seq, task or None when abandoned]
        self._seq = itertools.count()
        self._dispatcher: trio.lowlevel.Task | None = None  # parked when the heap is empty
        self.turns = 0  # turns handed out
        self.waits = 0  # preempted agents that queued

    def __len__(self) -> int:
        return sum(1 for entry in self._heap if entry[2] is not None)

    async def wait_turn(self, rank: int) -> None:
        """Queue the current task for its next quantum and wait for the turn."""
        entry = [trio.current_time() + rank * self.aging_s, next(self._seq), current_task()]
        heapq.heappush(self._heap, entry)
        self.waits += 1
        dispatcher = self._dispatcher
        if dispatcher is not None:
            self._dispatcher = None
            reschedule(dispatcher)

        def abort(_: Any) -> Abort:
            entry[2] = None  # cancelled while queued: the dispatcher skips it
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    async def dispatch(self) -> None:
        """Hand out turns until cancelled (run by the VM in its nursery)."""
        heap = self._heap
        while True:
            while not heap:
                self._dispatcher = current_task()

                def abort(_: Any) -> Abort:
                    self._dispatcher = None
                    return Abort.SUCCEEDED

                await wait_task_rescheduled(abort)
            task = heapq.heappop(heap)[2]
            if task is not None:
                self.turns += 1
                reschedule(task, outcome.Value(None))
                # Let the granted agent run its quantum (and everything else that is ready) before the next turn.
                await trio.lowlevel.checkpoint()
