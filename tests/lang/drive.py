"""Drive frames to the end the same way in every test: effects answered from a list."""

from __future__ import annotations

from typing import Any

from avm.lang.frame import Frame
from avm.lang.outcomes import Effect

MAX_EFFECTS = 50


def drive(frame: Frame, results: list[Any], trace: list[Any] | None = None) -> Any:
    """Run to a non-effect outcome, answering the i-th effect with results[i % len]."""
    while True:
        out = frame.run()
        if trace is not None:
            trace.append(out)
        if not isinstance(out, Effect):
            return out
        if frame.effects >= MAX_EFFECTS:
            return out
        frame.resume(results[frame.effects % len(results)] if results else None)
