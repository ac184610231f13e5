"""A metered instruction that runs out of energy leaves the stack as it found it.

The interpreter does not save a metered instruction's operands: their handlers
(avm.lang.ops) take them off the stack only once their work is done and paid for.
These tests hold every metered instruction to that, with operands big enough that
the work goes past the free allowance, and on random programs single-stepped.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import avm
from avm.lang.blocks import run_blocks
from avm.lang.frame import _METERED as METERED
from avm.lang.frame import Frame
from avm.lang.outcomes import BudgetExceeded
from tests.lang.programs import effect_results, inputs, programs

BIG = {"t": "ab" * 8192, "l": list(range(4000)), "m": {str(i): i for i in range(500)}}

# Each program: loads, then one metered instruction whose work is well past the free allowance.
CASES = {
    "concat texts": "load t\nload t\nconcat",
    "concat lists": "load l\nload l\nconcat",
    "format": 'push "{t}{t}"\nformat',
    "list": "load l\nload t\nlist 2",
    "map": 'push "k"\nload l\npush "j"\nload t\nmap 2',
    "set": 'load m\npush "k"\nload l\nset',
    "append": "load l\nload t\nappend",
    "add texts": "load t\nload t\nadd",
    "add lists": "load l\nload l\nadd",
    "eq": "load l\nload l\neq",
    "ne": "load l\nload l\nne",
    "call upper": "load t\ncall upper 1",
    "call split": 'load t\npush "b"\ncall split 2',
    "call join": 'load l\npush ","\ncall join 2',
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("runner", [Frame.run, run_blocks], ids=["interpreter", "blocks"])
def test_a_metered_instruction_that_runs_out_leaves_its_operands(name, runner):
    code = avm.compile(CASES[name] + "\nreturn\n")
    ops, _, costs = code.decoded()
    last = len(ops) - 2  # the metered instruction
    assert METERED[ops[last]]
    frame = Frame(code, budget=sum(costs[: last + 1]) / 1000, inputs=BIG)  # its fixed cost, and no more
    assert frame.run(quantum=sum(costs[:last])) == avm.Preempted(last)
    before = list(frame.stack)
    out = runner(frame)
    assert isinstance(out, BudgetExceeded) and out.pc == last == frame.pc
    assert len(frame.stack) == len(before) and all(x is y for x, y in zip(frame.stack, before, strict=True))
    frame.add_budget(10_000)  # it starts over, and finishes
    assert isinstance(runner(frame), avm.Done)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), inputs, st.lists(effect_results, min_size=1, max_size=4))
def test_single_stepping_never_loses_an_operand(source, inp, results):
    """Single-step with a budget of what each instruction asks for: every stop before an
    instruction leaves the stack as the previous step left it."""
    frame = Frame(avm.compile(source), budget=0, inputs=inp)
    for _ in range(500):
        before, pc = list(frame.stack), frame.pc
        out = frame.run()
        if isinstance(out, BudgetExceeded):
            if out.pc == pc:
                assert len(frame.stack) == len(before) and all(x is y for x, y in zip(frame.stack, before, strict=True))
            frame.add_budget(out.needed)
        elif isinstance(out, avm.Effect):
            frame.resume(results[frame.effects % len(results)])
        else:
            return
