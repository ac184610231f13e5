"""Request bodies: refs resolved, shared parts encoded once, parameters as OpenAI reads them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avm.io.request import LLMRequest, Message, RequestError
from avm.io.wire import WireEncoder
from avm.memory import ContentStore, hash_bytes

TOOLS = [{"type": "function", "function": {"name": "search", "description": "Search.",
                                           "parameters": {"type": "object", "properties": {}}}}]


class CountingStore:
    """A ContentStore that counts reads (to show shared parts are resolved once)."""

    def __init__(self) -> None:
        self.inner = ContentStore()
        self.gets = 0

    def put(self, data: bytes):
        return self.inner.put(data)

    def put_value(self, value):
        return self.inner.put_value(value)

    def get(self, ref):
        self.gets += 1
        return self.inner.get(ref)

    def get_value(self, ref):
        self.gets += 1
        return self.inner.get_value(ref)


def test_body_holds_resolved_refs_and_only_the_parameters_given():
    store = ContentStore()
    system = store.put("You are {name}, a careful researcher. ✓".encode())
    tools = store.put_value(TOOLS)
    request = LLMRequest("avm-embedded", (Message("system", system), Message("user", "Find \"quotes\"\n")),
                         temperature=0, max_tokens=32, stop=("END",), seed=3, tools=tools, tool_choice="auto")
    body = json.loads(WireEncoder(store).body(request))
    assert body == {"model": "avm-embedded", "temperature": 0.0, "max_tokens": 32, "stop": ["END"], "seed": 3,
                    "tools": TOOLS, "tool_choice": "auto",
                    "messages": [{"role": "system", "content": "You are {name}, a careful researcher. ✓"},
                                 {"role": "user", "content": "Find \"quotes\"\n"}]}


def test_omitted_parameters_are_left_to_the_server_and_floats_stay_floats():
    body = json.loads(WireEncoder().body(LLMRequest("m", (Message("user", "hi"),), temperature=1, top_p=1)))
    assert body == {"model": "m", "temperature": 1.0, "top_p": 1.0, "messages": [{"role": "user", "content": "hi"}]}
    assert isinstance(body["temperature"], float)


def test_message_fields_extra_and_response_format_are_sent():
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
    request = LLMRequest("m", (Message("assistant", None, tool_calls=(call,)),
                               Message("tool", "3 results", tool_call_id="c1", name="search")),
                         response_format={"type": "json_object"}, extra={"logit_bias": {"5": 1}})
    body = json.loads(WireEncoder().body(request))
    assert body["messages"] == [{"role": "assistant", "content": None, "tool_calls": [call]},
                                {"role": "tool", "content": "3 results", "tool_call_id": "c1", "name": "search"}]
    assert body["response_format"] == {"type": "json_object"} and body["logit_bias"] == {"5": 1}


def test_a_shared_system_prompt_and_tool_list_are_resolved_and_encoded_once():
    store = CountingStore()
    system = store.put(("You are a researcher. " * 2500).encode())  # ~50 KB
    tools = store.put_value(TOOLS)
    encoder = WireEncoder(store)
    bodies = [encoder.body(LLMRequest("m", (Message("system", system), Message("user", f"task {i}")),
                                      tools=tools)) for i in range(1000)]
    assert store.gets == 2
    assert encoder.shared_misses == 2 and encoder.shared_hits >= 999
    assert len({b[:200] for b in bodies}) == 1 and json.loads(bodies[-1])["messages"][1]["content"] == "task 999"


def test_a_long_text_prompt_is_escaped_once_too():
    encoder = WireEncoder(share_min_chars=100)
    prompt = "Be brief. " * 20
    for i in range(3):
        encoder.body(LLMRequest("m", (Message("system", prompt), Message("user", str(i)))))
    assert encoder.shared_misses == 1 and encoder.shared_hits == 2


def test_missing_refs_and_bad_tool_lists_are_request_errors():
    store = ContentStore()
    absent = hash_bytes(b"never stored")
    with pytest.raises(RequestError, match=absent.short):
        WireEncoder(store).body(LLMRequest("m", (Message("user", absent),)))
    with pytest.raises(RequestError, match="no store"):
        WireEncoder().body(LLMRequest("m", (Message("user", absent),)))
    not_a_list = store.put_value({"name": "x"})
    with pytest.raises(RequestError, match="not a list"):
        WireEncoder(store).body(LLMRequest("m", (Message("user", "x"),), tools=not_a_list))
    with pytest.raises(RequestError, match="set by the gateway"):
        WireEncoder().body(LLMRequest("m", (Message("user", "x"),), extra={"stream": True}))


def test_values_json_cannot_write_are_request_errors():
    for extra in ({"logit_bias": {"1": float("nan")}}, {"blob": b"\x00"}):
        with pytest.raises(RequestError, match="cannot be sent as JSON"):
            WireEncoder().body(LLMRequest("m", (Message("user", "x"),), extra=extra))


def test_a_filled_template_is_sent_as_its_rendered_text_from_pieces_kept_once():
    from avm.io.keys import RequestKeyer
    from avm.io.request import Filled

    template = 'You are {name} ("{role}"), on {task}. Unknown: {missing}. \u00e9\U0001F600 ' + "Be careful. " * 500
    encoder = WireEncoder()
    keyer = RequestKeyer()
    for i, name in enumerate(["Ada", 'B"o\\', "C\u00e9\n"]):
        values = {"name": name, "role": "lead", "task": f"task {i}"}
        filled = LLMRequest("m", (Message("system", Filled(template, "t1", values)), Message("user", "go")),
                            temperature=0)
        text = Filled(template, "t1", values).text()
        rendered = LLMRequest("m", (Message("system", text), Message("user", "go")), temperature=0)
        assert json.loads(encoder.body(filled)) == json.loads(encoder.body(rendered))
        assert json.loads(encoder.body(filled))["messages"][0]["content"].startswith(f'You are {name} ("lead")')
        assert "{missing}" in text
        # the cache key is the rendered text's, whichever way the request holds it
        assert keyer.digest(filled) == keyer.digest(rendered) == bytes(rendered.cache_key())
        assert bytes(filled.cache_key()) == bytes(rendered.cache_key())
    head, pieces = encoder.parts(filled)
    assert any(len(p) > 5000 for p in pieces)  # the template's text is one shared piece ...
    _, again = encoder.parts(filled)
    assert [p for p in again if len(p) > 5000][0] is [p for p in pieces if len(p) > 5000][0]  # ... the same object


def test_only_shared_system_prompts_are_kept_encoded_and_texts_of_one_agent_are_not():
    store = CountingStore()
    tool_result = store.put(b"a result only this agent has")
    encoder = WireEncoder(store)
    for _ in range(3):
        encoder.body(LLMRequest("m", (Message("user", tool_result), Message("user", "x" * 5000))))
    assert encoder.shared_misses == encoder.shared_hits == 0  # nothing of one agent's is kept


def test_tool_calls_are_held_compactly_and_each_message_is_encoded_once():
    from avm.io.request import ToolCalls
    from avm.io.wire import tool_calls

    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "tides"}'}}
    streamed = {**call, "index": 0}  # a streamed call's index is not part of the message
    odd = {"id": "c2", "type": "function", "function": {"name": "x", "arguments": "{}"}, "extra": 1}
    compact = tool_calls([streamed, odd])
    assert isinstance(compact, ToolCalls) and compact.calls() == [call, odd]  # one with fields of its own: as it came
    assistant = Message("assistant", None, tool_calls=tool_calls([call]))
    tool = Message("tool", "3 results", tool_call_id="c1")
    encoder = WireEncoder()
    first = encoder.body(LLMRequest("m", (Message("user", "go"), assistant, tool)))
    assert json.loads(first)["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert assistant.wire is None and tool.wire is not None  # the calls are sent as they are held: no copy
    wire = tool.wire
    second = encoder.body(LLMRequest("m", (Message("user", "go"), assistant, tool, Message("user", "more"))))
    assert tool.wire is wire and second.startswith(first[:-2])  # the same bytes, not encoded again
    assert assistant == Message("assistant", None, tool_calls=tool_calls([call]))  # the kept JSON is not its identity
    assert LLMRequest("m", (assistant,)).cache_key() == LLMRequest("m", (Message(
        "assistant", None, tool_calls=(call,)),)).cache_key()
    with_text = Message("assistant", "Let me look.", tool_calls=tool_calls([call]))
    assert json.loads(encoder.body(LLMRequest("m", (with_text,))))["messages"][0] == {
        "role": "assistant", "content": "Let me look.", "tool_calls": [call]}


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.one_of(st.text(max_size=40), st.text(min_size=200, max_size=3000),
                                 st.integers(0, 4000).map(lambda n: "tool output line\n" * (n // 17))),
                      min_size=1, max_size=6))
def test_a_message_keeps_its_json_packed_when_that_saves_and_every_request_sends_it_exactly(texts):
    """Messages keep the JSON the encoder made for them, long JSON compressed (`Packed`); what goes on the
    wire is each message's JSON, the same for every request that carries it."""
    from avm.io.packing import PACK_MIN_BYTES
    from avm.io.wire import Packed, unpack

    store = ContentStore()
    encoder = WireEncoder(store)
    messages = []
    for i, text in enumerate(texts):
        m = Message("tool", store.put(text.encode("utf-8", "surrogatepass")), tool_call_id=f"c{i}")
        encoder.body(LLMRequest("m", (m,)))
        plain = json.dumps(m.as_dict(text), separators=(",", ":")).encode()
        assert unpack(m.wire) == plain
        if type(m.wire) is Packed:
            assert len(plain) >= PACK_MIN_BYTES and len(m.wire) * 4 <= len(plain) * 3
        messages.append(m)
    for _ in range(2):
        sent = json.loads(encoder.body(LLMRequest("m", tuple(messages))))["messages"]
        assert sent == [{"role": "tool", "content": t, "tool_call_id": f"c{i}"} for i, t in enumerate(texts)]


