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

from avm.lang import meter
from avm.memory.ref import Ref

# Limits that keep one agent from exhausting the host (energy alone does not:
# a loop of 40 concats doubles a text 40 times).
MAX_TEXT = 1 << 20  # characters in one text value
MAX_ITEMS = 1 << 16  # elements in one list or map
MAX_INT_BITS = 1024  # magnitude of integers produced by mul and builtins
MAX_NODES = 1 << 20  # parts of one value walked by render, equal, json_dump, snapshots
# Levels of nesting in one value: a scalar is 0 deep, a list or map one more than its deepest
# item. Every instruction that nests a value checks it (list, map, set, append, json_parse),
# and so do effect results, inputs and snapshot restore: a value that exists can always be
# snapshotted and restored.
MAX_DEPTH = 100


class VMFault(Exception):
    """Raised inside the interpreter and turned into a Fault with the line: the program's fault, never
    seen outside the frame (not an AvmError; the public `avm.VMError` is the VM used wrongly).

    ``kind`` is a short category (TypeError, ZeroDivision, KeyError, ...).
    ``charged`` is the metered work (milli-units) the instruction did before it
    failed: it stays charged.
    """

    charged = 0

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
    LimitError past ``limit`` so no walk over it can run away. The count is
    charged to the running instruction (`avm.lang.meter`), and the walk stops
    when it has used up what the instruction may spend (that much charged)."""
    affordable = meter.affordable_nodes()
    bound = min(limit, affordable)
    count = 1
    todo = [value]
    while todo:
        v = todo.pop()
        t = type(v)
        if t is list:
            count += len(v)
            if count > bound:
                _over(count, limit, affordable)
            todo.extend(v)
        elif t is dict:
            count += 2 * len(v)
            if count > bound:
                _over(count, limit, affordable)
            todo.extend(v.values())
    meter.visit(count)
    return count


def _over(count: int, limit: int, affordable: int) -> None:
    """A walk reached ``count`` parts, past ``limit`` or past what it can pay for: charge the
    parts it walked and raise LimitError (past the limit) or OutOfEnergy (past the energy)."""
    if count > limit and limit <= affordable:
        meter.visit(limit)
        raise VMFault("LimitError", f"value has more than {limit} parts")
    meter.visit(count)  # more than is left: all that is left is charged, and OutOfEnergy raised
    raise AssertionError("unreachable")  # pragma: no cover


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """LimitError if ``value`` is nested more than ``limit`` levels. Walks the
    containers level by level, each distinct one once per level; the items of a
    container with no container in it are only looked at by type (in C), and
    charged at an eighth of a part each."""
    t = type(value)
    if t is not list and t is not dict:
        return
    level = [value]
    depth = 0
    looked = 0
    walked = 0
    while level:
        depth += 1
        if depth > limit:
            meter.visit(looked // 8 + walked)
            raise VMFault("LimitError", f"value nested more than {limit} levels deep")
        nxt: list[Any] = []
        seen: set[int] = set()
        for c in level:
            items = c if type(c) is list else c.values()
            looked += len(items)
            kinds = set(map(type, items))
            if list not in kinds and dict not in kinds:
                continue
            walked += len(items)
            for x in items:
                tx = type(x)
                if (tx is list or tx is dict) and id(x) not in seen:
                    seen.add(id(x))
                    nxt.append(x)
        level = nxt
    meter.visit(looked // 8 + walked)


def find_equal(items: list[Any], x: Any) -> int:
    """Index of the first item equal to ``x``, or -1; charges one item looked at per
    item plus the parts of any item compared in depth."""
    meter.look(len(items))
    tx = type(x)
    if tx is list or tx is dict:
        n = len(x)
        for i, v in enumerate(items):
            if type(v) is tx and len(v) == n and equal(v, x):
                return i
        return -1
    if tx is str and len(x) > LONG_TEXT:
        for i, v in enumerate(items):
            _text_compare(x, v)
            if _scalar_equal(v, x):
                return i
        return -1
    for i, v in enumerate(items):
        if _scalar_equal(v, x):
            return i
    return -1


SMALL_FLAT = 8  # items of a container check_depth charges nothing for when none of them is a container


def nest(items: Any, what: str) -> None:
    """Check that a container holding ``items`` stays within MAX_DEPTH."""
    for x in items:
        tx = type(x)
        if tx is list or tx is dict:
            inner = x if tx is list else x.values()
            if len(inner) < SMALL_FLAT:
                # The common case, a small record or list of scalars, without check_depth's walk:
                # it is one level deep, and its eighth of a part per item rounds down to nothing.
                for y in inner:
                    ty = type(y)
                    if ty is list or ty is dict:
                        break
                else:
                    continue
            try:
                check_depth(x, MAX_DEPTH - 1)
            except VMFault:
                raise VMFault("LimitError", f"{what}: value nested more than {MAX_DEPTH} levels deep") from None


def equal(a: Any, b: Any, limit: int = MAX_NODES) -> bool:
    """Structural equality where true is not 1 and numbers compare by value.
    Charges the parts it compares; stops with LimitError past ``limit`` parts."""
    ta = type(a)
    if ta is not list and ta is not dict and ta is not tuple:
        if ta is str:
            _text_compare(a, b)
        return _scalar_equal(a, b)
    if type(b) is not ta:
        return False
    affordable = meter.affordable_nodes()
    bound = min(limit, affordable)
    count = 1
    todo = [(a, b)]
    while todo:
        x, y = todo.pop()
        tx = type(x)
        if tx is list or tx is tuple or tx is dict:
            if type(y) is not tx or len(x) != len(y):
                meter.visit(count)
                return False
            count += len(x)
            if count > bound:
                _over(count, limit, affordable)
            if tx is dict:
                if x.keys() != y.keys():
                    meter.visit(count)
                    return False
                todo.extend((v, y[k]) for k, v in x.items())
            else:
                todo.extend(zip(x, y, strict=True))
        else:
            if tx is str:
                _text_compare(x, y)
            if not _scalar_equal(x, y):
                meter.visit(count)
                return False
    meter.visit(count)
    return True


LONG_TEXT = 4096  # characters: comparing shorter texts is within a part's cost
TEXT_COMPARE_SHIFT = 5  # a long comparison costs 1 milli-unit per 32 characters (memcmp: ~0.03 ns a byte)


def _text_compare(x: str, y: Any) -> None:
    """Charge comparing two texts that only their characters can tell apart (same length, not the same
    object): three lists of references to 1 Mi texts that differ at the end took 20 s to compare at
    one part an item."""
    if len(x) > LONG_TEXT and x is not y and type(y) is str and len(y) == len(x):
        meter.spend(len(x) >> TEXT_COMPARE_SHIFT)


ORDER_WIDE_SHIFT = 1  # ordering texts of 2- or 4-byte characters: a loop, 0.1-0.4 ns a character


def order_cost(items: Any, passes: int) -> int:
    """Milli-units to compare the texts of ``items`` in ``passes`` passes, where a pass compares each
    text at most about once as the shorter of a pair (a merge level of a sort, or a scan for the least):
    a comparison of texts that share a prefix reads it whole, 1 Mi characters in 35 us (one byte a
    character) to 390 us (two). 0 when ``items`` are not all texts (ordering them fails anyway)."""
    try:
        total = sum(map(len, items))
        narrow = all(map(str.isascii, items))
    except TypeError:
        return 0
    return (total * passes) >> (TEXT_COMPARE_SHIFT if narrow else ORDER_WIDE_SHIFT)


def _scalar_equal(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if ta is not tb:
        if (ta is int and tb is float) or (ta is float and tb is int):
            return a == b  # type: ignore[no-any-return]
        return False
    return a == b  # type: ignore[no-any-return]


def render(value: Any) -> str:
    """The text form of a value, as concat and format insert it. Checks the
    length before building the text, and charges the parts and bytes."""
    t = type(value)
    if t is str:
        return value
    if t is list or t is dict:
        measure(value)
        out: list[str] = []
        size = _render_into(value, out, 0)
        meter.make(size)
        return "".join(out)
    return _scalar(value)


def _scalar(value: Any) -> str:
    t = type(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        if value.bit_length() > 3000:
            raise VMFault("LimitError", "integer too large to render as text")
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


def _render_into(value: Any, out: list[str], size: int) -> int:
    """Append the parts of ``value``'s text form to ``out``; the running length,
    checked against MAX_TEXT as it grows so a shared part cannot blow it up."""
    t = type(value)
    if t is str:
        part = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' if len(value) <= MAX_TEXT - size else value
    elif t is list:
        out.append("[")
        size += 1
        for i, v in enumerate(value):
            if i:
                out.append(", ")
                size += 2
            size = _render_into(v, out, size)
        part = "]"
    elif t is dict:
        out.append("{")
        size += 1
        for i, k in enumerate(sorted(value)):
            if i:
                out.append(", ")
                size += 2
            size = _render_into(k, out, size)
            out.append(": ")
            size = _render_into(value[k], out, size + 2)
        part = "}"
    else:
        part = _scalar(value)
    out.append(part)
    size += len(part)
    if size > MAX_TEXT:
        raise VMFault("LimitError", f"text of more than {MAX_TEXT} characters exceeds the limit")
    return size


_meter_get = meter._get


def make_text(length: int, what: str = "text", extra: int = 0) -> None:
    """Before building a text of ``length`` characters: LimitError past MAX_TEXT, else charge it
    (and ``extra`` milli-units of work done to build it, e.g. the characters scanned)."""
    if length > MAX_TEXT:
        raise VMFault("LimitError", f"{what}: text of {length} characters exceeds the limit of {MAX_TEXT}")
    # meter.make, inlined: this is on the path of nearly every metered instruction.
    try:
        m = _meter_get()
    except LookupError:
        m = meter.current()
    milli = length // meter.BYTES_PER_MILLI + extra
    if milli > m.left:
        raise meter.OutOfEnergy(milli - m.left)
    m.left -= milli
    m.allocated += length


def make_items(count: int, what: str = "list", item_bytes: int = meter.ITEM_BYTES) -> None:
    """Before building a container of ``count`` items: LimitError past MAX_ITEMS, else charge
    it (a map's items: ``item_bytes=meter.MAP_ITEM_BYTES``)."""
    if count > MAX_ITEMS:
        raise VMFault("LimitError", f"{what}: {count} items exceeds the limit of {MAX_ITEMS}")
    # meter.make, inlined: this is on the path of nearly every metered instruction.
    try:
        m = _meter_get()
    except LookupError:
        m = meter.current()
    nbytes = count * item_bytes
    milli = nbytes // meter.BYTES_PER_MILLI
    if milli > m.left:
        raise meter.OutOfEnergy(milli - m.left)
    m.left -= milli
    m.allocated += nbytes


def check_text(text: str) -> str:
    if len(text) > MAX_TEXT:
        raise VMFault("LimitError", f"text of {len(text)} characters exceeds the limit of {MAX_TEXT}")
    return text


def canonical_order(value: Any) -> Any:
    """``value`` with every map's keys in the order the store's canonical encoding keeps them (increasing
    code points): the same value, and the same as after a round trip through the store, so a value from
    outside (a tool's result, an LLM reply, a message, an input) renders the same whether it came live or
    from a journal. Returns ``value`` itself when it holds no map out of order (no copy)."""
    t = type(value)
    if t is dict:
        keys = list(value)
        ordered = sorted(keys)
        items = [(k, canonical_order(value[k])) for k in ordered]
        if keys == ordered and all(v is value[k] for k, v in items):
            return value
        return dict(items)
    if t is list:
        out = None
        for i, item in enumerate(value):
            if type(item) is dict or type(item) is list:
                new = canonical_order(item)
                if new is not item:
                    if out is None:
                        out = list(value)
                    out[i] = new
        return value if out is None else out
    return value


def lone_surrogate(value: Any) -> str | None:
    """Text holds Unicode scalar values only. The first code point of ``value``'s text (map keys
    included) that is not one, a lone surrogate (U+D800 to U+DFFF), named as ``"U+D800"``; None
    when all of it is valid. Each distinct container and each distinct text is read once, so a
    value costs its distinct parts and bytes however often they are shared (this runs unmetered,
    on every effect result and input)."""
    todo = [value]
    seen: set[int] = set()
    while todo:
        v = todo.pop()
        t = type(v)
        if t is str:
            if not v.isascii() and id(v) not in seen:  # isascii is O(1): CPython keeps the flag
                seen.add(id(v))
                bad = _lone_in(v)
                if bad is not None:
                    return bad
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


def _lone_in(text: str) -> str | None:
    """The first lone surrogate of one non-ASCII text, named as ``"U+D800"``, or None."""
    try:
        text.encode("utf-8")  # strict UTF-8 refuses exactly the surrogates
    except UnicodeEncodeError as exc:
        return f"U+{ord(text[exc.start]):04X}"
    return None


def check_items(container: Any) -> Any:
    if len(container) > MAX_ITEMS:
        raise VMFault("LimitError", f"{type_name(container)} of {len(container)} items exceeds the limit "
                                    f"of {MAX_ITEMS}")
    return container


def check_int(value: int) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise VMFault("LimitError", f"integer of {value.bit_length()} bits exceeds the limit of {MAX_INT_BITS}")
    return value


_SCALAR_TYPES = frozenset({type(None), bool, int, float, str, Ref})


def is_value(value: Any, depth: int = 0) -> bool:
    """True if ``value`` is a VM value nested at most MAX_DEPTH levels (used to
    check inputs, effect results and restored snapshots). Linear in the distinct
    containers: each one's height is worked out once, so a value that shares its
    parts (a DAG with exponentially many paths) costs what it holds."""
    return are_values((value,), depth)


def are_values(values: Any, depth: int = 0) -> bool:
    """`is_value` of each of ``values``, at ``depth``, sharing one walk: a part held
    by several of them is looked at once."""
    heights: dict[int, int] = {}
    room = MAX_DEPTH - depth
    for v in values:
        t = type(v)
        if t is list or t is dict:
            if _height(v, heights, room) < 0:
                return False
        elif t not in _SCALAR_TYPES:
            return False
    return True


def _height(container: Any, heights: dict[int, int], room: int) -> int:
    """The levels of nesting of ``container`` (a list or map), or -1 if it is no VM
    value or is nested more than ``room`` levels. ``heights`` remembers each container
    already measured, by id: one reached again costs a lookup, and still fails where
    its height does not fit the room left at that place. A cycle runs out of room."""
    h = heights.get(id(container))
    if h is not None:
        return h if h <= room else -1
    if room <= 0:
        return -1
    if type(container) is dict:
        for k in container:
            if type(k) is not str:
                return -1
        items = container.values()
    else:
        items = container
    below = 0
    for x in items:
        t = type(x)
        if t is list or t is dict:
            hx = _height(x, heights, room - 1)
            if hx < 0:
                return -1
            below = max(below, hx)
        elif t not in _SCALAR_TYPES:
            return -1
    heights[id(container)] = below + 1
    return below + 1


# --- arithmetic and comparison, shared by the interpreter and the block compiler ---


def _num_pair(op: str, a: Any, b: Any) -> None:
    raise VMFault("TypeError", f"cannot {op} {type_name(a)} and {type_name(b)}")


def add(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return a + b
    if ta is str and tb is str:
        make_text(len(a) + len(b), "add")
        return a + b
    if ta is list and tb is list:
        make_items(len(a) + len(b), "add")
        return a + b
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
            raise VMFault("ZeroDivision", "division by zero")
        return a / b
    _num_pair("divide", a, b)


def mod(a: Any, b: Any) -> Any:
    if is_number(a) and is_number(b):
        if b == 0:
            raise VMFault("ZeroDivision", "modulo by zero")
        return a % b
    _num_pair("take modulo of", a, b)


def neg(a: Any) -> Any:
    if is_number(a):
        return -a
    raise VMFault("TypeError", f"cannot negate {type_name(a)}")


def less(a: Any, b: Any) -> bool:
    """a < b for two numbers or two texts; charges reading two long texts (see order_cost)."""
    if type(a) is str and type(b) is str:
        if len(a) > LONG_TEXT and len(b) > LONG_TEXT and a is not b:
            # they may share a prefix as long as the shorter one: read whole, at the speed of their kind
            meter.spend(min(len(a), len(b)) >> (TEXT_COMPARE_SHIFT if a.isascii() and b.isascii()
                                                 else ORDER_WIDE_SHIFT))
        return a < b
    return less_paid(a, b)


def less_paid(a: Any, b: Any) -> bool:
    """`less` for a caller that has paid for reading the texts already (`order_cost`)."""
    check_orderable(a, b)
    return a < b  # type: ignore[no-any-return]


def check_orderable(a: Any, b: Any) -> None:
    """TypeError unless ``a`` and ``b`` can be ordered together (numbers, or texts), without comparing them."""
    if not ((is_number(a) and is_number(b)) or (type(a) is str and type(b) is str)):
        raise VMFault("TypeError", f"cannot order {type_name(a)} and {type_name(b)}")
