"""`RequestKeyer`: `LLMRequest.cache_key()`, computed in a few microseconds.

`LLMRequest.cache_key()` is the definition: blake3 of `encode_value` of the
normalised request. Computed that way it costs ~15-25 us, almost all of it in
encoding the dozen parameters that are the same in nearly every request
(model, temperature, the defaults of the rest). A hot cache hit must cost
less than that in total, so the gateway keys requests here instead, and
produces the very same bytes:

* the encoding is a dict with sorted keys, so it splits into the part before
  ``messages``, the messages, and the part after. The two parameter parts
  depend only on the parameters, so they are computed once (by the
  definition itself, `normalised()` + `encode_value`) and memoised by the
  tuple of parameters;
* a plain message (a role and a text, a ref or nothing) encodes as a fixed
  head, the content's ref (blake3 of the text) and a fixed tail per role,
  taken from `encode_value` at import; other messages are encoded by
  ``encode_value(message.canonical())``;
* anything unusual (``extra``, a ``response_format`` dict, tools given
  inline, a tool_choice dict, a bool or an int subclass where a number is
  expected, a negative zero) takes the definition's path unchanged.

Validation is the definition's too: parameters reach the memo only after
`normalised()` accepted them, and the memo key is exact for the types let
through. tests/io/test_gateway_keys.py checks the two paths agree
(hypothesis).
"""

from __future__ import annotations

import math
from typing import Any

from blake3 import blake3

from avm.io.request import ROLES, Filled, LLMRequest, Message, RequestError
from avm.memory.ref import REF_SIZE, Ref
from avm.memory.values import encode_value

__all__ = ["RequestKeyer"]

# A text no request holds (checked: the split below needs exactly one match).
_SENTINEL = "\x00avm-keyer-messages-sentinel\x00"
_SENTINEL_ENCODED = encode_value(_SENTINEL)[1:]
_ZERO = Ref(bytes(REF_SIZE))


def _role_parts(role: str) -> tuple[bytes, bytes, bytes]:
    """(head, tail, no-content) encodings of ``{"content": ..., "role": role}``."""
    enc = encode_value({"content": _ZERO, "role": role})[1:]
    at = enc.index(bytes(_ZERO))
    return enc[:at], enc[at + REF_SIZE:], encode_value({"content": None, "role": role})[1:]


_ROLE_PARTS = {role: _role_parts(role) for role in ROLES}
_LIST_HEADERS = [encode_value([None] * n)[1:len(encode_value([None] * n)) - n] for n in range(128)]
_NUMBER = (float, int)
_copysign = math.copysign


def _list_header(n: int) -> bytes:
    if n < 128:
        return _LIST_HEADERS[n]
    return encode_value([None] * n)[1:-n]


class RequestKeyer:
    """Computes cache keys equal to `LLMRequest.cache_key()`, memoising parameter parts."""

    __slots__ = ("_capacity", "_params", "fast", "slow")

    def __init__(self, capacity: int = 4096):
        self._params: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}
        self._capacity = capacity
        self.fast = 0  # keys computed on the fast path
        self.slow = 0  # keys computed by the definition

    def key(self, request: LLMRequest) -> Ref:
        """The cache key of ``request``; `RequestError` if it cannot be sent."""
        return Ref(self.digest(request))

    def check(self, request: LLMRequest) -> None:
        """`RequestError` if ``request``'s parameters cannot be sent (memoised: a lookup, once seen).

        For requests that are never cached the messages need no key: this
        validates what `digest` would, and on the fast path hashes nothing.
        """
        if self._param_parts(request) is None:
            request.normalised()

    def _param_parts(self, r: LLMRequest) -> tuple[bytes, bytes] | None:
        """The encodings before and after the messages, memoised; None: take the definition's path."""
        tools = r.tools
        choice = r.tool_choice
        stop = r.stop
        if (r.extra or r.response_format is not None
                or (tools is not None and type(tools) is not Ref)
                or (choice is not None and type(choice) is not str)
                or (stop is not None and type(stop) is not str and type(stop) is not tuple)):
            return None
        for v in (r.temperature, r.top_p, r.presence_penalty, r.frequency_penalty):
            if v is not None and (type(v) not in _NUMBER or (v == 0 and _copysign(1.0, v) < 0)):
                return None
        for v in (r.max_tokens, r.seed, r.n):
            if v is not None and type(v) is not int:
                return None
        pk = (r.model, r.temperature, r.top_p, r.max_tokens, stop, r.seed, r.n, r.presence_penalty,
              r.frequency_penalty, r.grammar, tools, choice)
        parts = self._params.get(pk)
        if parts is None:
            parts = self._parts(r)
            if parts is None:
                return None
            if len(self._params) >= self._capacity:
                self._params.clear()
            self._params[pk] = parts
        return parts

    def digest(self, request: LLMRequest) -> bytes:
        """The cache key as plain bytes (a dict key the garbage collector need not track)."""
        r = request
        parts = self._param_parts(r)
        if parts is None:
            return self._slow(r)
        head, tail = parts
        messages = r.messages
        out = [head, _list_header(len(messages))]
        append = out.append
        for m in messages:
            # Messages kept stored: keyed by their ref. A plain Message (the common case) is told by
            # its exact type alone; isinstance only for the rest (it narrows m for the type checker).
            if type(m) is not Message and isinstance(m, Ref):
                append(encode_value({"stored": m})[1:])
                continue
            content = m.content
            if m.name is None and m.tool_call_id is None and not m.tool_calls:
                before, after, empty = _ROLE_PARTS[m.role]
                t = type(content)
                if t is Filled:
                    content = content.text()  # type: ignore[union-attr]
                    t = str
                if t is str:
                    append(before)
                    append(blake3(content.encode("utf-8", "surrogatepass")).digest())  # type: ignore[union-attr]
                    append(after)
                    continue
                if t is Ref:
                    append(before)
                    append(content)  # type: ignore[arg-type]
                    append(after)
                    continue
                if content is None:
                    append(empty)
                    continue
            try:
                append(encode_value(m.canonical())[1:])
            except TypeError as exc:
                raise RequestError(f"request holds a value that cannot be keyed: {exc}") from None
        append(tail)
        self.fast += 1
        return blake3(b"".join(out)).digest()

    def _slow(self, request: LLMRequest) -> bytes:
        self.slow += 1
        return bytes(request.cache_key())

    @staticmethod
    def _parts(request: LLMRequest) -> tuple[bytes, bytes] | None:
        """The encodings before and after the messages (None: the split is ambiguous)."""
        p = request.normalised()  # validates, as the definition does
        p["messages"] = _SENTINEL
        try:
            full = encode_value(p)
        except TypeError as exc:
            raise RequestError(f"request holds a value that cannot be keyed: {exc}") from None
        if full.count(_SENTINEL_ENCODED) != 1:
            return None
        head, tail = full.split(_SENTINEL_ENCODED)
        return head, tail
