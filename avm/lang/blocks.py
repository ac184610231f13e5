"""A basic-block compiler: the same semantics as `Frame.run`, less dispatch.

`run_blocks(frame)` is a drop-in for `frame.run()`. The first time it meets a
Code it generates Python source for it, compiles it once with `compile()` and
caches the result (a WeakKeyDictionary keyed by the Code).

Shape of the generated code
---------------------------
The program is cut into basic blocks: straight-line runs of instructions that
start at a *leader* (pc 0, a jump target, the instruction after a jump, an
ending instruction or an effect, every `observe`, and a `format` that follows
a `store` in the same block) and end at a jump, an ending instruction, an
effect, or just before the next leader. All the leader blocks become branches
of one Python function: a ``while True`` loop around a binary tree of
``if pc < X`` tests, so one dispatch costs log2(blocks) comparisons and every
value stays in a fast local. Each block

1. checks its *total* energy against the budget once and charges it once;
2. runs its instructions on a virtual stack of Python locals: `push`, `dup`,
   `swap`, `pop` and `jump` generate no code at all, `load` reads a variable
   at most once per block (and not at all after a `store` to it in the same
   block), `add`/`sub`/`lt`/`eq` get the interpreter's own ``type(x) is int``
   fast path (as do `ne`/`le`/`gt`/`ge`; the check is dropped for int
   constants), a jump on a constant is decided while generating, `call` of a
   known builtin calls its function, `mul`/`div`/`mod`/`neg`/`not`/`and`/`or`
   call the helpers their handlers wrap, `list`/`get`/`format`/`observe` call
   the same helpers as their handlers, and every other instruction calls its
   handler from `avm.lang.ops.TABLE` on a small scratch list of its operands;
3. *commits* at its end: the variables it stored, then the operand stack
   (values it consumed from the stack it found are only read while the block
   runs, and removed here).

A block whose jump goes back to its own start loops inside its branch.

Exactness
---------
Until its commit a block changes nothing the interpreter can see: not the
frame's stack, not its variables (a `format`, which reads the variables, only
ever runs with no store pending: such a `format` starts a new block). That is
what makes the three hard cases easy and exactly right:

- *Budget.* If the block's total cost does not fit, the frame is put at the
  block's start with the energy used before it, and `Frame.run` takes over:
  it executes the block one instruction at a time and stops with
  BudgetExceeded at exactly the instruction where the interpreter stops
  (within the block: the block's cost does not fit). A later run from that
  mid-block pc uses a *tail*: the rest of the block, compiled on demand (once
  per pc) the same way, after which execution continues in the main function.
- *Faults* (and any other exception). The block is abandoned without effect,
  the frame is put back at the block's start with the energy used before it,
  and `Frame.run` re-executes the block: the program is deterministic, so it
  faults at the same instruction with the interpreter's own pc, line, kind,
  message, energy and partly popped stack. A generated block can therefore
  never report a fault differently from the interpreter; all it must do is
  compute the same values, which it does with the same helpers.
- *energy_check / observe* read the energy used so far. Within a block that
  is ``used - R`` for a constant R (the cost of the block after the
  instruction), so energy_check is computed exactly in place; `observe`
  starts a block, so the frame's stack and variables are committed when it
  calls `avm.lang.ops.observe` with the frame's ``used`` set exactly.

Effects, `return` and `halt` end their block: the block commits, sets the
frame's pc and energy and calls `frame._leave` exactly as `Frame.run` does,
so `frame.resume()` works unchanged.

Programs longer than MAX_INSTRUCTIONS, and any Code whose generated source
Python refuses to compile, are run by the interpreter.
"""

from __future__ import annotations

import math
import warnings
import weakref
from typing import Any, Callable

from avm.lang import frame as F
from avm.lang import meter as M
from avm.lang import opcodes as O
from avm.lang import ops as H
from avm.lang.code import Code
from avm.lang.outcomes import Outcome
from avm.lang.values import (
    add,
    div,
    equal,
    less,
    make_items,
    mod,
    mul,
    neg,
    nest,
    sub,
    truthy,
)

__all__ = ["MAX_INSTRUCTIONS", "BlockProgram", "compile_blocks", "run_blocks", "statistics"]

MAX_INSTRUCTIONS = 4_096  # longer programs are left to the interpreter (generation costs ~25 us per instruction)

