"""Checking the arguments of `run_agents` before anything starts.

Every mistake a caller can make is caught here, before an event loop, an LLM
server or a single agent is started, and reported as a `VMError` (or the
error of the layer that knows better: `CompileError` for a program that does
not compile, `ToolDefinitionError` for a function that cannot be a tool; a
grant of a tool that was not given is a `GrantError`, both a `VMError` and a
`ToolDefinitionError`). The result is a `Plan`: the checked,
normalised arguments, which the async runner takes as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from avm.lang.code import Code
from avm.lang.compiler import compile_source
from avm.lang.frame import to_milli
from avm.lang.values import is_value
from avm.memory.ref import Ref
from avm.memory.store import ContentStore
from avm.runtime import VMError, VMSettings, check_grant
from avm.scheduler.states import priority_rank
from avm.tools.registry import Tool, ToolRegistry

if TYPE_CHECKING:
    from avm.io.gateway import Gateway

__all__ = ["Plan", "make_plan"]

_SETTING_NAMES = frozenset(f.name for f in fields(VMSettings))


@dataclass(frozen=True, slots=True)
class Plan:
    """The checked arguments of one `run_agents` call."""

    program: Code | Ref
    inputs: tuple[dict[str, Any] | None, ...]  # one entry per agent, in order
    system: str | Ref | None
    tools: ToolRegistry
    grant: tuple[str, ...]
    llm: str | Gateway | None
    budget: float | None
    priority: str | int
    store: ContentStore | None
    concurrency: int | None
    timeout: float | None
    raise_errors: bool
    settings: VMSettings


def make_plan(program: str | Code | Ref, inputs: Iterable[Mapping[str, Any] | None] | None, *,
              count: int | None, system: str | Ref | None,
              tools: Iterable[Tool | Callable[..., Any]] | ToolRegistry, grant: Iterable[str] | None,
              llm: str | Gateway | None, model: str | None, budget: float | None, priority: str | int,
              store: ContentStore | None, concurrency: int | None, timeout: float | None,
              raise_errors: bool, settings: dict[str, Any]) -> Plan:
    """Check every argument of `run_agents`; the `Plan`, or the first problem as an error."""
    if store is not None and not isinstance(store, ContentStore):
        raise VMError(f"store must be an avm.ContentStore or None, not {type(store).__name__}")
    registry = _registry(tools)
    return Plan(
        program=_program(program, store),
        inputs=_inputs(inputs, count),
        system=_system(system),
        tools=registry,
        grant=_grant(grant, registry),
        llm=_llm(llm),
        budget=_budget(budget),
        priority=_priority(priority),
        store=store,
        concurrency=_concurrency(concurrency),
        timeout=_timeout(timeout),
        raise_errors=_flag(raise_errors, "raise_errors"),
        settings=_settings(model, settings),
    )


def _program(program: object, store: ContentStore | None) -> Code | Ref:
    if type(program) is str:
        return compile_source(program)  # CompileError(line, column) now, not once per agent
    if isinstance(program, Code):
        return program
    if isinstance(program, Ref):
        if store is None:
            raise VMError("a program given by its ref needs the store that holds it: pass store=...")
        if not store.contains(program):
            raise VMError(f"no program {program.hex()} in the given store")
        return program
    raise VMError(f"program must be source text, an avm.Code or the avm.Ref of a stored Code, "
                  f"not {type(program).__name__}")


def _inputs(inputs: object, count: object) -> tuple[dict[str, Any] | None, ...]:
    if count is not None:
        if inputs is not None:
            raise VMError("give inputs (one map per agent) or count (that many agents with no inputs), not both")
        if type(count) is not int or count < 0:
            raise VMError(f"count must be an int >= 0, not {count!r}")
        return (None,) * count
    if inputs is None:
        return (None,)  # one agent with no inputs
    if isinstance(inputs, Mapping):
        raise VMError("inputs is a list of maps, one per agent: for one agent pass [inputs]")
    if isinstance(inputs, (str, bytes, bytearray)) or not isinstance(inputs, Iterable):
        raise VMError(f"inputs must be a list of maps (one per agent) or None, not {type(inputs).__name__}")
    checked: list[dict[str, Any] | None] = []
    for i, entry in enumerate(inputs):
        if entry is None:
            checked.append(None)
            continue
        if not isinstance(entry, Mapping):
            raise VMError(f"inputs[{i}] must be a map of variable names to values (or None), "
                          f"not {type(entry).__name__}")
        one: dict[str, Any] = {}
        for key, value in entry.items():
            if type(key) is not str:
                raise VMError(f"inputs[{i}]: variable names are text, not {type(key).__name__} ({key!r})")
            if not is_value(value):
                raise VMError(f"inputs[{i}][{key!r}] is not a VM value (null, bool, number, text, list, "
                              f"map with text keys, Ref): {type(value).__name__}")
            one[key] = value
        checked.append(one)
    return tuple(checked)


def _system(system: object) -> str | Ref | None:
    if system is None or isinstance(system, (str, Ref)):
        return system
    raise VMError(f"system must be a prompt template (text), a Ref or None, not {type(system).__name__}")


def _registry(tools: object) -> ToolRegistry:
    if isinstance(tools, ToolRegistry):
        return tools
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Iterable):
        raise VMError(f"tools must be a list of @avm.tool functions, not {type(tools).__name__}")
    registry = ToolRegistry()
    for i, t in enumerate(tools):
        if not callable(t):
            raise VMError(f"tools[{i}] is not a function nor an avm.Tool: {t!r}")
        registry.register(t)  # ToolDefinitionError for a function that cannot be a tool, or two of one name
    return registry


def _grant(grant: object, registry: ToolRegistry) -> tuple[str, ...]:
    if grant is None:
        return tuple(registry.names())
    if isinstance(grant, (str, bytes)) or not isinstance(grant, Iterable):
        raise VMError(f"grant is a list of tool names, not {grant!r}")
    names = list(grant)
    for name in names:
        if type(name) is not str:
            raise VMError(f"grant is a list of tool names, not of {type(name).__name__}")
    return tuple(sorted(check_grant(registry, names)))  # GrantError (a VMError) naming a tool not given


def _llm(llm: object) -> Any:
    if llm is None:
        return None
    if isinstance(llm, str):
        if not llm.startswith(("http://", "https://")):
            raise VMError(f"llm must be None (the embedded server), an http(s) URL or a Gateway, not {llm!r}")
        return llm
    if hasattr(llm, "complete"):
        return llm  # a Gateway (or something that answers like one); its owner closes it
    raise VMError(f"llm must be None (the embedded server), an http(s) URL or a Gateway, "
                  f"not {type(llm).__name__}")


def _budget(budget: object) -> float | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise VMError(f"budget must be a number (energy per agent, in the seed's units), not {type(budget).__name__}")
    try:
        milli = to_milli(budget, "budget")
    except ValueError as exc:
        raise VMError(f"{exc} (energy per agent, in the seed's units)") from None
    if milli <= 0:
        raise VMError(f"budget must be more than 0, not {budget!r}")
    return milli / 1000


def _priority(priority: object) -> str | int:
    if isinstance(priority, (str, int)):
        try:
            priority_rank(priority)
        except ValueError as exc:
            raise VMError(str(exc)) from None
        return priority
    raise VMError(f"priority must be interactive, normal or background, not {priority!r}")


def _concurrency(concurrency: object) -> int | None:
    if concurrency is None:
        return None
    if type(concurrency) is not int or concurrency < 1:
        raise VMError(f"concurrency must be an int >= 1 (agents alive at once) or None, not {concurrency!r}")
    return concurrency


def _timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
        raise VMError(f"timeout must be seconds >= 0 or None, not {timeout!r}")
    return float(timeout)


def _flag(value: object, name: str) -> bool:
    if type(value) is not bool:
        raise VMError(f"{name} must be True or False, not {value!r}")
    return value


def _settings(model: object, overrides: dict[str, Any]) -> VMSettings:
    if model is not None and (not isinstance(model, str) or not model):
        raise VMError(f"model must be a model name or None, not {model!r}")
    name = model if isinstance(model, str) else None
    unknown = sorted(set(overrides) - _SETTING_NAMES)
    if unknown:
        raise VMError(f"unknown VM setting{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
                      f"(the settings are the fields of avm.VMSettings)")
    try:
        # run_agents sends its agents nothing: a fleet waiting for messages none of them can send ends
        return VMSettings(model=name, **{"host_sends": False, **overrides})
    except TypeError as exc:
        raise VMError(str(exc)) from None
