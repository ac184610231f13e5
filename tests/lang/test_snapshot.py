"""Snapshots: restore anywhere, continue identically; bad snapshots are refused."""

import math

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import avm
import avm.lang.values
from avm.lang.frame import Frame
from avm.lang.outcomes import BudgetExceeded, Effect, Preempted
from avm.lang.snapshot import CHECKSUM
from avm.memory.values import decode_value, encode_value
from tests.lang.drive import MAX_EFFECTS, drive
from tests.lang.programs import effect_results, inputs, programs
from tests.lang.work import work_of

HEAD = 5 + 32  # magic, version, the code's digest


def state_of(data: bytes) -> list:
    """The state value inside a (version 2) snapshot."""
    return decode_value(data[HEAD:-CHECKSUM])


def signed(code: avm.Code, state: list) -> bytes:
    """A version-2 snapshot of ``state``, with the checksum it needs: only field validation can refuse it."""
    head = b"AVMF\x02" + code.digest + encode_value(state)
    return head + blake3(head).digest()[:CHECKSUM]


def unchecked(code: avm.Code, state: list) -> bytes:
    """A version-1 snapshot of ``state`` (before checksums)."""
    return b"AVMF\x01" + code.digest + encode_value(state)


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
        # Run out inside a metered instruction (its fixed cost and part of its work charged), a frame
        # starts that instruction over and pays again for what it does again, by design (see Frame.run):
        # the identity holds where the budget ran out between instructions.
        assume(round(out.needed * 1000) == code.decoded()[2][out.pc])
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
    code = avm.compile("push 1\npush 2\nadd\nreturn")
    frame = Frame(code, budget=0.1)
    assert isinstance(frame.run(), avm.BudgetExceeded)  # stopped before `push 2`, one value on the stack
    state = state_of(frame.snapshot())
    state[1] = []  # drop the stack: `add` would underflow
    with pytest.raises(avm.SnapshotError, match="stack depth"):
        Frame.restore(code, signed(code, state))


@pytest.mark.parametrize("source, value", [("push 1\nreturn\n", 1), ("halt\n", None), ("push 1\npop\n", None)])
def test_a_frame_that_ended_on_its_last_instruction_restores_from_its_own_snapshot(source, value):
    code = avm.compile(source)
    frame = Frame(code, budget=10)
    assert frame.run() == avm.Done(value) and frame.pc == code.ninstrs
    restored = Frame.restore(code, frame.snapshot())
    assert restored.snapshot() == frame.snapshot()
    assert restored.run() == avm.Done(value) and restored.done


def test_a_running_frame_past_its_last_instruction_is_refused():
    code = avm.compile("push 1\nreturn\n")
    frame = Frame(code, budget=10)
    state = state_of(frame.snapshot())
    state[0] = code.ninstrs
    with pytest.raises(avm.SnapshotError, match="pc out of range"):
        Frame.restore(code, signed(code, state))


def test_any_damaged_byte_is_caught_by_the_checksum():
    code = avm.compile('push 1\nstore x\npush "q"\nllm\nload x\nadd\nreturn')
    frame = Frame(code, budget=10)
    frame.run()
    good = frame.snapshot()
    assert good[4] == 2 and len(good) == HEAD + len(encode_value(state_of(good))) + CHECKSUM
    for pos in range(HEAD, len(good)):
        for flip in (0x01, 0x80):
            damaged = good[:pos] + bytes([good[pos] ^ flip]) + good[pos + 1:]
            with pytest.raises(avm.SnapshotError, match="checksum"):
                Frame.restore(code, damaged)
    with pytest.raises(avm.SnapshotError):
        Frame.restore(code, good[:-1])


def test_a_snapshot_from_before_checksums_still_restores():
    code = avm.compile('push 1\nstore x\npush "q"\nllm\nload x\nadd\nreturn')
    frame = Frame(code, budget=10)
    frame.run()
    old = unchecked(code, state_of(frame.snapshot()))
    restored = Frame.restore(code, old)
    assert restored.snapshot() == frame.snapshot()  # and it is written back in today's format
    restored.resume(2)
    assert restored.run() == avm.Done(3)


