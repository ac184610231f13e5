"""Throughput of the embedded LLM server (avm.io.embedded.server) from one httpx client.

Run ``python bench/llm_server.py`` for readable lines, ``--json`` to also print
one JSON object as the last line. By default the server runs in its own
process (``python -m avm serve-llm --port 0``) so that the figures are the
server's, with the client on the other core; ``--in-process`` runs both in
one trio loop (how the VM uses it: client and server share one core).

Scenarios, all with zero latency and distinct requests (~1 KB conversations):

* chat_c1 / chat_c8: POST /v1/chat/completions from 1 or 8 concurrent tasks
  (one keep-alive connection each);
* batch64_c1: POST /v1/chat/completions/batch with 64 conversations a batch (vLLM's format).

For a server in its own process, the server's CPU time per request is read
from /proc (Linux only; omitted elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import trio

try:
    from avm.io.embedded.server import serve_llm
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from avm.io.embedded.server import serve_llm

_FILLER = ("The agent read the previous tool result and decided which file to open next; "
           "the search returned several candidate modules with their line counts. ")


def chat_request(i: int) -> dict[str, Any]:
    """A distinct ~1 KB chat request."""
    return {"model": "avm-embedded", "temperature": 0, "max_tokens": 64,
            "messages": [{"role": "system", "content": "You are a careful research agent. " + _FILLER * 2},
                         {"role": "user", "content": f"Task {i}: summarise the findings. " + _FILLER * 4}]}


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def _drive(url: str, concurrency: int, seconds: float, batch: int) -> tuple[int, float]:
    """Send requests for `seconds`; return (chat requests answered, wall seconds)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done = 0
    counter = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        # warm up: open the connections
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(client.get, "/models")
        deadline = trio.current_time() + seconds
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal done, counter
            while trio.current_time() < deadline:
                counter += 1
                if batch:  # vLLM's batch format: shared parameters, one conversation per item
                    items = [chat_request(counter * batch + k) for k in range(batch)]
                    body: Any = {**{k: v for k, v in items[0].items() if k != "messages"},
                                 "messages": [item["messages"] for item in items]}
                    response = await client.post("/chat/completions/batch", json=body)
                    response.raise_for_status()
                    done += len(response.json()["choices"])
                else:
                    response = await client.post("/chat/completions", json=chat_request(counter))
                    response.raise_for_status()
                    response.json()
                    done += 1

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return done, time.perf_counter() - start


SCENARIOS = (("chat_c1", 1, 0), ("chat_c8", 8, 0), ("batch64_c1", 1, 64))


async def _run_all(url: str, seconds: float, pid: int | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, concurrency, batch in SCENARIOS:
        cpu0 = _cpu_seconds(pid) if pid else None
        done, wall = await _drive(url, concurrency, seconds, batch)
        cpu1 = _cpu_seconds(pid) if pid else None
        results[f"{name}_req_per_s"] = round(done / wall, 1)
        if batch:
            results[f"{name}_batches_per_s"] = round(done / batch / wall, 1)
        if cpu0 is not None and cpu1 is not None and done:
            results[f"{name}_server_cpu_us_per_req"] = round((cpu1 - cpu0) / done * 1e6, 1)
    return results


def start_server_process(*extra_args: str) -> tuple[subprocess.Popen[str], str]:
    """``python -m avm serve-llm`` on a free port, and its base URL (bench/io.py and bench/fleet.py use it
    too); ``extra_args`` are more serve-llm flags (``"--latency-ms", "1000"``)."""
    proc = subprocess.Popen([sys.executable, "-m", "avm", "serve-llm", "--port", "0", *extra_args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("OPENAI_BASE_URL="):
            return proc, line.split("=", 1)[1].strip()
    proc.kill()
    raise SystemExit("avm serve-llm did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each scenario (default 2)")
    parser.add_argument("--in-process", action="store_true", help="run the server in the client's trio loop")
    args = parser.parse_args(argv)

    if args.in_process:
        async def in_process() -> dict[str, Any]:
            async with serve_llm(port=0) as server:
                return await _run_all(server.url, args.seconds, None)
        results = trio.run(in_process)
    else:
        proc, url = start_server_process()
        try:
            results = trio.run(_run_all, url, args.seconds, proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    results["server"] = "in-process" if args.in_process else "subprocess"

    print(f"embedded LLM server ({results['server']}), zero latency, one httpx.AsyncClient, ~1 KB requests")
    for name, _concurrency, batch in SCENARIOS:
        line = f"  {name:<11} {results[f'{name}_req_per_s']:>9,.0f} chat requests/s"
        if batch:
            line += f"  ({results[f'{name}_batches_per_s']:,.0f} batches/s of {batch})"
        cpu = results.get(f"{name}_server_cpu_us_per_req")
        if cpu is not None:
            line += f"  server CPU {cpu:,.0f} us/request"
        print(line)
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
