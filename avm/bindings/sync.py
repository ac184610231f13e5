"""`run_agents`: the synchronous facade, for scripts and notebooks.

A thin ``trio.run`` around `avm.bindings.agents.execute`, the same code path
`run_agents_async` takes. It refuses to start inside a running event loop
(trio or asyncio), where ``trio.run`` cannot work, and says what to use there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from avm.bindings.agents import RunResults, current_async_library, execute
from avm.bindings.plan import make_plan
from avm.lang.code import Code
from avm.memory.ref import Ref
from avm.memory.store import ContentStore
from avm.runtime import VMError
from avm.tools.registry import Tool, ToolRegistry

if TYPE_CHECKING:
    from avm.io.gateway import Gateway

__all__ = ["run_agents"]


def run_agents(
    program: str | Code | Ref,
    inputs: Iterable[Mapping[str, Any] | None] | None = None,
    *,
    count: int | None = None,
    system: str | Ref | None = None,
    tools: Iterable[Tool | Callable[..., Any]] | ToolRegistry = (),
    grant: Iterable[str] | None = None,
    llm: str | Gateway | None = None,
    model: str | None = None,
    budget: float | None = None,
    priority: str | int = "normal",
    store: ContentStore | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    raise_errors: bool = False,
    **settings: Any,
) -> RunResults:
    """Run ``program`` once per input, concurrently, and wait for all; the results in input order.

    ``program`` is source text (compiled once, up front: `CompileError`), an
    `avm.Code`, or the `avm.Ref` of a Code in ``store``. ``inputs`` is a list
    of maps, one per agent, each becoming that agent's initial variables
    (None: one agent with no inputs; ``count=n`` instead: n agents with no
    inputs).

    - ``system``: the system prompt template; ``{name}`` placeholders are
      filled from each agent's inputs.
    - ``tools``: ``@avm.tool`` functions; ``grant``: the names granted to the
      agents (default: every tool given).
    - ``llm``: None starts the embedded LLM server; an ``http(s)://.../v1``
      URL uses that endpoint (key from ``OPENAI_API_KEY``, model from
      ``model=`` or ``OPENAI_MODEL``); a Gateway is used as given.
    - ``budget``: energy per agent (default ``VMSettings.default_budget``);
      ``priority``: interactive, normal or background.
    - ``store``: the `avm.ContentStore` to use (default: an in-memory one,
      closed at the end).
    - ``concurrency``: at most this many agents alive at once (default: all).
    - ``timeout``: seconds for the whole run; agents still alive then are
      cancelled, and those never started are reported cancelled too.
    - ``settings``: any field of `avm.VMSettings` (``max_tokens=...``,
      ``llm_server={...}``...).

    Returns a `RunResults` list, one element per input: the agent's Done
    value, or the `avm.AgentError` saying how it ended otherwise, so one
    failed agent never loses the others' results. ``raise_errors=True``
    raises the first AgentError (in input order) once all have ended.

    Raises `VMError` for a bad argument before anything starts, and when
    called inside a running event loop: there, ``await
    avm.run_agents_async(...)`` takes the same arguments.
    """
    library = current_async_library()
    if library is not None:
        raise VMError(
            f"avm.run_agents() cannot run inside a running {library} event loop"
            + (" (a Jupyter notebook runs one)" if library == "asyncio" else "")
            + ": use `await avm.run_agents_async(...)` there, with the same arguments"
            + (", or `async with avm.VM(...) as vm`" if library == "trio" else ""))
    plan = make_plan(program, inputs, count=count, system=system, tools=tools, grant=grant, llm=llm, model=model,
                     budget=budget, priority=priority, store=store, concurrency=concurrency, timeout=timeout,
                     raise_errors=raise_errors, settings=settings)
    if not plan.inputs:
        return RunResults()
    return trio.run(execute, plan)
