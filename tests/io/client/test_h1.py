"""`avm.io.client.h1.ResponseReader` against h11 (python-hyper/h11, an independent implementation of
RFC 9112) as the oracle: the same bytes, cut anywhere, give the same response, body and reuse."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avm.io.client.h1 import END, NEED_DATA, RESPONSE, ProtocolError, ResponseReader, Truncated


def _ours(data: bytes, cuts: list[int], eof: bool, head: bool = False):
    reader = ResponseReader(no_body=head)
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)] + ([b""] if eof else [])
    body = b""
    response = None
    for piece in pieces:
        reader.receive(piece)
        while True:
            event = reader.next_event()
            if event == NEED_DATA:
                break
            if event == RESPONSE:
                response = (reader.status, reader.headers)
            elif event == END:
                return response, body, reader.keep_alive
            else:
                body += event
    return response, body, None  # not ended


def _h11(data: bytes, eof: bool, head: bool = False):
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="HEAD" if head else "GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    body = b""
    response = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return response, body, None
        if isinstance(event, h11.Response):
            response = (event.status_code, {k.decode(): v.decode("latin-1") for k, v in event.headers})
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            # h11 reuses the connection when both sides are DONE after the message
            return response, body, conn.our_state is h11.DONE and conn.their_state is h11.DONE
        elif isinstance(event, h11.ConnectionClosed):
            return response, body, None


_names = st.sampled_from(["content-type", "x-request-id", "server", "Set-Cookie", "X-Odd"])
_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


@st.composite
def responses(draw):
    status = draw(st.sampled_from([200, 201, 204, 304, 400, 404, 429, 500, 503]))
    minor = draw(st.sampled_from([1, 1, 1, 0]))
    reason = draw(st.sampled_from(["", " OK", " Whatever it is"]))
    headers = [(draw(_names), draw(_values)) for _ in range(draw(st.integers(0, 4)))]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if status in (204, 304):
        body, framing = b"", draw(st.sampled_from(["length0", "none"]))
    if draw(st.booleans()):
        headers.append(("Connection", draw(st.sampled_from(["close", "keep-alive", "Close"]))))
    interim = draw(st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n"]))
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
        payload = body
    elif framing == "length0":
        headers.append(("Content-Length", "0"))
        payload = b""
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        sizes = draw(st.lists(st.integers(1, 64), max_size=6))
        payload, at = b"", 0
        for size in sizes:
            part = body[at:at + size]
            if part:
                ext = draw(st.sampled_from([b"", b";name=value"]))
                payload += b"%x%s\r\n%s\r\n" % (len(part), ext, part)
                at += len(part)
        if at < len(body):
            payload += b"%x\r\n%s\r\n" % (len(body) - at, body[at:])
        payload += b"0\r\n" + draw(st.sampled_from([b"", b"Trailer-Field: 1\r\n"])) + b"\r\n"
    else:
        payload = body
    head = b"HTTP/1.%d %d%s\r\n" % (minor, status, reason.encode()) + b"".join(
        b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in headers) + b"\r\n"
    return interim + head + payload, framing == "close"


@settings(max_examples=400, deadline=None)
@given(case=responses(), data=st.data())
def test_responses_read_as_h11_reads_them_however_the_bytes_are_cut(case, data):
    raw, until_close = case
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=6))))
    cuts = [c for c in cuts if 0 < c < len(raw)]
    eof = until_close or data.draw(st.booleans())
    ours, theirs = _ours(raw, cuts, eof), _h11(raw, eof)
    assert ours[:2] == theirs[:2]
    if until_close:  # h11 calls a connection the server closed reusable (the pool's peek then drops it)
        assert ours[2] is False and theirs[2] is not None
    else:
        assert ours[2] == theirs[2]


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",  # body cut short
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-",  # head cut short
])
def test_a_response_cut_short_by_the_connection_closing_is_truncated(raw):
    reader = ResponseReader()
    reader.receive(raw)
    reader.receive(b"")
    with pytest.raises(Truncated):
        while reader.next_event() not in (END,):
            pass


@pytest.mark.parametrize("raw", [
    b"HTTP/2 200\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
])
def test_what_is_not_a_response_is_a_protocol_error_and_h11_refuses_it_too(raw):
    reader = ResponseReader()
    reader.receive(raw)
    with pytest.raises(ProtocolError):
        while reader.next_event() not in (END, NEED_DATA):
            pass
    with pytest.raises(h11.RemoteProtocolError):
        _h11(raw, eof=False)


def test_a_head_longer_than_its_limit_is_refused_as_h11_refused_it_incomplete():
    long = b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000
    for raw in (long, long + b"\r\n\r\n"):
        reader = ResponseReader()
        reader.receive(raw)
        with pytest.raises(ProtocolError):
            reader.next_event()
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 16)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.receive_data(long)
    with pytest.raises(h11.RemoteProtocolError):
        conn.next_event()


def test_a_head_response_has_no_body_and_repeated_equal_lengths_are_one():
    reader = ResponseReader(no_body=True)
    reader.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert [reader.next_event(), reader.next_event()] == [RESPONSE, END] and reader.keep_alive
    reader = ResponseReader()
    reader.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc")
    assert [reader.next_event(), reader.next_event(), reader.next_event()] == [RESPONSE, b"abc", END]
    reader = ResponseReader()
    reader.receive(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n")
    assert [reader.next_event(), reader.next_event()] == [RESPONSE, END] and reader.headers["x-a"] == "1 folded"
    assert _h11(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n", False)[0][1]["x-a"] == "1 folded"
    reader = ResponseReader()
    reader.receive(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi")  # bare LF ends lines too
    assert [reader.next_event(), reader.next_event(), reader.next_event()] == [RESPONSE, b"hi", END]
