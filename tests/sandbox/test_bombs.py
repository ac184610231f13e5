"""Every bomb of the corpus ends in an explicit outcome under budget 1,000, with
its energy accounted: never a host exception, never more than the budget, and
a fault keeps the energy the instruction was charged."""

from __future__ import annotations

import pytest

import avm
from avm.lang.frame import Frame
from avm.lang.outcomes import BudgetExceeded, Fault
from tests.sandbox.bombs import BOMBS, BUDGET

MEMORY_LIMIT = 8 << 20


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_each_bomb_ends_in_its_outcome_within_the_budget(name):
    source, allowed = BOMBS[name]
    frame = Frame(avm.compile(source), budget=BUDGET, memory_limit=MEMORY_LIMIT)
    out = frame.run()
    kind = "budget" if isinstance(out, BudgetExceeded) else out.kind if isinstance(out, Fault) else repr(out)
    assert kind in allowed, out
    assert 0 < frame.used <= frame.budget
    if isinstance(out, BudgetExceeded):
        assert frame.used + round(out.needed * 1000) > frame.budget


def test_a_size_limit_fault_keeps_the_energy_charged():
    # The reproduction: the join asks for 64 GiB; it faults before allocating, and the
    # energy of everything before it, and of the work it did, stays charged.
    source, _ = BOMBS["join_64Gi"]
    frame = Frame(avm.compile(source), budget=BUDGET)
    out = frame.run()
    assert isinstance(out, Fault) and out.kind == "LimitError" and "join" in out.error
    fixed = sum(avm.compile(source).decoded()[2][: out.pc + 1])
    assert frame.used > fixed  # the repeat's 1 Mi characters, the list of 65,536, the join's look at it
    assert frame.energy_used == frame.used / 1000 > 0


def test_metered_work_that_does_not_fit_leaves_the_frame_intact_and_resumable():
    src = 'push "x"\npush 1048576\ncall repeat 2\ncall upper 1\nlen\nreturn\n'
    frame = Frame(avm.compile(src), budget=2.0)
    out = frame.run()
    assert isinstance(out, BudgetExceeded) and out.pc == 2  # the repeat: 1 Mi characters cost ~1 energy more
    assert frame.stack == ["x", 1048576] and frame.used <= frame.budget
    frame.add_budget(out.needed)
    out = frame.run()
    assert isinstance(out, BudgetExceeded) and out.pc == 3
    frame.add_budget(10)
    assert frame.run() == avm.Done(1048576)


def test_work_is_charged_by_its_size():
    def used(src: str) -> int:
        frame = Frame(avm.compile(src), budget=BUDGET)
        assert isinstance(frame.run(), avm.Done)
        return frame.used

    regex = 'push "a"\npush {n}\ncall repeat 2\nstore t\npush "b+"\nload t\ncall regex_match 2\nreturn\n'
    eq = "push {n}\ncall range 1\nstore l\nload l\nload l\neq\nreturn\n"
    contains = "push {n}\ncall range 1\npush -1\ncall contains 2\nreturn\n"
    text = "push {n}\ncall range 1\ncall text 1\nreturn\n"
    # 60,000 characters scanned: about 2 energy more; 60,000 parts visited: tens of energy more
    for program, more in ((regex, 1_500), (eq, 50_000), (contains, 50_000), (text, 50_000)):
        small, big = used(program.format(n=10)), used(program.format(n=60_000))
        assert big > small + more, program


def test_small_values_cost_exactly_the_table():
    src = 'push "ab"\npush "cd"\nconcat\npush 3\ncall repeat 2\nlist 1\npush 1\nlist 1\neq\nreturn\n'
    code = avm.compile(src)
    frame = Frame(code, budget=BUDGET)
    assert frame.run() == avm.Done(False)
    assert frame.used == sum(code.decoded()[2])
