"""The live status of a running VM: a rich dashboard, plain progress lines, a JSON summary.

    async with VM() as vm:
        async with Dashboard(vm, console=Console(stderr=True)) as board:   # mode="auto"
            ...spawn agents, wait for them...
        print(json.dumps(board.summary_json()))

Everything shown comes from the frozen records the VM, its gateway and its
store return from ``statistics()`` (plus the process RSS); nothing reads
private state. The pieces, usable on their own:

- `take_snapshot` reads the records once into a `Snapshot`;
- `figures` derives a `Figures` (rates, ratios, health signals) from two
  snapshots; ``Figures.to_json()`` is the ``--json`` summary;
- `render` builds the rich renderable of one frame; `progress_line` the one
  line printed where there is no terminal.

`Dashboard` runs one of three modes: ``"live"`` (a rich ``Live`` refreshed by
a trio task, at most `MAX_REFRESH_PER_SECOND` times a second), ``"lines"``
(a progress line every few seconds) or ``"none"`` (only the final summary);
``"auto"`` picks live on a terminal, lines elsewhere. It times its own work
(snapshot, figures, render, refresh) with ``perf_counter`` in
``cost_seconds``, and when a frame costs more than ``max_cost_fraction`` of
the time between frames it refreshes less often, so the run pays at most
that share.

What a frame costs at 1,000 live agents (bench/dashboard.py): the gateway's
and the store's records are counters read in microseconds, so both are read
every frame; ranking the top agents reads every live agent (about 1 ms), so
it is done at most once a second (``top_every_s``); rendering is
hand-laid fixed-width text rather than rich tables, which measure every cell
on every frame (about 15 ms a frame against 1 to 2 ms).

Live figures are taken over a sliding window (the last ``window_s`` seconds),
so a run that starts to degrade shows it at once; the final frame and the
summary are over the whole time the dashboard ran.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import is_dataclass, replace
from types import TracebackType
from typing import Any

import trio
from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Span, Text

from avm.figures import (
    THRESHOLDS,
    Figures,
    Snapshot,
    figures,
    health_level,
    ratio,
    read_rss_bytes,
    take_snapshot,
)

__all__ = [
    "MAX_REFRESH_PER_SECOND",
    "THRESHOLDS",
    "Dashboard",
    "DashboardFrame",
    "Figures",
    "Snapshot",
    "figures",
    "progress_line",
    "read_rss_bytes",
    "render",
    "start_reporting",
    "take_snapshot",
]

MAX_REFRESH_PER_SECOND = 4.0  # frames a second, at most
MODES = ("auto", "live", "lines", "none")

HEALTH_LABELS = {
    "tool_churn": "tool churn",
    "repeated_effect_rate": "repeated effects",
    "stall_rate": "stalls",
    "retry_density": "retry density",
    "budget_exhaustion_rate": "budget exhaustion",
    "failure_rate": "failures",
    "llm_error_rate": "LLM errors",
}
STATE_ORDER = ("ready", "running", "waiting_llm", "waiting_tool", "waiting_message", "sleeping", "hibernated",
               "done", "failed", "budget_exceeded", "stalled", "cancelled")
_STATE_STYLE = {"done": "green", "failed": "red", "budget_exceeded": "yellow", "stalled": "magenta",
                "cancelled": "dim", "running": "bold cyan", "waiting_llm": "cyan"}
_LEVEL_STYLE = {"ok": "green", "warn": "bold yellow", "critical": "bold red"}


# --- Rendering -------------------------------------------------------------------------------
#
# A frame is laid out by hand as fixed-width text: small blocks (a title and rows of cells) placed
# side by side as the console's width allows, joined into one `Text`. rich's Table measures every
# cell on every frame (about 15 ms for this much at 1,000 agents); this costs a fraction of that.

Cell = str | tuple[str, str]  # text, or (text, style)
_GAP = "   "


def _n(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def _rate(value: float) -> str:
    return f"{value:,.1f}/s"


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024:
            return f"{n:,.0f} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"


def _who(ident: int, name: str | None) -> str:
    return f"#{ident} {name}" if name else f"#{ident}"


class _Block:
    """A titled block of rows; ``right[i]`` right-aligns column i; widths are the widest cells."""

    __slots__ = ("title", "header", "rows", "right", "widths", "width")

    def __init__(self, title: str, rows: list[tuple[Cell, ...]], *, header: tuple[str, ...] | None = None,
                 right: tuple[bool, ...] = (False, True)):
        self.title = title
        self.header = header
        self.rows = rows
        self.right = right
        columns = len(right)
        widths = [0] * columns
        for row in ([header] if header else []) + rows:
            for i, cell in enumerate(row):
                size = len(cell if type(cell) is str else cell[0])
                if size > widths[i]:
                    widths[i] = size
        self.widths = widths
        self.width = max(sum(widths) + 2 * (columns - 1), len(title))

    @property
    def height(self) -> int:
        return 1 + (self.header is not None) + len(self.rows)

    def line(self, out: _Canvas, index: int) -> None:
        """Add line ``index`` of the block to ``out``, padded to the block's width."""
        if index == 0:
            out.add(self.title.ljust(self.width), "bold")
            return
        index -= 1
        if self.header is not None:
            if index == 0:
                self._cells(out, self.header, "dim underline")
                return
            index -= 1
        if index < len(self.rows):
            self._cells(out, self.rows[index], "")
        else:
            out.add(" " * self.width)

    def _cells(self, out: _Canvas, row: tuple[Cell, ...], default_style: str) -> None:
        used = 0
        last = len(self.widths) - 1
        for i, width in enumerate(self.widths):
            cell = row[i] if i < len(row) else ""
            value, style = (cell, default_style) if type(cell) is str else cell
            out.add(value.rjust(width) if self.right[i] else value.ljust(width), style)
            used += width
            if i < last:
                out.add("  ")
                used += 2
        if used < self.width:
            out.add(" " * (self.width - used))


