"""The embedded LLM server over real loopback sockets, with a real httpx client."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import avm
from avm.io.embedded.faults import FaultModel, LLMServerError, ServerSettings
from avm.io.embedded.replies import PROGRAM_TEMPLATES, finish, tokens
from avm.io.embedded.server import LLMServer, serve_llm

ROOT = Path(__file__).resolve().parent.parent.parent


def chat(content: str = "Tell me about octopuses and their arms", **extra: Any) -> dict[str, Any]:
    return {"model": "avm-embedded", "messages": [{"role": "user", "content": content}], **extra}


def conversation(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a researcher."},
                                      {"role": "user", "content": "Research volcanoes in Iceland"}]
    for i in range(turns):
        if i % 2 == 0:
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function", "function": {"name": "search", "arguments": "{}"}}]})
        else:
            messages.append({"role": "tool", "tool_call_id": f"call_{i - 1}", "content": "three results"})
    return messages


SEARCH_TOOL = {"type": "function", "function": {
    "name": "search", "description": "Search the web.",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string", "minLength": 3, "maxLength": 40},
        "limit": {"type": "integer", "minimum": 1, "maximum": 5},
        "score": {"type": "number", "minimum": 0.5, "maximum": 0.9},
        "exact": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "lang": {"type": "string", "enum": ["en", "fr", "de"]},
        "where": {"type": "object", "properties": {"site": {"type": "string"}}, "required": ["site"]},
        "note": {"type": ["string", "null"]}},
        "required": ["query", "limit", "score", "exact", "tags", "lang", "where"]}}}
CALC_TOOL = {"type": "function", "function": {"name": "calc", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """A small JSON-schema check (the subset the tests use)."""
    if "enum" in schema:
        return value in schema["enum"]
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    checks = {"string": lambda v: isinstance(v, str), "integer": lambda v: type(v) is int,
              "number": lambda v: type(v) in (int, float), "boolean": lambda v: type(v) is bool,
              "null": lambda v: v is None, "array": lambda v: isinstance(v, list),
              "object": lambda v: isinstance(v, dict)}
    if not any(checks[k](value) for k in kinds):
        return False
    if isinstance(value, str):
        return schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 10**9)
    if type(value) in (int, float):
        return schema.get("minimum", -1e18) <= value <= schema.get("maximum", 1e18)
    if isinstance(value, list):
        return len(value) >= schema.get("minItems", 0) and all(conforms(v, schema["items"]) for v in value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return (all(r in value for r in schema.get("required", ()))
                and all(conforms(v, props[k]) for k, v in value.items() if k in props))
    return True


@pytest.fixture
async def server():
    async with serve_llm(port=0) as s:
        yield s


@pytest.fixture
async def client(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as c:
        yield c


# ---------------------------------------------------------------- endpoints

async def test_models_and_health(server, client):
    r = await client.get("/models")
    assert r.status_code == 200 and r.headers["content-length"] == str(len(r.content))
    assert [m["id"] for m in r.json()["data"]] == ["avm-embedded"] and r.json()["object"] == "list"
    assert (await client.get("/models/avm-embedded")).json()["id"] == "avm-embedded"
    assert (await client.get("/models/gpt-9")).status_code == 404
    assert (await client.get(server.origin + "/health")).json() == {"status": "ok"}
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")


async def test_chat_completion_shape_and_usage(client):
    r = await client.post("/chat/completions", json=chat())  # (other model names: test_strictness.py)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "avm-embedded"
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and len(choice["message"]["content"]) > 20
    usage = body["usage"]
    assert usage["completion_tokens"] == tokens(choice["message"]["content"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["prompt_tokens"] > 5


async def test_same_request_same_reply_and_seed_changes_it(client):
    first = (await client.post("/chat/completions", json=chat(seed=1))).json()
    again = (await client.post("/chat/completions", json=chat(seed=1))).json()
    other = (await client.post("/chat/completions", json=chat(seed=2))).json()
    assert first["choices"] == again["choices"] and first["id"] == again["id"] and first["usage"] == again["usage"]
    assert other["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]
    streamed = await client.post("/chat/completions", json=chat(seed=1, stream=True))
    assert streamed.status_code == 200  # `stream` is not part of the request's identity
    assert f'"id":"{first["id"]}"' in streamed.text


async def test_n_choices_differ_and_are_indexed(client):
    body = (await client.post("/chat/completions", json=chat(n=3))).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in body["choices"]}) == 3


def sse_events(text: str) -> list[Any]:
    assert text.endswith("data: [DONE]\n\n")
    events = [block for block in text.split("\n\n") if block]
    assert all(e.startswith("data: ") for e in events)
    return [json.loads(e[6:]) for e in events[:-1]]


@pytest.mark.parametrize("content", ["Tell me about glaciers", "Write an AVM program that adds numbers"])
async def test_stream_reassembles_to_the_non_streamed_reply(client, content):
    plain = (await client.post("/chat/completions", json=chat(content, max_tokens=30))).json()
    r = await client.post("/chat/completions", json=chat(content, max_tokens=30, stream=True,
                                                        stream_options={"include_usage": True}))
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == plain["id"] for e in events)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    reasons = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert reasons[-1] == plain["choices"][0]["finish_reason"] and reasons[:-1] == [None] * (len(reasons) - 1)
    assert events[-1]["choices"] == [] and events[-1]["usage"] == plain["usage"]


async def test_stream_of_a_tool_call(client):
    request = chat("find something", tools=[CALC_TOOL])
    plain = (await client.post("/chat/completions", json=request)).json()["choices"][0]
    events = sse_events((await client.post("/chat/completions", json={**request, "stream": True})).text)
    deltas = [e["choices"][0]["delta"] for e in events]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["id"] == plain["message"]["tool_calls"][0]["id"]
    assert calls[0]["function"]["name"] == "calc"
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert arguments == plain["message"]["tool_calls"][0]["function"]["arguments"]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


# ---------------------------------------------------------------- vLLM's batch endpoint

def conversations() -> list[list[dict[str, Any]]]:
    """Conversations of every reply kind: plain text, a program, a final answer, a multi-part message."""
    return [[{"role": "user", "content": f"question number {i} about rivers and their deltas"}] for i in range(3)] + [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write an AVM program please"}],
        conversation(3),
        [{"role": "user", "content": [{"type": "text", "text": "Tell me about glaciers"}]}]]


async def batch_and_alone(client: httpx.AsyncClient, shared: dict[str, Any],
                          convs: list[list[dict[str, Any]]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The batch's answer, and the answers of each conversation sent alone with the shared fields."""
    r = await client.post("/chat/completions/batch", json={**shared, "messages": convs})
    assert r.status_code == 200, r.text
    alone = []
    for conv in convs:
        single = await client.post("/chat/completions", json={**shared, "messages": conv})
        assert single.status_code == 200, single.text
        alone.append(single.json())
    return r.json(), alone


