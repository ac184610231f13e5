"""Interpreter speed: instructions per second on a tight loop and a mixed program.

Instructions are counted exactly: every program here is run with a budget
large enough never to run out, and the count is the number of loop iterations
times the instructions per iteration plus the fixed prologue and epilogue
(checked against the energy charged, which is the sum of per-instruction costs).

    python bench/vm_ops.py [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import avm

TIGHT = """
    push 0
    store i
loop:
    load i
    push 1
    add
    store i
    load i
    push {n}
    lt
    jump_if loop
    load i
    return
"""

MIXED = """
    push 0
    store i
    list 0
    store acc       # kept short: containers are values, so append copies
    push "alpha beta gamma"
    store words
loop:
    load words
    call upper 1
    call split 1
    store parts
    load parts
    push 1
    get
    push "-{{i}}"
    format
    concat
    store tag
    load acc
    load tag
    append
    call reverse 1
    push 0
    push 8
    call slice 3
    store acc
    push k
    load i
    map 1
    push k
    get
    pop
    load acc
    len
    pop
    load i
    push 1
    add
    store i
    load i
    push {n}
    lt
    jump_if loop
    load acc
    len
    return
"""


def count_instructions(code: avm.Code, n: int) -> int:
    """Prologue + n iterations of the loop body + epilogue, read off the code itself."""
    instrs = list(code.instructions())
    jump_at = max(i for i, (info, _) in enumerate(instrs) if info.name == "jump_if")
    loop_start = instrs[jump_at][1][0]
    body = jump_at - loop_start + 1
    return loop_start + n * body + (len(instrs) - jump_at - 1)


def measure(source: str, n: int, runner, repeats: int) -> tuple[float, int]:
    code = avm.compile(source.format(n=n))
    instructions = count_instructions(code, n)
    best = float("inf")
    for _ in range(repeats):
        frame = avm.Frame(code, budget=1e9)
        gc.collect()
        start = time.perf_counter()
        out = runner(frame)
        elapsed = time.perf_counter() - start
        assert isinstance(out, avm.Done), out
        best = min(best, elapsed)
    return instructions / best, instructions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures last")
    parser.add_argument("--n", type=int, default=300_000, help="loop iterations of the tight loop")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    figures: dict[str, float] = {}
    runners = {"": lambda f: f.run()}
    try:
        from avm.lang.blocks import run_blocks  # the optional basic-block compiler

        runners["block_"] = run_blocks
    except ImportError:
        pass
    for prefix, runner in runners.items():
        label = "block compiler" if prefix else "interpreter"
        rate, count = measure(TIGHT, args.n, runner, args.repeats)
        figures[f"{prefix}instructions_per_s"] = round(rate)
        print(f"{label:>15}: tight loop  {rate / 1e6:6.2f} M instructions/s  ({count:,} instructions, best of {args.repeats})")
        rate, count = measure(MIXED, args.n // 10, runner, args.repeats)
        figures[f"{prefix}mixed_instructions_per_s"] = round(rate)
        print(f"{label:>15}: mixed       {rate / 1e6:6.2f} M instructions/s  ({count:,} instructions, best of {args.repeats})")
    print("target: >= 5,000,000 instructions/s on the tight loop (interpreter)")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
