"""The dashboard's frame laid out for the terminal it has: every line within the width, a live frame within
the height, the essentials in the first line, lower-priority blocks left out (and said so) when they do not fit."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

import avm
from avm.app.dashboard import Dashboard, Figures, Snapshot, figures, render, take_snapshot
from avm.runtime import VM
from tests.test_dashboard import gw_stats, store_stats, vm_stats

TITLE = "AVM: a research fleet of a thousand agents that each read, summarize and cross-check sources"
BLOCKS = {"agents": "agents", "throughput": "throughput", "LLM gateway": "LLM gateway", "memory": "memory",
          "health": "health", "top agents": "top agents by energy", "faults": "latest faults"}  # name: title
BLOCK_TITLES = tuple(BLOCKS.values())


def busy() -> tuple[Snapshot, Figures]:
    """A large run in the middle: every state, a gateway and a store, alerts, top agents, long fault messages."""
    states = {"ready": 1200, "running": 8, "waiting_llm": 61_000, "waiting_tool": 900, "waiting_message": 4000,
              "sleeping": 300, "hibernated": 12_000, "done": 18_000, "failed": 900, "budget_exceeded": 700,
              "stalled": 90, "cancelled": 2}
    ended = {s: states[s] for s in ("done", "failed", "budget_exceeded", "stalled", "cancelled")}
    prev = Snapshot(3600.0, vm_stats(agents=90_000, completions=15_000, energy_used=900_000.0,
                                     effects={"llm": 400_000, "tool": 90_000},
                                     ended={"done": 14_000, "failed": 600, "budget_exceeded": 400},
                                     tool_calls=90_000, tool_errors=1000, tool_timeouts=100),
                    gw_stats(requests=400_000, http_requests=50_000), store_stats(), 900 << 20)
    now = Snapshot(3605.0, vm_stats(agents=100_002, live=79_408, by_state=states, completions=sum(ended.values()),
                                    ended=ended, energy_used=1_234_567.8, energy_budget=10_000_000.0,
                                    effects={"llm": 460_000, "tool": 99_000, "sleep": 5000}, llm_errors=3000,
                                    tool_calls=99_000, tool_errors=4000, tool_timeouts=1000, faults=1234,
                                    recent_faults=tuple((70_000 + i, f"researcher-{i}", 40 + i,
                                                         "ToolError: " + "x" * 200)
                                                        for i in range(8)),
                                    top_agents=tuple((60_000 + i, f"researcher-{60_000 + i}", "waiting_llm", 999.5 - i)
                                                     for i in range(5))),
                   gw_stats(requests=460_000, hits_hot=20_000, http_requests=56_000, batches=5000, batch_size_mean=9.6,
                            retries=900, latency_p50_s=0.0231, latency_p99_s=1.734, in_flight=1024, queued=40_000),
                   store_stats(), 1534 << 20)
    return now, figures(prev, now)


def frame_lines(snapshot: Snapshot, f: Figures, width: int, height: int, **options) -> list[str]:
    console = Console(width=width, height=height, record=True, file=io.StringIO())
    console.print(render(snapshot, f, title=TITLE, cost_fraction=0.0042, **options))
    return console.export_text().splitlines()


def assert_essentials(line: str, f: Figures) -> None:
    """Elapsed time, agents total and live, LLM calls/s, energy and RSS, all in this one line."""
    assert re.search(r"\b\d+(\.\d)? s\b|\b\d+m\d\ds\b|\b\d+h\d\dm\b", line), line
    assert re.search(r"agents [\d,.]+k? live [\d,.]+k?", line), line
    assert re.search(r"LLM [\d,.]+k?/s", line), line
    assert re.search(r"energy [\d,.]+[kMG]?", line), line
    assert re.search(r"RSS [\d,.]+ [KMG]?B", line), line


SIZES = [(80, 24), (80, 40), (100, 30), (120, 40), (160, 50), (250, 60), (60, 20), (40, 10)]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_a_busy_live_frame_fits_the_terminal(width, height):
    snapshot, f = busy()
    lines = frame_lines(snapshot, f, width, height)
    assert max(len(line) for line in lines) <= width
    assert len(lines) <= height
    if width >= 80:
        assert_essentials(lines[0], f)
    text = "\n".join(lines)
    if width >= 80:
        assert "health" in text and "tool errors" in text  # the health signals come before the rest


def test_at_80x24_lower_priority_blocks_are_left_out_and_said_so():
    snapshot, f = busy()
    lines = frame_lines(snapshot, f, 80, 24)
    text = "\n".join(lines)
    shown = {name for name, title in BLOCKS.items() if re.search(rf"^{title}\b|   {title}\b", text, re.MULTILINE)}
    assert {"agents", "throughput", "health"} <= shown  # the first in priority
    assert "memory" not in shown  # the last (the RSS is in the title line)
    more = [line for line in lines if line.startswith("+")]
    assert len(more) == 1 and more[0] == f"+{len(BLOCKS) - len(shown)} more blocks (" + ", ".join(
        name for name in BLOCKS if name not in shown) + "): enlarge the terminal"
    # the rate window, the dashboard's own cost and the alerts are there too, on the second line
    assert "last 5.0 s" in lines[1] and "dashboard 0.4%" in lines[1] and "alerts: 1 critical, 3 warn" in lines[1]
    assert "tool errors" in text and "critical" in text  # health: at least the signals at warn or critical


def test_at_a_large_size_everything_shows():
    snapshot, f = busy()
    lines = frame_lines(snapshot, f, 250, 60)
    text = "\n".join(lines)
    assert all(title in text for title in BLOCK_TITLES)
    assert "more block" not in text
    assert TITLE in lines[0]  # the whole title, with the essentials after it
    assert_essentials(lines[0], f)
    assert "#70007 researcher-7" in text and "#70003 researcher-3" in text  # the five latest faults


def test_the_final_frame_shows_every_block_within_the_width():
    """The last frame stays in the scrollback (rich draws it whole, however tall): nothing is left out."""
    snapshot, f = busy()
    lines = frame_lines(snapshot, f, 80, 24, final=True)
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= 80
    assert all(title in text for title in BLOCK_TITLES) and "more block" not in text
    assert "whole run" in text


def test_a_long_title_gives_way_to_the_essentials():
    snapshot, f = busy()
    first = frame_lines(snapshot, f, 80, 24)[0]
    assert len(first) <= 80 and TITLE not in first
    assert_essentials(first, f)
    assert "AVM: a research" in "\n".join(frame_lines(snapshot, f, 80, 24)[:2])  # cut, on the second line


async def test_frames_of_a_real_run_fit_80x24():
    @avm.tool
    def lookup(x: str) -> str:
        return x

    async with VM(tools=[lookup]) as vm:
        handles = [await vm.spawn('push "hi"\nllm\npush "a"\ntool lookup 1\nreturn\n', name=f"w{i}", tools=["lookup"])
                   for i in range(6)]
        handles.append(await vm.spawn("push 1\npush 0\nmod\nreturn\n", name="faulty"))
        for h in handles:
            try:
                await h.result()
            except avm.AgentError:
                pass
        snapshot = take_snapshot(vm, time.monotonic() - 3.0, top=5)
    f = figures(None, snapshot)
    for width, height in SIZES:
        lines = frame_lines(snapshot, f, width, height)
        assert max(len(line) for line in lines) <= width and len(lines) <= height, (width, height)
        if width >= 80:
            assert_essentials(lines[0], f)
            assert re.search(r"agents 7 live 0\b", lines[0])
    wide = "\n".join(frame_lines(snapshot, f, 250, 60))
    assert all(title in wide for title in BLOCK_TITLES) and "more block" not in wide


async def test_live_frames_at_80x24_are_never_cut_by_rich():
    """rich's Live cuts a frame taller than the screen to its height and a line of "..." (and the terminal
    scrolls on every refresh): a live frame fitted to the screen never is."""
    console = Console(record=True, width=80, height=24, file=io.StringIO(), force_terminal=True)
    async with VM() as vm:
        async with Dashboard(vm, console=console, mode="live") as board:
            handles = [await vm.spawn('push 0.6\nsleep\npush "hi"\nllm\nreturn\n', name=f"s{i}") for i in range(20)]
            handles.append(await vm.spawn("push 1\npush 0\nmod\nreturn\n", name="faulty"))
            for h in handles:
                try:
                    await h.result()
                except avm.AgentError:
                    pass
    text = console.export_text()  # every frame, one after the other (the cursor moves between them left out)
    assert board.frames >= 3 and re.search(r"sleeping +20", text)  # frames while they slept
    assert "..." not in text  # (a frame cut short by the dashboard itself says "+N more blocks", and "…")
