"""`avm run`: a fleet of agents from a spec (or the built-in demo), watched by the dashboard.

    outcome = trio.run(run_fleet, spec, RunOptions(display="auto"))

`run_fleet` opens the store the spec names (or none: the VM keeps an
in-memory one), checks an LLM endpoint given by URL answers and takes the key
before any agent depends on it, spawns every group, shows the dashboard
(`avm.app.dashboard`) until no agent is alive, and returns a `RunOutcome`: the
final figures as one JSON-able dict and whether the run was interrupted.

Ctrl+C (SIGINT) or SIGTERM stops the run cleanly: the first one stops the
spawning and every agent (as `VM.interrupt`: with a store, ``--resume`` goes
on), the dashboard draws its last frame once they have stopped, the VM
records them and flushes the store, and the outcome says ``interrupted``; the
launcher exits 130 (143). A second one while that happens raises
KeyboardInterrupt: the run ends at once. ``RunOptions.timeout_s`` stops the
run the same way after that long (``timed_out``). The launcher sends agents no
message, so a fleet whose agents all wait for one ends them STALLED
(`avm.kernel.stalls`).

With a store directory, every agent that ends is recorded in it
(``agents/<run id>/<agent id>``, see `VMSettings.record_agents`), every
agent's effects are journaled (``journal/<run id>/<agent id>``, see
`avm.journal`) and the run's summary is bound to ``runs/<run id>``:
`avm inspect DIR` shows them, `avm inspect DIR AGENT` one agent's journal,
`avm verify DIR` checks every object and every journal's hash chain.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import trio
from rich.console import Console

from avm.errors import AvmError, LLMError, StoreError, lone_exception
from avm.memory.ref import Ref
from avm.app.spec import RunSpec, spawn_all, spawn_group

log = logging.getLogger("avm.app.launcher")

__all__ = ["LaunchError", "RunOptions", "RunOutcome", "run_fleet", "summary_lines"]

RESULTS_SHOWN = 20  # a run of at most this many agents (spawned by the host) reports each one's result


class LaunchError(AvmError):
    """The run could not start: the store, the endpoint, the model. One line for the user."""


@dataclass(frozen=True)
class RunOptions:
    display: str = "auto"  # the dashboard: "auto" (live on a terminal, else lines), "live", "lines", "none"
    console: Console | None = None  # where the dashboard draws (default: stderr)
    line_every_s: float = 5.0  # the progress line's period
    handle_sigint: bool = True  # Ctrl+C (and SIGTERM) stops the agents (off when the caller handles it)
    announce: str | None = None  # a first line printed to the console once the endpoint answered
    # Continue a run of the store that was stopped (SIGKILL, Ctrl+C, SIGTERM): True for its newest run, or
    # a run id; the spec's agents that the run never started are spawned then.
    resume: bool | str = False
    timeout_s: float | None = None  # the run stops after this long (its agents stopped as by Ctrl+C)
    results: str | None = None  # a file to write one JSON line per agent to, at the end (see _result)


@dataclass
class RunOutcome:
    summary: dict[str, Any]  # the final figures (the --json object)
    interrupted: bool = False
    run_id: str = ""
    signal: str = ""  # what interrupted it: "SIGINT" or "SIGTERM"
    timed_out: bool = False  # stopped by RunOptions.timeout_s
    extra: dict[str, Any] = field(default_factory=dict)


PROBE_ATTEMPTS = 6  # a busy server (429, 5xx) is asked again, this many times in all
PROBE_WAIT_MAX_S = 30.0  # the longest wait between two attempts (a server's Retry-After is capped here)


async def _probe(spec: RunSpec) -> None:
    """An endpoint given by URL must answer and take the key before any agent depends on it.

    A server that is busy (429, 5xx) is asked again after its ``Retry-After``
    (or 1, 2, 4, ... s), up to `PROBE_ATTEMPTS` times; one that cannot be
    reached or refuses the key is a one-line error at once.
    """
    from avm.io.client.backends import Failure
    from avm.io.client.openai import OpenAIBackend

    assert spec.llm is not None
    if not (spec.model or os.environ.get("OPENAI_MODEL")):
        raise LaunchError(f"{spec.llm}: name the model to use with --model NAME (or OPENAI_MODEL, or model = "
                          "in the spec)")
    try:
        backend = OpenAIBackend(spec.llm, model=spec.model)
    except LLMError as exc:
        raise LaunchError(f"{spec.llm}: {exc}") from None
    try:
        for attempt in range(1, PROBE_ATTEMPTS + 1):
            try:
                await backend.probe()
                return
            except Failure as failure:
                if failure.kind == "auth":
                    raise LaunchError(f"{spec.llm}: {failure.message} (set OPENAI_API_KEY)") from None
                if failure.kind in ("connection", "timeout", "config"):
                    raise LaunchError(f"{spec.llm}: cannot reach the LLM endpoint: {failure.message}") from None
                if failure.kind not in ("rate_limit", "server") or attempt == PROBE_ATTEMPTS:
                    raise LaunchError(f"{spec.llm}: the LLM endpoint answered with an error: "
                                      f"{failure.message}") from None
                wait = failure.retry_after if failure.retry_after is not None else 2.0 ** (attempt - 1)
                log.warning("%s: %s; asking again in %.1f s", spec.llm, failure.message, min(wait, PROBE_WAIT_MAX_S))
                await trio.sleep(min(wait, PROBE_WAIT_MAX_S))
    finally:
        await backend.aclose()


async def run_fleet(spec: RunSpec, options: RunOptions | None = None) -> RunOutcome:
    """Run every agent of ``spec`` to its end (or until Ctrl+C); the outcome."""
    from avm.app.dashboard import Dashboard
    from avm.memory.store import ContentStore
    from avm.runtime import VM, VMError

    options = options or RunOptions()
    if options.results is not None:  # a path that cannot be written is found now, not after the run
        _check_writable(options.results)
    if spec.llm is not None:
        await _probe(spec)
    if options.announce:
        (options.console or Console(stderr=True)).print(options.announce, highlight=False, markup=False)
    store = None
    if options.resume:
        if spec.store is None:
            raise LaunchError("--resume needs the store the run journaled into (--store DIR)")
        if not os.path.isdir(spec.store):
            raise LaunchError(f"{spec.store}: no store to resume a run from (no such directory)")
    if spec.store is not None:
        try:
            store = ContentStore(spec.store)
        except (StoreError, OSError) as exc:
            raise LaunchError(f"{spec.store}: cannot open the store: {exc}") from None
    resume_id = None
    if options.resume:
        try:
            resume_id = _run_to_resume(spec, store, options.resume)
        except BaseException:
            store.close()  # type: ignore[union-attr]
            raise
    interrupted = timed_out = False
    deadline = math.inf if options.timeout_s is None else trio.current_time() + options.timeout_s
    sigint = _Interrupt()
    handles: list[Any] = []
    started = time.perf_counter()
    try:
        try:
            # with a store, every agent's summary and journal go into it (a spec's [vm] settings may say otherwise)
            # the launcher sends no agent a message: a fleet stuck waiting for one ends (avm.kernel.stalls)
            vm = VM(store, **{"record_agents": store is not None, "journal": store is not None, "host_sends": False,
                              **spec.vm_kwargs()})
        except VMError as exc:
            raise LaunchError(f"{spec.source}: {exc}") from None
        dash: Dashboard | None = None
        try:
            async with vm:
                with lone_exception():
                    async with trio.open_nursery() as nursery:
                        if options.handle_sigint:
                            nursery.start_soon(_watch_sigint, vm, sigint)
                        dash = Dashboard(vm, console=options.console, mode=options.display,
                                         line_every_s=options.line_every_s,
                                         title=f"AVM: {spec.description or spec.source}")
                        async with dash:
                            with trio.CancelScope() as sigint.starting:  # (a Ctrl+C stops the spawning too)
                                if resume_id is not None:
                                    handles.extend(await _resume(vm, spec, resume_id))
                                else:
                                    if store is not None:  # what the run is, for a --resume to check it is given again
                                        store.bind(f"{RUN_SPECS}{vm.run_id}", store.put_value(_shape(spec)))
                                    await spawn_all(vm, spec, into=handles)  # (kept as they come: see Ctrl+C)
                            if sigint.seen is not None:
                                vm.interrupt()  # (it came while they were spawned: those spawned since)
                            with trio.move_on_at(deadline) as waited:
                                await vm.join()
                            if waited.cancelled_caught:
                                timed_out = True
                                vm.interrupt()  # stopped, not ended: a --resume goes on
                            # the stopped agents end as their tasks see the stop: the dashboard's last frame
                            await vm.join()  # shows them so
                        nursery.cancel_scope.cancel()
                interrupted = sigint.seen is not None
        except (VMError, ValueError) as exc:  # a setting or an input the VM refuses
            raise LaunchError(f"{spec.source}: {exc}") from None
        assert dash is not None
        summary = dash.summary.to_json() if dash.summary is not None else {}
        stats = vm.statistics()  # after the VM's exit: the counts below include agents cancelled by Ctrl+C
        summary.update({
            "run_id": vm.run_id, "spec": spec.source, "interrupted": interrupted, "timed_out": timed_out,
            "timeout_s": options.timeout_s, "deadlocked": stats.deadlocked, "spawned_by_agents": stats.spawns,
            "wall_s": round(time.perf_counter() - started, 3), "agents": stats.agents, "live": stats.live,
            "ended": dict(stats.ended), "by_state": dict(stats.by_state), "completions": stats.completions,
            "faults": stats.faults, "energy_used": stats.energy_used, "energy_left": stats.energy_left,
            "energy_budget": stats.energy_budget, "effects": dict(stats.effects), "messages": stats.messages,
            "llm_errors": stats.llm_errors, "dashboard_cost_fraction": round(dash.cost_fraction, 5),
            "store": spec.store, "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "tool_calls": stats.tool_calls, "tool_errors": stats.tool_errors, "tool_timeouts": stats.tool_timeouts,
        })
        summary["llm_errors_by_kind"] = dict(stats.llm_errors_by_kind)
        summary["llm_first_errors"] = dict(stats.llm_first_errors)  # kind -> the first such error, in full
        gateway = getattr(vm.gateway, "statistics", None)
        if gateway is not None:
            g = gateway()
            summary["http_connections_max"] = g.http_connections_max
            summary["batches_refused"] = g.batches_refused
            summary["llm_retries"] = g.retries  # failed attempts sent again (a run can succeed through them)
            summary["llm_retries_by_kind"] = dict(g.retries_by_kind)
            summary["llm_first_retries"] = dict(g.first_retries)  # kind -> the first such failure, in full
        summary["results_left_out"] = 0
        if len(handles) <= RESULTS_SHOWN:
            summary["results"] = [_result(h) for h in handles]
        else:  # (say so: --results FILE has them all)
            summary["results_left_out"] = len(handles)
        if options.results is not None:
            _write_results(options.results, handles)
            summary["results_file"] = options.results
        if store is not None:
            ref = store.put_value(_plain(summary))
            store.bind(f"runs/{vm.run_id}", ref)
            await trio.to_thread.run_sync(store.flush)
        return RunOutcome(summary, interrupted, vm.run_id, signal=sigint.seen or "", timed_out=timed_out)
    finally:
        if store is not None:
            store.close()


def _check_writable(path: str) -> None:
    partial = f"{path}.partial"
    try:
        with open(partial, "w", encoding="utf-8"):
            pass
        os.remove(partial)
    except OSError as exc:
        raise LaunchError(f"--results {path}: cannot write: {exc.strerror or exc}") from None


def _write_results(path: str, handles: list[Any]) -> None:
    """One JSON line per agent the run spawned (see `_result`), written whole or not at all."""
    import json

    partial = f"{path}.partial"
    try:
        with open(partial, "w", encoding="utf-8") as out:
            for handle in handles:
                out.write(json.dumps(_plain(_result(handle)), ensure_ascii=False, default=str) + "\n")
        os.replace(partial, path)
    except OSError as exc:
        raise LaunchError(f"--results {path}: cannot write: {exc.strerror or exc}") from None


def _result(handle: Any) -> dict[str, Any]:
    from avm.lang.values import render

    state = handle.state.value
    prompt, completion = handle.tokens
    out = {"id": handle.id, "name": handle.name, "state": state, "energy_used": handle.energy_used,
           "prompt_tokens": prompt, "completion_tokens": completion}
    if state == "done":
        out["value"] = _plain(handle.value)
        out["text"] = render(handle.value)
    else:
        out["error"] = handle.detail
    return out


class _Interrupt:
    __slots__ = ("seen", "starting")

    def __init__(self) -> None:
        self.seen: str | None = None  # the signal's name
        self.starting: trio.CancelScope | None = None  # the agents' spawning, while it goes on


async def _watch_sigint(vm: Any, flag: _Interrupt) -> None:
    """The first SIGINT or SIGTERM (what `timeout`, docker and systemd send) stops the run: the spawning
    ends and every agent is stopped as `VM.interrupt` does (their journals let --resume go on); the run
    then ends as the agents see the stop. A second one raises KeyboardInterrupt: the run ends at once
    (`avm run` exits 130 with one line)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if flag.seen is not None:
                raise KeyboardInterrupt
            flag.seen = signal.Signals(signum).name
            if flag.starting is not None:
                flag.starting.cancel()
            vm.interrupt()


