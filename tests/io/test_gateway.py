"""The gateway against the embedded LLM server over real loopback sockets."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from avm.errors import LLMError
from avm.io.cache import NAME_PREFIX
from avm.io.client.openai import OpenAIBackend
from avm.io.embedded.server import serve_llm
from avm.io.gateway import Gateway
from avm.io.request import LLMRequest, Message
from avm.memory import ContentStore

MODEL = "avm-embedded"


def ask(text: str, **kw: Any) -> LLMRequest:
    kw.setdefault("temperature", 0)
    return LLMRequest(MODEL, (Message("system", "You are a researcher."), Message("user", text)), **kw)


def served(server) -> int:
    """Chat completions the server answered (alone or in batches)."""
    s = server.statistics()
    return s.requests_by_endpoint.get("/v1/chat/completions", 0) + s.batch_items


async def test_a_reply_then_a_hot_cache_hit_that_never_touches_the_network():
    async with serve_llm(port=0) as server, Gateway(OpenAIBackend(server.url)) as gw:
        first = await gw.complete(ask("Tell me about rivers"))
        assert not first.cached and first.text and first.finish_reason == "stop"
        assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0 and first.latency > 0
        before = server.statistics().requests
        again = await gw.complete(ask("Tell me about rivers"))
        assert server.statistics().requests == before
        assert again.cached and (again.text, again.usage) == (first.text, first.usage)
        stats = gw.statistics()
    assert (stats.requests, stats.hits_hot, stats.hits_store, stats.misses, stats.http_requests) == (2, 1, 0, 1, 1)
    usage = server.statistics()
    assert (stats.prompt_tokens, stats.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)


async def test_only_cacheable_requests_are_cached():
    async with serve_llm(port=0) as server:
        async with Gateway(OpenAIBackend(server.url)) as gw:
            sampled = LLMRequest(MODEL, (Message("user", "Write a poem"),))  # temperature 1 by default
            for _ in range(2):
                assert not (await gw.complete(sampled)).cached
            assert (await gw.complete(ask("Write a poem", temperature=0.8, seed=4))).cached is False
            assert (await gw.complete(ask("Write a poem", temperature=0.8, seed=4))).cached is True
            assert (await gw.complete(ask("Write a poem", temperature=0.8, cache=True))).cached is False
            assert (await gw.complete(ask("Write a poem", temperature=0.8, cache=True))).cached is True
            stats = gw.statistics()
        assert served(server) == 4
    assert (stats.uncacheable, stats.misses, stats.hits_hot) == (2, 2, 2)


async def test_a_repeated_run_is_served_from_the_store_on_disk(tmp_path):
    questions = [ask(f"Question {i} about glaciers") for i in range(5)]
    with ContentStore(tmp_path / "store") as store:
        async with serve_llm(port=0) as server, Gateway(OpenAIBackend(server.url), store=store) as gw:
            first = [await gw.complete(q) for q in questions]
        assert len(store.names(NAME_PREFIX)) == 5
    with ContentStore(tmp_path / "store") as store:  # a new process would see the same
        async with serve_llm(port=0) as server:
            async with Gateway(OpenAIBackend(server.url), store=store) as gw:
                second = [await gw.complete(q) for q in questions]
                stats = gw.statistics()
            assert server.statistics().requests == 0
    assert [r.text for r in second] == [r.text for r in first] and all(r.cached for r in second)
    assert (stats.hits_store, stats.hits_hot, stats.http_requests) == (5, 0, 0)


async def test_identical_requests_in_flight_are_sent_once():
    async with serve_llm(port=0, latency_ms=30) as server:
        async with Gateway(OpenAIBackend(server.url)) as gw:
            replies = []

            async def one() -> None:
                replies.append(await gw.complete(ask("What is a fjord?")))

            async with trio.open_nursery() as nursery:
                for _ in range(25):
                    nursery.start_soon(one)
            stats = gw.statistics()
        assert served(server) == 1
    assert len({r.text for r in replies}) == 1 and not any(r.cached for r in replies)
    assert (stats.coalesced, stats.misses, stats.sent) == (24, 1, 1)


async def test_concurrent_requests_go_in_batches_over_few_connections():
    async with serve_llm(port=0, latency_ms=20) as server:
        async with Gateway(OpenAIBackend(server.url, max_connections=4), batch_size=32) as gw:
            texts: dict[int, str] = {}

            async def one(i: int) -> None:
                texts[i] = (await gw.complete(ask(f"Task {i}: summarise the findings"))).text

            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(one, i)
            stats = gw.statistics()
        server_stats = server.statistics()
    assert len(texts) == 300 and len(set(texts.values())) > 1
    assert server_stats.batch_items + server_stats.requests_by_endpoint.get("/v1/chat/completions", 0) == 300
    assert stats.batches >= 300 // 32 and stats.batch_size_max == 32 and stats.batch_size_mean > 16
    assert stats.http_requests < 40
    assert 1 <= stats.http_connections_max <= 4
    assert stats.http_connections_opened == server_stats.connections_opened <= 4
    assert 0 < stats.latency_p50_s <= stats.latency_p99_s


async def test_without_batching_requests_go_one_by_one_over_a_bounded_pool():
    async with serve_llm(port=0) as server:
        async with Gateway(OpenAIBackend(server.url, max_connections=3), batch=False) as gw:
            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(gw.complete, ask(f"Task {i}"))
            stats = gw.statistics()
        server_stats = server.statistics()
    assert server_stats.requests_by_endpoint.get("/v1/chat/completions") == 40 and server_stats.batch_items == 0
    assert (stats.http_requests, stats.batches) == (40, 0)
    assert stats.http_connections_opened == server_stats.connections_opened <= 3


async def test_a_backend_without_batches_gets_single_requests():
    async with serve_llm(port=0) as server:
        async with Gateway(OpenAIBackend(server.url, batch=False)) as gw, trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(gw.complete, ask(f"Task {i}"))
        assert server.statistics().batch_items == 0
        assert server.statistics().requests_by_endpoint["/v1/chat/completions"] == 20


async def test_streamed_replies_equal_plain_ones():
    request = ask("Explain how tides work", max_tokens=40)
    async with serve_llm(port=0) as server:
        async with Gateway(OpenAIBackend(server.url)) as gw:
            plain = await gw.complete(request)
        async with Gateway(OpenAIBackend(server.url), stream=True) as gw:
            streamed = await gw.complete(request)
            stats = gw.statistics()
    assert (streamed.text, streamed.finish_reason, streamed.usage) == (plain.text, plain.finish_reason, plain.usage)
    assert stats.streamed == 1


async def test_refs_in_messages_and_tools_reach_the_server_as_text():
    store = ContentStore()
    system = store.put(b"You are an agent with tools.")
    tools = store.put_value([{"type": "function", "function": {
        "name": "lookup", "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}])
    request = LLMRequest(MODEL, (Message("system", system), Message("user", "define harbor")), temperature=0,
                         tools=tools, tool_choice="required")
    async with serve_llm(port=0) as server, Gateway(OpenAIBackend(server.url), store=store) as gw:
        reply = await gw.complete(request)
    assert reply.finish_reason == "tool_calls" and reply.tool_calls[0]["function"]["name"] == "lookup"


FAULTS = {"seed": 7, "rate_429": 0.25, "rate_500": 0.2, "rate_drop": 0.1, "retry_after_s": 0.002}


async def test_injected_faults_are_retried_until_every_request_succeeds():
    """One request per HTTP request: the server's fault draws depend on the request only, so this is exact.

    A drop on a kept-alive connection looks to the client like a server that closed it before the
    request: the client sends it again at once on a new connection (a reconnect, not a retry)."""
    async with serve_llm(port=0, **FAULTS) as server:
        backend = OpenAIBackend(server.url, max_connections=4)
        async with Gateway(backend, batch=False, backoff_s=0.001, backoff_max_s=0.01, max_retries=12) as gw:
            async with trio.open_nursery() as nursery:
                for i in range(60):
                    nursery.start_soon(gw.complete, ask(f"Task {i}"))
            stats = gw.statistics()
        faults = server.statistics().faults_by_kind
    assert faults.get("429", 0) and faults.get("500", 0) and faults.get("drop", 0)
    assert stats.retries + stats.http_reconnects == sum(faults.values()) and stats.errors_by_kind == {}
    assert stats.sent == 60 + stats.retries
    # what was retried, by kind, with the first message of each (a 429 and a 500 are different kinds)
    assert sum(stats.retries_by_kind.values()) == stats.retries and len(stats.retries_by_kind) >= 2
    assert stats.first_retries.keys() == stats.retries_by_kind.keys()
    assert all(stats.first_retries.values())


async def test_failed_batches_are_retried_too():
    async with serve_llm(port=0, **FAULTS) as server:
        backend = OpenAIBackend(server.url, max_connections=4)
        # each attempt fails with p = 0.55: 40 retries leave a request failing with p < 1e-10
        async with Gateway(backend, batch_size=8, backoff_s=0.001, backoff_max_s=0.002, max_retries=40) as gw:
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(gw.complete, ask(f"Task {i}"))
            stats = gw.statistics()
        faults = server.statistics().faults_by_kind
    assert sum(faults.values()) > 0 and stats.retries > 0 and stats.errors_by_kind == {}
    assert stats.misses == 200 and stats.in_flight == stats.queued == 0


async def test_malformed_replies_become_errors_naming_the_request_and_the_gateway_goes_on():
    async with serve_llm(port=0, rate_malformed=1.0) as server, \
            Gateway(OpenAIBackend(server.url), backoff_s=0.001, max_retries=2) as gw:
        request = ask("anything")
        for _ in range(2):
            with pytest.raises(LLMError) as info:
                await gw.complete(request)
            error = info.value
            assert error.kind == "malformed" and error.status is None
            assert error.request == f"{MODEL}/{request.cache_key().hex()[:12]}"
            assert error.request in str(error) and "after 3 attempts" in str(error)  # retried like a 5xx
        assert gw.statistics().errors_by_kind == {"malformed": 2}


async def test_a_server_that_never_answers_times_out_each_attempt():
    async with serve_llm(port=0, rate_timeout=1.0, timeout_hold_s=30) as server, \
            Gateway(OpenAIBackend(server.url), attempt_timeout_s=0.05, max_retries=1, backoff_s=0.001) as gw:
        with pytest.raises(LLMError, match="after 2 attempts") as info:
            await gw.complete(ask("hello"))
        assert info.value.kind == "timeout"
        assert gw.statistics().retries == 1


async def test_a_request_timeout_bounds_the_whole_call():
    async with serve_llm(port=0, latency_ms=5_000) as server, Gateway(OpenAIBackend(server.url)) as gw:
        with pytest.raises(LLMError, match="no reply within 0.05 s") as info:
            await gw.complete(ask("slow"), timeout=0.05)
        assert info.value.kind == "timeout"
        assert gw.statistics().errors_by_kind == {"timeout": 1}


async def test_the_default_deadline_bounds_a_request_to_a_real_server_that_holds_its_reply():
    """The pool bounds the attempt itself (no cancel scope per request): at the request's deadline the caller
    fails, its connection is closed and its capacity given back."""
    async with serve_llm(port=0, latency_ms=5_000, dialect="openai") as server, \
            Gateway(OpenAIBackend(server.url, batch=False), request_timeout_s=0.3, attempt_timeout_s=60.0) as gw:
        start = trio.current_time()
        with pytest.raises(LLMError, match="no reply within 0.3 s") as info:
            await gw.complete(ask("held"))
        assert info.value.kind == "timeout" and 0.3 <= trio.current_time() - start < 2.0
        stats = gw.statistics()
        assert stats.in_flight == 0 and stats.retries == 0
        assert gw._in_flight == 0 and gw._backend._pool.open == 0


async def test_closing_the_gateway_ends_requests_waiting_on_a_real_server_at_once():
    outcomes: list[LLMError] = []
    async with serve_llm(port=0, latency_ms=5_000, dialect="openai") as server:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            gw = Gateway(OpenAIBackend(server.url, batch=False))
            await gw.__aenter__()

            async def call(text: str) -> None:
                with pytest.raises(LLMError) as info:
                    await gw.complete(ask(text))
                outcomes.append(info.value)
            for text in ("one", "two", "three"):
                nursery.start_soon(call, text)
            await trio.sleep(0.2)
            await gw.__aexit__(None, None, None)
        assert trio.current_time() - start < 2.0
    assert [e.kind for e in outcomes] == ["cancelled"] * 3


async def test_a_caller_that_joins_moves_the_deadline_and_the_sending_caller_still_gets_its_reply():
    """The sending caller's attempt ends at the request's deadline as it was when sent; a caller joining
    with a timeout of its own moves that deadline (to none), then leaves: the attempt is made again, the
    sending caller is answered (found by review: it used to wait forever on an abandoned request)."""
    async with serve_llm(port=0, latency_ms=1_000, dialect="openai") as server, \
            Gateway(OpenAIBackend(server.url, batch=False), request_timeout_s=0.3, attempt_timeout_s=60.0,
                    backoff_s=0.001) as gw:
        got: dict[str, Any] = {}

        async def sender() -> None:
            got["reply"] = await gw.complete(ask("joined"))

        async def joiner() -> None:
            await trio.sleep(0.1)
            with pytest.raises(LLMError):
                await gw.complete(ask("joined"), timeout=0.1)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                nursery.start_soon(joiner)
        assert got["reply"].text and gw.statistics().in_flight == 0 and not gw._live


async def test_a_caller_cancelled_from_outside_after_its_attempts_end_leaves_nothing_in_flight():
    """Both the caller's cancel scope and the attempt's end pass in one step of the loop: the request is
    let go as for any cancelled caller (found by review: it stayed in flight, and joinable, for ever)."""
    async with serve_llm(port=0, latency_ms=3_000, dialect="openai") as server, \
            Gateway(OpenAIBackend(server.url, batch=False), request_timeout_s=None, attempt_timeout_s=0.3) as gw:
        async def caller() -> None:
            with trio.move_on_after(0.3):
                await gw.complete(ask("cut"))

        async def hiccup() -> None:
            await trio.sleep(0.1)
            time.sleep(0.5)  # one long synchronous step: both ends are past when the loop looks again
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            nursery.start_soon(hiccup)
        stats = gw.statistics()
        assert stats.in_flight == 0 and not gw._live and not gw._flights


TOOLS = ({"type": "function", "function": {"name": "lookup", "description": "Look a topic up.",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                                          "required": ["q"]}}},)


async def test_vllm_batches_only_what_it_can_batch_and_sends_tool_requests_singly_at_full_concurrency(
        autojump_clock):
    """vLLM renders no tools in a batch: tool-bearing requests go alone, each on its own connection.

    On trio's autojump clock (the embedded server shares the test's loop): the latency and the wall
    time are virtual, so "about one latency" holds however loaded the machine."""
    async with serve_llm(port=0, dialect="vllm", latency_ms=200) as server:
        async with Gateway(OpenAIBackend(server.url), batch_size=64) as gw:
            replies: dict[str, Any] = {}

            async def one(name: str, request: LLMRequest) -> None:
                replies[name] = await gw.complete(request)

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, f"plain{i}", ask(f"Task {i}: summarise"))
                    nursery.start_soon(one, f"tool{i}", ask(f"Task {i}: look it up", tools=TOOLS))
            wall = trio.current_time() - start
            stats = gw.statistics()
        server_stats = server.statistics()
    assert all(replies[f"tool{i}"].tool_calls for i in range(100))  # tools reached the server: singly
    assert not any(replies[f"plain{i}"].tool_calls for i in range(100))
    assert server_stats.batch_items == 100 and server_stats.requests_by_endpoint["/v1/chat/completions"] == 100
    assert stats.batches >= 2 and stats.http_connections_max >= 100 - 64  # the singles went at once
    assert wall < 2.0  # about one latency, not 100 of them
    assert stats.errors_by_kind == {} and stats.batches_refused == 0


@pytest.mark.parametrize("status", [400, 404, 422, 500])
async def test_a_server_refusing_the_first_batch_turns_batching_off_and_no_request_fails(status):
    from tests.support.http_server import Answer, Seen, scripted_server

    def handler(request: Seen) -> Answer:
        if request.path.endswith("/batch"):
            return Answer(status, {"error": {"message": "unknown route", "type": "invalid_request_error"}})
        return Answer(200, {"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "re: " + request.json()["messages"][-1]["content"]}}]})

    seen: list[Seen] = []
    with scripted_server(handler, seen=seen) as url:
        async with Gateway(OpenAIBackend(url), batch_size=16, batch_window_s=0.05) as gw:
            texts: dict[int, str] = {}

            async def one(i: int) -> None:
                texts[i] = (await gw.complete(ask(f"q{i}"))).text

            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(one, i)
            stats = gw.statistics()
    assert texts == {i: f"re: q{i}" for i in range(40)}
    paths = [r.path for r in seen]
    tried = paths.count("/v1/chat/completions/batch")
    assert 1 <= tried <= 3  # the batches that went out at once (40 requests, 16 a batch), then never again
    assert paths.count("/v1/chat/completions") == 40  # every request went singly, once
    assert stats.errors_by_kind == {} and stats.batches == 0 and stats.http_requests == 40


async def test_a_batch_refused_after_batching_worked_is_sent_item_by_item_and_only_the_bad_one_fails():
    """vLLM fails a whole batch for one bad item: the gateway then sends each alone."""
    from tests.support.http_server import Answer, Seen, scripted_server

    def choice(i: int, text: str) -> dict:
        return {"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": "re: " + text}}

    def handler(request: Seen) -> Answer:
        body = request.json()
        if request.path.endswith("/batch"):
            texts = [conversation[-1]["content"] for conversation in body["messages"]]
            if any("poison" in t for t in texts):
                return Answer(400, {"error": {"message": "a bad item", "type": "Bad Request", "code": 400}})
            return Answer(200, {"choices": [choice(i, t) for i, t in enumerate(texts)],
                                "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
        text = body["messages"][-1]["content"]
        if "poison" in text:
            return Answer(400, {"error": {"message": "a bad item", "type": "BadRequestError"}})
        return Answer(200, {"choices": [choice(0, text)]})

    seen: list[Seen] = []
    with scripted_server(handler, seen=seen) as url:
        async with Gateway(OpenAIBackend(url), batch_size=8, batch_window_s=0.05) as gw:
            results: dict[str, Any] = {}

            async def one(text: str) -> None:
                try:
                    results[text] = (await gw.complete(ask(text))).text
                except LLMError as exc:
                    results[text] = exc

            for round_ in (["a", "b"], ["c", "poison", "d", "e"]):
                async with trio.open_nursery() as nursery:
                    for text in round_:
                        nursery.start_soon(one, text)
            stats = gw.statistics()
    bad = results.pop("poison")
    assert isinstance(bad, LLMError) and bad.kind == "bad_request" and "a bad item" in bad.message
    assert results == {t: f"re: {t}" for t in "abcde"}
    assert stats.batches_refused == 1 and stats.batches == 1  # only batches a server accepted count
    assert [r.path for r in seen].count("/v1/chat/completions") == 4


async def test_the_default_deadline_fails_a_request_the_server_never_answers(autojump_clock):
    from avm.io.client.backends import Reply

    class Silent:
        supports_batch = False
        max_connections = 4

        async def send(self, body):
            await trio.sleep_forever()

        send_stream = send

        async def send_batch(self, head, conversations):
            raise AssertionError("no batches here")

        def connections(self):
            return 0, 0

        async def aclose(self):
            pass

    async with Gateway(Silent(), request_timeout_s=30.0, attempt_timeout_s=1000.0) as gw:
        start = trio.current_time()
        with pytest.raises(LLMError, match="no reply within 30 s") as info:
            await gw.complete(ask("anyone?"))
        assert info.value.kind == "timeout" and 30.0 <= trio.current_time() - start <= 35.0
        assert gw.statistics().in_flight == 0
        start = trio.current_time()  # a caller's own timeout is its own, longer or not
        with pytest.raises(LLMError, match="no reply within 90 s"):
            await gw.complete(ask("patient"), timeout=90.0)
        assert 90.0 <= trio.current_time() - start <= 91.0
    assert Reply  # the scripted backend above answers nothing


async def test_a_truncated_stream_is_retried():
    from tests.support.http_server import Answer, Seen, scripted_server

    chunk = {"choices": [{"index": 0, "delta": {"content": "whole"}, "finish_reason": "stop"}]}
    good = b"data: " + __import__("json").dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"
    cut = b'data: {"choices": [{"index": 0, "delta": {"content": "who'
    answers = iter([cut, good])

    def handler(request: Seen) -> Answer:
        return Answer(200, next(answers), headers={"content-type": "text/event-stream"})

    with scripted_server(handler) as url:
        async with Gateway(OpenAIBackend(url), stream=True, backoff_s=0.001) as gw:
            reply = await gw.complete(ask("stream it"))
            stats = gw.statistics()
    assert reply.text == "whole" and stats.retries == 1 and stats.errors_by_kind == {}