SHARED = [
    {},
    {"model": "avm-embedded", "max_tokens": 6},
    {"temperature": 0.3, "top_p": 0.9, "seed": 5, "stop": ["e "], "presence_penalty": 0.1, "frequency_penalty": 0.2},
    {"max_completion_tokens": 9, "max_tokens": 100, "n": 1, "tool_choice": "none", "stream": False, "user": "u1",
     "top_k": 5, "min_p": 0.1},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}, "seed": 2},
]


@pytest.mark.parametrize("shared", SHARED)
async def test_batch_choice_i_is_conversation_i_sent_alone(client, shared):
    convs = conversations()
    batch, alone = await batch_and_alone(client, shared, convs)
    assert batch["object"] == "chat.completion" and batch["id"].startswith("chatcmpl-")
    assert batch["model"] == shared.get("model", "avm-embedded") and isinstance(batch["created"], int)
    assert batch["system_fingerprint"] == alone[0]["system_fingerprint"]
    assert [c["index"] for c in batch["choices"]] == list(range(len(convs)))
    for choice, single in zip(batch["choices"], alone, strict=True):
        (expected,) = single["choices"]
        assert choice["message"]["content"] == expected["message"]["content"]
        assert choice["finish_reason"] == expected["finish_reason"]
        assert choice["logprobs"] is None and choice["message"]["role"] == "assistant"
        # vLLM's message carries null fields (refusal, audio, ...); the rest is the single reply's message
        assert {k: v for k, v in choice["message"].items() if v is not None} == expected["message"]
    usage = batch["usage"]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert usage[key] == sum(a["usage"][key] for a in alone)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if "max_tokens" in shared or "max_completion_tokens" in shared:
        assert "length" in {c["finish_reason"] for c in batch["choices"]}


async def test_batch_replies_are_deterministic_and_the_shared_seed_matters(client):
    convs = conversations()[:3]
    one = (await client.post("/chat/completions/batch", json={"messages": convs, "seed": 1})).json()
    again = (await client.post("/chat/completions/batch", json={"messages": convs, "seed": 1})).json()
    other = (await client.post("/chat/completions/batch", json={"messages": convs, "seed": 2})).json()
    assert one["choices"] == again["choices"] and one["id"] == again["id"] and one["usage"] == again["usage"]
    assert [c["message"]["content"] for c in one["choices"]] != [c["message"]["content"] for c in other["choices"]]
    assert len({c["message"]["content"] for c in one["choices"]}) == 3  # conversations get their own replies
    single = (await client.post("/chat/completions/batch", json={"messages": convs[:1], "seed": 1})).json()
    assert single["choices"] == one["choices"][:1]  # a choice does not depend on its neighbours