RUN_SPECS = "run-specs/"  # run id -> what the run was started with (see _shape)


def _shape(spec: RunSpec) -> dict[str, Any]:
    """What a resume must be given again: the spec file and its groups' sizes (flags such as --agents
    included, as they change the groups)."""
    return {"source": spec.source, "groups": {g.name: g.count for g in spec.groups}}


def _run_to_resume(spec: RunSpec, store: Any, run: bool | str) -> str:
    """The run of the store a --resume continues (its newest, or ``run``), checked against the spec given."""
    from avm.journal.reader import journals

    runs = sorted({key.split("/", 1)[0] for key in journals(store)})
    if not runs:
        raise LaunchError(f"{spec.store}: no journaled run to resume (a run with --store journals its agents)")
    if run is True:
        run_id = runs[-1]
    else:
        matches = [r for r in runs if r == run] or [r for r in runs if r.startswith(str(run))]
        if len(matches) != 1:
            raise LaunchError(f"--resume {run}: {'ambiguous' if matches else 'no such run'} in {spec.store} "
                              f"(runs: {', '.join(runs[-5:])})")
        run_id = matches[0]
    recorded = store.lookup(f"{RUN_SPECS}{run_id}")
    if recorded is not None:
        was = store.get_value(recorded)
        if was != _shape(spec):
            sizes = ", ".join(f"{name} x{count}" for name, count in was["groups"].items())
            raise LaunchError(f"run {run_id} was started from {was['source']} ({sizes}): resume it with the same "
                              f"spec and flags (avm run SPEC --store {spec.store} --resume)")
    return run_id


