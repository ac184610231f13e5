"""The block compiler against the interpreter: identical outcomes, energy and state at every step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import avm
from avm.errors import CompileError
from avm.lang import blocks
from avm.lang import opcodes as O
from avm.lang.blocks import compile_blocks, run_blocks
from avm.lang.builtins import REGISTRY
from avm.lang.disasm import literal
from avm.lang.frame import Frame, FrameStateError
from avm.lang.outcomes import BudgetExceeded, Done, Effect, Fault
from avm.lang.values import VMFault, measure

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# --- random programs, generated from the opcode table ---

NAMES = ["a", "b", "c", "i", "i", "i", "n", "n"] * 2 + ["z"]  # z is never an input: loading it before a store faults
LITERALS = st.one_of(
    st.integers(-3, 12),
    st.sampled_from([0, 1, 2, 0.5, -1.5, 0.0, 1e3]),
    st.sampled_from(["x", "a b", "", "{a}-{i}", "{", "7", "k", "v"]),
    st.sampled_from([True, False, None]),
)
BUILTINS = sorted(REGISTRY)
# Everything but the control instructions the generator places itself.
OTHER = [info for info in O.OPS
         if not info.jumps and not info.ends and info.code not in (O.PUSH, O.LOAD, O.STORE)]
FIELDS = [f for f in O.OBSERVE_FIELDS if f != "steps"] * 3 + ["steps"]


def _operands(draw: Any, info: O.OpInfo) -> list[str]:
    if info.code == O.CALL:
        b = REGISTRY[draw(st.sampled_from(BUILTINS))]
        return [b.name, str(draw(st.integers(b.min_args, b.max_args)))]
    if info.code == O.TOOL_:
        return [draw(st.sampled_from(["search", "calc"])), str(draw(st.integers(0, 2)))]
    if info.code in (O.LIST, O.MAP):
        return [str(draw(st.integers(0, 3)))]
    if info.code == O.ENERGY_CHECK:
        return [draw(st.sampled_from(["0", "0.3", "1.5", "4", "50"]))]
    if info.code == O.OBSERVE:
        return [draw(st.sampled_from(FIELDS))]
    if info.code == O.ASSERT:
        return [draw(st.sampled_from(["must hold", '"quoted"']))]
    return []


@st.composite
def programs(draw: Any) -> str:
    """Segments L0..L{n-1} with random entry depths; jumps (forward, backward, mid-segment,
    conditional or not) always arrive with the target's depth, so nearly every program compiles."""
    nseg = draw(st.integers(1, 4))
    entry = [draw(st.integers(0, 2)) for _ in range(nseg)] + [0]
    lines: list[str] = []
    depth = 0

    def lit() -> str:
        return literal(draw(LITERALS))

    def adjust(to: int) -> None:
        nonlocal depth
        while depth > to:
            lines.append(draw(st.sampled_from(["pop", "store i", "store z"])))
            depth -= 1
        while depth < to:
            lines.append(f"push {lit()}" if draw(st.booleans()) else f"load {draw(st.sampled_from(NAMES))}")
            depth += 1

    def condition() -> None:
        nonlocal depth
        kind = draw(st.integers(0, 3))
        if kind == 0:
            lines.append(f"push {lit()}")
        elif kind == 1:
            lines.append(f"load {draw(st.sampled_from(NAMES))}")
        else:  # a counter: loops that end before the budget does
            lines.extend(["load i", "push 1", "add", "store i", "load i", f"push {draw(st.integers(0, 6))}",
                          draw(st.sampled_from(["lt", "le", "gt", "eq"]))])
        depth += 1

    for seg in range(nseg):
        adjust(entry[seg])
        lines.append(f"L{seg}:")
        for _ in range(draw(st.integers(0, 14))):
            choice = draw(st.integers(0, 12))
            if choice <= 3 or depth == 0:
                lines.append(f"push {lit()}" if choice % 2 else f"load {draw(st.sampled_from(NAMES))}")
                depth += 1
            elif choice == 4:
                lines.append(f"store {draw(st.sampled_from(NAMES))}")
                depth -= 1
            elif choice == 5:  # a conditional jump in the middle of the segment
                target = draw(st.integers(0, nseg))
                adjust(entry[target])
                condition()
                lines.append(f"{draw(st.sampled_from(['jump_if', 'jump_unless']))} L{target}")
                depth -= 1
            else:
                info = draw(st.sampled_from(OTHER))
                operands = _operands(draw, info)
                parsed = tuple(int(x) if x.isdigit() else x for x in operands)
                pops, pushes = O.stack_effect(info, parsed)
                if pops > depth:
                    continue
                lines.append(" ".join([info.name, *operands]))
                depth += pushes - pops
        ending = draw(st.integers(0, 5))
        if ending == 0:
            target = draw(st.integers(0, nseg))
            adjust(entry[target])
            lines.append(f"jump L{target}")
            depth = entry[seg + 1]
        elif ending == 1:
            if depth == 0:
                lines.append(f"push {lit()}")
                depth = 1
            lines.append("return")
            depth = entry[seg + 1]
        elif ending == 2:
            target = draw(st.integers(0, nseg))
            adjust(entry[target])
            condition()
            lines.append(f"{draw(st.sampled_from(['jump_if', 'jump_unless']))} L{target}")
            depth -= 1
        # else: fall through into the next segment
    adjust(entry[nseg])
    lines.append(f"L{nseg}:")
    if draw(st.booleans()):
        lines += ["load i", "return"]
    return "\n".join(lines) + "\n"