class _Canvas:
    """Plain text and its style spans, built up in order (cheaper than many `Text.append` calls)."""

    __slots__ = ("parts", "spans", "pos")

    def __init__(self, start: Text):
        self.parts = [start.plain]
        self.spans = list(start.spans)
        self.pos = len(start.plain)

    def add(self, part: str, style: str = "") -> None:
        end = self.pos + len(part)
        if style:
            self.spans.append(Span(self.pos, end, style))
        self.parts.append(part)
        self.pos = end

    def text(self) -> Text:
        return Text("".join(self.parts), spans=self.spans, no_wrap=True, overflow="ellipsis", end="")


class DashboardFrame:
    """One frame as a rich renderable: a header, then bands of blocks that fit the console's width."""

    def __init__(self, header: Text, blocks: list[_Block], wide: list[_Block]):
        self.header = header
        self.blocks = blocks  # placed side by side as the width allows
        self.wide = wide  # each on its own band, below

    def __rich_console__(self, console: Console, options: Any) -> Any:
        width = options.max_width
        out = _Canvas(self.header)
        bands: list[list[_Block]] = []
        band: list[_Block] = []
        used = 0
        for block in self.blocks:
            need = block.width + (len(_GAP) if band else 0)
            if band and used + need > width:
                bands.append(band)
                band, used, need = [], 0, block.width
            band.append(block)
            used += need
        if band:
            bands.append(band)
        bands.extend([block] for block in self.wide)
        heights = [max(block.height for block in band) for band in bands]
        screen = options.height or options.size.height
        spaced = 1 + sum(heights) + len(bands) - 1 <= screen  # a blank line between bands if it all fits
        for number, (band, height) in enumerate(zip(bands, heights, strict=True)):
            if number and spaced:
                out.add("\n")
            for index in range(height):
                out.add("\n")
                for i, block in enumerate(band):
                    if i:
                        out.add(_GAP)
                    block.line(out, index)
        yield out.text()


def _states_block(f: Figures) -> _Block:
    now = f.by_state
    rows: list[tuple[Cell, ...]] = [
        ((state, _STATE_STYLE.get(state, "")), _n(now.get(state, 0)))
        for state in STATE_ORDER if now.get(state) or state in ("done", "failed")]
    rows.extend((state, _n(count)) for state, count in now.items() if state not in STATE_ORDER)
    rows.append(("total", _n(f.agents)))
    return _Block("agents", rows)


def _throughput_block(f: Figures) -> _Block:
    return _Block("throughput", [
        ("spawns", _rate(f.spawns_per_s)),
        ("completions", _rate(f.completions_per_s)),
        ("effects", _rate(f.effects_per_s)),
        ("LLM requests", _rate(f.llm_requests_per_s)),
        ("tokens", _rate(f.tokens_per_s)),
        ("energy", _rate(f.energy_per_s)),
        ("energy used", _n(f.energy_used)),
        ("energy left", _n(f.energy_left)),
    ])


