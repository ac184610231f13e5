"""Reading one HTTP/1.1 response, as the pool's requests need it (RFC 9112).

h11 did this for the pool, and cost about a sixth of the client's CPU per LLM call in bench/fleet.py
(its event machinery, state tracking on both sides, a ``Connection`` of ~1 KB per socket). The pool
writes its requests itself (`avm.io.client.http`), so all it needs is a reader for the one response
that follows, made per request and dropped after it:

* the status line and header fields (RFC 9112 sections 4 and 5): ``HTTP/1.x``, a three-digit code;
  field names are tokens; obsolete line folding is read as a space (section 5.2); a bare LF ends a
  line too (section 2.2); the head may be at most ``max_head`` bytes;
* interim 1xx responses are skipped (101, a protocol switch nobody asked for, is an error);
* the body's length (section 6.3): none for HEAD, 1xx, 204 and 304; ``Transfer-Encoding: chunked``
  (any other coding is refused, as h11 does; with a Content-Length too, the connection is not reused);
  else ``Content-Length`` (repeated values must agree); else the body runs to the connection's close;
* chunked bodies with chunk extensions and trailer fields (read and dropped), section 7.1;
* whether the connection can carry another request: HTTP/1.1 without ``Connection: close``, a
  delimited body, and no bytes after the response.

`ResponseReader.next_event` returns `NEED_DATA`, `RESPONSE` (``status``, ``headers`` set), a ``bytes``
piece of the body, or `END`, and raises `ProtocolError` for a response it cannot read or `Truncated`
when the connection closed before the response ended. Tested against h11 as an oracle
(tests/io/client/test_h1.py).
"""

from __future__ import annotations

import re

__all__ = ["END", "NEED_DATA", "RESPONSE", "ProtocolError", "ResponseReader", "Truncated"]

