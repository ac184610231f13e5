"""The run spec model: groups of agents, the run around them, and spawning them into a VM."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from avm.errors import AvmError
from avm.kernel.settings import DEFAULT_BUDGET  # energy per agent when a spec sets none
from avm.lang.code import Code
from avm.lang.compiler import IDENT
from avm.scheduler.states import PRIORITIES
from avm.scheduler.supervision import MODES
from avm.tools.registry import Tool

__all__ = ["AUTO_INPUTS", "DEFAULT_BUDGET", "DEMO_SOURCE", "MAX_BUDGET", "MAX_COUNT", "AgentGroup", "Program",
           "RunSpec", "SpecError", "spawn_all", "spawn_group"]

DEMO_SOURCE = "<built-in demo>"
AUTO_INPUTS = ("name", "index", "group", "group_size")  # what each agent gets unless its inputs say otherwise
MAX_COUNT = 1_000_000  # agents in one group
MAX_BUDGET = 1e12  # the most energy a frame can be given
_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


class SpecError(AvmError):
    """A run spec that cannot run: one line, ``"<file>: <key or line>: <what is wrong>"``.

    ``file`` is the spec (or `DEMO_SOURCE`), ``where`` the TOML key
    (``agents.worker.count``), a line (``line 3, column 5``) or empty, and
    ``message`` what is wrong; a file the spec names that has a problem of its
    own is named at the start of the message (``worker.avm:3:5: ...``).
    """

    def __init__(self, file: str, where: str, message: str):
        self.file = file
        self.where = where
        self.message = _one_line(message)
        super().__init__(f"{file}: {where}: {self.message}" if where else f"{file}: {self.message}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled program and the file it came from."""

    code: Code
    path: str

    @property
    def id(self) -> str:
        return self.code.id

    @property
    def warnings(self) -> tuple[tuple[int, str], ...]:
        """The compiler's (line, message) warnings, such as unreachable code."""
        return tuple(self.code.warnings)


