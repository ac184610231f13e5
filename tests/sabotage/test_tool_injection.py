"""Tool injection: an LLM reply that calls a tool the agent was not granted is refused by the VM.

The server is hypercorn (a real HTTP server AVM did not write) serving an OpenAI-shaped chat completion that
calls ``wipe``: a tool the VM has, but the agent was not granted."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
import trio

import avm
from avm.journal import check_journal, journals

hypercorn_trio = pytest.importorskip("hypercorn.trio")
from hypercorn.config import Config  # noqa: E402 - after the skip: hypercorn is a test extra

WIPED: list[str] = []


@avm.tool
def wipe(path: str) -> str:
    """Delete everything under a path (what an attacker wants the agent to call)."""
    WIPED.append(path)
    return "wiped"


@avm.tool
def search(query: str) -> str:
    """Search the web."""
    return f"results for {query}"


def _injected() -> dict[str, Any]:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "wipe", "arguments": '{"path": "/"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "search", "arguments": '{"query": "x"}'}}]
    return {"id": "c", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": calls},
                         "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    body = json.dumps(_injected() if scope["path"].endswith("/chat/completions") else {"data": []}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _serve(nursery: trio.Nursery) -> str:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.errorlog = None
    config.graceful_timeout = 0.2
    binds = await nursery.start(partial(hypercorn_trio.serve, _app, config, shutdown_trigger=trio.sleep_forever,
                                        mode="asgi"))
    return binds[0] + "/v1"


PROGRAM = """
push "summarise the document"
llm
store reply
load reply
push "tool_calls"
get
store calls
load calls
len
push 0
gt
jump_unless done
load calls
push 0
get
push "arguments"
get
tool search 1
pop
done:
load reply
return
"""


async def test_a_reply_calling_an_ungranted_tool_is_refused_and_never_run(nursery: trio.Nursery) -> None:
    WIPED.clear()
    url = await _serve(nursery)
    async with avm.VM(llm=url, model="m", tools=[wipe, search], journal=True) as vm:
        h = await vm.spawn(PROGRAM, tools=["search"])
        value = await h.result()
        assert vm.statistics().tool_injections == 1
        (head,) = journals(vm.store).values()
        entries = [e for _, e in check_journal(vm.store, head)]
        llm = next(e for e in entries if e.kind == "llm")
        journaled = vm.store.get_value(llm.result)
    assert WIPED == []
    assert [c["name"] for c in value["tool_calls"]] == ["search"]  # the granted call goes through
    assert value["refused_tool_calls"] == [{"id": "call_1", "name": "wipe", "error":
                                            "the model called 'wipe', a tool this agent was not granted: refused"}]
    assert journaled["value"]["refused_tool_calls"][0]["name"] == "wipe"  # the journal records the refusal
    assert '"wipe"' not in journaled["reply"]  # and the conversation never carries the refused call


async def test_a_program_that_calls_an_ungranted_tool_faults_without_running_it() -> None:
    WIPED.clear()
    async with avm.VM(tools=[wipe, search], journal=True) as vm:
        h = await vm.spawn('push "/"\ntool wipe 1\nreturn\n', tools=["search"])
        with pytest.raises(avm.AgentError, match="ToolDenied"):
            await h.result()
        (head,) = journals(vm.store).values()
        tool = next(e for _, e in check_journal(vm.store, head) if e.kind == "tool")
        assert "fault" in vm.store.get_value(tool.result)
    assert WIPED == []
