"""Count the work a call does (not its time): Python calls into avm.lang.values, calls of
``str.encode`` and calls of any builtin, seen by a profiler."""

from __future__ import annotations

import sys
from typing import Any

import avm.lang.values


def work_of(fn: Any, *args: Any) -> tuple[Any, dict[str, int]]:
    """``fn(*args)`` and ``{"calls": ..., "encodes": ..., "builtins": ...}``."""
    counts = {"calls": 0, "encodes": 0, "builtins": 0}
    values_file = avm.lang.values.__file__

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename == values_file:
            counts["calls"] += 1
        elif event == "c_call":
            counts["builtins"] += 1
            if getattr(arg, "__name__", "") == "encode":
                counts["encodes"] += 1

    sys.setprofile(profile)
    try:
        result = fn(*args)
    finally:
        sys.setprofile(None)
    return result, counts
