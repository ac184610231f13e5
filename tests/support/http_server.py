"""A real HTTP/1.1 server AVM did not write (the standard library's `http.server`), scripted per test.

    with scripted_server(handler) as url:      # handler(request) -> Answer
        ...                                     # url: "http://127.0.0.1:PORT/v1"

It runs in threads beside the test's trio loop, keeps connections alive
(HTTP/1.1), and records every request. ``tls=`` takes an `ssl.SSLContext` for
the server side (https). An `Answer` may close the connection without a
response (``drop=True``) or hold it (``delay``).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    body: bytes | Any = b""  # bytes as they are, anything else as JSON
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    delay: float = 0.0  # seconds before answering
    close: bool = False  # answer with "Connection: close", then close the connection
    silent_close: bool = False  # answer as if keeping the connection alive, then close it
    chunks: list[bytes] | None = None  # the body in this many writes (Transfer-Encoding: chunked)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096
    allow_reuse_address = True


@contextmanager
def scripted_server(handler: Callable[[Seen], Answer], *, tls: ssl.SSLContext | None = None,
                    seen: list[Seen] | None = None) -> Iterator[str]:
    """Serve on 127.0.0.1 (a free port) until the block ends; yields the base URL (…/v1)."""
    log = seen if seen is not None else []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _any(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with lock:
                log.append(request)
            answer = handler(request)
            if answer.delay:
                time.sleep(answer.delay)
            if answer.drop:
                self.close_connection = True
                self.connection.shutdown(2) if hasattr(self.connection, "shutdown") else None
                return
            data = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
            self.send_response(answer.status)
            headers = {"content-type": "application/json", **answer.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            if answer.chunks is not None:
                self.send_header("transfer-encoding", "chunked")
            else:
                self.send_header("content-length", str(len(data)))
            if answer.close:
                self.send_header("connection", "close")
                self.close_connection = True
            if answer.silent_close:
                self.close_connection = True
            self.end_headers()
            if answer.chunks is not None:
                for chunk in answer.chunks:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.wfile.write(data)

        do_GET = do_POST = _any

    server = _Server(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
