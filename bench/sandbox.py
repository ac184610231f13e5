"""The sandbox under attack: what each resource bomb reaches, and what bombs cost their neighbours.

For every bomb of the corpus (tests/sandbox/bombs.py) run alone in a frame
under budget 1,000 with the VM's default memory ceiling and instruction limit
(what an agent gets): the CPU seconds it took, the CPU seconds of its longest
single instruction (a third run, one instruction per `run()`: the longest the
bomb would hold the event loop) and the peak bytes it allocated (tracemalloc,
a second run). Then the
throughput of 1,000 healthy agents (a counting loop and a few short sleeps,
as agents waiting on a model spend their time) in one VM, alone and with 10
bomb agents beside them: ``healthy_slowdown`` is the ratio of the two wall
times. The machine may be shared, so the two fleets run in alternation
``--pairs`` times and the best time of each counts (one pair varied 0.9-1.7 s
alone on a loaded machine).

Run ``python bench/sandbox.py``; ``--json`` adds one JSON object as the last
line (``max_cpu_s``, ``max_bytes``, ``max_instruction_s``, ``healthy_slowdown``
and the per-bomb figures). Targets: max_cpu_s <= 1.0, max_bytes <= 64 MiB, healthy_slowdown <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import avm
from avm.lang.frame import Frame
from avm.runtime import VMSettings
from tests.sandbox.bombs import BOMBS, BUDGET

MEMORY_LIMIT = VMSettings().agent_memory_bytes
INSTRUCTION_LIMIT = VMSettings().quantum
HEALTHY = ("push 0\nstore n\nturn:\npush 0\nstore i\nloop:\nload i\npush 1\nadd\nstore i\nload i\npush 200\nlt\n"
           "jump_if loop\npush 0.01\nsleep\npop\nload n\npush 1\nadd\nstore n\nload n\npush 4\nlt\njump_if turn\n"
           "load n\nreturn\n")
FLEET_BOMBS = ("eq_shared_19", "contains_65536_copies", "text_17_levels", "regex_stars", "hold_distinct_texts",
               "json_parse_loop", "sort_big", "append_quadratic", "index_of_shared", "concat_shared")


def _frame(source: str) -> Frame:
    return Frame(avm.compile(source), budget=BUDGET, memory_limit=MEMORY_LIMIT, instruction_limit=INSTRUCTION_LIMIT)


def run_bomb(source: str) -> tuple[float, str]:
    frame = _frame(source)
    start = time.process_time()
    out = frame.run()
    return time.process_time() - start, type(out).__name__ if not isinstance(out, avm.Fault) else out.kind


def peak_bytes(source: str) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        _frame(source).run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def longest_instruction(source: str) -> float:
    """CPU seconds of the bomb's longest single instruction: a quantum of 1 milli-unit runs one a call."""
    frame = _frame(source)
    longest = 0.0
    while True:
        start = time.process_time()
        out = frame.run(1)
        longest = max(longest, time.process_time() - start)
        if not isinstance(out, avm.Preempted):
            return longest


async def fleet(bombs: int) -> float:
    start = time.perf_counter()
    async with avm.VM() as vm:
        for i in range(bombs):
            await vm.spawn(BOMBS[FLEET_BOMBS[i % len(FLEET_BOMBS)]][0], budget=BUDGET)
        healthy = [await vm.spawn(HEALTHY, budget=1000.0) for _ in range(1000)]
        for h in healthy:
            assert await h.result() == 4
        elapsed = time.perf_counter() - start
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    parser.add_argument("--pairs", type=int, default=3, help="alone/beside fleet runs, alternated (default 3)")
    args = parser.parse_args()
    rows = {}
    print(f"{'bomb':26} {'outcome':16} {'cpu s':>7} {'longest ms':>10} {'peak MiB':>9}")
    for name in sorted(BOMBS):
        source = BOMBS[name][0]
        cpu, outcome = run_bomb(source)
        peak = peak_bytes(source)
        longest = longest_instruction(source)
        rows[name] = {"cpu_s": round(cpu, 4), "longest_instruction_s": round(longest, 5), "peak_bytes": peak,
                      "outcome": outcome}
        print(f"{name:26} {outcome:16} {cpu:7.3f} {longest * 1000:10.2f} {peak / (1 << 20):9.1f}")
    alone = beside = float("inf")
    for _ in range(max(1, args.pairs)):
        alone = min(alone, trio.run(fleet, 0))
        beside = min(beside, trio.run(fleet, 10))
    slowdown = beside / alone
    print(f"1,000 healthy agents: {1000 / alone:,.0f} agents/s alone, {1000 / beside:,.0f} agents/s beside 10 bombs"
          f" (slowdown {slowdown:.2f})")
    result = {
        "max_cpu_s": round(max(r["cpu_s"] for r in rows.values()), 4),
        "max_bytes": max(r["peak_bytes"] for r in rows.values()),
        "max_instruction_s": round(max(r["longest_instruction_s"] for r in rows.values()), 5),
        "healthy_slowdown": round(slowdown, 3),
        "healthy_s_alone": round(alone, 3),
        "healthy_s_beside_bombs": round(beside, 3),
        "bombs": rows,
    }
    print(f"max_cpu_s {result['max_cpu_s']}  max_bytes {result['max_bytes'] / (1 << 20):.1f} MiB  "
          f"max_instruction_s {result['max_instruction_s']}  healthy_slowdown {result['healthy_slowdown']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