# Opcodes whose work the meter charges (avm.lang.meter). A block holding one gives them
# the interpreter's free allowance; work beyond it raises, and the interpreter, which
# charges it exactly, runs the block again.
_METERED = frozenset((O.CALL, O.CONCAT, O.FORMAT, O.LIST, O.MAP, O.SET, O.APPEND, O.ADD, O.EQ, O.NE,
                      O.LT, O.LE, O.GT, O.GE))
# Metered only off their int fast path (texts, containers): the general case sets the allowance itself
# (`_metered_pair`), so a block whose add works on ints (a loop counter) never touches the meter.
_LAZY_METERED = frozenset((O.ADD, O.EQ, O.NE, O.LT, O.LE, O.GT, O.GE))

# Opcodes that end a block after themselves.
_ENDS_BLOCK = frozenset(info.code for info in O.OPS if info.jumps or info.ends or info.effect)

_CACHE: weakref.WeakKeyDictionary[Code, BlockProgram | None] = weakref.WeakKeyDictionary()

# How often run_blocks handed a block back to the interpreter, and why.
# meter_fallbacks: blocks whose metered work went past the free allowance (the interpreter charges it).
_STATS = {"programs": 0, "tails": 0, "budget_fallbacks": 0, "exception_fallbacks": 0, "meter_fallbacks": 0,
          "interpreted": 0}


def statistics() -> dict[str, int]:
    """Counters: programs and tails compiled, and fallbacks to the interpreter."""
    return dict(_STATS)


def run_blocks(frame: F.Frame) -> Outcome:
    """Run ``frame`` like `frame.run()`, with compiled blocks. Same outcomes, energy and state."""
    status = frame.status
    if status != F.READY:
        if status == F.WAITING:
            raise F.FrameStateError("run() while an effect is outstanding: resume(result) first")
        assert frame.outcome is not None
        return frame.outcome
    code = frame.code
    try:
        prog = _CACHE[code]
    except KeyError:
        prog = _CACHE[code] = _build(code)
    if prog is None or frame.memory_limit is not None:
        _STATS["interpreted"] += 1
        return frame.run()
    pc = frame.pc
    fn = prog.main if prog.leader[pc] else prog.tail(pc)
    meter = M.current()
    meter.left = M.FREE
    try:
        return fn(frame, frame.stack, frame.variables, pc, frame.used, frame.budget)
    finally:
        meter.left = M.UNMETERED


def _metered_pair(fn: Any) -> Any:
    """``fn(x, b)`` with the free allowance of one metered instruction (see _LAZY_METERED)."""
    meter, free = M._get, M.FREE  # run_blocks has set this context's meter

    def metered(x: Any, b: Any) -> Any:
        meter().left = free
        return fn(x, b)

    return metered


def _make_list(items: list[Any]) -> list[Any]:
    """`list n` as its handler makes it: depth and size checked and charged."""
    nest(items, "list")
    make_items(len(items))
    return items


def compile_blocks(code: Code) -> BlockProgram:
    """The compiled blocks of ``code`` (cached; raises if generation fails, unlike run_blocks)."""
    prog = _CACHE.get(code)
    if prog is None:
        prog = BlockProgram(code)
        _CACHE[code] = prog
    return prog


def _build(code: Code) -> BlockProgram | None:
    if not 0 < code.ninstrs <= MAX_INSTRUCTIONS:
        return None
    try:
        return BlockProgram(code)
    except (SyntaxError, RecursionError, MemoryError, ValueError, OverflowError):
        return None


def _fallback_budget() -> None:
    _STATS["budget_fallbacks"] += 1


def _fallback_exception(exc: Exception) -> None:
    _STATS["meter_fallbacks" if isinstance(exc, M.OutOfEnergy) else "exception_fallbacks"] += 1


