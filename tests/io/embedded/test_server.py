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
from avm.io.embedded.server import serve_llm

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
    r = await client.post("/chat/completions", json=chat(model="my-model"))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "my-model" and body["id"].startswith("chatcmpl-")
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


async def test_batch_answers_in_order_as_if_sent_alone(client):
    requests = [chat(f"question number {i} about rivers", seed=i) for i in range(5)]
    alone = [(await client.post("/chat/completions", json=q)).json() for q in requests]
    listed = (await client.post("/chat/completions/batch", json=requests)).json()
    assert [b["choices"] for b in listed] == [a["choices"] for a in alone]
    assert [b["id"] for b in listed] == [a["id"] for a in alone]
    wrapped = await client.post("/chat/completions/batch", json={
        "model": "avm-embedded", "requests": [{"messages": q["messages"], "seed": q["seed"]} for q in requests]})
    assert [b["choices"] for b in wrapped.json()] == [a["choices"] for a in alone]


async def test_batch_errors_name_the_item(client):
    r = await client.post("/chat/completions/batch", json=[chat(), {"model": "m"}])
    assert r.status_code == 400 and r.json()["error"]["param"] == "[1].messages"
    assert (await client.post("/chat/completions/batch", json=[])).status_code == 400
    assert (await client.post("/chat/completions/batch", json={"items": []})).json()["error"]["code"] == "missing_field"


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
    assert (await client.post("/completions", json={"prompt": [1, 2]})).status_code == 400
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
        server.url


async def test_a_port_in_use_and_errors_of_the_block_come_out_plainly(server):
    with pytest.raises(LLMServerError, match="cannot listen"):
        async with serve_llm(port=server.port):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="boom"):
        async with serve_llm():
            raise ValueError("boom")


async def test_statistics_are_a_frozen_snapshot(server, client):
    before = server.statistics()
    await client.post("/chat/completions/batch", json=[chat("a"), chat("b")])
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
    result = subprocess.run([sys.executable, "-m", "avm", "serve-llm", "--rate-500", "2"], capture_output=True,
                            text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 2 and "rate_500" in result.stderr
