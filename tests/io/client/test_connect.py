"""How the pool makes TCP connections (`ConnectionPool._tcp`): the first to an origin finds its address
(trio's open_tcp_stream), the others go straight there, and an address that stops answering is found
again. Real sockets, a plain HTTP/1.1 server written here."""

from __future__ import annotations

import functools
import socket

import trio

from avm.io.client.http import ConnectionPool, parse_url


async def serve(nursery: trio.Nursery, gate: trio.Event | None = None) -> int:
    """Answers every request on a connection with 200 "ok" (after ``gate`` is set, if given)."""

    async def handle(stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                buffer = buffer[length:]
                if gate is not None:
                    await gate.wait()
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def test_concurrent_first_connections_wait_for_the_one_finding_the_address_then_go_straight_there(nursery, monkeypatch):
    gate = trio.Event()
    port = await serve(nursery, gate)
    origin, target = parse_url(f"http://localhost:{port}/x")
    pool = ConnectionPool(max_connections=100)
    finds = 0
    real = trio.open_tcp_stream

    async def counted(*args, **kwargs):
        nonlocal finds
        finds += 1
        return await real(*args, **kwargs)

    responses = []

    async def one() -> None:
        responses.append(await pool.request(origin, b"GET", target.encode(), []))

    monkeypatch.setattr(trio, "open_tcp_stream", counted)  # the pool calls it as trio.open_tcp_stream
    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            for _ in range(60):
                inner.start_soon(one)
            await trio.sleep(0.2)
            gate.set()
    assert [r.status for r in responses] == [200] * 60 and all(r.body == b"ok" for r in responses)
    assert finds == 1  # one found the address; 59 connected to it directly
    host = pool._hosts[origin]
    assert host.peer is not None and host.peer[1][1] == port
    await pool.aclose()


async def test_an_address_that_stops_answering_is_forgotten_and_found_again(nursery):
    port = await serve(nursery)
    origin, target = parse_url(f"http://127.0.0.1:{port}/x")
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
    assert host.peer is not None and host.peer[1] == ("127.0.0.1", port)  # found again
    await pool.aclose()