class BlockProgram:
    """The blocks of one Code: the main function over the leaders, and tails made on demand."""

    __slots__ = ("ops", "args", "costs", "leader", "ends", "block_cost", "main", "tails", "source", "__weakref__")

    def __init__(self, code: Code):
        ops, args, costs = code.decoded()
        self.ops, self.args, self.costs = ops, args, costs
        n = len(ops)
        leader = [False] * n
        if n:
            leader[0] = True
        for p, op in enumerate(ops):
            if O.OPS[op].jumps:
                leader[args[p]] = True
            if op in _ENDS_BLOCK and p + 1 < n:
                leader[p + 1] = True
            if op == O.OBSERVE:
                leader[p] = True
            if (op == O.GUARD or op == O.END_GUARD) and p + 1 < n:
                # they change the frame itself (in_guard): a fault later in their block would roll the
                # block back to its start, but not that change, and the interpreter would run them twice
                leader[p + 1] = True
        # A format or a load_or reads the variables: no store may be pending when it runs.
        stored = False
        for p, op in enumerate(ops):
            if leader[p]:
                stored = False
            if (op == O.FORMAT or op == O.LOAD_OR) and stored:
                leader[p] = True
                stored = False
            elif op == O.STORE:
                stored = True
        self.leader = leader
        # ends[p]: last instruction of the block that contains p.
        ends = [0] * n
        last = n - 1
        for p in range(n - 1, -1, -1):
            if ops[p] in _ENDS_BLOCK or p + 1 >= n or leader[p + 1]:
                last = p
            ends[p] = last
        self.ends = ends
        self.block_cost = {p: sum(costs[p : ends[p] + 1]) for p in range(n) if leader[p]}
        self.tails: dict[int, Callable[..., Outcome]] = {}
        starts = [p for p in range(n) if leader[p]]
        src, ns = _Generator(self).program(starts)
        self.source = src
        self.main = _compile(src, ns, "main")
        _STATS["programs"] += 1

    def tail(self, pc: int) -> Callable[..., Outcome]:
        """The function that runs from a mid-block ``pc`` to its block's end, then continues in main."""
        fn = self.tails.get(pc)
        if fn is None:
            src, ns = _Generator(self).tail(pc)
            fn = self.tails[pc] = _compile(src, ns, f"tail_{pc}")
            _STATS["tails"] += 1
        return fn


def _compile(src: str, ns: dict[str, Any], name: str) -> Callable[..., Outcome]:
    filename = f"<avm blocks {name}>"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning from generated code is a bug in the generator
        exec(compile(src, filename, "exec"), ns)
    return ns["run"]  # type: ignore[no-any-return]


def _literal(value: Any) -> str | None:
    """Python source for a constant, or None if it must be bound by name."""
    t = type(value)
    if value is None or t is bool or (t is int and value.bit_length() <= 256):
        return repr(value)
    if t is float:
        if not math.isfinite(value):
            return None
        return "(" + repr(value) + ")"
    if t is str and len(value) <= 200:
        return repr(value)
    return None


_BASE_NS = {
    "_add": add,
    "_sub": sub,
    "_mul": mul,
    "_div": div,
    "_mod": mod,
    "_neg": neg,
    "_equal": equal,
    "_truthy": truthy,
    "_observe": H.observe,
    "_format": H.format_text,
    "_get": H.get_item,
    "_fallback_budget": _fallback_budget,
    "_fallback_exception": _fallback_exception,
    "_make_list": _make_list,
    "_CONTAINERS": (list, dict),
    "_meter": M._get,  # the context variable's own get (run_blocks has set this context's meter)
    "_add_m": _metered_pair(add),
    "_equal_m": _metered_pair(equal),
    "_less_m": _metered_pair(less),
    "__builtins__": {"type": type, "int": int, "Exception": Exception},
}

# Binary operators with an int fast path: (python operator, the general case), as Frame.run
# inlines add, sub, lt and eq. The others are exactly their ops.TABLE handlers: `_binary(fn)`
# with fn = ne, le, gt, ge (written with less/equal in avm.lang.ops), which on two ints agree
# with the Python operator.
_INT_BINARY = {
    O.ADD: ("+", "_add_m({x}, {b})"),
    O.SUB: ("-", "_sub({x}, {b})"),
    O.LT: ("<", "_less_m({x}, {b})"),
    O.EQ: ("==", "_equal_m({x}, {b})"),
    O.NE: ("!=", "not _equal_m({x}, {b})"),
    O.LE: ("<=", "not _less_m({b}, {x})"),
    O.GT: (">", "_less_m({b}, {x})"),
    O.GE: (">=", "not _less_m({x}, {b})"),
}
# Instructions whose TABLE handler applies one helper to its operands: `_binary(fn)`, _neg,
# _not, _and, _or. The expression gives the same value (or raises the same way).
_PURE = {
    O.MUL: (2, "_mul({0}, {1})"),
    O.DIV: (2, "_div({0}, {1})"),
    O.MOD: (2, "_mod({0}, {1})"),
    O.NEG: (1, "_neg({0})"),
    O.NOT: (1, "not _truthy({0})"),
    O.AND: (2, "_truthy({0}) and _truthy({1})"),
    O.OR: (2, "_truthy({0}) or _truthy({1})"),
}


