"""The embedded server under connections that never finish: timeouts and a connection cap, on real sockets."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from avm.io.embedded.faults import LLMServerError, ServerSettings
from avm.io.embedded.server import serve_llm

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    got = b""
    while data := await stream.receive_some(65536):
        got += data
    return got


async def _wait_for(predicate, seconds: float = 60.0) -> None:
    with trio.fail_after(seconds):  # a hang guard
        while not predicate():
            await trio.sleep(0.01)


async def test_slow_loris_connections_get_a_408_and_are_closed():
    async with serve_llm(header_timeout_s=0.5, body_timeout_s=0.5, idle_timeout_s=0.5) as server:
        answers: dict[str, list[bytes]] = {"header": [], "body": [], "idle": []}

        async def drip_headers() -> None:  # a header line never ends: one byte at a time
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(HEAD)
            async with trio.open_nursery() as nursery:
                async def drip() -> None:
                    for _ in range(100):  # 10 s at most: far past the header timeout
                        try:
                            await stream.send_all(b"x")
                        except trio.BrokenResourceError:  # the server closed: the answer was read already
                            return
                        await trio.sleep(0.1)
                nursery.start_soon(drip)
                answers["header"].append(await _read_until_closed(stream))
                nursery.cancel_scope.cancel()
            await stream.aclose()

        async def stall_body() -> None:  # headers announce 100 bytes, 10 come
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(HEAD + b"content-length: 100\r\n\r\n" + b"{" * 10)
            answers["body"].append(await _read_until_closed(stream))
            await stream.aclose()

        async def say_nothing() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            answers["idle"].append(await _read_until_closed(stream))
            await stream.aclose()

        with trio.fail_after(60):  # a hang guard
            async with trio.open_nursery() as nursery:
                for _ in range(30):
                    nursery.start_soon(drip_headers)
                    nursery.start_soon(stall_body)
                    nursery.start_soon(say_nothing)
        for kind in ("header", "body"):
            assert len(answers[kind]) == 30
            for raw in answers[kind]:
                head, _, body = raw.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head
                assert json.loads(body)["error"]["code"] == "request_timeout"
        assert answers["idle"] == [b""] * 30  # an unused connection is closed without a word
        stats = server.statistics()
        assert stats.timeouts == {"header": 30, "body": 30, "idle": 30}
        assert stats.connections_open == 0 and stats.requests == 0
        async with httpx.AsyncClient(base_url=server.url) as client:  # and the server still serves
            assert (await client.get("/models")).status_code == 200


async def test_a_request_that_keeps_coming_is_not_cut_off(autojump_clock):
    """The body timeout is between reads, as nginx's client_body_timeout: a slow but steady body arrives.

    On trio's autojump clock: the pauses of 0.15 s stay shorter than the 0.3 s timeout however
    loaded the machine (in real time a stalled test process could look like a stalled client)."""
    body = json.dumps({"messages": [{"role": "user", "content": "hello " * 20}]}).encode()
    async with serve_llm(body_timeout_s=0.3) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(HEAD + b"content-length: %d\r\n\r\n" % len(body))
        with trio.fail_after(10):
            for i in range(0, len(body), len(body) // 6 + 1):
                await trio.sleep(0.15)
                await stream.send_all(body[i:i + len(body) // 6 + 1])
            got = b""
            while b"\r\n\r\n" not in got:
                got += await stream.receive_some(65536)
        assert got.startswith(b"HTTP/1.1 200 ")
        await stream.aclose()


async def test_past_the_connection_cap_a_request_gets_a_clear_503():
    async with serve_llm(max_connections=20, idle_timeout_s=30) as server:
        assert server.max_connections == 20
        idle = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(20)]
        await _wait_for(lambda: server.statistics().connections_open == 20)
        async with httpx.AsyncClient(base_url=server.url) as client:
            with trio.fail_after(60):  # an answer, not a hang (a hang guard)
                refused = await client.post("/chat/completions", json={"messages": [{"role": "user",
                                                                                      "content": "hi"}]})
            assert refused.status_code == 503 and refused.headers["connection"] == "close"
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "too_many_connections"
            assert "20 connections" in refused.json()["error"]["message"]
            await idle.pop().aclose()
            await _wait_for(lambda: server.statistics().connections_open == 19)
            with trio.fail_after(60):
                assert (await client.get("/models")).status_code == 200
            stats = server.statistics()
            assert stats.connections_refused == 1 and stats.connections_open == 20  # 19 idle + this client's
        for stream in idle:
            await stream.aclose()


def test_the_defaults_are_a_real_servers_and_bad_values_are_refused():
    settings = ServerSettings()
    assert (settings.idle_timeout_s, settings.header_timeout_s, settings.body_timeout_s) == (75.0, 60.0, 60.0)
    assert settings.max_connections is None
    for bad in ({"header_timeout_s": 0}, {"body_timeout_s": float("inf")}, {"idle_timeout_s": -1},
                {"max_connections": 0}, {"max_connections": True}, {"header_timeout_s": "5"}):
        with pytest.raises(LLMServerError):
            ServerSettings(**bad)
    ServerSettings(idle_timeout_s=None, header_timeout_s=None, body_timeout_s=None, max_connections=5)
