"""The dashboard: figures from statistics records, the rendered frame, live refresh pace, progress lines."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
import trio
from rich.console import Console

import avm
from avm.app.dashboard import (
    MAX_REFRESH_PER_SECOND,
    THRESHOLDS,
    Dashboard,
    Figures,
    Snapshot,
    figures,
    health_level,
    plural,
    progress_line,
    read_rss_bytes,
    render,
    start_reporting,
    take_snapshot,
)
from avm.io.gateway_settings import GatewayStatistics
from avm.memory.stats import StoreStatistics, TierStatistics
from avm.runtime import VM, AgentError, VMStatistics

TALKER = 'push "hi"\nllm\nreturn\n'
FAULTY = "push 1\npush 0\nmod\nreturn\n"  # faults on line 3
SPENDER = "loop:\njump loop\n"  # runs until its budget is gone


# --- hand-built records -------------------------------------------------------------------------


def vm_stats(**values) -> VMStatistics:
    base = dict(agents=0, live=0, by_state={}, transitions=0, spawns=0, completions=0, restarts=0, hibernations=0,
                wakeups=0, preemptions=0, energy_used=0.0, effects={}, messages=0, llm_errors=0, prompt_tokens=0,
                completion_tokens=0, recent_faults=())
    base.update(values)
    return VMStatistics(**base)


def gw_stats(**values) -> GatewayStatistics:
    base = dict(requests=0, hits_hot=0, hits_store=0, misses=0, uncacheable=0, coalesced=0, sent=0,
                http_requests=0, batches=0, batch_size_mean=0.0, batch_size_max=0, streamed=0, retries=0,
                errors_by_kind={}, latency_p50_s=0.0, latency_p99_s=0.0, in_flight=0, queued=0,
                http_connections_opened=0, http_connections_max=0, prompt_tokens=0, completion_tokens=0,
                cache_errors=0)
    base.update(values)
    return GatewayStatistics(**base)


def store_stats(**values) -> StoreStatistics:
    base = dict(hot=TierStatistics("hot", 10, 1000, 1000, 5, 1), warm=TierStatistics("warm", 4, 100, 400, 1, 0),
                cold=TierStatistics("cold", 0, 0, 0, 0, 0, enabled=False), puts=30, dedup_hits=16,
                logical_bytes=3000, unique_objects=14, unique_bytes=1400, physical_bytes=1100, dedup_ratio=3000 / 1400,
                compression_ratio=4.0, promotions=0, demotions=4, pinned_objects=0, dictionaries=0, pending_writes=0,
                gc_runs=0, gc_removed=0)
    base.update(values)
    return StoreStatistics(**base)


def test_figures_rates_and_health_over_the_window():
    prev = Snapshot(2.0, vm_stats(agents=100, completions=10, energy_used=50.0, effects={"llm": 40, "tool": 10},
                                  ended={"done": 10}, tool_repeats=1, repeated_effects=2, prompt_tokens=100,
                                  completion_tokens=50),
                    gw_stats(requests=40, hits_hot=4, http_requests=10, retries=1), store_stats(), 1 << 20)
    now = Snapshot(4.0, vm_stats(agents=300, live=150, by_state={"waiting_llm": 140, "running": 10, "done": 120},
                                 completions=150, energy_used=250.0, energy_budget=1000.0,
                                 effects={"llm": 240, "tool": 110, "sleep": 50},
                                 ended={"done": 120, "budget_exceeded": 14, "stalled": 7, "failed": 9},
                                 tool_repeats=31, repeated_effects=42, llm_errors=20, prompt_tokens=1100,
                                 completion_tokens=450, faults=9,
                                 recent_faults=((7, "w7", 3, "ZeroDivision: modulo by zero"),),
                                 top_agents=((5, "big", "running", 9.5),)),
                   gw_stats(requests=240, hits_hot=44, hits_store=10, http_requests=30, retries=11, batch_size_mean=8.0,
                            latency_p50_s=0.012, latency_p99_s=0.2, in_flight=5, queued=7),
                   store_stats(), 3 << 20)
    f = figures(prev, now)
    assert f.window_s == 2.0 and f.time_s == 4.0
    assert f.spawns_per_s == 100.0  # 200 agents in 2 s
    assert f.completions_per_s == 70.0
    assert f.llm_requests_per_s == 100.0
    assert f.effects_per_s == (400 - 50) / 2
    assert f.tokens_per_s == (1550 - 150) / 2
    assert f.http_requests_per_s == 10.0
    assert f.cache_hit_rate == pytest.approx(50 / 200)
    assert f.energy_used == 250.0 and f.energy_left == 750.0 and f.energy_per_s == 100.0
    # health: over the window's deltas
    assert f.tool_churn == pytest.approx(30 / 100)
    assert f.repeated_effect_rate == pytest.approx(40 / 350)
    assert f.retry_density == pytest.approx(10 / 20)
    assert f.budget_exhaustion_rate == pytest.approx(14 / 140)
    assert f.stall_rate == pytest.approx(7 / 140)
    assert f.failure_rate == pytest.approx(9 / 140)
    assert f.llm_error_rate == pytest.approx(20 / 200)
    assert f.alerts == {"tool_churn": "warn", "repeated_effect_rate": "warn", "retry_density": "critical",
                        "budget_exhaustion_rate": "warn", "stall_rate": "warn", "llm_error_rate": "warn"}
    # counts of now
    assert (f.agents, f.live, f.by_state["waiting_llm"], f.in_flight, f.queued) == (300, 150, 140, 5, 7)
    assert (f.latency_p50_s, f.latency_p99_s, f.batch_size_mean) == (0.012, 0.2, 8.0)
    assert f.tiers == {"hot": {"objects": 10, "bytes": 1000, "raw_bytes": 1000},
                       "warm": {"objects": 4, "bytes": 100, "raw_bytes": 400}}  # cold is disabled
    assert f.compression_ratio == 4.0 and f.dedup_ratio == pytest.approx(3000 / 1400)
    assert f.rss_bytes == 3 << 20
    assert f.health() == {name: getattr(f, name) for name in THRESHOLDS}
    data = json.loads(json.dumps(f.to_json()))
    assert data["top_agents"] == [{"id": 5, "name": "big", "state": "running", "energy": 9.5}]
    assert data["recent_faults"] == [{"agent": 7, "name": "w7", "line": 3, "message": "ZeroDivision: modulo by zero"}]
    assert data["ended"]["stalled"] == 7 and data["alerts"]["retry_density"] == "critical"
    assert all(key == key.lower() and " " not in key for key in data)


def test_figures_with_nothing_to_divide_by():
    empty = Snapshot(0.0, vm_stats())
    for f in (figures(None, empty), figures(empty, empty)):
        assert f.window_s == 0.0
        for name in ("spawns_per_s", "completions_per_s", "llm_requests_per_s", "http_requests_per_s",
                     "energy_per_s", "cache_hit_rate", *THRESHOLDS):
            assert getattr(f, name) == 0.0, name
        assert f.alerts == {} and f.energy_left == 0.0
        assert not f.has_gateway and not f.has_store and f.tiers == {}
        assert json.loads(json.dumps(f.to_json()))["dedup_ratio"] == 1.0
    # prev None: rates since time 0
    f = figures(None, Snapshot(4.0, vm_stats(agents=8, completions=4, ended={"failed": 4})))
    assert f.spawns_per_s == 2.0 and f.failure_rate == 1.0 and f.alerts == {"failure_rate": "critical"}


def test_render_shows_health_levels_and_fits_a_narrow_console():
    now = Snapshot(3.0, vm_stats(agents=10, live=2, by_state={"running": 2, "done": 4, "stalled": 4},
                                 completions=8, ended={"done": 4, "stalled": 4}, effects={"tool": 10}, tool_repeats=9,
                                 recent_faults=tuple((i, None, 10 + i, "x" * 300) for i in range(9)), faults=9))
    f = figures(None, now)
    console = Console(record=True, width=60, height=60, file=io.StringIO())  # (the height: see test_dashboard_layout)
    console.print(render(now, f))
    text = console.export_text()
    assert all(len(line) <= 60 for line in text.splitlines())
    assert "tool churn" in text and "90.0%" in text and "critical" in text and "stalls" in text
    assert "no gateway" in text
    assert "#8" in text and "#4" in text and "#3" not in text  # the five latest faults, newest first
    assert text.index("#8") < text.index("#4")
    assert "latest faults (9 in all)" in text


def test_progress_line_is_one_plain_line():
    now = Snapshot(12.0, vm_stats(agents=10, live=3, by_state={"waiting_llm": 3, "done": 7}, completions=7,
                                  ended={"done": 7}, energy_used=5.0, energy_budget=20.0),
                   gw_stats(requests=10, http_requests=2, batch_size_mean=5.0, latency_p50_s=0.01), store_stats(),
                   1 << 20)
    line = progress_line(figures(None, now))
    assert "\n" not in line
    for part in ("agents 10", "live 3", "waiting_llm 3", "done 7", "batch 5.0", "p50 10ms", "energy 5.0 used 15.0 left",
                 "rss 1.0 MB"):
        assert part in line, part


def test_rss_is_read():
    assert read_rss_bytes() > 1 << 20


# --- a real VM ----------------------------------------------------------------------------------


async def run_three_agents(vm: VM) -> None:
    talker = await vm.spawn(TALKER, name="talker", budget=50)
    faulty = await vm.spawn(FAULTY, name="faulty", budget=50)
    spender = await vm.spawn(SPENDER, name="spender", budget=2)
    assert await talker.result()
    for h in (faulty, spender):
        with pytest.raises(AgentError, match="ended"):
            await h.result()


async def test_the_final_frame_of_a_real_run():
    console = Console(record=True, width=150, file=io.StringIO())
    async with VM() as vm:
        async with Dashboard(vm, console=console, mode="live") as board:
            await run_three_agents(vm)
    text = console.export_text()
    # agents by state, with totals
    for state in ("done", "failed", "budget_exceeded"):
        assert re.search(rf"\b{state} +1\b", text), state
    assert re.search(r"total +3\b", text)
    assert "whole run" in text and "agents 3" in text
    # the LLM gateway: the one request went over HTTP
    assert "LLM requests" in text and "latency p50" in text and "HTTP requests" in text
    # memory: tiers, ratios, RSS
    assert "hot" in text and "dedup" in text and "compression" in text and "process RSS" in text
    # health: one of three agents ran out of budget, one failed
    assert re.search(r"budget exhaustion +33\.3% +critical", text)
    assert re.search(r"failures +33\.3% +critical", text)
    # top agents by energy, and the fault with its agent and line
    assert "#1 talker" in text and "#3 spender" in text
    assert re.search(r"#2 faulty +3 +ZeroDivision: modulo by zero", text)
    f = board.summary
    assert isinstance(f, Figures)
    assert f.by_state == {"done": 1, "failed": 1, "budget_exceeded": 1}
    assert f.ended == {"done": 1, "failed": 1, "budget_exceeded": 1}
    assert f.llm_requests == 1 and f.http_requests == 1 and f.latency_p50_s > 0
    assert f.energy_budget == 102.0 and 0 < f.energy_used < 102.0
    assert f.energy_left == pytest.approx(102.0 - f.energy_used)
    assert re.search(rf"energy used +{f.energy_used:.1f}", text)
    assert re.search(rf"energy left +{f.energy_left:.1f}", text)
    assert f.recent_faults == ((2, "faulty", 3, "ZeroDivision: modulo by zero"),)
    assert [a[1] for a in f.top_agents][:2] == ["talker", "spender"]
    assert f.alerts == {"budget_exhaustion_rate": "critical", "failure_rate": "critical"}
    assert f.rss_bytes > 0 and f.has_gateway and f.has_store
    summary = json.loads(json.dumps(board.summary_json()))
    assert summary["by_state"] == {"done": 1, "failed": 1, "budget_exceeded": 1}
    assert summary["dashboard"]["mode"] == "live" and summary["dashboard"]["frames"] >= 2
    assert 0 < board.cost_seconds < board.elapsed_s and 0 < board.cost_cpu_seconds
    assert board.error is None


async def test_live_frames_while_agents_run():
    console = Console(record=True, width=150, file=io.StringIO(), force_terminal=True)
    async with VM() as vm:
        async with Dashboard(vm, console=console, mode="live") as board:
            handles = [await vm.spawn('push 0.6\nsleep\npush "hi"\nllm\nreturn\n', name=f"s{i}") for i in range(20)]
            for h in handles:
                await h.result()
    text = console.export_text()
    assert re.search(r"sleeping +20", text)  # a frame while they slept
    assert re.search(r"done +20", text) and "whole run" in text  # the final frame
    assert "last " in text  # live frames are over the sliding window
    assert board.frames >= 3 and board.summary.llm_requests == 20
    assert board.cost_fraction < 0.5


async def test_a_snapshot_of_a_real_vm_reads_every_record():
    async with VM() as vm:
        await run_three_agents(vm)
        snap = take_snapshot(vm, time.monotonic() - 1.0, top=2)
        assert snap.time >= 1.0
        assert snap.vm.completions == 3 and len(snap.vm.top_agents) == 2
        assert snap.gateway.requests == 1 and snap.store.unique_objects > 0 and snap.rss_bytes > 0
        assert take_snapshot(vm, time.monotonic(), top=0, store=False).store is None


# --- the refresh task, on a stand-in VM and trio's autojump clock ------------------------------------


class StandInVM:
    """Anything with statistics() will do: numbers that grow on each call, no gateway."""

    def __init__(self, *, slow_s: float = 0.0, fail_on: int = 0, store: object = None):
        self.calls = 0
        self.ranked = 0  # calls that asked for the top agents
        self.slow_s = slow_s
        self.fail_on = fail_on
        self.gateway = None
        self.store = store

    def statistics(self, *, top: int = 0) -> VMStatistics:
        self.calls += 1
        self.ranked += top > 0
        if self.calls == self.fail_on:
            raise RuntimeError("statistics broke")
        if self.slow_s:
            time.sleep(self.slow_s)  # a costly frame, in real time
        n = self.calls
        return vm_stats(agents=10 * n, live=5 * n, by_state={"running": 5 * n, "done": 5 * n}, completions=5 * n,
                        ended={"done": 5 * n}, energy_used=float(n), energy_budget=1000.0,
                        top_agents=((1, "a", "running", float(n)),) if top else ())


class TimedFile(io.StringIO):
    """Notes the trio time of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def write(self, s: str) -> int:
        self.times.append(trio.current_time())
        return super().write(s)


