"""Tools: Python functions that agents may call, behind capability grants.

A tool has a name, a description and an argument schema (a JSON-schema
subset: object with typed properties, required, enum, array items, nested
objects; unknown properties are refused). `@avm.tool` turns a function, async
or sync (run in a worker thread), into a `Tool`, deriving the schema from its
signature and the description from its docstring. A parameter annotated
``Annotated[str, "what it is"]`` gets that description, and
``Annotated[str, {"examples": [...]}]`` those JSON-schema keywords: what a
model reads to fill it in.

`ToolRegistry.invoke(name, arguments, granted=...)`:

- a tool that was not granted (or does not exist) is denied before anything
  runs: `ToolDenied` is raised, which the runtime turns into a fault of the
  agent naming the tool, and the denial is counted;
- arguments (a list, matched to parameters in order, or a map by name) are
  validated against the schema before the call;
- each tool has a timeout and a concurrency limit;
- whatever goes wrong inside the tool (an exception, a timeout, a result that
  is not a VM value) comes back as a ToolError *value* the program can test:
  ``{"error": {"tool": name, "type": ..., "message": ...}}``. It never crashes
  the VM.
"""

from __future__ import annotations

import contextvars
import json
import inspect
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Union, get_args, get_origin, overload

import trio

from avm.errors import AvmError, ProgramError
from avm.lang.compiler import TOOL_NAME
from avm.memory.ref import Ref

JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object", "null")
DEFAULT_TIMEOUT = 30.0  # seconds per call
DEFAULT_CONCURRENCY = 16  # calls of one tool in flight at once


class ToolDefinitionError(AvmError):
    """A function that cannot be a tool (an unsupported parameter type, a bad name...)."""


class ToolDenied(ProgramError):
    """An agent called a tool it was not granted (or one that does not exist)."""

    def __init__(self, name: str, granted: frozenset[str] | set[str] | tuple[str, ...]):
        self.name = name
        allowed = ", ".join(sorted(granted)) or "none"
        super().__init__(f"tool {name!r} was not granted to this agent (granted: {allowed})")


class ToolError(AvmError):
    """Raise inside a tool to return a clean error value to the program."""

    def __init__(self, message: str, kind: str = "ToolError"):
        super().__init__(message)
        self.kind = kind


def error_value(tool: str, kind: str, message: str) -> dict[str, Any]:
    """The ToolError value a program sees: test it with `call has 2` on key "error"."""
    return {"error": {"tool": tool, "type": kind, "message": message}}


def is_error_value(value: Any) -> bool:
    return type(value) is dict and set(value) == {"error"} and type(value["error"]) is dict


# --- schemas ---


def _schema_for(annotation: Any, where: str) -> dict[str, Any]:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    if annotation is str:
        return {"type": "string"}
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer"}
    if annotation is float:
        return {"type": "number"}
    if annotation is type(None):
        return {"type": "null"}
    origin = get_origin(annotation)
    if origin is Annotated:  # Annotated[T, "its description"] or Annotated[T, {JSON-schema keywords}]
        base, *extras = get_args(annotation)
        schema = dict(_schema_for(base, where))
        for extra in extras:
            if isinstance(extra, str):
                schema["description"] = extra
            elif isinstance(extra, dict) and all(isinstance(k, str) for k in extra):
                try:
                    json.dumps(extra)
                except (TypeError, ValueError) as exc:
                    raise ToolDefinitionError(f"{where}: schema keywords that are not JSON: {exc}") from None
                schema.update(extra)
            # (other metadata, a pydantic Field or an annotated_types bound, is another library's: left alone)
        return schema
    if annotation is list or origin is list:
        args = get_args(annotation)
        return {"type": "array", **({"items": _schema_for(args[0], where)} if args else {})}
    if annotation is dict or origin is dict:
        args = get_args(annotation)
        if args and args[0] is not str:
            raise ToolDefinitionError(f"{where}: map keys must be str")
        return {"type": "object"}
    if origin is Literal:
        values = list(get_args(annotation))
        return {"enum": values}
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _schema_for(members[0], where)
        return {"anyOf": [_schema_for(m, where) for m in members]}
    raise ToolDefinitionError(f"{where}: unsupported parameter type {annotation!r}")


