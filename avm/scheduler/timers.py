"""Deadlines of tasks that do not exist: hibernated agents waiting in ``recv``
with a timeout.

A hibernated agent has no trio task to sleep in, so its recv deadline goes
into one heap watched by one task: at the deadline the callback wakes the
agent (which then gets null, as any recv that timed out). Entries are
cancelled lazily (a message that arrived first wakes the agent, and the
callback then finds it no longer hibernated).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import trio


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], Any]]] = []
        self._seq = itertools.count()
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, deadline: float, callback: Callable[[], Any]) -> None:
        if math.isinf(deadline):
            return
        earliest = self._heap[0][0] if self._heap else math.inf
        heapq.heappush(self._heap, (deadline, next(self._seq), callback))
        if deadline < earliest:
            self._changed.set()

    async def run(self) -> None:
        """Fire callbacks at their deadlines until cancelled."""
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2]()
            self._changed = trio.Event()
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await self._changed.wait()