async def test_live_refreshes_at_most_four_times_a_second(autojump_clock):
    out = TimedFile()
    console = Console(file=out, force_terminal=True, width=120)
    start = trio.current_time()
    vm = StandInVM()
    async with Dashboard(vm, console=console, mode="live", refresh_per_second=100) as board:
        assert board.refresh_per_second == MAX_REFRESH_PER_SECOND
        await trio.sleep(10)
    frames = sorted(set(out.times))
    assert frames[0] == start and frames[-1] == start + 10
    gaps = [b - a for a, b in zip(frames[:-2], frames[1:-1], strict=True)]  # the final frame: when the block ends
    assert gaps and min(gaps) >= 1 / MAX_REFRESH_PER_SECOND - 1e-9
    assert len(frames) <= board.frames <= 10 * MAX_REFRESH_PER_SECOND + 2  # + the first and the final
    assert board.frames >= 10  # a cheap frame: the pace is kept near the cap
    assert "\x1b[" in out.getvalue() and "AVM" in out.getvalue()  # a real terminal rendering
    assert vm.ranked <= 10 + 1 + 1  # agents ranked once a second, and for the final frame
    assert "#1 a" in out.getvalue()  # frames in between show the last ranking


async def test_an_expensive_frame_slows_the_refresh(autojump_clock):
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    vm = StandInVM(slow_s=0.01)
    async with Dashboard(vm, console=console, mode="live", max_cost_fraction=0.02) as board:
        await trio.sleep(20)
    # 10 ms a frame, 2% at most: a frame every 0.5 s or more, not every 0.25 s
    assert board.frames <= 20 / 0.5 + 3
    assert board.cost_seconds >= 0.01 * board.frames