@dataclass(frozen=True)
class AgentGroup:
    """Agents that run one program with one prompt, grant, budget and priority.

    ``count`` agents run; with ``inputs``, agent ``i`` gets ``inputs[i % len(inputs)]``
    (a spec file keeps the two equal; `RunSpec.with_overrides` may scale
    ``count``). ``programs`` are given to every agent as ref inputs by name.
    """

    name: str
    program: Program
    count: int = 1
    system: str | None = field(default=None, repr=False)  # the prompt template (placeholders filled from the inputs)
    system_path: str | None = None  # where the prompt came from, if a file
    tools: tuple[str, ...] = ()  # tool names granted to each agent
    inputs: tuple[dict[str, Any], ...] = field(default=(), repr=False)
    budget: float = DEFAULT_BUDGET  # energy per agent
    priority: str = "normal"  # interactive, normal or background
    restart: str = "never"  # or "on-fault"
    programs: dict[str, Program] = field(default_factory=dict)  # name -> program, given as ref inputs

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _GROUP_NAME.match(self.name):
            raise ValueError(f"a group name is letters, digits, _ and -, not {self.name!r}")
        if type(self.count) is not int or not 1 <= self.count <= MAX_COUNT:
            raise ValueError(f"group {self.name}: count must be an int in 1..{MAX_COUNT}, not {self.count!r}")
        if not _positive(self.budget):
            raise ValueError(f"group {self.name}: budget must be a positive number, not {self.budget!r}")
        if self.priority not in PRIORITIES:
            raise ValueError(f"group {self.name}: priority must be one of {', '.join(PRIORITIES)}")
        if self.restart not in MODES:
            raise ValueError(f"group {self.name}: restart must be one of {', '.join(MODES)}")
        for key in self.programs:
            if not IDENT.match(key):
                raise ValueError(f"group {self.name}: program input {key!r} is not a variable name")

    def __hash__(self) -> int:  # by a few fields (the dict and the inputs are not hashable); equal groups agree
        return hash((self.name, self.program.id, self.count, self.budget, self.priority))

    def agent_name(self, i: int) -> str:
        """The name agent ``i`` of the group runs under: ``<group>-<i>``."""
        return f"{self.name}-{i}"

    def agent_inputs(self, i: int, refs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Agent ``i``'s inputs: its own, the program refs, then name, index, group and group_size."""
        inputs: dict[str, Any] = {"name": self.agent_name(i), "index": i, "group": self.name,
                                  "group_size": self.count}
        if refs:
            inputs.update(refs)
        if self.inputs:
            inputs.update(self.inputs[i % len(self.inputs)])
        return inputs

    def spawn_kwargs(self, i: int, refs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Keyword arguments of ``vm.spawn`` for agent ``i`` (``refs``: from `VM.program_ref`)."""
        return {"program": self.program.code, "system": self.system, "tools": self.tools,
                "inputs": self.agent_inputs(i, refs), "budget": self.budget, "priority": self.priority,
                "name": self.agent_name(i), "restart": self.restart}


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs: the groups, the tools, the endpoint, the store and settings."""

    source: str  # the spec file, or DEMO_SOURCE
    groups: tuple[AgentGroup, ...]
    tools: tuple[Tool, ...] = ()  # registered with the VM
    llm: str | None = None  # an OpenAI-compatible base URL; None: the embedded server
    model: str | None = None
    store: str | None = None  # a store directory; None: in memory
    budget: float = DEFAULT_BUDGET  # the default energy per agent
    settings: dict[str, Any] = field(default_factory=dict)  # VMSettings overrides
    description: str = ""
    # How the spec re-lays its groups for another number of agents (the demo's own layout); None: proportionally.
    rescale: Callable[[int], tuple[AgentGroup, ...]] | None = field(default=None, repr=False, compare=False)

    def __hash__(self) -> int:
        return hash((self.source, self.groups))

    @property
    def agents(self) -> int:
        """Agents the host spawns (their own children not counted)."""
        return sum(g.count for g in self.groups)

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(sorted(t.name for t in self.tools))

    def group(self, name: str) -> AgentGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def vm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``avm.VM`` (the store aside: open ``ContentStore(spec.store)`` if set)."""
        kwargs: dict[str, Any] = {"llm": self.llm, "tools": list(self.tools), **self.settings}
        if self.model is not None:
            kwargs["model"] = self.model
        return kwargs

    def describe(self) -> list[str]:
        """One line per group, for a launcher to print before the run."""
        lines = []
        for g in self.groups:
            tools = ", ".join(g.tools) or "no tools"
            lines.append(f"{g.name}: {g.count} x {Path(g.program.path).name}, budget {g.budget:g}, "
                         f"{g.priority}, {tools}")
        return lines

    def with_overrides(self, agents: int | None = None, llm: str | None = None, model: str | None = None,
                       store: str | None = None, budget: float | None = None) -> RunSpec:
        """The spec with the launcher's flags applied (None: keep the spec's value).

        ``agents`` is the number of agents the host spawns. The demo lays its
        groups out again for it (`demo_spec`); another spec's groups share it
        in proportion to their counts, by largest remainder, each keeping at
        least one agent (so ``agents`` must be at least the number of groups);
        inputs cycle when a group gets more agents than inputs. ``budget``
        sets every group's budget and the default. ``store`` is used as given
        (relative to the working directory, as a command-line path is).
        """
        spec = self
        if agents is not None:
            if type(agents) is not int or agents < 1:
                raise SpecError(self.source, "--agents", f"must be a whole number >= 1, not {agents!r}")
            try:
                if self.rescale is not None:
                    groups = self.rescale(agents)
                else:
                    groups = _rescaled(self.source, self.groups, agents)
            except ValueError as exc:  # a group past MAX_COUNT
                if isinstance(exc, SpecError):
                    raise
                raise SpecError(self.source, "--agents", str(exc)) from None
            spec = dataclasses.replace(spec, groups=groups)
        if budget is not None:
            if not _positive(budget):
                raise SpecError(self.source, "--budget", f"must be a positive number up to {MAX_BUDGET:g}, "
                                                         f"not {budget!r}")
            spec = dataclasses.replace(spec, budget=float(budget),
                                       groups=tuple(dataclasses.replace(g, budget=float(budget))
                                                    for g in spec.groups))
        if llm is not None:
            _check_url(self.source, "--llm", llm)
            spec = dataclasses.replace(spec, llm=llm)
        if model is not None:
            if not isinstance(model, str) or not model:
                raise SpecError(self.source, "--model", "must be a model name")
            spec = dataclasses.replace(spec, model=model)
        if store is not None:
            spec = dataclasses.replace(spec, store=str(store))
        return spec


def _positive(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
            and math.isfinite(value) and value <= MAX_BUDGET)


def _rescaled(source: str, groups: tuple[AgentGroup, ...], total: int) -> tuple[AgentGroup, ...]:
    if total < len(groups):
        raise SpecError(source, "--agents", f"{total} is fewer than the spec's {len(groups)} agent groups "
                                            f"(each group runs at least one agent)")
    counts = _apportion([g.count for g in groups], total)
    return tuple(dataclasses.replace(g, count=n) for g, n in zip(groups, counts, strict=True))


def _apportion(weights: Sequence[int], total: int) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder), each part at least 1."""
    whole = sum(weights)
    quotas = [total * w / whole for w in weights]
    parts = [max(1, math.floor(q)) for q in quotas]
    order = sorted(range(len(weights)), key=lambda k: (-(quotas[k] - math.floor(quotas[k])), k))
    k = 0
    while sum(parts) < total:
        parts[order[k % len(order)]] += 1
        k += 1
    while sum(parts) > total:  # minimums pushed the sum over: take from the parts most above their quota
        big = max((j for j in range(len(parts)) if parts[j] > 1), key=lambda j: (parts[j] - quotas[j], -j))
        parts[big] -= 1
    return parts


def _check_url(source: str, where: str, url: Any) -> str:
    if not isinstance(url, str) or not re.match(r"https?://[^\s/]+", url):
        raise SpecError(source, where, f"must be an http:// or https:// URL, not {url!r}")
    return url


# --- running ---------------------------------------------------------------------------------


async def spawn_group(vm: Any, group: AgentGroup, only: Any = None, into: list[Any] | None = None) -> list[Any]:
    """Spawn a group's agents in ``vm`` (an entered `avm.VM`), or those of ``only`` (their indexes); their
    handles, in order. ``into``: a list the handles are appended to as they come (so that a caller whose
    spawning is cancelled midway keeps those spawned)."""
    refs = {key: vm.program_ref(p.code) for key, p in group.programs.items()}
    spawn = vm.spawn
    handles = [] if into is None else into
    for i in (range(group.count) if only is None else only):
        handles.append(await spawn(**group.spawn_kwargs(i, refs)))
        if i % 1000 == 999:
            await trio.lowlevel.checkpoint()  # spawn never yields: let Ctrl+C and the dashboard in
    return handles


async def spawn_all(vm: Any, spec: RunSpec, into: list[Any] | None = None) -> list[tuple[AgentGroup, list[Any]]]:
    """Spawn every group of the spec, in order; each group with its handles (``into``: every handle is
    also appended there as it comes, see `spawn_group`)."""
    every: list[Any] = [] if into is None else into
    out = []
    for g in spec.groups:
        start = len(every)
        await spawn_group(vm, g, into=every)
        out.append((g, every[start:]))
    return out
