"""Every bomb of the corpus ends in an explicit outcome under budget 1,000, with
its energy accounted: never a host exception, never more than the budget, and
a fault keeps the energy the instruction was charged."""

from __future__ import annotations

import pytest
import re2  # type: ignore[import-untyped]

import avm
from avm.lang import meter as M
from avm.lang import opcodes as O
from avm.lang.blocks import run_blocks
from avm.lang.builtins import scan_factor
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
    # (Under budget 1,000 the energy runs out first: looking at 65,536 items to join costs ~7,900.)
    source, _ = BOMBS["join_64Gi"]
    frame = Frame(avm.compile(source), budget=20 * BUDGET)
    out = frame.run()
    assert isinstance(out, Fault) and out.kind == "LimitError" and "join" in out.error
    fixed = sum(avm.compile(source).decoded()[2][: out.pc + 1])
    assert frame.used > fixed  # the repeat's 1 Mi characters, the list of 65,536, the join's look at it
    assert frame.energy_used == frame.used / 1000 > 0


def fixed_upper(src: str) -> int:
    """The table cost of the `call upper 1` of ``src`` (charged again each time it starts over)."""
    return avm.compile(src).decoded()[2][3]


def test_metered_work_that_does_not_fit_leaves_the_frame_intact_and_resumable():
    src = 'push "x"\npush 1048576\ncall repeat 2\ncall upper 1\nlen\nreturn\n'
    frame = Frame(avm.compile(src), budget=2.0)
    out = frame.run()
    assert isinstance(out, BudgetExceeded) and out.pc == 2  # the repeat: 1 Mi characters cost ~33 energy more
    assert frame.stack == ["x", 1048576] and frame.used <= frame.budget
    fixed = avm.compile(src).decoded()[2][2]
    assert out.needed * 1000 == fixed + (1 << 20) // M.BYTES_PER_MILLI - M.FREE  # all it needs, exactly
    frame.add_budget(out.needed)
    out = frame.run()
    assert isinstance(out, BudgetExceeded) and out.pc == 3 and frame.stack == ["x" * (1 << 20)]
    charged = frame.used
    frame.add_budget(out.needed)
    out = frame.run()
    assert isinstance(out, BudgetExceeded) and out.pc == 3 and frame.used == charged + fixed_upper(src)
    # the upper announces its copy and its case mapping at once, before doing either: none of it is charged
    assert out.needed * 1000 == fixed_upper(src) + (1 << 20) // M.BYTES_PER_MILLI + (1 << 18) * M.SCAN_MILLI - M.FREE
    frame.add_budget(out.needed)
    assert frame.run() == avm.Done(1048576)


def test_work_is_charged_by_its_size():
    def used(src: str) -> int:
        frame = Frame(avm.compile(src), budget=1000 * BUDGET)
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


def test_work_on_text_that_is_not_ascii_is_charged_by_its_slower_speed():
    # upper of "\u00df" takes ~20 ns a character, of "a" ~0.3: 16 milli-units a character against a quarter
    def used(ch: str, op: str) -> int:
        src = f'push "{ch}"\npush 16384\ncall repeat 2\nstore t\n{op}return\n'
        frame = Frame(avm.compile(src), budget=BUDGET)
        assert isinstance(frame.run(), avm.Done)
        return frame.used

    upper = "load t\ncall upper 1\nlen\n"
    assert used("\\u00df", upper) - used("a", upper) == 16384 * 16 - 16384 // 4
    regex = 'push "b+"\nload t\ncall regex_match 2\n'
    factor = scan_factor(re2.compile("b+"))  # the pattern's own constant (see avm.lang.builtins._searched)
    assert used("\\u00df", regex) - used("a", regex) == factor * 3 * 16384 * M.SCAN_MILLI


def test_small_values_cost_exactly_the_table():
    src = 'push "ab"\npush "cd"\nconcat\npush 3\ncall repeat 2\nlist 1\npush 1\nlist 1\nlen\nreturn\n'
    code = avm.compile(src)
    frame = Frame(code, budget=BUDGET)
    assert frame.run() == avm.Done(1)
    assert frame.used == sum(code.decoded()[2])
    # Comparing two lists of one item walks two parts (the lists, the pair of items): one past the free allowance.
    src = "push 1\nlist 1\npush 1\nlist 1\neq\nreturn\n"
    code = avm.compile(src)
    frame = Frame(code, budget=BUDGET)
    assert frame.run() == avm.Done(True)
    assert frame.used == sum(code.decoded()[2]) + 2 * M.NODE_MILLI - M.FREE


