"""Bounded per-agent mailboxes.

A mailbox is a deque of VM values with a capacity. One task (its agent) takes
from it; any number of senders put into it. A receiver with nothing to take
parks its task directly (`trio.lowlevel.wait_task_rescheduled`) and a sender
hands the message straight to it, so an idle agent costs no Event, no
channel and no extra task. A sender that finds the mailbox full waits (up to
its deadline) for space: backpressure rather than unbounded memory.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import outcome
import trio
from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled

DEFAULT_CAPACITY = 1024


class Mailbox:
    __slots__ = ("capacity", "items", "receiver", "senders")

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if type(capacity) is not int or capacity < 1:
            raise ValueError(f"a mailbox capacity is a positive int, not {capacity!r}")
        self.capacity = capacity
        self.items: deque[Any] | None = None  # created on the first queued message
        self.receiver: trio.lowlevel.Task | None = None
        self.senders: trio.lowlevel.ParkingLot | None = None  # created when someone waits for space

    def __len__(self) -> int:
        return len(self.items) if self.items else 0

    def offer(self, message: Any) -> bool:
        """Deliver without waiting: to the parked receiver, or into the queue; False if full."""
        receiver = self.receiver
        if receiver is not None:
            self.receiver = None
            reschedule(receiver, outcome.Value(message))
            return True
        items = self.items
        if items is None:
            items = self.items = deque()
        elif len(items) >= self.capacity:
            return False
        items.append(message)
        return True

    async def put(self, message: Any, deadline: float = math.inf) -> bool:
        """Deliver, waiting for space until ``deadline``; False if it never came."""
        while not self.offer(message):
            if self.senders is None:
                self.senders = trio.lowlevel.ParkingLot()
            with trio.move_on_at(deadline):
                await self.senders.park()
                continue
            return False
        return True

    def take(self) -> tuple[bool, Any]:
        """(True, the oldest message) or (False, None) when empty."""
        items = self.items
        if not items:
            return False, None
        message = items.popleft()
        if not items:
            self.items = None
        if self.senders is not None and self.senders:
            self.senders.unpark()
        return True, message

    async def receive(self, deadline: float = math.inf) -> tuple[bool, Any]:
        """Take a message, parking until one arrives or ``deadline`` passes; (False, None) if none came."""
        found, message = self.take()
        if found:
            await trio.lowlevel.checkpoint()  # every receive is a checkpoint, as in trio's channels
            return found, message
        if self.receiver is not None:
            raise RuntimeError("two tasks receive from one mailbox")  # pragma: no cover - the runtime prevents it
        if deadline == math.inf:  # no cancel scope: an idle agent parked forever costs less
            return True, await self._park()
        with trio.move_on_at(deadline):
            return True, await self._park()
        return self.take()  # a sender may have queued a message as the deadline fired

    async def _park(self) -> Any:
        self.receiver = current_task()

        def abort(_: Any) -> Abort:
            self.receiver = None
            return Abort.SUCCEEDED

        return await wait_task_rescheduled(abort)

    def drain(self) -> list[Any]:
        """Every queued message (used when an agent ends)."""
        items = list(self.items or ())
        self.items = None
        if self.senders is not None:
            self.senders.unpark_all()
        return items
