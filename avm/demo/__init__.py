"""The built-in demo fleet that `avm run` runs with no spec: its files and its data.

Three groups of agents share one long system prompt (`system_prompt.md`, with
``{name}``, ``{role}``, ``{topic}`` and ``{index}`` filled from each agent's
inputs) and the offline tools ``search`` and ``calculate``:

- **coordinators** (about 1.5%, interactive priority, restarted on a fault):
  plan their subject with the model, `spawn` one worker (`worker.avm`, given
  to them as the ref input ``worker``) per part with a slice of their budget,
  collect the workers' progress messages and end reports from their mailbox,
  `delegate` a review to one more worker, and combine the findings;
- **analysts** (about 20%, background priority, in pairs): compute a figure
  with ``calculate``, have the model explain it, then send their figure to
  their partner by name (``analyst-<i xor 1>``) and wait a few seconds for
  the partner's;
- **researchers** (the rest, normal priority): research a topic with the
  model, running the tools it calls, then challenge their answer for
  ``rounds`` more turns. They do not watch their energy: the few given a deep
  dive (``rounds`` 6, one researcher in 160) run out of budget, and the run
  summary shows them as budget_exceeded.

Workers, analysts and coordinators check their energy before each model turn
and wrap up early rather than run out. `avm.app.spec.demo_spec` builds the
`RunSpec`; this module holds the paths, the layout, the inputs and budgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SYSTEM_PROMPT = HERE / "system_prompt.md"
COORDINATOR = HERE / "coordinator.avm"
WORKER = HERE / "worker.avm"
ANALYST = HERE / "analyst.avm"
RESEARCHER = HERE / "researcher.avm"
PROGRAMS = {"coordinator": COORDINATOR, "worker": WORKER, "analyst": ANALYST, "researcher": RESEARCHER}

DESCRIPTION = ("the built-in demo: coordinators delegating to workers, analysts trading figures in pairs, "
               "researchers using tools, all on one shared prompt, on the embedded LLM server")

# Energy (in the seed's units). A model turn with its tool calls costs about 15 here; see each program.
RESEARCHER_BUDGET = 80.0  # a researcher needs about 42 plus 9 a round: 0-2 rounds fit, a deep dive of 6 does not
ANALYST_BUDGET = 80.0  # needs about 55
WORKER_BUDGET = 60.0  # needs about 45; a slice of the coordinator's budget, unspent energy goes back
COORDINATOR_BUDGET = 800.0  # its own work (about 170) plus PARTS + 1 workers at WORKER_BUDGET each
PARTS = 8  # workers a coordinator spawns at once (plus one reviewer it delegates to)
COORDINATOR_SHARE = 0.015
ANALYST_SHARE = 0.2
DEEP_DIVE_EVERY = 160  # researcher i dives deep (more rounds than its budget allows) when i % 160 == 80
DEEP_DIVE_ROUNDS = 6

SUBJECTS = (
    "octopus hearts", "octopus taste", "ocean tides", "spring tides", "ancient honey", "the bee waggle dance",
    "glacier fresh water", "lightning heat", "the speed of light", "garbage collector generations",
    "moon gravity", "copper blood",
)
ANGLES = ("history", "measurement", "open questions", "common myths", "practical uses", "recent findings",
          "the numbers", "how to explain it")


def vm_settings() -> dict[str, Any]:
    """The demo's VM settings: some model latency, and quick hibernation of the agents waiting for messages."""
    return {
        "hibernate_after_s": 0.25,  # coordinators and analysts waiting on messages become snapshots
        "llm_server": {"latency_ms": 20.0, "jitter_ms": 20.0, "jitter": "lognormal", "seed": 1},
    }


@lru_cache(maxsize=1)
def system_prompt() -> str:
    return SYSTEM_PROMPT.read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Layout:
    """How many agents of each group the host spawns."""

    coordinators: int
    analysts: int
    researchers: int

    @property
    def agents(self) -> int:
        return self.coordinators + self.analysts + self.researchers

    @property
    def workers(self) -> int:
        """Agents the coordinators spawn on top (one per part, plus a reviewer)."""
        return self.coordinators * (PARTS + 1)


def layout(agents: int) -> Layout:
    """The groups for ``agents`` agents spawned by the host (``agents`` >= 1).

    About 1.5% coordinators (at least one from 10 agents), an even number of
    analysts near 20% (at least two from 4 agents), the rest researchers.
    """
    coordinators = round(agents * COORDINATOR_SHARE)
    if agents >= 10:
        coordinators = max(1, coordinators)
    analysts = 2 * round(agents * ANALYST_SHARE / 2)
    if agents >= 4:
        analysts = max(2, analysts)
    return Layout(coordinators, analysts, agents - coordinators - analysts)


def topic(i: int) -> str:
    return f"{SUBJECTS[i % len(SUBJECTS)]}: {ANGLES[(i // len(SUBJECTS)) % len(ANGLES)]}"


def researcher_inputs(n: int) -> tuple[dict[str, Any], ...]:
    return tuple({"topic": topic(i), "role": "researcher",
                  "rounds": DEEP_DIVE_ROUNDS if i % DEEP_DIVE_EVERY == DEEP_DIVE_EVERY // 2 else (i * 7) % 3}
                 for i in range(n))


def analyst_inputs(n: int) -> tuple[dict[str, Any], ...]:
    return tuple({"topic": topic(i + 5), "role": "analyst", "base": 100 + (i * 37) % 900,
                  "growth": (i * 13) % 21 - 5} for i in range(n))


def coordinator_inputs(n: int) -> tuple[dict[str, Any], ...]:
    out = []
    for i in range(n):
        subject = SUBJECTS[(i * 5) % len(SUBJECTS)]
        parts = [f"{subject}: {ANGLES[(i + k) % len(ANGLES)]}" for k in range(PARTS)]
        out.append({"topic": subject, "role": "coordinator", "parts": parts, "worker_budget": WORKER_BUDGET})
    return tuple(out)


__all__ = ["ANALYST", "COORDINATOR", "DESCRIPTION", "HERE", "PROGRAMS", "RESEARCHER", "SYSTEM_PROMPT", "WORKER",
           "Layout", "analyst_inputs", "coordinator_inputs", "layout", "researcher_inputs", "system_prompt",
           "topic", "vm_settings"]