def _exhausted() -> tuple[avm.Code, list]:
    code = avm.compile("push 1\npush 2\nadd\nreturn")
    frame = Frame(code, budget=0.1)
    assert isinstance(frame.run(), BudgetExceeded)
    return code, state_of(frame.snapshot())


@pytest.mark.parametrize("needed", [math.nan, math.inf, -math.inf, -1.0, 1e300])
@pytest.mark.parametrize("make", [signed, unchecked])
def test_a_budget_outcome_with_an_impossible_needed_is_refused(needed, make):
    code, state = _exhausted()
    assert state[12][0] == "budget"
    state[12][3] = needed
    with pytest.raises(avm.SnapshotError, match="needed out of range"):
        Frame.restore(code, make(code, state))


@pytest.mark.parametrize("field, value, message", [
    (12, ["fault", "boom", 0, 1, "Fault"], "outcome"),  # an exhausted frame whose outcome is a fault
    (4, 10**16, "budget out of range"),
    (9, -1, "stall count out of range"),
    (12, ["budget", 0.0, 0.1, 0.2, 7, 1], "pc out of range"),
    (12, ["budget", 0.0, math.inf, 0.2, 1, 1], "budget out of range"),
])
def test_every_field_is_validated(field, value, message):
    code, state = _exhausted()
    state[field] = value
    with pytest.raises(avm.SnapshotError, match=message):
        Frame.restore(code, signed(code, state))



@pytest.mark.parametrize("used, budget", [(999.999, 0.1), (0.0, 999.999), (0.2, 0.2)])
@pytest.mark.parametrize("make", [signed, unchecked])
def test_a_budget_outcome_that_is_not_the_frames_own_is_refused(used, budget, make):
    code, state = _exhausted()  # a frame of budget 0.1 (100 milli)
    assert state[12][0] == "budget" and state[4] == 100
    state[12][1], state[12][2] = used, budget
    with pytest.raises(avm.SnapshotError, match="budget outcome does not match"):
        Frame.restore(code, make(code, state))


def test_a_refund_while_out_of_energy_still_snapshots_and_restores():
    code = avm.compile("push 1\npush 2\nadd\nreturn")
    frame = Frame(code, budget=0.1)
    assert isinstance(frame.run(), BudgetExceeded)
    frame.refund(0.001)  # the frame's energy used moves; its outcome keeps what it said
    assert frame.status == "exhausted" and frame.used < round(frame.outcome.energy_used * 1000)
    restored = Frame.restore(code, frame.snapshot())
    assert (restored.used, restored.budget, restored.outcome) == (frame.used, frame.budget, frame.outcome)


def test_a_pending_effect_on_the_wrong_line_is_refused():
    code = avm.compile('push "q"\nllm\nreturn')
    frame = Frame(code, budget=10)
    frame.run()
    state = state_of(frame.snapshot())
    state[6][3] = 99
    with pytest.raises(avm.SnapshotError, match="effect line"):
        Frame.restore(code, signed(code, state))


# --- mutants: a changed snapshot restores to the same frame, or raises SnapshotError; nothing else ---

_QUANTUM = 50_000  # milli: a mutant's budget may be huge, and a program may loop


def _frames_at(source: str, inp: dict, results: list, stop: int, cut: int) -> tuple[avm.Code, Frame]:
    """A frame of ``source`` stopped somewhere: out of budget at ``cut``, at an effect, or ended."""
    code = avm.compile(source)
    frame = Frame(code, budget=cut / 1000, inputs=inp)
    for _ in range(stop):
        out = frame.run()
        if not isinstance(out, Effect) or frame.effects >= MAX_EFFECTS:
            break
        frame.resume(results[frame.effects % len(results)])
    return code, frame


def _usable(code: avm.Code, frame: Frame) -> None:
    """A restored frame must behave: snapshot round trip, host calls, and running raise nothing."""
    data = frame.snapshot()
    assert Frame.restore(code, data).snapshot() == data
    frame.refund(0.5)
    frame.add_budget(0.5)
    frame.charge(0.001)
    if frame.status == "waiting":
        frame.resume(1)
    out = frame.run(_QUANTUM)
    assert isinstance(out, (avm.Done, avm.Fault, BudgetExceeded, avm.Stalled, Effect, Preempted))


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.just(0)),
)