NEED_DATA = "NEED_DATA"
RESPONSE = "RESPONSE"
END = "END"

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_LINE_MAX = 4096  # a chunk-size line or a trailer field

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response this reader accepts."""


class Truncated(ProtocolError):
    """The connection closed before the response ended."""


class ResponseReader:
    """Reads one response; ``receive(b"")`` says the connection closed."""

    __slots__ = ("_buf", "_eof", "_left", "_max_head", "_no_body", "_state", "headers", "keep_alive", "status")

    def __init__(self, *, no_body: bool = False, max_head: int = 1 << 16):
        self._buf = bytearray()
        self._eof = False
        self._state = _HEAD
        self._left = 0
        self._no_body = no_body  # a HEAD request's response
        self._max_head = max_head
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names; a repeated field keeps its last value
        self.keep_alive = False

    def receive(self, data: bytes) -> None:
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> str | bytes:
        buf = self._buf
        state = self._state
        while True:
            if state == _LENGTH or state == _CHUNK_DATA:
                left = self._left
                if not left:
                    state = self._state = _DONE if state == _LENGTH else _CHUNK_END
                    continue
                if buf:
                    if len(buf) <= left:
                        piece = bytes(buf)
                        buf.clear()
                    else:
                        piece = bytes(buf[:left])
                        del buf[:left]
                    self._left = left - len(piece)
                    return piece
                return self._more()
            if state == _HEAD:
                found = _HEAD_END.search(buf)
                if found is None:
                    if len(buf) > self._max_head:
                        raise ProtocolError(f"the response's head is longer than {self._max_head} bytes")
                    return self._more()
                if found.end() > self._max_head:
                    raise ProtocolError(f"the response's head is longer than {self._max_head} bytes")
                head = bytes(buf[:found.start()])
                del buf[:found.end()]
                state = self._state = self._head(head)
                if state != _HEAD:
                    return RESPONSE
                continue  # an interim (1xx) response: the real one follows
            if state == _CHUNK_SIZE or state == _CHUNK_END or state == _TRAILERS:
                i = buf.find(b"\n")
                if i < 0:
                    if len(buf) > _LINE_MAX:
                        raise ProtocolError("a chunk-size line or trailer field is too long")
                    return self._more()
                line = bytes(buf[:i]).rstrip(b"\r")
                del buf[:i + 1]
                if state == _CHUNK_END:
                    if line:
                        raise ProtocolError("a chunk's data is longer than its size")
                    state = self._state = _CHUNK_SIZE
                elif state == _CHUNK_SIZE:
                    size = line.split(b";", 1)[0].strip(b" \t")
                    if _HEX.fullmatch(size) is None:
                        raise ProtocolError(f"bad chunk size {size[:20]!r}")
                    self._left = int(size, 16)
                    state = self._state = _CHUNK_DATA if self._left else _TRAILERS
                elif not line:  # the empty line after the trailer fields: the response ends
                    state = self._state = _DONE
                continue
            if state == _UNTIL_CLOSE:
                if buf:
                    piece = bytes(buf)
                    buf.clear()
                    return piece
                if self._eof:
                    self._state = _DONE
                    return END
                return NEED_DATA
            # _DONE
            if buf:  # bytes after the response: nobody asked for them
                self.keep_alive = False
                buf.clear()
            return END

    def _more(self) -> str:
        if self._eof:
            if self._state == _HEAD and not self._buf:
                raise Truncated("the server closed the connection without answering")
            raise Truncated("the server closed the connection before the response ended")
        return NEED_DATA

    def _head(self, head: bytes) -> int:
        """Read a response's head; the state its body starts in (``_HEAD`` again after a 1xx)."""
        lines = head.split(b"\n")
        status_line = lines[0].rstrip(b"\r")
        m = _STATUS.fullmatch(status_line)
        if m is None:
            raise ProtocolError(f"bad status line {status_line[:60]!r}")
        minor, status = int(m.group(1)), int(m.group(2))
        if status < 100:
            raise ProtocolError(f"bad status code {status}")
        headers: dict[str, str] = {}
        lengths: list[bytes] = []
        codings: list[bytes] = []
        close = minor == 0
        fields: list[list[bytes]] = []
        for raw in lines[1:]:
            line = raw.rstrip(b"\r")
            if line[:1] in (b" ", b"\t"):  # obsolete line folding: a user agent reads it as one space
                if not fields:  # (RFC 9112 5.2)
                    raise ProtocolError("a folded line before any header field")
                fields[-1][1] += b" " + line.strip(b" \t")
                continue
            name, colon, value = line.partition(b":")
            if not colon or _TOKEN.fullmatch(name) is None:
                raise ProtocolError(f"bad header field {line[:60]!r}")
            fields.append([name, value.strip(b" \t")])
        for name, value in fields:
            key = name.lower()
            if key == b"content-length":
                lengths.extend(v.strip(b" \t") for v in value.split(b","))
            elif key == b"transfer-encoding":
                codings.extend(v.strip(b" \t").lower() for v in value.split(b",") if v.strip(b" \t"))
            elif key == b"connection":
                if b"close" in (v.strip(b" \t").lower() for v in value.split(b",")):
                    close = True
            headers[key.decode("latin-1")] = value.decode("latin-1")
        if status < 200:
            if status == 101:
                raise ProtocolError("the server switched protocols, which no request asked for")
            return _HEAD
        self.status = status
        self.headers = headers
        self.keep_alive = not close
        if self._no_body or status == 204 or status == 304:
            return _DONE
        if codings:
            if codings != [b"chunked"]:
                raise ProtocolError(f"unsupported transfer coding {b', '.join(codings).decode('latin-1')}")
            if lengths:
                self.keep_alive = False  # RFC 9112 6.1: such a message is a smuggling risk; do not reuse
            return _CHUNK_SIZE
        if lengths:
            if any(not v.isdigit() for v in lengths) or len(set(lengths)) != 1:
                raise ProtocolError(f"bad Content-Length {b','.join(lengths)[:40]!r}")
            self._left = int(lengths[0])
            return _LENGTH
        self.keep_alive = False  # the body runs to the connection's close
        return _UNTIL_CLOSE
