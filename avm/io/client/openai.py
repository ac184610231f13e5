"""`OpenAIBackend`: any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, the embedded one).

The base URL and key come from the arguments, or from ``OPENAI_BASE_URL``
and ``OPENAI_API_KEY``. Bytes move through AVM's own connection pool
(`avm.io.client.http`: trio + h11, O(1) per request, TLS for https, HTTP/2
where the server offers it).

* **Concurrency**: up to ``max_connections`` requests in flight (one per
  HTTP/1.1 connection, or streams on a few HTTP/2 ones); connections are
  opened as the work needs them and kept alive. The default (1,024) serves
  a 1,000-agent fleet at full speed.
* **Single requests**: ``POST {base}/chat/completions``; the body arrives
  as pieces (the shared, already-encoded head and the request's own
  messages) and is never assembled by the caller.
* **Batches, as vLLM defines them** (vllm-project/vllm,
  ``vllm/entrypoints/openai/chat_completion/protocol.py``:
  ``BatchChatCompletionRequest``; the reply is built in
  ``chat_completion/batch_serving.py``): ``POST {base}/chat/completions/batch``
  with ONE object, ``{"model", <shared sampling parameters>, "messages":
  [[conversation 1], [conversation 2], ...]}``, answered by ONE
  ``chat.completion`` whose ``choices[i].index`` is i and whose usage is the
  sum. vLLM takes ``n`` = 1 only and renders no tools, so the gateway sends
  only such requests this way. Usage per item is not reported, so the total
  is shared out in proportion to each conversation's size (prompt) and each
  reply's length (completion), summing exactly to what the server counted.
  With ``batch=None`` (auto) the first batches are probes: 404, 405, 400, 422,
  or a 5xx with an error body turns batching off for this endpoint (one log
  line) and the gateway sends those requests singly; nothing fails for it.
  Once a batch has been accepted, a refused batch is the batch's own
  failure (vLLM fails a whole batch for one bad item): the gateway then
  sends its items singly, so only the bad one fails.
* **Streams**: ``send_stream`` asks for ``"stream": true`` with
  ``include_usage`` and assembles the server-sent events (`avm.io.client.sse`).
* **Errors** are translated here, at the edge, into `Failure`: HTTP
  statuses (with ``Retry-After`` / ``retry-after-ms``), connection failures,
  bodies that are not the JSON expected (kind "malformed", retried like a
  5xx: the requests are idempotent).
* **The key** is only ever in the ``Authorization`` header. It is not in
  ``repr``, and every message taken from a server (which may echo it) is
  scrubbed of it and of anything shaped like a key before it goes anywhere.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import ssl
from collections.abc import Sequence
from typing import Any

import trio

from avm.errors import LLMError
from avm.io.client.backends import (
    Failure,
    Reply,
    error_detail,
    failure_for_status,
    failure_from_error,
    parse_chat,
    parse_choice,
    parse_usage,
)
from avm.io.client.http import ConnectionPool, HTTPError, HTTPResponse, parse_url
from avm.io.client.sse import ChatStream, SSEDecoder
from avm.io.request import Usage

__all__ = ["DEFAULT_MAX_CONNECTIONS", "OpenAIBackend"]

log = logging.getLogger("avm.io.client")

DEFAULT_MAX_CONNECTIONS = 1024
_KEYLIKE = re.compile(r"(?i)\b(sk-|bearer\s+)[A-Za-z0-9_\-.*]{3,}")
_END = b"]}"
_STREAM_END = b'],"stream":true,"stream_options":{"include_usage":true}}'
_POST = b"POST"
_GET = b"GET"
_BATCH_OFF = (400, 404, 405, 422)  # on the first batch: the server does not take vLLM's batches


class OpenAIBackend:
    """Chat completions (single, batched, streamed) against an OpenAI-compatible URL."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, model: str | None = None, *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, batch: bool | None = None,
                 idle_expiry_s: float = 60.0, connect_timeout_s: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None, http2: bool = True):
        url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not url:
            raise LLMError("no LLM endpoint configured: pass base_url or set OPENAI_BASE_URL", kind="config")
        if type(max_connections) is not int or max_connections < 1:
            raise LLMError(f"max_connections must be a positive int, not {max_connections!r}", kind="config")
        try:
            self._origin, prefix = parse_url(url)
        except ValueError as exc:
            raise LLMError(f"cannot use the LLM endpoint {url!r}: {exc}", kind="config") from None
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.base_url = url.rstrip("/")
        self.model = model or ""  # for display: every request names its model
        self.max_connections = max_connections
        self.supports_batch = batch is not False
        self.deadlines = True  # send and send_stream bound an attempt themselves (see avm.io.client.backends)
        self._batch_auto = batch is None
        self._batch_seen = False  # a batch was accepted once: the endpoint exists
        self._key = key or None
        headers = [(b"content-type", b"application/json"), (b"accept", b"application/json"),
                   (b"user-agent", b"avm/0.1")]
        if self._key:
            headers.append((b"authorization", f"Bearer {self._key}".encode("latin-1")))
        self._headers = headers
        self._chat = (prefix + "/chat/completions").encode("ascii")
        self._batch = (prefix + "/chat/completions/batch").encode("ascii")
        self._models = (prefix + "/models").encode("ascii")
        self._pool = ConnectionPool(max_connections=max_connections, idle_expiry_s=idle_expiry_s,
                                    connect_timeout_s=connect_timeout_s, ssl_context=ssl_context, http2=http2)

    def __repr__(self) -> str:
        return (f"<OpenAIBackend {self.base_url} model={self.model} key={'set' if self._key else 'none'} "
                f"connections<={self.max_connections} batch={self.supports_batch}>")

    # ------------------------------------------------------------ the interface

    async def send(self, body: Sequence[bytes], deadline: float = math.inf) -> Reply:
        """One chat completion; ``body`` = (head, *messages): ``head`` ends with ``"messages":[``. A list is
        taken over: it is appended to and emptied once written. Past ``deadline`` (trio time): `Failure`
        kind "deadline"."""
        # `_request` written out: a request waiting for its reply holds one coroutine frame less (~0.3 KB).
        # A list body is the caller's to give up: the pool empties it once written (consume=True).
        if type(body) is list:
            body.append(_END)
        else:
            body = [*body, _END]
        try:
            response = await self._pool.request(self._origin, _POST, self._chat, self._headers, body, consume=True,
                                                deadline=deadline)
        except HTTPError as exc:
            raise self._transport_failure(exc) from None
        if response.status != 200:
            raise self._status_failure(response)
        return parse_chat(self._json(response.body))

    async def send_batch(self, head: bytes, conversations: Sequence[Sequence[bytes]]) -> list[Reply | Failure]:
        """Chat completions for every conversation (the same head), in one HTTP request (vLLM's format).

        A conversation is the pieces of its messages (see `avm.io.client.backends`)."""
        pieces = [head]
        for i, conversation in enumerate(conversations):
            pieces.append(b"[" if i == 0 else b"],[")
            pieces.extend(conversation)
        pieces.append(b"]]}")
        if not self.supports_batch:  # an earlier batch found the endpoint missing: send nothing
            raise Failure("unsupported", "the server has no batch endpoint")
        # Until a batch is accepted, every batch is a probe. They go at once (waiting for the first would
        # cost a fleet one whole latency at its start); if the endpoint is missing, each comes back
        # "unsupported" and its items go singly: a few refused requests, nothing lost.
        try:
            response = await self._request(_POST, self._batch, pieces)
        except Failure as failure:
            if self._batch_auto and not self._batch_seen and (
                    failure.status in _BATCH_OFF or failure.status == 501
                    or ((failure.status or 0) >= 500 and getattr(failure, "error_body", False))):
                if self.supports_batch:
                    self.supports_batch = False
                    log.warning("LLM client: %s does not take vLLM batches (%s); sending requests singly",
                                self.base_url, failure.message)
                raise Failure("unsupported", f"the server has no batch endpoint: {failure.message}",
                              status=failure.status) from None
            raise
        data = self._json(response.body)
        self._batch_seen = True
        return split_batch(data, conversations)

    async def send_stream(self, body: Sequence[bytes], deadline: float = math.inf) -> Reply:
        """One chat completion, streamed as server-sent events and assembled (``deadline`` as `send`'s)."""
        stream = ChatStream()
        decoder = SSEDecoder()
        finished = False

        def on_data(chunk: bytes) -> bool:
            nonlocal finished
            for data in decoder.feed(chunk):
                if stream.feed(data):
                    finished = True
                    return True
            return False

        response = await self._request(_POST, self._chat, [*body, _STREAM_END], stream_to=on_data, deadline=deadline)
        if response.body:  # not an event stream: a plain completion
            return parse_chat(self._json(response.body))
        if not finished:
            for data in decoder.close():
                stream.feed(data)
        return stream.reply()

    async def probe(self, timeout: float = 5.0) -> None:
        """Check the endpoint answers and takes the key, before agents depend on it.

        ``GET /models``: a `Failure` (kind "connection", "auth", "rate_limit", "server", ...) if the
        server cannot be reached or refuses the key. A server without that route (404, 405) passes:
        it answered.
        """
        try:
            with trio.fail_after(timeout):
                response = await self._pool.request(self._origin, _GET, self._models, self._headers[1:])
        except trio.TooSlowError:
            raise Failure("timeout", f"{self.base_url} did not answer within {timeout:g} s") from None
        except HTTPError as exc:
            raise self._transport_failure(exc) from None
        if response.status not in (200, 404, 405):
            raise self._status_failure(response)

    def connections(self) -> tuple[int, int]:
        """(connections opened so far, the most open at once)."""
        return self._pool.opened, self._pool.peak

    @property
    def reconnects(self) -> int:
        """Requests sent again at once because the kept-alive connection they took had been closed."""
        return self._pool.reconnects

    async def aclose(self) -> None:
        await self._pool.aclose()

    # ------------------------------------------------------------ HTTP

    async def _request(self, method: bytes, target: bytes, body: Sequence[bytes], *,
                       stream_to: Any = None, deadline: float = math.inf) -> HTTPResponse:
        try:
            response = await self._pool.request(self._origin, method, target, self._headers, body,
                                                on_data=stream_to, deadline=deadline)
        except HTTPError as exc:
            raise self._transport_failure(exc) from None
        if response.status != 200:
            raise self._status_failure(response)
        return response

    def _transport_failure(self, exc: HTTPError) -> Failure:
        """Connections that fail or break are worth retrying; a TLS failure is a configuration matter."""
        what = self.scrub(exc.message)
        if exc.kind == "deadline":
            return Failure("deadline", what)
        if exc.kind == "tls":
            return Failure("connection", f"{what} (check the certificate, or SSL_CERT_FILE)")
        return Failure("connection", what)

    def _status_failure(self, response: HTTPResponse) -> Failure:
        failure = failure_for_status(response.status, response.headers, self.scrub(error_detail(response.body)))
        failure.error_body = _is_error_body(response.body)  # type: ignore[attr-defined]
        return failure

    @staticmethod
    def _json(content: bytes) -> Any:
        try:
            return json.loads(content)
        except ValueError:
            raise Failure("malformed", "the reply body is not JSON") from None

    def scrub(self, text: str) -> str:
        """``text`` without the API key or anything shaped like one."""
        if self._key and self._key in text:
            text = text.replace(self._key, "***")
        return _KEYLIKE.sub(lambda m: m.group(1) + "***", text)


