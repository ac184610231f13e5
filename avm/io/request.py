"""LLM requests and responses, and the cache key.

A request names a model, its messages (each content a text or a `Ref` into
the store), sampling parameters, a response format or grammar, and tools.
`cache_key()` is the blake3 of a canonical form holding every parameter that
can change the output, where each omitted parameter is replaced by the
backend's default (OpenAI's defaults: temperature 1.0, top_p 1.0, no
max_tokens, no stop, n 1, penalties 0), texts by their content refs, and
numbers by floats, so that:

- the same request written with or without explicit defaults, with a
  message given as text or as the ref of that text, has the same key;
- any change that can change the reply changes the key.

A response is cacheable only when that is safe: temperature 0, or an
explicit seed, or the caller opted in (`cache=True`).

Past messages may be kept *stored*: a `Ref` among the messages stands for
consecutive messages whose JSON objects, comma-separated, are stored under it
(what an agent keeps of its past turns: one object in the store per turn, not
a `Message` per message; see `avm.conversation.store_turn`). It is sent as those objects and
keyed by its ref: the same messages given one by one key differently.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from avm.errors import AvmError
from avm.io.packing import unpack
from avm.memory.ref import Ref, hash_bytes
from avm.memory.values import encode_value

ROLES = ("system", "user", "assistant", "tool")
DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "max_tokens": None,
    "stop": [],
    "seed": None,
    "n": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "response_format": {"type": "text"},
    "grammar": None,
}


class RequestError(AvmError, ValueError):
    """A request that cannot be sent (a bad parameter, an unknown role...)."""


PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Filled:
    """A text made of a shared template and a few values: ``{name}`` replaced by ``values[name]``.

    A thousand agents share one 8 KB system prompt template, each filled with
    its own name and task. Rendering it for every request would hold 8 KB per
    agent twice while the request waits (the text and its JSON); a `Filled`
    holds the shared template (the same object for every agent) and the
    values only, and the wire encoder (`avm.io.wire`) sends the template's
    encoded pieces with the values between them. ``text()`` renders it for
    the few who need the whole text (the cache key of a cacheable request).
    A placeholder without a value stays as written.
    """

    __slots__ = ("ref", "template", "values")

    def __init__(self, template: str, ref: Any, values: dict[str, str]):
        self.template = template  # the shared text (never copied)
        self.ref = ref  # its ref, which names the template's encoded pieces in the encoder's cache
        self.values = values  # placeholder name -> text

    def text(self) -> str:
        values = self.values
        return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), self.template)

    def __repr__(self) -> str:
        return f"Filled({self.ref!r}, {self.values!r})"


class ToolCalls(bytes):
    """An assistant message's tool calls as one compact JSON array, OpenAI's
    ``[{"id", "type": "function", "function": {"name", "arguments"}}, ...]``: what the wire encoder sends
    as is. A conversation keeps one per turn (until the VM stores the turn), so this is one bytes object
    where the parsed calls were a list of dicts of strings (about 250 bytes more per turn)."""

    __slots__ = ()

    def json(self) -> bytes:
        """The calls' JSON."""
        return self

    def calls(self) -> list[Any]:
        """The calls as dicts (a new list each time)."""
        return json.loads(self.json())  # type: ignore[no-any-return]


