"""Deterministic replies of the embedded LLM server.

A reply depends only on the request: the canonical JSON of the request body
(sorted keys, no white space) is hashed with blake3, and the digest seeds the
choices. Same request, same reply; change any field (``seed``,
``temperature``, a message) and the text changes. Left out of the canonical
form are the fields that only shape the delivery or cut the output:
``stream``, ``stream_options``, ``max_tokens``, ``max_completion_tokens``,
``stop`` and ``n``. So a shorter ``max_tokens`` gives a prefix of the same
text, and choice 0 is the same whatever ``n``.

The reply is shaped so that demo agents make progress, checked in this order:

1. a ``tool_choice`` that forces a tool (``"required"`` or a named function):
   a tool call;
2. ``final_after`` or more assistant and tool messages already in the
   conversation: a final answer, text starting ``FINAL ANSWER:``;
3. a last user message that mentions "program" or "AVM": a short AVM program
   that compiles with `avm.compile` and runs to a result with no effects;
4. ``tools`` offered (and ``tool_choice`` not ``"none"``): one call of one of
   the offered tools, with JSON arguments that satisfy its parameters schema
   (every required property, with a value of the right JSON type);
5. ``response_format`` json_object / json_schema: a JSON text (matching the
   schema);
6. otherwise a few plausible sentences, using words of the last user message.

Token counts use one documented approximation: **a token is 4 characters**,
``tokens(text) = ceil(len(text) / 4)``; a chat message adds 4 tokens, a
conversation 3, an offered tool 8 plus its name and description; a prompt of
token ids (``/v1/completions``) counts its ids, and is read as the text
`prompt_text` makes of them. Text
replies honour ``max_tokens`` (cut at ``4 * max_tokens`` characters,
finish_reason ``"length"``) and ``stop`` (cut before the first stop sequence,
finish_reason ``"stop"``), whichever comes first. Tool calls are never cut.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import blake3

from avm.io.embedded.faults import LLMServerError
from avm.io.json_codec import canonical as _canonical

_ASKS_PROGRAM = re.compile(r"\b(?:programs?|avm)\b", re.IGNORECASE)

_STOPWORDS = frozenset("""about above after again against also because been before being below between
both could does doing down during each from further have having here into itself just more most
once only other over same should some such than that their them then there these they this those
through under until very were what when where which while with would your please list write tell
give make three facts using short true false null""".split())
_OPENERS = ["In short", "Broadly", "On balance", "At first glance", "Looking closer", "Put simply",
            "To begin with", "As a rule", "For now"]
_SUBJECTS = ["the data", "the evidence", "the first result", "this approach", "the main source", "our plan",
             "the second step", "the latest report", "each sample", "the summary", "the model", "the record"]
_VERBS = ["suggests", "shows", "supports", "points to", "confirms", "hints at", "depends on", "explains",
          "rules out", "leads to", "highlights", "reflects"]
_OBJECTS = ["a clear pattern", "a modest effect", "two open questions", "the expected trend", "a useful baseline",
            "a simple answer", "a likely cause", "several small gains", "a stable result", "one caveat",
            "a better estimate", "the known limits"]
_TAILS = ["", "", "", " in most cases", " so far", " with some noise", " over time", " for now",
          " at small scale", " under load"]
_POOL = ["river", "signal", "harbor", "lantern", "meadow", "circuit", "glacier", "orchard", "beacon",
         "compass", "ledger", "mosaic", "quartz", "summit", "timber", "violet", "willow", "ember"]


class BadRequest(LLMServerError):
    """A request the server answers with 400 (it never leaves the server)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Choice:
    """One generated choice: text or tool calls, and why it ended."""

    content: str | None
    tool_calls: tuple[dict[str, Any], ...] | None
    finish_reason: str  # "stop", "length" or "tool_calls"
    tokens: int  # completion tokens of this choice


def tokens(text: str) -> int:
    """The token count of a text: one token per 4 characters, rounded up."""
    return (len(text) + 3) // 4


UNSEEDED = ("stream", "stream_options", "max_tokens", "max_completion_tokens", "stop", "n")


def canonical(body: dict[str, Any], skip: tuple[str, ...] = UNSEEDED) -> bytes:
    """The canonical JSON of a request body: sorted keys, compact, without `skip`."""
    if any(key in body for key in skip):
        body = {k: v for k, v in body.items() if k not in skip}
    return _canonical(body)


