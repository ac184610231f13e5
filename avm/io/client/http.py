"""HTTP/1.1 on trio (and HTTP/2 where the server offers it), with a connection pool whose every step is O(1).

An LLM takes 0.1-10 s per request, so a fleet keeps R requests in flight by
holding R connections (HTTP/1.1 carries one request per connection at a
time). The pool must then cost the same per request whether it holds 8
connections or 10,000. httpcore's pool walks every connection on each
checkout and release (measured: 60% of a client's CPU at 256 connections),
so this module is AVM's own:

* **One `_Host` per origin** (scheme, host, port): a `trio.Semaphore` of
  ``max_connections`` bounds the requests in flight to it, and a deque holds
  its idle connections, most recently used on the right. A request takes the
  semaphore, pops the right end (or connects), sends, reads, and pushes the
  connection back on the right: each step O(1).
* **Idle expiry**: connections idle longer than ``idle_expiry_s`` are closed
  from the left end (the oldest) whenever a request passes by; amortised
  O(1) per request.
* **Dead connections**: before reuse, a connection is asked (a non-blocking
  ``MSG_PEEK``) whether the server closed it; a reused connection that fails
  before any byte of the response arrives (the server closed it meanwhile)
  is dropped and the request is sent again once on a fresh connection.
  That is the only replay here: the usual cause is a server that closed
  an idle connection as the request went out, though a server that read
  the request and then dropped the connection looks the same; chat
  requests are idempotent, so sending it again is safe (RFC 9110, 9.2.2).
* **TLS** for ``https`` origins: `trio.SSLStream` over the TCP stream with
  ``ssl.create_default_context()``, which loads the system's trust store and
  honours ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``; ALPN offers ``h2`` and
  ``http/1.1`` (only ``http/1.1`` with ``http2=False`` or without the ``h2``
  package). A context passed in gets the same ALPN list.
* **HTTP/2** (`avm.io.client.h2`) where the server picks ``h2``: the first
  connection to an https origin is made alone (the others wait for it) to
  learn what the origin speaks. If ``h2``, the origin's requests are streams
  multiplexed on few connections, up to the server's
  SETTINGS_MAX_CONCURRENT_STREAMS each, a new connection being opened only
  when all are full; ``max_connections`` still bounds the requests in flight
  (the same semaphore). The connections are read by the requests waiting on
  them, so no background task and no nursery are needed. If ``http/1.1``,
  ``_Host.h2`` becomes None and the origin takes the HTTP/1.1 path below,
  whose only added cost is that one ``if``.
* **Bodies as pieces**: a request body is a sequence of byte strings (shared
  prefix, per-request part, suffix) so that a caller never has to build the
  whole body up front; the pieces go out in one write.

Errors are `HTTPError` with a ``kind``: "connect" (no connection could be
made), "tls", "closed" (the server closed the connection, or reset or
refused the stream, before a complete response), "protocol" (a response
`avm.io.client.h1` or h2 cannot read). Timeouts are the
caller's: wrap a request in a trio cancel scope; a cancelled request closes
its connection (its state is unknown).

The protocol is RFC 9112: h11 (python-hyper/h11) validates each kind of
request once (`ConnectionPool._headers`), the pool writes requests itself, and
`avm.io.client.h1` reads each response (tested against h11 as an oracle).
"""

from __future__ import annotations

import math
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from avm.io.client.h1 import END, NEED_DATA, RESPONSE, ProtocolError, ResponseReader, Truncated
from avm.io.client.readiness import Readiness

try:  # see ConnectionPool._headers
    from h11._headers import normalize_and_validate as _normalize
except ImportError:  # pragma: no cover - a future h11
    _normalize = None  # type: ignore[assignment]

__all__ = ["ConnectionPool", "HTTPError", "HTTPResponse", "Origin", "parse_url"]

_RECV = 1 << 16
_PEER_TTL_S = 60.0  # how long new connections go straight to the address an earlier one found (`_tcp`)
_MAX_HEADERS = 1 << 16
_PEEK_FLAGS = socket.MSG_PEEK | socket.MSG_DONTWAIT
_IOV_MAX = 512  # pieces per sendmsg (Linux takes 1,024)


