"""Agents calling the LLM (the embedded server over loopback, through the gateway) and tools."""

from __future__ import annotations

import json

import pytest
import trio

import avm
from avm.conversation import fill, placeholders
from avm.runtime import VM, AgentError
from avm.scheduler.states import AgentState as S

ASK = """
    push "Tell me about {topic}."
    format
    llm
    return
"""


async def test_llm_reply_is_pushed_and_the_conversation_kept_as_refs():
    async with VM() as vm:
        h = await vm.spawn(ASK, inputs={"topic": "tides"}, budget=50)
        reply = await h.result()
        assert isinstance(reply, str) and reply
        stats = vm.statistics()
        assert stats.effects["llm"] == 1 and stats.prompt_tokens > 0 and stats.completion_tokens > 0
        assert vm.gateway.statistics().requests == 1


async def test_token_usage_is_charged_at_the_documented_rates():
    async with VM() as vm:
        h = await vm.spawn(ASK, inputs={"topic": "tides"}, budget=50)
        await h.result()
        stats = vm.statistics()
        frame = avm.Frame(avm.compile(ASK), budget=50, inputs={"topic": "tides"})
        assert isinstance(frame.run(), avm.Effect)
        frame.resume("x")
        frame.run()
        tokens = (stats.prompt_tokens * vm.settings.energy_per_prompt_token
                  + stats.completion_tokens * vm.settings.energy_per_completion_token)
        assert h.energy_used == pytest.approx(frame.energy_used + tokens, abs=1e-3)


async def test_a_shared_system_prompt_is_stored_once_and_templates_render_per_agent():
    prompt = "You are a careful analyst. " * 2000  # ~54 KB
    template = "You are {name}, working on {topic}. " + prompt
    assert placeholders(template) == ("name", "topic")
    async with VM() as vm:
        before = vm.store.statistics().unique_bytes
        handles = [await vm.spawn(ASK, system=template, inputs={"topic": "tides", "name": f"agent-{i}"},
                                  budget=50) for i in range(50)]
        for h in handles:
            await h.result()
        grown = vm.store.statistics().unique_bytes - before
        assert grown < 2 * len(template)  # one template, not 50 rendered copies
        request = vm._kernel.shared.request(handles[7]._agent, [])
        content = request.messages[0].content  # the shared template and the agent's values, never a copy
        assert content.template is template and content.values == {"topic": "tides", "name": "agent-7"}
        assert content.text() == fill(template, {"topic": "tides", "name": "agent-7"})
        body = json.loads(vm.gateway._encoder.body(request))
        assert body["messages"][0]["content"] == fill(template, {"topic": "tides", "name": "agent-7"})
        plain = await vm.spawn(ASK, system=prompt, inputs={"topic": "x"})
        # No placeholders: sent as its ref
        assert isinstance(vm._kernel.shared.request(plain._agent, []).messages[0].content, avm.Ref)


async def test_a_tool_call_reply_is_a_map_the_program_can_run():
    @avm.tool
    def search(query: str) -> str:
        """Search the web."""
        return f"results for {query}"

    program = """
        push "Research {topic}."
        format
    turn:
        llm
        store reply
        load reply
        call type 1
        push "map"
        eq
        jump_unless answer
        load reply
        push "tool_calls"
        get
        push 0
        get
        store call
        load call
        push "arguments"
        get
        tool search 1
        store found
        push "role"
        push "tool"
        push "tool_call_id"
        load call
        push "id"
        get
        push "content"
        load found
        map 3
        jump turn
    answer:
        load reply
        return
    """
    async with VM(tools=[search]) as vm:
        h = await vm.spawn(program, inputs={"topic": "octopuses"}, tools=["search"], budget=100)
        answer = await h.result()
        assert isinstance(answer, str) and answer.startswith("FINAL ANSWER")
        tools_used = vm.statistics().effects["tool"]
        assert tools_used >= 1 and vm.tools.statistics().ok == tools_used
        assert vm.statistics().effects["llm"] == tools_used + 1


async def test_an_ungranted_tool_faults_the_agent_naming_it():
    @avm.tool
    def secret() -> str:
        return "no"

    async with VM(tools=[secret]) as vm:
        h = await vm.spawn("tool secret 0\nreturn\n")
        with pytest.raises(AgentError, match="ToolDenied: tool 'secret' was not granted"):
            await h.result()
        assert h.state is S.FAILED
        assert vm.tools.statistics().denied == 1


async def test_a_bad_llm_message_faults_with_a_clear_error():
    async with VM() as vm:
        h = await vm.spawn('push "role"\npush "wizard"\npush "content"\npush "x"\nmap 2\nllm\nreturn\n')
        with pytest.raises(AgentError, match="MessageError: llm: a message role is one of"):
            await h.result()


async def test_llm_failures_reach_the_program_as_error_values():
    # every request answered 500: the gateway retries, gives up, the program gets an error value
    async with VM(llm_server={"rate_500": 1.0}, gateway={"max_retries": 1, "backoff_s": 0.001}) as vm:
        h = await vm.spawn(ASK, inputs={"topic": "x"})
        error = (await h.result())["error"]
        assert error["tool"] == "llm" and error["type"] == "server"
        assert vm.statistics().llm_errors == 1


