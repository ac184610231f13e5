"""`Frame`: one running program, sans-I/O.

A frame holds a pc, an operand stack, variables (the inputs are the initial
variables) and the energy used. `run()` executes instructions until the
program needs the outside world (it returns an `Effect`), ends (`Done`),
faults (`Fault`), runs out of energy (`BudgetExceeded`, the frame intact) or
repeats itself (`Stalled`). The caller performs an effect and calls
`resume(result)`, then `run()` again.

Energy is kept in integer milli-units. Each instruction's cost comes from one
table (avm.lang.opcodes, plus a builtin's own cost for `call`) and is charged
in one place, before the instruction runs; an instruction that would take
``energy_used`` past the budget does not run. So ``energy_used <= budget``
always holds and ``energy_used`` is exactly the sum of the costs of the
instructions executed (plus whatever the host charged with `charge()`).

Stall detection: when ``stall_limit`` consecutive effects have identical
requests and identical results, the frame ends as Stalled. `sleep` and a
`recv` that timed out (null) are exempt by default: polling with a timer is
legitimate, and energy bounds it.
"""

from __future__ import annotations

from typing import Any, Mapping

from avm.errors import AvmError
from avm.lang import meter as M
from avm.lang import opcodes as O
from avm.lang import ops as H
from avm.lang.code import Code
from avm.lang.outcomes import (
    BudgetExceeded,
    Done,
    Effect,
    Fault,
    Outcome,
    Preempted,
    Stalled,
)
from avm.lang.values import LONG_TEXT, VMFault, equal, is_value, lone_surrogate, truthy, type_name
from avm.lang.values_held import held_bytes

READY = "ready"
WAITING = "waiting"  # an Effect is out; resume() is next
EXHAUSTED = "exhausted"  # BudgetExceeded; add_budget() then run()
DONE = "done"
FAULTED = "faulted"
STALLED = "stalled"
TERMINAL = frozenset({DONE, FAULTED, STALLED})

DEFAULT_STALL_LIMIT = 5
MEMORY_CHECK_MIN = 64 << 10  # bytes made between two measurements of what a frame holds, at least
STALL_EXEMPT = ("sleep",)


# Instructions whose work grows with their operands (see avm.lang.meter): the interpreter gives
# each a meter allowance and charges what it used beyond FREE. add and eq reach that path only
# off their fast path (not two ints; eq: a list or map on top), lt and eq also for a text longer than
# LONG_TEXT on top (comparing it may read it whole); le, gt and ge always.
#
# The handlers of these instructions (avm.lang.ops) leave the stack untouched until their work
# is done and paid for: so one that runs out of energy leaves the stack as it was before it,
# and the interpreter need not save and restore its operands.
_METERED = [False] * len(O.OPS)
for _op in (O.CALL, O.CONCAT, O.FORMAT, O.LIST, O.MAP, O.SET, O.APPEND, O.NE, O.ADD, O.EQ, O.LT, O.LE, O.GT, O.GE):
    _METERED[_op] = True
NO_CAP = M.UNMETERED  # the per-instruction work limit of a frame that has none


def _name(op: int, a: Any) -> str:
    """An instruction's name as a fault message names it (a call: the builtin's)."""
    return str(a[1]) if op == O.CALL else O.OPS[op].name


