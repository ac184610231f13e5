"""Waiting for many sockets to become readable, at little cost per waiting request.

A fleet's requests spend nearly all their life waiting for the first byte of a reply. trio's
``wait_readable`` costs a chain of four coroutines, a closure and a registration record per wait
(about 1.5 KB; a tenth of what a 10,000-agent fleet held per agent). `Readiness` keeps an epoll set
of its own, which one system task waits on through trio, and a waiting request parks its task on
a `_Park`: one small object that is at once the awaitable (it yields trio's own parking message,
as ``trio.lowlevel.wait_task_rescheduled`` does, without that function's two coroutine frames, the
message and the closure it keeps: ~0.9 KB less per waiting request) and the abort function, plus
an entry in a dict. The task is woken with ``trio.lowlevel.reschedule`` when its socket is
readable. It keeps trio's semantics: one waiter per socket, one-shot registration
(``EPOLLONESHOT``, as trio's own epoll manager uses, see trio/_core/_io_epoll.py), cancellation
removes the waiter. Where there is no epoll (not Linux), it is trio's ``wait_readable``.

A wait may have a deadline (trio time): past it, the waiter is woken with the exception ``late()``
makes. This is what bounds a request's attempt, so that a waiting request needs no cancel scope of
its own (one costs ~0.9 KB while it lives: the scope, its status with two sets, entries in trio's
deadline heap). The deadlines are a heap of parks, woken ones left in it until they come out or the
heap is rebuilt without them (when it holds twice as many as wait). `close(error)` wakes every
waiter with ``error``.
"""

from __future__ import annotations

import math
import select
from collections.abc import Awaitable, Callable
from heapq import heapify, heappop, heappush
from typing import Any

import outcome
import trio

__all__ = ["Readiness"]

_EPOLL = getattr(select, "epoll", None)
_IN_ONCE = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLONESHOT", 0)
_SUCCEEDED = trio.lowlevel.Abort.SUCCEEDED

_Parking: Any
try:  # trio's parking message: what ``wait_task_rescheduled`` yields to the run loop (trio/_core/_traps.py;
    from trio._core._traps import WaitTaskRescheduled as _Parking  # the loop checks ``type(msg) is`` it)
except ImportError:  # pragma: no cover - a trio that moved it: park through its public function
    _Parking = None


class _Park:
    """``await``-able: parks the current task until `Readiness` reschedules it; trio's abort function too."""

    __slots__ = ("_fd", "_readiness", "deadline", "task")

    def __init__(self, readiness: Readiness, fd: int, task: Any, deadline: float) -> None:
        self._readiness = readiness
        self._fd = fd  # -1 once it no longer waits
        self.task = task
        self.deadline = deadline

    def __lt__(self, other: _Park) -> bool:  # the deadline heap's order
        return self.deadline < other.deadline

    def __await__(self) -> Any:  # an iterator: itself
        return self

    def __next__(self) -> Any:
        return _Parking(self)  # trio keeps ``self`` as the task's abort function

    def send(self, resumed: Any) -> None:
        # trio resumes a parked task with an Outcome: its value ends the await, or its error is raised here
        raise StopIteration(resumed.unwrap())

    def throw(self, kind: Any, value: Any = None, _tb: Any = None) -> None:
        raise kind if value is None else value

    def __call__(self, _raise_cancel: Any) -> trio.lowlevel.Abort:  # cancelled while parked
        readiness = self._readiness
        waiters = readiness._waiters
        del waiters[self._fd]
        self._fd = -1
        self.task = None
        if readiness._closing and not waiters:
            readiness._stop()
        return _SUCCEEDED