def _llm_block(f: Figures) -> _Block:
    if not f.has_gateway:
        return _Block("LLM gateway", [("no gateway", "")])
    return _Block("LLM gateway", [
        ("requests", _n(f.llm_requests)),
        ("HTTP requests", f"{_n(f.http_requests)} ({_rate(f.http_requests_per_s)})"),
        ("mean batch", f"{f.batch_size_mean:,.1f}"),
        ("latency p50", _ms(f.latency_p50_s)),
        ("latency p99", _ms(f.latency_p99_s)),
        ("cache hits", _pct(f.cache_hit_rate)),
        ("in flight", _n(f.in_flight)),
        ("queued", _n(f.queued)),
    ])


def _memory_block(f: Figures) -> _Block:
    rows: list[tuple[Cell, ...]] = [
        (name, f"{_n(tier['objects'])} obj", _bytes(tier["bytes"])) for name, tier in f.tiers.items()]
    if f.has_store:
        rows.append(("unique", f"{_n(f.unique_objects)} obj", _bytes(f.physical_bytes)))
        rows.append(("dedup", "", f"{f.dedup_ratio:.2f}x"))
        rows.append(("compression", "", f"{f.compression_ratio:.2f}x"))
    rows.append(("process RSS", "", _bytes(f.rss_bytes)))
    return _Block("memory", rows, right=(False, True, True))


def _health_block(f: Figures) -> _Block:
    rows: list[tuple[Cell, ...]] = []
    for name, value in f.health().items():
        style = _LEVEL_STYLE[level := health_level(name, value)]
        rows.append((HEALTH_LABELS[name], (_pct(value), style), (level, style)))
    return _Block("health", rows, header=("signal", "value", "level"), right=(False, True, False))


def _top_block(f: Figures) -> _Block:
    rows: list[tuple[Cell, ...]] = [
        (_who(ident, name), (state, _STATE_STYLE.get(state, "")), _n(float(energy)))
        for ident, name, state, energy in f.top_agents] or [("-", "", "")]
    return _Block("top agents by energy", rows, header=("agent", "state", "energy"), right=(False, False, True))


def _faults_block(f: Figures, keep: int = 5) -> _Block:
    rows: list[tuple[Cell, ...]] = [
        (_who(ident, name), str(line), (message, "red"))
        for ident, name, line, message in f.recent_faults[-keep:][::-1]] or [("-", "", "none")]
    return _Block(f"latest faults ({_n(f.faults)} in all)", rows, header=("agent", "line", "message"),
                  right=(False, True, False))


def render(snapshot: Snapshot, figs: Figures, *, title: str = "AVM", cost_fraction: float | None = None,
           final: bool = False) -> RenderableType:
    """One frame: a header line, then agents, throughput, LLM, memory, health, top agents and faults."""
    f = figs
    header = Text.assemble(
        (title, "bold"), f"  {f.time_s:,.1f} s  ",
        ("whole run" if final else f"last {f.window_s:,.1f} s", "dim"),
        f"  agents {_n(f.agents)}  live {_n(f.live)}  RSS {_bytes(snapshot.rss_bytes)}")
    if cost_fraction is not None:
        header.append(f"  dashboard {_pct(cost_fraction)}", style="dim")
    if f.alerts:
        worst = "critical" if "critical" in f.alerts.values() else "warn"
        header.append("  " + ", ".join(f"{HEALTH_LABELS[n]} {lvl}" for n, lvl in f.alerts.items()),
                      style=_LEVEL_STYLE[worst])
    blocks = [_states_block(f), _throughput_block(f), _llm_block(f), _memory_block(f), _health_block(f),
              _top_block(f)]
    return DashboardFrame(header, blocks, [_faults_block(f)])


def progress_line(f: Figures) -> str:
    """The plain one-line summary printed every few seconds where there is no terminal."""
    states = " ".join(f"{s} {f.by_state[s]:,}" for s in STATE_ORDER if f.by_state.get(s))
    parts = [
        f"[{f.time_s:7.1f}s] agents {f.agents:,} live {f.live:,}" + (f" ({states})" if states else ""),
        f"spawn {f.spawns_per_s:,.1f}/s done {f.completions_per_s:,.1f}/s",
        f"llm {f.llm_requests_per_s:,.1f}/s",
    ]
    if f.has_gateway:
        parts.append(f"http {f.http_requests_per_s:,.1f}/s batch {f.batch_size_mean:.1f} "
                     f"p50 {f.latency_p50_s * 1e3:.0f}ms p99 {f.latency_p99_s * 1e3:.0f}ms "
                     f"hit {f.cache_hit_rate * 100:.0f}%")
    parts.append(f"energy {f.energy_used:,.1f} used {f.energy_left:,.1f} left")
    if f.has_store:
        parts.append(f"dedup {f.dedup_ratio:.2f}x zstd {f.compression_ratio:.2f}x")
    parts.append(f"rss {_bytes(f.rss_bytes)}")
    parts.append(f"faults {f.faults:,}")
    if f.alerts:
        parts.append("ALERT " + " ".join(f"{name}={level}" for name, level in f.alerts.items()))
    return " | ".join(parts)


