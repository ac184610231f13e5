"""Run specs: what `avm run` runs, from a TOML file or the built-in demo.

A spec names groups of agents (each a program, a system prompt, a grant of
tools, a count or one agent per input, a budget, a priority, a restart
policy), the tools to register, the LLM endpoint and model, the store and VM
settings. `load_spec` reads a file into a `RunSpec`, checking everything
before any agent runs; every mistake is one `SpecError` line,
``"<file>: <key or line>: <what is wrong>"``. `demo_spec` builds the demo.

A spec file::

    description = "Researchers on a few topics"
    tools = ["avm.demo.tools:search", "tools.py:glossary"]   # import paths of @avm.tool functions
    budget = 60                 # energy per agent, for groups that set none (default 100)
    llm = "http://host:8000/v1" # default: the embedded LLM server
    model = "some-model"        # default: the embedded server's, or OPENAI_MODEL for an llm URL
    store = "run-store"         # a store directory; default: an in-memory store

    [vm]                        # VMSettings overrides
    hibernate_after_s = 2.0
    [vm.llm_server]             # ServerSettings of the embedded server
    latency_ms = 20

    [agents.researcher]         # one table per group; the group's name is its key
    program = "researcher.avm"
    system = "prompt.md"        # the system prompt file (or system_text = "...")
    tools = ["search", "glossary"]
    inputs = "topics.jsonl"     # one agent per line; or a list of tables
    priority = "normal"         # interactive, normal or background
    restart = "never"           # or "on-fault"
    programs = { helper = "helper.avm" }   # given to each agent as a ref input named helper

Rules:

- Paths in a spec are relative to the spec file's directory (``llm`` aside).
- Tool import paths are ``package.module:function``, ``package.module.function``
  or ``path/to/file.py:function``; a module not found on ``sys.path`` is
  looked for in the spec's directory too. Each must name an `avm.Tool`. The
  offline demo tools (`avm.demo.tools`: ``search``, ``calculate``) may be
  granted without being listed; a listed tool of the same name wins.
- Inputs: a list of tables, or a JSONL file (one JSON object per line; blank
  lines are skipped). With inputs, a group runs one agent per input and
  ``count`` may be left out; a ``count`` that differs from the number of
  inputs is an error. (Scaling a spec with ``--agents``, see
  `RunSpec.with_overrides`, cycles through the inputs: agent ``i`` gets input
  ``i % len(inputs)``.) Without inputs, ``count`` defaults to 1.
- Each agent of group ``g`` is named ``g-<i>`` (``i`` from 0), so agents can
  message each other by name, and also gets the inputs ``name``, ``index``
  (``i``), ``group`` and ``group_size`` unless its own inputs set them. They
  fill ``{name}``-style placeholders of the system prompt like any input.
- A VM setting that may be None (``temperature``, ``hibernate_after_s``...)
  is given ``false`` in TOML for None, which TOML cannot write. ``model`` and
  ``default_budget`` are set by the top-level ``model`` and ``budget``.
"""

from avm.app.spec.demo import demo_spec
from avm.app.spec.loader import load_spec
from avm.app.spec.model import (
    AUTO_INPUTS,
    DEFAULT_BUDGET,
    DEMO_SOURCE,
    MAX_BUDGET,
    MAX_COUNT,
    AgentGroup,
    Program,
    RunSpec,
    SpecError,
    spawn_all,
    spawn_group,
)

__all__ = ["AUTO_INPUTS", "DEFAULT_BUDGET", "DEMO_SOURCE", "MAX_BUDGET", "MAX_COUNT", "AgentGroup", "Program",
           "RunSpec", "SpecError", "demo_spec", "load_spec", "spawn_all", "spawn_group"]
