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
"""

from __future__ import annotations

import select
from collections.abc import Awaitable
from typing import Any

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

    __slots__ = ("_fd", "_readiness")

    def __init__(self, readiness: Readiness, fd: int) -> None:
        self._readiness = readiness
        self._fd = fd

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
        if readiness._closing and not waiters:
            readiness._stop()
        return _SUCCEEDED


class Readiness:
    """``await readiness.wait(sock)`` returns once ``sock`` (anything with ``fileno()``) is readable."""

    __slots__ = ("_closing", "_epoll", "_scope", "_waiters")

    def __init__(self) -> None:
        self._epoll: Any = None  # made on the first wait, in the trio run that waits
        self._scope: trio.CancelScope | None = None
        self._waiters: dict[int, Any] = {}  # fd -> the task waiting for it
        self._closing = False

    def wait(self, sock: Any) -> Awaitable[None]:
        """What to await until ``sock`` is readable (a `_Park`: the waiting request keeps no frame of ours)."""
        epoll = self._epoll
        if epoll is None:
            if _EPOLL is None:
                return trio.lowlevel.wait_readable(sock)
            epoll = self._start()
        fd = sock.fileno()
        waiters = self._waiters
        if fd in waiters:
            raise trio.BusyResourceError("another task is already reading this socket")
        try:
            epoll.modify(fd, _IN_ONCE)
        except FileNotFoundError:  # not registered yet (or it was closed, and its number is new again)
            epoll.register(fd, _IN_ONCE)
        waiters[fd] = trio.lowlevel.current_task()
        park = _Park(self, fd)
        if _Parking is None:  # pragma: no cover - see the import
            return trio.lowlevel.wait_task_rescheduled(park)
        return park

    def _start(self) -> Any:
        epoll = self._epoll = _EPOLL()
        self._closing = False
        self._scope = trio.CancelScope()
        trio.lowlevel.spawn_system_task(self._run, epoll, self._scope, name="avm http readiness")
        return epoll

    async def _run(self, epoll: Any, scope: trio.CancelScope) -> None:
        waiters = self._waiters
        reschedule = trio.lowlevel.reschedule
        try:
            with scope:
                while True:
                    await trio.lowlevel.wait_readable(epoll)
                    for fd, _ in epoll.poll(0):
                        task = waiters.pop(fd, None)
                        if task is not None:
                            reschedule(task)
                    if self._closing and not waiters:
                        break
        finally:
            if self._epoll is epoll:
                self._epoll = None
            epoll.close()

    def _stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    def close(self) -> None:
        """Stop once no task waits (the requests in flight finish first); a later wait starts again."""
        self._closing = True
        if not self._waiters:
            self._stop()
