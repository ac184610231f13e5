"""`Readiness`: many tasks wait for their sockets through one epoll of its own (real socket pairs)."""

from __future__ import annotations

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
