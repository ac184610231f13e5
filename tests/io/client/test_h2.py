"""HTTP/2 through AVM's pool, against a real HTTP/2 server AVM did not write (hypercorn, in the test's trio loop).

hypercorn serves a tiny ASGI app over TLS with a certificate from a CA made
by trustme; the pool trusts that CA through its ``ssl_context``. The server
runs in pytest-trio's ``nursery`` fixture, which is cancelled when the test
ends, so every server stops by itself.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import pytest
import trio

pytest.importorskip("h2")
trustme = pytest.importorskip("trustme")
hypercorn_trio = pytest.importorskip("hypercorn.trio")
from hypercorn.config import Config  # noqa: E402

from avm.io.client.http import ConnectionPool, HTTPError, parse_url  # noqa: E402
from avm.io.client.openai import OpenAIBackend  # noqa: E402

HEAD = b'{"model":"m","messages":['
CONV = b'{"role":"user","content":"hi"}'
JSON = [(b"content-type", b"application/json")]


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@pytest.fixture
def pem(ca, tmp_path) -> str:
    path = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def client_tls(ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class App:
    """The ASGI app: a few routes, and what it saw (HTTP versions, requests in flight at once)."""

    def __init__(self) -> None:
        self.versions: list[str] = []
        self.now = 0
        self.most = 0
        self.disconnects = 0
        self.gathering = 0  # requests held at /together
        self.gate = trio.Event()  # opened for them when they are all there

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.versions.append(scope["http_version"])
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await self.route(scope, body, send, receive)
        finally:
            self.now -= 1

    async def route(self, scope: dict, body: bytes, send: Any, receive: Any) -> None:
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        path = scope["path"]
        if path == "/sleep":
            with trio.move_on_after(float(query["s"])):
                if (await receive())["type"] == "http.disconnect":  # a reset stream
                    self.disconnects += 1
                    return
            await _reply(send, 200, json.dumps({"version": scope["http_version"]}).encode())
        elif path == "/together":  # answers when n requests are held here at once: they were sent together
            gate = self.gate
            self.gathering += 1
            if self.gathering == int(query["n"]):
                self.gathering, self.gate = 0, trio.Event()
                gate.set()
            await gate.wait()
            await _reply(send, 200, json.dumps({"version": scope["http_version"]}).encode())
        elif path == "/big":
            n = int(query["n"])
            data = _pattern(n)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/octet-stream")]})
            for i in range(0, n, 100_000):
                await send({"type": "http.response.body", "body": data[i:i + 100_000], "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/echo":
            await _reply(send, 200, json.dumps({"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                                                "version": scope["http_version"]}).encode())
        elif path == "/v1/chat/completions":
            request = json.loads(body)
            if not request.get("stream"):
                await _reply(send, 200, json.dumps(_completion(f"over {scope['http_version']}")).encode())
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            events = [{"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
                      {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
                      {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}]
            for event in events:
                await send({"type": "http.response.body", "body": b"data: " + json.dumps(event).encode() + b"\n\n",
                            "more_body": True})
                await trio.sleep(0.02)
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        else:
            await _reply(send, 404, b'{"error": {"message": "no such route"}}')


async def _reply(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def _pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def _completion(text: str) -> dict:
    return {"id": "c", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


async def serve(nursery: trio.Nursery, app: App, pem: str, **options: Any) -> str:
    """hypercorn on 127.0.0.1 (a free port) over TLS until the test ends; its https:// base URL."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile = config.keyfile = pem
    config.errorlog = None
    config.graceful_timeout = 0.2
    for name, value in options.items():
        setattr(config, name, value)
    binds = await nursery.start(partial(hypercorn_trio.serve, app, config, shutdown_trigger=trio.sleep_forever,
                                        mode="asgi"))
    return binds[0]


async def get(pool: ConnectionPool, url: str, method: bytes = b"GET", body: tuple[bytes, ...] = ()) -> Any:
    origin, target = parse_url(url)
    return await pool.request(origin, method, target.encode() + (b"?" + url.split("?", 1)[1].encode()
                                                                 if "?" in url else b""), JSON, body)


