"""Snapshots: restore anywhere, continue identically; bad snapshots are refused."""

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import avm
from avm.lang.frame import Frame
from avm.lang.outcomes import BudgetExceeded, Effect
from tests.lang.drive import MAX_EFFECTS, drive
from tests.lang.programs import effect_results, inputs, programs

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BUDGET = 30_000  # milli


@SETTINGS
@given(programs(), inputs, st.lists(effect_results, min_size=1, max_size=4), st.integers(0, BUDGET))
def test_restore_at_any_point_gives_the_identical_outcome_and_energy(source, inp, results, cut):
    # A program that reads its own energy (energy_check, observe) rightly takes another path when it
    # ran part of the way under a smaller budget: the identity holds for programs that do not.
    assume("energy_check" not in source and "observe" not in source)
    code = avm.compile(source)
    straight = Frame(code, budget=BUDGET / 1000, inputs=inp)
    expected = drive(straight, results)

    # Stop anywhere by giving a smaller budget, snapshot, restore, top up, continue.
    frame = Frame(code, budget=cut / 1000, inputs=inp)
    out = drive(frame, results)
    if isinstance(out, BudgetExceeded) and frame.budget < BUDGET:
        data = frame.snapshot()
        restored = Frame.restore(code, data)
        assert restored.snapshot() == data
        restored.add_budget((BUDGET - restored.budget) / 1000)
        out = drive(restored, results)
        frame = restored
    assert out == expected
    assert frame.used == straight.used
    if frame.budget == straight.budget:
        assert frame.snapshot() == straight.snapshot()


@SETTINGS
@given(programs(), inputs, st.lists(effect_results, min_size=1, max_size=4), st.integers(0, 20))
def test_restore_while_an_effect_is_outstanding(source, inp, results, at_effect):
    code = avm.compile(source)
    straight = Frame(code, budget=BUDGET / 1000, inputs=inp)
    expected = drive(straight, results)
    frame = Frame(code, budget=BUDGET / 1000, inputs=inp)
    while True:
        out = frame.run()
        if not isinstance(out, Effect) or frame.effects >= MAX_EFFECTS:
            break
        if frame.effects == at_effect:
            frame = Frame.restore(code, frame.snapshot())
            assert frame.pending == out
        frame.resume(results[frame.effects % len(results)])
    assert out == expected and frame.used == straight.used


def test_same_program_and_results_give_byte_identical_snapshots():
    code = avm.compile('push "hi {name}"\nformat\nllm\nstore r\npush k\nload r\nmap 1\nreturn')
    snaps = []
    for _ in range(2):
        f = Frame(code, budget=50, inputs={"name": "x", "z": {"b": 1, "a": [1.5, None]}})
        f.run()
        s1 = f.snapshot()
        f.resume("reply")
        f.run()
        snaps.append((s1, f.snapshot()))
    assert snaps[0] == snaps[1]


def test_snapshot_for_another_code_is_refused():
    a = avm.compile("push 1\nreturn")
    b = avm.compile("push 2\nreturn")
    data = Frame(a).snapshot()
    with pytest.raises(avm.SnapshotError, match="snapshot is for code"):
        Frame.restore(b, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda n, b: (n, b), st.integers(0, 400), st.integers(0, 255)))
def test_malformed_snapshots_raise_snapshot_error_never_crash(mutation):
    code = avm.compile('push 1\nstore x\npush "q"\nllm\nload x\nadd\nreturn')
    frame = Frame(code, budget=10)
    frame.run()
    good = frame.snapshot()
    if isinstance(mutation, tuple):
        pos, byte = mutation
        if pos >= len(good):
            return
        data = good[:pos] + bytes([byte]) + good[pos + 1 :]
    else:
        data = b"AVMF\x01" + code.digest + mutation
    try:
        restored = Frame.restore(code, data)
    except avm.SnapshotError:
        return
    # If it decoded, it must be a consistent frame: running it never raises a host error.
    if restored.status == "waiting":
        restored.resume(1)
    out = restored.run()
    assert isinstance(out, (avm.Done, avm.Fault, avm.BudgetExceeded, avm.Stalled, avm.Effect))


def test_a_stack_that_does_not_match_the_code_is_refused():
    from avm.memory.values import decode_value, encode_value

    code = avm.compile("push 1\npush 2\nadd\nreturn")
    frame = Frame(code, budget=0.1)
    assert isinstance(frame.run(), avm.BudgetExceeded)  # stopped before `push 2`, one value on the stack
    data = frame.snapshot()
    state = decode_value(data[37:])
    state[1] = []  # drop the stack: `add` would underflow
    with pytest.raises(avm.SnapshotError, match="stack depth"):
        Frame.restore(code, data[:37] + encode_value(state))