def digest(data: bytes) -> bytes:
    """The blake3 digest (32 bytes) that seeds a reply."""
    return blake3.blake3(data).digest()


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def chat_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a chat request (see the module docstring)."""
    total = 3
    for message in body["messages"]:
        total += 4 + tokens(message_text(message.get("content")))
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += tokens(str(function.get("name", ""))) + tokens(str(function.get("arguments", "")))
    for tool in body.get("tools") or ():
        function = tool["function"]
        total += 8 + tokens(function["name"]) + tokens(str(function.get("description", "")))
    return total


_PUNCT = ".,;:!?\"'()[]{}<>*`"
_PREDICATES = tuple(f" {v} {o}{t}." for v in _VERBS for o in _OBJECTS for t in _TAILS)
_KINDS = ("case", "question", "data", "story")


class Bits:
    """Draws from the bits of a digest (mixed radix): cheap, deterministic choices."""

    __slots__ = ("value",)

    def __init__(self, seed: bytes):
        self.value = int.from_bytes(seed, "little")

    def below(self, n: int) -> int:
        """A number in range(n), consuming about log2(n) bits (0 once they run out)."""
        value, self.value = self.value % n, self.value // n
        return value


def _topic(text: str) -> list[str]:
    """Up to three distinct content words of a text, in order, lower case."""
    found: list[str] = []
    looked = 0
    for raw in text[:1200].split():
        if len(raw) < 4:
            continue
        looked += 1
        if looked > 40:
            break
        word = raw.strip(_PUNCT)
        if 4 <= len(word) <= 16 and word.isascii() and word.isalpha():
            word = word.lower()
            if word not in _STOPWORDS and word not in found:
                found.append(word)
                if len(found) == 3:
                    break
    return found


def _sentences(bits: Bits, topic: Sequence[str], count: int) -> str:
    subjects = _SUBJECTS + [f"the {t} {k}" for t in topic for k in _KINDS]
    parts = []
    for i in range(count):
        sentence = subjects[bits.below(len(subjects))] + _PREDICATES[bits.below(len(_PREDICATES))]
        if i == 0 and bits.below(2):
            sentence = f"{_OPENERS[bits.below(len(_OPENERS))]}, {sentence}"
        parts.append(sentence[0].upper() + sentence[1:])
    return " ".join(parts)


def plain_text(bits: Bits, topic: Sequence[str]) -> str:
    """A plausible reply of two to five sentences."""
    return _sentences(bits, topic, 2 + bits.below(4))


def final_answer(bits: Bits, topic: Sequence[str]) -> str:
    """A final answer: one or two sentences after ``FINAL ANSWER:``."""
    return "FINAL ANSWER: " + _sentences(bits, topic, 1 + bits.below(2))


# --------------------------------------------------------------------------
# AVM programs: each template compiles and runs to a value with no effects.
# --------------------------------------------------------------------------

def _program_sum(rng: random.Random, topic: Sequence[str]) -> str:
    n = rng.randint(5, 50)
    return (f"# AVM program: the sum of the numbers 1 to {n}.\n"
            "    push 0\n    store total\n    push 1\n    store i\nloop:\n    load i\n"
            f"    push {n}\n    le\n    jump_unless done\n    load total\n    load i\n    add\n"
            "    store total\n    load i\n    push 1\n    add\n    store i\n    jump loop\n"
            "done:\n    load total\n    return\n")


def _program_factorial(rng: random.Random, topic: Sequence[str]) -> str:
    n = rng.randint(3, 12)
    return (f"# AVM program: {n} factorial.\n"
            f"    push 1\n    store acc\n    push {n}\n    store k\nloop:\n    load k\n    push 1\n"
            "    gt\n    jump_unless done\n    load acc\n    load k\n    mul\n    store acc\n"
            "    load k\n    push 1\n    sub\n    store k\n    jump loop\ndone:\n    load acc\n    return\n")


def _program_words(rng: random.Random, topic: Sequence[str]) -> str:
    words = list(topic) or rng.sample(_POOL, 3)
    text = " ".join(rng.choice(words) if rng.random() < 0.5 else rng.choice(_POOL) for _ in range(rng.randint(4, 9)))
    return (f"# AVM program: count the words of a text.\n"
            f'    push "{text}"\n    call split 1\n    len\n    store n\n'
            '    push "the text has {n} words"\n    format\n    return\n')


def _program_sorted(rng: random.Random, topic: Sequence[str]) -> str:
    words = (list(topic) + rng.sample(_POOL, 4))[: rng.randint(3, 5)]
    pushes = "".join(f"    push {w}\n" for w in words)
    return (f"# AVM program: sort {len(words)} words and join them.\n"
            f"{pushes}    list {len(words)}\n    call sort 1\n    push \", \"\n    call join 2\n    return\n")


def _program_squares(rng: random.Random, topic: Sequence[str]) -> str:
    n = rng.randint(3, 8)
    return (f"# AVM program: the squares of 0 to {n - 1}, as JSON.\n"
            f"    push {n}\n    call range 1\n    store xs\n    list 0\n    store out\n    push 0\n    store i\n"
            "loop:\n    load i\n    load xs\n    len\n    lt\n    jump_unless done\n    load out\n"
            "    load xs\n    load i\n    get\n    dup\n    mul\n    append\n    store out\n"
            "    load i\n    push 1\n    add\n    store i\n    jump loop\n"
            "done:\n    load out\n    call json_dump 1\n    return\n")


PROGRAM_TEMPLATES = (_program_sum, _program_factorial, _program_words, _program_sorted, _program_squares)


def avm_program(rng: random.Random, topic: Sequence[str]) -> str:
    """A short AVM program (one of `PROGRAM_TEMPLATES`, parameters from `rng`)."""
    return rng.choice(PROGRAM_TEMPLATES)(rng, topic)


# --------------------------------------------------------------------------
# JSON values for a JSON schema (tool arguments, response formats).
# --------------------------------------------------------------------------

def _first_type(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or kind
        return kinds[0] if kinds else None
    if kind is None and "properties" in schema:
        return "object"
    return kind if isinstance(kind, str) else None


def _text_value(rng: random.Random, topic: Sequence[str], schema: dict[str, Any]) -> str:
    fmt = schema.get("format")
    if fmt == "date":
        text = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    elif fmt == "date-time":
        text = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z"
    elif fmt == "email":
        text = f"{rng.choice(_POOL)}@example.com"
    elif fmt in ("uri", "url"):
        text = f"https://example.com/{rng.choice(_POOL)}"
    else:
        words = list(topic) if topic else rng.sample(_POOL, 2)
        text = " ".join(words[: rng.randint(1, len(words))])
    lo, hi = schema.get("minLength"), schema.get("maxLength")
    if isinstance(lo, int) and len(text) < lo:
        text = (text + " " + " ".join(_POOL))[:lo] if lo > 0 else text
        text = text.ljust(lo, "x")
    if isinstance(hi, int) and hi >= 0 and len(text) > hi:
        text = text[:hi]
    return text


def _number_bounds(schema: dict[str, Any]) -> tuple[float, float]:
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    lo = lo if isinstance(lo, (int, float)) and not isinstance(lo, bool) else None
    hi = hi if isinstance(hi, (int, float)) and not isinstance(hi, bool) else None
    if lo is None and hi is None:
        return 1, 10
    if lo is None:
        assert hi is not None  # (both None returned above)
        return min(1, hi - 10), hi
    if hi is None:
        return lo, lo + 10
    return lo, max(lo, hi)


def value_for(schema: Any, rng: random.Random, topic: Sequence[str], depth: int = 0) -> Any:
    """A JSON value that satisfies a (common subset of) JSON schema."""
    if not isinstance(schema, dict):
        return _text_value(rng, topic, {})
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    if isinstance(schema.get("examples"), list) and schema["examples"]:  # as a model would, it follows them
        return rng.choice(schema["examples"])
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            typed = [o for o in options if isinstance(o, dict) and o.get("type") != "null"] or options
            return value_for(typed[0] if key == "allOf" else rng.choice(typed), rng, topic, depth + 1)
    kind = _first_type(schema)
    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = [r for r in schema.get("required") or () if isinstance(r, str)]
        value: dict[str, Any] = {}
        for name, sub in properties.items():
            if name in required or (depth < 3 and rng.random() < 0.25):
                value[name] = value_for(sub, rng, topic, depth + 1)
        for name in required:  # required but not described: any text will do
            value.setdefault(name, _text_value(rng, topic, {}))
        return value
    if kind == "array":
        lo = schema.get("minItems", 1)
        hi = schema.get("maxItems", max(lo, 2) if isinstance(lo, int) else 2)
        lo = lo if isinstance(lo, int) and lo >= 0 else 1
        hi = hi if isinstance(hi, int) and hi >= lo else lo
        count = rng.randint(lo, min(hi, lo + 2)) if depth < 4 else lo
        return [value_for(schema.get("items", {}), rng, topic, depth + 1) for _ in range(count)]
    if kind == "integer":
        lo, hi = _number_bounds(schema)
        ilo = int(lo) + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
        ihi = int(hi) - (1 if "exclusiveMaximum" in schema and "maximum" not in schema else 0)
        return rng.randint(ilo, max(ilo, ihi))
    if kind == "number":
        lo, hi = _number_bounds(schema)
        return round(lo + (hi - lo) * rng.random(), 2) if hi > lo else lo
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _text_value(rng, topic, schema)


# --------------------------------------------------------------------------
# Choosing the reply.
# --------------------------------------------------------------------------

def finish(text: str, max_tokens: int | None, stop: Sequence[str]) -> tuple[str, str]:
    """Cut a text at the first stop sequence or at max_tokens: (text, finish_reason)."""
    cut = -1
    for s in stop:
        if s:
            at = text.find(s)
            if at >= 0 and (cut < 0 or at < cut):
                cut = at
    limit = None if max_tokens is None else 4 * max_tokens
    if cut >= 0 and (limit is None or cut < limit):
        return text[:cut], "stop"
    if limit is not None and len(text) > limit:
        return text[:limit], "length"
    return text, "stop"


def _stop_list(body: dict[str, Any]) -> Sequence[str]:
    stop = body.get("stop")
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else stop


def _max_tokens(body: dict[str, Any], default: int | None) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return default if value is None else value


def _text_choice(text: str, body: dict[str, Any], default_max: int | None) -> Choice:
    text, reason = finish(text, _max_tokens(body, default_max), _stop_list(body))
    return Choice(text, None, reason, tokens(text))


def _tool_choice(tool: dict[str, Any], rng: random.Random, topic: Sequence[str]) -> Choice:
    function = tool["function"]
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    arguments = value_for(parameters, rng, topic)
    if not isinstance(arguments, dict):
        arguments = {}
    text = json.dumps(arguments, ensure_ascii=False)
    call = {"id": f"call_{rng.getrandbits(96):024x}", "type": "function",
            "function": {"name": function["name"], "arguments": text}}
    return Choice(None, (call,), "tool_calls", tokens(function["name"]) + tokens(text))


def asks_for_program(text: str) -> bool:
    """True if a text mentions "program" or "AVM" (as words)."""
    low = text.lower()
    return ("program" in low or "avm" in low) and _ASKS_PROGRAM.search(text) is not None


def _seed(seed: bytes, index: int) -> bytes:
    return seed if index == 0 else blake3.blake3(seed + index.to_bytes(4, "little")).digest()


def _rng(seed: bytes) -> random.Random:
    return random.Random(int.from_bytes(seed[:16], "little"))


def chat_choice(body: dict[str, Any], seed: bytes, index: int, final_after: int) -> Choice:
    """Choice `index` of a (validated) chat request whose digest is `seed`."""
    seed = _seed(seed, index)
    messages = body["messages"]
    last_user: Any = ""
    first_user: Any = None
    turns = 0
    for message in messages:
        role = message.get("role")
        if role == "user":
            last_user = message.get("content")
            if first_user is None:
                first_user = last_user
        elif role == "assistant" or role == "tool":
            turns += 1
    last_text = message_text(last_user)
    tools = body.get("tools") or ()
    choice = body.get("tool_choice")
    if tools and (choice == "required" or isinstance(choice, dict)):
        if isinstance(choice, dict):
            name = choice["function"]["name"]
            tools = [t for t in tools if t["function"]["name"] == name]
        rng = _rng(seed)
        return _tool_choice(tools[rng.randrange(len(tools))], rng, _topic(last_text))
    if turns >= final_after:
        return _text_choice(final_answer(Bits(seed), _topic(message_text(first_user))), body, None)
    topic = _topic(last_text)
    if asks_for_program(last_text):
        return _text_choice(avm_program(_rng(seed), topic), body, None)
    if tools and choice != "none":
        rng = _rng(seed)
        return _tool_choice(tools[(rng.getrandbits(16) + turns) % len(tools)], rng, topic)
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        rng = _rng(seed)
        schema = (response_format.get("json_schema") or {}).get("schema")
        value = value_for(schema, rng, topic) if schema else {"answer": plain_text(Bits(seed), topic)}
        return _text_choice(json.dumps(value, ensure_ascii=False), body, None)
    return _text_choice(plain_text(Bits(seed), topic), body, None)


def completion_choice(body: dict[str, Any], prompt: str, seed: bytes, index: int,
                      default_max: int | None) -> Choice:
    """Choice `index` for one prompt of a (validated) completions request."""
    seed = _seed(seed, index)
    topic = _topic(prompt)
    if asks_for_program(prompt):
        return _text_choice(avm_program(_rng(seed), topic), body, default_max)
    return _text_choice(" " + plain_text(Bits(seed), topic), body, default_max)


# --------------------------------------------------------------------------
# Validation: just enough to refuse what a real server would refuse.
# --------------------------------------------------------------------------

_ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _want_int(body: dict[str, Any], name: str, lo: int, hi: int, where: str) -> None:
    value = body.get(name)
    if value is None:
        return
    if type(value) is not int:
        raise BadRequest(f"{where}{name} must be an integer, not {_kind(value)}", where + name, "invalid_type")
    if not lo <= value <= hi:
        raise BadRequest(f"{where}{name} must be in {lo}..{hi}, not {value}", where + name, "invalid_value")


# OpenAI's ranges of the sampling numbers (its API reference for chat and completions; a value outside
# gets 400 there). vLLM bounds temperature below only; clients written against OpenAI stay in these.
_NUMBER_RANGES = (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0), ("presence_penalty", -2.0, 2.0),
                  ("frequency_penalty", -2.0, 2.0))


def _want_number(body: dict[str, Any], name: str, lo: float, hi: float, where: str) -> None:
    value = body.get(name)
    if value is None:
        return
    if type(value) not in (int, float):  # a bool is not a number here, as in OpenAI's API
        raise BadRequest(f"{where}{name} must be a number, not {_kind(value)}", where + name, "invalid_type")
    if not lo <= value <= hi:  # (NaN and infinities never get here: the JSON parser refuses them)
        raise BadRequest(f"{where}{name} must be between {lo:g} and {hi:g}, not {value!r}", where + name,
                         "invalid_value")


def _check_common(body: Any, where: str) -> None:
    if not isinstance(body, dict):
        raise BadRequest(f"{where or 'the request body'} must be a JSON object, not {_kind(body)}",
                         where.rstrip(".") or None, "invalid_type")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"{where}model must be a string, not {_kind(model)}", where + "model", "invalid_type")
    _want_int(body, "max_tokens", 1, 1 << 30, where)
    _want_int(body, "max_completion_tokens", 1, 1 << 30, where)
    _want_int(body, "n", 1, 128, where)
    _want_int(body, "seed", -(1 << 63), (1 << 64) - 1, where)
    for name, lo, hi in _NUMBER_RANGES:
        _want_number(body, name, lo, hi, where)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
        raise BadRequest(f"{where}stop must be a string or a list of up to 4 strings", where + "stop", "invalid_type")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(f"{where}stream must be a boolean, not {_kind(stream)}", where + "stream", "invalid_type")


def _check_tools(body: dict[str, Any], where: str) -> None:
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest(f"{where}tools must be an array, not {_kind(tools)}", where + "tools", "invalid_type")
        for i, tool in enumerate(tools):
            at = f"{where}tools[{i}]"
            function = tool.get("function") if isinstance(tool, dict) else None
            if (not isinstance(tool, dict) or tool.get("type", "function") != "function"
                    or not isinstance(function, dict)):
                raise BadRequest(f"{at} must be a function tool: {{\"type\": \"function\", \"function\": {{...}}}}",
                                 at, "invalid_type")
            name = function.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise BadRequest(f"{at}.function.name must be 1-64 letters, digits, _ or -", at + ".function.name",
                                 "invalid_value")
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise BadRequest(f"{at}.function.parameters must be an object", at + ".function.parameters",
                                 "invalid_type")
            names.append(name)
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto"):
        return
    if choice == "required":
        if not names:
            raise BadRequest(f"{where}tool_choice is 'required' but no tools are offered", where + "tool_choice",
                             "invalid_value")
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(function, dict) or function.get("name") not in names:
        raise BadRequest(f"{where}tool_choice must be none, auto, required or a function among the tools",
                         where + "tool_choice", "invalid_value")


def check_chat(body: Any, where: str = "") -> None:
    """Raise `BadRequest` unless `body` is a chat completions request."""
    _check_common(body, where)
    messages = body.get("messages")
    if messages is None:
        raise BadRequest(f"{where}messages is required", where + "messages", "missing_field")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"{where}messages must be a non-empty array", where + "messages", "invalid_type")
    for i, message in enumerate(messages):
        at = f"{where}messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{at} must be an object, not {_kind(message)}", at, "invalid_type")
        role = message.get("role")
        if role not in _ROLES:
            code = "missing_field" if role is None else "invalid_value"
            raise BadRequest(f"{at}.role must be one of {', '.join(sorted(_ROLES))}", at + ".role", code)
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"{at}.content must be a string or an array of parts", at + ".content", "invalid_type")
        if role == "tool":  # OpenAI and vLLM require it: it says which call of the assistant this answers
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                code = "missing_field" if call_id is None else "invalid_type"
                raise BadRequest(f"{at}.tool_call_id is required in a tool message: the id of the tool call it "
                                 f"answers (a string)", at + ".tool_call_id", code)
    _check_tools(body, where)


# vLLM's batch request (vllm-project/vllm: vllm/entrypoints/openai/chat_completion/protocol.py,
# BatchChatCompletionRequest and its check_batch_mode validator; served by batch_serving.py).
BATCH_DROPPED = ("messages", "tools")  # not passed on to a conversation's single request


def check_batch(body: Any) -> list[dict[str, Any]]:
    """Raise `BadRequest` unless `body` is a vLLM batch chat request; return its items.

    The request is one object whose ``messages`` is a list of conversations
    (each a non-empty list of messages) and whose other fields are shared by
    all of them. Item ``i`` is the single chat request conversation ``i``
    stands for: the shared fields without ``tools`` (vLLM accepts them and
    ignores them: its batch ``tool_choice`` can only be ``"none"``), plus
    ``messages``. Refused as vLLM refuses them: ``n`` other than 1 (or null),
    ``tool_choice`` other than ``"none"`` (or null), ``use_beam_search``;
    refused here although vLLM 0.26 answers them with empty text (its issue
    #50026): ``stream: true``. Params are paths such as ``messages[1][0].role``.
    """
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {_kind(body)}; "
                         "a batch is one object whose messages is a list of conversations", "body", "invalid_type")
    if body.get("use_beam_search"):
        raise BadRequest("Batch chat completions do not support beam search. Please set `use_beam_search` to False.",
                         "use_beam_search", "invalid_value")
    n = body.get("n", 1)
    if n is not None and (type(n) is not int or n != 1):
        raise BadRequest(f"Batch chat completions do not support `n > 1`. Please set `n` to 1 (not {n!r}).",
                         "n", "invalid_value")
    choice = body.get("tool_choice")
    if choice is not None and choice != "none":
        raise BadRequest(f"Batch chat completions do not support tool use: tool_choice must be 'none' or null, "
                         f"not {json.dumps(choice)}", "tool_choice", "invalid_value")
    if body.get("stream") is True:
        raise BadRequest("Batch chat completions do not support streaming: set `stream` to false or leave it out "
                         "(or send each conversation to /v1/chat/completions)", "stream", "invalid_value")
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("messages is required: a list of conversations, each a list of messages", "messages",
                         "missing_field")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of conversations, each a list of messages",
                         "messages", "invalid_type")
    if body.get("tools") is not None:
        _check_tools({"tools": body["tools"]}, "")  # shaped as in a single request, then ignored
    shared = {k: v for k, v in body.items() if k not in BATCH_DROPPED}
    items: list[dict[str, Any]] = []
    for i, conversation in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(conversation, list) or not conversation:
            what = "an empty list" if isinstance(conversation, list) else _kind(conversation)
            raise BadRequest(f"{at} must be a conversation: a non-empty list of messages, not {what}", at,
                             "invalid_type")
        item = {**shared, "messages": conversation}
        try:
            check_chat(item)
        except BadRequest as exc:  # name the conversation in a message's path
            if exc.param and exc.param.startswith("messages["):
                raise BadRequest(at + exc.message[len("messages"):], at + exc.param[len("messages"):],
                                 exc.code) from None
            raise
        items.append(item)
    return items


# The prompt of /v1/completions is what OpenAI's API and vLLM take: a string, a list of strings, a list of
# token ids, or a list of lists of token ids (vllm-project/vllm: vllm/entrypoints/openai/protocol.py,
# CompletionRequest.prompt, now in vllm/entrypoints/openai/completion/protocol.py, where an id is an int >= 0).
# A list of token ids is one prompt; each of the other lists holds one prompt per item.
Prompt = str | list[int]
MAX_TOKEN_ID = (1 << 31) - 1  # token ids are 32-bit in inference engines; the fake model has no vocabulary
_PROMPT_FORMS = "a string, an array of strings, an array of token ids or an array of arrays of token ids"


def _token_ids(ids: list[Any], at: str) -> list[int]:
    """``ids`` if it is a non-empty list of token ids, else `BadRequest` naming ``at``."""
    if not ids:
        raise BadRequest(f"{at} must not be an empty array of token ids", at, "invalid_value")
    for i, token in enumerate(ids):
        if type(token) is not int:
            raise BadRequest(f"{at}[{i}] must be a token id (an integer), not {_kind(token)}; prompt is "
                             f"{_PROMPT_FORMS}", f"{at}[{i}]", "invalid_type")
        if not 0 <= token <= MAX_TOKEN_ID:
            raise BadRequest(f"{at}[{i}] must be a token id in 0..{MAX_TOKEN_ID}, not {token}", f"{at}[{i}]",
                             "invalid_value")
    return ids


def check_completion(body: Any) -> list[Prompt]:
    """Raise `BadRequest` unless `body` is a completions request; return its prompts (texts or token ids)."""
    _check_common(body, "")
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest("prompt is required", "prompt", "missing_field")
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list) or not prompt:
        what = "an empty array" if isinstance(prompt, list) else _kind(prompt)
        raise BadRequest(f"prompt must be {_PROMPT_FORMS}, not {what}", "prompt", "invalid_type")
    first = prompt[0]
    if type(first) is int:  # one prompt of token ids
        return [_token_ids(prompt, "prompt")]
    if isinstance(first, str):
        for i, p in enumerate(prompt):
            if not isinstance(p, str):
                raise BadRequest(f"prompt[{i}] must be a string like prompt[0], not {_kind(p)}", f"prompt[{i}]",
                                 "invalid_type")
        return prompt
    if isinstance(first, list):
        for i, p in enumerate(prompt):
            if not isinstance(p, list):
                raise BadRequest(f"prompt[{i}] must be an array of token ids like prompt[0], not {_kind(p)}",
                                 f"prompt[{i}]", "invalid_type")
            _token_ids(p, f"prompt[{i}]")
        return prompt
    raise BadRequest(f"prompt must be {_PROMPT_FORMS}; prompt[0] is {_kind(first)}", "prompt[0]", "invalid_type")


def prompt_text(prompt: Prompt) -> str:
    """The text the fake model reads in a prompt.

    A prompt of token ids has no tokenizer to decode it with: id ``i`` reads
    as the word ``_POOL[i % len(_POOL)]`` ("river", "signal", ...), the words
    joined by spaces, so the reply takes up words of its prompt as it does
    for a text. Only the reading is lossy: the reply's seed is the digest of
    the ids themselves, so different ids get different replies.
    """
    if isinstance(prompt, str):
        return prompt
    pool = _POOL
    return " ".join([pool[i % len(pool)] for i in prompt])


def prompt_token_count(prompt: Prompt) -> int:
    """The prompt tokens of a prompt: its ids counted exactly, or a text's approximation (`tokens`)."""
    return tokens(prompt) if isinstance(prompt, str) else len(prompt)
