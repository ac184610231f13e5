"""Builtins for `call <name> <argc>`: a registry of pure functions.

Each builtin has an arity range and its own energy cost in milli-units, which
the compiler adds to `call`'s base cost of 1.0 to give the instruction a fixed
cost. Builtins never do I/O and never mutate their arguments: containers are
values. Bad arguments raise VMFault, which the interpreter turns into a Fault
naming the line.

Builtins whose work grows with their arguments charge it through
`avm.lang.meter` before doing it, and check the size of what they make
against the limits in `avm.lang.values` before allocating it.

Regular expressions run on RE2 (the `google-re2` package), whose time is
linear in the text searched whatever the pattern; they are charged by the
length of that text and per match. Patterns are at most 256 characters, in
RE2's syntax: backreferences and lookaround are refused with a ValueError.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import re2  # type: ignore[import-untyped]

from avm.lang import meter
from avm.lang.values import (
    MAX_DEPTH,
    MAX_INT_BITS,
    MAX_ITEMS,
    MAX_TEXT,
    VMFault,
    check_int,
    check_items,
    check_orderable,
    check_text,
    find_equal,
    less_paid,
    lone_surrogate,
    make_items,
    make_text,
    measure,
    order_cost,
    render,
    type_name,
)


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str
    fn: Callable[..., Any]
    min_args: int
    max_args: int
    cost: int  # milli-units, on top of call's base cost
    doc: str


REGISTRY: dict[str, Builtin] = {}


def builtin(name: str, args: int | tuple[int, int], cost: int,
            doc: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    lo, hi = (args, args) if isinstance(args, int) else args

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY:
            raise ValueError(f"builtin {name!r} registered twice")
        REGISTRY[name] = Builtin(name, fn, lo, hi, cost, doc)
        return fn

    return register


def lookup(name: str) -> Builtin | None:
    return REGISTRY.get(name)


def _want(value: Any, kind: type, what: str, name: str) -> Any:
    if type(value) is not kind:
        raise VMFault("TypeError", f"{name}: {what} must be {_KIND_NAMES[kind]}, not {type_name(value)}")
    return value


_KIND_NAMES = {str: "text", list: "a list", dict: "a map", int: "an int", float: "a float"}


def _want_int(value: Any, what: str, name: str) -> int:
    if type(value) is not int:
        raise VMFault("TypeError", f"{name}: {what} must be an int, not {type_name(value)}")
    return value


def _want_number(value: Any, what: str, name: str) -> int | float:
    if type(value) not in (int, float):
        raise VMFault("TypeError", f"{name}: {what} must be a number, not {type_name(value)}")
    return value


# --- text ---


def _case_mapping(t: str, wide: int) -> int:
    """Milli-units to map the case of ``t``: ~0.3 ns a character of ASCII text, ``wide`` a
    character of other text (measured on "\u00df" x 128 Ki: upper ~20 ns, lower ~5 ns)."""
    return (len(t) // 4 if t.isascii() else wide * len(t)) * meter.SCAN_MILLI


@builtin("upper", 1, 200, "text in upper case")
def _upper(t: Any) -> str:
    make_text(len(_want(t, str, "argument", "upper")), "upper", _case_mapping(t, 16))
    return check_text(t.upper())


@builtin("lower", 1, 200, "text in lower case")
def _lower(t: Any) -> str:
    make_text(len(_want(t, str, "argument", "lower")), "lower", _case_mapping(t, 4))
    return check_text(t.lower())


@builtin("strip", 1, 200, "text without leading and trailing white space")
def _strip(t: Any) -> str:
    make_text(len(_want(t, str, "argument", "strip")), "strip")
    return t.strip()


@builtin("text", 1, 200, "the text form of any value")
def _text(v: Any) -> str:
    return render(v)


@builtin("split", (1, 2), 500, "split text on a separator (white space if omitted) into a list")
def _split(t: Any, sep: Any = None) -> list[str]:
    _want(t, str, "text", "split")
    if sep is not None:
        _want(sep, str, "separator", "split")
        if sep == "":
            raise VMFault("ValueError", "split: empty separator")
    make_text(len(t), "split", len(t) * meter.SCAN_MILLI)
    parts = t.split(sep, MAX_ITEMS)  # at most MAX_ITEMS + 1 parts are made
    meter.spent(len(parts) * meter.ITEM_MILLI // 2)  # a text object made per part: ~20 ns each
    return check_items(parts)


@builtin("join", (1, 2), 500, "join a list of texts with a separator (empty if omitted)")
def _join(items: Any, sep: Any = "") -> str:
    _want(items, list, "items", "join")
    _want(sep, str, "separator", "join")
    parts = []
    size = len(sep) * max(0, len(items) - 1)
    meter.look(3 * len(items))  # each item rendered: a few Python calls (~60-180 ns)
    for v in items:
        part = render(v)
        size += len(part)
        if size > MAX_TEXT:
            raise VMFault("LimitError", f"join: text of more than {MAX_TEXT} characters exceeds the limit")
        parts.append(part)
    make_text(size, "join")
    return sep.join(parts)


@builtin("replace", 3, 500, "text with every occurrence of old replaced by new")
def _replace(t: Any, old: Any, new: Any) -> str:
    for v, what in ((t, "text"), (old, "old"), (new, "new")):
        _want(v, str, what, "replace")
    if old == "":
        raise VMFault("ValueError", "replace: empty pattern")
    make_text(len(t) + t.count(old) * (len(new) - len(old)), "replace", len(t) * meter.SCAN_MILLI)
    return t.replace(old, new)


@builtin("starts_with", 2, 100, "true if text starts with prefix")
def _starts_with(t: Any, p: Any) -> bool:
    meter.scan(len(p) if type(p) is str else 0)
    return _want(t, str, "text", "starts_with").startswith(_want(p, str, "prefix", "starts_with"))


@builtin("ends_with", 2, 100, "true if text ends with suffix")
def _ends_with(t: Any, p: Any) -> bool:
    meter.scan(len(p) if type(p) is str else 0)
    return _want(t, str, "text", "ends_with").endswith(_want(p, str, "suffix", "ends_with"))


@builtin("find", 2, 300, "index of the first occurrence of a text in a text, or -1")
def _find(t: Any, sub: Any) -> int:
    meter.scan(_search_chars(t, sub))
    return _want(t, str, "text", "find").find(_want(sub, str, "needle", "find"))


@builtin("repeat", 2, 300, "text or list repeated n times")
def _repeat(v: Any, n: Any) -> Any:
    _want_int(n, "count", "repeat")
    if n < 0:
        raise VMFault("ValueError", "repeat: negative count")
    if type(v) is str:
        make_text(len(v) * n, "repeat")
        return v * n
    if type(v) is list:
        make_items(len(v) * n, "repeat")
        return v * n
    raise VMFault("TypeError", f"repeat: cannot repeat {type_name(v)}")


def _search_chars(t: Any, needle: Any) -> int:
    """Characters a substring search is charged for: the text's length, or a sixteenth
    of it for a one-character needle (a memchr, ~0.02 ns a character, where a longer
    needle can take 2.5 ns: "ab" in "aaaa...")."""
    if type(t) is not str:
        return 0
    return len(t) // 16 if type(needle) is str and len(needle) <= 1 else len(t)


# --- containers ---


@builtin("contains", 2, 200, "true if a text contains a text, a list an element, or a map a key")
def _contains(c: Any, x: Any) -> bool:
    if type(c) is str:
        _want(x, str, "needle", "contains")
        meter.scan(_search_chars(c, x))
        return x in c
    if type(c) is list:
        return find_equal(c, x) >= 0
    if type(c) is dict:
        return type(x) is str and x in c
    raise VMFault("TypeError", f"contains: cannot search {type_name(c)}")


@builtin("has", 2, 100, "true if a map has a key or a list an index")
def _has(c: Any, k: Any) -> bool:
    if type(c) is dict:
        return type(k) is str and k in c
    if type(c) is list:
        return type(k) is int and -len(c) <= k < len(c)
    raise VMFault("TypeError", f"has: expected a map or a list, not {type_name(c)}")


@builtin("get_default", 3, 100, "container[key], or the default if absent")
def _get_default(c: Any, k: Any, default: Any) -> Any:
    return _get(c, k) if _has(c, k) else default


@builtin("keys", 1, 300, "the keys of a map, sorted")
def _keys(m: Any) -> list[str]:
    _sorting(len(_want(m, dict, "argument", "keys")), m)
    return sorted(m)


@builtin("values", 1, 300, "the values of a map, in key order")
def _values(m: Any) -> list[Any]:
    _want(m, dict, "argument", "values")
    _sorting(len(m), m)
    return [m[k] for k in sorted(m)]


def _sorting(n: int, items: Any) -> None:
    """Charge sorting ``items`` (n of them): about n log n comparisons, reading texts as far as they
    share a prefix (a merge sort's log2 n levels, and the insertion sort of its short runs: about 6
    comparisons an item), and the list made."""
    meter.sorting(n)
    meter.spend(order_cost(items, n.bit_length() + 6))
    make_items(n)


@builtin("slice", (2, 3), 300, "items or characters from start up to (not including) end")
def _slice(v: Any, start: Any, end: Any = None) -> Any:
    _want_int(start, "start", "slice")
    if end is not None:
        _want_int(end, "end", "slice")
    if type(v) not in (str, list):
        raise VMFault("TypeError", f"slice: cannot slice {type_name(v)}")
    n = len(range(*slice(start, end).indices(len(v))))
    if type(v) is str:
        make_text(n, "slice")
    else:
        make_items(n, "slice")
    return v[start:end]


@builtin("range", (1, 2), 300, "list of ints from start (0 if omitted) up to end")
def _range(a: Any, b: Any = None) -> list[int]:
    start, end = (0, a) if b is None else (a, b)
    _want_int(start, "start", "range")
    _want_int(end, "end", "range")
    if end - start > MAX_ITEMS:
        raise VMFault("LimitError", f"range: {end - start} items exceeds the limit of {MAX_ITEMS}")
    make_items(max(0, end - start), "range")
    meter.look(max(0, end - start) // 2)  # an int made per item: ~18 ns
    return list(range(start, end))


@builtin("sort", 1, 1000, "a list of numbers or of texts, sorted")
def _sort(items: Any) -> list[Any]:
    _want(items, list, "argument", "sort")
    _sorting(len(items), items)
    for x in items[1:]:
        check_orderable(items[0], x)  # raises if the kinds cannot be ordered together
    return sorted(items)


@builtin("reverse", 1, 200, "a list or text reversed")
def _reverse(v: Any) -> Any:
    if type(v) is str:
        make_text(len(v), "reverse")
        return v[::-1]
    if type(v) is list:
        make_items(len(v), "reverse")
        return v[::-1]
    raise VMFault("TypeError", f"reverse: cannot reverse {type_name(v)}")


@builtin("index_of", 2, 300, "index of the first element equal to x, or -1")
def _index_of(items: Any, x: Any) -> int:
    return find_equal(_want(items, list, "list", "index_of"), x)


@builtin("sum", 1, 500, "the sum of a list of numbers")
def _sum(items: Any) -> int | float:
    _want(items, list, "argument", "sum")
    meter.look(len(items))
    total: int | float = 0
    for v in items:
        total += _want_number(v, "element", "sum")
    return total


@builtin("type", 1, 100, "the name of a value's type: null, bool, int, float, text, list, map, ref")
def _type(v: Any) -> str:
    return type_name(v)


def _get(c: Any, k: Any) -> Any:
    if type(c) is dict:
        if type(k) is not str:
            raise VMFault("TypeError", f"map keys are text, not {type_name(k)}")
        try:
            return c[k]
        except KeyError:
            raise VMFault("KeyError", f"no key {k!r} in map") from None
    if type(c) is list:
        if type(k) is not int:
            raise VMFault("TypeError", f"list index must be an int, not {type_name(k)}")
        try:
            return c[k]
        except IndexError:
            raise VMFault("IndexError", f"index {k} out of range for a list of {len(c)}") from None
    if type(c) is str:
        if type(k) is not int:
            raise VMFault("TypeError", f"text index must be an int, not {type_name(k)}")
        try:
            return c[k]
        except IndexError:
            raise VMFault("IndexError", f"index {k} out of range for a text of {len(c)}") from None
    raise VMFault("TypeError", f"cannot index {type_name(c)}")


# --- numbers ---


@builtin("abs", 1, 100, "absolute value")
def _abs(x: Any) -> int | float:
    return abs(_want_number(x, "argument", "abs"))


@builtin("min", (1, 2), 200, "the smaller of two values, or the least element of a list")
def _min(a: Any, b: Any = None) -> Any:
    items = _want(a, list, "argument", "min") if b is None else [a, b]
    meter.look(len(items))
    meter.spend(order_cost(items, 1))
    if not items:
        raise VMFault("ValueError", "min: empty list")
    best = items[0]
    for x in items[1:]:
        if less_paid(x, best):
            best = x
    return best


@builtin("max", (1, 2), 200, "the larger of two values, or the greatest element of a list")
def _max(a: Any, b: Any = None) -> Any:
    items = _want(a, list, "argument", "max") if b is None else [a, b]
    meter.look(len(items))
    meter.spend(order_cost(items, 1))
    if not items:
        raise VMFault("ValueError", "max: empty list")
    best = items[0]
    for x in items[1:]:
        if less_paid(best, x):
            best = x
    return best


@builtin("floor", 1, 100, "largest int not above x")
def _floor(x: Any) -> int:
    return _finite_int(math.floor, x, "floor")


@builtin("ceil", 1, 100, "smallest int not below x")
def _ceil(x: Any) -> int:
    return _finite_int(math.ceil, x, "ceil")


@builtin("round", 1, 100, "nearest int (halves to even)")
def _round(x: Any) -> int:
    return _finite_int(round, x, "round")


def _finite_int(fn: Callable[[Any], int], x: Any, name: str) -> int:
    _want_number(x, "argument", name)
    if type(x) is float and not math.isfinite(x):
        raise VMFault("ValueError", f"{name}: {x} has no integer value")
    return fn(x)


@builtin("sqrt", 1, 200, "square root, a float")
def _sqrt(x: Any) -> float:
    if _want_number(x, "argument", "sqrt") < 0:
        raise VMFault("ValueError", "sqrt: negative argument")
    return math.sqrt(x)


@builtin("pow", 2, 300, "x raised to y")
def _pow(x: Any, y: Any) -> int | float:
    _want_number(x, "base", "pow")
    _want_number(y, "exponent", "pow")
    if type(x) is int and type(y) is int and y >= 0:
        if x not in (0, 1, -1) and y * max(1, abs(x).bit_length() - 1) > 1024:
            raise VMFault("LimitError", "pow: result exceeds the integer limit")
        return check_int(x**y)
    try:
        result = float(x) ** float(y)
    except (OverflowError, ZeroDivisionError) as exc:
        raise VMFault("ValueError", f"pow: {exc}") from None
    if isinstance(result, complex):
        raise VMFault("ValueError", "pow: complex result")
    return result


@builtin("idiv", 2, 150, "floor division of two numbers")
def _idiv(a: Any, b: Any) -> int | float:
    _want_number(a, "dividend", "idiv")
    if _want_number(b, "divisor", "idiv") == 0:
        raise VMFault("ZeroDivision", "division by zero")
    return a // b


@builtin("int", 1, 200, "a number or numeric text as an int (floats truncate)")
def _int(x: Any) -> int:
    if type(x) is int:
        return x
    if type(x) is float:
        return _finite_int(int, x, "int")
    if type(x) is str and len(x) <= 400:
        try:
            return int(x.strip())
        except ValueError:
            pass
    raise VMFault("ValueError", f"int: cannot convert {render(x)[:60]!r}")


@builtin("float", 1, 200, "a number or numeric text as a float")
def _float(x: Any) -> float:
    if type(x) in (int, float):
        try:
            return float(x)
        except OverflowError:
            raise VMFault("ValueError", "float: integer too large") from None
    if type(x) is str and len(x) <= 400:
        try:
            return float(x.strip())
        except ValueError:
            pass
    raise VMFault("ValueError", f"float: cannot convert {render(x)[:60]!r}")


# --- json ---


@builtin("json_parse", 1, 2000, "parse JSON text into a value")
def _json_parse(t: Any) -> Any:
    _want(t, str, "argument", "json_parse")
    make_text(len(t), "json_parse", len(t) * meter.SCAN_MILLI)
    # Before parsing: the values it can make (at most one per comma, colon or opening bracket,
    # plus one) must be affordable; the values it made are charged after (_check_parsed).
    meter.reserve((t.count(",") + t.count("[") + t.count("{") + 1) * (meter.NODE_MILLI + meter.ITEM_BYTES
                                                                     // meter.BYTES_PER_MILLI))
    try:
        value = json.loads(t)
    except (ValueError, RecursionError) as exc:
        raise VMFault("ValueError", f"json_parse: {exc}") from None
    _check_parsed(value)
    bad = lone_surrogate(value)  # a "\\ud800" escape with no pair: not text
    if bad is not None:
        raise VMFault("ValueError", f"json_parse: a lone surrogate ({bad}) is not text")
    return value


def _check_parsed(value: Any) -> None:
    """Hold a parsed value to the limits of values the VM makes: MAX_ITEMS per list or
    map, MAX_DEPTH levels; charge its parts (a parsed value is a tree: no sharing)."""
    nodes = 0
    todo = [(value, 0)]
    while todo:
        v, depth = todo.pop()
        nodes += 1
        t = type(v)
        if t is list or t is dict:
            if depth >= MAX_DEPTH:
                raise VMFault("LimitError", f"json_parse: value nested more than {MAX_DEPTH} levels deep")
            if len(v) > MAX_ITEMS:
                raise VMFault("LimitError", f"json_parse: a {type_name(v)} of {len(v)} items exceeds the limit "
                                            f"of {MAX_ITEMS}")
            todo.extend((x, depth + 1) for x in (v if t is list else v.values()))
        elif t is int and v.bit_length() > MAX_INT_BITS:  # as big as no instruction may make
            raise VMFault("LimitError", f"json_parse: integer of {v.bit_length()} bits exceeds the limit "
                                        f"of {MAX_INT_BITS}")
        elif t is float and not math.isfinite(v):
            continue  # NaN and Infinity are floats here too
    meter.visit(nodes)
    meter.make(nodes * meter.ITEM_BYTES)


@builtin("json_dump", 1, 2000, "the JSON text of a value (keys sorted)")
def _json_dump(v: Any) -> str:
    measure(v)
    _dump_size(v)
    try:
        text = json.dumps(v, sort_keys=True, ensure_ascii=False, default=_json_default)
    except ValueError as exc:
        raise VMFault("ValueError", f"json_dump: {exc}") from None
    meter.make(len(text))
    return check_text(text)


def _dump_size(v: Any) -> None:
    """LimitError before dumping if the texts in ``v`` alone (each occurrence counted:
    shared parts are written out every time) pass MAX_TEXT."""
    size = 0
    todo = [v]
    while todo:
        x = todo.pop()
        t = type(x)
        if t is str:
            size += len(x) + 2
        elif t is list:
            size += len(x) + 1
            todo.extend(x)
        elif t is dict:
            size += 4 * len(x) + 1
            for k, y in x.items():
                size += len(k)
                todo.append(y)
        else:
            size += 1
        if size > MAX_TEXT:
            raise VMFault("LimitError", f"json_dump: text of more than {MAX_TEXT} characters exceeds the limit")


def _json_default(v: Any) -> str:
    return render(v)  # a ref: its text form


# --- regular expressions ---
# RE2 runs in time linear in the text, whatever the pattern: no backtracking. What it
# cannot do in linear time (backreferences, lookaround) it refuses, and so do we.

MAX_PATTERN = 256
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = 8 << 20  # the compiled program and its DFA cache, per pattern
_PATTERNS: dict[str, Any] = {}


def _compile_pattern(pattern: Any, name: str) -> Any:
    _want(pattern, str, "pattern", name)
    cached = _PATTERNS.get(pattern)
    if cached is not None:
        return cached
    if len(pattern) > MAX_PATTERN:
        raise VMFault("ValueError", f"{name}: pattern longer than {MAX_PATTERN} characters")
    if _any_byte_escape(pattern):
        raise VMFault("ValueError", f"{name}: \\C (any byte) is not supported: patterns match characters, and "
                                    "one byte of a character's UTF-8 is not text")
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise VMFault("ValueError", f"{name}: pattern not supported by the linear-time engine (RE2 syntax; "
                                    f"no backreferences or lookaround): {reason}") from None
    if len(_PATTERNS) >= 1024:
        _PATTERNS.clear()
    _PATTERNS[pattern] = compiled
    return compiled


def _any_byte_escape(pattern: str) -> bool:
    """True if ``pattern`` holds RE2's ``\\C`` (one byte, even in the middle of a character)."""
    i = pattern.find("\\")
    while i >= 0:
        if pattern[i + 1 : i + 2] == "C":
            return True
        i = pattern.find("\\", i + 2)  # skip the escaped character: "\\\\C" is a backslash and a C
    return False