class Readiness:
    """``await readiness.wait(sock)`` returns once ``sock`` (anything with ``fileno()``) is readable;
    ``late()`` makes what a wait past its deadline raises."""

    __slots__ = ("_closing", "_deadlines", "_epoll", "_scope", "_timer", "_waiters", "late")

    def __init__(self, late: Callable[[], BaseException] = trio.TooSlowError) -> None:
        self._epoll: Any = None  # made on the first wait, in the trio run that waits
        self._scope: trio.CancelScope | None = None
        self._timer: trio.CancelScope | None = None  # what ends the system task's wait at the first deadline
        self._waiters: dict[int, _Park] = {}  # fd -> the park of the task waiting for it
        self._deadlines: list[_Park] = []  # a heap; parks that no longer wait are left in it
        self._closing = False
        self.late = late

    def wait(self, sock: Any, deadline: float = math.inf) -> Awaitable[None]:
        """What to await until ``sock`` is readable (a `_Park`: the waiting request keeps no frame of ours);
        past ``deadline`` (trio time), it raises ``late()``."""
        epoll = self._epoll
        if epoll is None:
            if _EPOLL is None:
                return self._wait_readable(sock, deadline)
            epoll = self._start()
        fd = sock.fileno()
        waiters = self._waiters
        if fd in waiters:
            raise trio.BusyResourceError("another task is already reading this socket")
        try:
            epoll.modify(fd, _IN_ONCE)
        except FileNotFoundError:  # not registered yet (or it was closed, and its number is new again)
            epoll.register(fd, _IN_ONCE)
        park = waiters[fd] = _Park(self, fd, trio.lowlevel.current_task(), deadline)
        if deadline != math.inf:
            heap = self._deadlines
            if len(heap) > 2 * len(waiters) + 64:
                self._prune()
            heappush(heap, park)
            timer = self._timer
            if timer is not None and deadline < timer.deadline:
                timer.deadline = deadline
        if _Parking is None:  # pragma: no cover - see the import
            return trio.lowlevel.wait_task_rescheduled(park)
        return park

    async def _wait_readable(self, sock: Any, deadline: float) -> None:
        """`wait` where there is no epoll: trio's own."""
        with trio.move_on_at(deadline) as scope:
            await trio.lowlevel.wait_readable(sock)
        if scope.cancelled_caught:
            raise self.late()

    def _start(self) -> Any:
        assert _EPOLL is not None  # `wait` starts the loop only where there is epoll
        epoll = self._epoll = _EPOLL()
        self._closing = False
        self._scope = trio.CancelScope()
        trio.lowlevel.spawn_system_task(self._run, epoll, self._scope, name="avm http readiness")
        return epoll

    async def _run(self, epoll: Any, scope: trio.CancelScope) -> None:
        waiters = self._waiters
        reschedule = trio.lowlevel.reschedule
        heap = self._deadlines
        timer = None
        try:
            with scope:
                while True:
                    with trio.CancelScope(deadline=heap[0].deadline if heap else math.inf) as timer:
                        self._timer = timer
                        await trio.lowlevel.wait_readable(epoll)
                    if self._timer is timer:
                        self._timer = None
                    for fd, _ in epoll.poll(0):
                        park = waiters.pop(fd, None)
                        if park is not None:
                            park._fd = -1
                            reschedule(park.task)
                            park.task = None
                    if heap and heap[0].deadline <= trio.current_time():
                        self._expire()
                    if self._closing and not waiters:
                        break
        finally:
            if timer is not None and self._timer is timer:  # (a new task may have its own by now)
                self._timer = None
            if self._epoll is epoll:
                self._epoll = None
            epoll.close()

    def _expire(self) -> None:
        """Wake the waiters past their deadline with ``late()``; let go of the parks that no longer wait."""
        heap = self._deadlines
        waiters = self._waiters
        now = trio.current_time()
        while heap and heap[0].deadline <= now:
            park = heappop(heap)
            if park._fd >= 0:
                del waiters[park._fd]
                park._fd = -1
                trio.lowlevel.reschedule(park.task, outcome.Error(self.late()))
                park.task = None

    def _prune(self) -> None:
        """The deadline heap without the parks that no longer wait (more than half of it, when called)."""
        heap = self._deadlines
        heap[:] = [park for park in heap if park._fd >= 0]
        heapify(heap)

    def _stop(self) -> None:
        """End the system task (no task waits); a wait from now on starts a new one with an epoll of its own
        (one made now would be lost: the ending task closes its epoll once it runs again)."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        self._epoll = None
        self._timer = None

    def close(self, error: Callable[[], BaseException] | None = None) -> None:
        """Stop once no task waits; with ``error``, every waiter is woken now with the exception it makes
        (else the requests in flight finish first). A later wait starts again."""
        self._closing = True
        waiters = self._waiters
        if error is not None:
            for park in waiters.values():
                park._fd = -1
                trio.lowlevel.reschedule(park.task, outcome.Error(error()))
                park.task = None
            waiters.clear()
            self._deadlines.clear()
        if not waiters:
            self._stop()