async def test_batch_response_has_vllms_fields(client):
    body = (await client.post("/chat/completions/batch", json={"messages": conversations()[:2]})).json()
    assert {"id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier",
            "prompt_logprobs", "prompt_token_ids", "kv_transfer_params"} <= set(body)
    for choice in body["choices"]:
        assert {"index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids"} <= set(choice)
        assert "tool_calls" not in choice["message"]  # vLLM omits an empty tool_calls
    named = await client.post("/chat/completions/batch", json={"messages": conversations()[:1], "request_id": "r-7"})
    assert named.json()["id"] == "chatcmpl-r-7"
    header = await client.post("/chat/completions/batch", json={"messages": conversations()[:1]},
                               headers={"x-request-id": "abc"})
    assert header.json()["id"] == "chatcmpl-abc"


async def test_batch_ignores_tools_as_vllm_does(client):
    convs = [[{"role": "user", "content": "Search the archive for whales"}],
             [{"role": "user", "content": "find something"}]]
    with_tools = (await client.post("/chat/completions/batch", json={
        "messages": convs, "seed": 4, "tools": [SEARCH_TOOL, CALC_TOOL], "parallel_tool_calls": True})).json()
    without = (await client.post("/chat/completions/batch", json={
        "messages": convs, "seed": 4, "parallel_tool_calls": True})).json()
    assert with_tools["choices"] == without["choices"] and with_tools["usage"] == without["usage"]
    assert all(c["finish_reason"] == "stop" and c["message"]["content"] for c in with_tools["choices"])
    # the same conversation alone, without the tools
    for choice, conv in zip(with_tools["choices"], convs, strict=True):
        alone = (await client.post("/chat/completions", json={
            "messages": conv, "seed": 4, "parallel_tool_calls": True})).json()["choices"][0]
        assert choice["message"]["content"] == alone["message"]["content"]
    offered = (await client.post("/chat/completions", json={
        "messages": convs[0], "seed": 4, "tools": [SEARCH_TOOL, CALC_TOOL], "parallel_tool_calls": True})).json()
    assert offered["choices"][0]["finish_reason"] == "tool_calls"  # alone, the tools would have been used
    tool_choice_none = (await client.post("/chat/completions/batch", json={
        "messages": convs, "seed": 4, "tools": [CALC_TOOL], "tool_choice": "none"}))
    assert tool_choice_none.status_code == 200
    assert all(c["finish_reason"] == "stop" for c in tool_choice_none.json()["choices"])


HELLO = [{"role": "user", "content": "hello"}]
REFUSALS = [
    ([HELLO, HELLO], "body"),  # a top-level list (the old format)
    ([{"model": "m", "messages": HELLO}], "body"),
    ("just text", "body"),
    (42, "body"),
    (None, "body"),
    ({"model": "m"}, "messages"),
    ({"requests": [{"messages": HELLO}]}, "messages"),  # the old wrapped format
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": HELLO}, "messages[0]"),  # one conversation's messages, not a list of conversations
    ({"messages": [HELLO, []]}, "messages[1]"),
    ({"messages": [HELLO, "hello"]}, "messages[1]"),
    ({"messages": [HELLO, ["hello"]]}, "messages[1][0]"),
    ({"messages": [HELLO, [{"content": "no role"}]]}, "messages[1][0].role"),
    ({"messages": [HELLO], "n": 2}, "n"),
    ({"messages": [HELLO], "n": 0}, "n"),
    ({"messages": [HELLO], "tool_choice": "auto", "tools": [CALC_TOOL]}, "tool_choice"),
    ({"messages": [HELLO], "tool_choice": "required", "tools": [CALC_TOOL]}, "tool_choice"),
    ({"messages": [HELLO], "tool_choice": {"type": "function", "function": {"name": "calc"}}, "tools": [CALC_TOOL]},
     "tool_choice"),
    ({"messages": [HELLO], "use_beam_search": True}, "use_beam_search"),
    ({"messages": [HELLO], "stream": True}, "stream"),
    ({"messages": [HELLO], "stream": True, "stream_options": {"include_usage": True}}, "stream"),
    ({"messages": [HELLO], "max_tokens": "9"}, "max_tokens"),
    ({"messages": [HELLO], "tools": {"calc": 1}}, "tools"),
]


@pytest.mark.parametrize(("body", "param"), REFUSALS)
async def test_batch_refusals_are_vllms_400s(server, client, body, param):
    r = await client.post("/chat/completions/batch", json=body)
    assert r.status_code == 400, r.text
    error = r.json()
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["type"] == "Bad Request" and error["error"]["code"] == 400
    assert error["error"]["param"] == param and error["error"]["message"]
    if param == "stream":
        assert "stream" in error["error"]["message"]
    stats = server.statistics()
    assert stats.batch_items == 0 and stats.completion_tokens == 0 and stats.responses_by_status == {400: 1}


