"""The instruction set: one table that the compiler, the validator, the
disassembler, the grammar and the interpreter all read.

Each opcode has a number (its byte in the bytecode), the kinds of its operands,
its static stack effect (values popped, values pushed), its energy cost in
milli-units, and flags saying whether it jumps, ends the program or leaves the
VM as an effect.

Energy costs (milli-units; 1000 milli = 1.0 energy unit of the seed's scale).
The issue fixes: push 0.1, pop 0.05, store/load 0.1, call 1.0 (plus the
builtin's own cost), delegate 2.0, observe 0.3, assert 0.2,
jump_if/return/energy_check 0.05. The rest are chosen here so that a cost
roughly follows the work the host does for the instruction:

    stack shuffles (dup, swap, jump, jump_unless, halt, not, len)  0.05
    arithmetic and comparison                                     0.1
    div, mod                                                      0.15
    and, or                                                       0.05
    concat, append, set, list                                     0.2
    map                                                           0.3
    format                                                        0.5
    effects: llm 5.0, tool 1.0, send 0.5, recv 0.5, spawn 2.0, sleep 0.2

LLM token usage and tool work are charged by the runtime on top of these, at
the rates it documents; the interpreter charges only the table below.
"""

from __future__ import annotations

from dataclasses import dataclass

# Operand kinds.
CONST = "const"  # push: a literal value
NAME = "name"  # load/store: a variable name
LABEL = "label"  # jumps: a label, encoded as an instruction index
COUNT = "count"  # list/map/argc: a non-negative integer
BUILTIN = "builtin"  # call: a builtin name
TOOL = "tool"  # tool: a tool name
ENERGY = "energy"  # energy_check: a non-negative energy amount (milli in bytecode)
FIELD = "field"  # observe: one of OBSERVE_FIELDS
MESSAGE = "message"  # assert: the rest of the line


@dataclass(frozen=True, slots=True)
class OpInfo:
    code: int
    name: str
    operands: tuple[str, ...]
    pops: int  # -1: depends on operands (see stack_effect)
    pushes: int
    cost: int  # milli-units
    jumps: bool = False  # has a LABEL operand
    ends: bool = False  # control never falls through to the next instruction
    effect: bool = False  # leaves the VM: returns an Effect
    doc: str = ""


_TABLE: list[OpInfo] = []


def _op(name: str, operands: tuple[str, ...], pops: int, pushes: int, cost: int, doc: str, **flags: bool) -> int:
    code = len(_TABLE)
    _TABLE.append(OpInfo(code, name, operands, pops, pushes, cost, doc=doc, **flags))
    return code