async def _resume(vm: Any, spec: RunSpec, run_id: str) -> list[Any]:
    """Continue the run ``run_id``: its agents go on from their journals, and the spec's agents it never
    started are spawned. The spec's agents' handles, in the spec's order."""
    try:
        resumed = await vm.resume(run_id)
    except StoreError as exc:  # a broken journal (JournalError), damaged objects: no guessing, no silent repair
        raise LaunchError(f"{spec.store}: cannot resume run {run_id}: {exc}") from None
    by_name = {h.name: h for h in resumed if h.name is not None}
    handles: list[Any] = []
    for group in spec.groups:
        missing = [i for i in range(group.count) if group.agent_name(i) not in by_name]
        for i, handle in zip(missing, await spawn_group(vm, group, only=missing), strict=True):
            by_name[group.agent_name(i)] = handle
        handles.extend(by_name[group.agent_name(i)] for i in range(group.count))
    return handles


def _plain(value: Any) -> Any:
    """The summary as plain JSON values (floats that are not finite become null, refs their hex)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Ref):
        return f"ref:{value.hex()}"
    return value


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _clip(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _agents(summary: dict[str, Any]) -> str:
    """"1,000 agents", or "1,000 agents (+135 spawned by their programs)": the children counted apart."""
    total, children = summary.get("agents", 0), summary.get("spawned_by_agents") or 0
    if not children:
        return _count(total, "agent")
    return f"{_count(total - children, 'agent')} (+{children:,} spawned by their programs)"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The run's summary as a few lines of text (what `avm run` prints at the end)."""
    ended = summary.get("ended") or {}
    states = ", ".join(f"{n:,} {state}" for state, n in sorted(ended.items(), key=lambda kv: -kv[1])) or "none"
    how = " (interrupted)" if summary.get("interrupted") else ""
    if summary.get("timed_out"):
        how = f" (stopped by its timeout of {summary.get('timeout_s'):g} s)"
    lines = [
        f"run {summary.get('run_id', '')}{how}: {_agents(summary)} in {summary.get('wall_s', 0):.2f} s; "
        f"ended: {states}",
        f"energy {summary.get('energy_used', 0):,.1f} used of {summary.get('energy_budget', 0):,.1f} granted; "
        f"effects: " + (", ".join(f"{k} {v:,}" for k, v in (summary.get("effects") or {}).items() if v) or "none"),
    ]
    if summary.get("llm_requests") is not None:
        requests = summary.get("llm_requests", 0)
        batch = summary.get("batch_size_mean", 0)
        line = f"LLM: {_count(requests, 'request')}, {summary.get('http_requests', 0):,} HTTP"
        line += f" (mean batch {batch:.1f})" if batch else ""
        if requests:
            line += (f", cache hit rate {100 * summary.get('cache_hit_rate', 0):.1f}%, p50 "
                     f"{1000 * summary.get('latency_p50_s', 0):.1f} ms, p99 "
                     f"{1000 * summary.get('latency_p99_s', 0):.1f} ms, tokens "
                     f"{summary.get('prompt_tokens', 0):,} prompt + "
                     f"{summary.get('completion_tokens', 0):,} completion")
        lines.append(line + f", {_count(summary.get('llm_errors', 0), 'error')}")
    if summary.get("unique_objects") is not None:
        lines.append(
            f"memory: {summary.get('unique_objects', 0):,} objects, dedup x{summary.get('dedup_ratio', 1):.1f}, "
            f"compression x{summary.get('compression_ratio', 1):.1f}, RSS "
            f"{summary.get('rss_bytes', 0) / 2**20:.0f} MiB; dashboard cost "
            f"{100 * summary.get('dashboard_cost_fraction', 0):.2f}% of the run")
        if summary.get("wall_s", 0) < 1:  # a fraction of a tiny run is mostly the dashboard's fixed start-up
            lines[-1] = lines[-1].rsplit("; dashboard cost", 1)[0]
    if summary.get("tool_calls"):
        lines.append(f"tools: {_count(summary['tool_calls'], 'call')}, {summary.get('tool_errors', 0):,} failed "
                     f"({100 * summary.get('tool_errors', 0) / summary['tool_calls']:.1f}%), "
                     f"{summary.get('tool_timeouts', 0):,} of them timed out")
    for r in summary.get("results") or []:
        what = f"= {_clip(r['text'])}" if r["state"] == "done" else f"{r['state']}: {_clip(r.get('error') or '')}"
        tokens = f", tokens {r['prompt_tokens']:,}+{r['completion_tokens']:,}" if r.get("prompt_tokens") else ""
        lines.append(f"  {r['name'] or r['id']}: {what}  [energy {r['energy_used']:g}{tokens}]")
    if summary.get("results_left_out"):
        where = (f"all of them are in {summary['results_file']}" if summary.get("results_file")
                 else "--results FILE writes one JSON line per agent")
        lines.append(f"results: not listed for more than {RESULTS_SHOWN} agents ({where})")
    if summary.get("deadlocked"):
        lines.append(f"stalled: {_count(summary['deadlocked'], 'agent')} waited for a message no live agent "
                     f"could send, and ended (a recv with no timeout, every other agent waiting too)")
    faults = summary.get("recent_faults") or []
    for fault in faults[-3:]:
        who = f"agent {fault['agent']}" + (f" ({fault['name']})" if fault.get("name") else "")
        lines.append(f"fault: {who} line {fault['line']}: {fault['message']}")
    if summary.get("store"):
        lines.append(f"store: {summary['store']} (avm inspect {summary['store']})")
    return lines