INPUTS = st.fixed_dictionaries({"i": st.integers(-2, 3), "n": st.integers(0, 5), "a": st.integers(-3, 9)},
                               optional={"b": st.sampled_from(["t", "u v", "{i}"]),
                                         "c": st.lists(st.integers(0, 3), max_size=3)})
RESULTS = st.one_of(st.integers(-2, 3), st.sampled_from(["ok", "", "{a}", None, True, 0.5]),
                    st.lists(st.integers(0, 3), max_size=3),
                    st.dictionaries(st.sampled_from(["k", "v"]), st.integers(0, 2), max_size=2))


# Programs can build values whose parts are shared, so their tree is exponentially larger than their
# memory (a list of itself, doubled in a loop). Walking such a value (repr, a snapshot's encoder) can
# take minutes; past this many parts both frames are compared by the parts' count instead.
_WALK_LIMIT = 20_000


def _parts(value: Any) -> int | None:
    try:
        return measure(value, _WALK_LIMIT)
    except VMFault:
        return None


def _shown(value: Any) -> str:
    return repr(value) if _parts(value) is not None else f"<{type(value).__name__} of more than {_WALK_LIMIT} parts>"


def _shown_outcome(out: Any) -> str:
    if _parts([getattr(out, "value", None), list(getattr(out, "args", ()))]) is None:
        return f"<{type(out).__name__} holding more than {_WALK_LIMIT} parts>"
    return repr(out)


def _snapshot(frame: Frame) -> Any:
    if _parts([frame.stack, frame.variables]) is None:
        return "too large to snapshot here"
    try:
        return frame.snapshot()
    except Exception as exc:  # both frames must fail the same way
        return repr(exc)


def _same(f1: Frame, f2: Frame, out1: Any, out2: Any) -> None:
    assert _shown_outcome(out1) == _shown_outcome(out2)
    assert type(out1) is type(out2)
    assert (f1.pc, f1.used, f1.budget, f1.status, f1.effects) == (f2.pc, f2.used, f2.budget, f2.status, f2.effects)
    assert _shown(f1.stack) == _shown(f2.stack)
    assert _shown(f1.variables) == _shown(f2.variables)
    assert list(f1.variables) == list(f2.variables)  # the same insertion order, too
    assert _snapshot(f1) == _snapshot(f2)


