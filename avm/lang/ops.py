"""What each instruction does, for the ones the interpreter loop does not inline.

`TABLE[opcode]` is a handler ``(frame, stack, operand) -> None`` that works on
the stack, or None for the instructions the loop handles itself (the hot
ones, control flow, energy_check, observe) and for those that leave the VM
(return, halt, effects; see `effect_args`).

The handlers of metered instructions (see avm.lang.frame._METERED) take their
operands from the stack only once their work is done and paid for: one that
runs out of energy (avm.lang.meter.OutOfEnergy) must leave the stack as it
found it, so that the instruction can start over when the frame continues.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from avm.lang import meter
from avm.lang import opcodes as O
from avm.lang.builtins import _get
from avm.lang.values import (
    MAX_TEXT,
    VMFault,
    add,
    div,
    equal,
    is_number,
    less,
    make_items,
    make_text,
    mod,
    mul,
    neg,
    nest,
    render,
    sub,
    truthy,
    type_name,
)

__all__ = ["TABLE", "add", "sub", "less", "effect_args", "observe", "format_text"]

Handler = Callable[[Any, list, Any], None]


def _swap(frame: Any, stack: list, a: Any) -> None:
    stack[-1], stack[-2] = stack[-2], stack[-1]


def _binary(fn: Callable[[Any, Any], Any]) -> Handler:
    def handler(frame: Any, stack: list, a: Any) -> None:
        result = fn(stack[-2], stack[-1])  # add, eq and ne are metered: the operands stay until it is made
        del stack[-1]
        stack[-1] = result

    return handler


def _neg(frame: Any, stack: list, a: Any) -> None:
    stack[-1] = neg(stack[-1])


def _not(frame: Any, stack: list, a: Any) -> None:
    stack[-1] = not truthy(stack[-1])


def _and(frame: Any, stack: list, a: Any) -> None:
    b = stack.pop()
    stack[-1] = truthy(stack[-1]) and truthy(b)


def _or(frame: Any, stack: list, a: Any) -> None:
    b = stack.pop()
    stack[-1] = truthy(stack[-1]) or truthy(b)


def _ne(x: Any, y: Any) -> bool:
    return not equal(x, y)


def _le(x: Any, y: Any) -> bool:
    return not less(y, x)


def _gt(x: Any, y: Any) -> bool:
    return less(y, x)


def _ge(x: Any, y: Any) -> bool:
    return not less(x, y)


def _call(frame: Any, stack: list, a: Any) -> None:
    builtin, name, argc = a
    if builtin is None:
        raise VMFault("NameError", f"unknown builtin {name!r}")
    if argc:
        result = builtin.fn(*stack[-argc:])
        del stack[-argc:]
        stack.append(result)
    else:
        stack.append(builtin.fn())


def _assert(frame: Any, stack: list, a: Any) -> None:
    if not truthy(stack.pop()):
        raise VMFault("AssertionFailed", a or "assertion failed")


def _load_or(frame: Any, stack: list, a: Any) -> None:
    """The variable ``a`` in place of the default on the stack, if it is set (an input given)."""
    value = frame.variables.get(a, _UNSET)
    if value is not _UNSET:
        stack[-1] = value


_UNSET = object()


def _guard(frame: Any, stack: list, a: Any) -> None:
    if frame.in_guard:
        raise VMFault("GuardError", "guard reached inside a guarded section (a section entered twice)")
    frame.in_guard = True


def _end_guard(frame: Any, stack: list, a: Any) -> None:
    if not frame.in_guard:
        raise VMFault("GuardError", "end_guard reached without its guard: something jumped into the middle of "
                                    "a guarded section")
    frame.in_guard = False


def _concat(frame: Any, stack: list, a: Any) -> None:
    x = stack[-2]
    b = stack[-1]
    if type(x) is list and type(b) is list:
        make_items(len(x) + len(b), "concat")
        result: list[Any] | str = x + b
    else:
        left = x if type(x) is str else render(x)
        right = b if type(b) is str else render(b)
        make_text(len(left) + len(right), "concat")
        result = left + right
    del stack[-1]
    stack[-1] = result


# A parsed template: its (text, is_placeholder) parts, and the work of filling it that the meter
# charges beyond the characters scanned (see _template_work).
Template = tuple[tuple[tuple[str, bool], ...], int]
_TEMPLATES: dict[str, Template] = {}
DOUBLED_BRACE_MILLI = 64  # a "{{" or "}}" in a format template (see format_text)
_MAX_CACHED_TEMPLATE = 4096  # characters: longer templates are parsed each time
_MAX_CACHED_TEMPLATES = 4096


# A run of literal text: characters other than braces, and doubled braces. One pass (in C) over
# the template, with no search ahead that a later part would repeat: parsing is linear.
_LITERAL_RUN = re.compile(r"(?:[^{}]+|\{\{|\}\})+")
_PLACEHOLDER = re.compile(r"\{([^}]*)\}")


def _template_work(template: str) -> int:
    """Milli-units of work to fill ``template`` beyond scanning it. A placeholder is a Python step
    to fill (~0.1 us) and, in a template too long to cache, one to parse (~1.3 us). A doubled brace
    is literal text, taken by the parser in runs (~90 ns each, from the pattern match and the
    replace): DOUBLED_BRACE_MILLI each; only single braces are placeholders."""
    doubled = template.count("{{")
    placeholders = max(0, template.count("{") - 2 * doubled)
    step = meter.NODE_MILLI // 2 if len(template) <= _MAX_CACHED_TEMPLATE else 6 * meter.NODE_MILLI
    return placeholders * step + (doubled + template.count("}}")) * DOUBLED_BRACE_MILLI


def _parse_template(template: str) -> tuple[tuple[str, bool], ...]:
    """Split a template into (text, is_placeholder) parts (the caller caches them)."""
    out: list[tuple[str, bool]] = []
    i = 0
    n = len(template)
    while i < n:
        m = _LITERAL_RUN.match(template, i)
        if m is not None:
            out.append((m.group().replace("{{", "{").replace("}}", "}"), False))
            i = m.end()
            continue
        if template[i] == "}":
            raise VMFault("FormatError", f"unmatched '}}' at position {i} in format template")
        m = _PLACEHOLDER.match(template, i)
        if m is None:
            raise VMFault("FormatError", f"unclosed placeholder at position {i} in format template")
        out.append((m.group(1), True))
        i = m.end()
    return tuple(out)


def format_text(template: Any, variables: dict[str, Any]) -> str:
    """Fill {name} placeholders from variables; {{ and }} are literal braces."""
    if type(template) is not str:
        raise VMFault("TypeError", f"format needs a text template, not {type_name(template)}")
    # Templates are nearly always constants: their parts and their work are kept, the work
    # charged (with the characters scanned) before the template is parsed or filled.
    cached = _TEMPLATES.get(template)
    work = _template_work(template) if cached is None else cached[1]
    meter.spend_in_turn(len(template) * meter.SCAN_MILLI, work)
    if cached is None:
        parts = _parse_template(template)
        if len(template) <= _MAX_CACHED_TEMPLATE:
            if len(_TEMPLATES) >= _MAX_CACHED_TEMPLATES:
                _TEMPLATES.clear()
            _TEMPLATES[template] = (parts, work)
    else:
        parts = cached[0]
    out: list[str] = []
    size = 0
    for text, is_name in parts:
        if is_name:
            if text not in variables:
                raise VMFault("FormatError", f"format: no variable {text!r}")
            value = variables[text]
            text = value if type(value) is str else render(value)
        size += len(text)
        if size > MAX_TEXT:
            raise VMFault("LimitError", f"format: text of more than {MAX_TEXT} characters exceeds the limit")
        out.append(text)
    meter.make(size)
    return "".join(out)


def _format(frame: Any, stack: list, a: Any) -> None:
    stack[-1] = format_text(stack[-1], frame.variables)


def _list(frame: Any, stack: list, n: int) -> None:
    if n:
        items = stack[-n:]
        nest(items, "list")
        make_items(n)
        del stack[-n:]
    else:
        items = []
    stack.append(items)


def _map(frame: Any, stack: list, n: int) -> None:
    m: dict[str, Any] = {}
    if n:
        flat = stack[-2 * n :]
        nest(flat[1::2], "map")
        make_items(n, "map", meter.MAP_ITEM_BYTES)
        del stack[-2 * n :]
        for i in range(0, 2 * n, 2):
            key = flat[i]
            if type(key) is not str:
                raise VMFault("TypeError", f"map keys are text, not {type_name(key)}")
            m[key] = flat[i + 1]
    stack.append(m)


get_item = _get


def _get_op(frame: Any, stack: list, a: Any) -> None:
    k = stack.pop()
    stack[-1] = get_item(stack[-1], k)


def _set(frame: Any, stack: list, a: Any) -> None:
    c, key, value = stack[-3:]
    if type(c) is dict:
        if type(key) is not str:
            raise VMFault("TypeError", f"map keys are text, not {type_name(key)}")
        if type(value) is list or type(value) is dict:
            nest((value,), "set")
        make_items(len(c) + (key not in c), "set", meter.MAP_ITEM_BYTES)
        new: Any = dict(c)
        new[key] = value
    elif type(c) is list:
        if type(key) is not int:
            raise VMFault("TypeError", f"list index must be an int, not {type_name(key)}")
        if not -len(c) <= key < len(c):
            raise VMFault("IndexError", f"index {key} out of range for a list of {len(c)}")
        if type(value) is list or type(value) is dict:
            nest((value,), "set")
        make_items(len(c), "set")
        new = list(c)
        new[key] = value
    else:
        raise VMFault("TypeError", f"cannot set an item in {type_name(c)}")
    del stack[-2:]
    stack[-1] = new


def _len(frame: Any, stack: list, a: Any) -> None:
    c = stack[-1]
    if type(c) in (str, list, dict):
        stack[-1] = len(c)
    else:
        raise VMFault("TypeError", f"{type_name(c)} has no length")


def _append(frame: Any, stack: list, a: Any) -> None:
    c = stack[-2]
    value = stack[-1]
    if type(c) is not list:
        raise VMFault("TypeError", f"cannot append to {type_name(c)}")
    if type(value) is list or type(value) is dict:
        nest((value,), "append")
    make_items(len(c) + 1, "append")
    del stack[-1]
    stack[-1] = c + [value]


def observe(frame: Any, field: str, pc: int) -> Any:
    if field == "energy_used":
        return frame.used / 1000
    if field == "energy_left":
        return (frame.budget - frame.used) / 1000
    if field == "budget":
        return frame.budget / 1000
    if field == "pc":
        return pc
    if field == "depth":
        return len(frame.stack)
    if field == "effects":
        return frame.effects
    raise VMFault("ValueError", f"unknown observe field {field!r}")


def _number_at_least(value: Any, what: str, kind: str, low: float = 0) -> None:
    if not is_number(value) or value < low or value != value:
        raise VMFault("TypeError" if not is_number(value) else "ValueError",
                      f"{kind}: {what} must be a number >= {low:g}, not {_preview(value)}")


def _preview(value: Any) -> str:
    """A value in an error message: scalars as text, containers by type (rendering one is
    work no instruction pays for)."""
    return type_name(value) if type(value) in (list, dict) else render(value)[:40]


def effect_args(op: int, a: Any, stack: list) -> tuple[Any, ...]:
    """Pop an effect instruction's operands and check their types."""
    if op == O.LLM:
        message = stack.pop()
        if type(message) not in (str, dict, list):
            raise VMFault("TypeError", f"llm: the message must be text, a map or a list, not {type_name(message)}")
        return (message,)
    if op == O.TOOL_:
        name, argc = a
        if argc:
            argv = stack[-argc:]
            del stack[-argc:]
        else:
            argv = []
        return (name, argv)
    if op == O.SEND:
        message = stack.pop()
        target = stack.pop()
        if type(target) not in (str, int):
            raise VMFault("TypeError", f"send: the target must be an agent id or name, not {type_name(target)}")
        return (target, message)
    if op == O.RECV:
        timeout = stack.pop()
        if timeout is not None:
            _number_at_least(timeout, "the timeout", "recv")
        return (timeout,)
    if op == O.SPAWN or op == O.DELEGATE:
        budget = stack.pop()
        inputs = stack.pop()
        program = stack.pop()
        kind = O.OPS[op].name
        if type(program) is not str and type_name(program) != "ref":
            raise VMFault("TypeError", f"{kind}: the program must be source text or a code ref, "
                                       f"not {type_name(program)}")
        if inputs is not None and type(inputs) is not dict:
            raise VMFault("TypeError", f"{kind}: inputs must be a map or null, not {type_name(inputs)}")
        _number_at_least(budget, "the budget", kind)
        return (program, inputs, budget)
    if op == O.SLEEP:
        seconds = stack.pop()
        _number_at_least(seconds, "seconds", "sleep")
        return (seconds,)
    raise VMFault("InternalError", f"opcode {op} is not an effect")  # pragma: no cover


TABLE: list[Handler | None] = [None] * len(O.OPS)
for _code, _fn in {
    O.SWAP: _swap,
    O.CALL: _call,
    O.ASSERT: _assert,
    O.MUL: _binary(mul),
    O.DIV: _binary(div),
    O.MOD: _binary(mod),
    O.NEG: _neg,
    O.NE: _binary(_ne),
    O.LE: _binary(_le),
    O.GT: _binary(_gt),
    O.GE: _binary(_ge),
    O.NOT: _not,
    O.AND: _and,
    O.OR: _or,
    O.CONCAT: _concat,
    O.FORMAT: _format,
    O.LIST: _list,
    O.MAP: _map,
    O.GET: _get_op,
    O.SET: _set,
    O.LEN: _len,
    O.APPEND: _append,
    O.GUARD: _guard,
    O.LOAD_OR: _load_or,
    O.END_GUARD: _end_guard,
    # The loop inlines these; handlers here serve the block compiler and keep the table whole.
    O.ADD: _binary(add),
    O.SUB: _binary(sub),
    O.LT: _binary(less),
    O.EQ: _binary(equal),
}.items():
    TABLE[_code] = _fn
