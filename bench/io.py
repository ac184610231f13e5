"""The LLM gateway (avm.io.gateway) end to end, against the embedded LLM server.

Run ``python bench/io.py`` for readable lines, ``--json`` to also print one
JSON object as the last line. Every figure is measured in one run through the
real gateway, its httpx backend (`OpenAIBackend`) and the embedded server
over loopback, with the gateway's default settings (batches of up to 128,
a 2 ms window, 8 connections) and an in-memory `ContentStore` as the cache's
store tier.

* ``agents_1000_one_call_wall_s``: 1,000 concurrent trio tasks ("agents")
  each make one ``gw.complete()`` (a distinct ~1 KB conversation) against a
  server that answers after 100 ms, *in this process*, sharing the trio loop
  with the gateway (how ``avm run`` uses it). Wall time from the first spawn
  to the last reply, with a fresh gateway (connections opened on the way).
  ``http_connections_max`` is the most TCP connections the backend had open
  at once (it sees each connect, and counts the sockets still open).
* ``llm_calls_per_s``: 10,000 concurrent tasks, each making ``--calls``
  calls in a row (distinct ~1 KB conversations at temperature 0, so every
  reply is also written to both cache tiers), batched; zero server latency.
  The server runs in its own process (``python -m avm serve-llm``) like any
  real LLM server, so the figure is the gateway's, with the server on the
  other core; the best of ``--runs`` runs counts (the machine may be shared;
  every run is listed), and ``batched_cpu_us_per_call`` is this process's
  CPU time per call in that run (the gateway's cost, whatever the
  contention). ``llm_calls_per_s_unbatched``: the same server and tasks with
  batching off (one call per HTTP request over the same 8 connections), one
  call per task. ``llm_calls_per_s_in_process``: the batched run again with
  the server in this process and loop (client and server share one core).
  ``--server in-process`` puts the server of the first two runs in-process too.
* ``cache_hit_us``: the mean time of ``await gw.complete(request)`` for a
  ~1 KB request already in the hot tier (the key is computed every time).

A conversation is what an agent holds: its system prompt as a `Ref` into the
store (shared by all agents, so resolved and JSON-encoded once), its own
message as text. GC time during the batched runs is measured with
``gc.callbacks``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

try:
    from avm.io.gateway import Gateway
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from avm.io.gateway import Gateway
from _measure import GcTimer  # bench/ is on sys.path when a bench runs
from llm_server import start_server_process

from avm.io.client.openai import OpenAIBackend
from avm.io.embedded.server import serve_llm
from avm.io.request import LLMRequest, Message
from avm.memory import ContentStore

MODEL = "avm-embedded"
_FILLER = ("The agent read the previous tool result and decided which file to open next; "
           "the search returned several candidate modules with their line counts. ")
SYSTEM_TEXT = ("You are a careful research agent. " + _FILLER * 2).encode()


def conversation(system: Message, tag: str) -> LLMRequest:
    """A distinct ~1 KB chat request: the shared system prompt (a ref), one user turn (text)."""
    return LLMRequest(MODEL, (system, Message("user", f"Task {tag}: summarise the findings. " + _FILLER * 4)),
                      temperature=0, max_tokens=64)


def system_prompt(store: ContentStore) -> Message:
    """The system message every agent holds: a ref to the prompt in the store."""
    return Message("system", store.put(SYSTEM_TEXT))


@asynccontextmanager
async def server_url(external: str | None) -> AsyncIterator[str]:
    """``external`` (a server in its own process), or an embedded server in this trio loop."""
    if external is not None:
        yield external
        return
    async with serve_llm(port=0) as server:
        yield server.url


async def agents_one_call(agents: int) -> dict[str, Any]:
    store = ContentStore()
    system = system_prompt(store)
    async with serve_llm(port=0, latency_ms=100) as server, Gateway(OpenAIBackend(server.url), store=store) as gw:
        requests = [conversation(system, f"a{i}") for i in range(agents)]
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for request in requests:
                nursery.start_soon(gw.complete, request)
        wall = time.perf_counter() - start
        stats = gw.statistics()
    return {"agents_1000_one_call_wall_s": round(wall, 4), "http_connections_max": stats.http_connections_max,
            "agents_http_requests": stats.http_requests, "agents_batch_size_mean": round(stats.batch_size_mean, 1)}


async def throughput(url: str, tasks: int, calls: int, batch: bool) -> tuple[float, Any, GcTimer, float]:
    """(calls per second, the gateway's statistics, GC time, this process's CPU microseconds per call)."""
    done = 0
    store = ContentStore()
    system = system_prompt(store)
    async with Gateway(OpenAIBackend(url), store=store, batch=batch) as gw:
        await gw.complete(conversation(system, "warm-up"))

        async def agent(i: int) -> None:
            nonlocal done
            complete = gw.complete
            for k in range(calls):
                await complete(conversation(system, f"{'b' if batch else 'u'}{i}.{k}"))
                done += 1

        with GcTimer() as timer:
            start, cpu = time.perf_counter(), time.process_time()
            async with trio.open_nursery() as nursery:
                for i in range(tasks):
                    nursery.start_soon(agent, i)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        stats = gw.statistics()
    assert done == tasks * calls and not stats.errors_by_kind, stats.errors_by_kind
    return done / wall, stats, timer, cpu / done * 1e6


async def cache_hits(n: int) -> float:
    store = ContentStore()
    system = system_prompt(store)
    async with serve_llm(port=0) as server, Gateway(OpenAIBackend(server.url), store=store) as gw:
        request = conversation(system, "hit")
        first = await gw.complete(request)
        assert not first.cached
        complete = gw.complete
        for _ in range(1000):
            await complete(request)
        start = time.perf_counter()
        for _ in range(n):
            await complete(request)
        elapsed = time.perf_counter() - start
        assert gw.statistics().hits_hot == n + 1000
    return elapsed / n * 1e6


async def run(args: argparse.Namespace, external: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results.update(await agents_one_call(1000))
    async with server_url(external) as url:
        runs = [await throughput(url, args.tasks, args.calls, batch=True) for _ in range(args.runs)]
        per_s, stats, timer, cpu_us = max(runs, key=lambda run: run[0])
        results["llm_calls_per_s"] = round(per_s)
        results["llm_calls_per_s_runs"] = [round(run[0]) for run in runs]
        results["batched_cpu_us_per_call"] = round(cpu_us, 1)
        results["batched_http_requests"] = stats.http_requests
        results["batched_batch_size_mean"] = round(stats.batch_size_mean, 1)
        results["batched_http_connections_max"] = stats.http_connections_max
        results["batched_latency_p50_s"] = round(stats.latency_p50_s, 4)
        results["batched_latency_p99_s"] = round(stats.latency_p99_s, 4)
        results["batched_gc_s"] = round(timer.seconds, 3)
        per_s, stats, _, _ = await throughput(url, args.tasks, 1, batch=False)
        results["llm_calls_per_s_unbatched"] = round(per_s)
        results["unbatched_http_connections_max"] = stats.http_connections_max
    async with server_url(None) as url:
        per_s, stats, timer, cpu_us = await throughput(url, args.tasks, args.calls, batch=True)
        results["llm_calls_per_s_in_process"] = round(per_s)
        results["in_process_cpu_us_per_call"] = round(cpu_us, 1)
        results["in_process_gc_s"] = round(timer.seconds, 3)
    results["cache_hit_us"] = round(await cache_hits(args.hits), 2)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--server", choices=("in-process", "subprocess"), default="subprocess",
                        help="where the server of the llm_calls_per_s runs lives (default: its own process)")
    parser.add_argument("--tasks", type=int, default=10_000, help="concurrent tasks of the throughput runs")
    parser.add_argument("--calls", type=int, default=4, help="calls per task in the batched run")
    parser.add_argument("--runs", type=int, default=2, help="batched runs; the best counts (default 2)")
    parser.add_argument("--hits", type=int, default=50_000, help="cache hits timed")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    proc, external = start_server_process() if args.server == "subprocess" else (None, None)
    try:
        results = trio.run(run, args, external)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    results["server"] = args.server
    results["seconds"] = round(time.perf_counter() - started, 1)

    print(f"LLM gateway + embedded server over loopback ({os.cpu_count()} cores; default gateway settings)")
    print(f"  1,000 agents x 1 call, 100 ms server latency, server in-process: "
          f"{results['agents_1000_one_call_wall_s']:.3f} s wall "
          f"(target <= 0.3 s), {results['agents_http_requests']} HTTP requests "
          f"(batches of {results['agents_batch_size_mean']:.0f} on average), "
          f"http_connections_max {results['http_connections_max']} (target <= 32)")
    print(f"  {args.tasks:,} agents x {args.calls} calls, batched, server {args.server}: "
          f"{results['llm_calls_per_s']:,} calls/s (best of {results['llm_calls_per_s_runs']}; "
          f"gateway CPU {results['batched_cpu_us_per_call']:.0f} us/call) "
          f"(target >= 10,000), {results['batched_http_requests']:,} HTTP requests, batches of "
          f"{results['batched_batch_size_mean']:.0f}, {results['batched_http_connections_max']} connections, "
          f"latency p50 {results['batched_latency_p50_s'] * 1e3:.0f} ms p99 "
          f"{results['batched_latency_p99_s'] * 1e3:.0f} ms, GC {results['batched_gc_s']:.2f} s")
    print(f"  {args.tasks:,} agents x 1 call, unbatched, server {args.server}: "
          f"{results['llm_calls_per_s_unbatched']:,} calls/s over {results['unbatched_http_connections_max']} "
          "connections")
    print(f"  {args.tasks:,} agents x {args.calls} calls, batched, server in-process (one core for both): "
          f"{results['llm_calls_per_s_in_process']:,} calls/s, CPU {results['in_process_cpu_us_per_call']:.0f} us/call "
          f"(gateway and server), GC {results['in_process_gc_s']:.2f} s")
    print(f"  hot cache hit through gw.complete(): {results['cache_hit_us']:.1f} us (target <= 20 us)")
    print(f"total bench time {results['seconds']:.1f} s")
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
