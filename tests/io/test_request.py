"""Cache keys: every output-affecting parameter counts; defaults and text-vs-ref do not."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avm.io.request import LLMRequest, Message, RequestError
from avm.memory.ref import hash_bytes

MSGS = (Message("system", "You are terse."), Message("user", "Hi"))


def req(**kw):
    return LLMRequest(model=kw.pop("model", "m"), messages=kw.pop("messages", MSGS), **kw)


def test_explicit_defaults_give_the_same_key_as_omitted_ones():
    assert req().cache_key() == req(temperature=1.0, top_p=1, n=1, presence_penalty=0, frequency_penalty=0.0,
                                    stop=[], response_format={"type": "text"}, tools=[]).cache_key()


def test_openai_default_temperature_is_one_not_zero():
    assert req().cache_key() != req(temperature=0).cache_key()
    assert req(temperature=0).cache_key() == req(temperature=0.0).cache_key()


def test_text_and_ref_of_the_same_text_give_the_same_key():
    as_ref = (Message("system", hash_bytes(b"You are terse.")), Message("user", "Hi"))
    assert req().cache_key() == req(messages=as_ref).cache_key()


def test_stop_order_and_single_stop_do_not_matter():
    assert req(stop="END").cache_key() == req(stop=["END"]).cache_key()
    assert req(stop=["a", "b"]).cache_key() == req(stop=("b", "a")).cache_key()


VARIANTS = {
    "model": dict(model="other"),
    "message": dict(messages=(Message("system", "You are terse."), Message("user", "Hi!"))),
    "role": dict(messages=(Message("user", "You are terse."), Message("user", "Hi"))),
    "temperature": dict(temperature=0.7),
    "top_p": dict(top_p=0.9),
    "max_tokens": dict(max_tokens=16),
    "stop": dict(stop="x"),
    "seed": dict(seed=1),
    "n": dict(n=2),
    "presence": dict(presence_penalty=0.5),
    "frequency": dict(frequency_penalty=0.5),
    "format": dict(response_format={"type": "json_object"}),
    "grammar": dict(grammar="root ::= \"a\""),
    "tools": dict(tools=({"type": "function", "function": {"name": "f"}},)),
    "tool_choice": dict(tool_choice="required"),
    "extra": dict(extra={"logit_bias": {"1": 5}}),
}


def test_every_output_affecting_parameter_changes_the_key():
    keys = {name: req(**kw).cache_key() for name, kw in VARIANTS.items()}
    keys["base"] = req().cache_key()
    assert len(set(keys.values())) == len(keys)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 2), st.floats(0, 2))
def test_key_equal_iff_temperature_equal(a, b):
    assert (req(temperature=a).cache_key() == req(temperature=b).cache_key()) == (float(a) == float(b))


def test_only_safe_responses_are_cacheable():
    assert not req().cacheable
    assert req(temperature=0).cacheable
    assert req(seed=7).cacheable
    assert req(temperature=0.9, cache=True).cacheable


@pytest.mark.parametrize("kw", [dict(temperature=3), dict(temperature=float("nan")), dict(top_p=-1),
                                dict(max_tokens=0), dict(n=0), dict(seed="1"), dict(stop=[""]),
                                dict(extra={"seed": 1})])
def test_bad_parameters_are_refused_clearly(kw):
    with pytest.raises(RequestError):
        req(**kw).cache_key()


def test_bad_messages_are_refused():
    with pytest.raises(RequestError):
        Message("robot", "x")
    with pytest.raises(RequestError):
        Message("user", 5)  # type: ignore[arg-type]
    with pytest.raises(RequestError):
        LLMRequest(model="m", messages=())