def differential(code: avm.Code, inputs: dict[str, Any], budget: int, results: list[Any],
                 top_ups: list[int], engines: list[int], max_steps: int = 60) -> list[Any]:
    """Drive one frame with Frame.run and one with run_blocks (sometimes Frame.run, sometimes
    through a snapshot and restore); compare everything after every step."""
    f1 = Frame(code, budget=budget / 1000, inputs=inputs)
    f2 = Frame(code, budget=budget / 1000, inputs=inputs)
    trace = []
    faults_before = blocks.statistics()["exception_fallbacks"]
    faults = 0
    for step in range(max_steps):
        engine = engines[step % len(engines)]
        if engine == 2:  # continue from restored copies: fresh frame objects at the same pc
            s1, s2 = _snapshot(f1), _snapshot(f2)
            assert s1 == s2
            if isinstance(s1, bytes):  # else both frames hold a value too large to snapshot: go on without
                f1 = Frame.restore(code, s1)
                f2 = Frame.restore(code, s2)
        out1 = f1.run()
        out2 = f2.run() if engine == 1 else run_blocks(f2)
        _same(f1, f2, out1, out2)
        trace.append(out1)
        if isinstance(out1, Fault):
            faults += 1
        if isinstance(out1, Effect):
            result = results[step % len(results)]
            f1.resume(result)
            f2.resume(result)
            _same(f1, f2, None, None)
        elif isinstance(out1, BudgetExceeded) and top_ups:
            amount = top_ups[step % len(top_ups)]
            f1.add_budget(amount / 1000)
            f2.add_budget(amount / 1000)
        else:
            break
    # Faults are the only reason a block may give up on itself: a block that raised where the
    # interpreter does not would still give the right answer, but slowly. Catch that here.
    assert blocks.statistics()["exception_fallbacks"] - faults_before <= faults
    return trace


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), INPUTS, st.integers(0, 60_000), st.lists(RESULTS, min_size=1, max_size=4),
       st.lists(st.integers(50, 5_000), max_size=3),
       st.lists(st.sampled_from([0, 0, 0, 0, 1, 2]), min_size=1, max_size=4))
def test_blocks_match_the_interpreter(source, inputs, budget, results, top_ups, engines):
    try:
        code = avm.compile(source)
    except CompileError:
        assume(False)
    compile_blocks(code)  # generation must never fail on a valid program
    differential(code, inputs, budget, results, top_ups, engines)


# --- hand-written cases ---

LONG_BLOCK = """
    push 1
    store x
    load x
    push 2
    add
    store y
    load y
    load x
    mul
    push 10
    add
    return
"""


def test_budget_runs_out_mid_block_then_continues():
    code = avm.compile(LONG_BLOCK)
    costs = code.decoded()[2]
    budget = sum(costs[:5])  # enough for 5 of the 10-instruction block
    f1 = Frame(code, budget=budget / 1000)
    f2 = Frame(code, budget=budget / 1000)
    out1, out2 = f1.run(), run_blocks(f2)
    assert isinstance(out2, BudgetExceeded) and out2.pc == 5
    _same(f1, f2, out1, out2)
    tails = blocks.statistics()["tails"]
    for f in (f1, f2):
        f.add_budget(0.25)  # two more instructions: a tail from mid-block pc 5, out again at pc 7
    out1, out2 = f1.run(), run_blocks(f2)
    assert isinstance(out2, BudgetExceeded) and out2.pc == 7
    _same(f1, f2, out1, out2)
    for f in (f1, f2):
        f.add_budget(100)
    out1, out2 = f1.run(), run_blocks(f2)
    assert out2 == Done(13)
    _same(f1, f2, out1, out2)
    assert 5 in compile_blocks(code).tails and blocks.statistics()["tails"] >= tails


FAULT_MID_BLOCK = """
    push 7
    store x
    push "abc"
    store y
    load x
    push 0
    div
    store z
    halt
"""


def test_fault_mid_block():
    code = avm.compile(FAULT_MID_BLOCK)
    f1, f2 = Frame(code, budget=10), Frame(code, budget=10)
    out1, out2 = f1.run(), run_blocks(f2)
    assert isinstance(out2, Fault) and out2.kind == "ZeroDivision" and out2.pc == 6 and out2.line == 8
    _same(f1, f2, out1, out2)
    assert f2.variables == {"x": 7, "y": "abc"}  # the stores before the fault happened
    assert f2.used == sum(code.decoded()[2][:7])  # charged up to and including the div
    assert run_blocks(f2) is out2  # a finished frame returns its outcome again


def test_type_error_and_undefined_variable_faults():
    for source, kind in [("push 1\npush x\nstore q\nload q\nadd\nreturn", "TypeError"),
                         ("push 1\nstore a\nload nope\nreturn", "NameError"),
                         ('map 0\npush "k"\nget\nreturn', "KeyError")]:
        code = avm.compile(source)
        f1, f2 = Frame(code), Frame(code)
        out1, out2 = f1.run(), run_blocks(f2)
        assert isinstance(out2, Fault) and out2.kind == kind
        _same(f1, f2, out1, out2)


