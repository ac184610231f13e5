"""`avm.io.client.http._send`: a request's pieces reach the socket whole and in order, however the
kernel takes them (a full socket buffer takes a piece in part), written through the stdlib socket
under trio's or through trio's alone."""

from __future__ import annotations

import socket

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from avm.io.client.http import _send


async def _round_trip(pieces: list[bytes], raw: bool) -> bytes:
    a, b = trio.socket.socketpair()
    # small buffers: the writer waits for the reader, and the kernel takes pieces in part
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    got = bytearray()
    expected = sum(map(len, pieces))
    with a, b, trio.fail_after(10):  # a lost byte leaves the reader waiting: a failure, not a hang
        async with trio.open_nursery() as nursery:
            async def read() -> None:
                while len(got) < expected:
                    got.extend(await b.recv(1 + len(got) % 3000))
                    await trio.sleep(0)
            nursery.start_soon(read)
            await _send(a, a._sock if raw else None, list(pieces))
    return bytes(got)


@settings(max_examples=40, deadline=None)
@given(pieces=st.lists(st.one_of(st.just(b""), st.binary(min_size=1, max_size=64),
                                 st.integers(1, 300_000).map(lambda n: bytes([n % 251]) * n)), max_size=700),
       raw=st.booleans())
def test_every_piece_arrives_whole_and_in_order(pieces, raw):
    assert trio.run(_round_trip, pieces, raw) == b"".join(pieces)
