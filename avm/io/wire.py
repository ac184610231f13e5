"""`WireEncoder`: an `LLMRequest` as the JSON body of a chat completion.

Agents hold refs, not copies: a thousand agents share one 50 KB system prompt
and one tool list, each a `Ref` into the store. Resolving and JSON-escaping
those shared parts for every request would cost more CPU than everything
else the gateway does, so each shared part is resolved and encoded once and
kept, as JSON bytes, in an LRU bounded by bytes:

* a message whose content is a ``Ref``: its whole JSON object, keyed by
  (role, ref). Texts are encoded per request and not kept: a text is what
  an agent holds alone (a system prompt rendered with its inputs), and it
  must live only while its request does. (``share_min_chars=N`` keeps texts
  of N characters and up too, keyed by (role, text), for callers that pass
  one long shared prompt as text.);
* tools given as a ``Ref`` (to a list stored with ``store.put_value``): the
  JSON array, keyed by the ref;
* the parameters (model, temperature, ...): the JSON members, keyed by their
  values, as in `avm.io.keys`.

A request is then two pieces (`parts`): the head (``{"model":...,
<parameters>,"tools":...,"messages":[``, one shared object per distinct set
of parameters) and its messages joined by commas; the body is
``head + messages + "]}"`` (`body`), and a vLLM batch is one head with many
message lists (`avm.io.client.openai`). Numbers that OpenAI
reads as floats are sent as floats (``1`` as ``1.0``) and omitted parameters
are left out (the server applies its defaults, which the cache key assumes).
The encoder trusts what `RequestKeyer` already validated; what it finds
wrong itself (a ref the store does not hold, tools that are not a list of
objects) raises `RequestError`.
"""

from __future__ import annotations

import json
from typing import Any

from cachetools import LRUCache

from avm.errors import StoreError
from avm.io.packing import pack
from avm.io.packing import unpack as _unpack
from avm.io.request import PLACEHOLDER, Filled, LLMRequest, Message, PackedCalls, RequestError, ToolCalls
from avm.memory.ref import Ref

__all__ = ["Packed", "WireEncoder", "dumps", "message_json", "tool_calls", "unpack"]

_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


class Packed(bytes):
    """A message's JSON, kept by the message packed (`avm.io.packing`) once the encoder has made it
    (`Message.wire`): a caller that sends the same `Message` objects again (a conversation it keeps
    itself) has them encoded once, and held small. The unpacked pieces live only while the request
    is sent (`avm.io.client.http` empties the body once it is written). An agent of the VM keeps its
    past turns stored instead (`avm.conversation.store_turn`)."""

    __slots__ = ()


def unpack(wire: bytes) -> bytes:
    """A message's JSON as the message keeps it: plain, or `Packed`."""
    return _unpack(wire) if type(wire) is Packed else wire


def _kept(wire: bytes) -> bytes:
    """``wire`` as a message keeps it: `Packed` when that saves, else as it is."""
    packed = pack(wire)
    return wire if packed is None else Packed(packed)


def dumps(value: Any) -> bytes:
    """Compact JSON bytes (ASCII, so texts with any code point survive)."""
    return _ENCODE(value).encode("ascii")


def message_json(message: Message) -> bytes:
    """The JSON object the encoder sends for ``message``, one whose content is text (or None, or a
    `Filled` template, rendered): what an agent stores of its past turns (`avm.conversation.store_turn`)."""
    if _calls_only(message):
        return _CALLS_HEAD + message.tool_calls.json() + b"}"  # type: ignore[union-attr]
    content = message.content
    if type(content) is Filled:
        content = content.text()
    elif isinstance(content, Ref):
        raise RequestError("message_json takes messages whose content is text, not a ref")
    return dumps(message.as_dict(content))


def _calls_only(m: Message) -> bool:
    """An assistant message with only tool calls (the usual turn of a tool-using agent)."""
    return isinstance(m.tool_calls, ToolCalls) and m.content is None and m.name is None and m.tool_call_id is None


def tool_calls(calls: Any, *, packed: bool = True) -> ToolCalls:
    """A reply's tool calls (OpenAI's dicts) as the message keeps them: each in OpenAI's form
    ``{"id", "type": "function", "function": {"name", "arguments"}}`` (a streamed call's ``index`` is
    dropped), or as it came when it has other fields; packed (`PackedCalls`) when that saves, unless
    ``packed=False`` (for a message kept only a short while)."""
    data = dumps([_standard(call) for call in calls])
    if not packed:
        return ToolCalls(data)
    small = pack(data)
    return ToolCalls(data) if small is None else PackedCalls(small)


def _standard(call: Any) -> Any:
    if isinstance(call, dict) and call.keys() <= {"id", "type", "function", "index"}:
        function = call.get("function")
        if (isinstance(function, dict) and function.keys() <= {"name", "arguments"}
                and call.get("type", "function") == "function" and type(call.get("id")) is str
                and type(function.get("name")) is str and type(function.get("arguments", "")) is str):
            return {"id": call["id"], "type": "function",
                    "function": {"name": function["name"], "arguments": function.get("arguments", "")}}
    return call


