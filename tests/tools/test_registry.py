import time
from typing import Literal, Optional

import pytest
import trio

import avm
from avm.tools.registry import (
    ToolDefinitionError,
    ToolDenied,
    ToolRegistry,
    is_error_value,
    tool,
    validate,
)


@tool
async def search(query: str, limit: int = 3) -> list:
    """Search the web.

    Longer text that is not part of the description."""
    return [f"{query} #{i}" for i in range(limit)]


@tool(timeout=0.2)
def slow(seconds: float) -> str:
    """Sleep in a worker thread."""
    time.sleep(seconds)
    return "woke"


@tool
def broken(x: int) -> int:
    """Always fails."""
    raise RuntimeError("disk on fire")


@tool(name="units.convert")
def convert(value: float, unit: Literal["km", "mi"], note: Optional[str] = None) -> dict:
    """Convert a distance."""
    return {"value": value * (1.609 if unit == "mi" else 1), "unit": "km", "pair": (1, 2)}


ALL = {"search", "slow", "broken", "units.convert"}


def registry():
    return ToolRegistry([search, slow, broken, convert])


def test_schema_and_description_come_from_the_signature():
    spec = search.spec()["function"]
    assert spec["name"] == "search" and spec["description"] == "Search the web."
    assert spec["parameters"] == {
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["query"],
        "additionalProperties": False,
    }
    props = convert.parameters["properties"]
    assert props["unit"] == {"enum": ["km", "mi"]} and props["note"] == {"type": "string"}
    assert convert.name == "units.convert"


def test_functions_that_cannot_be_described_are_refused():
    with pytest.raises(ToolDefinitionError):
        tool(lambda *args: None)
    with pytest.raises(ToolDefinitionError):
        @tool
        def f(x: set) -> None: ...
    with pytest.raises(ToolDefinitionError):
        tool(name="has space")(lambda: None)


async def test_positional_and_named_arguments_are_validated_then_called():
    reg = registry()
    r = await reg.invoke("search", ["cats"], ALL)
    assert r.ok and r.value == ["cats #0", "cats #1", "cats #2"]
    r = await reg.invoke("search", {"query": "dogs", "limit": 1}, ALL)
    assert r.value == ["dogs #0"]
    r = await reg.invoke("units.convert", [2, "mi"], ALL)
    assert r.value == {"value": 2 * 1.609, "unit": "km", "pair": [1, 2]}  # tuples become lists


@pytest.mark.parametrize("args, problem", [
    ([], "missing required argument 'query'"),
    ([3], "query must be string, not integer"),
    (["q", True], "limit must be integer, not boolean"),
    (["q", 1, 2], "at most 2 arguments"),
    ({"query": "q", "extra": 1}, "unknown argument 'extra'"),
])
async def test_bad_arguments_become_tool_error_values_before_the_call(args, problem):
    reg = registry()
    r = await reg.invoke("search", args, ALL)
    assert not r.ok and is_error_value(r.value)
    assert r.value["error"]["type"] == "ArgumentError" and problem in r.value["error"]["message"]
    assert reg.statistics().invalid_arguments == 1


async def test_a_tool_not_granted_is_denied_before_it_runs_and_counted():
    calls = []

    @tool
    def spy() -> str:
        """Records calls."""
        calls.append(1)
        return "ran"

    reg = ToolRegistry([spy, search])
    with pytest.raises(ToolDenied, match="tool 'spy' was not granted to this agent \\(granted: search\\)"):
        await reg.invoke("spy", [], frozenset({"search"}))
    with pytest.raises(ToolDenied):
        await reg.invoke("nonexistent", [], frozenset({"nonexistent"}))
    assert calls == [] and reg.statistics().denied == 2
    assert isinstance(ToolDenied("x", set()), avm.ProgramError)


async def test_exceptions_and_timeouts_are_values_not_crashes():
    reg = registry()
    r = await reg.invoke("broken", [1], ALL)
    assert r.value["error"]["type"] == "RuntimeError" and "disk on fire" in r.value["error"]["message"]
    r = await reg.invoke("slow", [2.0], ALL)
    assert r.value["error"]["type"] == "Timeout"
    r = await reg.invoke("slow", [0.0], ALL)
    assert r.value == "woke"
    stats = reg.statistics()
    assert stats.errors == 2 and stats.timeouts == 1 and stats.ok == 1 and stats.by_tool["slow"] == 2


class _NotAnException(BaseException):
    pass


@pytest.mark.parametrize("error", [SystemExit(3), _NotAnException("boom"),
                                   BaseExceptionGroup("two", [SystemExit(1), _NotAnException("x")])])
async def test_a_tool_raising_a_base_exception_fails_as_a_value(error):
    @avm.tool
    async def exits() -> str:
        raise error

    reg = ToolRegistry([exits])
    r = await reg.invoke("exits", [], {"exits"})
    assert r.ok is False and r.value["error"]["type"] == type(error).__name__
    assert reg.statistics().errors == 1


