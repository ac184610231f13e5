"""OpenAIBackend's protocol edges, over httpx.MockTransport (cases a real server cannot produce)."""

from __future__ import annotations

import email.utils
import json
import time

import httpx
import pytest

from avm.errors import LLMError
from avm.io.client.backends import Failure, Reply, parse_chat, retry_after
from avm.io.client.openai import OpenAIBackend

KEY = "sk-test-SECRET-0123456789abcdef"


def completion(text="hi", reason="stop", usage=(3, 1), **extra):
    out = {"id": "c", "object": "chat.completion",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
           "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}
    out.update(extra)
    return out


def backend(handler, **kw) -> OpenAIBackend:
    kw.setdefault("api_key", KEY)
    return OpenAIBackend("http://llm.test/v1", transport=httpx.MockTransport(handler), **kw)


BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


async def test_a_reply_is_parsed_and_the_key_goes_only_in_the_header():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion("Hello", usage=(5, 2)))

    b = backend(handler)
    reply = await b.send(BODY)
    assert reply == Reply("Hello", "stop", reply.usage, ())
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 2)
    assert seen[0].url == "http://llm.test/v1/chat/completions"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(seen[0].content) == json.loads(BODY)
    assert KEY not in repr(b) and "key=set" in repr(b)
    await b.aclose()


def test_base_url_and_key_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env.test/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    b = OpenAIBackend()
    assert b.base_url == "http://env.test/v1" and KEY not in repr(b)
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(LLMError, match="OPENAI_BASE_URL") as info:
        OpenAIBackend()
    assert info.value.kind == "config"


def test_connection_pools_stay_small_unless_asked():
    with pytest.raises(LLMError, match="above 32"):
        OpenAIBackend("http://x.test/v1", max_connections=64)
    assert OpenAIBackend("http://x.test/v1", max_connections=64, allow_many_connections=True).max_connections == 64


async def test_401_is_an_auth_failure_whose_message_never_holds_the_key():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {KEY}. Also sk-abcd1234.",
                                                   "type": "invalid_request_error", "code": "invalid_api_key"}})

    b = backend(handler)
    with pytest.raises(Failure) as info:
        await b.send(BODY)
    failure = info.value
    assert failure.kind == "auth" and failure.status == 401 and not failure.retryable
    assert "Incorrect API key" in failure.message
    assert KEY not in failure.message and "sk-abcd1234" not in failure.message and KEY not in str(failure)


@pytest.mark.parametrize("status, headers, kind, after", [
    (429, {"retry-after-ms": "250", "retry-after": "1"}, "rate_limit", 0.25),
    (429, {"retry-after": "2"}, "rate_limit", 2.0),
    (429, {}, "rate_limit", None),
    (503, {"retry-after": "1.5"}, "server", 1.5),
    (500, {}, "server", None),
    (408, {}, "timeout", None),
    (400, {}, "bad_request", None),
    (404, {}, "bad_request", None),
    (403, {}, "auth", None),
])
async def test_statuses_become_failures_with_their_retry_after(status, headers, kind, after):
    b = backend(lambda request: httpx.Response(status, headers=headers, text="<html>nope</html>"))
    with pytest.raises(Failure) as info:
        await b.send(BODY)
    assert (info.value.kind, info.value.status, info.value.retry_after) == (kind, status, after)
    assert info.value.retryable == (kind in ("rate_limit", "server", "timeout"))


def test_retry_after_reads_seconds_milliseconds_and_dates():
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "-1"}) is None
    assert retry_after({"retry-after": "whenever"}) is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after({"retry-after": date}) <= 31
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert retry_after({"retry-after": past}) == 0.0


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"choices": []}', "no choices"),
    (b'{"choices": [{"index": 0}]}', "no message"),
    (b'{"choices": [{"message": {"content": "x"}}]}', "finish_reason"),
    (b'{"choices": [{"message": {"content": 7}, "finish_reason": "stop"}]}', "not text"),
    (b'{"choices": [{"message": {"content": "x", "tool_calls": "f"}, "finish_reason": "stop"}]}', "tool_calls"),
    (b'{"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": "3"}}',
     "usage"),
])
async def test_malformed_bodies_are_malformed_failures(body, message):
    b = backend(lambda request: httpx.Response(200, content=body))
    with pytest.raises(Failure, match=message) as info:
        await b.send(BODY)
    assert info.value.kind == "malformed" and not info.value.retryable


