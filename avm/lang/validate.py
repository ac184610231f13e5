"""The static validator, run by the compiler (and by Code.from_bytes).

It walks every path through the program with the stack depth each path has:

- a jump target must exist;
- an instruction must never pop more values than any path leaves on the stack;
- where paths merge, they must agree on the depth;
- instructions no path reaches are reported as warnings, not errors.

Every stack effect is static, so this also gives the program's maximum stack
depth, which bounds an agent's stack without a check per push at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from avm.errors import CompileError
from avm.lang import opcodes as O


@dataclass
class Validation:
    max_stack: int = 0
    depths: list[int] = field(default_factory=list)  # stack depth before each instruction; -1 if unreachable
    warnings: list[tuple[int, str]] = field(default_factory=list)


def validate(
    instrs: Sequence[tuple[O.OpInfo, tuple[Any, ...]]],
    lines: Sequence[int],
    error: Callable[[str, int], CompileError] | None = None,
    label_names: dict[int, str] | None = None,
) -> Validation:
    """Check a program; raise CompileError (via ``error(message, index)``) on the first problem."""

    def fail(message: str, index: int) -> CompileError:
        if error is not None:
            return error(message, index)
        line = lines[index] if index < len(lines) else 0
        return CompileError(message, line, 1)

    def where(target: int) -> str:
        if label_names and target in label_names:
            return f"label {label_names[target]!r}"
        return f"instruction {target}"

    n = len(instrs)
    depth: list[int] = [-1] * n
    result = Validation()
    if n == 0:
        return result
    depth[0] = 0
    work = [0]
    while work:
        i = work.pop()
        d = depth[i]
        info, operands = instrs[i]
        pops, pushes = O.stack_effect(info, operands)
        if d < pops:
            have = "none" if d == 0 else f"only {d}"
            raise fail(f"stack underflow: {info.name} needs {pops} value{'s' if pops != 1 else ''}, "
                       f"{have} on the stack here", i)
        after = d - pops + pushes
        if after > result.max_stack:
            result.max_stack = after
        successors: list[int] = []
        if info.jumps:
            target = operands[0]
            if not 0 <= target < n:
                raise fail(f"jump target {target} does not exist", i)
            successors.append(target)
        if not info.ends:
            if i + 1 >= n:
                raise fail("control falls off the end of the program", i)
            successors.append(i + 1)
        for s in successors:
            if depth[s] == -1:
                depth[s] = after
                work.append(s)
            elif depth[s] != after:
                raise fail(f"inconsistent stack depth at {where(s)}: {depth[s]} on one path, {after} on another", i)
    result.depths = depth
    i = 0
    while i < n:
        if depth[i] == -1:
            j = i
            while j + 1 < n and depth[j + 1] == -1:
                j += 1
            line = lines[i] if i < len(lines) else 0
            count = j - i + 1
            result.warnings.append((line, f"unreachable code: {count} instruction{'s' if count != 1 else ''} never run"))
            i = j + 1
        else:
            i += 1
    return result