def schema_from_signature(fn: Callable[..., Any]) -> tuple[dict[str, Any], list[str]]:
    """(JSON schema of the arguments, parameter names in order)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # unresolvable forward references
        raise ToolDefinitionError(f"{fn.__name__}: cannot read type hints: {exc}") from exc
    properties: dict[str, Any] = {}
    required: list[str] = []
    order: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(f"{fn.__name__}: *args and **kwargs cannot be described to an agent")
        properties[name] = _schema_for(hints.get(name, param.annotation), f"{fn.__name__}({name})")
        if param.default is inspect.Parameter.empty:
            required.append(name)
        order.append(name)
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return schema, order


def validate(value: Any, schema: dict[str, Any], where: str = "arguments") -> str | None:
    """The first way ``value`` breaks ``schema``, or None."""
    if "enum" in schema and not any(value == v and type(value) is type(v) for v in schema["enum"]):
        return f"{where} must be one of {schema['enum']!r}"
    if "anyOf" in schema:
        if all(validate(value, s, where) for s in schema["anyOf"]):
            return f"{where} matches none of the allowed types"
        return None
    kind = schema.get("type")
    if kind is None:
        return None
    t = type(value)
    is_a = {
        "string": t is str,
        "integer": t is int,
        "number": t is int or t is float,
        "boolean": t is bool,
        "array": t is list,
        "object": t is dict,
        "null": value is None,
    }
    kinds = kind if isinstance(kind, list) else [kind]  # ("type": ["string", "null"] is JSON Schema too)
    matched = [k for k in kinds if isinstance(k, str) and is_a.get(k, False)]
    if not matched:
        return f"{where} must be {' or '.join(map(str, kinds))}, not {_json_type(value)}"
    kind = matched[0]
    if kind == "array" and "items" in schema:
        for i, item in enumerate(value):
            problem = validate(item, schema["items"], f"{where}[{i}]")
            if problem:
                return problem
    if kind == "object" and "properties" in schema:
        props = schema["properties"]
        for name in schema.get("required", ()):
            if name not in value:
                return f"{where}: missing required argument {name!r}"
        for name, item in value.items():
            if name not in props:
                if schema.get("additionalProperties", True) is False:
                    return f"{where}: unknown argument {name!r}"
                continue
            problem = validate(item, props[name], f"{where}.{name}" if where != "arguments" else name)
            if problem:
                return problem
    return None


def _json_type(value: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}.get(
        type(value), "null" if value is None else type(value).__name__)


def _to_value(obj: Any, depth: int = 0) -> Any:
    """A tool's return value as a VM value (tuples become lists); TypeError if impossible."""
    if depth > 100:
        raise TypeError("result nested too deeply")
    t = type(obj)
    if obj is None or t in (bool, int, float, str):
        return obj
    if t in (list, tuple):
        return [_to_value(v, depth + 1) for v in obj]
    if t is dict:
        out = {}
        for k, v in obj.items():
            if type(k) is not str:
                raise TypeError(f"result map keys must be text, not {type(k).__name__}")
            out[k] = _to_value(v, depth + 1)
        return out
    if t is Ref:
        return obj
    raise TypeError(f"a tool result must be null, bool, number, text, list or map, not {t.__name__}")


# --- tools ---

_CALL_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("avm_tool_call_key", default=None)


def idempotency_key() -> str | None:
    """Inside a tool call made by an agent of a journaled VM: the call's key, the same in every attempt
    to make it (after a crash and a resume too): ``<run id>/<agent id>/<step>``, the step counting the
    agent's effects. Give it to the
    service the tool calls, where it takes one, so a call repeated after a crash is recognised. None
    outside a call, or without a journal."""
    return _CALL_KEY.get()