async def test_batch_accepts_what_vllm_accepts(client):
    for extra in ({"n": 1}, {"n": None}, {"tool_choice": None}, {"tool_choice": "none"}, {"stream": False},
                  {"use_beam_search": False}, {"some_vllm_extra": {"x": 1}}):
        r = await client.post("/chat/completions/batch", json={"messages": [HELLO], **extra})
        assert r.status_code == 200, (extra, r.text)


async def test_batch_wants_a_json_object_with_a_json_content_type(client):
    raw = json.dumps({"messages": [HELLO]}).encode()
    for headers in ({"content-type": "text/plain"}, {}):
        r = await client.post("/chat/completions/batch", content=raw, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["type"] == "Bad Request"
    ok = await client.post("/chat/completions/batch", content=raw,
                           headers={"content-type": "Application/JSON; charset=utf-8"})
    assert ok.status_code == 200
    bad = await client.post("/chat/completions/batch", content=b"{not json",
                            headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "body"


async def test_openai_dialect_has_no_batch_endpoint():
    async with serve_llm(dialect="openai") as server, httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/chat/completions/batch", json={"messages": [HELLO]})
        unknown = await c.post("/chat/completions/other", json={"messages": [HELLO]})
        assert r.status_code == unknown.status_code == 404
        assert r.json()["error"]["code"] == unknown.json()["error"]["code"] == "unknown_url"
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert (await c.get("/chat/completions/batch")).status_code == 404
        assert (await c.post("/chat/completions", json={"messages": HELLO})).status_code == 200
        stats = server.statistics()
        assert stats.requests_by_endpoint == {"other": 3, "/v1/chat/completions": 1} and stats.batch_items == 0
    async with serve_llm() as server, httpx.AsyncClient(base_url=server.url) as c:  # vllm, the default
        assert server.settings.dialect == "vllm"
        wrong = await c.get("/chat/completions/batch")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


@pytest.mark.parametrize("kind", ["429", "500", "malformed", "drop"])
async def test_faults_apply_to_a_batch_as_one_request(kind):
    async with serve_llm(**{f"rate_{kind}": 1.0}) as server, httpx.AsyncClient(base_url=server.url) as c:
        body = {"messages": conversations()}
        if kind == "drop":
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post("/chat/completions/batch", json=body)
        else:
            r = await c.post("/chat/completions/batch", json=body)
            assert r.status_code == {"429": 429, "500": 500, "malformed": 200}[kind]
            if kind == "malformed":
                with pytest.raises(json.JSONDecodeError):
                    r.json()
        bad = await c.post("/chat/completions/batch", json={"messages": [HELLO], "n": 3})
        assert bad.status_code == 400  # a refused batch is refused before any fault is drawn
        stats = server.statistics()
        assert stats.faults_by_kind == {kind: 1} and stats.batch_items == 0


async def test_batch_fault_draws_are_one_per_batch():
    async with serve_llm(rate_500=0.5, seed=11) as server, httpx.AsyncClient(base_url=server.url) as c:
        statuses = []
        for i in range(40):
            convs = [[{"role": "user", "content": f"batch {i} item {j}"}] for j in range(4)]
            r = await c.post("/chat/completions/batch", json={"messages": convs})
            statuses.append(r.status_code)
            if r.status_code == 200:
                assert len(r.json()["choices"]) == 4
        stats = server.statistics()
        assert stats.faults_by_kind.get("500", 0) == statuses.count(500) and 5 < statuses.count(500) < 35
        assert stats.batch_items == 4 * statuses.count(200)


async def test_batch_timeout_fault(autojump_clock):
    async with serve_llm(rate_timeout=1.0, timeout_hold_s=600) as server, \
            httpx.AsyncClient(base_url=server.url, timeout=2.0) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/chat/completions/batch", json={"messages": conversations()})
    assert server.statistics().faults_by_kind == {"timeout": 1}


async def test_batch_latency_is_the_longest_items(autojump_clock):
    async with serve_llm(latency_ms=1500, per_token_ms=10) as server, httpx.AsyncClient(base_url=server.url) as c:
        convs = conversations()
        start = trio.current_time()
        body = (await c.post("/chat/completions/batch", json={"messages": convs})).json()
        elapsed = trio.current_time() - start
        longest = max(tokens(ch["message"]["content"]) for ch in body["choices"])
        assert elapsed == pytest.approx(1.5 + 0.01 * longest, abs=0.01)


async def test_batch_statistics(server, client):
    convs = conversations()
    body = (await client.post("/chat/completions/batch", json={"messages": convs})).json()
    stats = server.statistics()
    assert stats.batch_items == len(convs) and stats.requests_by_endpoint == {"/v1/chat/completions/batch": 1}
    assert stats.prompt_tokens == body["usage"]["prompt_tokens"]
    assert stats.completion_tokens == body["usage"]["completion_tokens"]


async def test_the_official_openai_client_against_the_openai_dialect():
    openai = pytest.importorskip("openai")
    request = {"model": "avm-embedded", "messages": [{"role": "user", "content": "Tell me about tides"}],
               "max_tokens": 25, "seed": 3}
    async with serve_llm(dialect="openai") as server, httpx.AsyncClient(base_url=server.url) as c:
        expected = (await c.post("/chat/completions", json=request)).json()

        def call() -> tuple[Any, str]:
            client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=10.0)
            try:
                completion = client.chat.completions.create(**request)
                stream = client.chat.completions.create(**request, stream=True)
                text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
                return completion, text
            finally:
                client.close()

        completion, streamed = await trio.to_thread.run_sync(call)
    assert completion.object == "chat.completion" and completion.id == expected["id"]
    assert completion.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert completion.choices[0].finish_reason == expected["choices"][0]["finish_reason"]
    assert completion.usage.total_tokens == expected["usage"]["total_tokens"]
    assert streamed == completion.choices[0].message.content


async def test_completions_with_prompt_lists(client):
    prompts = ["Once upon a time", "The capital of France", "Write an AVM program"]
    one = [(await client.post("/completions", json={"prompt": p, "max_tokens": 40})).json() for p in prompts]
    body = (await client.post("/completions", json={"prompt": prompts, "max_tokens": 40})).json()
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [c["text"] for c in body["choices"]] == [o["choices"][0]["text"] for o in one]
    assert body["usage"]["completion_tokens"] == sum(o["usage"]["completion_tokens"] for o in one)
    two = (await client.post("/completions", json={"prompt": prompts[:2], "n": 2})).json()
    assert [c["index"] for c in two["choices"]] == [0, 1, 2, 3]
    assert all(c["finish_reason"] == "length" and len(c["text"]) <= 64 for c in two["choices"])  # default 16


async def test_completions_stream(client):
    plain = (await client.post("/completions", json={"prompt": "hello", "max_tokens": 50})).json()
    r = await client.post("/completions", json={"prompt": "hello", "max_tokens": 50, "stream": True})
    events = sse_events(r.text)
    assert "".join(e["choices"][0]["text"] for e in events) == plain["choices"][0]["text"]


# ---------------------------------------------------------------- reply shapes

@pytest.mark.parametrize("seed", range(6))
async def test_tool_calls_satisfy_the_offered_schema(client, seed):
    request = chat("Search the archive for whales", tools=[SEARCH_TOOL, CALC_TOOL], seed=seed)
    choice = (await client.post("/chat/completions", json=request)).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    tool = {"search": SEARCH_TOOL, "calc": CALC_TOOL}[call["function"]["name"]]
    assert conforms(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])