def _is_error_body(body: bytes) -> bool:
    """True for a JSON object (OpenAI's ``{"error": ...}``, older vLLM's ``{"object": "error", ...}``,
    FastAPI's ``{"detail": ...}``): the server refused the request; a proxy's or a crash's 5xx is text."""
    if not body.lstrip().startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


def split_batch(data: Any, conversations: Sequence[Sequence[bytes]]) -> list[Reply | Failure]:
    """The replies of a vLLM batch reply, one per conversation, in order.

    ``choices[i].index`` names its conversation; a missing or malformed
    choice fails its item only. The summed usage is shared out: prompt tokens
    in proportion to each conversation's bytes, completion tokens to each
    reply's characters (largest remainder, so the parts add up exactly).
    """
    if not isinstance(data, dict):
        raise Failure("malformed", "the batch reply is not a JSON object")
    if "error" in data and not data.get("choices"):
        raise failure_from_error(data["error"])
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise Failure("malformed", "the batch reply has no choices")
    n = len(conversations)
    found: list[Any] = [None] * n
    for choice in choices:
        index = choice.get("index") if isinstance(choice, dict) else None
        if type(index) is int and 0 <= index < n and found[index] is None:
            found[index] = choice
    usage = parse_usage(data.get("usage"))
    out: list[Reply | Failure] = []
    for i, choice in enumerate(found):
        if choice is None:
            out.append(Failure("malformed", f"the batch reply has no choice {i} (of {n})"))
            continue
        try:
            out.append(parse_choice(choice, Usage()))
        except Failure as failure:
            out.append(failure)
    prompt = _share(usage.prompt_tokens, [sum(map(len, c)) for c in conversations])
    completion = _share(usage.completion_tokens, [len(r.text) + 1 if isinstance(r, Reply) else 0 for r in out])
    return [Reply(r.text, r.finish_reason, Usage(prompt[i], completion[i]), r.tool_calls) if isinstance(r, Reply)
            else r for i, r in enumerate(out)]


def _share(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder; the parts sum to ``total``)."""
    whole = sum(weights)
    if whole <= 0 or total <= 0:
        return [0] * len(weights)
    exact = [total * w / whole for w in weights]
    parts = [int(x) for x in exact]
    left = total - sum(parts)
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - parts[i], reverse=True)[:left]:
        parts[i] += 1
    return parts