async def test_alpn_picks_h2_and_requests_go_over_http2(nursery, pem, client_tls):
    app = App()
    url = await serve(nursery, app, pem)
    pool = ConnectionPool(ssl_context=client_tls)
    assert pool.http2
    for _ in range(3):
        response = await get(pool, url + "/echo", b"POST", (b"hello",))
        assert response.status == 200 and response.headers["content-type"] == "application/json"
        assert json.loads(response.body)["version"] == "2"
    assert (pool.opened, pool.peak, pool.h2_connections) == (1, 1, 1)
    missing = await get(pool, url + "/nothing")
    assert missing.status == 404 and b"no such route" in missing.body
    await pool.aclose()
    assert pool.open == 0
    assert app.versions == ["2"] * 4


async def test_200_slow_requests_share_one_or_two_connections_and_finish_together(nursery, pem, client_tls):
    """The server answers none until all 200 are in flight at once (no clock: a pool that sent them in
    turns would hang until the guard fails it)."""
    app = App()
    url = await serve(nursery, app, pem)  # hypercorn allows 100 streams per connection
    pool = ConnectionPool(ssl_context=client_tls)
    done: list[int] = []

    async def one(i: int) -> None:
        response = await get(pool, url + "/together?n=200")
        assert response.status == 200 and json.loads(response.body) == {"version": "2"}
        done.append(i)

    for _ in range(2):  # the second round reuses the connections
        app.most = 0
        with trio.fail_after(60):  # a hang guard: the test measures no time
            async with trio.open_nursery() as requests:
                for i in range(200):
                    requests.start_soon(one, i)
        assert len(done) == 200 and app.most == 200
        done.clear()
    assert 1 <= pool.opened <= 2 and pool.h2_connections == pool.opened
    assert pool.streams_peak <= 100
    await pool.aclose()


async def test_max_connections_still_bounds_the_requests_in_flight(nursery, pem, client_tls):
    app = App()
    url = await serve(nursery, app, pem)
    pool = ConnectionPool(ssl_context=client_tls, max_connections=5)
    async with trio.open_nursery() as requests:
        for _ in range(20):
            requests.start_soon(get, pool, url + "/sleep?s=0.05")
    assert app.most <= 5 and pool.streams_peak == 5 and pool.opened == 1
    await pool.aclose()


async def test_response_bodies_larger_than_the_flow_control_window_arrive_whole(nursery, pem, client_tls):
    app = App()
    url = await serve(nursery, app, pem)
    pool = ConnectionPool(ssl_context=client_tls)
    sizes = [3_000_000, 1_000_000, 700_000, 65_536, 65_535 * 2 + 7, 1]
    bodies: dict[int, bytes] = {}

    async def one(n: int) -> None:
        response = await get(pool, url + f"/big?n={n}")
        assert response.status == 200
        bodies[n] = response.body

    async with trio.open_nursery() as requests:  # at once: they share the connection's window too
        for n in sizes:
            requests.start_soon(one, n)
    for n in sizes:
        assert bodies[n] == _pattern(n), n
    assert pool.opened == 1
    await pool.aclose()


async def test_request_bodies_of_200_kb_go_out_whole(nursery, pem, client_tls):
    """hypercorn gives each stream a 64 KiB window: the rest goes out as it acknowledges the data."""
    app = App()
    url = await serve(nursery, app, pem)
    pool = ConnectionPool(ssl_context=client_tls)
    results: dict[int, dict] = {}

    async def one(i: int) -> None:
        pieces = (b"[", bytes([i]) * 100_000, b"-" * (100_000 + i), b"]")
        response = await get(pool, url + "/echo", b"POST", pieces)
        assert response.status == 200
        results[i] = (json.loads(response.body), hashlib.sha256(b"".join(pieces)).hexdigest(), len(b"".join(pieces)))

    async with trio.open_nursery() as requests:
        for i in range(12):
            requests.start_soon(one, i)
    for got, digest, length in results.values():
        assert (got["length"], got["sha256"], got["version"]) == (length, digest, "2")
    assert len(results) == 12 and pool.opened == 1
    await pool.aclose()


