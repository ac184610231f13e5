"""A request no batch can take, with capacity free and nothing queued, goes out from its caller's own
task (`Gateway._send_now`), against the embedded server over real sockets: no task is started for it,
and a caller cancelled on the wire loses nothing for those who joined its request."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from avm.errors import LLMError
from avm.io.client.openai import OpenAIBackend
from avm.io.embedded.server import serve_llm
from avm.io.gateway import Gateway
from avm.io.request import LLMRequest, Message

MODEL = "avm-embedded"


def ask(text: str, **kw: Any) -> LLMRequest:
    kw.setdefault("temperature", 0)
    return LLMRequest(MODEL, (Message("user", text),), **kw)


class Spawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def test_a_single_request_starts_no_task_and_is_answered():
    async with serve_llm(port=0) as server:
        async with Gateway(OpenAIBackend(server.url), batch=False) as gw:
            await gw.complete(ask("warm up"))  # the first connection is made (trio starts tasks to connect)
            spawns = Spawns()
            trio.lowlevel.add_instrument(spawns)
            try:
                reply = await gw.complete(ask("What is a fjord?"))
            finally:
                trio.lowlevel.remove_instrument(spawns)
            stats = gw.statistics()
    assert reply.text and not reply.cached
    assert spawns.names == []  # the batcher and its senders took no part
    assert (stats.sent, stats.http_requests, stats.in_flight, stats.queued) == (2, 2, 0, 0)


async def test_batchable_requests_still_go_through_the_batcher():
    async with serve_llm(port=0, dialect="vllm", latency_ms=20) as server:
        async with Gateway(OpenAIBackend(server.url), batch_window_s=0.05) as gw:
            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(gw.complete, ask(f"Question {i}"))
            stats = gw.statistics()
    assert stats.batches >= 1 and stats.sent == 6


async def test_a_caller_cancelled_on_the_wire_leaves_the_request_to_those_who_joined_it():
    async with serve_llm(port=0, latency_ms=300) as server:
        async with Gateway(OpenAIBackend(server.url), batch=False) as gw:
            joined: list[Any] = []
            async with trio.open_nursery() as nursery:
                owner = trio.CancelScope()

                async def first() -> None:
                    with owner:
                        await gw.complete(ask("shared question"))

                async def second() -> None:
                    await trio.sleep(0.05)
                    joined.append(await gw.complete(ask("shared question")))

                nursery.start_soon(first)
                nursery.start_soon(second)
                await trio.sleep(0.1)
                owner.cancel()  # the first caller goes; its request was on the wire
            stats = gw.statistics()
        answered = server.statistics().requests_by_endpoint.get("/v1/chat/completions", 0)
    assert stats.sent == 2
    assert owner.cancelled_caught
    assert len(joined) == 1 and joined[0].text and not joined[0].cached
    assert stats.coalesced == 1 and stats.errors_by_kind == {}
    assert (stats.in_flight, stats.queued) == (0, 0)
    assert answered == 2  # the server saw it twice: the first connection dropped with its caller, then again


async def test_a_caller_cancelled_alone_abandons_its_request_and_the_next_one_is_sent():
    async with serve_llm(port=0, latency_ms=300) as server:
        async with Gateway(OpenAIBackend(server.url), batch=False) as gw:
            with trio.move_on_after(0.05) as scope:
                await gw.complete(ask("never mind"))
            assert scope.cancelled_caught
            stats = gw.statistics()
            assert (stats.in_flight, stats.queued) == (0, 0)
            reply = await gw.complete(ask("never mind"))  # not stuck as an in-flight request to join
    assert reply.text and not reply.cached


async def test_a_callers_timeout_ends_its_request_on_the_wire():
    async with serve_llm(port=0, latency_ms=5_000) as server:
        async with Gateway(OpenAIBackend(server.url), batch=False) as gw:
            start = trio.current_time()
            with pytest.raises(LLMError, match="no reply within 0.2 s") as info:
                await gw.complete(ask("slow"), timeout=0.2)
            elapsed = trio.current_time() - start
            stats = gw.statistics()
    assert info.value.kind == "timeout" and 0.2 <= elapsed < 2.0
    assert (stats.in_flight, stats.queued) == (0, 0)


async def test_with_every_slot_taken_requests_queue_and_all_are_answered():
    async with serve_llm(port=0, latency_ms=20) as server:
        async with Gateway(OpenAIBackend(server.url, max_connections=3), batch=False) as gw:
            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(gw.complete, ask(f"Task {i}"))
            stats = gw.statistics()
            peak = gw.statistics().http_connections_max
    assert stats.sent == 30 and stats.errors_by_kind == {} and peak <= 3


async def test_submit_hands_back_what_waits_so_a_waiting_request_holds_no_frame_of_it():
    """`Gateway.submit` is `complete` without a coroutine of its own: it returns the coroutine that sends
    and waits, or a cache hit ready (awaiting it does not yield); bad requests raise at the call."""
    async with serve_llm(port=0, dialect="openai") as server:
        async with Gateway(OpenAIBackend(server.url), batch=False) as gw:
            waiting = gw.submit(ask("What is a fjord?"))
            assert waiting.cr_code is Gateway._send_now.__code__  # type: ignore[attr-defined]
            first = await waiting
            hit = gw.submit(ask("What is a fjord?"))
            assert not hasattr(hit, "cr_code")
            with trio.CancelScope() as scope:
                scope.cancel()  # a checkpoint would raise Cancelled: the ready reply does not yield
                again = await hit
            assert again.cached and again.text == first.text
            with pytest.raises(LLMError) as info:
                gw.submit(LLMRequest(MODEL, (Message("user", "x"),), temperature=9))
            assert info.value.kind == "bad_request"