def scan_factor(rx: Any) -> int:
    """How many characters' scanning one character of text searched with ``rx`` is charged as."""
    return max(2, rx.programsize * (rx.groups + 1) // 6)  # 2: a literal search runs ~5 ns a character


def _searched(t: Any, name: str, rx: Any) -> str:
    _want(t, str, "text", name)
    # RE2 scans in linear time, but the constant grows with the pattern: where it must track capture
    # groups its time per character is about 0.2 ns x program size x (groups + 1) (measured: "(.*)$" 8.6 ns,
    # "(.*)" x 20 then "$" 870 ns a character), so the scan is charged that many times over.
    meter.scan(scan_factor(rx)
               * (len(t) if t.isascii() else 4 * len(t)))  # other text is encoded to UTF-8: ~4 ns a char
    return t


@builtin("regex_match", 2, 2000, "search text for a pattern (RE2 syntax): the list [whole, group1, ...] or null")
def _regex_match(pattern: Any, t: Any) -> list[Any] | None:
    rx = _compile_pattern(pattern, "regex_match")
    m = rx.search(_searched(t, "regex_match", rx))
    if m is None:
        return None
    return [m.group(0), *m.groups()]


@builtin("regex_find_all", 2, 3000, "every non-overlapping match of a pattern (RE2 syntax) in text, as texts")
def _regex_find_all(pattern: Any, t: Any) -> list[str]:
    rx = _compile_pattern(pattern, "regex_find_all")
    out: list[str] = []
    size = 0
    for m in rx.finditer(_searched(t, "regex_find_all", rx)):
        meter.spend(meter.MATCH_MILLI)
        if len(out) >= MAX_ITEMS:
            raise VMFault("LimitError", f"regex_find_all: more than {MAX_ITEMS} matches")
        text = m.group(0)
        size += len(text)
        if size > MAX_TEXT:
            raise VMFault("LimitError", f"regex_find_all: matches of more than {MAX_TEXT} characters in all")
        out.append(text)
    meter.make(size + len(out) * meter.ITEM_BYTES)
    return out