def test_missing_usage_counts_zero_and_null_content_is_empty_text():
    reply = parse_chat({"choices": [{"message": {"content": None, "tool_calls": [{"id": "1"}]},
                                     "finish_reason": "tool_calls"}]})
    assert (reply.text, reply.usage.total_tokens, reply.tool_calls) == ("", 0, ({"id": "1"},))


async def test_transport_errors_are_connection_and_timeout_failures():
    def refuse(request):
        raise httpx.ConnectError(f"refused (Authorization: Bearer {KEY})", request=request)

    def slow(request):
        raise httpx.ReadTimeout("too slow", request=request)

    with pytest.raises(Failure) as info:
        await backend(refuse).send(BODY)
    assert info.value.kind == "connection" and KEY not in info.value.message
    with pytest.raises(Failure) as info:
        await backend(slow).send(BODY)
    assert info.value.kind == "timeout"


async def test_a_batch_is_one_request_and_each_item_fails_alone():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[completion("one"), {"error": {"message": "bad item",
                                                                       "type": "invalid_request_error"}},
                                         {"nonsense": True}, completion("four")])

    b = backend(handler)
    out = await b.send_batch([BODY, BODY, BODY, BODY])
    assert len(seen) == 1 and seen[0].url.path == "/v1/chat/completions/batch"
    assert json.loads(seen[0].content) == [json.loads(BODY)] * 4
    assert isinstance(out[0], Reply) and out[0].text == "one" and out[3].text == "four"
    assert isinstance(out[1], Failure) and out[1].kind == "bad_request" and "bad item" in out[1].message
    assert isinstance(out[2], Failure) and out[2].kind == "malformed"


async def test_a_batch_reply_of_the_wrong_shape_fails_the_batch():
    with pytest.raises(Failure, match="2 requests"):
        await backend(lambda r: httpx.Response(200, json=[completion()])).send_batch([BODY, BODY])
    with pytest.raises(Failure, match="not a JSON list"):
        await backend(lambda r: httpx.Response(200, json=completion())).send_batch([BODY, BODY])


async def test_a_server_without_a_batch_endpoint_turns_batching_off_in_auto_mode():
    b = backend(lambda r: httpx.Response(404, json={"error": {"message": "unknown URL"}}))
    assert b.supports_batch
    with pytest.raises(Failure) as info:
        await b.send_batch([BODY, BODY])
    assert info.value.kind == "unsupported" and not b.supports_batch
    forced = backend(lambda r: httpx.Response(404, json={"error": {"message": "unknown URL"}}), batch=True)
    with pytest.raises(Failure) as info:
        await forced.send_batch([BODY, BODY])
    assert info.value.kind == "bad_request" and forced.supports_batch
    assert not backend(lambda r: httpx.Response(200), batch=False).supports_batch


def sse(*events: object, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


async def test_streaming_asks_for_usage_and_assembles_the_events():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        body = sse({"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
                   {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
                   {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    reply = await backend(handler).send_stream(BODY)
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}
    assert (reply.text, reply.finish_reason, reply.usage.completion_tokens) == ("Hello", "stop", 2)


async def test_stream_edge_cases():
    def no_done(request):
        body = sse({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "length"}]}, done=False)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    def cut(request):
        body = sse({"choices": [{"index": 0, "delta": {"content": "x"}}]}, done=False)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    def plain_json(request):
        return httpx.Response(200, json=completion("not streamed"))

    def refused(request):
        return httpx.Response(429, headers={"retry-after-ms": "20"}, json={"error": {"message": "slow down"}})

    assert (await backend(no_done).send_stream(BODY)).finish_reason == "length"
    with pytest.raises(Failure, match="ended before"):
        await backend(cut).send_stream(BODY)
    assert (await backend(plain_json).send_stream(BODY)).text == "not streamed"
    with pytest.raises(Failure) as info:
        await backend(refused).send_stream(BODY)
    assert info.value.kind == "rate_limit" and info.value.retry_after == 0.02


async def test_a_url_httpx_cannot_use_is_a_config_failure_not_a_retry():
    b = OpenAIBackend("llm.test/v1")  # no scheme
    with pytest.raises(Failure) as info:
        await b.send(BODY)
    assert info.value.kind == "config" and not info.value.retryable and "llm.test" in info.value.message