@dataclass(eq=False)
class Tool:
    """A callable an agent may be granted. Build one with `@avm.tool`."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    order: list[str]
    is_async: bool
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int = DEFAULT_CONCURRENCY
    limiter: trio.CapacityLimiter | None = field(default=None, repr=False)
    # The call changes the world (sends a mail, charges a card, appends to a file): with a journal, it is
    # made at most once across any number of crashes (`avm.journal.writer`).
    side_effects: bool = False

    def spec(self) -> dict[str, Any]:
        """The OpenAI function-tool spec for this tool."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def bind(self, arguments: Any) -> dict[str, Any]:
        """Arguments from the program (a list in parameter order, or a map) as a map; ToolError if invalid."""
        if arguments is None:
            arguments = {}
        if (type(arguments) in (list, tuple) and len(arguments) == 1 and type(arguments[0]) is dict
                and not (self.order and self.parameters["properties"][self.order[0]].get("type") == "object")):
            # One map for a tool whose first parameter is not a map: the arguments by name, as in an LLM's tool call.
            arguments = arguments[0]
        if type(arguments) in (list, tuple):
            if len(arguments) > len(self.order):
                raise ToolError(f"{self.name} takes at most {len(self.order)} arguments, got {len(arguments)}",
                                "ArgumentError")
            arguments = dict(zip(self.order, arguments, strict=False))  # (the first ones, by position)
        if type(arguments) is not dict:
            raise ToolError(f"{self.name}: arguments must be a list or a map", "ArgumentError")
        problem = validate(arguments, self.parameters)
        if problem:
            raise ToolError(f"{self.name}: {problem}", "ArgumentError")
        return arguments

    async def call(self, arguments: dict[str, Any]) -> Any:
        if self.limiter is None:
            self.limiter = trio.CapacityLimiter(self.concurrency)
        limiter = self.limiter
        try:  # no checkpoint when the tool has room: a tool that never waits runs in its caller's step
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await limiter.acquire()
        try:
            if self.is_async:
                return await self.fn(**arguments)
            return await trio.to_thread.run_sync(lambda: self.fn(**arguments), abandon_on_cancel=True)
        finally:
            limiter.release()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling a tool directly calls the function (handy in tests)."""
        return self.fn(*args, **kwargs)


@overload
def tool(fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
         timeout: float = DEFAULT_TIMEOUT, concurrency: int = DEFAULT_CONCURRENCY,
         side_effects: bool = False) -> Tool: ...


@overload
def tool(fn: None = None, *, name: str | None = None, description: str | None = None,
         timeout: float = DEFAULT_TIMEOUT, concurrency: int = DEFAULT_CONCURRENCY, side_effects: bool = False
         ) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None,
         timeout: float = DEFAULT_TIMEOUT, concurrency: int = DEFAULT_CONCURRENCY, side_effects: bool = False
         ) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a tool: ``@avm.tool`` or ``@avm.tool(name=..., timeout=..., concurrency=...,
    side_effects=...)``. ``side_effects=True``: the call changes the world, so a journaled run makes it at
    most once across crashes (a call a crash interrupted comes back as an ``Interrupted`` error value).
    Inside a call, `avm.idempotency_key()` names it the same way in every attempt."""

    def make(f: Callable[..., Any]) -> Tool:
        tool_name = name or f.__name__
        if not TOOL_NAME.match(tool_name):
            raise ToolDefinitionError(f"tool name {tool_name!r} is not a valid name in the agent language")
        if not (timeout > 0) or concurrency < 1:
            raise ToolDefinitionError(f"{tool_name}: timeout must be > 0 and concurrency >= 1")
        parameters, order = schema_from_signature(f)
        doc = description if description is not None else inspect.getdoc(f) or ""
        return Tool(tool_name, doc.strip().split("\n\n")[0], parameters, f, order,
                    inspect.iscoroutinefunction(f), float(timeout), int(concurrency), side_effects=bool(side_effects))

    return make(fn) if fn is not None else make


# --- the registry ---


@dataclass(frozen=True, slots=True)
class ToolStatistics:
    calls: int
    ok: int
    errors: int
    timeouts: int
    denied: int
    invalid_arguments: int
    by_tool: dict[str, int]
    seconds: float  # total wall time inside tools


@dataclass(frozen=True, slots=True)
class ToolResult:
    value: Any  # the VM value handed to the program (a ToolError value on failure)
    ok: bool
    seconds: float


_PASS_THROUGH = (trio.Cancelled, KeyboardInterrupt, GeneratorExit)


