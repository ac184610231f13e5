"""Run specs: the example specs, the demo, every mistake as one clear line, overrides, a real run."""

from __future__ import annotations

from pathlib import Path

import pytest

import avm
from avm import demo
from avm.app.spec import (
    DEMO_SOURCE,
    AgentGroup,
    Program,
    RunSpec,
    SpecError,
    demo_spec,
    load_spec,
    spawn_all,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
OK_PROGRAM = "push 1\nreturn\n"


@pytest.fixture
def spec_dir(tmp_path):
    (tmp_path / "p.avm").write_text(OK_PROGRAM)
    return tmp_path


def write_spec(directory: Path, text: str, name: str = "spec.toml") -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def error_of(path: str) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the examples and the demo -------------------------------------------------------------------


def test_every_example_spec_loads():
    specs = sorted(EXAMPLES.glob("*.toml"))
    assert len(specs) >= 2
    for path in specs:
        spec = load_spec(path)
        assert spec.source == str(path) and spec.groups and spec.description
        for group in spec.groups:
            assert isinstance(group.program.code, avm.Code) and not group.program.warnings
            assert set(group.tools) <= set(spec.tool_names)


def test_research_fleet_reads_jsonl_inputs_and_a_tool_from_a_file():
    spec = load_spec(EXAMPLES / "research_fleet.toml")
    (group,) = spec.groups
    assert group.count == len(group.inputs) == 12  # the blank line of topics.jsonl is skipped
    assert group.inputs[0] == {"topic": "why octopuses have three hearts", "audience": "students"}
    assert spec.tool_names == ("calculate", "glossary", "search")
    assert all(isinstance(t, avm.Tool) for t in spec.tools)
    assert "{topic}" in group.system and group.system_path.endswith("researcher_prompt.md")
    assert spec.settings == {"llm_server": {"latency_ms": 10, "jitter_ms": 10}}
    assert group.agent_inputs(3)["topic"] == "how honey keeps for centuries"
    assert load_spec(EXAMPLES / "research_fleet.toml").tools == spec.tools  # a tool file is imported once


def test_workers_spec_has_literal_inputs_priorities_and_program_inputs():
    spec = load_spec(EXAMPLES / "workers.toml")
    lead, tally = spec.groups
    assert (lead.name, lead.priority, lead.restart, lead.count, lead.budget) == ("lead", "interactive", "on-fault",
                                                                               3, 300.0)
    assert (tally.priority, tally.budget, tally.tools) == ("background", 10.0, ("calculate",))
    assert set(lead.programs) == {"helper"} and isinstance(lead.programs["helper"], Program)
    assert lead.system.startswith("You are {name}") and lead.system_path is None
    inputs = lead.agent_inputs(1, {"helper": "REF"})
    assert inputs == {"name": "lead-1", "index": 1, "group": "lead", "group_size": 3, "helper": "REF",
                      "topic": "bees", "parts": ["how bees share directions", "why old honey keeps"],
                      "helper_budget": 60}
    kwargs = tally.spawn_kwargs(0)
    assert kwargs["name"] == "tally-0" and kwargs["priority"] == "background" and kwargs["budget"] == 10.0
    assert kwargs["inputs"]["lead"] == "lead-0"


def test_demo_spec_lays_out_a_thousand_agents():
    spec = demo_spec()
    assert spec.source == DEMO_SOURCE and spec.agents == 1000
    counts = {g.name: g.count for g in spec.groups}
    assert counts == {"coordinator": 15, "analyst": 200, "researcher": 785}
    coordinator = spec.group("coordinator")
    assert coordinator.priority == "interactive" and set(coordinator.programs) == {"worker"}
    assert spec.group("analyst").priority == "background"
    assert len({id(g.system) for g in spec.groups}) == 1 and len(coordinator.system) > 4000  # one shared prompt
    assert all(p in coordinator.system for p in ("{name}", "{topic}", "{role}", "{index}"))
    assert spec.tool_names == ("calculate", "search")
    deep = [i for i in spec.group("researcher").inputs if i["rounds"] == demo.DEEP_DIVE_ROUNDS]
    assert 3 <= len(deep) <= 8  # a handful run out of energy on purpose
    for group in spec.groups:
        assert len(group.inputs) == group.count
    assert spec.vm_kwargs()["hibernate_after_s"] == demo.vm_settings()["hibernate_after_s"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 9, 10, 11, 30, 99, 1000, 5000])