# --- work done is always charged; one instruction's work is bounded ---

SHARED = BOMBS["eq_shared_19"][0]  # one eq walks 2**20 parts: ~200,000 energy of work


def test_a_walk_cut_short_by_the_budget_charges_what_it_walked_and_continuing_pays_again():
    frame = Frame(avm.compile(SHARED), budget=300.0)  # building the value takes ~180
    out = frame.run()
    assert isinstance(out, BudgetExceeded) and avm.compile(SHARED).decoded()[0][out.pc] == O.EQ
    assert frame.used == frame.budget  # the walk used up what was left, and that stays charged
    assert len(frame.stack) == 2 and frame.stack[0] is frame.stack[1]  # the operands put back: it starts over
    assert out.needed > 25  # at least what it walked and the part it could not pay for
    for _ in range(3):  # each continue walks again, and pays for it: no free work
        before = frame.used
        frame.add_budget(20.0)
        out = frame.run()
        assert isinstance(out, BudgetExceeded) and frame.used == frame.budget == before + 20_000
    assert frame.energy_used == 360.0


def test_one_instruction_may_do_at_most_its_frame_instruction_limit_of_work():
    code = avm.compile(SHARED)
    frame = Frame(code, budget=BUDGET, instruction_limit=20.0)  # building the value: at most ~15 an instruction
    out = frame.run()
    assert isinstance(out, Fault) and out.kind == "LimitError" and "limit of 20 energy" in out.error
    assert code.decoded()[0][out.pc] == O.EQ
    roomier = Frame(code, budget=BUDGET, instruction_limit=30.0)
    assert isinstance(roomier.run(), Fault)
    assert roomier.used - frame.used == 10_000  # the work it did, to the limit, is charged
    # the limit belongs to the frame, not to the run: preempting it every few instructions changes nothing
    sliced = Frame(code, budget=BUDGET, instruction_limit=20.0)
    while isinstance(out2 := sliced.run(quantum=300), avm.Preempted):
        pass
    assert out2 == out and sliced.used == frame.used
    # without a limit the same instruction may spend the budget
    assert isinstance(Frame(code, budget=BUDGET).run(), BudgetExceeded)


def test_the_block_compiler_agrees_with_the_interpreter_on_the_instruction_limit():
    code = avm.compile(BOMBS["text_17_levels"][0])
    a = Frame(code, budget=BUDGET, instruction_limit=2.0)
    b = Frame(code, budget=BUDGET, instruction_limit=2.0)
    out = a.run()
    assert isinstance(out, Fault) and out.kind == "LimitError"
    assert run_blocks(b) == out and b.used == a.used and b.stack == a.stack


async def test_agents_may_do_at_most_a_quantum_of_work_in_one_instruction():
    async with avm.VM(quantum=20.0) as vm:
        bomb = await vm.spawn(SHARED, budget=BUDGET)
        healthy = await vm.spawn("push 40\ncall range 1\ncall sum 1\nreturn\n", budget=BUDGET)
        assert await healthy.result() == 780
        try:
            await bomb.result()
        except avm.AgentError:
            pass
        assert bomb.state.value == "failed" and "limit of 20 energy" in bomb.detail
        alone = Frame(avm.compile(SHARED), budget=BUDGET, instruction_limit=20.0)
        assert isinstance(alone.run(), Fault)
        assert bomb.energy_used == alone.energy_used  # the eq's 20 of work on top of building the value


def test_a_pattern_that_tracks_capture_groups_is_charged_for_them():
    # RE2 is linear in the text, with a constant that grows with the program and its groups: "(.*)" x 20
    # then "$" ran ~870 ns a character (20 s of CPU under budget 1,000 when charged by length alone).
    def used(pattern: str) -> int:
        src = f'push "a"\npush 500\ncall repeat 2\nstore t\npush "{pattern}"\nload t\ncall regex_match 2\nreturn\n'
        frame = Frame(avm.compile(src), budget=BUDGET)
        assert isinstance(frame.run(), avm.Done)
        return frame.used

    heavy, light = used("(.*)" * 20 + "$"), used("a$")
    assert scan_factor(re2.compile("(.*)" * 20 + "$")) > 300 * scan_factor(re2.compile("a$"))
    assert heavy - light >= 300 * 500 * M.SCAN_MILLI


