"""Scheduler and runtime benchmark: spawn cost, memory per agent, effect round trip.

Run ``python bench/scheduler.py`` for readable lines, ``--json`` to also print
one JSON object as the last line; ``--trace`` adds where the memory goes
(tracemalloc by line, and a census of the new objects by type; slower, and
the RSS figures of a traced run include tracemalloc's own bookkeeping).

Everything goes through the public API: ``async with VM(...) as vm``,
``await vm.spawn(...)``, ``handle.send``, ``handle.result``, ``vm.join`` and
``vm.statistics()``. The VM starts its embedded LLM server as usual; no agent
here calls the LLM. Each program is compiled once with ``avm.compile`` and
every spawn is given that same Code object (so no spawn compiles, and the
program is stored once).

Each measurement runs in a fresh Python process (this script started again
with ``--phase``), so that memory one phase freed cannot be reused by the
next and hide its growth. In each, a warm-up first compiles the program,
enters the VM and runs a few agents of the kind measured to their end; then
``gc.collect()`` and ``gc.freeze()`` (as DESIGN.md asks of long-lived
structures after start-up; ``--no-freeze`` to compare), and a baseline RSS
(resident pages from /proc/self/statm, times the page size). Growth from that
baseline is the agents' own cost: shared content (the code, the interpreter,
the VM, the server, the store's dictionaries trained in the warm-up) is
excluded; per-agent content is not.

- spawn_us_per_agent: wall time of 10,000 ``await vm.spawn(code)`` calls in a
  row, divided by 10,000 (the agents start running only after the loop, at
  its next checkpoint). Median of 5 rounds in one VM; before each next round
  the agents of the last one are sent a message and finish.
- rss_per_idle_agent_bytes: in the first of those rounds, the 10,000 agents
  run ``push null / recv / return`` and park in ``recv`` (hibernation off:
  ``hibernate_after_s=None``); RSS growth / 10,000 once every one is
  WAITING_MESSAGE, after ``gc.collect()``. The bench's own list of the
  handles is allocated before the baseline. A second process measures the
  same with per-agent inputs ``{"n": i}`` (what real agents have).
- rss_per_hibernated_agent_bytes: 100,000 agents of the same program, each
  with inputs ``{"n": i}`` (so that every snapshot is distinct: without them
  the store would keep one snapshot for all), ``hibernate_after_s=0``:
  each parks in recv, is snapshotted into the store and its task ends. They
  are spawned in batches of 1,000, each batch waited for until
  ``statistics().by_state["hibernated"]`` counts it, so that 100,000 live
  tasks never exist at once: the memory a peak of live tasks takes stays with
  the process after they end (mostly as free pymalloc pools) and would be
  counted as hibernated memory (``--batch 5000`` adds about 270 B per agent,
  ``--batch 100000``, all at once, about 6 KB). The store is the VM's
  default in-memory ``ContentStore()``: the snapshots live in its hot tier,
  inside this process, so their bytes (and the store's indexes and pins) are
  counted in the RSS growth. Afterwards 1,000 of them are sent a message and must wake
  and return it.
- effect_roundtrip_us: one agent running ``push 0 / sleep / pop`` in a counted
  loop, 100,000 times: ``sleep 0`` is the cheapest effect that really leaves
  the agent (``trio.sleep(0)``: the task is rescheduled through trio's run
  queue and resumed). Wall time from spawn to result / effects. The same
  program driven by a bare Frame (no runtime, results fed back in a Python
  loop) gives the interpreter's share. Also shown: ``send`` to itself by name
  plus ``recv``, 50,000 times each, which never leaves the CPU (the message is
  delivered to its own mailbox and taken back at once).

GC: a ``gc.callbacks`` hook sums the time in the collector (and the longest
pause, and collections per generation) during each measured window.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics as stats
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import trio

try:
    import avm
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import avm
try:
    from avm import VM
except ImportError:  # not re-exported (yet)
    from avm.runtime import VM
from _measure import peak_rss_bytes  # bench/ is on sys.path when a bench runs

TARGETS = {  # figure: (target, unit)
    "spawn_us_per_agent": (10.0, "us"),
    "rss_per_idle_agent_bytes": (6 * 1024, "B"),
    "rss_per_hibernated_agent_bytes": (1024, "B"),
    "effect_roundtrip_us": (20.0, "us"),
}
RECV_PROGRAM = "push null\nrecv\nreturn\n"  # parks in recv; returns the message it got
SPAWN_N = 10_000
SPAWN_ROUNDS = 5
HIBERNATE_N = 100_000
HIBERNATE_BATCH = 1_000  # default of --batch
HIBERNATE_WAKE = 1_000
EFFECTS_N = 100_000
WAIT_LIMIT_S = 60.0  # any wait for agents to reach a state gives up after this

# --------------------------------------------------------------------------
# Measuring tools
# --------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size now (Linux /proc); elsewhere the peak from resource, the best available."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def settle() -> int:
    """Collect garbage, then read the RSS."""
    gc.collect()
    return rss_bytes()


class GcMeter:
    """Time spent in the cyclic garbage collector, from gc.callbacks."""

    def __init__(self, on: bool = True) -> None:
        self.seconds = 0.0
        self.max_pause = 0.0
        self.collections: Counter[int] = Counter()
        self._started = 0.0
        if on:
            self.on()

    def on(self) -> None:
        gc.callbacks.append(self._callback)

    def off(self) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._started
            self.seconds += pause
            self.max_pause = max(self.max_pause, pause)
            self.collections[info["generation"]] += 1

    def reset(self) -> None:
        self.seconds = self.max_pause = 0.0
        self.collections.clear()

    def figures(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 4), "max_pause_ms": round(self.max_pause * 1000, 2),
                "collections": [self.collections[g] for g in range(3)]}


def gc_line(label: str, g: dict[str, Any]) -> str:
    c = g["collections"]
    return (f"    gc during {label}: {g['seconds'] * 1000:.1f} ms in {sum(c)} collections "
            f"(gen0/1/2: {c[0]}/{c[1]}/{c[2]}), longest pause {g['max_pause_ms']:.2f} ms")


def vm_statistics(vm: Any) -> dict[str, Any]:
    """The figures of vm.statistics() that say what happened (zero counters left out)."""
    s = vm.statistics()
    return {"agents": s.agents, "live": s.live, "by_state": s.by_state, "transitions": s.transitions,
            "completions": s.completions, "hibernations": s.hibernations, "wakeups": s.wakeups,
            "preemptions": s.preemptions, "energy_used": round(s.energy_used, 3),
            "effects": {k: v for k, v in s.effects.items() if v}, "messages": s.messages,
            "recent_faults": len(s.recent_faults)}


def stats_line(s: dict[str, Any]) -> str:
    states = ", ".join(f"{k} {v:,}" for k, v in s["by_state"].items())
    effects = ", ".join(f"{k} {v:,}" for k, v in s["effects"].items())
    return (f"    vm.statistics(): agents {s['agents']:,}, live {s['live']:,} ({states}); "
            f"transitions {s['transitions']:,}, completions {s['completions']:,}, "
            f"hibernations {s['hibernations']:,}, wakeups {s['wakeups']:,}, preemptions {s['preemptions']:,}; "
            f"effects: {effects}; messages {s['messages']:,}; energy {s['energy_used']:,g}; "
            f"faults {s['recent_faults']}")


async def wait_for(vm: Any, state: str, count: int, what: str) -> None:
    """Poll vm.statistics() until ``count`` agents are in ``state``."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    while vm.statistics().by_state.get(state, 0) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: only {vm.statistics().by_state.get(state, 0):,} of {count:,} agents "
                             f"{state} after {WAIT_LIMIT_S:g} s; statistics: {vm.statistics()}")
        await trio.sleep(0.002)


