"""`run_agents_async`: one program over many inputs, results in input order.

The one code path of the embedding API's batch runner. `run_agents` (in
`avm.bindings.sync`) is a thin ``trio.run`` around it; under asyncio (a
Jupyter notebook's loop, say) the same run goes to a worker thread that has a
trio loop of its own.

How a run goes: the arguments are checked (`avm.bindings.plan`), a `VM` is
opened (``llm=None``: the embedded LLM server), one agent is spawned per input
(all at once, or at most ``concurrency`` alive at a time), and each agent's
end is collected in its input's place: the agent's Done value, or the
`AgentError` that says how it ended otherwise (failed, budget_exceeded,
stalled, cancelled). One failing agent never costs the others their results.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from avm.runtime import AgentError, AgentHandle
from avm.bindings.plan import Plan, make_plan
from avm.lang.code import Code
from avm.memory.ref import Ref
from avm.memory.store import ContentStore
from avm.runtime import VM, VMError, VMStatistics
from avm.tools.registry import Tool, ToolRegistry

if TYPE_CHECKING:
    from avm.io.gateway import Gateway

__all__ = ["RunResults", "run_agents_async"]

_UNSET: Any = object()


class RunResults(list[Any]):
    """What `run_agents` returns: a list with one element per input, in input order.

    Each element is the agent's Done value (a VM value: None, bool, int,
    float, str, list, dict or Ref), or, for an agent that did not finish with
    a value, the `avm.AgentError` naming how it ended (``.state``,
    ``.detail``). A Done value is never an exception, so
    ``isinstance(r, avm.AgentError)`` tells them apart.

    Beside the list:

    - ``errors``: ``{input index: AgentError}`` of the agents that did not finish;
    - ``ok``: True when every agent finished with a value;
    - ``energy_used``: the energy each agent used, in input order;
    - ``statistics``: the VM's `VMStatistics` at the end of the run (None when no agent ran).
    """

    energy_used: list[float]
    statistics: VMStatistics | None

    def __init__(self, values: Iterable[Any] = (), energy_used: Iterable[float] = (),
                 statistics: VMStatistics | None = None) -> None:
        super().__init__(values)
        self.energy_used = list(energy_used)
        self.statistics = statistics

    @property
    def errors(self) -> dict[int, AgentError]:
        """The agents that did not finish with a value: input index -> AgentError."""
        return {i: r for i, r in enumerate(self) if isinstance(r, AgentError)}

    @property
    def ok(self) -> bool:
        """True when every agent finished with a value."""
        return not any(isinstance(r, AgentError) for r in self)

    def __repr__(self) -> str:
        return f"RunResults({list.__repr__(self)})"


async def run_agents_async(
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
    """Run ``program`` once per input, concurrently; the results in input order.

    The async twin of `avm.run_agents`, with the same arguments and result.
    Await it from trio (it runs in the current trio run) or from asyncio,
    such as a Jupyter notebook's loop (the run then goes to a worker thread
    with a trio loop of its own; cancelling the awaiting task cancels the
    run).
    """
    plan = make_plan(program, inputs, count=count, system=system, tools=tools, grant=grant, llm=llm, model=model,
                     budget=budget, priority=priority, store=store, concurrency=concurrency, timeout=timeout,
                     raise_errors=raise_errors, settings=settings)
    library = current_async_library()
    if library == "trio":
        return await execute(plan)
    if library == "asyncio":
        return await _in_asyncio(plan)
    raise VMError("run_agents_async() runs under trio or asyncio; outside an event loop call avm.run_agents()")


def current_async_library() -> str | None:
    """The event loop this thread is running now: "trio", "asyncio", or None."""
    try:
        trio.lowlevel.current_trio_token()
        return "trio"
    except RuntimeError:
        pass
    asyncio = sys.modules.get("asyncio")  # not imported: no asyncio loop can be running
    if asyncio is not None:
        try:
            asyncio.get_running_loop()
            return "asyncio"
        except RuntimeError:
            pass
    return None


async def execute(plan: Plan) -> RunResults:
    """Run a checked plan in the current trio run (the one code path of run_agents)."""
    n = len(plan.inputs)
    if n == 0:
        return RunResults()
    handles: list[AgentHandle | None] = [None] * n
    values: list[Any] = [_UNSET] * n
    async with VM(store=plan.store, llm=plan.llm, tools=plan.tools, settings=plan.settings) as vm:

        async def run_one(i: int) -> None:
            handle = handles[i] = await _spawn(vm, plan, i)
            values[i] = await _outcome(handle)

        with trio.move_on_after(plan.timeout if plan.timeout is not None else float("inf")):
            if plan.concurrency is None or plan.concurrency >= n:
                for i in range(n):
                    handles[i] = await _spawn(vm, plan, i)
                for i, handle in enumerate(handles):
                    assert handle is not None
                    values[i] = await _outcome(handle)
            else:
                order = iter(range(n))  # shared by the workers: each takes the next input

                async def worker() -> None:
                    for i in order:
                        await run_one(i)

                async with trio.open_nursery() as nursery:
                    for _ in range(plan.concurrency):
                        nursery.start_soon(worker)
        # Past the timeout: cancel what is still alive, start-and-cancel what never started,
        # so that every input still gets an agent and an AgentError saying it was cancelled.
        for i in range(n):
            if values[i] is _UNSET:
                handle = handles[i]
                if handle is None:
                    handle = handles[i] = await _spawn(vm, plan, i)
                handle.cancel()
        for i, handle in enumerate(handles):
            if values[i] is _UNSET:
                assert handle is not None
                values[i] = await _outcome(handle)
        statistics = vm.statistics()
    results = RunResults(values, [h.energy_used if h is not None else 0.0 for h in handles], statistics)
    if plan.raise_errors:
        for value in results:
            if isinstance(value, AgentError):
                raise value
    return results


async def _spawn(vm: VM, plan: Plan, i: int) -> AgentHandle:
    return await vm.spawn(plan.program, system=plan.system, tools=plan.grant, inputs=plan.inputs[i],
                          budget=plan.budget, priority=plan.priority)


async def _outcome(handle: AgentHandle) -> Any:
    try:
        return await handle.result()
    except AgentError as exc:
        return exc


class _ThreadRun:
    """A run in a worker thread with its own trio loop, cancellable from the asyncio side."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.lock = threading.Lock()
        self.token: trio.lowlevel.TrioToken | None = None
        self.scope: trio.CancelScope | None = None
        self.cancelled = False

    def run(self) -> RunResults | None:
        return trio.run(self._main)

    async def _main(self) -> RunResults | None:
        with trio.CancelScope() as scope:
            with self.lock:
                self.token, self.scope = trio.lowlevel.current_trio_token(), scope
                if self.cancelled:
                    scope.cancel()
            return await execute(self.plan)
        return None  # cancelled: the awaiting asyncio task has gone already

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            token, scope = self.token, self.scope
        if token is not None and scope is not None:
            try:
                token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass


async def _in_asyncio(plan: Plan) -> RunResults:
    import asyncio

    job = _ThreadRun(plan)
    try:
        results = await asyncio.to_thread(job.run)
    except asyncio.CancelledError:
        job.cancel()
        raise
    assert results is not None
    return results
