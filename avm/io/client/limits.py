"""The open-file limit a pool of N connections needs.

Each HTTP/1.1 connection is a file descriptor, so a fleet that keeps 10,000
requests in flight needs 10,000 of them, while many systems start a process
with a soft limit of 1,024. `make_room` raises the soft limit (never the hard
one, which only root may raise) as far as the connections need, and says how
many connections fit when it cannot.
"""

from __future__ import annotations

import logging

try:
    import resource
except ImportError:  # pragma: no cover - not on POSIX
    resource = None  # type: ignore[assignment]

__all__ = ["RESERVED", "make_room", "raise_to_hard"]

log = logging.getLogger("avm.io.client")

RESERVED = 256  # descriptors kept for everything else (the store, logs, listeners, tools)


def make_room(connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE so that ``connections`` fit beside `RESERVED` others, up to the
    hard limit; return how many connections fit (``connections`` itself when the limit allows them)."""
    if resource is None:
        return connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + RESERVED
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return connections
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    fit = max(1, soft - RESERVED)
    if fit < connections:
        log.warning("the open-file limit (%d, hard %s) leaves room for %d LLM connections, not %d; raise it "
                    "(ulimit -n) for more requests in flight", soft,
                    "unlimited" if hard == resource.RLIM_INFINITY else hard, fit, connections)
        return fit
    return connections


def raise_to_hard() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a server takes what its clients open); the limit now."""
    if resource is None:
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # an unlimited hard limit may be refused as a soft one
            pass
    return soft
