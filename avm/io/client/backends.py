"""The small async interface between the gateway and an LLM server.

The gateway decides *what* to send and *when* (cache, single-flight, queue,
batches, retries); a backend only moves bytes and reads replies. A request
comes already encoded as JSON (see `avm.io.wire`): the ``head``
(``{"model":...,<parameters>,"messages":[``), shared by every request with
the same parameters and encoded once, and the request's messages
(``{...},{...}``, without the brackets) as a list of pieces, some of them
shared (a system prompt template's text). A single body is
``head + messages + "]}"``; a vLLM batch is one head and many message lists.
Nothing is encoded twice, and no caller assembles a whole body::

    class Backend(Protocol):
        supports_batch: bool          # may turn False when the server refuses batches
        max_connections: int          # requests it can have in flight at once
        deadlines: bool               # optional: send and send_stream take ``deadline=`` (see below)
        async def send(self, body: Sequence[bytes]) -> Reply          # [head, *messages]; a list may be emptied
        async def send_stream(self, body: Sequence[bytes]) -> Reply   # the same, streamed (SSE)
        async def send_batch(self, head: bytes, conversations: Sequence[Sequence[bytes]]) -> list[Reply | Failure]
        def connections(self) -> tuple[int, int]   # (opened so far, most open at once)
        async def aclose(self) -> None

A list given to ``send`` is the backend's from then on: it may append to it
and empty it once the request is written, so that a request waiting for its
reply holds none of its pieces (the gateway encodes them again for a retry).

A backend with ``deadlines = True`` bounds an attempt itself: ``send(body, deadline)`` and
``send_stream(body, deadline)`` (trio time) raise `Failure` kind ``"deadline"`` once it passes. The
gateway then needs no cancel scope per request in flight (~0.9 KB each while it waits); for a
backend without it, the gateway bounds the attempt with a cancel scope.

A failed attempt raises `Failure` (a whole batch failed) or is returned in
the batch's list (one item failed). A `Failure` holds a ``kind`` (as
`avm.errors.LLMError`), the HTTP status if any, a message that never holds
the API key, and the server's ``Retry-After`` when it sent one. The gateway
turns failures into retries or into an `LLMError` naming the request.

This module also reads the OpenAI response shapes (`parse_chat`) and the
retry headers (`retry_after`), for any backend that speaks that protocol.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from avm.errors import AvmError
from avm.io.request import Usage

__all__ = ["RETRYABLE", "Backend", "Failure", "Reply", "error_detail", "failure_for_status", "failure_from_error",
           "parse_chat", "parse_choice", "parse_usage", "retry_after"]

RETRYABLE = frozenset(("rate_limit", "server", "timeout", "connection", "malformed"))
"""Failure kinds worth another attempt: connection errors, timeouts, 429, 5xx, and replies that are not
the JSON expected (a body cut short, no choices: chat requests are idempotent, so another try is safe)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One completion as the server gave it (choice 0)."""

    text: str
    finish_reason: str
    usage: Usage
    tool_calls: tuple[Any, ...] = ()


class Failure(AvmError):
    """One failed attempt, translated from HTTP at the edge (the gateway makes it an `LLMError` once it
    gives up)."""

    def __init__(self, kind: str, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


@runtime_checkable
class Backend(Protocol):
    """What the gateway needs from a server connection (see the module docstring)."""

    supports_batch: bool
    max_connections: int

    async def send(self, body: Sequence[bytes]) -> Reply: ...  # and ``deadline: float`` if `deadlines`

    async def send_stream(self, body: Sequence[bytes]) -> Reply: ...

    async def send_batch(self, head: bytes, conversations: Sequence[Sequence[bytes]]) -> list[Reply | Failure]: ...

    def connections(self) -> tuple[int, int]: ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------- responses


def parse_usage(obj: Any) -> Usage:
    if obj is None:
        return Usage()
    if not isinstance(obj, dict):
        raise Failure("malformed", "usage is not an object")
    prompt = obj.get("prompt_tokens", 0)
    completion = obj.get("completion_tokens", 0)
    if type(prompt) is not int or type(completion) is not int or prompt < 0 or completion < 0:
        raise Failure("malformed", "usage token counts are not non-negative integers")
    return Usage(prompt, completion)


def parse_chat(obj: Any) -> Reply:
    """Choice 0 of a ``chat.completion`` object; `Failure` ("malformed") if fields are missing.

    An item that is an OpenAI error object (as some batch endpoints return
    for one bad item) becomes the `Failure` its type implies.
    """
    if not isinstance(obj, dict):
        raise Failure("malformed", "the reply is not a JSON object")
    choices = obj.get("choices")
    if choices is None and "error" in obj:
        raise failure_from_error(obj["error"])
    if not isinstance(choices, list) or not choices:
        raise Failure("malformed", "the reply has no choices")
    return parse_choice(choices[0], parse_usage(obj.get("usage")))


def parse_choice(choice: Any, usage: Usage) -> Reply:
    """One choice of a ``chat.completion`` as a `Reply` with ``usage``; `Failure` ("malformed") if fields
    are missing."""
    if not isinstance(choice, dict):
        raise Failure("malformed", "a choice is not an object")
    message = choice.get("message")
    if not isinstance(message, dict):
        raise Failure("malformed", "the choice has no message")
    text = message.get("content")
    if text is None:
        text = ""
    elif type(text) is not str:
        raise Failure("malformed", "the choice's message.content is not text")
    reason = choice.get("finish_reason")
    if type(reason) is not str:
        raise Failure("malformed", "the choice's finish_reason is missing")
    calls = message.get("tool_calls")
    if calls is None:
        calls = ()
    elif not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        raise Failure("malformed", "the choice's message.tool_calls is not a list of objects")
    else:
        calls = tuple(calls)
    return Reply(text, reason, usage, calls)


def failure_from_error(error: Any) -> Failure:
    kind_of = {"rate_limit_error": "rate_limit", "server_error": "server", "invalid_request_error": "bad_request",
               "authentication_error": "auth"}
    if isinstance(error, dict):
        message = str(error.get("message") or "the server reported an error")[:300]
        return Failure(kind_of.get(str(error.get("type")), "server"), message)
    return Failure("server", "the server reported an error")


# ---------------------------------------------------------------- status and headers


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            ms = float(value)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def failure_for_status(status: int, headers: Mapping[str, str], detail: str) -> Failure:
    """The failure an HTTP status stands for (``detail``: the server's message, already scrubbed)."""
    if status in (401, 403):
        what = "refused the API key" if status == 401 else "refused access"
        return Failure("auth", f"the server {what} ({status}): {detail}", status=status)
    if status == 429:
        return Failure("rate_limit", f"rate limited (429): {detail}", status=status, retry_after=retry_after(headers))
    if status >= 500:
        return Failure("server", f"server error ({status}): {detail}", status=status, retry_after=retry_after(headers))
    if status == 408:
        return Failure("timeout", f"the server timed out the request (408): {detail}", status=status)
    return Failure("bad_request", f"the server refused the request ({status}): {detail}", status=status)


def error_detail(body: bytes, limit: int = 300) -> str:
    """The message of an OpenAI-style error body, or the start of the body."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict) and isinstance(obj["error"].get("message"), str):
        text = obj["error"]["message"]
    else:
        text = body[:limit].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:limit] if text else "(no details)"
