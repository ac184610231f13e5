"""AVM side by side with the ways people run agents today: asyncio, a thread per agent, a process per agent.

Run ``python bench/agents.py`` for the table, ``--json`` to also print one JSON
object as the last line; ``--quick`` is N=100 at 0.2 s latency. ``avm bench
agents`` runs it too. Each run writes ``bench/results/agents-<date>.json`` and
PNG charts beside it (with matplotlib: ``pip install -e '.[bench]'``);
``--readme`` rewrites README.md's table from the newest such JSON.

Every system runs the same workload, that of ``bench/fleet.py``: per agent a
~8 KB system prompt filled from one template, ten tools whose specs total
~12 KB, K = 8 turns of which K - 1 end in a tool call (500-byte results), the
last in the final text. The server is one ``avm serve-llm --dialect openai``
process per latency L (no batch endpoint, as OpenAI's API), answering every
system alike. Each (system, N, L) runs in a FRESH process (``--one``):

1. **avm**: ``avm.VM(llm=url, tools=...)``, the agent the AVM program
   `fleet.PROGRAM`, every agent spawned at once.
2. **asyncio**: the official ``openai`` SDK as its users write a tool-calling
   loop: one ``AsyncOpenAI`` client, one coroutine per agent holding its own
   ``messages`` list (the tool calls run by name from a dict of functions),
   ``asyncio.gather`` over the agents. Its connection pool keeps every
   connection it opens alive, up to the SDK's ceiling of 1,000 (by default
   it keeps 100, so a fleet of 1,000 would reconnect for most calls).
3. **threads**: the SDK's synchronous ``OpenAI`` client shared by one thread
   per agent (a pool as wide as N), its connection pool as the asyncio one.
4. **processes**: ``multiprocessing`` (fork), one process per agent with its
   own synchronous client; only at small N (``--max-processes``: a process
   costs tens of MiB, so 1,000 of them do not fit in memory).

Per run, measured from the first agent started to the last one ended, after a
one-agent warm-up: wall time; efficiency = K * L / wall; LLM calls per second;
client CPU per LLM call (getrusage of the process, and of its children for
processes); peak RSS and RSS per agent ((peak - before) / N, sampled every
50 ms from /proc; for processes the proportional set sizes of the parent and
its children summed, so their shared pages count once); spawn time per agent; GC time; the time
the first agent finished and the 99th percentile of agents' finish times. For
AVM also: HTTP requests and connections, the dedup ratio (what the agents
would hold each keeping its own copy of the prompt, the tool specs and its
turns, over what the store holds), the store's compression ratio, energy
used, and a second pass at temperature 0 whose repeated prompts the
gateway's cache answers (its hit rate). A run that does not end within
``--timeout`` (10 minutes) is stopped and reports how far it got.

Targets on a 2-core machine, N = 1,000 and L = 1 s, ratios from one run: AVM's
efficiency >= 3x asyncio's, its RSS per agent <= 1/4 of asyncio's, its client
CPU per LLM call <= 1/5 of asyncio's; at N = 10,000 AVM completes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/ (as when a bench runs)
from _measure import GcTimer  # noqa: E402
from fleet import (  # noqa: E402
    BUDGET,
    PROGRAM,
    SYSTEM_TEMPLATE,
    TOOL_NAMES,
    TOOLS,
    agent_inputs,
    cpu_seconds,
    raise_nofile,
    rss_bytes,
    start_server,
    stop,
)

from avm.io.embedded.faults import DEFAULT_MODEL  # noqa: E402

SYSTEMS = ("avm", "asyncio", "threads", "processes")
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
TABLE_START, TABLE_END = "<!-- bench/agents.py table: start -->", "<!-- bench/agents.py table: end -->"
_PAGE = os.sysconf("SC_PAGE_SIZE")

# ----------------------------------------------------------------------------------------
# The baselines' agent: what fleet.PROGRAM does, written as the SDK's users write it.
# ----------------------------------------------------------------------------------------

_FUNCTIONS = {t.name: t.fn for t in TOOLS}  # the same coroutine functions the AVM tools call


def tool_specs() -> list[dict[str, Any]]:
    return [t.spec() for t in TOOLS]


def _first_messages(i: int) -> list[dict[str, Any]]:
    inputs = agent_inputs(i)
    return [{"role": "system", "content": SYSTEM_TEMPLATE.format(**inputs)},
            {"role": "user", "content": inputs["task"]}]


async def _run_tool(call: Any) -> str:
    try:
        return await _FUNCTIONS[call.function.name](**json.loads(call.function.arguments))
    except Exception as exc:  # noqa: BLE001 - a tool's failure is the model's to see, as AVM hands it over
        return f"error: {type(exc).__name__}: {exc}"


async def async_agent(client: Any, i: int, specs: list[dict[str, Any]], calls: list[int] | None = None) -> None:
    """One agent of the asyncio baseline; ``calls[i]`` counts its LLM calls as they return."""
    messages = _first_messages(i)
    while True:
        response = await client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, tools=specs,
                                                        max_tokens=512)
        if calls is not None:
            calls[i] += 1
        message = response.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return
        for call in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": await _run_tool(call)})


def sync_agent(client: Any, i: int, specs: list[dict[str, Any]], calls: list[int],
               stop_flag: threading.Event | None = None) -> bool:
    """One agent of the threads and processes baselines (the tools' coroutines run to completion here);
    ``calls[i]`` counts its LLM calls as they return (a slot per agent: no two threads write one). Whether
    it finished (False: stopped)."""
    messages = _first_messages(i)
    while stop_flag is None or not stop_flag.is_set():
        response = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, tools=specs,
                                                  max_tokens=512)
        calls[i] += 1
        message = response.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return True
        for call in message.tool_calls:
            content = _drive(_run_tool(call))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
    return False


def _limits(agents: int) -> Any:
    """The SDK client's connection pool: its default opens at most 1,000 connections and keeps 100 of them
    alive, so a fleet of 1,000 reconnects for most calls; here every connection it opens is kept. Up to
    1,000 of them (the SDK's own ceiling): measured, 10,000 at once made it return no call in 10 minutes."""
    import httpx

    width = min(max(agents, 100), 1000)
    return httpx.Limits(max_connections=width, max_keepalive_connections=width)


def _drive(coroutine: Any) -> Any:
    """Run a coroutine that never awaits anything real (the fleet's tools) without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a tool awaited: run it in an event loop")


# ----------------------------------------------------------------------------------------
# Measuring a run (in the child process).
# ----------------------------------------------------------------------------------------


def _pss_of(pid: int | str) -> int:
    """The proportional set size: pages shared with other processes (a forked child's copy-on-write pages)
    counted in part, so summed over a family of processes each page counts once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class PeakRss:
    """The peak RSS of this process, sampled every 50 ms by a thread; with ``children``, the peak of the
    proportional set sizes of this process and its children summed (every 0.5 s: reading them costs more)."""

    def __init__(self) -> None:
        self.children: list[int] = []
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        children = list(self.children)
        if not children:
            return rss_bytes()
        return _pss_of("self") + sum(_pss_of(pid) for pid in children)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(0.5 if self.children else 0.05)

    def __enter__(self) -> PeakRss:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.peak, self.now())
        self._stop.set()
        self._thread.join()


class Clock:
    """A run's times: start, end of spawning, each agent's end."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = self.spawned = time.perf_counter()
        self.ends: list[float] = []

    def ended(self) -> None:
        self.ends.append(time.perf_counter() - self.start)


def figures(agents: int, turns: int, latency: float, calls: int, done: int, wall: float, cpu: float,
            base: int, peak: int, clock: Clock, gc_s: float | None, errors: list[str]) -> dict[str, Any]:
    ends = sorted(clock.ends)
    complete = done == agents and not errors
    return {
        "agents": agents, "turns": turns, "latency_s": latency, "done": done, "llm_calls": calls,
        "wall_s": round(wall, 3), "efficiency": round(turns * latency / wall, 4) if complete else None,
        "llm_calls_per_s": round(calls / wall, 1), "cpu_s": round(cpu, 3),
        "cpu_ms_per_call": round(cpu / calls * 1e3, 4) if calls else None,
        "rss_before_mib": round(base / 2**20, 1), "rss_peak_mib": round(peak / 2**20, 1),
        "rss_kib_per_agent": round((peak - base) / agents / 1024, 2),
        "spawn_us_per_agent": round((clock.spawned - clock.start) / agents * 1e6, 2),
        "gc_s": round(gc_s, 4) if gc_s is not None else None,
        "first_done_s": round(ends[0], 3) if ends else None,
        "p99_done_s": round(ends[min(len(ends) - 1, math.ceil(0.99 * len(ends)) - 1)], 3) if ends else None,
        "errors": errors[:3], "complete": complete,
    }


def _calm() -> tuple[int, float]:
    gc.collect()
    return rss_bytes(), cpu_seconds()


# --- avm --------------------------------------------------------------------------------------------


def run_avm(url: str, agents: int, turns: int, latency: float, timeout: float, cache_pass: bool) -> dict[str, Any]:
    import trio

    import avm
    from avm.kernel.hooks import Hook

    async def fleet(temperature: float | None, passes: int) -> dict[str, Any]:
        settings: dict[str, Any] = {"temperature": temperature} if temperature is not None else {}
        async with avm.VM(llm=url, model=DEFAULT_MODEL, tools=TOOLS, hibernate_after_s=None,
                          llm_connections=max(agents, 64), **settings) as vm:
            warm = await vm.spawn(PROGRAM, system=SYSTEM_TEMPLATE, inputs=agent_inputs(agents), budget=BUDGET,
                                  tools=TOOL_NAMES)
            await warm.result()
            clock = Clock()

            class Ends(Hook):  # each agent's end, for the finish-time figures
                def ended(self, agent: Any) -> None:
                    clock.ended()

            vm.add_hook(Ends())
            out: dict[str, Any] = {}
            for attempt in range(passes):  # (the cache pass: the same agents again)
                g0, s0, v0 = vm.gateway.statistics(), vm.store.statistics(), vm.statistics()
                base, cpu0 = _calm()
                clock.reset()
                with GcTimer() as timer, PeakRss() as rss:
                    clock.start = time.perf_counter()
                    for i in range(agents):
                        await vm.spawn(PROGRAM, system=SYSTEM_TEMPLATE, inputs=agent_inputs(i), budget=BUDGET,
                                       tools=TOOL_NAMES)
                    clock.spawned = time.perf_counter()
                    with trio.move_on_after(timeout) as scope:
                        await vm.join()
                    wall = time.perf_counter() - clock.start
                    cpu = cpu_seconds() - cpu0
                if scope.cancelled_caught:
                    vm.cancel_all()
                g1, s1, v1 = vm.gateway.statistics(), vm.store.statistics(), vm.statistics()
                done = v1.ended.get("done", 0) - v0.ended.get("done", 0)
                calls = g1.requests - g0.requests
                errors = [f"stopped after {timeout:g} s"] if scope.cancelled_caught else []
                if v1.llm_errors > v0.llm_errors:
                    errors.append(f"{v1.llm_errors - v0.llm_errors} LLM errors: {v1.llm_first_errors}")
                # what the agents would hold each keeping its own copy of the prompt, the tool specs and its
                # turns, over what the store holds for them (the shared parts once)
                logical, unique = s1.logical_bytes - s0.logical_bytes, s1.unique_bytes - s0.unique_bytes
                shared = len(SYSTEM_TEMPLATE.encode()) + len(json.dumps(tool_specs()).encode())
                copied, held = agents * shared + logical, shared + unique
                out = figures(agents, turns, latency, calls, done, wall, cpu, base, rss.peak, clock,
                              timer.seconds, errors)
                hits = g1.hits - g0.hits
                out.update({
                    "http_requests": g1.http_requests - g0.http_requests,
                    "http_connections_max": g1.http_connections_max,
                    "store_dedup_ratio": round(copied / held, 2),
                    "store_compression_ratio": round(s1.compression_ratio, 2),
                    "energy_used": round(v1.energy_used - v0.energy_used, 1),
                    "cache_hit_rate": round(hits / calls, 4) if calls else None,
                    "temperature": temperature, "pass": attempt + 1,
                })
            return out

    result = trio.run(fleet, None, 1)
    if cache_pass:
        second = trio.run(fleet, 0.0, 2)
        result["cache_pass"] = {key: second[key] for key in ("wall_s", "cache_hit_rate", "llm_calls",
                                                              "http_requests", "cpu_ms_per_call", "done")}
    return result


# --- asyncio ----------------------------------------------------------------------------------------


def run_asyncio(url: str, agents: int, turns: int, latency: float, timeout: float) -> dict[str, Any]:
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient

    async def main() -> dict[str, Any]:
        client = AsyncOpenAI(base_url=url, api_key="not-needed",
                             http_client=DefaultAsyncHttpxClient(limits=_limits(agents)))
        specs = tool_specs()
        await async_agent(client, agents, specs)  # warm-up
        clock = Clock()
        calls = [0] * agents

        async def agent(i: int) -> None:
            await async_agent(client, i, specs, calls)
            clock.ended()

        base, cpu0 = _calm()
        errors: list[str] = []
        with GcTimer() as timer, PeakRss() as rss:
            clock.start = time.perf_counter()
            everyone = asyncio.gather(*(agent(i) for i in range(agents)), return_exceptions=True)
            clock.spawned = time.perf_counter()
            try:
                outcomes = await asyncio.wait_for(everyone, timeout)
            except TimeoutError:
                outcomes = []
                errors.append(f"stopped after {timeout:g} s")
            wall = time.perf_counter() - clock.start
            cpu = cpu_seconds() - cpu0
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            errors.append(f"{len(failures)} agents failed: {type(failures[0]).__name__}: {failures[0]}")
        await client.close()
        return figures(agents, turns, latency, sum(calls), len(clock.ends), wall, cpu, base, rss.peak, clock,
                       timer.seconds, errors)

    return asyncio.run(main())


# --- threads ----------------------------------------------------------------------------------------


def run_threads(url: str, agents: int, turns: int, latency: float, timeout: float) -> dict[str, Any]:
    from openai import DefaultHttpxClient, OpenAI

    client = OpenAI(base_url=url, api_key="not-needed", http_client=DefaultHttpxClient(limits=_limits(agents)))
    specs = tool_specs()
    sync_agent(client, agents, specs, [0] * (agents + 1))  # warm-up
    clock = Clock()
    calls = [0] * agents
    errors: list[str] = []
    lock = threading.Lock()
    stop_flag = threading.Event()

    def agent(i: int) -> None:
        try:
            finished = sync_agent(client, i, specs, calls, stop_flag)
        except Exception as exc:  # noqa: BLE001 - counted, the others go on
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
            return
        if finished:
            with lock:
                clock.ended()

    base, cpu0 = _calm()
    threads = [threading.Thread(target=agent, args=(i,), daemon=True) for i in range(agents)]
    with GcTimer() as timer, PeakRss() as rss:
        clock.start = time.perf_counter()
        for thread in threads:
            thread.start()
        clock.spawned = time.perf_counter()
        deadline = clock.start + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.perf_counter()))
        if any(thread.is_alive() for thread in threads):
            stop_flag.set()
            errors.insert(0, f"stopped after {timeout:g} s")
        wall = time.perf_counter() - clock.start
        cpu = cpu_seconds() - cpu0
    return figures(agents, turns, latency, sum(calls), len(clock.ends), wall, cpu, base, rss.peak, clock,
                   timer.seconds, errors)


# --- processes --------------------------------------------------------------------------------------


def _process_agent(url: str, i: int, results: Any) -> None:
    from openai import OpenAI

    try:
        calls = [0] * (i + 1)
        sync_agent(OpenAI(base_url=url, api_key="not-needed"), i, tool_specs(), calls)
        results.put((i, calls[i], time.perf_counter(), None))
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        results.put((i, 0, time.perf_counter(), f"{type(exc).__name__}: {exc}"))


def run_processes(url: str, agents: int, turns: int, latency: float, timeout: float) -> dict[str, Any]:
    import resource

    from openai import OpenAI

    sync_agent(OpenAI(base_url=url, api_key="not-needed"), agents, tool_specs(), [0] * (agents + 1))  # warm-up
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    clock = Clock()
    base, cpu0 = _calm()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    processes = [context.Process(target=_process_agent, args=(url, i, results), daemon=True) for i in range(agents)]
    errors: list[str] = []
    calls = 0
    with PeakRss() as rss:
        clock.start = time.perf_counter()
        for process in processes:
            process.start()
            rss.children.append(process.pid)  # type: ignore[arg-type]
        clock.spawned = time.perf_counter()
        deadline = clock.start + timeout
        for _ in range(agents):
            try:
                _i, made, ended, error = results.get(timeout=max(0.0, deadline - time.perf_counter()))
            except Exception:  # noqa: BLE001 - queue.Empty: the time is up
                errors.insert(0, f"stopped after {timeout:g} s")
                break
            calls += made
            if error is None:
                clock.ends.append(ended - clock.start)
            else:
                errors.append(error)
        wall = time.perf_counter() - clock.start
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_seconds() - cpu0) + (children1.ru_utime + children1.ru_stime
                                   - children0.ru_utime - children0.ru_stime)
    out = figures(agents, turns, latency, calls, len(clock.ends), wall, cpu, base, rss.peak, clock, None, errors)
    out["gc_note"] = "in each process (not measured)"
    return out


RUNNERS = {"asyncio": run_asyncio, "threads": run_threads, "processes": run_processes}


def run_one(args: argparse.Namespace) -> int:
    warning = raise_nofile(2 * args.agents[0] + 256)
    if warning:
        print(f"agents: {warning}", file=sys.stderr)
    system = args.systems[0]
    if system == "avm":
        result = run_avm(args.url, args.agents[0], args.turns, args.latencies[0], args.timeout, args.cache_pass)
    else:
        result = RUNNERS[system](args.url, args.agents[0], args.turns, args.latencies[0], args.timeout)
    result["system"] = system
    print(json.dumps(result, sort_keys=True), flush=True)
    sys.stdout.flush()
    os._exit(0)  # (threads stopped at the timeout may still be in a request: do not wait for them)


# ----------------------------------------------------------------------------------------
# The parent: a server per latency, a fresh process per (system, N).
# ----------------------------------------------------------------------------------------


def run_child(url: str, system: str, agents: int, latency: float, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--one", "--url", url, "--systems", system,
               "--agents", str(agents), "--turns", str(args.turns), "--latencies", f"{latency:g}",
               "--timeout", f"{args.timeout:g}"]
    if system == "avm" and agents <= args.cache_pass_max:
        command.append("--cache-pass")
    limit = 3 * args.timeout + 300  # (AVM's run, then its cache pass's two: each stops itself at the timeout)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    head = {"system": system, "agents": agents, "latency_s": latency, "turns": args.turns}
    try:
        stdout, _ = child.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        return {**head, "errors": [f"killed after {limit:g} s"], "complete": False}
    finally:
        stop(child)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        return {**head, "errors": [f"exited {child.returncode} (out of memory?)"], "complete": False}
    return json.loads(lines[-1])


def describe(run: dict[str, Any]) -> str:
    head = f"  {run['system']:<9} N={run['agents']:>6,} L={run['latency_s']:g} s:"
    if "wall_s" not in run:
        return f"{head} FAILED: {'; '.join(run.get('errors', []))}"
    eff = f"{run['efficiency']:.3f}" if run.get("efficiency") is not None else "-"
    line = (f"{head} wall {run['wall_s']:.2f} s, efficiency {eff}, {run['llm_calls_per_s']:,.0f} calls/s, "
            f"CPU {run['cpu_ms_per_call']} ms/call, RSS {run['rss_kib_per_agent']:,.1f} KiB/agent "
            f"(peak {run['rss_peak_mib']:,.0f} MiB), spawn {run['spawn_us_per_agent']:,.0f} us/agent, "
            f"GC {run['gc_s'] if run['gc_s'] is not None else '-'} s, first done {run['first_done_s']} s, "
            f"p99 done {run['p99_done_s']} s, done {run['done']:,}/{run['agents']:,}")
    if run["system"] == "avm":
        line += (f"; {run['http_requests']:,} HTTP requests over {run['http_connections_max']:,} connections, "
                 f"dedup x{run['store_dedup_ratio']}, compression x{run['store_compression_ratio']}, "
                 f"energy {run['energy_used']:,.0f}")
        if "cache_pass" in run:
            c = run["cache_pass"]
            line += (f"; cache pass at temperature 0: hit rate {100 * (c['cache_hit_rate'] or 0):.0f}%, "
                     f"wall {c['wall_s']:.2f} s")
    if run.get("errors"):
        line += f"; {'; '.join(run['errors'])}"
    return line


def find(runs: list[dict[str, Any]], system: str, agents: int, latency: float) -> dict[str, Any] | None:
    return next((r for r in runs if r["system"] == system and r["agents"] == agents
                 and r["latency_s"] == latency), None)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The --json keys the issue names (L = 1 s), null where the run was not made or did not complete."""
    out: dict[str, Any] = {}
    for system in ("avm", "asyncio"):
        for key in ("efficiency", "rss_kib_per_agent", "cpu_ms_per_call"):
            run = find(runs, system, 1000, 1.0)
            out[f"{system}_{key}_1000"] = run.get(key) if run is not None and run.get("complete") else None
    run = find(runs, "avm", 10000, 1.0)
    out["avm_efficiency_10000"] = run.get("efficiency") if run is not None else None
    a, b = out, out
    targets: dict[str, Any] = {}
    if a["avm_efficiency_1000"] is not None and b["asyncio_efficiency_1000"]:
        ratio = a["avm_efficiency_1000"] / b["asyncio_efficiency_1000"]
        targets["efficiency_ratio_1000"] = {"met": ratio >= 3, "target": ">= 3", "value": round(ratio, 2)}
    if a["avm_rss_kib_per_agent_1000"] is not None and b["asyncio_rss_kib_per_agent_1000"]:
        ratio = a["avm_rss_kib_per_agent_1000"] / b["asyncio_rss_kib_per_agent_1000"]
        targets["rss_ratio_1000"] = {"met": ratio <= 0.25, "target": "<= 0.25", "value": round(ratio, 3)}
    if a["avm_cpu_ms_per_call_1000"] is not None and b["asyncio_cpu_ms_per_call_1000"]:
        ratio = a["avm_cpu_ms_per_call_1000"] / b["asyncio_cpu_ms_per_call_1000"]
        targets["cpu_ratio_1000"] = {"met": ratio <= 0.2, "target": "<= 0.2", "value": round(ratio, 3)}
    if run is not None:
        targets["avm_completes_10000"] = {"met": bool(run.get("complete")), "target": "all done"}
    out["targets_met"] = targets
    return out


# --- outputs ----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    memory = os.sysconf("SC_PHYS_PAGES") * _PAGE
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(memory / 2**30, 1),
            "python": platform.python_version(), "system": f"{platform.system()} {platform.release()}"}


def charts(report: dict[str, Any], stem: Path) -> list[str]:
    """PNG charts beside the JSON: efficiency and RSS per agent against N (a line per system and
    latency), client CPU per LLM call as bars (N = 1,000). The files' names; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("agents: no matplotlib (pip install -e '.[bench]'): no charts")
        return []
    runs = [r for r in report["runs"] if "wall_s" in r]
    latencies = sorted({r["latency_s"] for r in runs}, reverse=True)
    made = []
    for key, label, name in (("efficiency", "efficiency (K x L / wall)", "efficiency"),
                             ("rss_kib_per_agent", "RSS per agent (KiB)", "rss")):
        fig, axes = plt.subplots(1, len(latencies), figsize=(5.5 * len(latencies), 4), squeeze=False)
        for ax, latency in zip(axes[0], latencies, strict=True):
            for system in SYSTEMS:
                points = sorted((r["agents"], r[key]) for r in runs
                                if r["system"] == system and r["latency_s"] == latency and r.get(key) is not None)
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=system)
            ax.set_xscale("log")
            if key == "rss_kib_per_agent":
                ax.set_yscale("log")
            ax.set_xlabel("agents (N)")
            ax.set_ylabel(label)
            ax.set_title(f"latency {latency:g} s")
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}-{name}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path.name)
    fig, axes = plt.subplots(1, len(latencies), figsize=(5.5 * len(latencies), 4), squeeze=False)
    for ax, latency in zip(axes[0], latencies, strict=True):
        bars = [(r["system"], r["cpu_ms_per_call"]) for r in runs
                if r["agents"] == 1000 and r["latency_s"] == latency and r.get("cpu_ms_per_call") is not None]
        if bars:
            ax.bar(*zip(*bars, strict=True), color=["C0", "C1", "C2", "C3"][:len(bars)])
        ax.set_ylabel("client CPU per LLM call (ms)")
        ax.set_title(f"N = 1,000, latency {latency:g} s")
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = stem.with_name(f"{stem.name}-cpu.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    made.append(path.name)
    return made


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}"


def readme_table(report: dict[str, Any], json_name: str) -> str:
    """The README's section, made from a report (never typed by hand)."""
    m = report["machine"]
    lines = [TABLE_START,
             f"Measured {report['date']} by `python bench/agents.py` (`bench/results/{json_name}`) on "
             f"{m['cpus']} cores ({m['cpu_model'] or 'unknown CPU'}), {m['memory_gib']:g} GiB, Python "
             f"{m['python']}; K = {report['turns']} turns, server `avm serve-llm --dialect openai` in its own "
             f"process. Efficiency = K x L / wall (1.0: no overhead); a dash: did not complete (see the JSON).",
             "",
             "| system | N | L (s) | wall (s) | efficiency | LLM calls/s | CPU ms/call | RSS KiB/agent | "
             "spawn us/agent | p99 done (s) | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for run in report["runs"]:
        errors = run.get("errors") or []
        if "wall_s" not in run:
            why = errors[0].removeprefix("not run: ") if errors else "not run"
            lines.append(f"| {run['system']} | {run['agents']:,} | {run['latency_s']:g} | | | | | | | | "
                         f"not run: {why} |")
            continue
        note = "" if run.get("complete") else (f"{'; '.join(errors)}: {run['done']:,} of {run['agents']:,} done, "
                                                f"{run['llm_calls']:,} LLM calls")
        lines.append(f"| {run['system']} | {run['agents']:,} | {run['latency_s']:g} | {_cell(run['wall_s'], 2)} | "
                     f"{_cell(run['efficiency'])} | {_cell(run['llm_calls_per_s'], 0)} | "
                     f"{_cell(run['cpu_ms_per_call'])} | {_cell(run['rss_kib_per_agent'], 1)} | "
                     f"{_cell(run['spawn_us_per_agent'], 1)} | {_cell(run['p99_done_s'], 2)} | {note} |")
    targets = report["summary"].get("targets_met", {})
    if targets:
        lines += ["", "Targets (N = 1,000, L = 1 s, ratios of AVM's figure to asyncio's from the same run): "
                  + "; ".join(f"{name}" + (f" {t['value']}" if "value" in t else "") + f" (target {t['target']}): "
                              f"{'met' if t['met'] else 'missed'}" for name, t in targets.items()) + "."]
    for chart in report.get("charts", []):
        lines += ["", f"![{chart}](bench/results/{chart})"]
    lines.append(TABLE_END)
    return "\n".join(lines)


def newest_report() -> Path | None:
    found = sorted(RESULTS.glob("agents-*.json"))
    return found[-1] if found else None


def write_readme(path: Path | None = None) -> str:
    """Put the newest report's table into README.md between the markers; the section written."""
    report_path = path or newest_report()
    if report_path is None:
        raise SystemExit("agents: no bench/results/agents-*.json to make the README's table from")
    section = readme_table(json.loads(report_path.read_text()), report_path.name)
    text = README.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise SystemExit(f"agents: README.md has no {TABLE_START} ... {TABLE_END} section")
    before, rest = text.split(TABLE_START, 1)
    after = rest.split(TABLE_END, 1)[1]
    README.write_text(before + section + after)
    return section


def run_all(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    warning = raise_nofile(2 * max(args.agents) + 512)  # inherited by the server and the clients
    if warning:
        print(f"agents: {warning}")
    final_after = 2 * (args.turns - 1)
    print(f"agents side by side against `avm serve-llm --dialect openai` in its own process "
          f"({os.cpu_count()} cores): K={args.turns} turns, latencies {', '.join(f'{v:g}' for v in args.latencies)} s, "
          f"systems {', '.join(args.systems)}")
    runs: list[dict[str, Any]] = []
    for latency in args.latencies:
        server = None
        try:
            server, url = start_server("openai", latency, final_after)
            for agents in args.agents:
                for system in args.systems:
                    head = {"system": system, "agents": agents, "latency_s": latency, "turns": args.turns,
                            "complete": False}
                    if system == "processes" and agents > args.max_processes:
                        run = {**head, "errors": [f"not run: a process per agent above --max-processes "
                                                  f"{args.max_processes} does not fit in memory"]}
                    elif system != "avm" and latency < 1 and agents > args.short_latency_max:
                        run = {**head, "errors": [f"not run: above N = {args.short_latency_max:,} at a latency "
                                                  f"under 1 s the baselines are CPU-bound as at 1 s (see there)"]}
                    else:
                        run = run_child(url, system, agents, latency, args)
                    runs.append(run)
                    print(describe(run), flush=True)
        finally:
            stop(server)
    seconds = round(time.perf_counter() - started, 1)
    date = datetime.date.today().isoformat()
    if args.update:  # these runs replace the same (system, N, latency) of the newest report; the rest stay
        earlier_path = newest_report()
        if earlier_path is None:
            raise SystemExit("agents: --update needs a bench/results/agents-*.json to update")
        earlier = json.loads(earlier_path.read_text())
        fresh = {(r["system"], r["agents"], r["latency_s"]): r for r in runs}
        merged = [fresh.pop((r["system"], r["agents"], r["latency_s"]), r) for r in earlier["runs"]]
        runs = merged + list(fresh.values())
        for run in fresh.values():
            print(f"agents: {run['system']} N={run['agents']} L={run['latency_s']:g} was not in {earlier_path.name}")
        print(f"agents: {len(runs) - len(fresh)} runs of {earlier_path.name}, the ones just made in their place")
        seconds += earlier.get("seconds", 0)
        args.agents, args.latencies = earlier["agents"], earlier["latencies"]
        args.systems = earlier["systems"]
    summary = summarize(runs)
    print("targets:")
    for name, target in summary["targets_met"].items():
        print(f"  {name} {target.get('value', '')} (target {target['target']}): "
              f"{'met' if target['met'] else 'MISSED'}")
    report = {"date": date, "machine": machine(), "turns": args.turns, "latencies": args.latencies,
              "agents": args.agents, "systems": args.systems, "runs": runs, "summary": summary,
              "seconds": seconds}
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stem = RESULTS / f"agents-{date}"
        report["charts"] = charts(report, stem)
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(f"wrote {stem.with_suffix('.json').relative_to(HERE.parent)}"
              + "".join(f", bench/results/{c}" for c in report["charts"]))
    print(f"total bench time {report['seconds']:.1f} s")
    if args.json:
        print(json.dumps({**summary, "runs": runs}, sort_keys=True))
    return 0


def _numbers(kind: type, text: str) -> list[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, not {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, not {text!r}")
    return values


def _systems(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in SYSTEMS for v in values):
        raise argparse.ArgumentTypeError(f"systems are {', '.join(SYSTEMS)}, not {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--agents", type=lambda t: _numbers(int, t), default=None, metavar="N,N",
                        help="fleet sizes (default 100,1000,10000)")
    parser.add_argument("--latencies", type=lambda t: _numbers(float, t), default=None, metavar="S,S",
                        help="server latencies in seconds (default 1,0.1)")
    parser.add_argument("--systems", type=_systems, default=list(SYSTEMS), metavar="NAME,NAME",
                        help=f"systems to run (default {','.join(SYSTEMS)})")
    parser.add_argument("--turns", type=int, default=8, metavar="K", help="LLM turns per agent (default 8)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S",
                        help="per run: a run still going is stopped and reports how far it got (default 600)")
    parser.add_argument("--max-processes", type=int, default=100, metavar="N",
                        help="the largest N the process-per-agent system runs at (default 100)")
    parser.add_argument("--short-latency-max", type=int, default=1000, metavar="N",
                        help="the largest N the baselines run at below 1 s of latency (default 1000: each run "
                             "above it would take the whole --timeout, as at 1 s)")
    parser.add_argument("--cache-pass-max", type=int, default=1000, metavar="N",
                        help="AVM's cache pass (temperature 0, the same agents twice) up to this N (default 1000)")
    parser.add_argument("--quick", action="store_true", help="N=100 only, latency 0.2 s, a 120 s timeout")
    parser.add_argument("--no-save", action="store_true", help="write no JSON or charts under bench/results")
    parser.add_argument("--update", action="store_true",
                        help="run only the given systems, sizes and latencies, and put these runs in place of the "
                             "same ones in the newest bench/results/agents-*.json (the report is saved under "
                             "today's date)")
    parser.add_argument("--readme", action="store_true",
                        help="only rewrite README.md's table from the newest bench/results/agents-*.json")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--cache-pass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.readme:
        print(write_readme())
        return 0
    if args.turns < 2:
        parser.error("--turns must be at least 2 (a tool call, then the answer)")
    if args.agents is None:
        args.agents = [100] if args.quick else [100, 1000, 10000]
    if args.latencies is None:
        args.latencies = [0.2] if args.quick else [1.0, 0.1]
    if args.quick:
        args.timeout = min(args.timeout, 120.0)
        args.no_save = True
    if args.one:
        if not args.url:
            parser.error("--one needs --url")
        return run_one(args)
    try:
        return run_all(args)
    except KeyboardInterrupt:
        print("agents: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