def check_memory_limit(limit: int | None) -> int | None:
    """``limit`` if it is a memory limit (a positive int of bytes, or None); else ValueError."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"memory_limit must be a positive int of bytes or None, not {limit!r}")
    return limit


class FrameStateError(AvmError):
    """The host used a frame out of order (run while an effect is out, resume with nothing out...)."""


def to_milli(units: float, what: str = "energy") -> int:
    if isinstance(units, bool) or not isinstance(units, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(units).__name__}")
    if units != units or units < 0 or units > 1e12:
        raise ValueError(f"{what} must be between 0 and 1e12, got {units}")
    return int(round(units * 1000))


class Frame:
    """A program in execution. See the module docstring."""

    __slots__ = (
        "code", "pc", "stack", "variables", "used", "budget", "status", "pending", "effects",
        "stall_limit", "stall_count", "last_request", "last_result", "outcome",
        "memory_limit", "held", "allocated", "instruction_limit", "in_guard",
    )

    def __init__(self, code: Code, budget: float = 100.0, inputs: Mapping[str, Any] | None = None,
                 *, stall_limit: int = DEFAULT_STALL_LIMIT, memory_limit: int | None = None,
                 instruction_limit: float | None = None):
        if not isinstance(code, Code):
            raise TypeError(f"Frame needs a compiled avm.Code, not {type(code).__name__}")
        self.code = code
        self.pc = 0
        self.stack: list[Any] = []
        self.variables: dict[str, Any] = {}
        if inputs:
            for name, value in inputs.items():
                if type(name) is not str:
                    raise TypeError(f"input names must be text, not {type(name).__name__}")
                if not is_value(value):
                    raise TypeError(f"input {name!r}: {type_name(value)} is not a VM value")
                bad = lone_surrogate(value)
                if bad is not None:
                    raise ValueError(f"input {name!r}: a lone surrogate ({bad}) is not text")
                self.variables[name] = value
        self.used = 0
        self.budget = to_milli(budget, "budget")
        self.status = READY
        self.pending: Effect | None = None
        self.effects = 0
        if isinstance(stall_limit, bool) or not isinstance(stall_limit, int) or stall_limit < 0:
            raise ValueError(f"stall_limit must be an int >= 0 (0 disables), not {stall_limit!r}")
        self.stall_limit = stall_limit
        self.stall_count = 0
        self.last_request: tuple[Any, ...] | None = None
        self.last_result: Any = None
        self.outcome: Outcome | None = None
        self.set_memory_limit(memory_limit)
        self.set_instruction_limit(instruction_limit)
        self.held = 0
        self.allocated = 0
        self.in_guard = False  # between a guard and its end_guard

    def set_memory_limit(self, limit: int | None) -> None:
        """Bytes the frame's values may hold (None: no ceiling); past it, the instruction faults."""
        self.memory_limit = check_memory_limit(limit)

    def set_instruction_limit(self, units: float | None) -> None:
        """Energy of metered work (avm.lang.meter) one instruction may do (None: as much as the
        budget allows). An instruction whose work would go past it faults with LimitError, the
        work it did charged: so no instruction holds the CPU much longer than this much energy
        buys. The VM sets its scheduling quantum here. Not part of a snapshot: the host sets it
        again after a restore, as it does the memory limit."""
        if units is None:
            self.instruction_limit: int | None = None
            return
        milli = to_milli(units, "instruction_limit")
        if milli <= 0:
            raise ValueError(f"instruction_limit must be positive energy or None, not {units!r}")
        self.instruction_limit = milli

    @property
    def memory_held(self) -> int:
        """Bytes the frame's values held at the last memory check, plus those made since (an upper bound)."""
        return self.held + self.allocated

    # --- energy ---

    @property
    def energy_used(self) -> float:
        return self.used / 1000

    @property
    def energy_left(self) -> float:
        return (self.budget - self.used) / 1000

    def add_budget(self, units: float) -> None:
        """Raise the budget; a frame that ran out may then run again."""
        self.budget += to_milli(units, "added budget")
        if self.status == EXHAUSTED:
            self.status = READY
            self.outcome = None

    def charge(self, units: float) -> bool:
        """Charge host work (LLM tokens, tool time) to the frame.

        Returns False if the budget could not cover it: the frame is then
        charged up to its budget and the next `run()` reports BudgetExceeded.
        """
        milli = to_milli(units, "charge")
        if self.used + milli <= self.budget:
            self.used += milli
            return True
        self.used = self.budget
        if self.status == READY:
            self.status = EXHAUSTED
            self.outcome = BudgetExceeded(self.used / 1000, self.budget / 1000, milli / 1000, self.pc,
                                          self.line_at(self.pc))
        return False

    def refund(self, units: float) -> None:
        """Give back energy charged earlier with `charge()` (a child's unspent budget).

        Never takes ``energy_used`` below zero; a frame that ran out may run again.
        """
        self.used = max(0, self.used - to_milli(units, "refund"))
        if self.status == EXHAUSTED and isinstance(self.outcome, BudgetExceeded) and self.used + round(
                self.outcome.needed * 1000) <= self.budget:
            self.status = READY
            self.outcome = None

    def line_at(self, pc: int) -> int:
        lines = self.code.lines
        return lines[pc] if 0 <= pc < len(lines) else 0

    # --- effects ---

    def resume(self, result: Any = None) -> None:
        """Deliver the result of the pending effect; `run()` continues after it."""
        if self.status != WAITING or self.pending is None:
            raise FrameStateError(f"resume() with no effect outstanding (frame is {self.status})")
        if not is_value(result):
            raise TypeError(f"effect result must be a VM value, not {type_name(result)}")
        effect = self.pending
        self.pending = None
        bad = lone_surrogate(result)
        if bad is not None:  # text from outside (a tool, an LLM reply) that is not text: the effect faults
            self._fault(effect.pc, self.used, "ValueError", f"{effect.kind}: a lone surrogate ({bad}) is not text")
            return
        self.stack.append(result)
        self.effects += 1
        self.status = READY
        limit = self.memory_limit
        if limit is not None and type(result) is not bool and result is not None:
            # What an effect hands the program is held like what it makes: a receiver that keeps the
            # messages, tool results or replies it gets is held to its ceiling too.
            self.allocated += len(result) if type(result) is str else held_bytes([result], {}, limit)[0]
            if self._memory_due(limit):
                held = held_bytes(self.stack, self.variables, limit)[0]
                self.held, self.allocated = held, 0
                if held > limit:
                    self._fault(effect.pc, self.used, "MemoryLimit",
                                f"{effect.kind}: the agent's values hold more than its limit of {limit} bytes")
                    return
        if self.stall_limit and effect.kind not in STALL_EXEMPT and not (effect.kind == "recv" and result is None):
            request = (effect.kind, effect.args)
            if self.last_request is not None and _same(request, self.last_request) and _same(result, self.last_result):
                self.stall_count += 1
            else:
                self.stall_count = 1
            self.last_request = request
            self.last_result = result
            if self.stall_count >= self.stall_limit:
                self.status = STALLED
                self.outcome = Stalled(effect.kind, self.stall_count, effect.pc, effect.line)
        else:
            self.stall_count = 0
            self.last_request = None
            self.last_result = None

    def fail(self, kind: str, message: str) -> Fault:
        """The host's verdict that the outstanding effect is a fault of the program
        (a tool it was not granted, an LLM message it cannot send): the frame ends
        FAULTED at the effect's instruction, as if that instruction had faulted."""
        if self.status != WAITING or self.pending is None:
            raise FrameStateError(f"fail() with no effect outstanding (frame is {self.status})")
        pc = self.pending.pc
        self.pending = None
        return self._fault(pc, self.used, kind, message)

    # --- the interpreter ---

    def run(self, quantum: int = 0) -> Outcome:
        """Run until an effect, the end, a fault, budget exhaustion or a stall.

        With ``quantum`` > 0 (milli-units), also stop with `Preempted` before
        the instruction that would take this run's energy past ``quantum``;
        the frame stays READY and the next `run()` continues exactly there.
        The quantum is not the budget: `energy_check` and `observe` still see
        the real budget, so preemption never changes what a program does.
        """
        status = self.status
        if status != READY:
            if status == WAITING:
                raise FrameStateError("run() while an effect is outstanding: resume(result) first")
            assert self.outcome is not None
            return self.outcome
        ops, args, costs = self.code.decoded()
        stack = self.stack
        push = stack.append
        pop = stack.pop
        variables = self.variables
        pc = self.pc
        used = self.used
        budget = self.budget
        # A quantum below the next instruction's cost still runs that instruction: progress is guaranteed.
        stop = (budget if quantum <= 0
                else min(budget, used + max(quantum, self.code.decoded()[2][pc] if pc < len(ops) else 0)))
        table = H.TABLE
        metered = _METERED
        LOAD, STORE, PUSH, ADD, SUB, LT, JUMP_IF, JUMP, JUMP_UNLESS, EQ, POP, DUP = (
            O.LOAD, O.STORE, O.PUSH, O.ADD, O.SUB, O.LT, O.JUMP_IF, O.JUMP, O.JUMP_UNLESS, O.EQ, O.POP, O.DUP)
        ENERGY_CHECK, OBSERVE = O.ENERGY_CHECK, O.OBSERVE
        # The meter, looked up once: run() is synchronous, so its context cannot change under it.
        meter = M.current()
        FREE, UNMETERED = M.FREE, M.UNMETERED
        cap = self.instruction_limit
        if cap is None:
            cap = NO_CAP
        mem_limit = self.memory_limit
        # Bytes made since the last measurement at which to measure again (see _memory_due).
        due = NO_CAP if mem_limit is None else self._memory_threshold(mem_limit)
        # The allowance of the metered instruction running, or 0 between them (no work is metered).
        start = 0
        op = -1
        try:
            while True:
                used += costs[pc]
                if used > stop:
                    used -= costs[pc]
                    self.pc = pc
                    self.used = used
                    if used + costs[pc] <= budget:
                        return Preempted(pc)
                    self.status = EXHAUSTED
                    out: Outcome = BudgetExceeded(used / 1000, budget / 1000, costs[pc] / 1000, pc, self.line_at(pc))
                    self.outcome = out
                    return out
                op = ops[pc]
                a = args[pc]
                pc += 1
                # Every instruction but a metered one ends its branch with `continue` (the jump back
                # that falling off the chain would take anyway); a metered one falls through to the
                # meter below: add and eq only off their fast paths.
                if op == LOAD:
                    push(variables[a])
                    continue
                elif op == PUSH:
                    push(a)
                    continue
                elif op == STORE:
                    variables[a] = pop()
                    continue
                elif op == ADD:
                    b = pop()
                    x = stack[-1]
                    if type(x) is int and type(b) is int:
                        stack[-1] = x + b
                        continue
                    if type(b) is not str and type(b) is not list:
                        stack[-1] = H.add(x, b)
                        continue
                    push(b)  # texts and lists: metered
                elif op == JUMP_IF:
                    x = pop()
                    if x is True or (x is not False and truthy(x)):
                        pc = a
                    continue
                elif op == LT:
                    b = pop()
                    x = stack[-1]
                    if type(x) is int and type(b) is int:
                        stack[-1] = x < b
                        continue
                    if type(b) is not str or len(b) <= LONG_TEXT:
                        stack[-1] = H.less(x, b)
                        continue
                    push(b)  # a long text: metered
                elif op == JUMP:
                    pc = a
                    continue
                elif op == JUMP_UNLESS:
                    x = pop()
                    if x is False or (x is not True and not truthy(x)):
                        pc = a
                    continue
                elif op == SUB:
                    b = pop()
                    x = stack[-1]
                    if type(x) is int and type(b) is int:
                        stack[-1] = x - b
                    else:
                        stack[-1] = H.sub(x, b)
                    continue
                elif op == EQ:
                    b = pop()
                    tb = type(b)
                    if tb is not list and tb is not dict and (tb is not str or len(b) <= LONG_TEXT):
                        stack[-1] = equal(stack[-1], b)
                        continue
                    push(b)  # containers and long texts: metered
                elif op == POP:
                    pop()
                    continue
                elif op == DUP:
                    push(stack[-1])
                    continue
                elif not metered[op]:
                    handler = table[op]
                    if handler is not None:
                        handler(self, stack, a)
                        continue
                    if op == ENERGY_CHECK:
                        push(budget - used >= a)
                        continue
                    if op == OBSERVE:
                        self.used = used
                        push(H.observe(self, a, pc - 1))
                        continue
                    # Control that ends the run or leaves the VM.
                    self.pc = pc
                    self.used = used
                    return self._leave(op, a, pc - 1)
                # A metered instruction: work that grows with its operands. It may spend what the
                # budget has left, at most the instruction limit, plus the FREE allowance its fixed
                # cost includes. Running out raises out of the loop (see the handlers below), the
                # stack untouched.
                room = budget - used
                start = room + FREE if room <= cap else cap + FREE
                meter.left = start
                meter.allocated = 0
                table[op](self, stack, a)  # type: ignore[misc]
                if mem_limit is not None:
                    self.allocated += meter.allocated
                    if self.allocated >= due:
                        self._check_memory(meter)
                        due = self._memory_threshold(mem_limit)
                spent = start - meter.left
                meter.left = UNMETERED
                start = 0
                if spent > FREE:
                    used += spent - FREE
        except M.OutOfEnergy as exc:
            # A metered instruction's work did not fit (nothing else runs with a meter that can run
            # out). What it did stays charged; the stack is as before it.
            pc -= 1
            charged = max(0, start - meter.left - FREE)
            if cap < budget - used:
                return self._fault(pc, used + charged, "LimitError",
                                   f"{_name(op, a)}: the work of one instruction exceeds the limit of "
                                   f"{cap / 1000:g} energy")
            self.pc = pc
            self.used = used + charged
            self.status = EXHAUSTED
            # All the instruction is known to need: its fixed cost, what it did, and what it asked
            # for and could not have. The instruction starts over when the frame continues, and pays
            # again for what it does again.
            needed = costs[pc] + max(0, start - FREE + exc.needed)
            out = BudgetExceeded(self.used / 1000, budget / 1000, needed / 1000, pc, self.line_at(pc))
            self.outcome = out
            return out
        except VMFault as exc:
            # A fault keeps the work done charged: a metered instruction's from the meter.
            charged = max(0, start - meter.left - FREE) if start else exc.charged
            return self._fault(pc - 1, used + charged, exc.kind, exc.message)
        except KeyError as exc:
            if op == LOAD:
                return self._fault(pc - 1, used, "NameError", f"undefined variable {exc.args[0]!r}")
            raise
        except (RecursionError, MemoryError) as exc:
            if start:
                message = ("value nested too deeply" if isinstance(exc, RecursionError)
                           else "the host ran out of memory making this value")
                return self._fault(pc - 1, used + max(0, start - meter.left - FREE), "LimitError", message)
            if isinstance(exc, MemoryError):
                raise
            return self._fault(pc - 1, used, "LimitError", "value nested too deeply")
        except ArithmeticError as exc:  # OverflowError: an int too large for a float, ...
            return self._fault(pc - 1, used, "ArithmeticError", str(exc))
        finally:
            meter.left = UNMETERED

    def _memory_threshold(self, limit: int) -> int:
        """Bytes to make since the last measurement of what the frame holds before measuring again:
        at least MEMORY_CHECK_MIN, and never so many that they could pass ``limit`` unseen."""
        return max(MEMORY_CHECK_MIN, min(self.held, limit // 4), limit - self.held)

    def _memory_due(self, limit: int) -> bool:
        """Whether enough has been made since the last measurement of what the frame holds to measure again."""
        return self.allocated >= self._memory_threshold(limit)

    def _check_memory(self, m: Any) -> None:
        """Measure what the frame holds (charged, as far as the budget goes); LimitError past the ceiling."""
        limit = self.memory_limit
        assert limit is not None
        held, nodes = held_bytes(self.stack, self.variables, limit)
        m.left -= min(max(m.left, 0), nodes * M.NODE_MILLI)
        self.held = held
        self.allocated = 0
        if held > limit:
            raise VMFault("MemoryLimit", f"the agent's values hold more than its limit of {limit} bytes")

    def _fault(self, pc: int, used: int, kind: str, message: str) -> Fault:
        self.pc = pc
        self.used = used
        self.status = FAULTED
        out = Fault(message, pc, self.line_at(pc), kind)
        self.outcome = out
        return out

    def _leave(self, op: int, a: Any, pc: int) -> Outcome:
        """return / halt / an effect instruction at ``pc`` (already charged)."""
        stack = self.stack
        if op == O.RETURN:
            out: Outcome = Done(stack.pop())
            self.status = DONE
            self.outcome = out
            return out
        if op == O.HALT:
            out = Done(None)
            self.status = DONE
            self.outcome = out
            return out
        try:
            effect_args = H.effect_args(op, a, stack)
        except VMFault as exc:
            return self._fault(pc, self.used, exc.kind, exc.message)
        effect = Effect(O.OPS[op].name, effect_args, pc, self.line_at(pc))
        self.pending = effect
        self.status = WAITING
        return effect

    # --- snapshots ---

    def snapshot(self) -> bytes:
        """The frame's whole state as bytes; `Frame.restore(code, data)` brings it back."""
        from avm.lang.snapshot import encode_frame

        return encode_frame(self)

    @classmethod
    def restore(cls, code: Code, data: bytes) -> Frame:
        """A frame from `snapshot()` bytes, for the same code (raises SnapshotError)."""
        from avm.lang.snapshot import decode_frame

        return decode_frame(cls, code, data)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def __repr__(self) -> str:
        return (f"<avm.Frame {self.code.id[:12]} pc={self.pc} {self.status} "
                f"energy={self.energy_used:g}/{self.budget / 1000:g}>")


# Parts the stall check compares at most: it runs outside any instruction, unmetered, on every
# effect result. A flat list of MAX_ITEMS items compares in full.
STALL_COMPARE_NODES = 1 << 17


def _same(a: Any, b: Any) -> bool:
    """The stall check's equality: total and bounded. Two values too big to compare within
    STALL_COMPARE_NODES parts count as different (energy still bounds such a loop); it never
    raises, so a big value delivered twice is no error of the agent that receives it."""
    try:
        return equal(a, b, STALL_COMPARE_NODES)
    except (VMFault, M.OutOfEnergy):
        return False
