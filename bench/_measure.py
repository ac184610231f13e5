"""What the bench scripts measure the same way: time in the cyclic GC, and the RSS high-water mark.

Not a bench itself (its name starts with ``_``, so ``avm bench`` skips it);
the scripts import it with ``bench/`` on ``sys.path``.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Self


class GcTimer:
    """Total time spent in the cyclic garbage collector while installed (``with GcTimer() as t:``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections += 1

    def __enter__(self) -> Self:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def peak_rss_bytes() -> int | None:
    """High-water mark of the RSS (VmHWM), or None where /proc has none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
