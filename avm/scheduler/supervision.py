"""Restart policies: what happens when an agent's program faults.

``restart="never"`` (the default) leaves a faulted agent FAILED.
``restart="on-fault"`` starts the program again from the beginning, with the
same inputs and mailbox and the energy the agent has left, at most
``max_restarts`` times within ``window_s`` seconds; past that it stays
FAILED. Only faults restart: a program that ran out of energy, stalled, was
cancelled or finished is not restarted, since running it again would do the
same.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import trio

MODES = ("never", "on-fault")


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    mode: str = "never"
    max_restarts: int = 3
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"restart must be one of {', '.join(MODES)}, not {self.mode!r}")
        if type(self.max_restarts) is not int or self.max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, not {self.max_restarts!r}")
        if not (isinstance(self.window_s, (int, float)) and self.window_s > 0 and not math.isnan(self.window_s)):
            raise ValueError(f"window_s must be a positive number of seconds, not {self.window_s!r}")

    @classmethod
    def of(cls, spec: str | RestartPolicy) -> RestartPolicy:
        """A policy from its mode name (defaults for the rest) or as given; one shared instance per mode."""
        if isinstance(spec, RestartPolicy):
            return spec
        policy = _BY_MODE.get(spec) if isinstance(spec, str) else None
        return policy if policy is not None else cls(spec)


_BY_MODE: dict[str, RestartPolicy] = {mode: RestartPolicy(mode) for mode in MODES}
NEVER = _BY_MODE["never"]


class RestartHistory:
    """The times of one agent's recent restarts."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def allow(self, policy: RestartPolicy) -> bool:
        """Record a restart now if the policy allows one more in its window."""
        if policy.mode != "on-fault":
            return False
        now = trio.current_time()
        times = self.times
        while times and times[0] <= now - policy.window_s:
            times.popleft()
        if len(times) >= policy.max_restarts:
            return False
        times.append(now)
        return True