def test_energy_check_and_observe_mid_block_are_exact():
    source = """
        push 1
        store x
        energy_check 0.45
        store ok
        observe energy_used
        observe energy_left
        observe depth
        list 3
        load ok
        return
    """
    code = avm.compile(source)
    costs = code.decoded()[2]
    # Budgets around the point where energy_check's answer flips.
    for budget in range(sum(costs[:3]) + 400, sum(costs[:3]) + 500, 10):
        f1, f2 = Frame(code, budget=budget / 1000), Frame(code, budget=budget / 1000)
        _same(f1, f2, f1.run(), run_blocks(f2))
    f1, f2 = Frame(code, budget=5), Frame(code, budget=5)
    out1, out2 = f1.run(), run_blocks(f2)
    _same(f1, f2, out1, out2)


def test_effects_resume_and_run_state_errors():
    code = avm.compile((EXAMPLES / "researcher.avm").read_text())
    f1, f2 = Frame(code), Frame(code)
    out1, out2 = f1.run(), run_blocks(f2)
    assert isinstance(out2, Effect) and out2.kind == "llm"
    _same(f1, f2, out1, out2)
    with pytest.raises(FrameStateError):
        run_blocks(f2)
    call = {"text": None, "tool_calls": [{"id": "c1", "name": "search", "arguments": {"query": "octopuses"}}]}
    for reply in (call, "found it", "three facts"):  # a tool call, its tool's result, the final text
        f1.resume(reply)
        f2.resume(reply)
        out1, out2 = f1.run(), run_blocks(f2)
        _same(f1, f2, out1, out2)
    assert out2 == Done("three facts")


def test_bad_effect_arguments_fault_like_the_interpreter():
    code = avm.compile("push 1\npush 2\npush 3\nspawn\nreturn")
    f1, f2 = Frame(code), Frame(code)
    out1, out2 = f1.run(), run_blocks(f2)
    assert isinstance(out2, Fault) and out2.kind == "TypeError"
    _same(f1, f2, out1, out2)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.avm")), ids=lambda p: p.name)
def test_examples(path):
    code = avm.compile(path.read_text())
    finals = [differential(code, {}, budget, ["reply", "result"], [700], [0])[-1]
              for budget in (3_000, 20_000, 1_000_000)]
    # With the large budget each example reaches its known end (smaller ones may stop short).
    expected = {
        "fizzbuzz.avm": "1 2 Fizz 4 Buzz Fizz 7 8 Fizz Buzz 11 Fizz 13 14 FizzBuzz",
        "wordcount.avm": '{"and": 2, "bat": 1, "cat": 1, "hat": 1, "the": 3}',
        "researcher.avm": "reply",  # the first reply is text: the answer
    }
    assert isinstance(finals[-1], Done), finals
    if path.name in expected:
        assert finals[-1].value == expected[path.name]
    else:
        assert isinstance(finals[-1].value, str) and finals[-1].value.startswith("did ")


def test_self_loop_with_small_quanta():
    """A counter loop run in quanta that end mid-block: tails, the self-loop exit, and resumption."""
    code = avm.compile("""
        push 0
        store i
    loop:
        load i
        push 1
        add
        store i
        load i
        push 50
        lt
        jump_if loop
        load i
        return
    """)
    trace = differential(code, {}, 130, [None], [130, 70, 410], [0, 0, 2], max_steps=2000)
    assert trace[-1] == Done(50)


@pytest.mark.parametrize("budget", [0, 150, 200, 1_000, 1_050, 7_777])
def test_unconditional_self_loop_runs_out_exactly(budget):
    code = avm.compile("L0:\npush 1\npop\nenergy_check 0.5\nstore ok\njump L0\n")
    trace = differential(code, {}, budget, [None], [30, 260, 1_000], [0, 2, 0, 1], max_steps=40)
    assert all(isinstance(out, BudgetExceeded) for out in trace)


def test_blocks_are_compiled_once_per_code():
    code = avm.compile(LONG_BLOCK)
    assert compile_blocks(code) is compile_blocks(code)
    assert "def run(" in compile_blocks(code).source


POOL = [0, 3, -2, 2.5, -0.0, 10**400, True, False, None, "ab", "", "{p}", [1, 2], [], {"k": 1}, {}]
SMALL_POOL = [0, 1, "k", [1], {"k": 2}, None]


