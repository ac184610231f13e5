"""The gateway's fast cache key is the definition's (LLMRequest.cache_key), byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avm.io.keys import RequestKeyer
from avm.io.request import LLMRequest, Message, RequestError
from avm.memory.ref import Ref, hash_bytes

TEXTS = st.text(max_size=40)
REFS = st.binary(min_size=32, max_size=32).map(Ref)
CONTENT = st.one_of(TEXTS, REFS, st.none())
CALL = st.fixed_dictionaries({"id": st.text(max_size=5), "type": st.just("function"),
                              "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g"]),
                                                                 "arguments": st.text(max_size=10)})})
MESSAGE = st.builds(
    Message,
    role=st.sampled_from(["system", "user", "assistant", "tool"]),
    content=CONTENT,
    name=st.one_of(st.none(), st.sampled_from(["alice", "bob"])),
    tool_call_id=st.one_of(st.none(), st.just("call_1")),
    tool_calls=st.one_of(st.just(()), st.lists(CALL, max_size=2).map(tuple)),
)
PLAIN_MESSAGE = st.builds(Message, role=st.sampled_from(["system", "user", "assistant", "tool"]), content=CONTENT)
NUMBER = st.one_of(st.none(), st.integers(-3, 3), st.floats(-3, 3), st.just(float("nan")), st.booleans(),
                   st.just(-0.0), st.just(0.0))
COUNT = st.one_of(st.none(), st.integers(-2, 300), st.floats(1, 3), st.booleans())
TOOL = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}


@st.composite
def requests(draw: st.DrawFn) -> LLMRequest:
    plain = draw(st.booleans())
    return LLMRequest(
        model=draw(st.sampled_from(["m", "avm-embedded", "gpt-x"])),
        # a Ref among the messages: messages kept stored (an agent's past turns), keyed by its ref
        messages=tuple(draw(st.lists(st.one_of(PLAIN_MESSAGE if plain else MESSAGE, REFS), min_size=1, max_size=5))),
        temperature=draw(NUMBER),
        top_p=draw(NUMBER),
        max_tokens=draw(COUNT),
        stop=draw(st.one_of(st.none(), st.sampled_from(["END", ""]), st.lists(st.sampled_from(["a", "b", ""]),
                                                                                max_size=5).map(tuple))),
        seed=draw(st.one_of(st.none(), st.integers(-5, 5), st.booleans())),
        n=draw(COUNT),
        presence_penalty=draw(NUMBER),
        frequency_penalty=draw(NUMBER),
        response_format=draw(st.one_of(st.none(), st.just({"type": "json_object"}))),
        grammar=draw(st.one_of(st.none(), st.just('root ::= "a"'))),
        tools=draw(st.one_of(st.none(), st.just(()), st.just((TOOL,)), REFS)),
        tool_choice=draw(st.one_of(st.none(), st.sampled_from(["auto", "none", "required"]),
                                   st.just({"type": "function", "function": {"name": "search"}}))),
        extra=draw(st.one_of(st.just({}), st.just({"logit_bias": {"1": 2}}))),
    )


def outcome(fn, request):
    try:
        return fn(request)
    except RequestError:
        return "refused"


@settings(max_examples=150, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=4))
def test_fast_key_equals_the_definition(batch):
    keyer = RequestKeyer(capacity=4)  # small: the memo is cleared and refilled too
    for request in batch + batch:  # twice: the second time, parameter parts come from the memo
        assert outcome(keyer.key, request) == outcome(LLMRequest.cache_key, request)


def test_the_fast_path_is_taken_for_ordinary_requests():
    keyer = RequestKeyer()
    system = Message("system", hash_bytes(b"You are a researcher."))
    for i in range(10):
        request = LLMRequest(model="m", messages=(system, Message("user", f"task {i}")), temperature=0, max_tokens=64)
        assert keyer.key(request) == request.cache_key()
    assert keyer.fast == 10 and keyer.slow == 0


@pytest.mark.parametrize("a, b", [({"temperature": 1}, {"temperature": 1.0}),
                                  ({"temperature": 0}, {"temperature": 0.0})])
def test_numbers_that_normalise_alike_share_a_key(a, b):
    keyer = RequestKeyer()
    messages = (Message("user", "hi"),)
    assert keyer.key(LLMRequest("m", messages, **a)) == keyer.key(LLMRequest("m", messages, **b))


@pytest.mark.parametrize("good, bad", [({"max_tokens": 1}, {"max_tokens": True}),
                                       ({"max_tokens": 1}, {"max_tokens": 1.0}),
                                       ({"seed": 1}, {"seed": True}),
                                       ({"temperature": 1}, {"temperature": True})])
def test_a_memoised_valid_request_does_not_let_an_equal_invalid_one_through(good, bad):
    keyer = RequestKeyer()
    messages = (Message("user", "hi"),)
    keyer.key(LLMRequest("m", messages, **good))
    with pytest.raises(RequestError):
        keyer.key(LLMRequest("m", messages, **bad))


def test_negative_zero_gets_the_definitions_key():
    keyer = RequestKeyer()
    messages = (Message("user", "hi"),)
    keyer.key(LLMRequest("m", messages, temperature=0.0))
    negative = LLMRequest("m", messages, temperature=-0.0)
    assert keyer.key(negative) == negative.cache_key()


def test_many_messages_use_a_longer_list_header():
    request = LLMRequest("m", tuple(Message("user", str(i)) for i in range(300)), temperature=0)
    assert RequestKeyer().key(request) == request.cache_key()


def test_stored_messages_are_keyed_by_their_ref_and_a_request_holds_only_messages_or_refs():
    keyer = RequestKeyer()
    a, b = hash_bytes(b'{"role":"user","content":"a"}'), hash_bytes(b'{"role":"user","content":"b"}')
    first = LLMRequest("m", (Message("system", "s"), a), temperature=0)
    assert keyer.key(first) == first.cache_key() and keyer.fast == 1
    assert keyer.key(LLMRequest("m", (Message("system", "s"), b), temperature=0)) != first.cache_key()
    with pytest.raises(RequestError, match="Messages or Refs"):
        LLMRequest("m", (Message("system", "s"), {"role": "user", "content": "a"}))  # type: ignore[arg-type]
