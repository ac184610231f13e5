"""`Readiness`: many tasks wait for their sockets through one epoll of its own (real socket pairs)."""

from __future__ import annotations

import math
import select
import socket
import sys

import pytest
import trio

from avm.io.client.readiness import Readiness, _Park


async def wait_for(readiness: Readiness, sock: socket.socket) -> None:
    await readiness.wait(sock)


async def test_each_waiter_wakes_when_its_own_socket_is_readable_and_not_before():
    readiness = Readiness()
    pairs = [socket.socketpair() for _ in range(50)]
    woken: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            for i, (a, _) in enumerate(pairs):
                async def wait(i: int = i, a: socket.socket = a) -> None:
                    await readiness.wait(a)
                    woken.append(i)
                nursery.start_soon(wait)
            await trio.sleep(0.05)
            assert woken == []
            for i in (7, 3, 41):
                pairs[i][1].send(b"x")
            with trio.fail_after(5):
                while len(woken) < 3:
                    await trio.sleep(0.01)
            assert sorted(woken) == [3, 7, 41]
            for _, b in pairs:
                b.send(b"y")
        assert sorted(woken) == list(range(50))
        for i in (3, 7):  # a socket waited for again (one-shot registration, armed again)
            pairs[i][0].recv(10)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for, readiness, pairs[3][0])
                await trio.sleep(0.05)
                pairs[3][1].send(b"z")
    finally:
        readiness.close()
        for a, b in pairs:
            a.close()
            b.close()


async def test_a_cancelled_wait_leaves_no_waiter_and_a_second_waiter_on_one_socket_is_refused():
    readiness = Readiness()
    a, b = socket.socketpair()
    with a, b:
        with trio.move_on_after(0.05) as scope:
            await readiness.wait(a)
        assert scope.cancelled_caught and readiness._waiters == {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for, readiness, a)
            await trio.sleep(0.02)
            with pytest.raises(trio.BusyResourceError):
                await readiness.wait(a)
            b.send(b"x")
        readiness.close()


async def test_close_lets_requests_in_flight_finish_then_stops_and_a_later_wait_starts_again():
    readiness = Readiness()
    a, b = socket.socketpair()
    with a, b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for, readiness, a)
            await trio.sleep(0.02)
            readiness.close()  # a request is in flight: it is answered all the same
            await trio.sleep(0.02)
            b.send(b"x")
        await trio.sleep(0.02)
        assert readiness._epoll is None  # stopped once nobody waited
        a.recv(1)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for, readiness, a)
                await trio.sleep(0.02)
                b.send(b"y")
        readiness.close()


@pytest.mark.skipif(not hasattr(select, "epoll"), reason="trio's wait_readable where there is no epoll")
async def test_a_waiting_task_parks_on_one_small_object_and_is_resumed_with_the_value_or_the_cancellation():
    """A wait is a `_Park` (no coroutine frames of its own, see the module): trio resumes it with a value
    when the socket is readable, or raises Cancelled in the waiting task (and drops the waiter)."""
    readiness = Readiness()
    a, b = socket.socketpair()
    with a, b:
        park = readiness.wait(a)
        assert type(park) is _Park and sys.getsizeof(park) < 100
        b.send(b"x")
        with trio.fail_after(5):
            assert await park is None
        a.recv(1)
        cancelled = False
        async with trio.open_nursery() as nursery:
            async def waiter() -> None:
                nonlocal cancelled
                try:
                    await readiness.wait(a)
                except trio.Cancelled:
                    cancelled = True
                    raise
            nursery.start_soon(waiter)
            await trio.sleep(0.02)
            assert len(readiness._waiters) == 1
            nursery.cancel_scope.cancel()
        assert cancelled and readiness._waiters == {}
        readiness.close()


class _Late(Exception):
    pass