def _grid_ops() -> list[tuple[str, int]]:
    """Every instruction that computes on the stack, as source with its operand count."""
    out = []
    for info in O.OPS:
        if info.jumps or info.ends or info.effect or info.code in (O.PUSH, O.LOAD, O.STORE, O.ENERGY_CHECK, O.OBSERVE,
                                                                  O.GUARD, O.END_GUARD):
            continue
        if info.code == O.CALL:
            for b in REGISTRY.values():
                for argc in range(b.min_args, b.max_args + 1):
                    out.append((f"call {b.name} {argc}", argc))
        elif info.code in (O.LIST, O.MAP):
            for n in range(3):
                out.append((f"{info.name} {n}", n * (2 if info.code == O.MAP else 1)))
        elif info.code == O.LOAD_OR:
            out += [("load_or p", 1), ("load_or unset", 1)]  # a variable that is set, and one that is not
        else:
            operands = ["msg"] if info.code == O.ASSERT else []
            out.append((" ".join([info.name, *operands]), O.stack_effect(info, ())[0]))
    return out


def test_every_operation_on_a_grid_of_values():
    """Each instruction on every combination of operand types: the same value, or the same fault."""
    import itertools

    names = ["p", "q", "r", "s", "u", "v"]
    runs = 0
    for text, pops in _grid_ops():
        # Operands come from variables, so one Code serves every combination; the result is stored
        # and then returned, so a difference in it shows in the variables, the stack and the outcome.
        source = "\n".join([*(f"load {n}" for n in names[:pops]), text, "store result", "load result", "return"])
        if text.startswith(("swap", "dup")):
            source = "\n".join([*(f"load {n}" for n in names[:pops]), text, "list 2", "return"])
        elif text.startswith(("pop", "assert")):
            source = "\n".join([*(f"load {n}" for n in names[:pops]), text, "halt"])
        code = avm.compile(source)
        pool = POOL if pops <= 2 else SMALL_POOL
        for values in itertools.product(pool, repeat=pops):
            inputs = dict(zip(names[:pops], values, strict=True))
            f1, f2 = Frame(code, inputs=inputs), Frame(code, inputs=inputs)
            _same(f1, f2, f1.run(), run_blocks(f2))
            runs += 1
    assert runs > 5_000


def test_long_programs_and_huge_constants_fall_back_or_bind():
    big = avm.compile("push 0\n" + "push 1\nadd\n" * (blocks.MAX_INSTRUCTIONS // 2) + "return\n")
    before = blocks.statistics()["interpreted"]
    f1, f2 = Frame(big), Frame(big)
    _same(f1, f2, f1.run(), run_blocks(f2))
    assert blocks.statistics()["interpreted"] == before + 1
    huge = avm.compile(f"push {'9' * 300}\npush 1\nadd\nreturn\n")
    compile_blocks(huge)
    f1, f2 = Frame(huge), Frame(huge)
    _same(f1, f2, f1.run(), run_blocks(f2))


def test_the_cache_lets_go_of_dead_code():
    import gc

    code = avm.compile("push 424242\nreturn\n")
    assert run_blocks(Frame(code)) == Done(424242)
    assert code in blocks._CACHE
    size = len(blocks._CACHE)
    del code
    gc.collect()
    assert len(blocks._CACHE) == size - 1


def test_a_value_of_exponentially_many_shared_parts_is_compared_without_walking_it():
    # A list of itself doubled in a loop: 2**k parts in k steps of memory. The differential must
    # compare both engines on it without expanding it (this once took minutes per example).
    # The value stops growing at the depth limit, the same way in every engine.
    doubling = avm.compile("push 1\nlist 1\nstore a\nloop:\nload a\nload a\nlist 2\nstore a\njump loop\n")
    trace = differential(doubling, {}, 20_000_000, [0], [], [0, 1, 2])
    assert isinstance(trace[-1], Fault) and trace[-1].kind == "LimitError" and "nested" in trace[-1].error



def test_a_fault_after_an_end_guard_in_its_block_does_not_run_the_end_guard_twice():
    # found by hypothesis: entering at pc 4 (inside the section, after a budget ran out), a block held
    # end_guard and a faulting load; the fault rolled the block back but not in_guard
    source = 'load a\nload a\nL0:\npop\nguard\nload a\nend_guard\nload a\nload a\nload b\nreturn\n'
    code = avm.compile(source)
    f1, f2 = Frame(code, budget=0.335, inputs={"a": 0}), Frame(code, budget=0.335, inputs={"a": 0})
    _same(f1, f2, f1.run(), run_blocks(f2))
    f1.add_budget(0.465)
    f2.add_budget(0.465)
    out = f1.run()
    _same(f1, f2, out, run_blocks(f2))
    assert out.kind == "NameError"
