"""Chaos run: a fleet killed with SIGKILL again and again, resumed each time, must lose nothing and repeat no
side effect.

    python bench/chaos.py [--agents 1000] [--kills 5] [--json]

``avm serve-llm`` runs in its own process with 20% injected faults (10% answered 500, 5% 429 with
Retry-After, 5% held without an answer until the client's attempt times out). The fleet runs in a child
process: N agents, each K turns of an LLM call, a pure tool call (``lookup``) and a side-effecting one
(``record``, declared ``side_effects=True``, which appends its idempotency key to a file). The child is
killed with SIGKILL at a random moment (seeded), ``--kills`` times; each time a new child resumes the run
from the store (`VM.resume`, which is what ``avm run --resume`` does), and the last one runs it to its end.

Then, in this process, from the store and the file:

- ``agents_total``, ``effects_total`` (journaled effects of every agent);
- ``double_executions``: side-effecting calls made more than once (must be 0);
- ``chain_verify_failures``: journals whose hash chain or values do not verify (must be 0);
- ``replay_mismatches``: agents whose program, replayed against its journal, does not rebuild it (must be 0);
- ``lost_agents``: agents of the run that did not end (must be 0);
- ``resume_s``: how long each resume took to read the journals and restart the agents.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import start_server_process

PROGRAM = """
push 0
store i
loop:
load i
push {turns}
lt
jump_unless out
push "step "
load i
concat
push " of "
concat
load name
concat
llm
pop
load name
load i
tool lookup 2
pop
load name
load i
tool record 2
pop
load i
push 1
add
store i
jump loop
out:
load name
return
"""


# --- the child: one life of the run -----------------------------------------------------------------


def child(args: argparse.Namespace) -> int:
    import trio

    import avm

    record_file = open(args.records, "a", encoding="utf-8")  # noqa: SIM115 - open for the child's whole life

    @avm.tool
    def lookup(name: str, i: int) -> str:
        """Look a fact up (no side effect)."""
        return f"fact {i} about {name}"

    @avm.tool(side_effects=True)
    def record(name: str, i: int) -> int:
        """Record a step (a side effect: one line in a file, flushed to the kernel at once)."""
        record_file.write(f"{avm.idempotency_key()} {name} {i}\n")
        record_file.flush()
        return i

    source = PROGRAM.format(turns=args.turns)

    async def main() -> None:
        store = avm.ContentStore(args.store)
        try:
            async with avm.VM(store, llm=args.url, model="avm-embedded", tools=[lookup, record], journal=True,
                              snapshot_every=8, llm_connections=min(args.agents, 1024),
                              gateway={"attempt_timeout_s": 2.0, "max_retries": 8}) as vm:
                present: set[str] = set()
                if args.resume:
                    started = time.perf_counter()
                    handles = await vm.resume(args.resume)
                    present = {h.name for h in handles if h.name is not None}
                    print(json.dumps({"event": "resumed", "run_id": vm.run_id, "seconds":
                                      time.perf_counter() - started, "agents": len(handles),
                                      "live": vm.live}), flush=True)
                else:
                    print(json.dumps({"event": "started", "run_id": vm.run_id}), flush=True)
                for i in range(args.agents):  # (after a resume: those the run never started)
                    if f"c{i}" not in present:
                        await vm.spawn(source, tools=["lookup", "record"], inputs={"name": f"c{i}"}, name=f"c{i}",
                                       budget=1000)
                    if i % 500 == 499:
                        await trio.lowlevel.checkpoint()
                await vm.join()
                stats = vm.statistics()
                print(json.dumps({"event": "done", "by_state": stats.by_state, "ended": stats.ended}), flush=True)
        finally:
            store.close()

    trio.run(main)
    return 0


# --- the parent -------------------------------------------------------------------------------------


def _child_command(args: argparse.Namespace, url: str, store: str, records: str, resume: str | None) -> list[str]:
    command = [sys.executable, os.path.abspath(__file__), "--child", "--url", url, "--store", store, "--records",
               records, "--agents", str(args.agents), "--turns", str(args.turns)]
    return command + (["--resume", resume] if resume else [])


def _first_line(proc: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"chaos: the fleet's process ended before it started (exit {proc.wait()})")
    if time.monotonic() > deadline:
        raise SystemExit("chaos: the fleet's process took too long to start")
    return json.loads(line)  # type: ignore[no-any-return]


def check(store_dir: str, records: Path, agents: int) -> dict[str, Any]:
    """What the store and the records file say once the run is over."""
    import avm
    from avm.journal import check_journals, journals, read_journal
    from avm.journal.replay import replay_journal
    from avm.lang.opcodes import EFFECT_KINDS

    lines = [line.split() for line in records.read_text().splitlines() if line.strip()]
    by_key = Counter(parts[0] for parts in lines)
    by_step = Counter((parts[1], parts[2]) for parts in lines)
    with avm.ContentStore(store_dir) as store:
        found = journals(store)
        _, _, broken = check_journals(store)
        mismatches = 0
        effects = 0
        ended = 0
        for key, head in found.items():
            report = replay_journal(store, key, head)
            if not report.ok:
                mismatches += 1
                if mismatches <= 3:
                    print(f"  replay: {report.line()}")
            chain = [e for _, e in read_journal(store, head)]
            effects += sum(1 for e in chain if e.kind in EFFECT_KINDS)
            if chain[-1].kind == "end":
                ended += 1
    for problem in broken[:3]:
        print(f"  verify: {problem}")
    return {
        "agents_total": agents, "journals": len(found), "effects_total": effects,
        "double_executions": sum(n - 1 for n in by_key.values() if n > 1) + sum(n - 1 for n in by_step.values()
                                                                                 if n > 1),
        "side_effects_made": len(lines), "chain_verify_failures": len(broken), "replay_mismatches": mismatches,
        "lost_agents": agents - ended,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=3, help="LLM + 2 tool calls per turn (default 3)")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILL/resume cycles (default 5)")
    parser.add_argument("--latency-ms", type=float, default=1000.0, help="the server's latency (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the moments of the kills")
    parser.add_argument("--quick", action="store_true", help="100 agents, 2 kills")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the whole run may take")
    parser.add_argument("--keep", action="store_true", help="keep the store and the records file (else deleted)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--records", help=argparse.SUPPRESS)
    parser.add_argument("--resume", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.agents, args.kills = 100, 2
    rng = random.Random(args.seed)
    began = time.perf_counter()
    deadline = time.monotonic() + args.timeout
    work = tempfile.mkdtemp(prefix="avm-chaos-")
    store_dir, records = os.path.join(work, "store"), Path(work) / "records.txt"
    server, url = start_server_process("--dialect", "openai", "--latency-ms", f"{args.latency_ms:g}",
                                       "--rate-500", "0.10", "--rate-429", "0.05", "--rate-timeout", "0.05",
                                       "--timeout-hold-s", "3", "--retry-after-s", "1", "--seed", str(args.seed))
    print(f"chaos: {args.agents:,} agents x {args.turns} turns (llm, lookup, record*) against avm serve-llm in its "
          f"own process ({args.latency_ms:g} ms, 20% faults), {args.kills} SIGKILLs at random moments, "
          f"{os.cpu_count()} cores")
    run_id: str | None = None
    resume_s: list[float] = []
    kills_at: list[float] = []
    try:
        for cycle in range(args.kills + 1):
            proc = subprocess.Popen(_child_command(args, url, store_dir, str(records), run_id),
                                    stdout=subprocess.PIPE, text=True)
            first = _first_line(proc, deadline)
            run_id = first["run_id"]
            if first["event"] == "resumed":
                resume_s.append(first["seconds"])
                print(f"  resume {cycle}: {first['seconds']:.2f} s to read {first['agents']:,} journals and restart "
                      f"{first['live']:,} agents")
            if cycle < args.kills:
                wait = rng.uniform(0.5, 3.0)
                kills_at.append(round(wait, 2))
                time.sleep(wait)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                continue
            assert proc.stdout is not None
            remaining = max(1.0, deadline - time.monotonic())
            out, _ = proc.communicate(timeout=remaining)
            done = json.loads(out.strip().splitlines()[-1])
            print(f"  the last life ran the run to its end: {done['ended']}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    figures = check(store_dir, records, args.agents)
    figures.update({"kills": args.kills, "kill_after_s": kills_at, "resume_s": [round(s, 3) for s in resume_s],
                    "resume_s_max": round(max(resume_s), 3) if resume_s else 0.0,
                    "wall_s": round(time.perf_counter() - began, 1)})
    print(f"  agents {figures['agents_total']:,}, journals {figures['journals']:,}, effects "
          f"{figures['effects_total']:,}; side-effecting calls made {figures['side_effects_made']:,} of "
          f"{args.agents * args.turns:,} (the others were interrupted by a kill after their intent was committed: "
          f"at most once means never again)")
    targets = {"double_executions": 0, "chain_verify_failures": 0, "replay_mismatches": 0, "lost_agents": 0}
    print("targets:")
    ok = True
    for key, want in targets.items():
        met = figures[key] == want
        ok &= met
        print(f"  {key} == {want}: {'met' if met else 'MISSED'} ({figures[key]})")
    if args.keep:
        print(f"the store and the records file are in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"total bench time {figures['wall_s']} s")
    figures["ok"] = ok
    if args.json:
        print(json.dumps(figures))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
