"""How many bytes a frame's values hold: what its memory ceiling is checked against.

Values share parts (a list can hold the same text a thousand times), so each
distinct object counts once, at its size in the host (`sys.getsizeof`). The
walk stops as soon as the total passes the limit, so measuring a frame that is
over its ceiling costs no more than measuring one that is at it.
"""

from __future__ import annotations

import sys
from typing import Any

_getsizeof = sys.getsizeof


def held_bytes(stack: list[Any], variables: dict[str, Any], limit: int) -> tuple[int, int]:
    """(bytes held, objects visited); the bytes stop counting a little past ``limit``."""
    seen: set[int] = set()
    total = _getsizeof(stack) + _getsizeof(variables)
    todo: list[Any] = [*stack, *variables.values()]
    nodes = 0
    while todo:
        v = todo.pop()
        nodes += 1
        i = id(v)
        if i in seen:
            continue
        seen.add(i)
        total += _getsizeof(v)
        if total > limit:
            break
        t = type(v)
        if t is list:
            todo.extend(v)
        elif t is dict:
            todo.extend(v.values())
    return total, nodes