def test_demo_layout_adds_up_for_any_size(n):
    spec = demo_spec(n)
    assert spec.agents == n and all(g.count >= 1 for g in spec.groups)
    assert spec.with_overrides(agents=n) == spec
    analysts = [g for g in spec.groups if g.name == "analyst"]
    assert not analysts or analysts[0].count % 2 == 0  # analysts work in pairs


def test_demo_files_ship_in_the_package():
    for path in (*demo.PROGRAMS.values(), demo.SYSTEM_PROMPT):
        assert path.is_file() and path.parent == Path(demo.__file__).parent


# --- mistakes: one line each ---------------------------------------------------------------------


def test_missing_spec_file(tmp_path):
    path = str(tmp_path / "nope.toml")
    assert error_of(path) == f"{path}: cannot read the spec: no such file or directory"


def test_bad_toml_names_the_line_and_column(spec_dir):
    path = write_spec(spec_dir, 'description = "x"\nbudget = \n')
    assert error_of(path) == f"{path}: line 2, column 10: TOML: invalid value"
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\n[agents.a]\n')
    assert error_of(path) == f"{path}: line 3, column 10: TOML: cannot declare ('agents', 'a') twice"


def test_unknown_keys_list_the_allowed_ones(spec_dir):
    path = write_spec(spec_dir, 'budjet = 3\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == (f"{path}: budjet: unknown key (allowed: agents, budget, description, llm, model, "
                              f"store, tools, vm)")
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\ncont = 3\n')
    assert error_of(path) == (f"{path}: agents.a.cont: unknown key (allowed: budget, count, inputs, priority, "
                              f"program, programs, restart, system, system_text, tools)")