def _mutate(data: bytes, mutation: tuple[str, int, int]) -> bytes:
    how, pos, byte = mutation
    if not data:
        return bytes([byte]) if how == "insert" else data
    pos %= len(data) + (how in ("cut", "insert"))
    if how == "flip":
        return data[:pos] + bytes([data[pos] ^ byte]) + data[pos + 1:]
    if how == "cut":
        return data[:pos]
    if how == "insert":
        return data[:pos] + bytes([byte]) + data[pos:]
    return data[:pos] + data[pos + 1:]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), inputs, st.lists(effect_results, min_size=1, max_size=3), st.integers(0, 6),
       st.integers(0, BUDGET), st.lists(mutations, min_size=1, max_size=3))
def test_a_mutated_snapshot_restores_to_the_same_frame_or_raises_snapshot_error(source, inp, results, stop, cut,
                                                                             muts):
    code, frame = _frames_at(source, inp, results, stop, cut)
    good = frame.snapshot()
    data = good
    for mutation in muts:
        data = _mutate(data, mutation)
    try:
        restored = Frame.restore(code, data)
    except avm.SnapshotError:
        return
    assert restored.snapshot() == good  # the checksum lets no change through
    _usable(code, restored)


# Replacement values for one field of a state, re-signed so that only field validation stands in the way.
odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.lists(st.integers(-2, 50), max_size=6),
    st.sampled_from(["ready", "waiting", "exhausted", "done", "faulted", "stalled"]),
    st.lists(st.one_of(st.sampled_from(["done", "fault", "stalled", "budget"]), st.integers(-1, 50),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)),
             min_size=1, max_size=6),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), inputs, st.lists(effect_results, min_size=1, max_size=3), st.integers(0, 6),
       st.integers(0, BUDGET), st.lists(st.tuples(st.integers(0, 12), odd_values), min_size=1, max_size=3),
       st.sampled_from([signed, unchecked]))
def test_a_state_with_changed_fields_is_refused_or_gives_a_frame_that_behaves(source, inp, results, stop, cut,
                                                                           changes, make):
    code, frame = _frames_at(source, inp, results, stop, cut)
    state = state_of(frame.snapshot())
    for field, value in changes:
        state[field] = value
    try:
        restored = Frame.restore(code, make(code, state))
    except avm.SnapshotError:
        return
    _usable(code, restored)


# --- the validity walk is linear in distinct parts, with one depth limit ---


def chain(levels: int, inner: object = 0) -> object:
    for _ in range(levels):
        inner = [inner]
    return inner


def test_a_frame_holding_a_value_that_shares_its_parts_snapshots_in_linear_walk_work():
    levels = 16  # each level holds the one below twice: 2**16 paths (26 levels once blocked the loop 75 s)
    src = "push 0\nstore x\n" + "load x\nload x\nlist 2\nstore x\n" * levels + "push 1.0\nrecv\nreturn\n"
    code = avm.compile(src)
    frame = Frame(code, 1000.0)
    assert isinstance(frame.run(), Effect)
    frame.variables["y"] = frame.variables["x"]  # held twice
    data, work = work_of(frame.snapshot)
    assert work["calls"] < 8 * levels  # the validity walk; measure and the encoder bound the rest
    assert Frame.restore(code, data).variables == frame.variables


def test_a_part_shared_at_two_depths_keeps_the_depth_limit_at_the_deeper():
    limit = avm.lang.values.MAX_DEPTH
    x = chain(limit - 5)  # 95 levels deep
    is_value = avm.lang.values.is_value
    assert is_value([x, chain(4, x)])  # 100 levels at the deepest
    assert not is_value([x, chain(5, x)])  # seen first shallow, then too deep
    assert not is_value([chain(5, x), x])  # seen first too deep
    assert is_value(x, 5) and not is_value(x, 6)
    shared = {"a": x, "b": [x, {"c": chain(5, x)}]}
    assert not is_value(shared)
    cyclic: list = []
    cyclic.append(cyclic)
    assert not is_value(cyclic) and not is_value({"k": [cyclic]})
    assert not is_value([x, (1,)]) and not is_value({1: x}) and not is_value([x, [x, object()]])