class _Generator:
    """Python source for the main function (all leader blocks) or for one tail."""

    def __init__(self, prog: BlockProgram):
        self.prog = prog
        self.ns: dict[str, Any] = dict(_BASE_NS)
        self.ns["OPS"] = prog.ops
        self.ns["ARGS"] = prog.args
        self.bound: dict[int, str] = {}

    def bind(self, obj: Any, hint: str) -> str:
        key = id(obj)
        name = self.bound.get(key)
        if name is None:
            name = f"{hint}{len(self.bound)}"
            self.bound[key] = name
            self.ns[name] = obj
        return name

    # --- whole functions ---

    def program(self, starts: list[int]) -> tuple[str, dict[str, Any]]:
        self.ns["BCOST"] = self.prog.block_cost
        out = [
            "def run(frame, stack, variables, pc, used, budget):",
            "    try:",
            "        while True:",
        ]
        self._tree(starts, 0, len(starts), 3, out)
        out += [
            "    except Exception as exc:",
            "        _fallback_exception(exc)",
            "        frame.pc = pc",
            "        frame.used = used - BCOST[pc]",
            "        return frame.run()",
            *self._epilogue(),
        ]
        return "\n".join(out) + "\n", self.ns

    def tail(self, start: int) -> tuple[str, dict[str, Any]]:
        self.ns["MAIN"] = self.prog.main
        cost = sum(self.prog.costs[start : self.prog.ends[start] + 1])
        out = [
            "def run(frame, stack, variables, pc, used, budget):",
            "    try:",
            "        while True:",
        ]
        self._block(start, cost, 3, out)
        out += [
            "            break",
            "    except Exception as exc:",
            "        _fallback_exception(exc)",
            "        frame.pc = pc",
            f"        frame.used = used - {cost}",
            "        return frame.run()",
            f"    if pc >= 0 and pc != {start}:",
            "        return MAIN(frame, stack, variables, pc, used, budget)",
            *self._epilogue(),
        ]
        return "\n".join(out) + "\n", self.ns

    @staticmethod
    def _epilogue() -> list[str]:
        return [
            "    if pc < 0:",
            "        pc = ~pc",
            "        frame.pc = pc + 1",
            "        frame.used = used",
            "        return frame._leave(OPS[pc], ARGS[pc], pc)",
            "    _fallback_budget()",
            "    frame.pc = pc",
            "    frame.used = used",
            "    return frame.run()",
        ]

    def _tree(self, starts: list[int], lo: int, hi: int, depth: int, out: list[str]) -> None:
        if hi - lo == 1:
            s = starts[lo]
            self._block(s, self.prog.block_cost[s], depth, out)
            return
        mid = (lo + hi) // 2
        pad = "    " * depth
        out.append(f"{pad}if pc < {starts[mid]}:")
        self._tree(starts, lo, mid, depth + 1, out)
        out.append(f"{pad}else:")
        self._tree(starts, mid, hi, depth + 1, out)

    # --- one block ---

    def _block(self, start: int, cost: int, depth: int, out: list[str]) -> None:
        """Code for the block [start, ends[start]] at ``depth``; leaves ``pc`` at the next leader,
        or ``~p`` and breaks for an ending instruction or effect p, or breaks with pc == start
        when the budget does not cover the block."""
        prog = self.prog
        end = prog.ends[start]
        ops, args = prog.ops, prog.args
        last = ops[end]
        self_loop = O.OPS[last].jumps and args[end] == start
        pad = "    " * depth
        out.append(f"{pad}# block {start}..{end}")
        out.append(f"{pad}if used + {cost} > budget:")
        out.append(f"{pad}    break")
        if self_loop:
            out.append(f"{pad}while True:")
            depth += 1
            pad = "    " * depth
        out.append(f"{pad}used += {cost}")
        if any(ops[p] in _METERED and ops[p] not in _LAZY_METERED for p in range(start, end + 1)):
            out.append(f"{pad}_m = _meter()")
            out.append(f"{pad}_m.left = {M.FREE}")
        body = _Block(self, start, cost)
        for p in range(start, end + 1):
            body.instruction(p)
        out.extend(pad + line for line in body.lines)
        commit = body.commit()
        out.extend(pad + line for line in commit)
        nxt = end + 1
        if last == O.JUMP:
            if self_loop:
                out.append(f"{pad}if used + {cost} > budget:")
                out.append(f"{pad}    break")
            else:
                out.append(f"{pad}pc = {args[end]}")
        elif last == O.JUMP_IF or last == O.JUMP_UNLESS:
            cond = body.cond
            taken = cond if last == O.JUMP_IF else f"not {cond}"
            if self_loop:
                out.append(f"{pad}if not {taken}:" if last == O.JUMP_IF else f"{pad}if {cond}:")
                out.append(f"{pad}    pc = {nxt}")
                out.append(f"{pad}    break")
                out.append(f"{pad}if used + {cost} > budget:")
                out.append(f"{pad}    break")
            else:
                out.append(f"{pad}pc = {args[end]} if {taken} else {nxt}")
        elif last in _ENDS_BLOCK:  # return, halt, an effect: leave with the frame committed
            out.append(f"{pad}pc = {~end}")
            out.append(f"{pad}break")
        else:  # falls through to the next leader
            out.append(f"{pad}pc = {nxt}")