STORED_TEXTS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "tool"]), STORED_TEXTS), min_size=1, max_size=6),
       st.integers(0, 6))
def test_messages_kept_stored_are_sent_exactly_as_the_messages_themselves(items, cut):
    """An agent keeps its past turns stored (`message_json` of each, comma-joined, under one ref): the body
    is byte for byte the one the messages make given one by one."""
    from avm.io.wire import message_json

    store = ContentStore()
    messages = [Message(role, text, tool_call_id="c1" if role == "tool" else None) for role, text in items]
    cut = min(cut, len(messages))
    ref = store.put(b",".join(message_json(m) for m in messages[:cut])) if cut else None
    stored = ((ref,) if ref is not None else ()) + tuple(messages[cut:])
    encoder = WireEncoder(store)
    plain = encoder.body(LLMRequest("m", (Message("system", "s"), *messages)))
    assert encoder.body(LLMRequest("m", (Message("system", "s"), *stored))) == plain
    assert json.loads(plain)["messages"][1:] == [m.as_dict(m.content) for m in messages]


def test_stored_messages_the_store_does_not_hold_are_a_request_error():
    encoder = WireEncoder(ContentStore())
    missing = hash_bytes(b"never stored")
    with pytest.raises(RequestError, match=f"stored messages {missing.short}"):
        encoder.body(LLMRequest("m", (Message("user", "hi"), missing)))
    with pytest.raises(RequestError, match="no store"):
        WireEncoder().body(LLMRequest("m", (missing,)))
