"""The embedded OpenAI-compatible LLM server: trio + h11 on 127.0.0.1.

The default backend of AVM, so that ``avm run`` needs no configuration, and a
stand-in for a real model in tests and benchmarks (``avm serve-llm``). It
plays one of the two kinds of server users have, chosen by the ``dialect``
setting: ``"vllm"`` (the default: a vLLM server, with vLLM's batch endpoint)
or ``"openai"`` (OpenAI's API or llama.cpp: no batch endpoint)::

    async with serve_llm(port=0, latency_ms=100, dialect="openai") as server:
        server.url          # "http://127.0.0.1:PORT/v1" (a base URL for OpenAI clients)
        server.statistics() # a frozen ServerStatistics

or, inside a nursery the caller owns: ``server = await nursery.start(LLMServer(settings).serve)``.

Endpoints (HTTP/1.1, keep-alive, bodies always with Content-Length except streams):

* ``GET /v1/models`` (and ``/v1/models/{id}``), ``GET /health``;
* ``POST /v1/chat/completions``; with ``"stream": true`` the answer is
  server-sent events: ``data: {chat.completion.chunk}\\n\\n`` ... ``data: [DONE]``,
  plus a last chunk carrying ``usage`` if ``stream_options.include_usage``;
* ``POST /v1/chat/completions/batch``, in the ``"vllm"`` dialect only (the
  default; in the ``"openai"`` dialect, as with OpenAI's API or llama.cpp, the
  path is unknown: 404). vLLM's format, exactly: the request is one JSON
  object (``Content-Type: application/json``) whose ``messages`` is a list
  of conversations, each a list of messages, and whose other fields
  (``model``, ``temperature``, ``max_tokens``, ``seed``, ``stop``, ...) are
  shared by all of them. The answer is one ``chat.completion`` whose choice
  ``i`` (``index`` i) is exactly the reply conversation ``i`` gets as a
  single chat request with the shared fields, and whose ``usage`` is the sum;
  ``tools`` are accepted and ignored. Refusals are vLLM's: 400 with
  ``{"error": {"message", "type": "Bad Request", "param", "code": 400}}``
  for a body that is not one object (param ``body``), no conversations or an
  empty one, ``n`` other than 1, ``tool_choice`` other than ``"none"``,
  ``use_beam_search``, and (where vLLM 0.26 answers empty text) ``stream``;
* ``POST /v1/completions``: ``prompt`` a string, a list of strings, a list of
  token ids or a list of lists of token ids (as OpenAI's API and vLLM take
  it; `avm.io.embedded.replies.prompt_text` says how the fake model reads
  ids), ``n`` choices per prompt (index ``prompt * n + j``); as in OpenAI's
  API, ``max_tokens`` defaults to 16 here.

Other errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``:
400 for malformed JSON or bad fields, 404 for unknown paths, 405 (with
``Allow``) for wrong methods, 413 for bodies above ``max_body_bytes``.
Replies are described in `avm.io.embedded.replies`, latency and faults (which apply to
the three completion endpoints, one decision per HTTP request) in
`avm.io.embedded.faults`.

``model`` is echoed. It may be omitted (or empty: vLLM's rule), for the first
of the ``models`` setting; a request that names another model is answered as
OpenAI answers it, 404 with code ``model_not_found`` (the batch endpoint:
vLLM's 404), after the body is found well formed (a 400 comes first), unless
the server was started with ``any_model=True`` (``avm serve-llm --any-model``),
which serves any name, ``/v1/models/{id}`` included.
"""

