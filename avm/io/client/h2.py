"""HTTP/2 for the pool of `avm.io.client.http`: many requests multiplexed on one TLS connection.

The pool offers ALPN ``["h2", "http/1.1"]`` on https origins; where the
server picks ``h2`` (OpenAI's API does), that origin's requests go here. The
protocol is RFC 9113 as the ``h2`` package implements it (python-hyper/h2,
``src/h2/connection.py``); this module does the I/O around it, on trio.

**Who reads.** No background task: an `H2Connection` is read by the request
tasks that wait on it, one at a time ("leader/follower"). A task that needs
something from the server (its response, more of its event stream, a larger
flow-control window) reads the socket itself if nobody else is, feeding
``h2.connection.H2Connection.receive_data`` and dispatching every event to
the stream it names; otherwise it parks until the reader tells it there is
news for it. When the reader has what it was waiting for, it stops reading
and wakes one parked task, which takes over. So a connection is read exactly
while someone waits on it, the pool needs no nursery, and the gateway needs
no ``start`` hook: cancel a request and only its stream goes (a RST_STREAM),
the connection lives on, and the next waiter reads.

**Cost per request: O(1)** in the number of requests in flight: a dict
``stream_id -> stream`` per connection; each event is dispatched by a lookup;
parked tasks are a dict (the hand-over takes any of them with ``popitem``);
the streams blocked on flow control are a dict, woken all at once only when
the connection's window opens (each wake-up is one that stream needed). The
connection-wide scans happen once per connection's death (GOAWAY, EOF), when
every stream on it has to be told. One cost is h2's own: ``send_headers``
counts the connection's open streams by walking them
(``H2Connection._open_streams``), so a connection is given at most
``_MAX_STREAMS`` streams even if the server allows more.

**Streams are bounded** by the server's SETTINGS_MAX_CONCURRENT_STREAMS (100
when it sets none, at most ``_MAX_STREAMS``): a connection takes a new
stream only below that; the pool (`H2Origin`) keeps the connections that can
take one on a stack and opens another connection (one at a time per origin)
only when none can. Requests in flight per origin stay bounded by the pool's
``max_connections`` semaphore, as with HTTP/1.1.

**Flow control** (h2's docs, ``docs/source/advanced-usage.rst``, "Flow
Control"; the upload loop of ``examples/twisted/post_request.py``): a request
body goes out in DATA frames no larger than
``local_flow_control_window(stream_id)`` and ``max_outbound_frame_size``;
when the window is 0 the sender waits for a WindowUpdated (or a
RemoteSettingsChanged of INITIAL_WINDOW_SIZE). Data received is handed back
with ``acknowledge_received_data`` (h2's automatic, coalescing strategy), and
the connection's own receive window is widened to 16 MiB at the start, as
httpcore does (encode/httpcore, ``httpcore/_async/http2.py``), so that many
streams do not share 64 KiB. The connection preface, ``ENABLE_PUSH = 0`` and
leaving out ENABLE_CONNECT_PROTOCOL follow the same file and h2's
``docs/source/negotiating-http2.rst`` / ``examples/fragments/
client_https_setup_fragment.py``.

**Writes** go through one flag: whoever finds nobody sending sends everything
h2 has buffered (its own frames and anyone else's) until the buffer is empty;
anyone else just leaves its frames in the buffer. A write is shielded from
cancellation (a cancelled ``SSLStream.send_all`` would break the connection
for every stream on it) but given ``_SEND_TIMEOUT_S``.

**Failures.** A stream the server did not take (RST_STREAM REFUSED_STREAM;
a GOAWAY whose ``last_stream_id`` is below it; a reused connection that
closed before anything came back) raises `Refused`: the pool sends the
request again once, elsewhere, as it does for a closed kept-alive HTTP/1.1
connection. Any other reset or a connection that breaks is
``HTTPError("closed")``; a GOAWAY ends the whole connection (h2 closes its
state machine on receiving one, so the streams it had taken cannot finish
either: ``H2Connection._receive_goaway_frame``), and a dead connection
leaves the pool.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from avm.io.client.http import HTTPError, HTTPResponse, _cause

__all__ = ["H2Connection", "H2Origin", "Refused"]

_RECV = 1 << 16
_DEFAULT_STREAMS = 100  # when the server sets no SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 advises >= 100)
_MAX_STREAMS = 256  # h2's send_headers walks the connection's streams: keep that walk short
_CONN_WINDOW = (1 << 24) - 65535  # widen the connection's receive window to 16 MiB
_SEND_TIMEOUT_S = 30.0
_PEEK_FLAGS = socket.MSG_PEEK | socket.MSG_DONTWAIT
_UNSET = 1 << 31  # h2 reports an unset MAX_CONCURRENT_STREAMS as 2**32 + 1

_ResponseReceived = h2.events.ResponseReceived
_DataReceived = h2.events.DataReceived
_StreamEnded = h2.events.StreamEnded
_StreamReset = h2.events.StreamReset
_WindowUpdated = h2.events.WindowUpdated
_RemoteSettingsChanged = h2.events.RemoteSettingsChanged
_ConnectionTerminated = h2.events.ConnectionTerminated
_REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
_CANCEL = h2.errors.ErrorCodes.CANCEL
_MAX_CONCURRENT = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
_INITIAL_WINDOW = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE


class Refused(Exception):
    """The server did not take this request (it cannot have started on it): it may be sent again."""


class _Stream:
    """One request on an `H2Connection`: what came back so far, and how its task is woken."""

    __slots__ = ("chunks", "ended", "error", "headers", "id", "news", "on_data", "reads", "reset", "satisfied",
                 "sent", "status", "streaming", "wake")

    def __init__(self, stream_id: int, on_data: Callable[[bytes], Any] | None, reads: int):
        self.id = stream_id
        self.on_data = on_data
        self.reads = reads  # the connection's reads when the stream opened
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.streaming = False  # a 200 text/event-stream with on_data: chunks go to on_data as they come
        self.satisfied = False
        self.ended = False  # the server ended its side: the response is whole
        self.sent = False  # we ended our side
        self.reset = False  # the server reset the stream
        self.error: tuple[str, str] | None = None  # (kind, message); kind "refused": not taken
        self.news = False
        self.wake: trio.Event | None = None


class H2Connection:
    """One TLS connection speaking HTTP/2, carrying up to ``limit`` requests at once (module docstring)."""

    def __init__(self, stream: trio.abc.Stream, sock: Any, authority: bytes, stats: Any):
        self.stream = stream
        self.sock = sock  # the trio socket under the TLS stream
        self.authority = authority
        self.origin: H2Origin | None = None  # set when the pool takes the connection in
        self._stats = stats  # has a ``streams_peak`` to raise
        self.on_close: Callable[[H2Connection], None] | None = None  # the pool's, once it counts the connection
        self.h2 = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, _Stream] = {}
        self.parked: dict[int, _Stream] = {}  # streams whose task sleeps until it has news
        self.blocked: dict[int, _Stream] = {}  # streams waiting for flow-control window
        self.reader: _Stream | None = None  # the stream whose task reads the socket now
        self.sending = False
        self.limit = _DEFAULT_STREAMS
        self.active = 0
        self.listed = False  # on the origin's stack of connections that can take a stream
        self.closing = False  # takes no new stream
        self.closed = False
        self.error: tuple[str, str] | None = None
        self.settled = False  # the server's first SETTINGS arrived
        self.reads = 0
        self.used = False  # a response came back whole on it
        self.idle_since = time.monotonic()

    # ------------------------------------------------------------ the pool's side

    async def start(self) -> None:
        """Send the connection preface and read until the server's SETTINGS came (the pool times this)."""
        h = self.h2
        settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            _MAX_CONCURRENT: 100,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 16,
        })
        del settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL]  # some servers balk at it (httpcore)
        h.local_settings = settings
        h.initiate_connection()
        h.increment_flow_control_window(_CONN_WINDOW)
        await self.flush()
        while not self.settled and self.error is None:
            await self._read()
        if self.error is not None:
            raise HTTPError(*self.error)

    def usable(self) -> bool:
        return not self.closing and self.active < self.limit

    def gone(self) -> bool:
        """True if the server closed this idle connection (a peek; pending frames are not a sign of death)."""
        raw = getattr(self.sock, "_sock", None)
        if raw is None:
            return False
        try:
            return not raw.recv(1, _PEEK_FLAGS)
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        """Close at once (through trio, which tells a task blocked on the socket)."""
        if self.closed:
            return
        self.closed = self.closing = True
        self.sock.close()
        if self.origin is not None:
            self.origin.conns.discard(self)
        if self.on_close is not None:
            self.on_close(self)

    # ------------------------------------------------------------ one request

    async def request(self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]],
                      body: Sequence[bytes], on_data: Callable[[bytes], Any] | None) -> HTTPResponse:
        """One request on a new stream; `Refused` if the connection cannot take it or the server did not."""
        h = self.h2
        size = 0
        for piece in body:
            size += len(piece)
        fields = [(b":method", method), (b":scheme", b"https"), (b":authority", self.authority),
                  (b":path", target), *headers, (b"content-length", b"%d" % size)]
        try:
            stream_id = h.get_next_available_stream_id()
            h.send_headers(stream_id, fields, end_stream=not size)
        except (h2.exceptions.TooManyStreamsError, h2.exceptions.NoAvailableStreamIDError) as exc:
            self.closing = self.closing or isinstance(exc, h2.exceptions.NoAvailableStreamIDError)
            self.limit = min(self.limit, self.active)
            raise Refused(f"the HTTP/2 connection takes no more streams: {exc}") from None
        except h2.exceptions.ProtocolError as exc:
            if self.error is not None:
                raise Refused(self.error[1]) from None
            raise HTTPError("protocol", f"the request cannot go over HTTP/2: {exc}") from None
        st = _Stream(stream_id, on_data, self.reads)
        self.streams[stream_id] = st
        self.active += 1
        if self.active > self._stats.streams_peak:
            self._stats.streams_peak = self.active
        try:
            if size:
                await self._send_body(st, body)
            else:
                st.sent = True
                await self.flush()
            return await self._response(st)
        finally:
            if self._release(st):
                await self.flush()  # the RST_STREAM: the server stops working for nobody

    async def _send_body(self, st: _Stream, body: Sequence[bytes]) -> None:
        """DATA frames within the flow-control window, waiting for WindowUpdated when it is 0."""
        h = self.h2
        stream_id = st.id
        view = memoryview(body[0] if len(body) == 1 else b"".join(body))
        while True:
            if st.error is not None:
                self._raise(st)
            if st.ended:  # the server answered before taking the whole body
                return
            window = min(h.local_flow_control_window(stream_id), len(view))
            frame = h.max_outbound_frame_size
            while window > 0:
                n = min(window, frame)
                h.send_data(stream_id, view[:n], end_stream=n == len(view))
                view = view[n:]
                window -= n
            if not view:
                st.sent = True
                await self.flush()
                return
            await self.flush()
            while not (st.ended or st.error) and h.local_flow_control_window(stream_id) <= 0:
                self.blocked[stream_id] = st
                await self._wait(st)

    async def _response(self, st: _Stream) -> HTTPResponse:
        while True:
            if st.streaming and st.chunks:
                chunks = st.chunks
                st.chunks = []
                on_data = st.on_data
                for chunk in chunks:
                    if not st.satisfied and on_data is not None:
                        st.satisfied = bool(on_data(chunk))
            if st.ended:
                break
            if st.error is not None:
                self._raise(st)
            await self._wait(st)
        if not st.status:
            raise HTTPError("protocol", "the stream ended without a response")
        self.used = True
        chunks = st.chunks
        body = b"" if st.streaming else chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return HTTPResponse(st.status, st.headers, body)

    @staticmethod
    def _raise(st: _Stream) -> None:
        kind, message = st.error  # type: ignore[misc]
        if kind == "refused":
            raise Refused(message)
        raise HTTPError(kind, message)

    def _release(self, st: _Stream) -> bool:
        """The stream is done with (whole, failed or cancelled); True if a RST_STREAM waits to be sent."""
        del self.streams[st.id]
        self.blocked.pop(st.id, None)
        self.active -= 1
        if self.active == 0:
            self.idle_since = time.monotonic()
        if self.closed:
            return False
        queued = False
        if not st.reset and not (st.ended and st.sent):
            try:
                self.h2.reset_stream(st.id, _CANCEL)
                queued = True
            except h2.exceptions.ProtocolError:
                pass
        if self.closing:
            if self.active == 0:
                self.close()
                return False
        elif not self.listed and self.active < self.limit and self.origin is not None:
            self.origin.available.append(self)
            self.listed = True
        return queued

    # ------------------------------------------------------------ reading (leader/follower)

    async def _wait(self, st: _Stream) -> None:
        """Until ``st`` has news: read for every stream while nobody else does, else sleep until woken."""
        try:
            while not st.news:
                if self.reader is None:
                    self.reader = st
                    try:
                        await self._read()
                    finally:
                        self.reader = None
                else:
                    st.wake = wake = trio.Event()
                    self.parked[st.id] = st
                    try:
                        await wake.wait()
                    finally:
                        self.parked.pop(st.id, None)
        finally:
            if self.reader is None and self.parked:  # hand the reading over (also when cancelled)
                self.parked.popitem()[1].wake.set()  # type: ignore[union-attr]
        st.news = False

    def _notify(self, st: _Stream) -> None:
        st.news = True
        parked = self.parked.pop(st.id, None)
        if parked is not None:
            parked.wake.set()  # type: ignore[union-attr]

    async def _read(self) -> None:
        """One read from the socket; every event goes to its stream; then what h2 has to say goes out."""
        try:
            data = await self.stream.receive_some(_RECV)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail("closed", f"the HTTP/2 connection broke: {_cause(exc)}")
            return
        if not data:
            self._fail("closed", "the server closed the HTTP/2 connection")
            return
        self.reads += 1
        try:
            events: list[Any] = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail("protocol", f"the server broke HTTP/2: {exc}")
            return
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is _DataReceived:
                stream_id = event.stream_id
                if event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
                st = streams.get(stream_id)
                if st is not None:
                    st.chunks.append(event.data)
                    if st.streaming:
                        self._notify(st)
            elif kind is _ResponseReceived:
                st = streams.get(event.stream_id)
                if st is not None:
                    status = 0
                    fields: dict[str, str] = {}
                    for name, value in event.headers:
                        if name == b":status":
                            status = int(value)
                        elif name[:1] != b":":
                            fields[name.decode("latin-1")] = value.decode("latin-1")
                    st.status = status
                    st.headers = fields
                    st.streaming = st.on_data is not None and status == 200 and fields.get(
                        "content-type", "").startswith("text/event-stream")
            elif kind is _StreamEnded:
                st = streams.get(event.stream_id)
                if st is not None:
                    st.ended = True
                    self._notify(st)
            elif kind is _WindowUpdated:
                if event.stream_id == 0:
                    self._unblock_all()
                else:
                    st = self.blocked.pop(event.stream_id, None)
                    if st is not None:
                        self._notify(st)
            elif kind is _StreamReset:
                st = streams.get(event.stream_id)
                if st is not None:
                    st.reset = True
                    if not st.ended:
                        code = event.error_code
                        if code == _REFUSED_STREAM:
                            st.error = ("refused", "the server refused the stream (REFUSED_STREAM)")
                        else:
                            st.error = ("closed", f"the server reset the stream ({getattr(code, 'name', code)})")
                    self._notify(st)
            elif kind is _RemoteSettingsChanged:
                self.settled = True
                most = self.h2.remote_settings.max_concurrent_streams
                self.limit = _DEFAULT_STREAMS if most >= _UNSET else min(most, _MAX_STREAMS)
                if _INITIAL_WINDOW in event.changed_settings:
                    self._unblock_all()
                if not self.listed and self.origin is not None and self.usable():
                    self.origin.available.append(self)
                    self.listed = True
            elif kind is _ConnectionTerminated:
                code = event.error_code
                self._fail("closed", f"the server closed the HTTP/2 connection (GOAWAY, "
                                     f"{getattr(code, 'name', code)})", last=event.last_stream_id)
                return
            # SettingsAcknowledged, Ping*, Trailers, 1xx, priority, ALTSVC: nothing to do
        await self.flush()

    def _unblock_all(self) -> None:
        blocked = self.blocked
        if blocked:
            for st in blocked.values():
                self._notify(st)
            blocked.clear()

    def _fail(self, kind: str, message: str, last: int | None = None) -> None:
        """The connection is dead: tell every stream (once per connection) and leave the pool."""
        if self.error is not None:
            return
        self.error = (kind, message)
        self.closing = True
        for stream_id, st in self.streams.items():
            if st.ended:
                continue  # whole already
            if last is not None:  # GOAWAY: streams above last_stream_id were never taken
                refused = stream_id > last
            else:  # a kept-alive connection that died before a byte came back for this stream
                refused = self.used and st.reads == self.reads and st.status == 0
            st.error = ("refused", message) if refused else (kind, message)
            self._notify(st)
        self.close()

    # ------------------------------------------------------------ writing

    async def flush(self) -> None:
        """Send what h2 has buffered, unless another task is already at it (it sends ours too)."""
        if self.sending or self.closed:
            return
        self.sending = True
        try:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + _SEND_TIMEOUT_S) as scope:
                while True:
                    data = self.h2.data_to_send()
                    if not data:
                        break
                    await self.stream.send_all(data)
            if scope.cancelled_caught:
                self._fail("closed", f"the server took nothing for {_SEND_TIMEOUT_S:g} s")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail("closed", f"sending on the HTTP/2 connection failed: {_cause(exc)}")
        finally:
            self.sending = False


class H2Origin:
    """The HTTP/2 connections to one origin: those that can take a stream on a stack, one connect at a time."""

    __slots__ = ("available", "connecting", "conns")

    def __init__(self) -> None:
        self.available: list[H2Connection] = []  # may hold ones that filled up or died: dropped when seen
        self.connecting: Any = None  # the pool's connection attempt in progress, if any
        self.conns: set[H2Connection] = set()  # every open one

    def add(self, conn: H2Connection) -> None:
        conn.origin = self
        self.conns.add(conn)
        if conn.usable() and not conn.listed:
            self.available.append(conn)
            conn.listed = True

    def pick(self, expired: float) -> H2Connection | None:
        """A connection that can take one more stream now, or None; amortised O(1)."""
        available = self.available
        while available:
            conn = available[-1]
            if conn.usable():
                if conn.active == 0 and (conn.idle_since < expired or conn.gone()):
                    available.pop()
                    conn.listed = False
                    conn.close()
                    continue
                return conn
            available.pop()
            conn.listed = False
        return None
