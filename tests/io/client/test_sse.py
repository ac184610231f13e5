"""Server-sent events split anywhere, and streamed chat chunks assembled into one reply."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avm.io.client.backends import Failure
from avm.io.client.sse import ChatStream, SSEDecoder

STREAM = ("data: {\"a\": 1}\n\n"
          ": a comment line\n\n"
          "event: message\r\ndata: first line\r\ndata: second line\r\n\r\n"
          "id: 7\rdata: cr only\r\r"
          "data:no-space\n\n"
          "data: [DONE]\n\n")
EVENTS = ['{"a": 1}', "first line\nsecond line", "cr only", "no-space", "[DONE]"]


def test_decoder_reads_the_sse_rules_that_llm_streams_use():
    decoder = SSEDecoder()
    assert decoder.feed(STREAM.encode()) + decoder.close() == EVENTS


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, len(STREAM.encode())), max_size=12))
def test_decoder_gives_the_same_events_however_the_bytes_are_split(cuts):
    data = (STREAM + "data: ünïcode ✓\n\n").encode()
    points = sorted(set(cuts)) + [len(data)]
    decoder = SSEDecoder()
    events: list[str] = []
    at = 0
    for point in points:
        events += decoder.feed(data[at:point])
        at = point
    events += decoder.close()
    assert events == EVENTS + ["ünïcode ✓"]


def test_an_unterminated_last_event_is_still_read_at_the_end():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n\ndata: tail") == ["x"]
    assert decoder.close() == ["tail"]


def feed_all(stream: ChatStream, events: list[dict]) -> None:
    for event in events:
        stream.feed(json.dumps(event))


def test_content_deltas_tool_calls_and_usage_are_assembled():
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
        {"choices": [{"index": 1, "delta": {"content": "other choice"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "search", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"x\"}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}},
    ]
    stream = ChatStream()
    feed_all(stream, events)
    assert stream.feed("[DONE]")
    reply = stream.reply()
    assert reply.text == "Hello world" and reply.finish_reason == "tool_calls"
    assert reply.tool_calls == ({"id": "call_1", "type": "function",
                                 "function": {"name": "search", "arguments": "{\"q\":\"x\"}"}},)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 7)


def test_a_stream_without_usage_reports_zero_and_done_without_reason_is_stop():
    stream = ChatStream()
    feed_all(stream, [{"choices": [{"index": 0, "delta": {"content": "hi"}}]}])
    stream.feed("[DONE]")
    reply = stream.reply()
    assert (reply.text, reply.finish_reason, reply.usage.total_tokens) == ("hi", "stop", 0)


@pytest.mark.parametrize("data, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"choices": [{"index": 0, "delta": {"content": 5}}]}', "not text"),
    ('{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "0"}]}}]}', "index"),
    ('{"choices": [], "usage": {"prompt_tokens": -1}}', "usage"),
])
def test_malformed_chunks_are_failures(data, message):
    with pytest.raises(Failure, match=message) as info:
        ChatStream().feed(data)
    assert info.value.kind == "malformed"


def test_an_error_event_is_the_failure_it_names():
    with pytest.raises(Failure) as info:
        ChatStream().feed('{"error": {"message": "slow down", "type": "rate_limit_error"}}')
    assert info.value.kind == "rate_limit" and info.value.retryable


def test_a_stream_cut_before_the_reply_finished_is_malformed():
    stream = ChatStream()
    feed_all(stream, [{"choices": [{"index": 0, "delta": {"content": "half"}}]}])
    with pytest.raises(Failure, match="ended before") as info:
        stream.reply()
    assert info.value.kind == "malformed"