async def test_lines_mode_prints_a_plain_line_every_few_seconds(autojump_clock):
    console = Console(record=True, width=60, file=io.StringIO())
    async with Dashboard(StandInVM(), console=console, mode="lines", line_every_s=2.0) as board:
        await trio.sleep(7)
    lines = console.export_text().splitlines()
    assert len(lines) == 4 and board.frames == 4  # at 2, 4, 6 s, and the final one
    assert all(line.startswith("[") and "agents" in line and "energy" in line for line in lines)
    assert "[    2.0s]" in lines[0] and lines[-1].endswith("| final")
    assert "agents 50 live 25" in lines[-1]  # the final snapshot (the 5th statistics() call)
    assert "spawn 5.7/s" in lines[-1]  # (50 - 10) agents in 7 s: the whole block
    assert board.summary is not None and board.summary.top_agents  # the summary ranks agents


async def test_auto_mode_and_none_mode(autojump_clock):
    assert Dashboard(StandInVM(), console=Console(file=io.StringIO())).mode == "lines"
    assert Dashboard(StandInVM(), console=Console(file=io.StringIO(), force_terminal=True)).mode == "live"
    with pytest.raises(ValueError):
        Dashboard(StandInVM(), mode="fancy")
    console = Console(record=True, file=io.StringIO())
    async with start_reporting(StandInVM(), "none", console) as board:
        await trio.sleep(30)
    assert console.export_text() == "" and board.frames == 0
    summary = board.summary_json()
    assert summary["agents"] == 20 and summary["spawns_per_s"] == pytest.approx(10 / 30)
    assert summary["dashboard"]["mode"] == "none"
    json.dumps(summary)