async def test_a_wait_past_its_deadline_raises_what_late_makes_and_leaves_no_waiter_and_others_wait_on():
    readiness = Readiness(late=lambda: _Late("too late"))
    pairs = [socket.socketpair() for _ in range(3)]
    results: dict[int, str] = {}
    try:
        async def wait(i: int, deadline: float) -> None:
            try:
                await readiness.wait(pairs[i][0], deadline)
                results[i] = "readable"
            except _Late:
                results[i] = "late"
        now = trio.current_time()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait, 0, now + 10)  # woken by its socket long before its deadline
                nursery.start_soon(wait, 1, now + 0.1)
                nursery.start_soon(wait, 2, math.inf)  # no deadline
                await trio.sleep(0.02)
                pairs[0][1].send(b"x")
                await trio.sleep(0.3)
                assert results == {0: "readable", 1: "late"}
                assert set(readiness._waiters) == {pairs[2][0].fileno()}
                pairs[2][1].send(b"x")
        assert results == {0: "readable", 1: "late", 2: "readable"}
        assert trio.current_time() - now < 1
    finally:
        readiness.close()
        for a, b in pairs:
            a.close()
            b.close()


async def test_an_earlier_deadline_given_while_the_readiness_task_waits_is_kept():
    """The system task waits until the first deadline it knew of; a wait that comes later with an earlier
    deadline moves that up."""
    readiness = Readiness(late=lambda: _Late("too late"))
    (a, b), (c, d) = socket.socketpair(), socket.socketpair()
    with a, b, c, d:
        now = trio.current_time()
        late_at: list[float] = []
        async def wait(sock: socket.socket, deadline: float) -> None:
            with pytest.raises(_Late):
                await readiness.wait(sock, deadline)
            late_at.append(trio.current_time() - now)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait, a, now + 3)
                await trio.sleep(0.05)
                nursery.start_soon(wait, c, now + 0.2)
                await trio.sleep(0.5)
                assert len(late_at) == 1 and 0.2 <= late_at[0] < 0.5
                nursery.cancel_scope.cancel()
        readiness.close()


async def test_woken_waits_do_not_pile_up_in_the_deadline_heap():
    readiness = Readiness(late=lambda: _Late("too late"))
    a, b = socket.socketpair()
    with a, b:
        far = trio.current_time() + 600
        for _ in range(1000):
            b.send(b"x")
            with trio.fail_after(5):
                await readiness.wait(a, far)
            a.recv(1)
        assert len(readiness._deadlines) <= 2 * len(readiness._waiters) + 65
        readiness.close()


async def test_close_with_an_error_wakes_every_waiter_with_it_now():
    readiness = Readiness()
    pairs = [socket.socketpair() for _ in range(3)]
    errors: list[BaseException] = []
    try:
        async def wait(sock: socket.socket) -> None:
            try:
                await readiness.wait(sock, trio.current_time() + 60)
            except _Late as exc:
                errors.append(exc)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for a, _ in pairs:
                    nursery.start_soon(wait, a)
                await trio.sleep(0.05)
                readiness.close(lambda: _Late("closed"))
        assert len(errors) == 3 and len({id(e) for e in errors}) == 3 and readiness._waiters == {}
        await trio.sleep(0.02)
        assert readiness._epoll is None
    finally:
        for a, b in pairs:
            a.close()
            b.close()


async def test_a_wait_right_after_close_is_served_by_a_new_task_not_lost_with_the_old_epoll():
    """close() ends the system task, which closes its epoll when it runs again: a wait made before that
    must not register there (found by review: it was woken neither by its socket nor by its deadline)."""
    readiness = Readiness(late=lambda: _Late("too late"))
    (a, b), (c, d) = socket.socketpair(), socket.socketpair()
    with a, b, c, d:
        got: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            async def first() -> None:
                with pytest.raises(_Late):
                    await readiness.wait(a)
            nursery.start_soon(first)
            await trio.sleep(0.05)
            readiness.close(lambda: _Late("closed"))  # what ConnectionPool.aclose does

            async def writer() -> None:
                await trio.sleep(0.1)
                d.send(b"x")
            nursery.start_soon(writer)
            with trio.fail_after(2):
                await readiness.wait(c, trio.current_time() + 0.5)
                got["second"] = "readable"
            with trio.fail_after(2):
                with pytest.raises(_Late):
                    await readiness.wait(a, trio.current_time() + 0.1)  # its deadline works too
        assert got == {"second": "readable"}
        readiness.close()
