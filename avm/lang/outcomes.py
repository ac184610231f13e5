"""What `Frame.run()` returns: an Effect, or one of the ways a run ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Effect:
    """The program needs the outside world.

    ``kind`` is the instruction (llm, tool, send, recv, spawn, delegate, sleep)
    and ``args`` its popped operands in source order:

        llm       (message,)
        tool      (tool_name, [arg1, arg2, ...])
        send      (target, message)
        recv      (timeout_seconds_or_null,)
        spawn     (program, inputs, budget)
        delegate  (program, inputs, budget)
        sleep     (seconds,)

    The host performs it and calls ``frame.resume(result)``; the result is
    pushed on the stack.
    """

    kind: str
    args: tuple[Any, ...]
    pc: int
    line: int


@dataclass(frozen=True, slots=True)
class Done:
    """The program ended: `return` (its value) or `halt` (null)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Fault:
    """The program did something wrong at ``pc`` (source ``line``); the frame is finished."""

    error: str
    pc: int
    line: int
    kind: str = "Fault"

    def __str__(self) -> str:
        return f"line {self.line}: {self.kind}: {self.error}"


@dataclass(frozen=True, slots=True)
class BudgetExceeded:
    """The next instruction costs more than the energy left.

    The frame is intact: ``frame.add_budget(x)`` then ``frame.run()`` continues.
    """

    energy_used: float
    budget: float
    needed: float  # the cost of the instruction that could not run
    pc: int
    line: int


@dataclass(frozen=True, slots=True)
class Stalled:
    """The last ``count`` effects had identical requests and identical results."""

    kind: str
    count: int
    pc: int
    line: int


@dataclass(frozen=True, slots=True)
class Preempted:
    """`run(quantum=...)` spent its quantum: the frame is READY; call `run()` again.

    Only a host that passes a quantum sees this; it is how the runtime makes a
    long stretch of instructions yield to other agents (as BEAM's reduction
    count does) without touching the budget that the program can observe.
    """

    pc: int


Outcome = Effect | Done | Fault | BudgetExceeded | Stalled | Preempted