# The batch format is vLLM's /v1/chat/completions/batch (vLLM 0.19+, PR #38011), from
# vllm-project/vllm: vllm/entrypoints/openai/chat_completion/protocol.py (BatchChatCompletionRequest,
# ChatCompletionResponse), vllm/entrypoints/openai/chat_completion/batch_serving.py (the fan-out, the
# summed usage), vllm/entrypoints/serve/exception_handling/handlers/validation.py (the 400 body),
# vllm/entrypoints/openai/engine/serving.py (OpenAIServing._check_model: the 404 for an unknown model).

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from avm.errors import lone_exception
from avm.gc_threshold import raise_young, restore
from avm.io.embedded.faults import FaultModel, LLMServerError, Plan, ServerSettings
from avm.io.embedded.replies import (
    UNSEEDED,
    BadRequest,
    Choice,
    canonical,
    chat_choice,
    chat_prompt_tokens,
    check_batch,
    check_chat,
    check_completion,
    completion_choice,
    digest,
    prompt_text,
    prompt_token_count,
)
from avm.io.json_codec import dumps, loads

__all__ = ["LLMServer", "LLMServerError", "ServerSettings", "ServerStatistics", "run_server", "serve_llm"]

log = logging.getLogger("avm.io.embedded.server")

HOST = "127.0.0.1"
FINGERPRINT = "avm-embedded-1"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
_RECV = 1 << 16
# Serving in the foreground (`run_server`, what `avm serve-llm` runs), the GC's youngest generation is
# collected after this many allocations instead of 700: each request's parsed JSON (a 25 KB body is
# thousands of objects) is freed by reference counting, and the collections it set off cost 15% of
# the server's CPU (bench/fleet.py, 1,000 agents x 8 turns: 5.68 s of server CPU, 4.81 s with it).
_GC_YOUNG = 100_000
_JSON = b"application/json"
_CHAT, _BATCH, _COMPLETIONS, _MODELS, _HEALTH = (
    "/v1/chat/completions", "/v1/chat/completions/batch", "/v1/completions", "/v1/models", "/health")
_ALLOWED = {_CHAT: b"POST", _COMPLETIONS: b"POST", _MODELS: b"GET", _HEALTH: b"GET"}  # + _BATCH for vllm
_STREAM_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """What the server has done since it started (a snapshot)."""

    requests: int
    requests_by_endpoint: dict[str, int]  # path, or "other" for unknown paths
    responses_by_status: dict[int, int]
    faults_by_kind: dict[str, int]  # drop, timeout, 429, 500, malformed
    connections_opened: int
    connections_open: int
    bytes_in: int
    bytes_out: int
    batch_items: int  # conversations answered through the batch endpoint
    prompts: int  # prompts answered through /v1/completions
    prompt_tokens: int
    completion_tokens: int
    connections_refused: int = 0  # answered 503 at max_connections
    timeouts: dict[str, int] = field(default_factory=dict)  # idle, header, body: connections closed for it


def _error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def _vllm_error_body(message: str, param: str | None) -> bytes:
    """vLLM's answer to a request that fails validation (always with status 400)."""
    return dumps({"error": {"message": message, "type": "Bad Request", "param": param, "code": 400}})


def _model_not_found(name: str) -> bytes:
    """OpenAI's answer (status 404) to a request naming a model it does not serve."""
    return _error_body(f"The model `{name}` does not exist or you do not have access to it.",
                       "invalid_request_error", "model_not_found")


def _vllm_model_not_found(name: str) -> bytes:
    """vLLM's (status 404; OpenAIServing._check_model)."""
    return dumps({"error": {"message": f"The model `{name}` does not exist.", "type": "NotFoundError",
                            "param": "model", "code": 404}})


def _raw_response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    """A whole response that closes the connection, for moments h11 cannot send one (no request read)."""
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n" % len(body) + extra + b"\r\n" + body)


_TIMED_OUT = _raw_response(b"408 Request Timeout", _error_body(
    "the request did not arrive in time; the connection is closed", "invalid_request_error", "request_timeout"))
_LAST_WORD_S = 1.0  # how long a refused or timed-out connection is read (and discarded) before it is closed
_FD_RESERVE = 256  # descriptors the default connection cap leaves for everything else


def _default_cap() -> int:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 1 << 16
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(16, soft - _FD_RESERVE)


class _Close(Exception):
    """Close the connection after this request (an answer may have been sent)."""