def _passes_through(exc: BaseException) -> bool:
    """True for what a tool's failure must not swallow: a cancellation, Ctrl+C, a coroutine's close
    (alone, or in a group a nursery inside the tool raised)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(_PASS_THROUGH) is not None
    return isinstance(exc, _PASS_THROUGH)


class ToolRegistry:
    """The tools of one VM, by name."""

    def __init__(self, tools: Any = ()):
        self._tools: dict[str, Tool] = {}
        self._calls = self._ok = self._errors = self._timeouts = self._denied = self._invalid = 0
        self._by_tool: dict[str, int] = {}
        self._seconds = 0.0
        for t in tools:
            self.register(t)

    def register(self, t: Tool | Callable[..., Any]) -> Tool:
        if not isinstance(t, Tool):
            t = tool(t)
        if t.name in self._tools and self._tools[t.name] is not t:
            raise ToolDefinitionError(f"two tools are named {t.name!r}")
        self._tools[t.name] = t
        return t

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolDefinitionError(f"no tool named {name!r}") from None

    def specs(self, names: Any = None) -> list[dict[str, Any]]:
        chosen = self.names() if names is None else sorted(names)
        return [self.get(n).spec() for n in chosen]

    def check_grant(self, names: Any) -> frozenset[str]:
        """Grants are checked at spawn: granting a tool that does not exist is an error then, not later."""
        grant = frozenset(names)
        missing = sorted(n for n in grant if n not in self._tools)
        if missing:
            raise ToolDefinitionError(f"cannot grant unknown tool{'s' if len(missing) > 1 else ''}: "
                                      f"{', '.join(missing)} (registered: {', '.join(self.names()) or 'none'})")
        return grant

    async def invoke(self, name: str, arguments: Any, granted: frozenset[str] | set[str], *,
                     key: str | None = None) -> ToolResult:
        """Call a granted tool; ToolDenied if not granted; failures come back as ToolError values.
        ``key``: what `idempotency_key()` says during the call."""
        self._calls += 1
        if name not in granted or name not in self._tools:
            self._denied += 1
            raise ToolDenied(name, granted)
        t = self._tools[name]
        self._by_tool[name] = self._by_tool.get(name, 0) + 1
        start = time.perf_counter()
        token = _CALL_KEY.set(key) if key is not None else None
        try:
            bound = t.bind(arguments)
            # A cancel scope rather than trio.fail_after, a generator context manager: ~2% of a fleet's CPU.
            with trio.CancelScope(deadline=trio.current_time() + t.timeout) as scope:
                raw = await t.call(bound)
            if scope.cancelled_caught:
                self._timeouts += 1
                return self._failed(t, "Timeout", f"{name} did not finish within {t.timeout:g} s", start)
            value = _to_value(raw)
        except ToolError as exc:
            if exc.kind == "ArgumentError":
                self._invalid += 1
            return self._failed(t, exc.kind, str(exc), start)
        except TypeError as exc:
            return self._failed(t, "TypeError", f"{name}: {exc}", start)
        except BaseException as exc:  # noqa: BLE001 - the tool's own failure, SystemExit and BaseException
            # subclasses included: a value for the program, never the end of the VM; a cancellation or
            # Ctrl+C is not the tool's and goes on
            if _passes_through(exc):
                raise
            return self._failed(t, type(exc).__name__, f"{name} raised {type(exc).__name__}: {exc}", start)
        finally:
            if token is not None:
                _CALL_KEY.reset(token)
        elapsed = time.perf_counter() - start
        self._seconds += elapsed
        self._ok += 1
        return ToolResult(value, True, elapsed)

    def _failed(self, t: Tool, kind: str, message: str, start: float) -> ToolResult:
        elapsed = time.perf_counter() - start
        self._seconds += elapsed
        self._errors += 1
        return ToolResult(error_value(t.name, kind, message), False, elapsed)

    def statistics(self) -> ToolStatistics:
        return ToolStatistics(self._calls, self._ok, self._errors, self._timeouts, self._denied, self._invalid,
                              dict(self._by_tool), self._seconds)


__all__ = ["Tool", "ToolDefinitionError", "ToolDenied", "ToolError", "ToolRegistry", "ToolResult",
           "ToolStatistics", "error_value", "is_error_value", "schema_from_signature", "tool", "validate"]