def test_wrong_types(spec_dir):
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\ncount = "ten"\n')
    assert error_of(path) == f"{path}: agents.a.count: must be an integer, not a string ('ten')"
    path = write_spec(spec_dir, 'budget = true\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: budget: must be a number, not a boolean (True)"
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\ntools = "search"\n')
    assert error_of(path) == f"{path}: agents.a.tools: must be an array of tool names, not a string ('search')"


def test_bad_values(spec_dir):
    path = write_spec(spec_dir, 'budget = -1\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: budget: must be a positive number of energy units, not -1"
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\ncount = 0\n')
    assert error_of(path) == f"{path}: agents.a.count: must be between 1 and 1,000,000, not 0"
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\npriority = "urgent"\n')
    assert error_of(path) == (f"{path}: agents.a.priority: must be one of interactive, normal, background, "
                              f"not 'urgent'")
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\nrestart = "always"\n')
    assert error_of(path) == f"{path}: agents.a.restart: must be one of never, on-fault, not 'always'"
    path = write_spec(spec_dir, 'llm = "localhost:8000"\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: llm: must be an http:// or https:// URL, not 'localhost:8000'"
    path = write_spec(spec_dir, '[agents."my group"]\nprogram = "p.avm"\n')
    assert error_of(path) == (f'{path}: agents."my group": a group name is letters, digits, _ and - '
                              f"(it prefixes the agents' names)")


def test_no_groups(spec_dir):
    path = write_spec(spec_dir, "budget = 3\n")
    assert error_of(path) == f"{path}: agents: missing: a spec needs at least one [agents.NAME] table"
    path = write_spec(spec_dir, "[agents.a]\ncount = 2\n")
    assert error_of(path) == f"{path}: agents.a.program: missing: the program file the group's agents run"


def test_missing_program_file(spec_dir):
    path = write_spec(spec_dir, '[agents.a]\nprogram = "nope.avm"\n')
    assert error_of(path) == f"{path}: agents.a.program: no program file {spec_dir / 'nope.avm'}"
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\nprograms = { helper = "gone.avm" }\n')
    assert error_of(path) == f"{path}: agents.a.programs.helper: no program file {spec_dir / 'gone.avm'}"


def test_program_that_does_not_compile_names_file_line_and_column(spec_dir):
    (spec_dir / "bad.avm").write_text("push 1\n  pusj 2\n")
    path = write_spec(spec_dir, '[agents.a]\nprogram = "bad.avm"\n')
    assert error_of(path) == f"{path}: agents.a.program: {spec_dir / 'bad.avm'}:2:3: unknown instruction 'pusj'"


def test_bad_jsonl_line_names_the_file_and_line(spec_dir):
    (spec_dir / "in.jsonl").write_text('{"x": 1}\n\n{"x": 2,}\n')
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\ninputs = "in.jsonl"\n')
    jsonl = spec_dir / "in.jsonl"
    assert error_of(path) == (f"{path}: agents.a.inputs: {jsonl}:3: not JSON (Expecting property name "
                              f"enclosed in double quotes at column 9)")
    jsonl.write_text('{"x": 1}\n[1, 2]\n')
    assert error_of(path) == f"{path}: agents.a.inputs: {jsonl}:2: a line must be a JSON object, not an array"
    jsonl.write_text("\n\n")
    assert error_of(path) == f"{path}: agents.a.inputs: no inputs (leave inputs out for agents without inputs)"
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\ninputs = "none.jsonl"\n')
    assert error_of(path) == f"{path}: agents.a.inputs: no inputs file {spec_dir / 'none.jsonl'}"


def test_inputs_an_agent_cannot_take(spec_dir):
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\ninputs = [{when = 2024-01-02}]\n')
    assert error_of(path) == (f"{path}: agents.a.inputs[0].when: a date/time is not a value an agent can hold "
                              f"(write it as a string)")
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\nprograms = {helper = "p.avm"}\n'
                                'inputs = [{x = 1}, {helper = 1}]\n')
    assert error_of(path) == f"{path}: agents.a.inputs[1].helper: clashes with the program input programs.helper"


def test_count_and_inputs_must_agree(spec_dir):
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\ncount = 3\ninputs = [{x = 1}, {x = 2}]\n')
    assert error_of(path) == (f"{path}: agents.a.count: is 3 but inputs has 2 entries (leave count out to run "
                              f"one agent per input)")
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\ncount = 2\ninputs = [{x = 1}, {x = 2}]\n')
    assert load_spec(path).groups[0].count == 2


def test_unknown_tool_import_paths(spec_dir):
    path = write_spec(spec_dir, 'tools = ["no_such_pkg.tools:search"]\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: tools[0]: cannot import 'no_such_pkg.tools': No module named 'no_such_pkg'"
    path = write_spec(spec_dir, 'tools = ["avm.demo.tools:serch"]\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: tools[0]: 'avm.demo.tools' has no 'serch'"
    path = write_spec(spec_dir, 'tools = ["search"]\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == (f'{path}: tools[0]: \'search\' is not an import path (write "package.module:function" '
                              f'or "file.py:function")')
    path = write_spec(spec_dir, 'tools = ["mine.py:f"]\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: tools[0]: no tool module {spec_dir / 'mine.py'}"
    (spec_dir / "broken.py").write_text("raise RuntimeError('half written')\n")
    path = write_spec(spec_dir, 'tools = ["broken.py:f"]\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: tools[0]: importing 'broken.py' raised RuntimeError: half written"


def test_an_import_path_that_is_not_a_tool(spec_dir):
    path = write_spec(spec_dir, 'tools = ["avm.demo.tools.NOTES"]\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == (f"{path}: tools[0]: avm.demo.tools.NOTES is a tuple, not an avm tool "
                              f"(decorate the function with @avm.tool)")
    path = write_spec(spec_dir, 'tools = ["avm.demo.tools:search_notes"]\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == (f"{path}: tools[0]: avm.demo.tools:search_notes is a function, not an avm tool "
                              f"(decorate the function with @avm.tool)")
    path = write_spec(spec_dir, 'tools = ["avm.demo.tools:search", "avm.demo.tools.search"]\n'
                                '[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: tools[1]: a second tool named 'search' (tools[0] is one already)"


def test_granting_a_tool_the_spec_does_not_register(spec_dir):
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\ntools = ["search", "browse"]\n')
    assert error_of(path) == (f"{path}: agents.a.tools[1]: 'browse' is not a registered tool (registered: "
                              f"calculate, search; register more in the top-level tools)")


def test_a_spec_naming_the_demo_tools_by_their_old_module_still_loads(spec_dir):
    path = write_spec(spec_dir, 'tools = ["avm.demo_tools:search"]\n'
                                '[agents.a]\nprogram = "p.avm"\ntools = ["search"]\n')
    assert load_spec(path).tool_names == ("search",)


def test_demo_tools_may_be_granted_without_being_listed(spec_dir):
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\ntools = ["calculate"]\n')
    assert load_spec(path).tool_names == ("calculate",)


def test_tool_modules_next_to_the_spec_import_by_module_name(spec_dir):
    (spec_dir / "spec_side_tools_mod.py").write_text(
        "import avm\n\n@avm.tool\nasync def shout(text: str) -> str:\n    '''Upper case.'''\n"
        "    return text.upper()\n")
    path = write_spec(spec_dir, 'tools = ["spec_side_tools_mod:shout"]\n[agents.a]\nprogram = "p.avm"\n'
                                'tools = ["shout"]\n')
    spec = load_spec(path)
    assert spec.tool_names == ("shout",) and spec.groups[0].tools == ("shout",)


def test_vm_settings_are_checked(spec_dir):
    path = write_spec(spec_dir, '[vm]\nquantom = 3\n[agents.a]\nprogram = "p.avm"\n')
    message = error_of(path)
    assert message.startswith(f"{path}: vm.quantom: unknown VM setting (allowed: agent_memory_bytes, aging_s, ")
    assert "quantum" in message and "default_budget" not in message
    path = write_spec(spec_dir, '[vm]\nquantum = "big"\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: vm.quantum: must be a number, not a string ('big')"
    path = write_spec(spec_dir, '[vm]\nquantum = -2\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: vm: quantum must be a positive number, not -2.0"
    path = write_spec(spec_dir, '[vm]\nmodel = "x"\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: vm.model: set by the top-level key model, not in [vm]"
    path = write_spec(spec_dir, '[vm.llm_server]\nlatency = 3\n[agents.a]\nprogram = "p.avm"\n')
    assert error_of(path) == f"{path}: vm.llm_server: unknown server settings: latency"
    path = write_spec(spec_dir, '[vm]\nhibernate_after_s = false\nmax_tokens = 64\n[agents.a]\nprogram = "p.avm"\n')
    assert load_spec(path).settings == {"hibernate_after_s": None, "max_tokens": 64}


def test_system_prompt_and_store_paths_are_relative_to_the_spec(spec_dir):
    (spec_dir / "prompt.md").write_text("You are {name}.")
    path = write_spec(spec_dir, 'store = "st"\nmodel = "m"\nllm = "http://127.0.0.1:9/v1"\n'
                                '[agents.a]\nprogram = "p.avm"\nsystem = "prompt.md"\n')
    spec = load_spec(path)
    assert spec.store == str(spec_dir / "st") and spec.groups[0].system == "You are {name}."
    assert spec.vm_kwargs() == {"llm": "http://127.0.0.1:9/v1", "tools": [], "model": "m"}
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\nsystem = "nope.md"\n')
    assert error_of(path) == f"{path}: agents.a.system: no system prompt file {spec_dir / 'nope.md'}"
    path = write_spec(spec_dir, '[agents.a]\nprogram = "p.avm"\nsystem = "prompt.md"\nsystem_text = "hi"\n')
    assert error_of(path) == f"{path}: agents.a.system_text: give system (a file) or system_text, not both"


# --- overrides -----------------------------------------------------------------------------------


def two_groups(spec_dir: Path) -> RunSpec:
    path = write_spec(spec_dir, 'budget = 5\n[agents.big]\nprogram = "p.avm"\ncount = 3\n'
                                '[agents.small]\nprogram = "p.avm"\ninputs = [{x = 1}]\n')
    return load_spec(path)


def test_agents_override_scales_groups_in_proportion(spec_dir):
    spec = two_groups(spec_dir)
    assert [g.count for g in spec.groups] == [3, 1]
    assert [g.count for g in spec.with_overrides(agents=8).groups] == [6, 2]
    assert [g.count for g in spec.with_overrides(agents=2).groups] == [1, 1]
    assert [g.count for g in spec.with_overrides(agents=1001).groups] == [751, 250]
    small = spec.with_overrides(agents=8).groups[1]
    assert small.agent_inputs(1)["x"] == 1 and small.agent_inputs(1)["name"] == "small-1"  # inputs cycle
    with pytest.raises(SpecError) as info:
        spec.with_overrides(agents=1)
    assert str(info.value) == (f"{spec.source}: --agents: 1 is fewer than the spec's 2 agent groups (each group "
                               f"runs at least one agent)")
    with pytest.raises(SpecError):
        spec.with_overrides(agents=0)


def test_apportioning_keeps_one_agent_per_group_and_the_total():
    from avm.app.spec.model import _apportion

    assert _apportion([1, 1, 1000], 3) == [1, 1, 1]
    assert _apportion([1, 1, 1000], 10) == [1, 1, 8]
    assert _apportion([5, 5], 3) == [2, 1]
    for total in range(3, 60):
        parts = _apportion([7, 2, 1], total)
        assert sum(parts) == total and min(parts) >= 1


def test_other_overrides(spec_dir):
    spec = two_groups(spec_dir)
    changed = spec.with_overrides(llm="http://10.0.0.1:8000/v1", model="m", store="here", budget=7.5)
    assert (changed.llm, changed.model, changed.store, changed.budget) == ("http://10.0.0.1:8000/v1", "m", "here", 7.5)
    assert [g.budget for g in changed.groups] == [7.5, 7.5]
    assert spec.with_overrides() == spec and [g.budget for g in spec.groups] == [5.0, 5.0]
    with pytest.raises(SpecError) as info:
        spec.with_overrides(budget=0)
    assert str(info.value) == f"{spec.source}: --budget: must be a positive number up to 1e+12, not 0"
    with pytest.raises(SpecError):
        spec.with_overrides(llm="nowhere")


def test_demo_overrides_use_the_demo_layout():
    spec = demo_spec(50).with_overrides(agents=200, budget=90)
    assert {g.name: g.count for g in spec.groups} == {"coordinator": 3, "analyst": 40, "researcher": 157}
    assert all(g.budget == 90 for g in spec.groups)


def test_agent_group_checks_itself():
    program = Program(avm.compile(OK_PROGRAM), "p.avm")
    with pytest.raises(ValueError):
        AgentGroup("a", program, count=0)
    with pytest.raises(ValueError):
        AgentGroup("a", program, priority="urgent")
    group = AgentGroup("a", program, count=2, inputs=({"name": "mine"},))
    assert group.agent_inputs(1) == {"name": "mine", "index": 1, "group": "a", "group_size": 2}


# --- running -------------------------------------------------------------------------------------


async def run_spec(spec: RunSpec) -> tuple[list[tuple[AgentGroup, list[avm.AgentHandle]]], avm.VMStatistics, avm.VM]:
    async with avm.VM(**spec.vm_kwargs()) as vm:
        groups = await spawn_all(vm, spec)
        await vm.join()
        return groups, vm.statistics(), vm


async def test_a_small_demo_runs_every_part_of_the_vm():
    spec = demo_spec(agents=30)
    groups, stats, vm = await run_spec(spec)
    handles = [h for _, hs in groups for h in hs]
    assert len(handles) == 30
    assert stats.ended.get("failed", 0) == 0 and not vm._kernel.internal_errors
    assert all(h.state is avm.AgentState.DONE for h in handles), [(h.name, h.state) for h in handles]
    assert stats.agents > 30 and stats.spawns > 0 and stats.effects["delegate"] > 0  # coordinators' workers
    assert stats.effects["llm"] >= 3 * 30 and stats.effects["tool"] > 0
    assert stats.messages > 0 and stats.effects["recv"] > 0
    by_group = {g.name: hs for g, hs in groups}
    (coordinator,) = by_group["coordinator"]
    report = coordinator.value
    assert report["workers"] == demo.PARTS and report["findings"] == demo.PARTS
    assert report["progress_messages"] == demo.PARTS and report["reviewed"] is True
    paired = [h.value for h in by_group["analyst"]]
    assert all(v["partner_figure"] is not None for v in paired)  # every analyst heard from its partner
    assert all(v["note"].startswith("FINAL ANSWER") for v in (h.value for h in by_group["researcher"]))


@pytest.mark.parametrize("name", ["research_fleet.toml", "workers.toml"])
async def test_example_specs_run_as_they_are(name):
    spec = load_spec(EXAMPLES / name)
    groups, stats, vm = await run_spec(spec)
    assert stats.ended == {"done": stats.agents}
    assert stats.effects["llm"] > 0 and stats.effects["tool"] > 0
    if name == "workers.toml":
        assert stats.effects["delegate"] > 0 and stats.messages == 3
        leads = groups[0][1]
        assert all(h.value["tally"]["from"].startswith("tally-") for h in leads)


async def test_agents_spawned_before_a_cancel_are_kept(spec_dir):
    import trio

    (spec_dir / "wait.avm").write_text("push 30\nsleep\nreturn\n")
    spec = load_spec(write_spec(spec_dir, '[agents.a]\nprogram = "wait.avm"\ncount = 2500\n'))
    handles: list = []
    async with avm.VM() as vm:
        with trio.CancelScope() as scope:
            scope.cancel()  # (as Ctrl+C does: at spawning's first checkpoint, after 1,000 agents)
            await spawn_all(vm, spec, into=handles)
        assert len(handles) == 1000 and vm.statistics().agents == 1000