# Stack and variables.
PUSH = _op("push", (CONST,), 0, 1, 100, "push a literal")
POP = _op("pop", (), 1, 0, 50, "drop the top value")
DUP = _op("dup", (), 1, 2, 50, "duplicate the top value")
SWAP = _op("swap", (), 2, 2, 50, "swap the two top values")
LOAD = _op("load", (NAME,), 0, 1, 100, "push a variable (inputs are the initial variables)")
STORE = _op("store", (NAME,), 1, 0, 100, "pop into a variable")
# Control.
JUMP = _op("jump", (LABEL,), 0, 0, 50, "jump to a label", jumps=True, ends=True)
JUMP_IF = _op("jump_if", (LABEL,), 1, 0, 50, "pop; jump if truthy", jumps=True)
JUMP_UNLESS = _op("jump_unless", (LABEL,), 1, 0, 50, "pop; jump if falsy", jumps=True)
CALL = _op("call", (BUILTIN, COUNT), -1, 1, 1000, "pop argc arguments, push the builtin's result")
RETURN = _op("return", (), 1, 0, 50, "pop the result and end the program", ends=True)
HALT = _op("halt", (), 0, 0, 50, "end the program with result null", ends=True)
ENERGY_CHECK = _op("energy_check", (ENERGY,), 0, 1, 50, "push true if at least this much energy is left")
OBSERVE = _op("observe", (FIELD,), 0, 1, 300, "push a fact about the frame")
ASSERT = _op("assert", (MESSAGE,), 1, 0, 200, "pop; fault with the message if falsy")
# Arithmetic and comparison.
ADD = _op("add", (), 2, 1, 100, "a + b (numbers, or two texts, or two lists)")
SUB = _op("sub", (), 2, 1, 100, "a - b")
MUL = _op("mul", (), 2, 1, 100, "a * b")
DIV = _op("div", (), 2, 1, 150, "a / b, always a float")
MOD = _op("mod", (), 2, 1, 150, "a mod b (sign of b)")
NEG = _op("neg", (), 1, 1, 100, "-a")
EQ = _op("eq", (), 2, 1, 100, "a == b (structural; true is not 1)")
NE = _op("ne", (), 2, 1, 100, "a != b")
LT = _op("lt", (), 2, 1, 100, "a < b (numbers or texts)")
LE = _op("le", (), 2, 1, 100, "a <= b")
GT = _op("gt", (), 2, 1, 100, "a > b")
GE = _op("ge", (), 2, 1, 100, "a >= b")
NOT = _op("not", (), 1, 1, 50, "logical not of truthiness")
AND = _op("and", (), 2, 1, 50, "true if both are truthy")
OR = _op("or", (), 2, 1, 50, "true if either is truthy")
# Text.
CONCAT = _op("concat", (), 2, 1, 200, "text of a followed by text of b (two lists: joined list)")
FORMAT = _op("format", (), 1, 1, 500, "pop a template, fill {name} from variables")
# Lists and maps.
LIST = _op("list", (COUNT,), -1, 1, 200, "pop n values into a list (first pushed first)")
MAP = _op("map", (COUNT,), -1, 1, 300, "pop n key, value pairs into a map")
GET = _op("get", (), 2, 1, 100, "pop key, container; push container[key]")
SET = _op("set", (), 3, 1, 200, "pop value, key, container; push a new container with key set")
LEN = _op("len", (), 1, 1, 50, "length of a text, list or map")
APPEND = _op("append", (), 2, 1, 200, "pop value, list; push a new list with value appended")
# Effects: each leaves the VM, and resume(result) pushes exactly one value.
LLM = _op("llm", (), 1, 1, 5000, "pop a message; push the model's reply", effect=True)
TOOL_ = _op("tool", (TOOL, COUNT), -1, 1, 1000, "pop argc arguments; push the tool's result", effect=True)
SEND = _op("send", (), 2, 1, 500, "pop message, target; push true once delivered", effect=True)
RECV = _op("recv", (), 1, 1, 500, "pop a timeout in seconds (or null); push a message, null on timeout", effect=True)
SPAWN = _op("spawn", (), 3, 1, 2000, "pop budget, inputs, program; push the child's id", effect=True)
DELEGATE = _op("delegate", (), 3, 1, 2000, "pop budget, inputs, program; push the child's result", effect=True)
SLEEP = _op("sleep", (), 1, 1, 200, "pop seconds; push null after sleeping", effect=True)
# Guarded sections: code that must run in order, from its guard to its end_guard. The validator refuses a
# jump into a section (but to its guard), out of it, or a return/halt inside it; the VM faults at an
# end_guard not reached through its guard (a frame brought into the middle of a section).
GUARD = _op("guard", (), 0, 0, 50, "begin a guarded section: what follows, up to end_guard, runs in order")
END_GUARD = _op("end_guard", (), 0, 0, 50, "end the guarded section (fault if it was not entered at its guard)")
# An input that may not be given: `push "tides"` then `load_or topic` is the input topic, or "tides".
LOAD_OR = _op("load_or", (NAME,), 1, 1, 100, "pop a default; push the variable if it is set, else the default")

OPS: tuple[OpInfo, ...] = tuple(_TABLE)
BY_NAME: dict[str, OpInfo] = {info.name: info for info in OPS}
EFFECT_KINDS: tuple[str, ...] = tuple(info.name for info in OPS if info.effect)

# Fields of `observe`, in operand order (the bytecode stores the index).
OBSERVE_FIELDS: tuple[str, ...] = (
    "energy_used",  # energy spent so far, in units
    "energy_left",  # budget minus energy used, in units
    "budget",  # the budget, in units
    "pc",  # index of this instruction
    "depth",  # operand stack depth before this instruction
    "effects",  # effects performed so far
)


def stack_effect(info: OpInfo, operands: tuple[object, ...]) -> tuple[int, int]:
    """(pops, pushes) of one instruction with its operands."""
    if info.pops >= 0:
        return info.pops, info.pushes
    if info.code == LIST:
        return int(operands[0]), 1  # type: ignore[call-overload]
    if info.code == MAP:
        return 2 * int(operands[0]), 1  # type: ignore[call-overload]
    # call / tool: argc is the second operand.
    return int(operands[1]), 1  # type: ignore[call-overload]