class _Block:
    """Generates one block's body on a virtual stack, and its commit."""

    def __init__(self, gen: _Generator, start: int, cost: int):
        self.gen = gen
        self.start = start
        self.cost = cost
        self.spent = 0  # cost of the instructions so far, this one included
        self.lines: list[str] = []
        self.vstack: list[tuple[str, type | None]] = []  # (expression, its type when a constant)
        self.taken = 0  # values consumed from the stack the block found
        self.loaded: dict[str, tuple[str, type | None]] = {}  # variable -> the item holding its value
        self.stores: dict[str, str] = {}  # variable -> expression to store at the commit (first-store order)
        self.ntemps = 0
        self.cond = ""
        self.values: dict[str, Any] = {}  # literal expression -> the constant it stands for
        self.metered = 0  # metered instructions so far

    def temp(self) -> str:
        self.ntemps += 1
        return f"t{self.ntemps}"

    def emit(self, line: str) -> None:
        self.lines.append(line)

    def push(self, expr: str, kind: type | None = None) -> None:
        self.vstack.append((expr, kind))

    def pop(self) -> tuple[str, type | None]:
        if self.vstack:
            return self.vstack.pop()
        self.taken += 1
        name = f"e{self.taken}"
        self.emit(f"{name} = stack[-{self.taken}]")
        return name, None

    def drop(self) -> None:
        if self.vstack:
            self.vstack.pop()
        else:
            self.taken += 1

    def pops(self, n: int) -> list[str]:
        items = [self.pop()[0] for _ in range(n)]
        items.reverse()
        return items

    def const(self, value: Any) -> tuple[str, type | None]:
        lit = _literal(value)
        if lit is None:
            return self.gen.bind(value, "K"), None
        self.values[lit] = value
        return lit, type(value)

    # --- instructions ---

    def instruction(self, p: int) -> None:
        prog = self.gen.prog
        op = prog.ops[p]
        a = prog.args[p]
        self.spent += prog.costs[p]
        if op in _LAZY_METERED:
            self.metered += 1  # its general case sets its own allowance (and a later one must set its own)
        elif op in _METERED:
            # Each metered instruction gets its own free allowance, as in the interpreter (the
            # block start gave the first one its own); its code is emitted right after this.
            if self.metered:
                self.emit(f"_m.left = {M.FREE}")
            self.metered += 1
        if op == O.PUSH:
            self.push(*self.const(a))
        elif op == O.LOAD:
            item = self.loaded.get(a)
            if item is None:
                t = self.temp()
                self.emit(f"{t} = variables[{a!r}]")
                item = self.loaded[a] = (t, None)
            self.push(*item)
        elif op == O.STORE:
            item = self.pop()
            self.stores[a] = item[0]
            self.loaded[a] = item
        elif op == O.POP:
            self.drop()
        elif op == O.DUP:
            item = self.pop()
            self.push(*item)
            self.push(*item)
        elif op == O.SWAP:
            top = self.pop()
            under = self.pop()
            self.push(*top)
            self.push(*under)
        elif op in _INT_BINARY:
            pyop, general = _INT_BINARY[op]
            b, kb = self.pop()
            x, kx = self.pop()
            t = self.temp()
            checks = [f"type({e}) is int" for e, k in ((x, kx), (b, kb)) if k is not int]
            if not checks:
                self.emit(f"{t} = {x} {pyop} {b}")
            else:
                self.emit(f"{t} = {x} {pyop} {b} if {' and '.join(checks)} else {general.format(x=x, b=b)}")
            self.push(t)
        elif op in _PURE:
            n, expr = _PURE[op]
            argv = self.pops(n)
            t = self.temp()
            self.emit(f"{t} = {expr.format(*argv)}")
            self.push(t)
        elif op == O.JUMP_IF or op == O.JUMP_UNLESS:
            x, kind = self.pop()
            c = self.temp()
            if kind is None:
                self.emit(f"{c} = {x} is True or ({x} is not False and _truthy({x}))")
            else:  # a constant: its truthiness is known now
                self.emit(f"{c} = {truthy(self.values[x])!r}")
            self.cond = c
        elif op == O.JUMP:
            pass
        elif op == O.ENERGY_CHECK:
            t = self.temp()
            self.emit(f"{t} = budget - (used - {self.cost - self.spent}) >= {a!r}")
            self.push(t)
        elif op == O.OBSERVE:
            assert p == self.start, "observe must start its block"
            t = self.temp()
            self.emit(f"frame.used = used - {self.cost - self.spent}")
            self.emit(f"{t} = _observe(frame, {a!r}, {p})")
            self.push(t)
        elif op == O.FORMAT:
            assert not self.stores, "format must not run with a store pending"
            x, _ = self.pop()
            t = self.temp()
            self.emit(f"{t} = _format({x}, variables)")
            self.push(t)
        elif op == O.CALL and a[0] is not None:
            builtin, _name, argc = a
            argv = self.pops(argc)
            fn = self.gen.bind(builtin.fn, "B")
            t = self.temp()
            self.emit(f"{t} = {fn}({', '.join(argv)})")
            self.push(t)
        elif op == O.LIST:
            argv = self.pops(a)
            t = self.temp()
            if argv and a * M.ITEM_BYTES // M.BYTES_PER_MILLI <= M.FREE:
                # A short list of no containers does all its work (no depth to check, `a` items made)
                # within the free allowance, and blocks run with no memory ceiling (run_blocks): the
                # handler's checks and charges are only needed when an item is a container.
                nested = " or ".join(f"type({x}) in _CONTAINERS" for x in argv)
                self.emit(f"{t} = [{', '.join(argv)}]")
                self.emit(f"if {nested}:")
                self.emit(f"    _make_list({t})")
            else:
                self.emit(f"{t} = _make_list([{', '.join(argv)}])")
            self.push(t)
        elif op == O.GET:
            k, _ = self.pop()
            c, _ = self.pop()
            t = self.temp()
            self.emit(f"{t} = _get({c}, {k})")
            self.push(t)
        elif O.OPS[op].effect or op == O.RETURN or op == O.HALT:
            pass  # left on the virtual stack; frame._leave pops them after the commit
        else:
            self.handler(op, a)

    def handler(self, op: int, a: Any) -> None:
        """Any other instruction: its TABLE handler on a scratch list holding its operands."""
        info = O.OPS[op]
        if op == O.LIST or op == O.MAP:
            operands: tuple[Any, ...] = (a,)
        elif op == O.CALL:
            operands = (a[1], a[2])
        else:
            operands = ()
        pops, pushes = O.stack_effect(info, operands)
        fn = H.TABLE[op]
        assert fn is not None and pushes <= 1, info.name
        h = self.gen.bind(fn, "H")
        arg = _literal(a)
        if arg is None:
            arg = self.gen.bind(a, "A")
        argv = self.pops(pops)
        if pushes == 0:
            self.emit(f"{h}(frame, [{', '.join(argv)}], {arg})")
            return
        s = self.temp()
        self.emit(f"{s} = [{', '.join(argv)}]")
        self.emit(f"{h}(frame, {s}, {arg})")
        t = self.temp()
        self.emit(f"{t}, = {s}")
        self.push(t)

    # --- the end of the block ---

    def commit(self) -> list[str]:
        out = [f"variables[{name!r}] = {expr}" for name, expr in self.stores.items()]
        items = [expr for expr, _ in self.vstack]
        m = self.taken
        if m == 0:
            if len(items) == 1:
                out.append(f"stack.append({items[0]})")
            elif items:
                out.append(f"stack += ({', '.join(items)},)")
        elif not items:
            out.append(f"del stack[-{m}:]")
        elif m == 1 and len(items) == 1:
            if items[0] != "e1":
                out.append(f"stack[-1] = {items[0]}")
        else:
            out.append(f"stack[-{m}:] = ({', '.join(items)},)")
        return out
