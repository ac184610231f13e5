"""The Python embedding API: run_agents (sync), run_agents_async (trio and asyncio), the README example."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

import avm
from avm.io.request import Filled, LLMRequest, LLMResponse, Usage
from avm.scheduler.states import AgentState as S
from avm.tools.registry import ToolDefinitionError
from tests.agent_programs import COUNT

ROOT = Path(__file__).resolve().parent.parent

ECHO_INPUT = "load x\nreturn\n"
NAP_THEN_ECHO = "load nap\nsleep\npop\nload x\nreturn\n"  # sleep pushes null
DIVIDE = "push 10\nload d\nmod\nreturn\n"  # d = 0 faults at line 3
WAIT_FOREVER = "push null\nrecv\nreturn\n"


def test_the_readme_example_runs_as_a_script():
    proc = subprocess.run([sys.executable, "examples/embedding.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4, proc.stdout
    assert lines[0].startswith("Ada: FINAL ANSWER:") and lines[0].endswith(" energy)")
    assert lines[1].startswith("Bo: FINAL ANSWER:")
    assert lines[2] == "Cy: failed: line 3: FormatError: format: no variable 'topic'"
    assert lines[3] == "greeter: hello, world"


# --- results ---------------------------------------------------------------------------------------------


def test_results_come_in_input_order_whatever_order_the_agents_end_in():
    finished: list[int] = []

    @avm.tool
    def done(x: int) -> int:
        finished.append(x)
        return x

    program = "load nap\nsleep\npop\nload x\ntool done 1\nreturn\n"
    naps = [0.08, 0.0, 0.04, 0.02]
    results = avm.run_agents(program, [{"x": i, "nap": nap} for i, nap in enumerate(naps)], tools=[done])
    assert results == [0, 1, 2, 3]
    assert finished == [1, 3, 2, 0]  # they ended in another order
    assert isinstance(results, avm.RunResults) and results.ok and results.errors == {}
    assert len(results.energy_used) == 4 and all(e > 0 for e in results.energy_used)
    assert results.statistics is not None and results.statistics.agents == 4
    assert results.statistics.by_state == {"done": 4}


def test_inputs_none_is_one_agent_and_count_is_many_without_inputs():
    assert avm.run_agents("push 7\nreturn\n") == [7]
    assert avm.run_agents("push 7\nreturn\n", count=3) == [7, 7, 7]
    empty = avm.run_agents("push 7\nreturn\n", [])
    assert empty == [] and empty.statistics is None
    assert avm.run_agents("push 7\nreturn\n", count=0) == []
    assert avm.run_agents(ECHO_INPUT, ({"x": n} for n in range(3))) == [0, 1, 2]  # any iterable of maps
    assert avm.run_agents("push 1\nreturn\n", [None, {}]) == [1, 1]


def test_a_failing_agent_gives_its_agent_error_and_the_others_their_values():
    results = avm.run_agents(DIVIDE, [{"d": 3}, {"d": 0}, {"d": 4}])
    assert results[0] == 1 and results[2] == 2
    error = results[1]
    assert isinstance(error, avm.AgentError)
    assert error.state is S.FAILED and error.detail.startswith("line 3:")
    assert error.agent_id == 2
    assert results.errors == {1: error} and not results.ok


def test_raise_errors_raises_the_first_error_once_every_agent_has_ended():
    ended: list[int] = []

    @avm.tool
    def note(x: int) -> int:
        ended.append(x)
        return x

    program = "load nap\nsleep\npop\nload x\ntool note 1\npop\npush 10\nload x\nmod\nreturn\n"  # x = 0 faults
    inputs = [{"x": 5, "nap": 0.0}, {"x": 0, "nap": 0.05}, {"x": 0, "nap": 0.0}, {"x": 7, "nap": 0.1}]
    with pytest.raises(avm.AgentError, match="agent 2 ended failed") as info:
        avm.run_agents(program, inputs, tools=[note], raise_errors=True)
    assert info.value.state is S.FAILED
    assert sorted(ended) == [0, 0, 5, 7]  # the slowest agent ran to its end before the error was raised


def test_budget_exhaustion_is_an_agent_error_with_the_energy_within_the_budget():
    results = avm.run_agents(COUNT, [{"n": 3}, {"n": 100_000}, {"n": 5}], budget=20.0)
    assert results[0] == 3 and results[2] == 5
    error = results[1]
    assert isinstance(error, avm.AgentError) and error.state is S.BUDGET_EXCEEDED
    assert "needed" in error.detail
    assert results.energy_used[1] <= 20.0
    assert results.energy_used[0] < results.energy_used[1]


def test_tools_are_granted_all_by_default_or_as_named():
    calls: list[str] = []

    @avm.tool
    async def shout(text: str) -> str:
        """Upper-case a text."""
        calls.append(text)
        return text.upper()

    @avm.tool
    def whisper(text: str) -> str:
        return text.lower()

    program = "load x\ntool shout 1\nreturn\n"
    assert avm.run_agents(program, [{"x": "a"}, {"x": "b"}], tools=[shout, whisper]) == ["A", "B"]
    assert sorted(calls) == ["a", "b"]
    denied = avm.run_agents(program, [{"x": "a"}], tools=[shout, whisper], grant=["whisper"])[0]
    assert isinstance(denied, avm.AgentError) and denied.state is S.FAILED and "ToolDenied" in denied.detail
    assert avm.run_agents(program, [{"x": "c"}], tools=avm.ToolRegistry([shout])) == ["C"]
    # A plain function is made a tool; the same Tool object serves a second run (a second trio.run).
    assert avm.run_agents("push 2\ntool double 1\nreturn\n", tools=[double]) == [4]
    assert avm.run_agents("push 3\ntool double 1\nreturn\n", tools=[double]) == [6]


def double(n: int) -> int:
    return 2 * n


class RecordingGateway:
    """Stands in for the LLM gateway: answers each request with the system prompt it was sent."""

    model = "recording"

    def __init__(self) -> None:
        self.requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest, priority: int = 1) -> LLMResponse:
        self.requests.append(request)
        system = request.messages[0]
        content = system.content
        if isinstance(content, Filled):  # a template shared by the agents, with this agent's values
            content = content.text()
        text = content if system.role == "system" and isinstance(content, str) else "no system"
        return LLMResponse(text, "stop", Usage(10, 2), 0.0)


def test_the_system_template_is_filled_from_each_agents_inputs_and_settings_reach_the_vm():
    gateway = RecordingGateway()
    program = 'push "hi"\nllm\nreturn\n'
    results = avm.run_agents(program, [{"name": "Ada"}, {"name": "Bo"}], system="You are {name}.", llm=gateway,
                             max_tokens=77, priority="interactive")
    assert results == ["You are Ada.", "You are Bo."]
    assert {r.max_tokens for r in gateway.requests} == {77}


def test_the_embedded_server_answers_when_llm_is_none():
    results = avm.run_agents('push "Tell me about tides."\nllm\nreturn\n', count=2, budget=50.0)
    assert all(isinstance(r, str) and r for r in results)
    assert results[0] == results[1]  # the embedded server's replies depend on the request only


def test_concurrency_bounds_the_agents_alive_at_once():
    alive = peak = 0

    @avm.tool
    async def enter() -> None:
        nonlocal alive, peak
        alive += 1
        peak = max(peak, alive)

    @avm.tool
    async def leave() -> None:
        nonlocal alive
        alive -= 1

    program = "tool enter 0\npop\npush 0.01\nsleep\npop\ntool leave 0\npop\nload x\nreturn\n"
    inputs = [{"x": i} for i in range(7)]
    assert avm.run_agents(program, inputs, tools=[enter, leave], concurrency=2) == list(range(7))
    assert peak == 2
    peak = 0
    assert avm.run_agents(program, inputs, tools=[enter, leave]) == list(range(7))
    assert peak == 7


async def test_a_timeout_cancels_what_is_alive_and_what_never_started(autojump_clock):
    """On trio's autojump clock (run_agents_async runs in the test's trio run, on the one code path
    of run_agents): the quick agents surely beat the 0.2 s, and the run ends at it, not later."""
    start = trio.current_time()
    program = "load wait\njump_unless quick\npush null\nrecv\npop\nquick:\nload x\nreturn\n"
    inputs = [{"x": 1, "wait": False}, {"x": 2, "wait": True}, {"x": 3, "wait": False}, {"x": 4, "wait": True},
              {"x": 5, "wait": False}]
    results = await avm.run_agents_async(program, inputs, concurrency=2, timeout=0.2)
    assert trio.current_time() - start == pytest.approx(0.2)
    assert results[0] == 1 and results[2] == 3
    for i in (1, 3, 4):  # 2 and 4 waited forever; 5 never got a turn (both slots were taken)
        assert isinstance(results[i], avm.AgentError) and results[i].state is S.CANCELLED, results
    assert results.statistics is not None and results.statistics.ended.get("cancelled") == 3


def test_a_given_store_holds_the_program_by_ref_and_stays_open():
    with avm.ContentStore() as store:
        ref = store.put(avm.compile(ECHO_INPUT).to_bytes())
        assert avm.run_agents(ref, [{"x": "a"}], store=store) == ["a"]
        assert not store.closed and store.contains(ref)
        assert avm.run_agents(avm.compile(ECHO_INPUT), [{"x": "b"}], store=store) == ["b"]


# --- the running-loop guard and the async twin ------------------------------------------------------------


async def test_run_agents_refuses_to_run_inside_trio_and_the_async_twin_runs():
    with pytest.raises(avm.VMError, match=r"inside a running trio event loop.*await avm.run_agents_async"):
        avm.run_agents(ECHO_INPUT, [{"x": 1}])
    results = await avm.run_agents_async(ECHO_INPUT, [{"x": 1}, {"x": 2}])
    assert results == [1, 2] and isinstance(results, avm.RunResults)
    with pytest.raises(avm.AgentError, match="budget_exceeded"):
        await avm.run_agents_async(COUNT, [{"n": 10_000}], budget=1.0, raise_errors=True)


def test_run_agents_refuses_to_run_inside_asyncio():
    async def main() -> None:
        avm.run_agents(ECHO_INPUT, [{"x": 1}])

    with pytest.raises(avm.VMError, match=r"inside a running asyncio event loop.*await avm.run_agents_async"):
        asyncio.run(main())


def test_the_async_twin_runs_under_asyncio_in_a_worker_thread():
    async def main() -> list[Any]:
        return await avm.run_agents_async(NAP_THEN_ECHO, [{"x": 1, "nap": 0.01}, {"x": 2, "nap": 0.0}])

    assert asyncio.run(main()) == [1, 2]


def test_cancelling_the_asyncio_task_cancels_the_run():
    before = threading.active_count()

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(avm.run_agents_async(WAIT_FOREVER, count=3), 0.3)

    # asyncio.run returns only once its worker threads are done, so only if the trio run was cancelled:
    # run it in a thread of its own to fail, not hang, if it was not.
    runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "the trio run went on after its asyncio task was cancelled"
    assert threading.active_count() <= before


def test_run_agents_works_from_a_thread_while_a_loop_runs_elsewhere():
    async def main() -> list[Any]:
        return await asyncio.to_thread(avm.run_agents, ECHO_INPUT, [{"x": 3}])

    assert asyncio.run(main()) == [3]


# --- bad arguments --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((42,), {}, "program must be source text"),
    ((avm.Ref(b"\x01" * 32),), {}, "needs the store that holds it"),
    ((ECHO_INPUT, {"x": 1}), {}, r"for one agent pass \[inputs\]"),
    ((ECHO_INPUT, "abc"), {}, "inputs must be a list of maps"),
    ((ECHO_INPUT, [1, 2]), {}, r"inputs\[0\] must be a map"),
    ((ECHO_INPUT, [{"x": 1}, {2: 1}]), {}, r"inputs\[1\]: variable names are text"),
    ((ECHO_INPUT, [{"x": {1, 2}}]), {}, r"inputs\[0\]\['x'\] is not a VM value"),
    ((ECHO_INPUT, [{"x": 1}]), {"count": 2}, "not both"),
    ((ECHO_INPUT,), {"count": -1}, "count must be an int >= 0"),
    ((ECHO_INPUT,), {"system": 5}, "system must be"),
    ((ECHO_INPUT,), {"tools": "search"}, "tools must be a list"),
    ((ECHO_INPUT,), {"tools": [5]}, r"tools\[0\] is not a function"),
    ((ECHO_INPUT,), {"grant": "search"}, "grant is a list of tool names"),
    ((ECHO_INPUT,), {"llm": "localhost:8000"}, "http"),
    ((ECHO_INPUT,), {"llm": 3}, "llm must be None"),
    ((ECHO_INPUT,), {"budget": -1}, "budget must be between"),
    ((ECHO_INPUT,), {"budget": 0}, "budget must be more than 0"),
    ((ECHO_INPUT,), {"budget": "lots"}, "budget must be a number"),
    ((ECHO_INPUT,), {"priority": "urgent"}, "priority must be one of"),
    ((ECHO_INPUT,), {"store": "mem"}, "store must be an avm.ContentStore"),
    ((ECHO_INPUT,), {"concurrency": 0}, "concurrency must be an int >= 1"),
    ((ECHO_INPUT,), {"timeout": -1}, "timeout must be seconds"),
    ((ECHO_INPUT,), {"raise_errors": 1}, "raise_errors must be True or False"),
    ((ECHO_INPUT,), {"model": ""}, "model must be a model name"),
    ((ECHO_INPUT,), {"quantum_size": 5, "colour": 1}, "unknown VM settings: colour, quantum_size"),
    ((ECHO_INPUT,), {"on_exit": "later"}, "on_exit must be"),
])
def test_bad_arguments_are_refused_up_front_with_clear_messages(args: tuple[Any, ...], kwargs: dict[str, Any],
                                                                 match: str):
    with pytest.raises(avm.VMError, match=match):
        avm.run_agents(*args, **kwargs)


def test_errors_of_the_program_and_of_the_tools_come_from_their_layer():
    with pytest.raises(avm.CompileError) as info:
        avm.run_agents("push 1\nfrobnicate\n")
    assert info.value.line == 2
    with pytest.raises(ToolDefinitionError, match="cannot grant unknown tool: search"):
        avm.run_agents(ECHO_INPUT, tools=[double], grant=["search"])
    with pytest.raises(avm.VMError, match="cannot grant unknown tool: nope"):  # a bad argument, as documented
        avm.run_agents('push "hi"\nllm\nreturn\n', count=1, grant=["nope"])
    with pytest.raises(ToolDefinitionError, match="two tools are named"):
        avm.run_agents(ECHO_INPUT, tools=[double, avm.tool(double)])


async def test_the_async_twin_checks_its_arguments_too():
    with pytest.raises(avm.VMError, match="for one agent pass"):
        await avm.run_agents_async(ECHO_INPUT, {"x": 1})  # type: ignore[arg-type]
    await trio.lowlevel.checkpoint()