async def test_a_broken_display_stops_itself_and_not_the_run(autojump_clock):
    console = Console(record=True, file=io.StringIO(), width=100)
    async with Dashboard(StandInVM(fail_on=3), console=console, mode="lines", line_every_s=1.0) as board:
        await trio.sleep(5)
    assert isinstance(board.error, RuntimeError)
    text = console.export_text()
    assert "dashboard stopped: RuntimeError: statistics broke" in text
    assert board.summary is not None  # the final summary is still taken


async def test_an_error_in_the_block_passes_through_and_the_display_is_closed(autojump_clock):
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    board = Dashboard(StandInVM(), console=console, mode="live")
    with pytest.raises(KeyError, match="boom"):
        async with board:
            await trio.sleep(1)
            raise KeyError("boom")
    assert board.summary is not None and board.summary.agents > 0
    assert not getattr(console, "_live_stack", None)  # the Live display was stopped (rich keeps a stack)
    with trio.move_on_after(1):  # cancelled from outside: it ends quietly too
        async with Dashboard(StandInVM(), console=console, mode="live") as board:
            await trio.sleep(10)
    assert board.summary is not None and not getattr(console, "_live_stack", None)


# --- tool failures as health signals -----------------------------------------------------------------


def test_tool_error_and_timeout_rates_over_the_window():
    prev = Snapshot(1.0, vm_stats(tool_calls=100, tool_errors=90, tool_timeouts=50))
    now = Snapshot(3.0, vm_stats(tool_calls=200, tool_errors=110, tool_timeouts=56))
    f = figures(prev, now)
    assert f.tool_error_rate == pytest.approx(20 / 100) and f.tool_timeout_rate == pytest.approx(6 / 100)
    assert f.alerts == {"tool_error_rate": "warn", "tool_timeout_rate": "warn"}  # the window's, not the run's
    assert THRESHOLDS["tool_timeout_rate"][0] < THRESHOLDS["tool_error_rate"][0]  # a timeout costs its whole wait
    data = f.to_json()
    assert data["tool_error_rate"] == pytest.approx(0.2) and data["tool_timeout_rate"] == pytest.approx(0.06)
    assert "tool_error_rate=warn" in progress_line(f) and "tool_timeout_rate=warn" in progress_line(f)