async def test_server_sent_events_stream_over_http2_through_the_openai_backend(nursery, pem, client_tls):
    app = App()
    url = await serve(nursery, app, pem)
    backend = OpenAIBackend(url + "/v1", api_key="sk-test", ssl_context=client_tls)
    reply = await backend.send_stream((HEAD, CONV))
    assert (reply.text, reply.finish_reason, reply.usage.completion_tokens) == ("Hello", "stop", 2)
    plain = await backend.send((HEAD, CONV))
    assert plain.text == "over 2"
    async with trio.open_nursery() as requests:
        for _ in range(30):
            requests.start_soon(backend.send_stream, (HEAD, CONV))
    assert backend.connections() == (1, 1)
    await backend.aclose()
    assert set(app.versions) == {"2"}


async def test_a_cancelled_request_resets_only_its_stream(nursery, pem, client_tls):
    app = App()
    url = await serve(nursery, app, pem)
    pool = ConnectionPool(ssl_context=client_tls)
    with trio.fail_after(60):  # hang guards only, here and below
        async with trio.open_nursery() as request:
            async def cancel_once_the_server_has_it() -> None:
                while not app.now:
                    await trio.sleep(0.01)
                request.cancel_scope.cancel()

            request.start_soon(cancel_once_the_server_has_it)
            await get(pool, url + "/sleep?s=600")
            raise AssertionError("a request for a 600 s sleep was answered")
    assert request.cancel_scope.cancelled_caught
    response = await get(pool, url + "/echo", b"POST", (b"x",))
    assert json.loads(response.body)["length"] == 1
    with trio.fail_after(60):
        while not app.disconnects:  # the server heard of the reset and stopped
            await trio.sleep(0.01)
    assert pool.opened == 1
    await pool.aclose()


async def test_a_server_that_speaks_only_http11_over_tls_works_through_the_same_pool(nursery, pem, client_tls):
    app = App()
    url = await serve(nursery, app, pem, alpn_protocols=["http/1.1"])
    pool = ConnectionPool(ssl_context=client_tls)
    async with trio.open_nursery() as requests:
        for _ in range(20):
            requests.start_soon(get, pool, url + "/sleep?s=0.2")
    response = await get(pool, url + "/echo", b"POST", (b"x" * 200_000,))
    assert json.loads(response.body)["length"] == 200_000
    assert set(app.versions) == {"1.1"}
    assert pool.h2_connections == 0 and pool.opened == 20  # one request per connection, kept alive
    await pool.aclose()


async def test_the_stdlib_tls_server_without_alpn_is_http11(ca, pem):
    from tests.support.http_server import Answer, scripted_server

    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pem)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with scripted_server(lambda r: Answer(200, _completion("h1")), tls=server) as url:
        backend = OpenAIBackend(url, api_key="sk-test", ssl_context=context)
        assert (await backend.send((HEAD, CONV))).text == "h1"
        assert (await backend.send((HEAD, CONV))).text == "h1"
        assert backend.connections() == (1, 1) and backend._pool.h2_connections == 0
        await backend.aclose()


async def test_http2_false_never_offers_h2(nursery, pem, client_tls):
    app = App()
    url = await serve(nursery, app, pem)
    pool = ConnectionPool(ssl_context=client_tls, http2=False)
    assert not pool.http2
    for _ in range(2):
        response = await get(pool, url + "/echo", b"POST", (b"x",))
        assert json.loads(response.body)["version"] == "1.1"
    assert pool.h2_connections == 0 and pool.opened == 1
    await pool.aclose()
    backend = OpenAIBackend(url + "/v1", api_key="sk-test", ssl_context=client_tls, http2=False)
    assert (await backend.send((HEAD, CONV))).text == "over 1.1"
    await backend.aclose()
    assert app.versions == ["1.1"] * 3


