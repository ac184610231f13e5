"""How the pool makes TCP connections (`ConnectionPool._tcp`): the first to an origin finds its address
(trio's open_tcp_stream), the others go straight there, and an address that stops answering is found
again. Real sockets; the server is the standard library's (tests/support/http_server.py)."""

from __future__ import annotations

import math
import socket

import pytest
import trio

from avm.io.client.http import ConnectionPool, HTTPError, parse_url
from tests.support.http_server import Answer, scripted_server


async def test_concurrent_first_connections_wait_for_the_one_finding_the_address_then_go_straight_there(
        monkeypatch):
    finds = 0
    real = trio.open_tcp_stream

    async def counted(*args, **kwargs):
        nonlocal finds
        finds += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(trio, "open_tcp_stream", counted)  # the pool calls it as trio.open_tcp_stream
    responses = []
    with scripted_server(lambda r: Answer(body=b"ok", delay=0.3)) as url:  # all 60 in flight at once
        origin, target = parse_url(url + "/x")
        pool = ConnectionPool(max_connections=100)

        async def one() -> None:
            responses.append(await pool.request(origin, b"GET", target.encode(), []))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(60):
                    nursery.start_soon(one)
        await pool.aclose()
    assert [r.status for r in responses] == [200] * 60 and all(r.body == b"ok" for r in responses)
    assert pool.opened == 60 and finds == 1  # one found the address; 59 connected to it directly
    assert pool._hosts[origin].peer[1][1] == origin.port


async def test_an_address_that_stops_answering_is_forgotten_and_found_again():
    with scripted_server(lambda r: Answer(body=b"ok")) as url:
        origin, target = parse_url(url + "/x")
        pool = ConnectionPool()
        assert (await pool.request(origin, b"GET", target.encode(), [])).status == 200
        host = pool._hosts[origin]
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()
        closed.close()  # nothing listens there now: a connect is refused
        host.peer = (socket.AF_INET, dead)
        while host.idle:  # the next request needs a new connection
            pool._drop(host, host.idle.pop())
        response = await pool.request(origin, b"GET", target.encode(), [])
        assert response.status == 200 and response.body == b"ok"
        assert host.peer is not None and host.peer[1] == ("127.0.0.1", origin.port)  # found again
        await pool.aclose()


async def test_a_kept_alive_connection_that_closes_unanswered_is_sent_on_again_on_a_new_one():
    """The server reads a request on a kept-alive connection and closes it without a byte: a body the
    pool may keep (not ``consume``) goes again on a new connection, and every slot comes back."""
    answers = iter([Answer(body=b"first"), Answer(drop=True), Answer(body=b"again")])
    seen: list = []
    with scripted_server(lambda r: next(answers), seen=seen) as url:
        origin, target = parse_url(url + "/x")
        pool = ConnectionPool(max_connections=4)
        for expected in (b"first", b"again"):
            response = await pool.request(origin, b"POST", target.encode(), [], (b"{", b"}"))
            assert response.status == 200 and response.body == expected
        host = pool._hosts[origin]
        assert pool.reconnects == 1 and pool.opened == 2 and host.slots.value == 4
        await pool.aclose()
    assert [r.body for r in seen] == [b"{}"] * 3


async def test_a_request_past_its_deadline_fails_closes_its_connection_and_gives_its_slot_back():
    """The usual request (a kept-alive connection) waits for its response with no cancel scope: the pool's
    readiness wakes it at its deadline."""
    answers = iter([Answer(body=b"first"), Answer(body=b"late", delay=3.0), Answer(body=b"next")])
    with scripted_server(lambda r: next(answers)) as url:
        origin, target = parse_url(url + "/x")
        pool = ConnectionPool(max_connections=4)
        response = await pool.request(origin, b"POST", target.encode(), [], (b"{", b"}"))
        assert response.body == b"first" and len(pool._hosts[origin].idle) == 1
        start = trio.current_time()
        with pytest.raises(HTTPError) as info:
            await pool.request(origin, b"POST", target.encode(), [], [b"{", b"}"], consume=True,
                               deadline=start + 0.2)
        assert info.value.kind == "deadline" and 0.2 <= trio.current_time() - start < 1.5
        host = pool._hosts[origin]
        assert pool.open == 0 and host.slots.value == 4 and pool._readiness._waiters == {}
        response = await pool.request(origin, b"POST", target.encode(), [], (b"{", b"}"), deadline=math.inf)
        assert response.body == b"next"
        await pool.aclose()