class _Peer:
    """One client connection: its stream, its h11 state, and the current request's method and headers."""

    __slots__ = ("conn", "content_type", "head", "reading", "request_id", "stream")

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 16)
        self.head = False
        self.content_type = b""  # the media type, lower case, without parameters
        self.request_id = b""  # X-Request-Id
        self.reading = "idle"  # what the current request's reading waits for: idle, header or body


class LLMServer:
    """One embedded server; `serve` runs it in a nursery until cancelled."""

    def __init__(self, settings: ServerSettings | None = None, **overrides: Any):
        if settings is None:
            settings = ServerSettings.from_mapping(overrides)
        elif overrides:
            settings = settings.replace(**overrides)
        self.settings = settings
        self._faults = FaultModel(settings)
        self._port: int | None = None
        self._routes: dict[tuple[str, bytes], Callable[[_Peer, bytes], Awaitable[None]]] = {
            (_CHAT, b"POST"): self._chat, (_COMPLETIONS, b"POST"): self._completions,
            (_MODELS, b"GET"): self._models, (_HEALTH, b"GET"): self._health}
        self._allowed = dict(_ALLOWED)
        if settings.dialect == "vllm":
            self._routes[(_BATCH, b"POST")] = self._batch
            self._allowed[_BATCH] = b"POST"
        self._requests = 0
        self._by_endpoint: dict[str, int] = {}
        self._by_status: dict[int, int] = {}
        self._faults_by_kind: dict[str, int] = {}
        self._opened = self._open = self._bytes_in = self._bytes_out = 0
        self._refused = 0
        self._timeouts: dict[str, int] = {}
        self._cap = settings.max_connections or _default_cap()  # set again when the server starts
        self._refusal = b""
        self._batch_items = self._prompts = self._prompt_tokens = self._completion_tokens = 0
        self._served = frozenset(settings.models)

    # ---------------------------------------------------------------- surface

    @property
    def port(self) -> int:
        """The port the server listens on (after it started)."""
        if self._port is None:
            raise LLMServerError("the LLM server is not running")
        return self._port

    @property
    def url(self) -> str:
        """The base URL for OpenAI clients, ending in /v1."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def origin(self) -> str:
        """http://127.0.0.1:PORT, without a path."""
        return f"http://{HOST}:{self.port}"

    def statistics(self) -> ServerStatistics:
        """A frozen snapshot of the counters."""
        return ServerStatistics(self._requests, dict(self._by_endpoint), dict(self._by_status),
                                dict(self._faults_by_kind), self._opened, self._open, self._bytes_in,
                                self._bytes_out, self._batch_items, self._prompts, self._prompt_tokens,
                                self._completion_tokens, self._refused, dict(self._timeouts))

    @property
    def max_connections(self) -> int:
        """The connections served at once; more are answered 503 and closed."""
        return self._cap

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1 and serve until cancelled; `started` gets the server."""
        await self._serve(await self._listen(), task_status=task_status)

    async def _listen(self) -> list[trio.SocketListener]:
        try:
            listeners = await trio.open_tcp_listeners(self.settings.port, host=HOST)
        except OSError as exc:
            raise LLMServerError(f"cannot listen on {HOST}:{self.settings.port}: {exc.strerror or exc}") from exc
        self._port = listeners[0].socket.getsockname()[1]
        self._cap = self.settings.max_connections or _default_cap()  # the open-file limit as it is now
        self._refusal = _raw_response(b"503 Service Unavailable", _error_body(
            f"the server has {self._cap} connections open, its limit; retry later or on an open connection",
            "server_error", "too_many_connections"), b"retry-after: 1\r\n")
        return listeners

    async def _serve(self, listeners: list[trio.SocketListener], *,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._connection, listeners)
                task_status.started(self)
        finally:
            self._port = None

    # ---------------------------------------------------------------- HTTP

    async def _last_word(self, stream: trio.SocketStream, data: bytes) -> None:
        """Send ``data``, then read and drop what the peer still sends for a moment before the caller
        closes: closing a socket with unread data sends a reset, which can discard the answer before the
        peer reads it. Bounded by `_LAST_WORD_S` whatever the peer does."""
        with trio.move_on_after(_LAST_WORD_S):
            try:
                await stream.send_all(data)
                self._bytes_out += len(data)
                await stream.send_eof()
                while await stream.receive_some(_RECV):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _connection(self, stream: trio.SocketStream) -> None:
        self._opened += 1
        if self._open >= self._cap:  # a 503 and close, at the cost of this connection's own task only
            self._refused += 1
            await self._last_word(stream, self._refusal)
            await trio.aclose_forcefully(stream)
            return
        self._open += 1
        c = _Peer(stream)
        conn = c.conn
        try:
            while True:
                request = await self._read_request(c)
                if request is None:
                    break
                await self._dispatch(c, *request)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (_Close, trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                body = _error_body(f"bad HTTP request: {exc}", "invalid_request_error", "bad_http")
                try:
                    await self._send(c, exc.error_status_hint, body, _JSON, [(b"connection", b"close")])
                except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
                    pass
        except Exception:  # a bug here must not take the server down
            log.exception("embedded LLM server: unexpected error on a connection")
        finally:
            self._open -= 1
            await trio.aclose_forcefully(stream)

    async def _read_request(self, c: _Peer) -> tuple[str, bytes, bytes] | None:
        """The next request's (path, method, body), or None when the client is done (or idle too long).

        One cancel scope per request bounds the reading: until its first byte by ``idle_timeout_s``, its
        headers by ``header_timeout_s`` from the first byte, and each wait for its body by
        ``body_timeout_s``. A request that runs out of time gets a 408 and the connection is closed. A
        request that arrives in one read moves the deadline once; nothing else is added to the hot path.
        """
        settings = self.settings
        idle, header_s, body_s = settings.idle_timeout_s, settings.header_timeout_s, settings.body_timeout_s
        with trio.CancelScope(deadline=trio.current_time() + idle if idle else math.inf) as scope:
            result = await self._read_request_in(c, scope, header_s, body_s)
        if not scope.cancelled_caught:
            return result
        kind = c.reading
        self._timeouts[kind] = self._timeouts.get(kind, 0) + 1
        if kind == "idle":  # a keep-alive connection nobody uses: closed without a word
            return None
        await self._last_word(c.stream, _TIMED_OUT)  # raw: h11 may have no request to answer
        raise _Close

    async def _read_request_in(self, c: _Peer, scope: trio.CancelScope, header_s: float | None,
                               body_s: float | None) -> tuple[str, bytes, bytes] | None:
        conn, stream = c.conn, c.stream
        target = method = b""
        chunks: list[bytes] = []
        size = 0
        limit = self.settings.max_body_bytes
        started = 0.0  # when the request's first bytes arrived (0: not yet)
        c.reading = "idle"
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    await self._write(c, conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                if started:  # part of the request is here, the rest is not: bound the wait for it
                    if not method:
                        c.reading = "header"
                        scope.deadline = started + header_s if header_s else math.inf
                    else:
                        c.reading = "body"
                        scope.deadline = trio.current_time() + body_s if body_s else math.inf
                data = await stream.receive_some(_RECV)
                if not started:
                    started = trio.current_time()
                self._bytes_in += len(data)
                conn.receive_data(data)
                continue
            kind = type(event)
            if kind is h11.Data:
                size += len(event.data)  # type: ignore[union-attr]
                if size > limit:
                    await self._too_large(c)
                chunks.append(event.data)  # type: ignore[union-attr]
            elif kind is h11.Request:
                method, target = event.method, event.target  # type: ignore[union-attr]
                c.head = method == b"HEAD"
                c.content_type = c.request_id = b""
                for name, value in event.headers:  # type: ignore[union-attr]
                    if name == b"content-length" and int(value) > limit:
                        await self._too_large(c)
                    elif name == b"content-type":
                        c.content_type = value.split(b";", 1)[0].strip().lower()
                    elif name == b"x-request-id":
                        c.request_id = value
            elif kind is h11.EndOfMessage:
                path = target.split(b"?", 1)[0].decode("ascii", "replace")
                return path, method, b"".join(chunks)
            else:  # ConnectionClosed (or PAUSED, which cannot happen before EndOfMessage)
                return None

    async def _too_large(self, c: _Peer) -> None:
        body = _error_body(f"request body larger than {self.settings.max_body_bytes} bytes",
                           "invalid_request_error", "request_too_large")
        await self._send(c, 413, body, _JSON, [(b"connection", b"close")])
        raise _Close

    async def _write(self, c: _Peer, data: bytes | None) -> None:
        if data:
            self._bytes_out += len(data)
            await c.stream.send_all(data)

    async def _send(self, c: _Peer, status: int, body: bytes, content_type: bytes = _JSON,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """One whole response with a Content-Length, in one write."""
        conn = c.conn
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        if extra:
            headers.extend(extra)
        data = conn.send(h11.Response(status_code=status, headers=headers))  # type: ignore[arg-type]
        if not c.head:  # a HEAD response announces the length but carries no body
            data += conn.send(h11.Data(data=body))  # type: ignore[operator]
        data += conn.send(h11.EndOfMessage())  # type: ignore[operator]
        self._by_status[status] = self._by_status.get(status, 0) + 1
        await self._write(c, data)

    async def _dispatch(self, c: _Peer, path: str, method: bytes,
                        body: bytes) -> None:
        self._requests += 1
        handler = self._routes.get((path, b"GET" if method == b"HEAD" else method))
        key = path if (path in self._allowed or path.startswith(_MODELS + "/")) else "other"
        self._by_endpoint[key] = self._by_endpoint.get(key, 0) + 1
        if handler is None:
            if path.startswith(_MODELS + "/") and method in (b"GET", b"HEAD"):
                return await self._model(c, path[len(_MODELS) + 1:])
            allowed = self._allowed.get(path) or (b"GET" if key != "other" else None)
            if allowed is None:
                message = f"unknown URL: {method.decode('ascii', 'replace')} {path}"
                return await self._send(c, 404, _error_body(message, "invalid_request_error", "unknown_url"))
            message = f"method {method.decode('ascii', 'replace')} not allowed for {path}; use {allowed.decode()}"
            body405 = _error_body(message, "invalid_request_error", "method_not_allowed")
            return await self._send(c, 405, body405, _JSON, [(b"allow", allowed)])
        try:
            await handler(c, body)
        except _Close:
            raise
        except BadRequest as exc:
            await self._send(c, 400, _error_body(exc.message, "invalid_request_error", exc.code, exc.param))
        except Exception:
            log.exception("embedded LLM server: error answering %s %s", method.decode("ascii", "replace"), path)
            if c.conn.our_state is not h11.SEND_RESPONSE:
                raise _Close from None
            await self._send(c, 500, _error_body("internal error", "server_error", "internal_error"))

    # ---------------------------------------------------------------- faults

    async def _fault(self, c: _Peer, plan: Plan, streaming: bool,
                     ident: str) -> None:
        kind = plan.fault
        assert kind is not None
        self._faults_by_kind[kind] = self._faults_by_kind.get(kind, 0) + 1
        if kind == "drop":
            raise _Close
        if kind == "timeout":
            await trio.sleep(self.settings.timeout_hold_s)
            raise _Close
        if plan.delay_s:
            await trio.sleep(plan.delay_s)
        if kind == "429":
            body = _error_body("rate limit reached (injected fault); retry after the Retry-After delay",
                               "rate_limit_error", "rate_limit_exceeded")
            return await self._send(c, 429, body, _JSON, self._faults.retry_after_headers())
        if kind == "500":
            body = _error_body("the server had an error (injected fault)", "server_error", "internal_error")
            return await self._send(c, 500, body)
        broken = b'{"id":"%s","object":"chat.completion","choices":[{"index":0,"message":{"content":"' % ident.encode()
        if streaming:
            return await self._send(c, 200, b"data: " + broken + b"\n\n" + _DONE, b"text/event-stream")
        return await self._send(c, 200, broken)

    # ---------------------------------------------------------------- endpoints

    async def _health(self, c: _Peer, body: bytes) -> None:
        await self._send(c, 200, b'{"status":"ok"}')

    def _model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "avm"}

    async def _models(self, c: _Peer, body: bytes) -> None:
        data = {"object": "list", "data": [self._model_card(m) for m in self.settings.models]}
        await self._send(c, 200, dumps(data))

    async def _model(self, c: _Peer, name: str) -> None:
        if not self._serves(name):
            return await self._send(c, 404, _model_not_found(name))
        await self._send(c, 200, dumps(self._model_card(name)))

    def _serves(self, name: str | None) -> bool:
        """True if a request naming this model (a string or None: validated) is answered."""
        return not name or name in self._served or self.settings.any_model

    @staticmethod
    def _parse(raw: bytes) -> Any:
        try:
            return loads(raw)
        except ValueError as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None

    def _chat_choices(self, body: dict[str, Any], seed: bytes) -> tuple[list[Choice], int, int]:
        """The choices of a (validated) chat request, its prompt and completion tokens (counted)."""
        n = body.get("n") or 1
        final_after = self.settings.final_after
        choices = [chat_choice(body, seed, i, final_after) for i in range(n)]
        prompt_tokens = chat_prompt_tokens(body)
        completion_tokens = sum(c.tokens for c in choices)
        self._prompt_tokens += prompt_tokens
        self._completion_tokens += completion_tokens
        return choices, prompt_tokens, completion_tokens

    def _chat_completion(self, body: dict[str, Any], seed: bytes, created: int) -> tuple[dict[str, Any], int]:
        choices, prompt_tokens, completion_tokens = self._chat_choices(body, seed)
        out = []
        for i, choice in enumerate(choices):
            message: dict[str, Any] = {"role": "assistant", "content": choice.content}
            if choice.tool_calls:
                message["tool_calls"] = list(choice.tool_calls)
            out.append({"index": i, "message": message, "logprobs": None, "finish_reason": choice.finish_reason})
        return ({"id": f"chatcmpl-{seed[:12].hex()}", "object": "chat.completion", "created": created,
                 "model": body.get("model") or self.settings.models[0], "system_fingerprint": FINGERPRINT,
                 "choices": out, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                           "total_tokens": prompt_tokens + completion_tokens}},
                max(c.tokens for c in choices))

    async def _chat(self, c: _Peer, raw: bytes) -> None:
        body = self._parse(raw)
        check_chat(body)
        if not self._serves(body.get("model")):
            return await self._send(c, 404, _model_not_found(body["model"]))
        seed = digest(canonical(body))
        plan = self._faults.decide(seed)
        streaming = body.get("stream") is True
        if plan.fault:
            return await self._fault(c, plan, streaming, f"chatcmpl-{seed[:12].hex()}")
        response, longest = self._chat_completion(body, seed, int(time.time()))
        if streaming:
            return await self._stream(c, _chat_events(response), plan, _include_usage(body), response)
        delay = plan.answer_delay(longest)
        if delay:
            await trio.sleep(delay)
        await self._send(c, 200, dumps(response))

    async def _batch(self, c: _Peer, raw: bytes) -> None:
        """vLLM's batch: one object, ``messages`` a list of conversations; one chat.completion back."""
        try:
            if c.content_type != _JSON:  # vLLM's validate_json_request; its error is a 400 too
                raise BadRequest("Unsupported Media Type: Only 'application/json' is allowed", "body")
            try:
                body = loads(raw)
            except ValueError as exc:
                raise BadRequest(f"the request body is not valid JSON: {exc}", "body") from None
            items = check_batch(body)
        except BadRequest as exc:
            return await self._send(c, 400, _vllm_error_body(exc.message, exc.param))
        if not self._serves(body.get("model")):
            return await self._send(c, 404, _vllm_model_not_found(body["model"]))
        seeds = [digest(canonical(item)) for item in items]
        whole = digest(b"".join(seeds))
        if c.request_id:
            ident = "chatcmpl-" + c.request_id.decode("ascii", "replace")
        elif isinstance(body.get("request_id"), str):
            ident = "chatcmpl-" + body["request_id"]
        else:
            ident = f"chatcmpl-{whole[:12].hex()}"
        plan = self._faults.decide(whole)
        if plan.fault:
            return await self._fault(c, plan, False, ident)
        created = int(time.time())
        longest = prompt_tokens = completion_tokens = 0
        out = []
        for i, (item, seed) in enumerate(zip(items, seeds, strict=True)):
            (choice,), item_prompt, item_completion = self._chat_choices(item, seed)
            prompt_tokens += item_prompt
            completion_tokens += item_completion
            longest = max(longest, choice.tokens)
            # vLLM dumps its pydantic response without exclude_none: every null field is there.
            message: dict[str, Any] = {"role": "assistant", "content": choice.content, "refusal": None,
                                       "annotations": None, "audio": None, "function_call": None, "reasoning": None}
            if choice.tool_calls:  # never without tools; vLLM omits an empty tool_calls
                message["tool_calls"] = list(choice.tool_calls)
            out.append({"index": i, "message": message, "logprobs": None, "finish_reason": choice.finish_reason,
                        "stop_reason": None, "token_ids": None})
        self._batch_items += len(out)
        response = {"id": ident, "object": "chat.completion", "created": created,
                    "model": body.get("model") or self.settings.models[0], "choices": out, "service_tier": None,
                    "system_fingerprint": FINGERPRINT,
                    "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
                              "completion_tokens": completion_tokens, "prompt_tokens_details": None},
                    "prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": None}
        delay = plan.answer_delay(longest)
        if delay:
            await trio.sleep(delay)
        await self._send(c, 200, dumps(response))

    async def _completions(self, c: _Peer, raw: bytes) -> None:
        body = self._parse(raw)
        prompts = check_completion(body)
        if not self._serves(body.get("model")):
            return await self._send(c, 404, _model_not_found(body["model"]))
        base = canonical(body, UNSEEDED + ("prompt",)) + b"\n"
        seeds = [digest(base + dumps(p)) for p in prompts]
        plan = self._faults.decide(digest(b"".join(seeds)))
        streaming = body.get("stream") is True
        ident = f"cmpl-{seeds[0][:12].hex()}"
        if plan.fault:
            return await self._fault(c, plan, streaming, ident)
        n = body.get("n") or 1
        choices: list[Choice] = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            text = prompt_text(prompt)
            choices.extend(completion_choice(body, text, seed, j, COMPLETIONS_DEFAULT_MAX_TOKENS) for j in range(n))
        prompt_count = sum(prompt_token_count(p) for p in prompts)
        completion_tokens = sum(c.tokens for c in choices)
        self._prompts += len(prompts)
        self._prompt_tokens += prompt_count
        self._completion_tokens += completion_tokens
        response = {"id": ident, "object": "text_completion", "created": int(time.time()),
                    "model": body.get("model") or self.settings.models[0], "system_fingerprint": FINGERPRINT,
                    "choices": [{"text": c.content, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
                                for i, c in enumerate(choices)],
                    "usage": {"prompt_tokens": prompt_count, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_count + completion_tokens}}
        if streaming:
            return await self._stream(c, _completion_events(response), plan, _include_usage(body),
                                      response)
        delay = plan.answer_delay(max(c.tokens for c in choices))
        if delay:
            await trio.sleep(delay)
        await self._send(c, 200, dumps(response))

    async def _stream(self, c: _Peer, events: list[tuple[dict[str, Any], float]],
                      plan: Plan, include_usage: bool, response: dict[str, Any]) -> None:
        if include_usage:
            last = {k: v for k, v in response.items() if k not in ("choices", "usage", "object")}
            last["object"] = events[0][0]["object"]
            events.append(({**last, "choices": [], "usage": response["usage"]}, 0.0))
        if plan.delay_s:
            await trio.sleep(plan.delay_s)
        conn = c.conn
        self._by_status[200] = self._by_status.get(200, 0) + 1
        pending = [conn.send(h11.Response(status_code=200, headers=_STREAM_HEADERS)) or b""]  # type: ignore[arg-type]
        per_token = plan.per_token_s
        for event, chars in events:
            pending.append(conn.send(h11.Data(data=b"data: " + dumps(event) + b"\n\n")) or b"")
            if per_token and chars:
                await self._write(c, b"".join(pending))
                pending = []
                await trio.sleep(per_token * chars / 4)
        pending.append(conn.send(h11.Data(data=_DONE)) or b"")
        pending.append(conn.send(h11.EndOfMessage()) or b"")
        await self._write(c, b"".join(pending))


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _pieces(text: str) -> list[str]:
    """A text cut into word-sized pieces whose concatenation is the text."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]] if words else []


def _chat_events(response: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
    """The chunks of a streamed chat completion (each with its characters, for latency)."""
    head = {k: response[k] for k in ("id", "created", "model", "system_fingerprint")}
    head["object"] = "chat.completion.chunk"
    events: list[tuple[dict[str, Any], float]] = []

    def chunk(index: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}]}

    for choice in response["choices"]:
        index, message = choice["index"], choice["message"]
        events.append((chunk(index, {"role": "assistant", "content": "" if message["content"] is not None else None}),
                       0.0))
        if message["content"]:
            events.extend((chunk(index, {"content": p}), len(p)) for p in _pieces(message["content"]))
        for k, call in enumerate(message.get("tool_calls") or ()):
            function = call["function"]
            events.append((chunk(index, {"tool_calls": [{"index": k, "id": call["id"], "type": "function", "function": {
                "name": function["name"], "arguments": ""}}]}), len(function["name"])))
            args = function["arguments"]
            for at in range(0, len(args), 16):
                piece = args[at:at + 16]
                events.append((chunk(index, {"tool_calls": [{"index": k, "function": {"arguments": piece}}]}),
                               len(piece)))
        events.append((chunk(index, {}, choice["finish_reason"]), 0.0))
    return events


def _completion_events(response: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
    """The chunks of a streamed text completion."""
    head = {k: response[k] for k in ("id", "object", "created", "model", "system_fingerprint")}
    events: list[tuple[dict[str, Any], float]] = []
    for choice in response["choices"]:
        for piece in _pieces(choice["text"]):
            if piece:
                events.append(({**head, "choices": [{"text": piece, "index": choice["index"], "logprobs": None,
                                                     "finish_reason": None}]}, len(piece)))
        events.append(({**head, "choices": [{"text": "", "index": choice["index"], "logprobs": None,
                                             "finish_reason": choice["finish_reason"]}]}, 0.0))
    return events


@asynccontextmanager
async def serve_llm(settings: ServerSettings | None = None, **overrides: Any) -> AsyncIterator[LLMServer]:
    """Run an embedded server for the duration of the block; it stops on exit.

    ``overrides`` are `ServerSettings` fields (``port=0``, ``latency_ms=...``).
    An exception of the block comes out as itself, not in an exception group.
    """
    server = LLMServer(settings, **overrides)
    listeners = await server._listen()  # a port in use raises LLMServerError here, plainly
    with lone_exception():
        async with trio.open_nursery() as nursery:
            await nursery.start(server._serve, listeners)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()


def run_server(settings: ServerSettings | None = None, *, on_ready: Callable[[LLMServer], None] | None = None,
               **overrides: Any) -> ServerStatistics:
    """Serve in the foreground until SIGINT or SIGTERM; return the final statistics.

    Call from the main thread (signal handling needs it). ``on_ready`` is
    called once the server listens (the CLI prints the URL there).
    """
    async def main() -> ServerStatistics:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with serve_llm(settings, **overrides) as server:
                if on_ready is not None:
                    on_ready(server)
                async for _ in signals:
                    break
        return server.statistics()

    raised = raise_young(_GC_YOUNG)
    try:
        return trio.run(main)
    finally:
        restore(raised)
