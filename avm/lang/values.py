"""The VM's values and the operations every instruction shares on them.

Values are: null (None), bool, int, float, text (str), list, map (dict with
text keys) and ref (a content hash). Containers are treated as immutable: `set`
and `append` build new ones, so agent state is acyclic and snapshots are plain
trees.

Maps have no observable order: equality ignores it, and the builtins that list
keys sort them. That is what lets snapshots encode maps canonically.
"""

from __future__ import annotations

import math
from typing import Any

from avm.memory.ref import Ref

# Limits that keep one agent from exhausting the host (energy alone does not:
# a loop of 40 concats doubles a text 40 times).
MAX_TEXT = 1 << 20  # characters in one text value
MAX_ITEMS = 1 << 16  # elements in one list or map
MAX_INT_BITS = 1024  # magnitude of integers produced by mul and builtins
MAX_NODES = 1 << 20  # parts of one value walked by render, equal, json_dump, snapshots


class VMError(Exception):
    """Raised inside the interpreter and turned into a Fault with the line.

    ``kind`` is a short category (TypeError, ZeroDivision, KeyError, ...).
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def type_name(value: Any) -> str:
    t = type(value)
    if value is None:
        return "null"
    if t is bool:
        return "bool"
    if t is int:
        return "int"
    if t is float:
        return "float"
    if t is str:
        return "text"
    if t is list:
        return "list"
    if t is dict:
        return "map"
    if t is Ref:
        return "ref"
    return t.__name__


def is_number(value: Any) -> bool:
    t = type(value)
    return t is int or t is float


def truthy(value: Any) -> bool:
    """null, false, 0, 0.0, empty text/list/map are falsy; all else is truthy."""
    if value is None or value is False:
        return False
    if value is True:
        return True
    return bool(value)


def measure(value: Any, limit: int = MAX_NODES) -> int:
    """Count the nodes of a value (containers share children, so a value can
    be a DAG whose tree is exponentially larger than its memory); raise
    LimitError past ``limit`` so no walk over it can run away."""
    count = 0
    todo = [value]
    while todo:
        v = todo.pop()
        count += 1
        if count > limit:
            raise VMError("LimitError", f"value has more than {limit} parts")
        t = type(v)
        if t is list:
            todo.extend(v)
        elif t is dict:
            todo.extend(v.values())
            count += len(v)
    return count


def equal(a: Any, b: Any) -> bool:
    """Structural equality where true is not 1 and numbers compare by value."""
    ta = type(a)
    if (ta is list or ta is dict or ta is tuple) and type(b) is ta:
        measure(a)  # bound the walk: a shared-child value can be exponentially large
        measure(b)
    return _equal(a, b)


def _equal(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if ta is not tb:
        if (ta is int and tb is float) or (ta is float and tb is int):
            return a == b
        return False
    if ta is list or ta is tuple:
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if ta is dict:
        return a.keys() == b.keys() and all(_equal(v, b[k]) for k, v in a.items())
    return a == b


def render(value: Any) -> str:
    """The text form of a value, as concat and format insert it."""
    t = type(value)
    if t is str:
        return value
    if t is list or t is dict:
        measure(value)
        out: list[str] = []
        _render_into(value, out)
        return check_text("".join(out))
    return _scalar(value)


def _scalar(value: Any) -> str:
    t = type(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        if value.bit_length() > 3000:
            raise VMError("LimitError", "integer too large to render as text")
        return str(value)
    if t is float:
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if t is Ref:
        return "ref:" + value.hex()
    return repr(value)


def _render_into(value: Any, out: list[str]) -> None:
    t = type(value)
    if t is str:
        out.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    elif t is list:
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(", ")
            _render_into(v, out)
        out.append("]")
    elif t is dict:
        out.append("{")
        for i, k in enumerate(sorted(value)):
            if i:
                out.append(", ")
            _render_into(k, out)
            out.append(": ")
            _render_into(value[k], out)
        out.append("}")
    else:
        out.append(_scalar(value))


def check_text(text: str) -> str:
    if len(text) > MAX_TEXT:
        raise VMError("LimitError", f"text of {len(text)} characters exceeds the limit of {MAX_TEXT}")
    return text


def lone_surrogate(value: Any) -> str | None:
    """Text holds Unicode scalar values only. The first code point of ``value``'s text (map keys
    included) that is not one, a lone surrogate (U+D800 to U+DFFF), named as ``"U+D800"``; None
    when all of it is valid. Each shared container is read once."""
    todo = [value]
    seen: set[int] = set()
    while todo:
        v = todo.pop()
        t = type(v)
        if t is str:
            if not v.isascii():
                try:
                    v.encode("utf-8")  # strict UTF-8 refuses exactly the surrogates
                except UnicodeEncodeError as exc:
                    return f"U+{ord(v[exc.start]):04X}"
        elif t is list or t is dict:
            if id(v) in seen:
                continue
            seen.add(id(v))
            if t is dict:
                todo.extend(v)
                todo.extend(v.values())
            else:
                todo.extend(v)
    return None


def check_items(container: Any) -> Any:
    if len(container) > MAX_ITEMS:
        raise VMError("LimitError", f"{type_name(container)} of {len(container)} items exceeds the limit of {MAX_ITEMS}")
    return container


def check_int(value: int) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise VMError("LimitError", f"integer of {value.bit_length()} bits exceeds the limit of {MAX_INT_BITS}")
    return value


def is_value(value: Any, depth: int = 0) -> bool:
    """True if ``value`` is a VM value (used to check inputs and effect results)."""
    if depth > 100:
        return False
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return True
    if t is float:
        return True
    if t is list:
        return all(is_value(v, depth + 1) for v in value)
    if t is dict:
        return all(type(k) is str and is_value(v, depth + 1) for k, v in value.items())
    return t is Ref


# --- arithmetic and comparison, shared by the interpreter and the block compiler ---


def _num_pair(op: str, a: Any, b: Any) -> None:
    raise VMError("TypeError", f"cannot {op} {type_name(a)} and {type_name(b)}")


def add(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return a + b
    if ta is str and tb is str:
        return check_text(a + b)
    if ta is list and tb is list:
        return check_items(a + b)
    _num_pair("add", a, b)


def sub(a: Any, b: Any) -> Any:
    if is_number(a) and is_number(b):
        return a - b
    _num_pair("subtract", a, b)


def mul(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is int and tb is int:
        return check_int(a * b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return a * b
    _num_pair("multiply", a, b)


def div(a: Any, b: Any) -> Any:
    if is_number(a) and is_number(b):
        if b == 0:
            raise VMError("ZeroDivision", "division by zero")
        return a / b
    _num_pair("divide", a, b)


def mod(a: Any, b: Any) -> Any:
    if is_number(a) and is_number(b):
        if b == 0:
            raise VMError("ZeroDivision", "modulo by zero")
        return a % b
    _num_pair("take modulo of", a, b)


def neg(a: Any) -> Any:
    if is_number(a):
        return -a
    raise VMError("TypeError", f"cannot negate {type_name(a)}")


def less(a: Any, b: Any) -> bool:
    if is_number(a) and is_number(b):
        return a < b
    if type(a) is str and type(b) is str:
        return a < b
    raise VMError("TypeError", f"cannot order {type_name(a)} and {type_name(b)}")