async def test_a_cancellation_inside_a_tool_is_not_the_tools_failure():
    @avm.tool
    async def waits() -> str:
        await trio.sleep(10)
        return "late"

    reg = ToolRegistry([waits])
    with trio.move_on_after(0.05) as scope:
        await reg.invoke("waits", [], {"waits"})
    assert scope.cancelled_caught and reg.statistics().errors == 0


async def test_a_tool_raising_system_exit_ends_its_agent_only():
    @avm.tool
    async def quits(x: str = "") -> str:
        raise SystemExit(3)

    async with avm.VM(tools=[quits]) as vm:
        bad = await vm.spawn("map 0\ntool quits 1\nreturn\n", budget=10.0, tools=["quits"])
        good = [await vm.spawn("push 1\npush 2\nadd\nreturn\n", budget=10.0) for _ in range(20)]
        assert [await g.result() for g in good] == [3] * 20
        assert (await bad.result())["error"]["type"] == "SystemExit"


async def test_results_that_are_not_vm_values_are_errors():
    @tool
    def weird() -> object:
        """Returns a set."""
        return {1, 2}

    r = await ToolRegistry([weird]).invoke("weird", [], {"weird"})
    assert r.value["error"]["type"] == "TypeError"


async def test_concurrency_limit_per_tool():
    running = 0
    peak = 0

    @tool(concurrency=2)
    async def busy() -> int:
        """Counts overlap."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(0.01)
        running -= 1
        return peak

    reg = ToolRegistry([busy])
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(reg.invoke, "busy", [], {"busy"})
    assert peak == 2


def test_grants_naming_unknown_tools_are_refused_at_once():
    reg = registry()
    assert reg.check_grant(["search"]) == frozenset({"search"})
    with pytest.raises(ToolDefinitionError, match="cannot grant unknown tool: nope"):
        reg.check_grant(["search", "nope"])
    with pytest.raises(ToolDefinitionError, match="two tools are named"):
        reg.register(tool(name="search")(lambda: None))


def test_validate_nested():
    schema = {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "number"}}},
              "required": ["xs"]}
    assert validate({"xs": [1, 2.5]}, schema) is None
    assert "xs[1] must be number" in validate({"xs": [1, "a"]}, schema)


async def test_one_map_argument_is_the_arguments_by_name_unless_the_tool_takes_a_map():
    @avm.tool
    def lookup(query: str, limit: int = 3) -> str:
        return f"{query}:{limit}"

    @avm.tool
    def keys_of(record: dict) -> list:
        return sorted(record)

    registry = ToolRegistry([lookup, keys_of])
    granted = frozenset({"lookup", "keys_of"})
    by_name = await registry.invoke("lookup", [{"query": "tides", "limit": 5}], granted)
    assert by_name.ok and by_name.value == "tides:5"
    a_map = await registry.invoke("keys_of", [{"b": 1, "a": 2}], granted)
    assert a_map.ok and a_map.value == ["a", "b"]


def test_annotated_parameters_carry_a_description_and_schema_keywords_a_model_reads():
    import random
    from typing import Annotated

    from avm.io.embedded.replies import value_for

    @avm.tool
    def area(shape: Annotated[str, "the shape's name"],
             formula: Annotated[str, {"examples": ["3 * 4"], "description": "arithmetic"}]) -> str:
        return shape + formula

    properties = area.parameters["properties"]
    assert properties["shape"] == {"type": "string", "description": "the shape's name"}
    assert properties["formula"] == {"type": "string", "examples": ["3 * 4"], "description": "arithmetic"}
    # the embedded model follows the examples, as a model reading the schema would
    assert value_for(area.parameters, random.Random(1), ["words"])["formula"] == "3 * 4"

    @avm.tool
    def other(x: Annotated[str, 42]) -> str:  # another library's metadata: left alone
        return x

    assert other.parameters["properties"]["x"] == {"type": "string"}
    with pytest.raises(ToolDefinitionError, match="not JSON"):
        @avm.tool
        def worse(x: Annotated[str, {"examples": [object()]}]) -> str:
            return x


async def test_a_list_of_types_in_a_parameter_schema_is_validated_as_json_schema_says():
    from typing import Annotated

    @avm.tool
    def maybe(x: Annotated[str | None, {"type": ["string", "null"]}] = None) -> str:
        return str(x)

    registry = ToolRegistry([maybe])
    assert (await registry.invoke("maybe", {"x": None}, {"maybe"})).value == "None"
    assert (await registry.invoke("maybe", {"x": "a"}, {"maybe"})).value == "a"
    refused = (await registry.invoke("maybe", {"x": 3}, {"maybe"})).value
    assert "must be string or null, not" in refused["error"]["message"]
