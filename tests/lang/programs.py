"""Hypothesis strategies for random agent programs, shared by the lang tests.

Programs are built in segments that each start and end with an empty stack;
labels sit only between segments, so every merge point agrees on the depth
and the programs compile. Within a segment any instruction may appear whose
operands are on the stack: type errors, division by zero, undefined variables
and bad effect arguments all happen, as they should. Loops (backward jumps)
happen too; the energy budget ends them.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from avm.lang import opcodes as O
from avm.lang.builtins import REGISTRY

NAMES = ["a", "b", "c"]
TEXTS = ["x", "hello {a}", "{b}!", "", "a b c", "{", "7", "[1, 2]"]
BUILTINS = sorted(REGISTRY)

literals = st.one_of(
    st.integers(-5, 20),
    st.sampled_from([0.5, -2.25, 1e3, 0.0]),
    st.sampled_from(TEXTS),
    st.sampled_from([True, False, None]),
    st.sampled_from(["word", "k1"]),
)

effect_results = st.one_of(
    st.integers(-3, 3),
    st.sampled_from(["ok", "", "reply {a}", None, True]),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.sampled_from(["k", "v"]), st.integers(0, 2), max_size=2),
)

# (guard and end_guard come in pairs around code that runs in order: tests/sabotage/test_guard.py has them)
_SIMPLE = [info for info in O.OPS if not info.jumps and not info.ends
           and info.code not in (O.PUSH, O.LOAD, O.STORE, O.GUARD, O.END_GUARD)]


def _lit(value: Any) -> str:
    from avm.lang.disasm import literal

    return literal(value)


@st.composite
def programs(draw: Any, max_segments: int = 5, max_ops: int = 12, effects: bool = True) -> str:
    nseg = draw(st.integers(1, max_segments))
    lines: list[str] = []
    for seg in range(nseg):
        lines.append(f"L{seg}:")
        depth = 0
        for _ in range(draw(st.integers(0, max_ops))):
            choice = draw(st.integers(0, 9))
            if choice <= 2 or depth == 0:
                if draw(st.booleans()):
                    lines.append(f"push {_lit(draw(literals))}")
                else:
                    lines.append(f"load {draw(st.sampled_from(NAMES))}")
                depth += 1
                continue
            if choice == 3:
                lines.append(f"store {draw(st.sampled_from(NAMES))}")
                depth -= 1
                continue
            info = draw(st.sampled_from(_SIMPLE))
            if info.effect and not effects:
                continue
            operands: list[str] = []
            if info.code == O.CALL:
                b = REGISTRY[draw(st.sampled_from(BUILTINS))]
                argc = draw(st.integers(b.min_args, b.max_args))
                operands = [b.name, str(argc)]
            elif info.code == O.TOOL_:
                operands = [draw(st.sampled_from(["search", "calc"])), str(draw(st.integers(0, 2)))]
            elif info.code in (O.LIST, O.MAP):
                operands = [str(draw(st.integers(0, 2)))]
            elif info.code == O.ENERGY_CHECK:
                operands = [draw(st.sampled_from(["0", "1.5", "50"]))]
            elif info.code == O.LOAD_OR:
                operands = [draw(st.sampled_from(NAMES))]
            elif info.code == O.OBSERVE:
                operands = [draw(st.sampled_from(O.OBSERVE_FIELDS))]
            elif info.code == O.ASSERT:
                operands = [draw(st.sampled_from(["must hold", '"quoted msg"']))]
            pops, pushes = O.stack_effect(info, tuple(int(x) if x.isdigit() else x for x in operands))
            if pops > depth:
                continue
            lines.append(" ".join([info.name, *operands]))
            depth += pushes - pops
        for _ in range(depth):
            lines.append("pop")
        ending = draw(st.integers(0, 5))
        target = f"L{draw(st.integers(0, nseg))}"  # L{nseg} is the end label
        if ending == 0:
            lines.append(f"jump {target}")
        elif ending <= 2:
            lines.append(f"load {draw(st.sampled_from(NAMES))}" if draw(st.booleans())
                         else f"push {_lit(draw(literals))}")
            lines.append(f"{draw(st.sampled_from(['jump_if', 'jump_unless']))} {target}")
        elif ending == 3:
            lines.append(f"push {_lit(draw(literals))}")
            lines.append("return")
    lines.append(f"L{nseg}:")
    if draw(st.booleans()):
        lines.append("load a")
        lines.append("return")
    return "\n".join(lines) + "\n"


inputs = st.fixed_dictionaries({}, optional={"a": st.integers(-3, 9), "b": st.sampled_from(["t", "u v"]),
                                             "c": st.lists(st.integers(0, 3), max_size=3)})