# --- The dashboard task ----------------------------------------------------------------------


class Dashboard:
    """Shows a VM's status while it runs (see the module docstring); an async context manager.

    - ``mode``: "live" (rich Live), "lines" (a `progress_line` every ``line_every_s``), "none"
      (nothing until the summary), or "auto" (live on a terminal console, else lines).
    - ``refresh_per_second``: frames a second in live mode, capped at `MAX_REFRESH_PER_SECOND`.
    - ``top``: agents ranked by energy, at most every ``top_every_s`` (the ranking reads every live
      agent; frames in between show the last ranking).
    - ``window_s``: the live figures are over about this many last seconds.
    - ``max_cost_fraction``: a frame that cost c seconds is followed by a pause of at least
      c / max_cost_fraction, so the dashboard takes at most that share of the run.

    After the block: ``summary`` (the final `Figures`, over the whole block), ``cost_seconds``
    (wall time spent in snapshots, figures, rendering and refreshing; ``cost_cpu_seconds``: its
    CPU time, which the machine's other load does not inflate), ``frames`` (live refreshes or
    lines printed, the final one included), ``elapsed_s`` and ``cost_fraction``.
    """

    def __init__(self, vm: Any, *, console: Console | None = None, mode: str = "auto",
                 refresh_per_second: float = MAX_REFRESH_PER_SECOND, line_every_s: float = 5.0, top: int = 5,
                 top_every_s: float = 1.0, window_s: float = 5.0, max_cost_fraction: float = 0.01,
                 title: str = "AVM"):
        if mode not in MODES:
            raise ValueError(f"mode is one of {', '.join(MODES)}, not {mode!r}")
        if not refresh_per_second > 0 or not line_every_s > 0 or not max_cost_fraction > 0:
            raise ValueError("refresh_per_second, line_every_s and max_cost_fraction must be > 0")
        self.vm = vm
        self.console = console if console is not None else Console(stderr=True)
        if mode == "auto":
            mode = "live" if self.console.is_terminal and not self.console.is_dumb_terminal else "lines"
        self.mode = mode
        self.refresh_per_second = min(float(refresh_per_second), MAX_REFRESH_PER_SECOND)
        self.line_every_s = float(line_every_s)
        self.top = top
        self.top_every_s = top_every_s
        self.window_s = window_s
        self.max_cost_fraction = max_cost_fraction
        self.title = title
        self.cost_seconds = 0.0  # wall time inside the dashboard's own work (perf_counter)
        self.cost_cpu_seconds = 0.0  # CPU time of the same (thread_time; without the machine's other load)
        self.frames = 0
        self.summary: Figures | None = None
        self.last: Snapshot | None = None
        self.error: BaseException | None = None
        self._started: float | None = None  # trio.current_time() when the block was entered
        self._ended: float | None = None
        self._first: Snapshot | None = None
        self._top_at = -math.inf  # when the agents were last ranked
        self._top_agents: tuple[Any, ...] = ()
        self._window: deque[Snapshot] = deque()
        self._live: Live | None = None
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def elapsed_s(self) -> float:
        """Seconds since the block was entered (until it was left)."""
        if self._started is None:
            return 0.0
        return (self._ended if self._ended is not None else trio.current_time()) - self._started

    @property
    def cost_fraction(self) -> float:
        """``cost_seconds / elapsed_s``."""
        return ratio(self.cost_seconds, self.elapsed_s)

    # --- lifetime ------------------------------------------------------------------------

    @contextmanager
    def _metered(self) -> Iterator[None]:
        """Count the time inside as the dashboard's own cost (wall, and this thread's CPU)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.cost_seconds += time.perf_counter() - t0
            self.cost_cpu_seconds += time.thread_time() - c0

    async def __aenter__(self) -> Dashboard:
        with self._metered():
            self._started = trio.current_time()
            self._first = self._snapshot(0)
            self._window.append(self._first)
            self.last = self._first
            if self.mode == "live":
                first = render(self._first, figures(None, self._first), title=self.title)
                self._live = Live(first, console=self.console, auto_refresh=False)
                self._live.start(refresh=True)
                self.frames += 1
        if self.mode != "none":
            stack = AsyncExitStack()
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            self._stack = stack
            self._nursery.start_soon(self._loop)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        try:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            with self._metered():
                self._finish()
        finally:
            if self._live is not None:
                live, self._live = self._live, None
                with self._metered():
                    live.stop()  # the last refresh: the final frame
            if self._ended is not None:
                self._ended = trio.current_time()  # the block's time includes its final frame
            if self._stack is not None:
                stack, self._stack, self._nursery = self._stack, None, None
                await stack.aclose()  # the refresh task, cancelled above
        return False

    def _finish(self) -> None:
        """The final snapshot and summary (over the whole block), and the final frame or line."""
        try:
            now = self._snapshot(self.top)
        except Exception as err:  # the run's own outcome matters more than the dashboard's
            self.error = self.error or err
            now = self.last
            if now is None:
                return
        self._ended = trio.current_time()
        self.last = now
        self.summary = figures(self._first, now)
        if self._live is not None and self.error is None:
            self._live.update(render(now, self.summary, title=self.title, final=True,
                                     cost_fraction=self.cost_fraction))
            self.frames += 1  # drawn by live.stop()
        elif self.mode == "lines":
            self.console.print(progress_line(self.summary) + " | final", markup=False, highlight=False,
                               soft_wrap=True)
            self.frames += 1

    # --- the refresh task ------------------------------------------------------------------

    async def _loop(self) -> None:
        period = 1.0 / self.refresh_per_second if self.mode == "live" else self.line_every_s  # the shortest pause
        pause = period
        mean_cost = 0.0
        while True:
            await trio.sleep(pause)
            before = self.cost_seconds
            try:
                with self._metered():
                    self._tick()
            except Exception as err:  # a broken display must not end the run
                self.error = err
                if self._live is not None:
                    self._live.stop()
                    self._live = None
                self.console.print(f"dashboard stopped: {type(err).__name__}: {err}", markup=False,
                                   highlight=False)
                return
            cost = self.cost_seconds - before
            mean_cost = cost if not mean_cost else 0.8 * mean_cost + 0.2 * cost
            pause = max(period, mean_cost / self.max_cost_fraction)

    def _tick(self) -> None:
        live = self._live is not None
        rank = live and trio.current_time() - self._top_at >= self.top_every_s
        now = self._snapshot(self.top if rank else 0)
        if rank:
            self._top_at = trio.current_time()
            self._top_agents = now.vm.top_agents
        elif live and self._top_agents and is_dataclass(now.vm):
            # between rankings (each reads every live agent), show the last one
            now = replace(now, vm=replace(now.vm, top_agents=self._top_agents))
        window = self._window
        window.append(now)
        while len(window) > 2 and now.time - window[1].time >= self.window_s:
            window.popleft()
        self.last = now
        figs = figures(window[0], now)
        if live:
            assert self._live is not None
            self._live.update(render(now, figs, title=self.title, cost_fraction=self.cost_fraction), refresh=True)
        else:
            self.console.print(progress_line(figs), markup=False, highlight=False, soft_wrap=True)
        self.frames += 1

    def _snapshot(self, top: int) -> Snapshot:
        assert self._started is not None
        return take_snapshot(self.vm, self._started, top, clock=trio.current_time)

    def summary_json(self) -> dict[str, Any]:
        """The final figures (``Figures.to_json()``) and the dashboard's own cost, for ``--json``."""
        if self.summary is None:
            raise RuntimeError("the summary exists once the dashboard's block has ended")
        out = self.summary.to_json()
        out["dashboard"] = {"mode": self.mode, "frames": self.frames, "cost_s": self.cost_seconds,
                            "cost_cpu_s": self.cost_cpu_seconds, "cost_fraction": self.cost_fraction}
        return out


def start_reporting(vm: Any, mode: str = "auto", console: Console | None = None, **options: Any) -> Dashboard:
    """The reporter for a run: ``async with start_reporting(vm, mode, console) as board: ...``.

    ``mode`` "auto" is a live dashboard on a terminal and progress lines elsewhere; a launcher
    passes "lines" for ``--no-dashboard`` and "none" for ``--json`` (then prints
    ``board.summary_json()`` at the end). ``options`` are `Dashboard`'s.
    """
    return Dashboard(vm, console=console, mode=mode, **options)