class HTTPError(Exception):
    """A request that got no complete HTTP response; ``kind`` says why."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str  # "http" or "https"
    host: str
    port: int

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = host if self.port == default else f"{host}:{self.port}"
        return text.encode("ascii") if text.isascii() else text.encode("idna")


def parse_url(url: str) -> tuple[Origin, str]:
    """(origin, path prefix without a trailing slash) of an http(s) URL; ValueError if it is not one."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    if not parts.hostname:
        raise ValueError(f"the URL names no host: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the URL's port is not a number in 0..65535: {url!r}") from None
    if port is None:
        port = 443 if scheme == "https" else 80
    return Origin(scheme, parts.hostname, port), parts.path.rstrip("/")


@dataclass(slots=True)
class HTTPResponse:
    status: int
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value
    body: bytes


class _Conn:
    """One connection: its stream, its socket, when it went idle."""

    __slots__ = ("idle_since", "raw", "sock", "stream", "tls")

    def __init__(self, stream: trio.abc.Stream, sock: Any):
        self.stream = stream
        self.sock = sock  # the trio socket under the stream (and TLS)
        self.raw = getattr(sock, "_sock", None)  # the stdlib socket under it: trio's has no synchronous calls
        self.tls = not isinstance(stream, trio.SocketStream)
        self.idle_since = 0.0

    def close(self) -> None:
        """Close at once, through trio (which tells any waiter), without a TLS goodbye."""
        self.sock.close()

    def dead(self) -> bool:
        """True if the server closed this idle connection (or sent something nobody asked for)."""
        raw = self.raw
        if raw is None:
            return False
        try:
            raw.recv(1, _PEEK_FLAGS)  # b"": the server closed it; data: a response to no request
        except BlockingIOError:
            return False
        except OSError:
            pass
        return True


class _Host:
    """The connections to one origin."""

    __slots__ = ("finding", "h2", "idle", "open", "peer", "peer_until", "slots")

    def __init__(self, limit: int, h2: Any = None):
        self.slots = trio.Semaphore(limit)
        self.idle: deque[_Conn] = deque()
        self.open = 0
        self.h2 = h2  # an `H2Origin` while the origin speaks (or may speak) HTTP/2; None: HTTP/1.1
        self.peer: tuple[int, Any] | None = None  # (family, address) the last connection found (see `_tcp`)
        self.peer_until = 0.0
        self.finding: trio.Event | None = None  # set when the connection finding the peer is made (or failed)