async def warm_up(vm: Any, code: Any, state: str, inputs: bool = True) -> None:
    """Run 100 agents to ``state``, send each a message and let them end: the VM's caches and
    trio's structures are sized before anything is measured."""
    warm = [await vm.spawn(code, inputs={"n": -i - 1} if inputs else None) for i in range(100)]
    await wait_for(vm, state, len(warm), "warm-up")
    for h in warm:
        await h.send(0)
    await vm.join()


class Tracer:
    """With --trace: tracemalloc by line and a census by type of the objects created since start()."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._snapshot: Any = None
        self._census: Counter[str] = Counter()

    def start(self) -> None:
        if not self.enabled:
            return
        import tracemalloc

        tracemalloc.start(1)
        gc.collect()
        self._census = self._take_census()[0]
        self._snapshot = tracemalloc.take_snapshot()

    @staticmethod
    def _take_census() -> tuple[Counter[str], Counter[str]]:
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for obj in gc.get_objects():  # gc-tracked objects, frozen ones excluded
            name = type(obj).__qualname__
            counts[name] += 1
            sizes[name] += sys.getsizeof(obj)
        return counts, sizes

    def report(self, n: int, top: int = 14) -> list[str]:
        if not self.enabled:
            return []
        import tracemalloc

        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        lines = [f"    where the bytes went (tracemalloc, growth per agent over {n:,}, by allocating line):"]
        diffs = snapshot.compare_to(self._snapshot, "lineno")
        for d in diffs[:top]:
            frame = d.traceback[0]
            path = frame.filename
            for marker in (os.sep + "avm" + os.sep, os.sep + "bench" + os.sep, os.sep + "site-packages" + os.sep,
                           os.sep + "lib" + os.sep):
                if marker in path:
                    path = path[path.rindex(marker) + 1:]
                    break
            lines.append(f"      {d.size_diff / n:8.1f} B  {d.count_diff / n:6.2f} blocks  {path}:{frame.lineno}")
        total = sum(d.size_diff for d in diffs)
        lines.append(f"      {total / n:8.1f} B  total traced growth per agent")
        counts, sizes = self._take_census()
        lines.append("    new gc-tracked objects per agent, by type (count, sys.getsizeof bytes):")
        new = {k: counts[k] - self._census.get(k, 0) for k in counts}
        for name, c in sorted(new.items(), key=lambda kv: -sizes[kv[0]])[:top]:
            if c > 0:
                lines.append(f"      {c / n:6.2f} x {name:<28} {sizes[name] / n:8.1f} B")
        tracemalloc.stop()
        return lines


# --------------------------------------------------------------------------
# Phases (each in its own process)
# --------------------------------------------------------------------------


def _prepare(freeze: bool) -> None:
    gc.collect()
    if freeze:
        gc.freeze()


async def phase_spawn(args: argparse.Namespace, inputs: bool) -> dict[str, Any]:
    """Spawn rounds of SPAWN_N agents that park in recv; the RSS of the first round."""
    tracer = Tracer(args.trace)
    code = avm.compile(RECV_PROGRAM)
    n = SPAWN_N
    rounds = 1 if inputs else SPAWN_ROUNDS
    out: dict[str, Any] = {"rounds_us": [], "wake_us": []}
    async with VM(hibernate_after_s=None) as vm:
        await warm_up(vm, code, "waiting_message", inputs)
        handles: list[Any] = [None] * n
        _prepare(args.freeze)
        tracer.start()
        base = settle()
        spawn = vm.spawn
        spawn_gc = GcMeter(on=False)  # only inside the timed loops
        for r in range(rounds):
            spawn_gc.on()
            started = time.perf_counter()
            if inputs:
                for i in range(n):
                    handles[i] = await spawn(code, inputs={"n": i})
            else:
                for i in range(n):
                    handles[i] = await spawn(code)
            took = time.perf_counter() - started
            spawn_gc.off()
            out["rounds_us"].append(took / n * 1e6)
            await wait_for(vm, "waiting_message", n, "spawned agents parking in recv")
            if r == 0:
                out["rss_growth"] = settle() - base
                out["trace"] = tracer.report(n)
            started = time.perf_counter()
            for i, h in enumerate(handles):
                await h.send(i)
            await vm.join()
            out["wake_us"].append((time.perf_counter() - started) / n * 1e6)
            for i, h in enumerate(handles):
                if h.state != "done" or h.value != i:
                    raise SystemExit(f"agent {h.id} ended {h.state} with {h.value!r}, sent {i}")
            del h
        out["stats"] = vm_statistics(vm)
    out["spawn_gc"] = spawn_gc.figures()
    out["spawn_gc_us_per_agent"] = spawn_gc.seconds / (n * rounds) * 1e6
    out["spawn_us"] = stats.median(out["rounds_us"])
    out["rss_per_agent"] = out["rss_growth"] / n
    return out


async def phase_hibernate(args: argparse.Namespace) -> dict[str, Any]:
    """HIBERNATE_N agents hibernated in recv, spawned in batches."""
    meter = GcMeter()
    tracer = Tracer(args.trace)
    code = avm.compile(RECV_PROGRAM)
    n, batch = HIBERNATE_N, args.batch
    out: dict[str, Any] = {}
    async with VM(hibernate_after_s=0.0) as vm:
        await warm_up(vm, code, "hibernated")
        handles: list[Any] = [None] * n
        _prepare(args.freeze)
        tracer.start()
        base = settle()
        store_before = vm.store.statistics()
        meter.reset()
        spawn = vm.spawn
        started = time.perf_counter()
        for first in range(0, n, batch):
            for i in range(first, min(n, first + batch)):
                handles[i] = await spawn(code, inputs={"n": i})
            await wait_for(vm, "hibernated", min(n, first + batch), "agents hibernating")
        out["hibernate_us"] = (time.perf_counter() - started) / n * 1e6
        out["gc"] = meter.figures()
        out["rss_growth"] = settle() - base
        peak = peak_rss_bytes()
        out["peak_growth"] = None if peak is None else peak - base
        out["trace"] = tracer.report(n)
        store = vm.store.statistics()
        out["store"] = {
            "hot_objects": store.hot.objects - store_before.hot.objects,
            "hot_bytes": store.hot.bytes - store_before.hot.bytes,
            "warm_objects": store.warm.objects - store_before.warm.objects,
            "warm_bytes": store.warm.bytes - store_before.warm.bytes,
            "pinned_objects": store.pinned_objects - store_before.pinned_objects,
            "dictionaries": store.dictionaries - store_before.dictionaries,
        }
        # They must still work: wake a sample with a message each.
        started = time.perf_counter()
        step = n // HIBERNATE_WAKE
        sample = handles[::step][:HIBERNATE_WAKE]
        for i, h in enumerate(sample):
            await h.send(i)
        for i, h in enumerate(sample):
            if await h.result() != i:
                raise SystemExit(f"woken agent {h.id} did not return the message {i}")
        out["wake_us"] = (time.perf_counter() - started) / len(sample) * 1e6
        del h, sample
        out["stats"] = vm_statistics(vm)
        started = time.perf_counter()
    out["exit_s"] = time.perf_counter() - started  # leaving the VM cancels the hibernated agents
    out["rss_per_agent"] = out["rss_growth"] / n
    return out


SLEEP_LOOP = """\
push {n}
store n
loop:
push 0
sleep
pop
load n
push 1
sub
dup
store n
jump_if loop
push null
return
"""

SELF_SEND_LOOP = """\
push {n}
store n
loop:
load me
load n
send
pop
push null
recv
pop
load n
push 1
sub
dup
store n
jump_if loop
push null
return
"""


def frame_only_us(code: avm.Code, effects: int, inputs: dict[str, Any] | None, budget: float) -> float:
    """Microseconds per effect for the same program driven by a bare Frame (results fed back here)."""
    frame = avm.Frame(code, budget=budget, inputs=inputs, stall_limit=0)
    started = time.perf_counter()
    out = frame.run()
    last = None
    while type(out) is avm.Effect:
        if out.kind == "send":
            last = out.args[1]
            frame.resume(True)
        elif out.kind == "recv":
            frame.resume(last)
        else:
            frame.resume(None)
        out = frame.run()
    took = time.perf_counter() - started
    if out != avm.Done(None):
        raise SystemExit(f"frame-only run ended {out!r}")
    return took / effects * 1e6


async def phase_effects(args: argparse.Namespace) -> dict[str, Any]:
    meter = GcMeter()
    out: dict[str, Any] = {}
    budget = 1_000_000.0
    async with VM(hibernate_after_s=None) as vm:
        for key, source, iterations, effects_per, inputs, name in (
                ("sleep", SLEEP_LOOP, EFFECTS_N, 1, None, None),
                ("send_recv", SELF_SEND_LOOP, EFFECTS_N // 2, 2, {"me": "bench-self"}, "bench-self")):
            code = avm.compile(source.format(n=iterations))
            effects = iterations * effects_per
            warm = await vm.spawn(avm.compile(source.format(n=100)), budget=budget, inputs=inputs, name=name)
            await warm.result()
            _prepare(args.freeze)
            meter.reset()
            started = time.perf_counter()
            h = await vm.spawn(code, budget=budget, inputs=inputs, name=name)
            value = await h.result()
            took = time.perf_counter() - started
            if value is not None:
                raise SystemExit(f"{key}: unexpected result {value!r}")
            out[key] = {"us": took / effects * 1e6, "effects": effects, "gc": meter.figures(),
                        "frame_us": frame_only_us(code, effects, inputs, budget), "energy": h.energy_used}
            if args.freeze:
                gc.unfreeze()
        out["stats"] = vm_statistics(vm)
    return out


def run_phase(args: argparse.Namespace) -> int:
    phases = {
        "spawn": lambda: phase_spawn(args, inputs=False),
        "idle-inputs": lambda: phase_spawn(args, inputs=True),
        "hibernate": lambda: phase_hibernate(args),
        "effects": lambda: phase_effects(args),
    }
    result = trio.run(phases[args.phase])
    print(json.dumps(result))
    return 0


# --------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------


def child(args: argparse.Namespace, phase: str) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", phase]
    if not args.freeze:
        cmd.append("--no-freeze")
    if args.trace:
        cmd.append("--trace")
    cmd += ["--batch", str(args.batch)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"phase {phase} failed (exit {proc.returncode})")
    lines = proc.stdout.strip().splitlines()
    for line in lines[:-1]:  # anything a phase printed besides its figures
        print(line)
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def verdict(key: str, value: float) -> str:
    target, unit = TARGETS[key]
    return f"target <= {target:,g} {unit}: {'met' if value <= target else 'MISSED'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--trace", action="store_true", help="also show where the memory goes (slower)")
    parser.add_argument("--no-freeze", dest="freeze", action="store_false",
                        help="do not gc.freeze() after the warm-up")
    parser.add_argument("--batch", type=int, default=HIBERNATE_BATCH,
                        help=f"agents spawned at a time in the hibernation part (default {HIBERNATE_BATCH:,})")
    parser.add_argument("--phase", choices=("spawn", "idle-inputs", "hibernate", "effects"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        return run_phase(args)

    started = time.perf_counter()
    print(f"avm {avm.__version__} scheduler bench on Python {platform.python_version()} ({platform.machine()}), "
          f"{os.cpu_count()} CPUs; gc.freeze() after warm-up: {'yes' if args.freeze else 'no'}"
          f"{'; tracing memory (RSS includes tracemalloc)' if args.trace else ''}; each part in a fresh process")

    sp = child(args, "spawn")
    print(f"spawn + park in recv ({SPAWN_N:,} agents, program {RECV_PROGRAM.strip()!r} as one compiled Code, "
          f"no inputs, hibernate_after_s=None)")
    print(f"  spawn_us_per_agent        {sp['spawn_us']:8.2f} us   median of {len(sp['rounds_us'])} rounds "
          f"({', '.join(f'{u:.2f}' for u in sp['rounds_us'])})   {verdict('spawn_us_per_agent', sp['spawn_us'])}")
    print(f"  rss_per_idle_agent_bytes  {sp['rss_per_agent']:8.0f} B    RSS +{sp['rss_growth'] / 2**20:.1f} MiB "
          f"for {SPAWN_N:,} agents parked in recv   {verdict('rss_per_idle_agent_bytes', sp['rss_per_agent'])}")
    print(f"    send a message to each parked agent and wait for all to return it: "
          f"{', '.join(f'{u:.2f}' for u in sp['wake_us'])} us per agent")
    print(gc_line(f"the {len(sp['rounds_us'])} spawn loops", sp["spawn_gc"])
          + f" = {sp['spawn_gc_us_per_agent']:.2f} us per spawn")
    print(stats_line(sp["stats"]))
    for line in sp.get("trace") or ():
        print(line)

    si = child(args, "idle-inputs")
    print("the same with per-agent inputs {'n': i} (one round)")
    print(f"  spawn {si['spawn_us']:.2f} us per agent; idle RSS {si['rss_per_agent']:.0f} B per agent "
          f"(+{si['rss_per_agent'] - sp['rss_per_agent']:.0f} B for the inputs)")
    for line in si.get("trace") or ():
        print(line)

    hb = child(args, "hibernate")
    st = hb["store"]
    print(f"hibernation ({HIBERNATE_N:,} agents, inputs {{'n': i}}, hibernate_after_s=0, in-memory store "
          f"(the VM's default ContentStore(), snapshots in its hot tier), spawned in batches of {args.batch:,})")
    print(f"  rss_per_hibernated_agent_bytes {hb['rss_per_agent']:6.0f} B  RSS +{hb['rss_growth'] / 2**20:.1f} MiB "
          f"{verdict('rss_per_hibernated_agent_bytes', hb['rss_per_agent'])}")
    if hb["peak_growth"] is not None:
        print(f"    peak RSS growth during the run {hb['peak_growth'] / 2**20:.1f} MiB")
    print(f"    of which snapshot payload in the store: {st['hot_bytes'] / HIBERNATE_N:.0f} B per agent in the hot "
          f"tier ({st['hot_objects']:,} new objects, {st['warm_objects']:,} warm, {st['pinned_objects']:,} pinned, "
          f"{st['dictionaries']} dictionaries trained meanwhile)")
    print(f"    spawn + run + hibernate: {hb['hibernate_us']:.1f} us per agent; "
          f"waking {HIBERNATE_WAKE:,} of them with a message: {hb['wake_us']:.1f} us per agent; "
          f"leaving the VM (cancels the rest): {hb['exit_s']:.2f} s")
    print(gc_line("hibernation", hb["gc"]))
    print(stats_line(hb["stats"]))
    for line in hb.get("trace") or ():
        print(line)

    ef = child(args, "effects")
    sl, sr = ef["sleep"], ef["send_recv"]
    print("effect round trip (one agent, counted loop)")
    print(f"  effect_roundtrip_us       {sl['us']:8.2f} us   'push 0 / sleep / pop' x {sl['effects']:,} "
          f"(a trio checkpoint per effect)   {verdict('effect_roundtrip_us', sl['us'])}")
    print(f"    of which the program in a bare Frame: {sl['frame_us']:.2f} us per iteration (9 instructions + "
          f"the effect); the runtime adds {sl['us'] - sl['frame_us']:.2f} us")
    print(f"    send to itself + recv: {sr['us']:.2f} us per effect ({sr['effects']:,} effects, no trio "
          f"checkpoint: the message is in its own mailbox); bare Frame {sr['frame_us']:.2f} us")
    print(gc_line("the sleep loop", sl["gc"]))
    print(stats_line(ef["stats"]))

    elapsed = time.perf_counter() - started
    print(f"total bench time {elapsed:.1f} s")
    if args.json:
        print(json.dumps({
            "spawn_us_per_agent": round(sp["spawn_us"], 3),
            "rss_per_idle_agent_bytes": round(sp["rss_per_agent"]),
            "rss_per_hibernated_agent_bytes": round(hb["rss_per_agent"]),
            "effect_roundtrip_us": round(sl["us"], 3),
            "spawn_us_rounds": [round(u, 3) for u in sp["rounds_us"]],
            "spawn_us_with_inputs": round(si["spawn_us"], 3),
            "rss_per_idle_agent_with_inputs_bytes": round(si["rss_per_agent"]),
            "hibernated_store_bytes_per_agent": round(st["hot_bytes"] / HIBERNATE_N + st["warm_bytes"] / HIBERNATE_N),
            "hibernate_us_per_agent": round(hb["hibernate_us"], 2),
            "hibernate_batch": args.batch,
            "hibernated_wake_us": round(hb["wake_us"], 2),
            "idle_wake_us": round(sp["wake_us"][0], 3),
            "effect_roundtrip_frame_only_us": round(sl["frame_us"], 3),
            "send_recv_us_per_effect": round(sr["us"], 3),
            "gc_seconds": {"spawn": sp["spawn_gc"]["seconds"], "hibernate": hb["gc"]["seconds"],
                           "effects": sl["gc"]["seconds"]},
            "gc_freeze": args.freeze,
            "targets_met": {k: (sp["spawn_us"], sp["rss_per_agent"], hb["rss_per_agent"], sl["us"])[i]
                            <= TARGETS[k][0] for i, k in enumerate(TARGETS)},
            "python": platform.python_version(),
            "seconds": round(elapsed, 1),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
