"""The dashboard's figures: snapshots of a VM's statistics records, and what they show.

`take_snapshot` reads the records (`vm.statistics()`, the gateway's and the
store's, and the process RSS) and nothing else; `figures` derives the rates,
ratios and health signals between two snapshots. `avm.app.dashboard` renders
them; `avm run --json` prints `Figures.to_json()`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["THRESHOLDS", "Figures", "Snapshot", "figures", "health_level", "ratio", "read_rss_bytes", "take_snapshot"]

# Health signals: (warn at, critical at), as fractions. A signal at or above its mark is flagged.
THRESHOLDS: dict[str, tuple[float, float]] = {
    "tool_churn": (0.2, 0.5),  # tool calls repeating an earlier call (same tool and arguments) of the agent
    "repeated_effect_rate": (0.1, 0.3),  # effects identical, request and result, to the agent's previous one
    "stall_rate": (0.05, 0.2),  # agents ended STALLED / agents ended
    "retry_density": (0.1, 0.5),  # gateway retries / HTTP requests
    "budget_exhaustion_rate": (0.1, 0.3),  # agents ended BUDGET_EXCEEDED / agents ended
    "failure_rate": (0.1, 0.3),  # agents ended FAILED / agents ended
    "llm_error_rate": (0.05, 0.2),  # LLM requests that came back as errors / LLM requests
    # Tool calls that came back as error values (raised, timed out, bad arguments...) / tool calls. An
    # agent usually goes on after one (the error is a value it can handle), so a fleet whose tools all fail
    # can end "done" with no agent failed: only this shows it.
    "tool_error_rate": (0.1, 0.3),
    # Tool calls that did not finish within their tool's timeout / tool calls: lower marks than errors, since
    # each one held its agent for the whole timeout and charged it the tool's time.
    "tool_timeout_rate": (0.05, 0.2),
}

# --- Snapshots -------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss_bytes() -> int:
    """The resident set size now (Linux /proc); elsewhere the peak from ``resource``; 0 if neither."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # not a Unix
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The records of one moment: ``time`` is in seconds since the dashboard started."""

    time: float
    vm: Any  # avm.runtime.VMStatistics
    gateway: Any = None  # avm.io.gateway_settings.GatewayStatistics, or None without a gateway
    store: Any = None  # avm.memory.stats.StoreStatistics, or None (no store, or not sampled)
    rss_bytes: int = 0


def take_snapshot(vm: Any, started: float, top: int = 5, *, store: bool = True,
                  clock: Callable[[], float] = time.monotonic) -> Snapshot:
    """Read ``vm.statistics(top=top)``, its gateway's and its store's records, and the RSS.

    ``started`` is the ``clock()`` the snapshot's time counts from (`Dashboard` passes trio's
    clock, ``trio.current_time``, so that tests can run it on a MockClock). ``top`` > 0 ranks
    agents by energy (a scan of the live agents: ask for it at a display's pace, not in a loop).
    A missing gateway or store (None, no ``statistics``, a closed store) gives None in its place.
    """
    vm_stats = vm.statistics(top=top) if top > 0 else vm.statistics()
    gateway = getattr(vm, "gateway", None)
    gateway_stats = gateway.statistics() if gateway is not None and hasattr(gateway, "statistics") else None
    store_stats = None
    if store:
        st = getattr(vm, "store", None)
        if st is not None and hasattr(st, "statistics") and not getattr(st, "closed", False):
            store_stats = st.statistics()
    return Snapshot(clock() - started, vm_stats, gateway_stats, store_stats, read_rss_bytes())


# --- Figures ---------------------------------------------------------------------------------


def ratio(part: float, whole: float) -> float:
    """``part / whole``, and 0.0 when there is nothing to divide by."""
    return part / whole if whole > 0 else 0.0


def _field(record: Any, name: str, default: Any = 0) -> Any:
    return getattr(record, name, default) if record is not None else default


def health_level(name: str, value: float) -> str:
    warn, critical = THRESHOLDS[name]
    return "critical" if value >= critical else "warn" if value >= warn else "ok"


@dataclass(frozen=True, slots=True)
class Figures:
    """What the dashboard shows, derived from two snapshots (see `figures`).

    Rates are per second over the window between the snapshots; the health
    ratios are over the same window (a ratio with nothing to divide by is
    0.0); counts of now (agents per state, energy, memory) are the later
    snapshot's. ``to_json()`` gives them as plain JSON types under stable
    snake_case keys.
    """

    time_s: float  # seconds since the dashboard started, at the later snapshot
    window_s: float  # seconds between the two snapshots
    # agents
    agents: int
    live: int
    by_state: dict[str, int]
    ended: dict[str, int]
    completions: int
    faults: int
    spawns_per_s: float  # agents spawned (by the host and by programs)
    completions_per_s: float  # agents that reached a terminal state
    effects_per_s: float
    # LLM
    llm_requests_per_s: float  # llm effects performed by agents
    tokens_per_s: float  # prompt and completion tokens
    llm_requests: int  # gateway complete() calls so far
    http_requests: int
    http_requests_per_s: float
    batch_size_mean: float  # requests per batched HTTP request, so far (0.0: none was batched; see `batched`)
    latency_p50_s: float  # of replies from the network (0.0 until one came; see `has_latency`)
    latency_p99_s: float
    in_flight: int
    queued: int
    cache_hit_rate: float  # gateway requests answered from the cache (hot or store tier)
    # energy
    energy_used: float
    energy_budget: float
    energy_left: float
    energy_per_s: float
    # memory
    tiers: dict[str, dict[str, int]]  # hot/warm/cold: objects, bytes, raw_bytes
    unique_objects: int
    physical_bytes: int
    dedup_ratio: float
    compression_ratio: float
    rss_bytes: int
    # health
    tool_churn: float
    repeated_effect_rate: float
    stall_rate: float
    retry_density: float
    budget_exhaustion_rate: float
    failure_rate: float
    llm_error_rate: float
    tool_error_rate: float
    tool_timeout_rate: float
    alerts: dict[str, str]  # health signals at warn or critical: name -> "warn" | "critical"
    top_agents: tuple[tuple[int, str | None, str, float], ...] = ()  # (id, name, state, energy)
    recent_faults: tuple[tuple[int, str | None, int, str], ...] = ()  # (agent id, name, line, message), newest last
    has_gateway: bool = True
    has_store: bool = True

    @property
    def batched(self) -> bool:
        """Whether any HTTP request carried a batch (else ``batch_size_mean`` is 0.0, not a size)."""
        return self.batch_size_mean > 0

    @property
    def has_latency(self) -> bool:
        """Whether a reply came from the network (the gateway's latencies are 0.0 until one did)."""
        return max(self.latency_p50_s, self.latency_p99_s) > 0

    def health(self) -> dict[str, float]:
        """The health signals by name (the keys of `THRESHOLDS`)."""
        return {name: getattr(self, name) for name in THRESHOLDS}

    def to_json(self) -> dict[str, Any]:
        """A dict of plain JSON types (the ``--json`` summary)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            if name == "top_agents":
                value = [{"id": i, "name": n, "state": s, "energy": e} for i, n, s, e in value]
            elif name == "recent_faults":
                value = [{"agent": i, "name": n, "line": ln, "message": m} for i, n, ln, m in value]
            elif isinstance(value, dict):
                value = {k: dict(v) if isinstance(v, dict) else v for k, v in value.items()}
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            out[name] = value
        return out


_TIER_NAMES = ("hot", "warm", "cold")


def figures(prev: Snapshot | None, now: Snapshot) -> Figures:
    """The figures of the window from ``prev`` to ``now`` (``prev`` None: from zero at time 0)."""
    v, p = now.vm, prev.vm if prev is not None else None
    window = now.time - (prev.time if prev is not None else 0.0)

    def dv(name: str) -> float:
        return _field(v, name) - _field(p, name)

    def per_s(delta: float) -> float:
        return delta / window if window > 0 else 0.0

    effects = dict(v.effects)
    prev_effects = p.effects if p is not None else {}

    def de(kind: str) -> int:
        return effects.get(kind, 0) - prev_effects.get(kind, 0)

    all_effects = sum(effects.values()) - sum(prev_effects.values())
    ended = dict(v.ended)
    prev_ended = p.ended if p is not None else {}

    def dend(state: str) -> int:
        return ended.get(state, 0) - prev_ended.get(state, 0)

    completions = dv("completions")
    g, pg = now.gateway, prev.gateway if prev is not None else None

    def dg(name: str) -> float:
        return _field(g, name) - _field(pg, name)

    hits = dg("hits_hot") + dg("hits_store")
    s = now.store
    tiers = {}
    if s is not None:
        for name in _TIER_NAMES:
            tier = getattr(s, name, None)
            if tier is not None and getattr(tier, "enabled", True):
                tiers[name] = {"objects": tier.objects, "bytes": tier.bytes, "raw_bytes": tier.raw_bytes}
    health = {
        "tool_churn": ratio(dv("tool_repeats"), de("tool")),
        "repeated_effect_rate": ratio(dv("repeated_effects"), all_effects),
        "stall_rate": ratio(dend("stalled"), completions),
        "retry_density": ratio(dg("retries"), dg("http_requests")),
        "budget_exhaustion_rate": ratio(dend("budget_exceeded"), completions),
        "failure_rate": ratio(dend("failed"), completions),
        "llm_error_rate": ratio(dv("llm_errors"), de("llm")),
        "tool_error_rate": ratio(dv("tool_errors"), dv("tool_calls")),
        "tool_timeout_rate": ratio(dv("tool_timeouts"), dv("tool_calls")),
    }
    alerts = {name: level for name, value in health.items() if (level := health_level(name, value)) != "ok"}
    energy_used = float(v.energy_used)
    energy_budget = float(_field(v, "energy_budget", 0.0))
    return Figures(
        time_s=now.time, window_s=window,
        agents=v.agents, live=v.live, by_state=dict(v.by_state), ended=ended, completions=v.completions,
        faults=_field(v, "faults"),
        spawns_per_s=per_s(dv("agents")), completions_per_s=per_s(completions), effects_per_s=per_s(all_effects),
        llm_requests_per_s=per_s(de("llm")),
        tokens_per_s=per_s(dv("prompt_tokens") + dv("completion_tokens")),
        llm_requests=_field(g, "requests"), http_requests=_field(g, "http_requests"),
        http_requests_per_s=per_s(dg("http_requests")), batch_size_mean=float(_field(g, "batch_size_mean", 0.0)),
        latency_p50_s=float(_field(g, "latency_p50_s", 0.0)), latency_p99_s=float(_field(g, "latency_p99_s", 0.0)),
        in_flight=_field(g, "in_flight"), queued=_field(g, "queued"),
        cache_hit_rate=ratio(hits, dg("requests")),
        energy_used=energy_used, energy_budget=energy_budget,
        energy_left=float(_field(v, "energy_left", max(0.0, energy_budget - energy_used))),
        energy_per_s=per_s(energy_used - float(_field(p, "energy_used", 0.0))),
        tiers=tiers, unique_objects=_field(s, "unique_objects"), physical_bytes=_field(s, "physical_bytes"),
        dedup_ratio=float(_field(s, "dedup_ratio", 1.0)), compression_ratio=float(_field(s, "compression_ratio", 1.0)),
        rss_bytes=now.rss_bytes, alerts=alerts,
        top_agents=tuple(_field(v, "top_agents", ())), recent_faults=tuple(v.recent_faults),
        has_gateway=g is not None, has_store=s is not None, **health)