class _Attempt:
    """A connection being made to an HTTP/2 origin, which the requests that need one wait for."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: HTTPError | None = None


def _load_h2() -> Any:
    """`avm.io.client.h2`, or None without the ``h2`` package (imported late: it imports this module)."""
    try:
        from avm.io.client import h2
    except ImportError:
        return None
    return h2


class ConnectionPool:
    """Connections to any number of origins, at most ``max_connections`` to each (see the module docstring)."""

    def __init__(self, *, max_connections: int = 1024, idle_expiry_s: float = 60.0,
                 connect_timeout_s: float = 30.0, ssl_context: ssl.SSLContext | None = None,
                 http2: bool = True):
        if type(max_connections) is not int or max_connections < 1:
            raise ValueError(f"max_connections must be a positive int, not {max_connections!r}")
        self.max_connections = max_connections
        self.idle_expiry_s = idle_expiry_s
        self.connect_timeout_s = connect_timeout_s
        self._h2: Any = _load_h2() if http2 else None  # the module avm.io.client.h2
        self.http2 = self._h2 is not None  # HTTP/2 is offered (ALPN) to https origins
        self._ssl = ssl_context
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(self._alpn())
        self._hosts: dict[Origin, _Host] = {}
        self._fixed: dict[tuple[Any, ...], bytes] = {}  # (origin, method, target, headers) -> the head (`_headers`)
        self.opened = 0  # connections made so far (TCP: an HTTP/2 connection counts once)
        self.peak = 0  # the most open at once (all origins)
        self.reconnects = 0  # requests sent again because a reused connection had been closed (or refused them)
        self.h2_connections = 0  # of those opened, how many speak HTTP/2
        self.streams_peak = 0  # the most requests at once on one HTTP/2 connection
        self._open = 0
        self._closed = False
        self._readiness = Readiness(_late)  # what plain-TCP requests wait on for their reply
        self._scopes: set[trio.CancelScope] = set()  # those of the requests in `_request` (TLS, HTTP/2, waits)

    @property
    def open(self) -> int:
        """Connections open now."""
        return self._open

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context: the system's trust store (``SSL_CERT_FILE`` honoured), ALPN h2 and http/1.1."""
        if self._ssl is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(self._alpn())
            self._ssl = context
        return self._ssl

    def _alpn(self) -> list[str]:
        return ["h2", "http/1.1"] if self.http2 else ["http/1.1"]

    # ------------------------------------------------------------ requests

    def request(self, origin: Origin, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]],
                body: Sequence[bytes] = (), on_data: Callable[[bytes], Any] | None = None, *,
                consume: bool = False, deadline: float = math.inf) -> Awaitable[HTTPResponse]:
        """Send one request and read its whole response (``await`` what this returns).

        ``headers`` must not hold Host or Content-Length (they are added).
        With ``on_data``, the body of a 200 response of type
        ``text/event-stream`` is handed to it piece by piece as it arrives
        and the response's ``body`` is empty (any other response is read
        whole, as without it); ``on_data`` may return True to say it has what
        it needs (the rest is still read, so the connection can be reused).
        With ``consume`` (and a list ``body``), the list is emptied once the
        request is written over HTTP/1.1: its pieces need not live until the
        response. A kept-alive connection found closed after that fails with
        kind ``"closed"`` instead of being sent again on a new one.
        Past ``deadline`` (trio time), the request fails with kind ``"deadline"`` and its connection is
        closed; it costs no cancel scope while the request waits for its response (see `Readiness`).
        """
        if self._closed:
            raise HTTPError("closed", "the connection pool is closed")
        host = self._hosts.get(origin)
        if host is None:
            h2 = self._h2.H2Origin() if self.http2 and origin.scheme == "https" else None
            host = self._hosts[origin] = _Host(self.max_connections, h2)
        if host.h2 is None and host.idle and host.slots.value and origin.scheme == "http":
            # The usual request: a slot free and a kept-alive connection. It is the exchange's coroutine
            # itself, which gives the slot back: a request waiting for its reply holds no frame of this
            # method (~0.35 KB). Nothing waits between here and the exchange's first step.
            host.slots.acquire_nowait()
            conn = self._checkout(host)
            if conn is not None:
                return self._exchange(host, conn, method, target, self._headers(origin, method, target, headers),
                                      body, on_data, reused=True, consume=consume, fresh=(origin, headers),
                                      deadline=deadline)
            host.slots.release()
        return self._request(host, origin, method, target, headers, body, on_data, consume, deadline)

    async def _request(self, host: _Host, origin: Origin, method: bytes, target: bytes,
                       headers: Sequence[tuple[bytes, bytes]], body: Sequence[bytes],
                       on_data: Callable[[bytes], Any] | None, consume: bool, deadline: float) -> HTTPResponse:
        """`request` when a slot must be waited for, the origin speaks HTTP/2 or TLS, or no connection is
        idle: the deadline is a cancel scope here (a connection, TLS or HTTP/2 waits in many places)."""
        slots = host.slots
        scopes = self._scopes
        with trio.move_on_at(deadline) as scope:
            scopes.add(scope)  # `aclose` ends it: a request waiting here is not parked in the readiness
            try:
                try:  # no checkpoint when a slot is free: the request goes out in the caller's step (see _send)
                    slots.acquire_nowait()
                except trio.WouldBlock:
                    await slots.acquire()
                try:
                    if self._closed:
                        raise HTTPError("closed", "the connection pool is closed")
                    if host.h2 is not None:
                        return await self._h2_exchange(host, origin, method, target, headers, body, on_data)
                    return await self._h1_exchange(host, origin, method, target, headers, body, on_data, consume,
                                                   deadline)
                finally:
                    slots.release()
            finally:
                scopes.discard(scope)
        if self._closed:
            raise HTTPError("closed", "the connection pool is closed")
        raise _late()

    async def _h1_exchange(self, host: _Host, origin: Origin, method: bytes, target: bytes,
                           headers: Sequence[tuple[bytes, bytes]], body: Sequence[bytes],
                           on_data: Callable[[bytes], Any] | None, consume: bool = False,
                           deadline: float = math.inf) -> HTTPResponse:
        """One HTTP/1.1 request (a slot held): on a kept-alive connection, else on a new one (`request`
        takes the first way itself when it needs no wait, so that a request waiting for its response
        holds two coroutine frames less)."""
        head = self._headers(origin, method, target, headers)
        conn = self._checkout(host)
        if conn is not None:
            return await self._exchange(host, conn, method, target, head, body, on_data, reused=True,
                                        consume=consume, fresh=(origin, headers), owns_slot=False, deadline=deadline)
        return await self._h1_fresh(host, origin, method, target, headers, head, body, on_data, consume, deadline)

    async def _h1_fresh(self, host: _Host, origin: Origin, method: bytes, target: bytes,
                        headers: Sequence[tuple[bytes, bytes]], head: bytes, body: Sequence[bytes],
                        on_data: Callable[[bytes], Any] | None, consume: bool = False,
                        deadline: float = math.inf) -> HTTPResponse:
        """One HTTP/1.1 request (a slot held) on a new connection (no kept-alive one could take it)."""
        conn = await self._connect(host, origin)
        if type(conn) is not _Conn:  # the server chose HTTP/2 for this new connection: so does the origin
            return await self._h2_exchange(host, origin, method, target, headers, body, on_data)
        # (not reused: a closed connection is an HTTPError here, never `_Stale`)
        return await self._exchange(host, conn, method, target, head, body, on_data, reused=False,
                                    consume=consume, deadline=deadline)

    # ------------------------------------------------------------ HTTP/2

    async def _h2_exchange(self, host: _Host, origin: Origin, method: bytes, target: bytes,
                           headers: Sequence[tuple[bytes, bytes]], body: Sequence[bytes],
                           on_data: Callable[[bytes], Any] | None) -> HTTPResponse:
        """One request to an HTTP/2 origin (a slot held); a stream the server did not take is sent again once."""
        refused = self._h2.Refused
        for attempt in (0, 1):
            conn = await self._h2_checkout(host, origin)
            if conn is None:  # the origin speaks HTTP/1.1 after all
                return await self._h1_exchange(host, origin, method, target, headers, body, on_data)
            if type(conn) is _Conn:  # a new connection on which the server chose HTTP/1.1
                head = self._headers(origin, method, target, headers)
                try:
                    return await self._exchange(host, conn, method, target, head, body, on_data,
                                                reused=False)
                except _Stale as exc:
                    raise HTTPError("closed", str(exc)) from None
                finally:  # on an origin still on HTTP/2, used once: that path never takes an idle one back
                    if host.h2 is not None and host.idle and host.idle[-1] is conn:
                        self._drop(host, host.idle.pop())
            try:
                return await conn.request(method, target, headers, body, on_data)
            except refused as exc:
                if attempt:
                    raise HTTPError("closed", str(exc)) from None
                self.reconnects += 1
        raise AssertionError("unreachable")  # pragma: no cover

    async def _h2_checkout(self, host: _Host, origin: Origin) -> Any:
        """An HTTP/2 connection with room for a stream; else a new connection (one at a time per origin).

        None if the origin turned out to speak HTTP/1.1; a `_Conn` if this
        new connection does (it is used once, as HTTP/1.1)."""
        while True:
            state = host.h2
            if state is None:
                return None
            conn = state.pick(time.monotonic() - self.idle_expiry_s)
            if conn is not None:
                return conn
            attempt = state.connecting
            if attempt is not None:  # someone is connecting: its connection may take us too
                await attempt.done.wait()
                if attempt.error is not None:
                    raise HTTPError(attempt.error.kind, attempt.error.message)
                continue
            attempt = state.connecting = _Attempt()
            try:
                made = await self._connect(host, origin)
            except HTTPError as exc:
                attempt.error = exc
                raise
            finally:
                state.connecting = None
                attempt.done.set()
            if type(made) is _Conn and host.h2 is state and not state.conns:
                host.h2 = None  # no HTTP/2 connection to it: the origin speaks HTTP/1.1
            return made

    def _h2_closed(self, host: _Host) -> Callable[[Any], None]:
        def closed(conn: Any) -> None:
            host.open -= 1
            self._open -= 1
        return closed

    async def _start_h2(self, host: _Host, origin: Origin, stream: trio.SSLStream, sock: Any) -> Any:
        """An `H2Connection` on a TLS stream whose ALPN said h2, once the server's SETTINGS came."""
        conn = self._h2.H2Connection(stream, sock, origin.host_header, self)
        try:
            with trio.fail_after(self.connect_timeout_s):
                await conn.start()
        except trio.TooSlowError:
            sock.close()
            raise HTTPError("connect", f"no HTTP/2 settings from {origin.host}:{origin.port} within "
                                       f"{self.connect_timeout_s:g} s") from None
        except BaseException:
            sock.close()
            raise
        conn.on_close = self._h2_closed(host)
        self.opened += 1
        self.h2_connections += 1
        host.open += 1
        self._open += 1
        if self._open > self.peak:
            self.peak = self._open
        state = host.h2
        if state is None:
            state = host.h2 = self._h2.H2Origin()
        state.add(conn)
        if self._closed:
            conn.closing = True
        return conn

    def _headers(self, origin: Origin, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
        """The request's head as written but its Content-Length, made once per kind.

        h11 validates the request line and the header fields once here (an ``h11.Request`` is made
        and dropped); the pool writes the head with the real Content-Length and the body's pieces
        itself, so that no piece is copied before the kernel takes it (`_send`), and reads the
        response with `avm.io.client.h1`. ``normalize_and_validate`` lives in ``h11._headers``
        (h11 0.14-0.16); without it, h11 validates the plain list.
        """
        key = (origin, method, target, tuple(headers))
        head = self._fixed.get(key)
        if head is None:
            fixed = [(b"host", origin.host_header), *headers, (b"content-length", b"0")]
            normalized: Any = fixed
            if _normalize is not None:
                normalized = _normalize(fixed)
            h11.Request(method=method, target=target, headers=normalized)  # raises for an invalid request
            head = b"%s %s HTTP/1.1\r\n" % (method, target) + b"".join(
                b"%s: %s\r\n" % (name, value) for name, value in fixed[:-1])
            if len(self._fixed) > 64:
                self._fixed.clear()
            self._fixed[key] = head
        return head

    def _checkout(self, host: _Host) -> _Conn | None:
        idle = host.idle
        if not idle:
            return None
        expired = time.monotonic() - self.idle_expiry_s
        while idle and idle[0].idle_since < expired:  # the oldest first: amortised O(1)
            self._drop(host, idle.popleft())
        while idle:
            conn = idle.pop()
            if not conn.dead():
                return conn
            self._drop(host, conn)
        return None

    def _drop(self, host: _Host, conn: _Conn) -> None:
        conn.close()
        host.open -= 1
        self._open -= 1

    async def _connect(self, host: _Host, origin: Origin) -> Any:
        """A new connection: a `_Conn` (HTTP/1.1), or an `H2Connection` if the server chose h2 (ALPN)."""
        try:
            with trio.fail_after(self.connect_timeout_s):
                tcp = await self._tcp(host, origin)
        except trio.TooSlowError:
            raise HTTPError("connect", f"no connection to {origin.host}:{origin.port} within "
                                       f"{self.connect_timeout_s:g} s") from None
        except OSError as exc:
            raise HTTPError("connect", f"cannot connect to {origin.host}:{origin.port}: "
                                       f"{exc.strerror or exc}") from None
        stream: trio.abc.Stream = tcp
        if origin.scheme == "https":
            stream = trio.SSLStream(tcp, self.ssl_context(), server_hostname=origin.host, https_compatible=True)
            try:
                with trio.fail_after(self.connect_timeout_s):
                    await stream.do_handshake()
            except trio.TooSlowError:
                tcp.socket.close()
                raise HTTPError("tls", f"no TLS handshake with {origin.host}:{origin.port} within "
                                       f"{self.connect_timeout_s:g} s") from None
            except (trio.BrokenResourceError, ssl.SSLError) as exc:
                tcp.socket.close()
                cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
                raise HTTPError("tls", f"TLS with {origin.host}:{origin.port} failed: {cause}") from None
            except BaseException:  # cancelled: the SSLStream is a cycle, so close the socket now, not at a GC
                tcp.socket.close()
                raise
            if self.http2 and stream.selected_alpn_protocol() == "h2":
                return await self._start_h2(host, origin, stream, tcp.socket)
        self.opened += 1
        host.open += 1
        self._open += 1
        if self._open > self.peak:
            self.peak = self._open
        return _Conn(stream, tcp.socket)

    async def _tcp(self, host: _Host, origin: Origin) -> trio.SocketStream:
        """A TCP connection to ``origin``.

        One is made by trio's ``open_tcp_stream`` (the name resolved, happy eyeballs over its addresses)
        and the address it reached is remembered for `_PEER_TTL_S`: the connections after it go straight
        there, a socket and a connect. (trio's way costs a nursery, tasks and cancel scopes per connection,
        about 5 KB each while a 1,000-agent fleet's first requests all connected at once: a quarter of the
        fleet's peak memory.) Connections asked for while the address is being found wait for it; a direct
        connect that fails forgets the address, and that connection finds one again.
        """
        while host.peer is None and host.finding is not None:
            await host.finding.wait()
        peer = host.peer
        if peer is not None:
            if time.monotonic() >= host.peer_until:
                host.peer = None  # found again (the name may point elsewhere now); the others wait for it
            else:
                sock = trio.socket.socket(peer[0], socket.SOCK_STREAM)
                try:
                    await sock.connect(peer[1])
                except OSError:
                    sock.close()
                    if host.peer is peer:
                        host.peer = None
                except BaseException:
                    sock.close()
                    raise
                else:
                    return trio.SocketStream(sock)
        finding = host.finding = trio.Event()
        try:
            tcp = await trio.open_tcp_stream(origin.host, origin.port)
            raw = tcp.socket
            host.peer, host.peer_until = (raw.family, raw.getpeername()), time.monotonic() + _PEER_TTL_S
        finally:
            finding.set()
            if host.finding is finding:
                host.finding = None
        return tcp

    async def _exchange(self, host: _Host, conn: _Conn, method: bytes, target: bytes,
                        head: bytes, body: Sequence[bytes],
                        on_data: Callable[[bytes], Any] | None, reused: bool, consume: bool = False,
                        fresh: tuple[Origin, Sequence[tuple[bytes, bytes]]] | None = None,
                        owns_slot: bool = True, deadline: float = math.inf) -> HTTPResponse:
        """One request and response on ``conn``; it goes back to the idle deque if it can be reused.

        With ``fresh`` (the origin and headers), the request is sent again on a new connection if
        ``conn`` turns out to be closed before the server saw it (`_Stale`; without it, `_Stale` is
        raised); with ``owns_slot`` too (`request`'s usual path), the exchange gives its slot back."""
        stale = False
        done = False
        got_bytes = False
        reader = ResponseReader(no_body=method == b"HEAD", max_head=_MAX_HEADERS)
        raw = None if conn.tls else conn.raw
        try:
            stream = conn.stream
            size = 0
            for piece in body:
                size += len(piece)
            try:
                if conn.tls:
                    await stream.send_all(_joined(head, size, body))
                else:
                    await _send(conn.sock, conn.raw, [head + b"content-length: %d\r\n\r\n" % size, *body], deadline)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                if reused:
                    raise _Stale("the server closed the connection") from None
                raise HTTPError("closed", f"sending the request failed: {_cause(exc)}") from None
            if consume and type(body) is list:
                body.clear()  # written: the caller gave its pieces up (see `request`)
                reused = False  # nothing left to send again on a new connection: a closed one is an error
            chunks: list[bytes] = []
            satisfied = False
            streaming = False
            ready = False  # whether the socket may have bytes to read without waiting
            while True:
                event = reader.next_event()
                if event is NEED_DATA:
                    try:
                        if raw is None:
                            data = await stream.receive_some(_RECV)
                        else:  # plain TCP: the stdlib socket, and trio only to wait (as trio's own recv does)
                            if not ready:  # the first read waits first: the reply cannot be there yet, and a
                                await self._readiness.wait(raw, deadline)  # recv that fails makes an exception whose
                                ready = True  # traceback gives this coroutine a frame object (0.4 KB) for its life
                            try:
                                data = raw.recv(_RECV)
                            except BlockingIOError:
                                data = None
                            if data is None:  # a spurious wake-up, or the rest of a reply not yet there
                                ready = False
                                continue
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        if reused and not got_bytes:
                            raise _Stale("the server closed the connection") from None
                        raise HTTPError("closed", f"the connection broke during the response: {_cause(exc)}") \
                            from None
                    assert data is not None  # (a None read went round the loop again, above)
                    if data:
                        got_bytes = True
                    elif reused and not got_bytes:
                        raise _Stale("the server closed the connection")
                    # (a TLS stream's read may be a bytearray, which the reader takes too: it appends to one)
                    reader.receive(data)  # type: ignore[arg-type]  # h1's annotation says bytes only
                elif event is RESPONSE:
                    streaming = on_data is not None and reader.status == 200 and reader.headers.get(
                        "content-type", "").startswith("text/event-stream")
                elif event is END:
                    break
                elif not streaming:  # a piece of the body
                    chunks.append(event)  # type: ignore[arg-type]
                elif not satisfied and on_data is not None:
                    assert type(event) is bytes  # a piece of the body: the reader's str events are handled above
                    satisfied = bool(on_data(event))
            done = True
            return HTTPResponse(reader.status, reader.headers, b"".join(chunks) if len(chunks) != 1 else chunks[0])
        except Truncated as exc:
            raise HTTPError("closed", str(exc)) from None
        except ProtocolError as exc:
            raise HTTPError("protocol", f"the server's response is not valid HTTP/1.1: {exc}") from None
        except _Stale:
            if fresh is None:
                raise
            stale = True
        finally:
            if done and reader.keep_alive and not self._closed:
                conn.idle_since = time.monotonic()
                host.idle.append(conn)
            else:
                self._drop(host, conn)
            if fresh is not None and owns_slot and not stale:
                host.slots.release()
        # `conn` was closed before the server saw the request: once more on a new one, the slot still held
        self.reconnects += 1
        origin, headers = fresh
        try:
            return await self._h1_fresh(host, origin, method, target, headers, head, body, on_data, consume,
                                        deadline)
        finally:
            if owns_slot:
                host.slots.release()

    # ------------------------------------------------------------ lifetime

    async def aclose(self) -> None:
        """Close every idle connection; requests in flight fail now (kind ``"closed"``) and close theirs."""
        self._closed = True
        self._readiness.close(lambda: HTTPError("closed", "the connection pool is closed"))
        for scope in list(self._scopes):
            scope.cancel()
        for host in self._hosts.values():
            while host.idle:
                self._drop(host, host.idle.pop())
            if host.h2 is not None:
                for conn in list(host.h2.conns):
                    conn.closing = True
                    if conn.active == 0:
                        conn.close()


def _joined(head: bytes, size: int, body: Sequence[bytes]) -> bytes:
    """The whole request in one object (for TLS, which copies anyway); made here so no frame keeps it."""
    return b"".join([head, b"content-length: %d\r\n\r\n" % size, *body])


async def _send(sock: Any, raw: Any, pieces: list[bytes | memoryview], deadline: float = math.inf) -> None:
    """Write ``pieces`` with ``sendmsg`` (scatter/gather): the kernel copies from the pieces themselves,
    so a body that waits for a slow server holds no copy of the shared parts (a 1,000-request burst of
    27 KB bodies joined first held 27 MB until the server read them).

    What the socket's buffer takes at once is written with the stdlib socket ``raw`` (non-blocking),
    without trio's checkpoint after a successful write: a request costs one scheduler round less, and
    the exchange checkpoints anyway when it waits for the response. trio's ``sendmsg`` waits only when
    the buffer is full."""
    # ``pieces`` is the caller's own list: a piece the kernel took in part is replaced by a view of the
    # rest (views are made only then: most requests go in one call).
    start, end = 0, len(pieces)
    while start < end:
        chunk = pieces[start:start + _IOV_MAX]
        sent = -1
        if raw is not None:
            try:
                sent = raw.sendmsg(chunk)
            except BlockingIOError:
                pass
        if sent < 0:  # trio waits for room (outside the except clause: see the response's read)
            with trio.move_on_at(deadline):
                sent = await sock.sendmsg(chunk)
            if sent < 0:
                raise _late()
        while sent and start < end:
            size = len(pieces[start])
            if sent >= size:
                sent -= size
                start += 1
            else:
                pieces[start] = memoryview(pieces[start])[sent:]
                sent = 0
        while start < end and not len(pieces[start]):
            start += 1  # empty pieces


def _late() -> HTTPError:
    return HTTPError("deadline", "no response before the request's deadline")


class _Stale(Exception):
    """A reused connection turned out to be closed before the server saw the request."""


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    return f"{type(cause).__name__}: {cause}"
