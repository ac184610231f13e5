"""The static validator, run by the compiler (and by Code.from_bytes).

It walks every path through the program with the stack depth each path has:

- a jump target must exist;
- an instruction must never pop more values than any path leaves on the stack;
- where paths merge, they must agree on the depth;
- instructions no path reaches are reported as warnings, not errors;
- guarded sections (``guard`` ... ``end_guard``) do not nest and are closed; no
  jump enters one but at its guard, none leaves one, and no ``return`` or
  ``halt`` ends the program inside one: a section runs in order, to its end.

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
    _check_sections(instrs, fail, where)
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
            result.warnings.append((line, f"unreachable code: {count} instruction{'s' if count != 1 else ''} "
                                          "never run"))
            i = j + 1
        else:
            i += 1
    return result


def _check_sections(instrs: Sequence[tuple[O.OpInfo, tuple[Any, ...]]], fail: Callable[[str, int], CompileError],
                    where: Callable[[int], str]) -> None:
    """The guarded sections' rules (see the module docstring)."""
    n = len(instrs)
    section = [-1] * n  # the index of the guard of the section each instruction is in, or -1
    open_at = -1
    ending = -1  # the first return or halt inside a section
    for i, (info, _) in enumerate(instrs):
        if info.code == O.GUARD:
            if open_at != -1:
                raise fail("guard inside a guarded section (sections do not nest)", i)
            open_at = i
        elif info.code == O.END_GUARD and open_at == -1:
            raise fail("end_guard without a guard before it", i)
        elif open_at != -1 and info.ends and not info.jumps and ending == -1:
            ending = i
        section[i] = open_at
        if info.code == O.END_GUARD:
            open_at = -1
    if open_at != -1:
        raise fail("guard without an end_guard after it", open_at)
    if ending != -1:
        raise fail(f"{instrs[ending][0].name} inside a guarded section: a section runs to its end_guard", ending)
    if not any(s != -1 for s in section):
        return
    for i, (info, operands) in enumerate(instrs):
        if not info.jumps:
            continue
        target = operands[0]
        if not 0 <= target < n:
            continue  # (reported by the walk)
        inside, into = section[i], section[target]
        if inside != -1 and into != inside:
            raise fail(f"jump out of the guarded section that begins at instruction {inside} "
                       f"(to {where(target)})", i)
        if into != -1 and inside != into and target != into:
            raise fail(f"jump into the middle of a guarded section ({where(target)}); enter it at its guard", i)
        if into != -1 and inside == into and target == into:
            raise fail("jump back to the guard of the section it is in: a section runs once, in order", i)