async def test_a_run_whose_tools_fail_shows_it_in_health_the_line_and_the_summary():
    @avm.tool
    def boom(x: str) -> str:
        raise RuntimeError("kaput")

    @avm.tool(timeout=0.05)
    async def hang(x: str) -> str:
        await trio.sleep(100)
        return x

    console = Console(record=True, width=400, file=io.StringIO())
    async with VM(tools=[boom, hang]) as vm:
        async with Dashboard(vm, console=console, mode="lines", line_every_s=60) as board:
            handles = [await vm.spawn('push "a"\ntool boom 1\nreturn\n', tools=["boom"]) for _ in range(9)]
            handles.append(await vm.spawn('push "a"\ntool hang 1\nreturn\n', tools=["hang"], budget=50))
            for h in handles:
                assert "error" in await h.result()  # the agents go on: the errors are values, none failed
    f = board.summary
    assert f.ended == {"done": 10} and f.failure_rate == 0.0
    assert f.tool_error_rate == 1.0 and f.tool_timeout_rate == pytest.approx(0.1)
    assert health_level("tool_error_rate", f.tool_error_rate) == "critical"
    assert health_level("tool_timeout_rate", f.tool_timeout_rate) == "warn"
    assert f.alerts == {"tool_error_rate": "critical", "tool_timeout_rate": "warn"}
    line = console.export_text().splitlines()[-1]
    assert line.endswith("| final") and "ALERT tool_error_rate=critical tool_timeout_rate=warn" in line
    summary = json.loads(json.dumps(board.summary_json()))
    assert summary["tool_error_rate"] == 1.0 and summary["tool_timeout_rate"] == pytest.approx(0.1)
    frame = Console(record=True, width=150, height=60, file=io.StringIO())
    frame.print(render(board.last, f, final=True))
    text = frame.export_text()
    assert re.search(r"tool errors +100\.0% +critical", text)
    assert re.search(r"tool timeouts +10\.0% +warn", text)
    assert re.search(r"agent failures +0\.0% +ok", text)  # agents' failures, not the tools'
    assert "tool errors critical" in text.splitlines()[0]  # the title line's alerts