async def test_an_idle_connection_the_server_closed_is_replaced(nursery, pem, client_tls):
    app = App()
    url = await serve(nursery, app, pem, keep_alive_timeout=0.2)  # hypercorn closes idle connections
    pool = ConnectionPool(ssl_context=client_tls)
    assert (await get(pool, url + "/echo", b"POST", (b"x",))).status == 200
    await trio.sleep(0.6)
    for _ in range(3):
        assert (await get(pool, url + "/echo", b"POST", (b"x",))).status == 200
    assert pool.opened == 2 and pool.open == 1
    await pool.aclose()


async def test_connection_failures_are_http_errors(client_tls):
    with trio.socket.socket() as sock:  # nobody listens
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = ConnectionPool(ssl_context=client_tls)

    async def one() -> None:
        with pytest.raises(HTTPError) as info:
            await get(pool, f"https://127.0.0.1:{port}/echo")
        assert info.value.kind == "connect"

    async with trio.open_nursery() as requests:  # they wait for one attempt and share its failure
        for _ in range(10):
            requests.start_soon(one)
    assert pool.opened == 0


async def test_a_connection_takes_no_more_streams_than_the_server_allows(nursery, pem, client_tls):
    app = App()
    url = await serve(nursery, app, pem, h2_max_concurrent_streams=2)
    pool = ConnectionPool(ssl_context=client_tls)
    async with trio.open_nursery() as requests:
        for _ in range(6):
            requests.start_soon(get, pool, url + "/sleep?s=0.3")
    assert pool.streams_peak == 2 and pool.opened == pool.h2_connections == 3 and app.most == 6
    await pool.aclose()


# ---------------------------------------------------------------- a scripted HTTP/2 server (h2's server side)

async def scripted_h2(nursery: trio.Nursery, pem: str, script: Any) -> str:
    """An HTTP/2 server over TLS whose answers ``script(conn, stream_id, n)`` makes (n: requests so far, all
    connections); it returns "close" to end the connection. Uses h2's server side, as hypercorn does."""
    import h2.config
    import h2.connection
    import h2.events

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem)
    context.set_alpn_protocols(["h2"])
    seen = [0]

    async def handle(stream: trio.SSLStream) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                done = False
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.StreamEnded):
                        seen[0] += 1
                        done = script(conn, event.stream_id, seen[0]) == "close" or done
                await stream.send_all(conn.data_to_send())
                if done:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, handle, 0, context, host="127.0.0.1"))
    return f"https://127.0.0.1:{listeners[0].transport_listener.socket.getsockname()[1]}"


def answer(conn: Any, stream_id: int, text: bytes = b"ok") -> None:
    conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"text/plain")])
    conn.send_data(stream_id, text, end_stream=True)


async def test_goaway_fails_the_streams_it_took_and_replays_those_it_did_not(nursery, pem, client_tls):
    held: list[int] = []

    def script(conn: Any, stream_id: int, n: int) -> str | None:
        if n == 1:
            held.append(stream_id)  # hold the first request ...
            return None
        if n == 2:  # ... and at the second, go away having taken only the first
            conn.close_connection(last_stream_id=held[0])
            return "close"
        answer(conn, stream_id, b"again")
        return None

    url = await scripted_h2(nursery, pem, script)
    pool = ConnectionPool(ssl_context=client_tls)
    outcomes: list[Any] = []

    async def one() -> None:
        try:
            outcomes.append((await get(pool, url + "/x")).body)
        except HTTPError as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as requests:
        requests.start_soon(one)
        await trio.sleep(0.1)  # the first is on the wire before the second
        requests.start_soon(one)
    failed = [o for o in outcomes if isinstance(o, HTTPError)]
    assert b"again" in outcomes and len(failed) == 1
    assert failed[0].kind == "closed" and "GOAWAY" in failed[0].message
    assert pool.reconnects == 1 and pool.opened == 2 and pool.open == 1
    await pool.aclose()