class PackedCalls(ToolCalls):
    """`ToolCalls` kept packed (`avm.io.packing`: about a quarter of their JSON in a fleet); equal to, and
    hashed as, the same calls kept plain."""

    __slots__ = ()

    def json(self) -> bytes:
        return unpack(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ToolCalls):
            return self.json() == other.json()
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, ToolCalls):
            return self.json() != other.json()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.json())


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str | Ref | Filled | None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[Any, ...] | ToolCalls = ()  # dicts as OpenAI writes them, or their JSON
    # The message's JSON as the wire encoder made it, kept by the message for the next turns (an agent's
    # conversation is sent again with every request); not part of the message's identity.
    wire: bytes | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise RequestError(f"unknown message role {self.role!r} (one of {', '.join(ROLES)})")
        content = self.content
        if content is not None and type(content) is not str and type(content) is not Filled and not isinstance(
                content, Ref):
            raise RequestError(f"message content must be text or a Ref, not {type(content).__name__}")

    def canonical(self) -> dict[str, Any]:
        content = self.content
        if type(content) is Filled:
            content = content.text()
        if type(content) is str:
            content = hash_bytes(content.encode("utf-8", "surrogatepass"))
        return self.as_dict(content)

    def as_dict(self, content: Any) -> dict[str, Any]:
        """The message as a chat-completions dict, with ``content`` as given (text, or its hash)."""
        out: dict[str, Any] = {"role": self.role, "content": content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        calls = self.tool_calls
        if calls:
            out["tool_calls"] = calls.calls() if isinstance(calls, ToolCalls) else list(calls)
        return out


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, not {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class LLMRequest:
    model: str
    messages: tuple[Message | Ref, ...]  # a Ref: messages stored as their JSON (see the module docstring)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | tuple[str, ...] | None = None
    seed: int | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    grammar: str | None = None
    tools: tuple[dict[str, Any], ...] | Ref | None = None
    tool_choice: str | dict[str, Any] | None = None
    cache: bool = False  # opt in to caching a sampled (temperature > 0, unseeded) reply
    extra: dict[str, Any] = field(default_factory=dict)  # other backend parameters, part of the key

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise RequestError("a request needs a model name")
        if not self.messages:
            raise RequestError("a request needs at least one message")
        for m in self.messages:
            if type(m) is not Message and type(m) is not Ref and not isinstance(m, (Message, Ref)):
                raise RequestError(f"a request's messages are Messages or Refs of stored ones, not "
                                   f"{type(m).__name__}")

    def normalised(self) -> dict[str, Any]:
        """Every output-affecting parameter, defaults filled in, in canonical form."""
        p: dict[str, Any] = dict(DEFAULTS)
        if self.temperature is not None:
            p["temperature"] = _number("temperature", self.temperature, 0.0, 2.0)
        if self.top_p is not None:
            p["top_p"] = _number("top_p", self.top_p, 0.0, 1.0)
        if self.max_tokens is not None:
            if type(self.max_tokens) is not int or self.max_tokens < 1:
                raise RequestError(f"max_tokens must be a positive int, not {self.max_tokens!r}")
            p["max_tokens"] = self.max_tokens
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
            if not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
                raise RequestError("stop must be a non-empty text or up to 4 of them")
            p["stop"] = sorted(set(stops))
        if self.seed is not None:
            if type(self.seed) is not int:
                raise RequestError(f"seed must be an int, not {self.seed!r}")
            p["seed"] = self.seed
        if self.n is not None:
            if type(self.n) is not int or self.n < 1:
                raise RequestError(f"n must be a positive int, not {self.n!r}")
            p["n"] = self.n
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None:
                p[name] = _number(name, value, -2.0, 2.0)
        if self.response_format is not None:
            p["response_format"] = self.response_format
        if self.grammar is not None:
            p["grammar"] = self.grammar
        tools: Any = self.tools
        if tools is None or (not isinstance(tools, Ref) and len(tools) == 0):
            tools = []
        elif not isinstance(tools, Ref):
            tools = list(tools)
        p["tools"] = tools
        choice = self.tool_choice
        if choice is None:
            choice = "auto" if tools else "none"
        p["tool_choice"] = choice
        p["model"] = self.model
        p["messages"] = [{"stored": m} if isinstance(m, Ref) else m.canonical() for m in self.messages]
        for key, value in self.extra.items():
            if key in p:
                raise RequestError(f"extra parameter {key!r} shadows a named one")
            p[key] = value
        return p

    def cache_key(self) -> Ref:
        """blake3 of the canonical request (see the module docstring)."""
        try:
            return hash_bytes(encode_value(self.normalised()))
        except TypeError as exc:
            raise RequestError(f"request holds a value that cannot be keyed: {exc}") from None

    @property
    def cacheable(self) -> bool:
        temperature = DEFAULTS["temperature"] if self.temperature is None else self.temperature
        return temperature == 0 or self.seed is not None or self.cache


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class LLMResponse:
    text: str
    finish_reason: str
    usage: Usage
    latency: float  # seconds from hand-over to the gateway until the reply
    cached: bool = False
    tool_calls: tuple[Any, ...] = ()