async def test_the_connection_limit_reaches_the_pool_from_every_place_it_can_be_set():
    async with VM() as vm:
        assert vm.gateway.settings.max_connections == 1024 and vm.gateway._backend.max_connections == 1024
    async with VM(gateway={"max_connections": 5}) as vm:  # a spec's [vm.gateway]
        assert vm.gateway._backend.max_connections == 5 and vm.gateway._backend._pool.max_connections == 5
    async with VM(llm_connections=7, gateway={"max_connections": 5}) as vm:  # --llm-connections wins
        assert vm.gateway.settings.max_connections == 7 and vm.gateway._backend._pool.max_connections == 7
    with pytest.raises(avm.VMError, match="llm_connections"):
        VM(llm_connections=0)


async def test_a_hibernated_agent_keeps_refs_not_the_json_of_its_conversation():
    program = 'push "hello"\nllm\npop\npush null\nrecv\nreturn\n'
    async with VM(hibernate_after_s=0.05) as vm:
        h = await vm.spawn(program)
        while h.state is not S.HIBERNATED:
            await trio.sleep(0.02)
        assert h._agent.conversation and all(type(m) is avm.Ref for m in h._agent.conversation)
        stored = json.loads(b"[" + b",".join(vm.store.get(ref) for ref in h._agent.conversation) + b"]")
        assert [m["role"] for m in stored] == ["user", "assistant"] and stored[0]["content"] == "hello"
        await h.send("wake")
        assert await h.result() == "wake"


async def test_an_ended_agent_lets_its_conversation_go_but_one_out_of_budget_keeps_it_to_go_on():
    """An agent that has ended sends no more requests: a fleet's finished agents held their whole
    conversations (messages, their JSON) as long as their handles lived."""
    async with VM() as vm:
        done = await vm.spawn(ASK, inputs={"topic": "tides"}, budget=50)
        await done.result()
        assert done.state is S.DONE and done._agent.conversation is None
        spinning = await vm.spawn('push "hello"\nllm\npop\nloop:\n    jump loop\n', budget=50)
        while spinning.state is not S.BUDGET_EXCEEDED:
            await trio.sleep(0.01)
        assert spinning._agent.conversation and len(spinning._agent.conversation) == 2
        failing = await vm.spawn('push "hello"\nllm\npop\npush 1\npush 0\ndiv\nreturn\n', budget=50)
        with pytest.raises(AgentError):
            await failing.result()
        assert failing.state is S.FAILED and failing._agent.conversation is None


async def test_an_agent_keeps_a_ref_per_turn_and_the_store_holds_each_turns_messages_once():
    program = 'push "one"\nllm\npop\npush "two"\nllm\npop\npush null\nrecv\nreturn\n'
    async with VM(hibernate_after_s=None) as vm:
        agents = [await vm.spawn(program) for _ in range(3)]
        while any(h.state is not S.WAITING_MESSAGE for h in agents):
            await trio.sleep(0.01)
        h = agents[0]
        first, second, reply = h._agent.conversation
        assert type(first) is avm.Ref and type(second) is avm.Ref and reply.role == "assistant"
        turns = json.loads(b"[" + vm.store.get(first) + b"," + vm.store.get(second) + b"]")
        assert [(m["role"], m["content"]) for m in turns][::2] == [("user", "one"), ("user", "two")]
        assert turns[1]["role"] == "assistant" and turns[1]["content"]
        assert all(a._agent.conversation[:2] == [first, second] for a in agents)  # the same turns: one object each
        for a in agents:
            await a.send("done")
            assert await a.result() == "done"


async def test_tool_failures_and_timeouts_are_counted_and_a_timeout_that_overdraws_says_so():
    import trio

    @avm.tool(timeout=0.2)
    async def hang(x: str) -> str:
        await trio.sleep(100)
        return x

    @avm.tool
    def boom(x: str) -> str:
        raise RuntimeError("kaput")

    async with VM(tools=[hang, boom], energy_per_tool_second=50) as vm:
        broke = await vm.spawn('push "a"\ntool boom 1\nreturn\n', tools=["boom"])
        assert (await broke.result())["error"]["type"] == "RuntimeError"
        hung = await vm.spawn('push "a"\ntool hang 1\nreturn\n', tools=["hang"], budget=5)
        with pytest.raises(AgentError) as ended:
            await hung.result()
        assert ended.value.state is avm.AgentState.BUDGET_EXCEEDED
        assert "line 2: tool hang (Timeout: hang did not finish within 0.2 s) cost" in ended.value.detail
        stats = vm.statistics()
        assert (stats.tool_calls, stats.tool_errors, stats.tool_timeouts) == (2, 2, 1)
        hung.add_budget(20)  # it goes on; what it ran out on is history
        assert (await hung.result())["error"]["type"] == "Timeout"