# ``{"role":"assistant","content":null,"tool_calls":`` + the calls + ``}``: what `Message.as_dict` makes
_CALLS_HEAD = dumps({"role": "assistant", "content": None, "tool_calls": []})[:-3]


def _size(value: Any) -> int:
    """Bytes a kept value costs: a text or bytes, or a template's parts (a list of them)."""
    return len(value) if type(value) is not list else sum(len(p) for p in value)


def _inner(text: str) -> bytes:
    """``text`` as the inside of a JSON string (escaped, without the quotes)."""
    return dumps(text)[1:-1]


def _template_parts(role: str, template: str) -> list[Any]:
    """``[head, name, text, name, ..., tail]``: a message whose content is ``template``, cut at each
    placeholder; the even items are encoded JSON (escaping is per character, so pieces join exactly)."""
    cuts = PLACEHOLDER.split(template)  # text, name, text, name, ..., text
    head = dumps({"role": role, "content": ""})[:-2]  # {"role":"system","content":"
    parts: list[Any] = []
    for i, cut in enumerate(cuts):
        parts.append(_inner(cut) if i % 2 == 0 else cut)
    parts[0] = head + parts[0]
    parts[-1] = parts[-1] + b'"}'
    return parts


_FLOATS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


class WireEncoder:
    """Encodes requests to JSON bodies, sharing the encoding of shared parts."""

    def __init__(self, store: Any = None, *, shared_bytes: int = 32 << 20, share_min_chars: int | None = None):
        self._store = store
        self._shared: LRUCache[Any, Any] = LRUCache(maxsize=shared_bytes, getsizeof=_size)
        self._share_min = share_min_chars if share_min_chars is not None else 1 << 62
        self._params: dict[tuple[Any, ...], bytes] = {}
        self.shared_hits = 0
        self.shared_misses = 0

    # ------------------------------------------------------------ the body

    def body(self, request: LLMRequest) -> bytes:
        """The JSON body of a chat completion request for ``request`` (without ``stream``)."""
        head, messages = self.parts(request)
        return head + b"".join(messages) + b"]}"

    def parts(self, request: LLMRequest) -> tuple[bytes, list[bytes]]:
        """(head, messages) of ``request``'s body: the head is shared by requests with the same parameters;
        the messages are pieces whose concatenation is ``{...},{...}``, shared pieces among them."""
        try:
            return self._parts(request)
        except RequestError:
            raise
        except (TypeError, ValueError) as exc:  # a value json cannot write (bytes, NaN, an object)
            raise RequestError(f"the request cannot be sent as JSON: {exc}") from exc

    def _parts(self, request: LLMRequest) -> tuple[bytes, list[bytes]]:
        r = request
        tools = r.tools
        choice = r.tool_choice
        memo = (not r.extra and r.response_format is None and (tools is None or type(tools) is Ref)
                and (choice is None or type(choice) is str))
        head: bytes | None = None
        if memo:
            pk = (r.model, r.temperature, r.top_p, r.max_tokens, r.stop, r.seed, r.n, r.presence_penalty,
                  r.frequency_penalty, r.grammar, tools, choice)
            head = self._params.get(pk)
            if head is None:
                head = self._head(r)
                if len(self._params) >= 4096:
                    self._params.clear()
                self._params[pk] = head
        else:
            head = self._head(r)
        pieces: list[bytes] = []
        message = self._message
        for i, m in enumerate(r.messages):
            if i:
                pieces.append(b",")
            # Messages kept stored as their JSON. A plain Message (the common case) is told by its
            # exact type alone; isinstance only for the rest (it narrows m for the type checker).
            if type(m) is not Message and isinstance(m, Ref):
                pieces.append(self._stored(m))
            else:
                message(m, pieces)
        return head, pieces

    def _head(self, r: LLMRequest) -> bytes:
        """``{"model":...,<parameters>,"messages":[`` for this request's parameters."""
        out = [b'{"model":', dumps(r.model)]
        for name in _FLOATS:
            value = getattr(r, name)
            if value is not None:
                out.append(b',"%s":%s' % (name.encode(), dumps(float(value))))
        for name in ("max_tokens", "seed", "n"):
            value = getattr(r, name)
            if value is not None:
                out.append(b',"%s":%d' % (name.encode(), value))
        if r.stop is not None:
            out.append(b',"stop":' + dumps(r.stop if isinstance(r.stop, str) else list(r.stop)))
        if r.response_format is not None:
            out.append(b',"response_format":' + dumps(r.response_format))
        if r.grammar is not None:
            out.append(b',"grammar":' + dumps(r.grammar))
        if r.tools is not None:
            tools = self._tools(r.tools)
            if tools != b"[]":
                out.append(b',"tools":' + tools)
        if r.tool_choice is not None:
            out.append(b',"tool_choice":' + dumps(r.tool_choice))
        for key, value in r.extra.items():
            if key in ("messages", "stream", "stream_options"):
                raise RequestError(f"extra parameter {key!r} is set by the gateway")
            out.append(b"," + dumps(key) + b":" + dumps(value))
        out.append(b',"messages":[')
        return b"".join(out)

    # ------------------------------------------------------------ shared parts

    def _message(self, m: Message, out: list[bytes]) -> None:
        """Append the pieces of ``m``'s JSON object to ``out``.

        A system message whose content is a ref is encoded once and kept here
        (a prompt shared by many agents); a `Filled` template is kept here as
        its encoded pieces, with this request's values between them; any
        other message (what one agent holds alone) is encoded once and kept
        by the message itself (``Message.wire``), so it lives as long as the
        agent's conversation and no longer.
        """
        wire = m.wire
        if wire is not None:
            out.append(_unpack(wire) if type(wire) is Packed else wire)
            return
        if _calls_only(m):
            out.append(_CALLS_HEAD)
            out.append(m.tool_calls.json())  # type: ignore[union-attr]
            out.append(b"}")
            return
        content = m.content
        t = type(content)
        plain = m.name is None and m.tool_call_id is None and not m.tool_calls
        if t is Filled and plain:
            self._filled(m.role, content, out)  # type: ignore[arg-type]
            return
        if t is Ref:
            if plain and m.role == "system":
                key: Any = (m.role, content)
            else:  # one agent's message: encoded once, kept by the message itself for its next requests
                wire = dumps(m.as_dict(self.text(content)))  # type: ignore[arg-type]
                object.__setattr__(m, "wire", _kept(wire))
                out.append(wire)
                return
        elif t is str and plain and len(content) >= self._share_min:  # type: ignore[arg-type]
            key = (m.role, content)
        else:
            wire = message_json(m)  # a text, a template with values of its own, or no content
            if t is not Filled:
                object.__setattr__(m, "wire", _kept(wire))
            out.append(wire)
            return
        data = self._shared.get(key)
        if data is None:
            self.shared_misses += 1
            text = self._resolve(content) if t is Ref else content  # type: ignore[arg-type]
            data = dumps({"role": m.role, "content": text})
            self._remember(key, data)
        else:
            self.shared_hits += 1
        out.append(data)

    def _filled(self, role: str, filled: Filled, out: list[bytes]) -> None:
        """The pieces of ``{"role": role, "content": <filled>}``: the template's, kept, and the values'."""
        key = ("template", role, filled.ref)
        parts = self._shared.get(key)
        if parts is None:
            self.shared_misses += 1
            parts = _template_parts(role, filled.template)
            self._remember(key, parts, sum(len(p) for p in parts))
        else:
            self.shared_hits += 1
        values = filled.values
        for i, part in enumerate(parts):
            if i % 2 == 0:
                out.append(part)  # type: ignore[arg-type]
                continue
            value = values.get(part)  # type: ignore[call-overload]
            out.append(_inner(value) if value is not None else _inner("{%s}" % part))

    def _stored(self, ref: Ref) -> bytes:
        """The JSON of the messages stored under ``ref`` (read for each request: kept nowhere else)."""
        store = self._store
        if store is None:
            raise RequestError(f"a request holds the stored messages {ref.short} but the gateway has no store")
        try:
            return store.get(ref, promote=False)  # type: ignore[no-any-return]
        except StoreError as exc:
            raise RequestError(f"stored messages {ref.short}: {exc}") from exc

    def text(self, ref: Ref) -> str:
        """The text stored under ``ref`` (UTF-8); `RequestError` if it is not there."""
        return self._resolve(ref)

    def _resolve(self, ref: Ref) -> str:
        store = self._store
        if store is None:
            raise RequestError(f"a message holds the ref {ref.short} but the gateway has no store")
        try:
            return store.get(ref).decode("utf-8")
        except StoreError as exc:
            raise RequestError(f"message content {ref.short}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise RequestError(f"message content {ref.short} is not UTF-8 text") from exc

    def _tools(self, tools: Any) -> bytes:
        if type(tools) is not Ref:
            return dumps(list(tools))
        key = ("tools", tools)
        data = self._shared.get(key)
        if data is not None:
            self.shared_hits += 1
            return data
        self.shared_misses += 1
        store = self._store
        if store is None:
            raise RequestError(f"the request's tools are the ref {tools.short} but the gateway has no store")
        try:
            specs = store.get_value(tools)
        except StoreError as exc:
            raise RequestError(f"tools {tools.short}: {exc}") from exc
        if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
            raise RequestError(f"tools {tools.short} is not a list of tool specs")
        data = dumps(specs)
        self._remember(key, data)
        return data

    def _remember(self, key: Any, data: Any, size: int | None = None) -> None:
        if (len(data) if size is None else size) <= self._shared.maxsize:
            self._shared[key] = data