async def test_tool_choice_is_honoured(client):
    forced = chat("hi", tools=[SEARCH_TOOL, CALC_TOOL], tool_choice={"type": "function", "function": {"name": "calc"}})
    for seed in range(4):
        body = (await client.post("/chat/completions", json={**forced, "seed": seed})).json()
        assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "calc"
    none = (await client.post("/chat/completions", json=chat("hi", tools=[CALC_TOOL], tool_choice="none"))).json()
    assert none["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in none["choices"][0]["message"]
    bad = await client.post("/chat/completions", json=chat("hi", tools=[CALC_TOOL], tool_choice="required!"))
    assert bad.status_code == 400


@pytest.mark.parametrize("seed", range(8))
async def test_program_replies_compile_and_run(client, seed):
    request = chat("Please write an AVM program for this task.", seed=seed)
    content = (await client.post("/chat/completions", json=request)).json()["choices"][0]["message"]["content"]
    frame = avm.Frame(avm.compile(content), budget=100.0)
    assert isinstance(frame.run(), avm.Done)


def test_every_program_template_compiles_and_finishes():
    for i in range(200):
        rng = random.Random(i)
        for template in PROGRAM_TEMPLATES:
            source = template(rng, ["whales", "krill"][: i % 3])
            outcome = avm.Frame(avm.compile(source), budget=100.0).run()
            assert isinstance(outcome, avm.Done), (source, outcome)


async def test_final_answer_after_a_few_turns(client):
    for turns, final in ((0, False), (2, False), (3, True), (5, True)):
        request = {"messages": conversation(turns), "tools": [SEARCH_TOOL]}
        choice = (await client.post("/chat/completions", json=request)).json()["choices"][0]
        if final:
            assert choice["message"]["content"].startswith("FINAL ANSWER:") and choice["finish_reason"] == "stop"
        else:
            assert choice["finish_reason"] == "tool_calls"


async def test_final_after_is_a_setting():
    async with serve_llm(final_after=1) as server, httpx.AsyncClient(base_url=server.url) as c:
        body = (await c.post("/chat/completions", json={"messages": conversation(1)})).json()
        assert body["choices"][0]["message"]["content"].startswith("FINAL ANSWER:")


async def test_json_response_format(client):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    body = (await client.post("/chat/completions", json=chat(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))).json()
    assert conforms(json.loads(body["choices"][0]["message"]["content"]), schema)


async def test_max_tokens_truncates_and_stop_cuts(client):
    full = (await client.post("/chat/completions", json=chat())).json()["choices"][0]["message"]["content"]
    short = (await client.post("/chat/completions", json=chat(max_tokens=3))).json()
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] == 3
    assert full.startswith(short["choices"][0]["message"]["content"])
    cut = full.index(" ", 10)
    stopped = (await client.post("/chat/completions", json=chat(stop=["zzz", full[cut:cut + 3]]))).json()
    assert stopped["choices"][0]["message"]["content"] == full[:full.index(full[cut:cut + 3])]
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_finish_prefers_whichever_comes_first():
    assert finish("abcdefghij", 1, ["c"]) == ("ab", "stop")
    assert finish("abcdefghij", 1, ["g"]) == ("abcd", "length")
    assert finish("abcdefghij", None, ["", "x"]) == ("abcdefghij", "stop")


