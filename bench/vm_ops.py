"""Micro benchmark of the agent VM: instructions per second.

Two programs, each run by the interpreter (`avm.Frame(...).run()`) and by the
basic-block compiler (`avm.lang.blocks.run_blocks`):

- tight: a counter loop of 8 instructions per iteration
  (load, push, add, store, load, push, lt, jump_if);
- mixed: a loop of loads and stores, builtin calls (upper, split, keys), text
  (concat, format) and list and map operations (list, map, get, set, len,
  append), plus mod and arithmetic.

Instructions are counted exactly: each program is a prologue, a loop body run
N times and an epilogue, so it executes len(prologue) + N * len(body) +
len(epilogue) instructions. The count is checked against the energy the frame
was charged, which must equal the same instructions' costs from the cost table
(the budget is exactly that energy, so a miscount cannot go unnoticed), and
against the program's result. Each figure is the best of a few runs.

    python bench/vm_ops.py            readable lines
    python bench/vm_ops.py --json     ... and one JSON object of the figures, last
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import avm

try:
    from avm.lang.blocks import BlockProgram, run_blocks
except ImportError:  # the block compiler is optional
    BlockProgram = None  # type: ignore[assignment,misc]
    run_blocks = None  # type: ignore[assignment]

TIGHT_PROLOGUE = ["push 0", "store i"]
TIGHT_BODY = ["load i", "push 1", "add", "store i", "load i", "push {n}", "lt", "jump_if loop"]
TIGHT_EPILOGUE = ["load i", "return"]

MIXED_PROLOGUE = [
    "push 0", "store i",
    'push "alpha beta gamma"', "store text",
    "map 0", "store seen",
    "list 0", "store last",
]
MIXED_BODY = [
    "load text", "call upper 1", "call split 1", "store parts",   # builtins
    "load parts", "load i", "push 3", "mod", "get", "store w",    # list get
    "load w", 'push "-"', "concat", "store tag",                  # text
    'push "item {{i}}: {{tag}}"', "format", "store line",          # format from variables
    "load parts", "load line", "append", "len", "store count",    # list append, len
    "load seen", "load w", "load count", "set", "store seen",     # map set
    'push "i"', "load i", 'push "w"', "load w", "map 2",          # map literal
    "load line", "list 2", "store last",                          # list literal
    "load i", "push 1", "add", "store i",
    "load i", "push {n}", "lt", "jump_if loop",
]
MIXED_EPILOGUE = ["load seen", "call keys 1", "len", "return"]


@dataclass
class Program:
    name: str
    prologue: list[str]
    body: list[str]
    epilogue: list[str]
    expect: Callable[[int], Any]  # the program's result for n iterations

    def source(self, n: int) -> str:
        lines = [*self.prologue, "loop:", *self.body, *self.epilogue]
        return "\n".join(line.format(n=n) for line in lines) + "\n"

    def instructions(self, n: int) -> int:
        return len(self.prologue) + n * len(self.body) + len(self.epilogue)

    def energy(self, code: avm.Code, n: int) -> int:
        """Milli-units the run must cost: the same count, weighted by the cost table."""
        costs = code.decoded()[2]
        p, b = len(self.prologue), len(self.body)
        assert len(costs) == p + b + len(self.epilogue), "the compiler added instructions"
        return sum(costs[:p]) + n * sum(costs[p : p + b]) + sum(costs[p + b :])


TIGHT = Program("tight", TIGHT_PROLOGUE, TIGHT_BODY, TIGHT_EPILOGUE, lambda n: n)
MIXED = Program("mixed", MIXED_PROLOGUE, MIXED_BODY, MIXED_EPILOGUE, lambda n: min(n, 3))


def measure(program: Program, n: int, runner: Callable[[avm.Frame], Any], repeats: int) -> tuple[float, float, int]:
    """(instructions per second, best seconds, instructions) over `repeats` runs."""
    code = avm.compile(program.source(n))
    count = program.instructions(n)
    energy = program.energy(code, n)
    runner(avm.Frame(code, budget=min(energy, 50_000) / 1000))  # warm up (and compile the blocks once)
    best = float("inf")
    for _ in range(repeats):
        frame = avm.Frame(code, budget=energy / 1000)  # exactly enough: a miscount would show
        gc.collect()
        start = time.perf_counter()
        out = runner(frame)
        elapsed = time.perf_counter() - start
        if out != avm.Done(program.expect(n)):
            raise SystemExit(f"{program.name}: unexpected outcome {out!r}")
        if frame.used != energy:
            raise SystemExit(f"{program.name}: charged {frame.used} milli-units, expected {energy}")
        best = min(best, elapsed)
    return count / best, best, count


def compile_ms(program: Program, n: int) -> float:
    """Milliseconds to generate and compile the blocks of a program (no cache)."""
    assert BlockProgram is not None
    code = avm.compile(program.source(n))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        BlockProgram(code)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure; the best is reported (default 5)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the iteration counts (default 1)")
    args = parser.parse_args(argv)

    runs: list[tuple[str, Program, int, Callable[[avm.Frame], Any]]] = [
        ("instructions_per_s", TIGHT, 500_000, avm.Frame.run),
        ("mixed_instructions_per_s", MIXED, 30_000, avm.Frame.run),
    ]
    if run_blocks is not None:
        runs += [
            ("block_instructions_per_s", TIGHT, 4_000_000, run_blocks),
            ("block_mixed_instructions_per_s", MIXED, 60_000, run_blocks),
        ]

    print(f"avm {avm.__version__} vm_ops on Python {platform.python_version()} ({platform.machine()}), "
          f"best of {args.repeats}")
    figures: dict[str, Any] = {}
    for key, program, n, runner in runs:
        n = max(1, int(n * args.scale))
        rate, best, count = measure(program, n, runner, args.repeats)
        figures[key] = round(rate)
        engine = "blocks     " if runner is not avm.Frame.run else "interpreter"
        print(f"  {program.name:5} {engine}  {rate / 1e6:7.2f} M instructions/s   "
              f"({count:,} instructions = {len(program.prologue)} + {n:,} x {len(program.body)} "
              f"+ {len(program.epilogue)}, in {best:.3f} s)")
    if run_blocks is not None:
        for program in (TIGHT, MIXED):
            figures[f"block_compile_ms_{program.name}"] = round(compile_ms(program, 10), 3)
        figures["block_speedup"] = round(figures["block_instructions_per_s"] / figures["instructions_per_s"], 2)
        figures["block_mixed_speedup"] = round(
            figures["block_mixed_instructions_per_s"] / figures["mixed_instructions_per_s"], 2)
        print(f"  block compiler: {figures['block_speedup']}x on tight, {figures['block_mixed_speedup']}x on mixed; "
              f"compiling the blocks takes {figures['block_compile_ms_tight']:.2f} ms (tight), "
              f"{figures['block_compile_ms_mixed']:.2f} ms (mixed)")
    target = 5_000_000
    verdict = "meets" if figures["instructions_per_s"] >= target else "misses"
    print(f"  interpreter {verdict} the target of {target / 1e6:.0f} M instructions/s on the tight loop")
    if args.json:
        figures["python"] = platform.python_version()
        print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
