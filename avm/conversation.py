"""What the `llm` instruction sends and what it gives back.

**The instruction.** ``llm`` pops one operand, the message, and pushes one
result, the reply. The message is

- a text: one user message;
- a map: one message, ``{"content": ..., "role": "user"}`` where ``role`` is
  user (the default), assistant, system or tool; a tool message names the
  call it answers with ``"tool_call_id"``; a content that is not text is sent
  as its JSON;
- a list of texts and maps: several messages, in order.

The runtime appends the message(s) to the agent's conversation and sends the
model the agent's system prompt, the specs of the tools granted to it and the
whole conversation, then appends the model's reply to the conversation and
pushes

- the reply's text, when the model answered in text;
- a map ``{"text": text or null, "tool_calls": [{"id", "name",
  "arguments"}...]}`` when it called tools (``arguments`` a map), so a
  program can test ``call type 1`` for "map", take ``tool_calls`` and run
  ``tool NAME 1`` with the arguments map, then answer with a tool message;
- an error value ``{"error": {"tool": "llm", "type": kind, "message": ...}}``
  when the gateway gave up on the request (after its retries). The program
  may test it; a program that retries the same failing request forever is
  ended as STALLED.

**What is stored.** The messages of a turn (what the program sent, and the
reply before them) are `Message` objects with their texts only until the
turn's request is built; then the agent stores their JSON as one object in
the store (compressed, in its warm tier) and its conversation keeps that
object's `Ref` in their place (`store_turn`): a conversation is a list of
refs, one per turn, and two agents whose turns are the same hold refs to one
object. The system prompt is a template stored once: when it has ``{name}``
placeholders they are filled from the agent's inputs while the request is
built, and the rendered text lives only as long as the request. A template
without placeholders is sent as its ref.
"""

from __future__ import annotations

import json
from typing import Any

from avm.errors import ProgramError, StoreError
from avm.io.request import PLACEHOLDER, ROLES, Filled, Message, RequestError
from avm.io.wire import message_json
from avm.io.wire import tool_calls as keep_calls
from avm.lang.values import render
from avm.memory.ref import Ref
from avm.tools.registry import error_value


class MessageError(ProgramError, ValueError):
    """An llm operand that is not a message (the program faults with it)."""


def placeholders(template: str) -> tuple[str, ...]:
    """The distinct {name} placeholders of a system prompt template, in order."""
    return tuple(dict.fromkeys(PLACEHOLDER.findall(template)))


def fill(template: str, inputs: dict[str, Any]) -> str:
    """The template with each {name} that names an input replaced by it (texts as is,
    other values as their JSON); a placeholder with no input stays as written."""
    values = {name: value if type(value) is str else render(value) for name, value in inputs.items()
              if name in template}
    return Filled(template, None, values).text()


def _content_text(content: Any) -> str:
    if type(content) is str:
        return content
    try:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=_ref_text)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"llm: this message content cannot be sent: {exc}") from None


def _ref_text(value: Any) -> str:
    if isinstance(value, Ref):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


def to_messages(operand: Any) -> list[Message]:
    """The message(s) an llm operand stands for (their contents as text)."""
    items = operand if type(operand) is list else [operand]
    if not items:
        raise MessageError("llm: an empty list of messages")
    out = []
    for item in items:
        if type(item) is str:
            out.append(Message("user", item))
            continue
        if type(item) is not dict:
            raise MessageError(f"llm: a message is a text or a map, not {type(item).__name__}")
        unknown = set(item) - {"role", "content", "tool_call_id", "name"}
        if unknown:
            raise MessageError(f"llm: unknown message field{'s' if len(unknown) > 1 else ''} "
                               f"{', '.join(sorted(map(str, unknown)))} (role, content, tool_call_id, name)")
        role = item.get("role", "user")
        if role not in ROLES:
            raise MessageError(f"llm: a message role is one of {', '.join(ROLES)}, not {role!r}")
        if "content" not in item:
            raise MessageError("llm: a message map needs a content")
        call_id = item.get("tool_call_id")
        if role == "tool" and type(call_id) is not str:
            raise MessageError("llm: a tool message needs the tool_call_id (text) it answers")
        name = item.get("name")
        if name is not None and type(name) is not str:
            raise MessageError("llm: a message name is text")
        text = _content_text(item["content"])
        try:
            out.append(Message(role, text, name=name, tool_call_id=call_id if role == "tool" else None))
        except RequestError as exc:  # pragma: no cover - roles are checked above
            raise MessageError(f"llm: {exc}") from None
    return out


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            value = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return raw  # the model wrote arguments that are not JSON: the program sees the text
        return value
    return raw


def reply_value(text: str | None, tool_calls: tuple[Any, ...]) -> Any:
    """What `llm` pushes for a reply (see the module docstring)."""
    if not tool_calls:
        return text if text is not None else ""
    calls = []
    for call in tool_calls:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        calls.append({"arguments": _arguments(function.get("arguments", "")),  # (keys in the store's order)
                      "id": str(call.get("id", "")) if isinstance(call, dict) else "",
                      "name": str(function.get("name", ""))})
    return {"text": text or None, "tool_calls": calls}


def reply_message(text: str | None, tool_calls: tuple[Any, ...]) -> Message:
    """The assistant message appended to the conversation."""
    # kept as it is only until the next request stores the turn (store_turn): its calls are not packed
    return Message("assistant", text or None, tool_calls=keep_calls(tool_calls, packed=False) if tool_calls else ())


def journaled_reply(raw: str, store: Any) -> Message | Ref:
    """The reply message an agent appended, from its JSON as journaled: the same `Message` when it rebuilds
    to the same bytes (so the turn it joins is stored as it was), else the JSON stored as a turn of its own."""
    try:
        data = json.loads(raw)
        calls = tuple(data.get("tool_calls") or ())
        message = reply_message(data.get("content"), calls)
        if message_json(message) == raw.encode("utf-8"):
            return message
    except (ValueError, TypeError, AttributeError, RequestError):
        pass
    return store.put(raw.encode("utf-8"), hot=False)  # type: ignore[no-any-return]


def llm_error_value(kind: str, message: str) -> dict[str, Any]:
    return error_value("llm", kind, message)


def store_turn(conversation: list[Any], store: Any) -> None:
    """Store the messages at the end of ``conversation`` (the last reply and what the program sent since) as
    one object, their JSON, and put its ref in their place: an agent keeps a ref per turn, not a `Message`
    per message with its text and JSON (~0.4 KB a turn in bench/fleet.py). If the store refuses them,
    they stay as they are (and are sent so)."""
    start = end = len(conversation)
    while start and type(conversation[start - 1]) is not Ref:
        start -= 1
    if start == end:
        return
    try:
        data = b",".join([message_json(m) for m in conversation[start:]])
        ref = store.put(data, hot=False)
    except (StoreError, RequestError):
        return
    conversation[start:] = [ref]
