"""Energy invariants over random programs (hypothesis)."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import avm
from avm.lang.frame import _METERED as METERED
from avm.lang.frame import Frame
from avm.lang.outcomes import BudgetExceeded, Effect
from tests.lang.drive import drive
from tests.lang.programs import effect_results, inputs, programs

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(programs(), inputs, st.lists(effect_results, min_size=1, max_size=4), st.integers(0, 40_000))
def test_energy_never_exceeds_budget(source, inp, results, budget_milli):
    frame = Frame(avm.compile(source), budget=budget_milli / 1000, inputs=inp)
    trace = []
    out = drive(frame, results, trace)
    for step in trace:  # every outcome on the way (the loop once asserted the final frame each time)
        if isinstance(step, BudgetExceeded):
            assert step.energy_used <= step.budget
    assert frame.used <= frame.budget
    if isinstance(out, BudgetExceeded):
        assert frame.used + round(out.needed * 1000) > frame.budget
        assert round(out.energy_used * 1000) == frame.used  # (energy_used is milli / 1000: a float)


@SETTINGS
@given(programs(), inputs, st.lists(effect_results, min_size=1, max_size=4))
def test_energy_is_the_sum_of_the_costs_of_the_instructions_executed(source, inp, results):
    """Single-step the real interpreter (a budget of exactly what one instruction asks for at a
    time) and check the charge after every step against the cost table. An instruction whose work
    grows with its operands (see avm.lang.meter) may ask for more than its fixed cost; past the free
    allowance it is charged its fixed cost plus its work, and a run that stops it short charges the
    work it did and starts it over, so single-stepping such work costs at least a run in one go."""
    code = avm.compile(source)
    ops, _, costs = code.decoded()[:3]
    frame = Frame(code, budget=0, inputs=inp)
    expected = 0  # the energy given, exactly what each step asked for
    extra = False  # some instruction asked for more than its fixed cost
    executed = 0
    effects = 0
    while True:
        out = frame.run()
        if isinstance(out, BudgetExceeded):
            needed = round(out.needed * 1000)
            assert out.pc == frame.pc and needed >= costs[frame.pc]
            if needed != costs[frame.pc]:
                assert METERED[ops[frame.pc]], f"op {ops[frame.pc]} is not metered but asked for {needed}"
                extra = True
            if executed >= 3000:
                break
            frame.add_budget(needed / 1000)
            expected += needed
            executed += 1
            continue
        assert frame.used == expected if not extra else frame.used <= expected
        if isinstance(out, Effect):
            effects += 1
            if effects > 30:
                break
            frame.resume(results[effects % len(results)])
            continue
        break  # Done, Fault or Stalled
    assert frame.used == expected if not extra else frame.used <= expected

    # The same program run in one go with a large budget charges the same (no more, when metered work
    # was stopped short and redone while single-stepping).
    whole = Frame(code, budget=frame.used / 1000 + 1000, inputs=inp)
    effects = 0
    while True:
        out2 = whole.run()
        if isinstance(out2, Effect) and effects < 30:
            effects += 1
            whole.resume(results[effects % len(results)])
            continue
        break
    # (A program that reads its own energy, with energy_check or observe, may rightly take another path
    # under a larger budget: the comparison holds only for programs that do not.)
    budget_blind = "energy_check" not in source and "observe" not in source
    if executed < 3000 and effects <= 30 and budget_blind:
        assert type(out2) is type(out)
        if extra:
            assert whole.used <= frame.used
        else:
            assert whole.used == frame.used


def _drive_in_quanta(frame: Frame, results: list, quantum: int) -> tuple[object, int]:
    """Like drive(), but each run() is cut into quanta; returns the outcome and how many preemptions."""
    from avm.lang.outcomes import Preempted

    preemptions = 0
    while True:
        out = frame.run(quantum)
        if isinstance(out, Preempted):
            assert frame.status == "ready"
            assert out.pc == frame.pc
            preemptions += 1
            continue
        if not isinstance(out, Effect) or frame.effects >= 50:
            return out, preemptions
        frame.resume(results[frame.effects % len(results)] if results else None)


@SETTINGS
@given(programs(), inputs, st.lists(effect_results, min_size=1, max_size=4), st.integers(0, 40_000),
       st.integers(0, 3_000))
def test_preemption_by_quantum_changes_nothing_the_program_can_see(source, inp, results, budget_milli, quantum):
    """A run cut into quanta reaches the same outcome, energy and snapshot as one
    uninterrupted run: the quantum never shows through energy_check or observe."""
    code = avm.compile(source)
    whole = Frame(code, budget=budget_milli / 1000, inputs=inp)
    expected = drive(whole, results)
    cut = Frame(code, budget=budget_milli / 1000, inputs=inp)
    out, preemptions = _drive_in_quanta(cut, results, quantum)
    assert out == expected
    assert cut.used == whole.used
    assert cut.snapshot() == whole.snapshot()
    if quantum == 0:
        assert preemptions == 0


def test_a_long_loop_is_preempted_every_quantum_and_still_counts_right():
    source = ("push 0\nstore i\n"
              "loop:\nload i\npush 1\nadd\nstore i\nload i\npush 1000\nlt\njump_if loop\nload i\nreturn\n")
    frame = Frame(avm.compile(source), budget=10_000)
    out, preemptions = _drive_in_quanta(frame, [], 50)  # 50 milli: about one loop iteration per run
    assert out == avm.Done(1000)
    assert preemptions >= 900
    tiny = Frame(avm.compile(source), budget=10_000)
    out, _ = _drive_in_quanta(tiny, [], 1)  # below every instruction's cost: one instruction per run
    assert out == avm.Done(1000) and tiny.used == frame.used
