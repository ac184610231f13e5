"""`OpenAIBackend`: an OpenAI-compatible server over one small httpx pool.

The default backend, for the embedded server (`avm.io.embedded.server`) as for any
OpenAI-compatible endpoint. The base URL and key come from the arguments, or
from ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``.

* **Few connections.** One ``httpx.AsyncClient`` with a pool of
  ``max_connections`` (default 8, at most 32 unless you insist): on a small
  machine a client's throughput *falls* as its concurrency rises, so the
  gateway batches rather than opening more connections. Connections are
  counted honestly: every TCP connect is seen through httpcore's ``trace``
  extension, and the most open at once is measured at each connect by
  asking each known socket whether it is still open.
* **Batches**: ``POST /chat/completions/batch`` with a JSON list of request
  bodies (vLLM's endpoint; the embedded server has it), answered by a list
  of ``chat.completion`` objects in order. With ``batch=None`` (auto), a 404
  or 405 from that endpoint turns batching off for good and the items are
  sent one by one; ``batch=False`` never tries.
* **Streams**: ``send_stream`` asks for ``"stream": true`` with
  ``include_usage`` and assembles the server-sent events (`avm.io.client.sse`).
* **Errors** are translated here, at the edge, into `Failure`: httpx
  timeouts, transport errors, HTTP statuses (with ``Retry-After`` /
  ``retry-after-ms``), bodies that are not the JSON expected.
* **The key** is only ever in the ``Authorization`` header. It is not in
  ``repr``, and every message taken from a server (which may echo it) is
  scrubbed of it and of anything shaped like a key before it goes anywhere.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from collections.abc import Sequence
from typing import Any

import httpx

from avm.errors import LLMError
from avm.io.client.backends import (
    Failure,
    Reply,
    error_detail,
    failure_for_status,
    parse_chat,
)
from avm.io.client.sse import ChatStream, SSEDecoder

__all__ = ["OpenAIBackend"]

MAX_CONNECTIONS = 32  # the most connections a pool may have without insisting
_KEYLIKE = re.compile(r"(?i)\b(sk-|bearer\s+)[A-Za-z0-9_\-.*]{3,}")
_STREAM_OPTIONS = b',"stream":true,"stream_options":{"include_usage":true}}'


class OpenAIBackend:
    """Chat completions (single, batched, streamed) against an OpenAI-compatible URL."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, model: str | None = None, *,
                 max_connections: int = 8, timeout: float = 60.0, batch: bool | None = None,
                 keepalive_s: float = 60.0, transport: httpx.AsyncBaseTransport | None = None,
                 allow_many_connections: bool = False):
        url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not url:
            raise LLMError("no LLM endpoint configured: pass base_url or set OPENAI_BASE_URL", kind="config")
        if type(max_connections) is not int or max_connections < 1:
            raise LLMError(f"max_connections must be a positive int, not {max_connections!r}", kind="config")
        if max_connections > MAX_CONNECTIONS and not allow_many_connections:
            raise LLMError(f"max_connections {max_connections} is above {MAX_CONNECTIONS}: more connections make "
                           "one client slower, not faster (allow_many_connections=True to insist)", kind="config")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.base_url = url.rstrip("/")
        self.model = model or ""  # for display: every request names its model
        self.max_connections = max_connections
        self.supports_batch = batch is not False
        self._batch_auto = batch is None
        self._key = key or None
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                              keepalive_expiry=keepalive_s)
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, limits=limits,
                                         timeout=httpx.Timeout(timeout), transport=transport)
        self._extensions = {"trace": self._trace}
        self._opened = 0
        self._peak = 0
        self._sockets: weakref.WeakSet[Any] = weakref.WeakSet()

    def __repr__(self) -> str:
        return (f"<OpenAIBackend {self.base_url} model={self.model} key={'set' if self._key else 'none'} "
                f"connections<={self.max_connections} batch={self.supports_batch}>")

    # ------------------------------------------------------------ the interface

    async def send(self, body: bytes) -> Reply:
        """One chat completion."""
        response = await self._post("/chat/completions", body)
        return parse_chat(self._json(response))

    async def send_batch(self, bodies: Sequence[bytes]) -> list[Reply | Failure]:
        """Chat completions for every body, in one HTTP request."""
        try:
            response = await self._post("/chat/completions/batch", b"[" + b",".join(bodies) + b"]")
        except Failure as failure:
            if self._batch_auto and failure.status in (404, 405):
                self.supports_batch = False
                raise Failure("unsupported", "the server has no batch endpoint", status=failure.status) from None
            raise
        data = self._json(response)
        if not isinstance(data, list):
            raise Failure("malformed", "the batch reply is not a JSON list")
        if len(data) != len(bodies):
            raise Failure("malformed", f"the batch reply has {len(data)} items for {len(bodies)} requests")
        out: list[Reply | Failure] = []
        for item in data:
            try:
                out.append(parse_chat(item))
            except Failure as failure:
                out.append(failure)
        return out

    async def send_stream(self, body: bytes) -> Reply:
        """One chat completion, streamed as server-sent events and assembled."""
        payload = body[:-1] + _STREAM_OPTIONS
        stream = ChatStream()
        try:
            async with self._client.stream("POST", "/chat/completions", content=payload,
                                           extensions=self._extensions) as response:
                if response.status_code != 200:
                    raise self._status_failure(response, await response.aread())
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    return parse_chat(self._json(response, await response.aread()))
                decoder = SSEDecoder()
                finished = False
                async for chunk in response.aiter_bytes():
                    if finished:  # read to the end, so the connection can be reused
                        continue
                    for data in decoder.feed(chunk):
                        if stream.feed(data):
                            finished = True
                            break
                if not finished:
                    for data in decoder.close():
                        stream.feed(data)
        except httpx.TransportError as exc:
            raise self._transport_failure(exc) from exc
        return stream.reply()

    async def probe(self, timeout: float = 5.0) -> None:
        """Check the endpoint answers and takes the key, before agents depend on it.

        ``GET /models``: a `Failure` (kind "connection", "timeout", "auth", ...) if the server
        cannot be reached or refuses the key. A server without that route (404, 405) passes:
        it answered.
        """
        try:
            response = await self._client.get("/models", timeout=timeout, extensions=self._extensions)
        except httpx.TransportError as exc:
            raise self._transport_failure(exc) from exc
        if response.status_code not in (200, 404, 405):
            raise self._status_failure(response, response.content)

    def connections(self) -> tuple[int, int]:
        """(TCP connections opened so far, the most that were open at once)."""
        return self._opened, self._peak

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------ HTTP

    async def _post(self, path: str, body: bytes) -> httpx.Response:
        try:
            response = await self._client.post(path, content=body, extensions=self._extensions)
        except httpx.TransportError as exc:
            raise self._transport_failure(exc) from exc
        if response.status_code != 200:
            raise self._status_failure(response, response.content)
        return response

    def _transport_failure(self, exc: httpx.TransportError) -> Failure:
        """Timeouts and network errors are worth retrying; a URL or request httpx refuses is not."""
        what = self.scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, httpx.TimeoutException):
            return Failure("timeout", f"no reply in time ({type(exc).__name__})")
        if isinstance(exc, httpx.UnsupportedProtocol):
            return Failure("config", f"cannot reach {self.base_url}: {what}")
        if isinstance(exc, httpx.LocalProtocolError):
            return Failure("bad_request", what)
        return Failure("connection", what)

    def _status_failure(self, response: httpx.Response, content: bytes) -> Failure:
        return failure_for_status(response.status_code, response.headers, self.scrub(error_detail(content)))

    def _json(self, response: httpx.Response, content: bytes | None = None) -> Any:
        try:
            return json.loads(response.content if content is None else content)
        except ValueError:
            raise Failure("malformed", "the reply body is not JSON") from None

    def scrub(self, text: str) -> str:
        """``text`` without the API key or anything shaped like one."""
        if self._key and self._key in text:
            text = text.replace(self._key, "***")
        return _KEYLIKE.sub(lambda m: m.group(1) + "***", text)

    async def _trace(self, name: str, info: dict[str, Any]) -> None:
        if name != "connection.connect_tcp.complete":
            return
        self._opened += 1
        stream = info.get("return_value")
        if stream is not None:
            self._sockets.add(stream)
        live = 0
        for s in list(self._sockets):
            try:
                sock = s.get_extra_info("socket")
                live += sock is not None and sock.fileno() != -1
            except Exception:  # noqa: BLE001 - a stream that cannot say is counted as open
                live += 1
        self._peak = max(self._peak, live, 1)