# --- wording ---------------------------------------------------------------------------------------


def test_no_batch_size_before_a_batch_and_no_latency_before_a_reply():
    unbatched = Snapshot(2.0, vm_stats(agents=2, live=2, by_state={"waiting_llm": 2}),
                         gw_stats(requests=2, http_requests=2, in_flight=2), None, 1 << 20)
    f = figures(None, unbatched)
    assert not f.batched and not f.has_latency
    line = progress_line(f)
    assert "batch single" in line and "batch 0.0" not in line
    assert "p50" not in line and "p99" not in line and "0ms" not in line
    console = Console(record=True, width=150, height=60, file=io.StringIO())
    console.print(render(unbatched, f))
    text = console.export_text()
    assert re.search(r"mean batch +single", text) and not re.search(r"mean batch +0\.0", text)
    assert re.search(r"latency p50 +-", text) and re.search(r"latency p99 +-", text) and "0.0 ms" not in text
    replied = Snapshot(2.0, vm_stats(), gw_stats(requests=20, http_requests=2, batches=2, batch_size_mean=10.0,
                                                 latency_p50_s=0.0042, latency_p99_s=0.25))
    f = figures(None, replied)
    assert f.batched and f.has_latency
    line = progress_line(f)
    assert "batch 10.0" in line and "p50 4.2ms p99 250ms" in line  # under 10 ms, a tenth: not "0ms"
    console = Console(record=True, width=150, height=60, file=io.StringIO())
    console.print(render(replied, f))
    text = console.export_text()
    assert re.search(r"mean batch +10\.0", text) and re.search(r"latency p50 +4\.2 ms", text)


def test_counts_take_singular_or_plural():
    assert plural(1, "block") == "1 block" and plural(3, "block") == "3 blocks"
    assert plural(0, "object") == "0 objects" and plural(1000, "request") == "1,000 requests"
    assert plural(2, "more block") == "2 more blocks" and plural(2, "reply", "replies") == "2 replies"
    now = Snapshot(1.0, vm_stats(), None, store_stats(hot=TierStatistics("hot", 1, 10, 10, 0, 0)), 1 << 20)
    console = Console(record=True, width=150, height=60, file=io.StringIO())
    console.print(render(now, figures(None, now)))
    text = console.export_text()
    assert re.search(r"hot +1 object\b", text) and re.search(r"warm +4 objects\b", text)
    assert " obj " not in text
