"""Typed use of AVM's public API, checked by mypy in strict mode (tests/test_typing.py).

Nothing here runs at import: each function only has to type-check, so the
annotations users see on ``import avm`` stay precise enough for strict code.
"""

from __future__ import annotations

from typing import Any

import trio

import avm


@avm.tool
def search(query: str) -> str:
    """Search the notes."""
    return f"notes about {query}"


@avm.tool(name="add", timeout=5.0, concurrency=2)
async def add_numbers(a: int, b: int = 1) -> int:
    """Add two numbers."""
    return a + b


def tools_are_tools() -> list[avm.Tool]:
    spec: dict[str, Any] = search.spec()
    assert spec["type"] == "function"
    registry = avm.ToolRegistry([search, add_numbers])
    names: list[str] = registry.names()
    assert names == ["add", "search"]
    return [search, add_numbers]


def interpreter() -> float:
    code: avm.Code = avm.compile("push 0.5\nsleep\npop\nload x\npush 2\nadd\nreturn\n")
    ident: str = code.id
    assert ident
    frame = avm.Frame(code, budget=10.0, inputs={"x": 1})
    outcome: avm.Outcome = frame.run()
    assert isinstance(outcome, avm.Effect) and outcome.kind == "sleep"
    data: bytes = frame.snapshot()
    frame = avm.Frame.restore(code, data)
    frame.add_budget(1.0)
    frame.resume(None)
    outcome = frame.run()
    if isinstance(outcome, avm.Done):
        value: Any = outcome.value
        assert value == 3
    elif isinstance(outcome, avm.Fault):
        raise AssertionError(f"line {outcome.line}: {outcome.error}")
    used: float = frame.energy_used
    text: str = avm.disassemble(code)
    grammar: str = avm.gbnf()
    assert text and grammar
    return used


def compile_errors() -> tuple[int, int]:
    try:
        avm.compile("push\n")
    except avm.CompileError as exc:
        return exc.line, exc.column
    return 0, 0


def store() -> bytes:
    with avm.ContentStore() as s:
        ref: avm.Ref = s.put(b"hello")
        assert s.contains(ref)
        s.pin(ref)
        s.unpin(ref)
        value_ref: avm.Ref = s.put_value({"a": [1, 2.5, "x", None]})
        stats: avm.StoreStatistics = s.statistics()
        assert stats is not None
        assert s.get_value(value_ref) == {"a": [1, 2.5, "x", None]}
        return s.get(ref)


async def vm(code: avm.Code) -> Any:
    async with avm.VM(tools=[search], max_tokens=64) as machine:
        handle: avm.AgentHandle = await machine.spawn(code, system="You are {name}.", inputs={"name": "a1"},
                                                      budget=50.0, tools=["search"], priority="interactive")
        delivered: bool = await handle.send("hello")
        assert delivered in (True, False)
        try:
            value: Any = await handle.result()
        except avm.AgentError as exc:
            state: avm.AgentState = exc.state
            detail: str = exc.detail
            return f"{state.value}: {detail}"
        handle.cancel()
        energy: float = handle.energy_used
        stats: avm.VMStatistics = machine.statistics()
        by_state: dict[str, int] = stats.by_state
        assert energy >= 0 and by_state is not None
        return value


def batch(code: avm.Code) -> list[str]:
    results: avm.RunResults = avm.run_agents(
        code, [{"topic": "tides"}, {"topic": "comets"}], system="You study {topic}.", tools=[search],
        grant=["search"], budget=20.0, priority="background", concurrency=8, timeout=60.0, max_tokens=128)
    errors: dict[int, avm.AgentError] = results.errors
    energies: list[float] = results.energy_used
    stats: avm.VMStatistics | None = results.statistics
    assert stats is None or stats.agents == 2
    lines = [f"{i}: {e.state}" for i, e in errors.items()]
    lines += [str(r) for r in results if not isinstance(r, avm.AgentError)]
    assert len(energies) == len(results) and results.ok in (True, False)
    return lines


async def batch_async(code: avm.Code) -> int:
    results = await avm.run_agents_async(code, count=3, raise_errors=True)
    return len(results)


def errors_are_a_tree() -> list[type[avm.AvmError]]:
    return [avm.VMError, avm.AgentError, avm.CompileError, avm.ToolError, avm.ToolDenied, avm.StoreError]


def main() -> None:
    code = avm.compile("push 1\nreturn\n")
    trio.run(vm, code)
    trio.run(batch_async, code)
    print(batch(code), interpreter(), store(), compile_errors(), tools_are_tools(), errors_are_a_tree())


if __name__ == "__main__":
    main()