async def test_a_refused_stream_is_sent_again_and_another_reset_is_an_error(nursery, pem, client_tls):
    import h2.errors

    def script(conn: Any, stream_id: int, n: int) -> None:
        if n == 1:
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif n == 3:
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            answer(conn, stream_id)

    url = await scripted_h2(nursery, pem, script)
    pool = ConnectionPool(ssl_context=client_tls)
    assert (await get(pool, url + "/x")).body == b"ok"  # refused, then sent again
    assert pool.reconnects == 1
    with pytest.raises(HTTPError) as info:
        await get(pool, url + "/x")
    assert info.value.kind == "closed" and "INTERNAL_ERROR" in info.value.message
    assert (await get(pool, url + "/x")).body == b"ok"
    assert pool.opened == 1 and pool.reconnects == 1
    await pool.aclose()


async def test_a_server_that_closes_a_fresh_connection_without_answering_is_an_error(nursery, pem, client_tls):
    url = await scripted_h2(nursery, pem, lambda conn, stream_id, n: "close")
    pool = ConnectionPool(ssl_context=client_tls)
    with pytest.raises(HTTPError) as info:
        await get(pool, url + "/x")
    assert info.value.kind == "closed" and pool.open == 0
    await pool.aclose()


async def test_requests_cancelled_at_random_never_stall_the_others(nursery, pem, client_tls):
    """Whoever reads a connection may be cancelled at any time: the reading passes on, no request hangs.

    About half the requests give up at a random moment of their exchange (those that ask for a
    sleep ask for one they will not wait out, so they surely give up); the others never give up
    and must every one finish, however slow the machine."""
    import random

    app = App()
    url = await serve(nursery, app, pem)
    pool = ConnectionPool(ssl_context=client_tls)
    rng = random.Random(7)
    kept = finished = quitters = sleepers = cancelled = 0

    async def one(sleep: float, size: int) -> None:
        if size:
            response = await get(pool, url + "/echo", b"POST", (b"y" * size,))
            assert json.loads(response.body)["length"] == size
        else:
            response = await get(pool, url + f"/sleep?s={sleep}")
            assert response.status == 200

    async def keeper(sleep: float, size: int) -> None:
        nonlocal finished
        await one(sleep, size)
        finished += 1

    async def quitter(patience: float, size: int) -> None:
        nonlocal cancelled
        with trio.move_on_after(patience) as scope:
            await one(patience + 600, size)  # a sleep outlasts the patience; a big echo may not
        cancelled += scope.cancelled_caught

    with trio.fail_after(60):  # a hang guard: how much gets done in time is not the question
        async with trio.open_nursery() as requests:
            for _ in range(300):
                size = rng.choice([0, 0, 0, 150_000])
                if rng.random() < 0.5:
                    kept += 1
                    requests.start_soon(keeper, rng.uniform(0, 0.3), size)
                else:
                    quitters += 1
                    sleepers += not size
                    requests.start_soon(quitter, rng.uniform(0, 0.4), size)
                if rng.random() < 0.1:
                    await trio.sleep(0.01)
    assert finished == kept and kept > 100  # every request that waited got its answer
    assert sleepers <= cancelled <= quitters and sleepers > 80  # the others were cancelled midway
    statuses: list[int] = []

    async def after() -> None:
        statuses.append((await get(pool, url + "/echo", b"POST", (b"z",))).status)

    with trio.fail_after(60):
        async with trio.open_nursery() as requests:  # the connections still serve
            for _ in range(50):
                requests.start_soon(after)
    assert statuses == [200] * 50 and pool.opened <= 4
    await pool.aclose()


async def test_a_server_that_picks_h2_and_hangs_up_before_its_settings_is_a_connect_failure(nursery, pem, client_tls):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem)
    context.set_alpn_protocols(["h2"])

    async def handle(stream: trio.SSLStream) -> None:
        await stream.do_handshake()
        await trio.aclose_forcefully(stream)

    listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, handle, 0, context, host="127.0.0.1"))
    url = f"https://127.0.0.1:{listeners[0].transport_listener.socket.getsockname()[1]}"
    pool = ConnectionPool(ssl_context=client_tls)
    with pytest.raises(HTTPError) as info:
        await get(pool, url + "/x")
    assert info.value.kind == "closed"  # a reset or an EOF, as the kernel tells it
    assert (pool.opened, pool.open, pool.h2_connections) == (0, 0, 0)
