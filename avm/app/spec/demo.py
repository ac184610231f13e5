"""The built-in demo (`avm run` with no spec) as a `RunSpec`; its programs and prompt live in `avm.demo`."""

from __future__ import annotations

from avm.lang.compiler import compile_source
from avm.app.spec.model import DEMO_SOURCE, AgentGroup, Program, RunSpec, SpecError

__all__ = ["demo_spec"]

# --- the built-in demo -------------------------------------------------------------------------


def demo_spec(agents: int = 1000) -> RunSpec:
    """The built-in demo fleet of ``agents`` agents (see `avm.demo`)."""
    from avm import demo
    from avm.demo.tools import TOOLS

    if type(agents) is not int or agents < 1:
        raise SpecError(DEMO_SOURCE, "--agents", f"must be a whole number >= 1, not {agents!r}")
    return RunSpec(DEMO_SOURCE, _demo_groups(agents), tuple(TOOLS), budget=demo.RESEARCHER_BUDGET,
                   settings=demo.vm_settings(), description=demo.DESCRIPTION, rescale=_demo_groups)


def _demo_groups(agents: int) -> tuple[AgentGroup, ...]:
    from avm import demo

    if type(agents) is not int or agents < 1:
        raise SpecError(DEMO_SOURCE, "--agents", f"must be a whole number >= 1, not {agents!r}")
    programs = _demo_programs()
    system = demo.system_prompt()
    tools = ("search", "calculate")
    layout = demo.layout(agents)
    groups = []
    if layout.coordinators:
        groups.append(AgentGroup("coordinator", programs["coordinator"], layout.coordinators, system,
                                 str(demo.SYSTEM_PROMPT), tools, demo.coordinator_inputs(layout.coordinators),
                                 demo.COORDINATOR_BUDGET, "interactive", "on-fault",
                                 {"worker": programs["worker"]}))
    if layout.analysts:
        groups.append(AgentGroup("analyst", programs["analyst"], layout.analysts, system, str(demo.SYSTEM_PROMPT),
                                 tools, demo.analyst_inputs(layout.analysts), demo.ANALYST_BUDGET, "background"))
    groups.append(AgentGroup("researcher", programs["researcher"], layout.researchers, system,
                             str(demo.SYSTEM_PROMPT), tools, demo.researcher_inputs(layout.researchers),
                             demo.RESEARCHER_BUDGET, "normal"))
    return tuple(groups)


_DEMO_PROGRAMS: dict[str, Program] = {}


def _demo_programs() -> dict[str, Program]:
    if not _DEMO_PROGRAMS:
        from avm import demo

        for name, path in demo.PROGRAMS.items():
            _DEMO_PROGRAMS[name] = Program(compile_source(path.read_text(encoding="utf-8")), str(path))
    return _DEMO_PROGRAMS