# ---------------------------------------------------------------- errors

async def test_bodies_json_does_not_allow_are_400_not_500(client):
    """A lone surrogate escape, nesting 100,000 deep, NaN: OpenAI-style 400s, not a traceback and a 500."""
    lone = b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}'
    deep = b'{"model":"m","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    nan = b'{"model":"m","temperature":NaN,"messages":[{"role":"user","content":"hi"}]}'
    for raw in (lone, deep, nan):
        for path in ("/chat/completions", "/completions"):
            r = await client.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400, (path, raw[:60])
            assert r.json()["error"]["code"] == "invalid_json"


async def test_errors_are_openai_style(client):
    bad_json = await client.post("/chat/completions", content=b"{not json")
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    assert set(bad_json.json()["error"]) == {"message", "type", "param", "code"}
    missing = await client.post("/chat/completions", json={"model": "m"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    for body in ({"messages": "hi"}, {"messages": [{"content": "x"}]}, chat(max_tokens="9"), chat(n=0),
                 chat(stop=[1]), chat(tools={}), [1, 2]):
        r = await client.post("/chat/completions", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert (await client.post("/completions", json={"model": "m"})).status_code == 400
    assert (await client.post("/completions", json={"prompt": [1, "2"]})).status_code == 400
    unknown = await client.post("/v2/whatever", json={})
    assert unknown.status_code == 404 and "error" in unknown.json()
    wrong = await client.get("/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert (await client.post("/models")).status_code == 405


async def test_oversized_body_gets_413():
    async with serve_llm(max_body_bytes=2048) as server, httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/chat/completions", json=chat("x" * 5000))
        assert r.status_code == 413
        assert (await c.get("/models")).status_code == 200


async def test_garbage_http_gets_400_and_the_server_lives_on(server, client):
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
    reply = await stream.receive_some(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    await stream.aclose()
    assert (await client.get("/models")).status_code == 200


async def exchange(port: int, requests: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], list[bytes]]]
                    ) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Send (method, target, headers, body pieces) requests back to back on one connection."""
    import h11

    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out: list[tuple[int, dict[bytes, bytes], bytes]] = []
    data = b""
    for method, target, headers, pieces in requests:
        data += conn.send(h11.Request(method=method, target=target, headers=[(b"host", b"x"), *headers]))
        for piece in pieces:
            data += conn.send(h11.Data(data=piece))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        data = b""
        status, head, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status, head = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        out.append((status, head, body))
        conn.start_next_cycle()
    await stream.aclose()
    return out


async def test_head_chunked_bodies_and_100_continue_on_one_connection(server):
    body = json.dumps({"prompt": "hello there"}).encode()
    pieces = [body[i:i + 7] for i in range(0, len(body), 7)]
    head, chunked, expect = await exchange(server.port, [
        (b"HEAD", b"/v1/models", [], []),
        (b"POST", b"/v1/completions?x=1", [(b"transfer-encoding", b"chunked")], pieces),
        (b"POST", b"/v1/completions", [(b"expect", b"100-continue"), (b"content-length", b"%d" % len(body))],
         [body])])
    assert head[0] == 200 and head[2] == b"" and int(head[1][b"content-length"]) > 10
    assert chunked[0] == 200 and json.loads(chunked[2])["choices"] == json.loads(expect[2])["choices"]
    assert server.statistics().connections_opened == 1


async def test_idle_keep_alive_connections_are_closed(autojump_clock):
    async with serve_llm(idle_timeout_s=5) as server, httpx.AsyncClient(base_url=server.url) as c:
        await c.get("/models")
        assert server.statistics().connections_open == 1
        await trio.sleep(6)
        assert server.statistics().connections_open == 0
        assert (await c.get("/models")).status_code == 200


# ---------------------------------------------------------------- faults and latency

@pytest.mark.parametrize("kind", ["429", "500", "malformed", "drop"])
async def test_each_fault_kind_at_rate_one(kind):
    async with serve_llm(**{f"rate_{kind}": 1.0}, retry_after_s=2.5) as server, \
            httpx.AsyncClient(base_url=server.url) as c:
        assert (await c.get("/models")).status_code == 200  # faults spare /v1/models
        if kind == "drop":
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post("/chat/completions", json=chat())
        else:
            r = await c.post("/chat/completions", json=chat())
            assert r.status_code == {"429": 429, "500": 500, "malformed": 200}[kind]
            if kind == "429":
                assert r.headers["retry-after"] == "3" and r.headers["retry-after-ms"] == "2500"
            if kind == "malformed":
                with pytest.raises(json.JSONDecodeError):
                    r.json()
            else:
                assert "error" in r.json()
        assert server.statistics().faults_by_kind == {kind: 1}


async def test_timeout_fault_is_a_client_timeout(autojump_clock):
    async with serve_llm(rate_timeout=1.0, timeout_hold_s=600) as server, \
            httpx.AsyncClient(base_url=server.url, timeout=2.0) as c:
        start = trio.current_time()
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/chat/completions", json=chat())
        assert 2.0 <= trio.current_time() - start < 3.0
    assert server.statistics().faults_by_kind == {"timeout": 1}


async def test_latency_is_fixed_plus_per_token(autojump_clock):
    async with serve_llm(latency_ms=1500, per_token_ms=10) as server, httpx.AsyncClient(base_url=server.url) as c:
        start = trio.current_time()
        body = (await c.post("/chat/completions", json=chat())).json()
        elapsed = trio.current_time() - start
        assert elapsed == pytest.approx(1.5 + 0.01 * body["usage"]["completion_tokens"], abs=0.01)
        start = trio.current_time()
        await c.post("/chat/completions", json=chat(stream=True))
        assert trio.current_time() - start == pytest.approx(elapsed, abs=0.01)


@pytest.mark.parametrize("jitter", ["uniform", "lognormal"])
def test_jitter_is_seeded_and_bounded(jitter):
    settings = ServerSettings(latency_ms=100, jitter_ms=50, jitter=jitter, seed=7)
    one, two = FaultModel(settings), FaultModel(settings)
    delays = [one.decide(bytes([i]) * 32).delay_s for i in range(200)]
    assert delays == [two.decide(bytes([i]) * 32).delay_s for i in range(200)]
    assert all(0.1 <= d <= 0.1 + 0.05 * 20 for d in delays) and len(set(delays)) > 150
    if jitter == "uniform":
        assert max(delays) <= 0.15


def test_fault_draws_depend_on_seed_digest_and_attempt():
    settings = ServerSettings(rate_500=0.5, seed=3)
    digests = [bytes([i]) * 32 for i in range(100)]
    first = [FaultModel(settings).decide(d).fault for d in digests]
    model = FaultModel(settings)
    assert [model.decide(d).fault for d in reversed(digests)][::-1] == first  # order does not matter
    assert [model.decide(d).fault for d in digests] != first  # a second attempt draws again
    assert 30 < first.count("500") < 70
    assert [FaultModel(settings.replace(seed=4)).decide(d).fault for d in digests] != first


def test_settings_are_validated():
    with pytest.raises(LLMServerError):
        ServerSettings(rate_429=0.6, rate_500=0.6)
    with pytest.raises(LLMServerError):
        ServerSettings.from_mapping({"latency": 3})
    with pytest.raises(LLMServerError):
        ServerSettings(jitter="gaussian")
    assert ServerSettings().dialect == "vllm" and ServerSettings(dialect="openai").dialect == "openai"
    for dialect in ("tgi", "OpenAI", "", None):
        with pytest.raises(LLMServerError, match="dialect must be one of openai, vllm"):
            ServerSettings(dialect=dialect)
    with pytest.raises(LLMServerError, match="dialect"):
        LLMServer(dialect="vLLM")  # refused before anything listens
    assert ServerSettings.from_mapping({"rate_drop": 0.1}, seed=2).seed == 2


# ---------------------------------------------------------------- connections and lifecycle

async def test_keep_alive_serves_many_requests_on_one_connection(server):
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(base_url=server.url, limits=limits) as c:
        for i in range(10):
            assert (await c.post("/chat/completions", json=chat(str(i)))).status_code == 200
        await c.get("/models")
    stats = server.statistics()
    assert stats.connections_opened == 1 and stats.requests == 11
    assert stats.requests_by_endpoint == {"/v1/chat/completions": 10, "/v1/models": 1}
    assert stats.responses_by_status == {200: 11} and stats.bytes_in > 1000 and stats.bytes_out > 5000


async def test_many_concurrent_requests(server):
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=server.url, limits=limits) as c:
        statuses: list[int] = []

        async def one(i: int) -> None:
            statuses.append((await c.post("/chat/completions", json=chat(f"task {i}"))).status_code)

        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(one, i)
    assert statuses == [200] * 300 and server.statistics().connections_opened <= 8


async def test_clean_shutdown_with_open_and_held_connections():
    errors: list[Exception] = []
    with trio.fail_after(10):
        async with httpx.AsyncClient(timeout=30.0) as c:
            async with trio.open_nursery() as nursery:
                async with serve_llm(rate_timeout=1.0, timeout_hold_s=600) as server:
                    url = server.url
                    assert (await c.get(url + "/models")).status_code == 200  # a keep-alive connection

                    async def held() -> None:
                        try:
                            await c.post(url + "/chat/completions", json=chat())
                        except httpx.TransportError as exc:
                            errors.append(exc)

                    nursery.start_soon(held)
                    while server.statistics().faults_by_kind.get("timeout") != 1:
                        await trio.sleep(0.01)
                # the server is gone; its connections were closed under the client
            assert len(errors) == 1
            assert server.statistics().connections_open == 0
            with pytest.raises(httpx.ConnectError):
                await c.get(url + "/models")
    with pytest.raises(LLMServerError):
        _ = server.url  # (the property raises once the server has stopped)


async def test_a_port_in_use_and_errors_of_the_block_come_out_plainly(server):
    with pytest.raises(LLMServerError, match="cannot listen"):
        async with serve_llm(port=server.port):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="boom"):
        async with serve_llm():
            raise ValueError("boom")


async def test_statistics_are_a_frozen_snapshot(server, client):
    before = server.statistics()
    await client.post("/chat/completions/batch", json={"messages": [chat("a")["messages"], chat("b")["messages"]]})
    await client.post("/completions", json={"prompt": ["x", "y", "z"]})
    after = server.statistics()
    assert before.requests == 0 and after.requests == 2
    assert after.batch_items == 2 and after.prompts == 3 and after.completion_tokens > 0
    with pytest.raises(AttributeError):
        after.requests = 5  # type: ignore[misc]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_llm_command_runs_until_sigint():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "avm", "serve-llm", "--port", str(port), "--latency-ms", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1.0)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "avm serve-llm did not come up"
                time.sleep(0.05)
        assert r.status_code == 200
        assert httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat()).status_code == 200
        batch = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions/batch",  # vllm is the default dialect
                           json={"messages": [chat()["messages"]] * 2})
        assert batch.status_code == 200 and len(batch.json()["choices"]) == 2
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/v1" in out and "Traceback" not in err


def test_serve_llm_help_and_bad_flags():
    result = subprocess.run([sys.executable, "-m", "avm", "serve-llm", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=30)
    assert result.returncode == 0 and "--rate-429" in result.stdout and "--per-token-ms" in result.stdout
    assert "--dialect {openai,vllm}" in result.stdout
    result = subprocess.run([sys.executable, "-m", "avm", "serve-llm", "--dialect", "tgi"], capture_output=True,
                            text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 2 and "--dialect" in result.stderr and "'tgi'" in result.stderr
    result = subprocess.run([sys.executable, "-m", "avm", "serve-llm", "--rate-500", "2"], capture_output=True,
                            text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 2 and "rate_500" in result.stderr


def test_serve_llm_command_with_the_openai_dialect():
    proc = subprocess.Popen([sys.executable, "-m", "avm", "serve-llm", "--dialect", "openai", "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        url = None
        for line in proc.stdout:  # ends if the process dies
            lines.append(line)
            if line.startswith("OPENAI_BASE_URL="):
                url = line.split("=", 1)[1].strip()
                break
        assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/v1"), lines
        assert "openai" in lines[0]
        assert httpx.post(url + "/chat/completions", json=chat(), timeout=10).status_code == 200
        batch = httpx.post(url + "/chat/completions/batch", json={"messages": [chat()["messages"]]}, timeout=10)
        assert batch.status_code == 404 and batch.json()["error"]["code"] == "unknown_url"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped after 2 requests" in err