def test_what_effects_hand_an_agent_counts_toward_its_memory_ceiling():
    # A receiver appending each message it gets held 205 MiB under an 8 MiB ceiling: only values the
    # program made were counted, never the results of recv, tools or the LLM.
    src = "list 0\nstore xs\nloop:\npush null\nrecv\nstore m\nload xs\nload m\nappend\nstore xs\njump loop\n"
    frame = Frame(avm.compile(src), budget=100_000, memory_limit=1 << 20)
    out = frame.run()
    for i in range(50):
        assert isinstance(out, avm.Effect), out
        frame.resume(f"{i:02d}" * 100_000)  # 200 KB each, all distinct
        out = frame.run()
        if not isinstance(out, avm.Effect):
            break
    assert isinstance(out, Fault) and out.kind == "MemoryLimit" and "recv" in out.error, out
    assert 5 <= i <= 8  # past 1 MiB held, not at the first message and not 10 MB later
    small = Frame(avm.compile(src), budget=100_000, memory_limit=1 << 20)
    out = small.run()
    for i in range(200):  # small messages that the program drops are never a problem
        small.resume({"n": i, "text": "short"})
        out = small.run()
    assert isinstance(out, avm.Effect)


def test_comparing_long_texts_is_charged_by_their_length():
    # Lists of references to 1 Mi texts that differ only at the end: each comparison is a 1 MB memcmp,
    # and at one part (or one item looked at) each, contains and eq ran 20 s under budget 1,000.
    setup = ('push "a"\npush 1048575\ncall repeat 2\nstore p\nload p\npush "x"\nconcat\nstore a\n'
             'load p\npush "y"\nconcat\nstore b\n')
    for body in ("load a\nlist 1\npush 2000\ncall repeat 2\nload b\ncall contains 2\nreturn\n",
                 "load a\nlist 1\npush 2000\ncall repeat 2\nload b\nlist 1\npush 2000\ncall repeat 2\neq\nreturn\n",
                 "load a\nload b\neq\nreturn\n"):
        frame = Frame(avm.compile(setup + body), budget=100_000)
        assert isinstance(frame.run(), avm.Done)
        compares = 2000 if "contains" in body else 1  # eq stops at the first pair that differs
        assert frame.used >= compares * (1048576 >> 5), body  # 1 milli-unit per 32 characters compared


@pytest.mark.parametrize("char, shift", [("a", 5), ("\\u4e00", 1)])
def test_ordering_and_comparing_texts_is_charged_by_what_the_comparisons_read(char, shift):
    # Two 1 Mi texts that differ at the end: every comparison of the two reads them whole (two bytes a
    # character, in a loop rather than a memcmp, for CJK text). At n log n sorting steps alone a sort of
    # 4,096 of them ran 1.2 s under budget 1,000, and at an instruction's fixed cost lt and ge on CJK
    # texts 1.2-1.4 s.
    setup = (f'push "{char}"\npush 1048575\ncall repeat 2\nstore p\nload p\npush "x"\nconcat\nstore a\n'
             'load p\npush "y"\nconcat\nstore b\npush null\nstore p\n')
    n = 1 << 20

    def cost(body: str, run=Frame.run) -> int:
        frame = Frame(avm.compile(setup + body), budget=1_000_000)
        assert isinstance(run(frame), avm.Done)
        return frame.used

    base = cost("push 0\nreturn\n")
    for body, least in (("load a\nload b\ncall max 2\nreturn\n", (2 * n) >> shift),
                        ("load b\nload a\nlist 2\ncall min 1\nreturn\n", (2 * n) >> shift),
                        ("load b\nload a\nlist 2\npush 4\ncall repeat 2\ncall sort 1\nreturn\n",
                         (8 * n * (4 + 6)) >> shift),
                        ("load a\nload b\nlt\nreturn\n", n >> shift),
                        ("load a\nload b\nge\nreturn\n", n >> shift),
                        ("load a\nload b\neq\nreturn\n", n >> 5)):  # equality is a memcmp whatever the kind
        for run in (Frame.run, run_blocks):
            # The first FREE milli-units are in the fixed cost
            assert cost(body, run) - base >= least - M.FREE, (body, run)
