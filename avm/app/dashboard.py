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
- `render` builds the rich renderable of one frame, laid out when it is drawn
  for the console's width and height (see "Rendering" below);
  `progress_line` the one line printed where there is no terminal.

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

from avm.app.figures import (
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
    "failure_rate": "agent failures",  # agents ended FAILED (a tool's error is a value, not a failure)
    "llm_error_rate": "LLM errors",
    "tool_error_rate": "tool errors",
    "tool_timeout_rate": "tool timeouts",
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
#
# The frame is fitted to the console when rich draws it (`DashboardFrame.__rich_console__` is given
# the width and height), so that a live frame never runs past the screen: rich would cut it with a
# bare "...", and a frame taller than the screen scrolls on every refresh. The title lines keep the
# essentials (elapsed time, agents, LLM calls/s, energy, RSS) in the first line: their numbers are
# shortened (12.3k) when the width asks for it, and the run's title moves to the second line, cut if
# need be, with the rate window, the dashboard's cost and the alerts. The blocks are taken in order
# of priority while they fit the height (health shrunk to its alerts first, made whole again if there
# is room), and one line says which were left out. The final frame keeps to the width only: rich
# draws it whole however tall, and it stays in the scrollback. All of this is per block, never per
# agent (a handful of trial layouts of seven blocks: microseconds).

Cell = str | tuple[str, str]  # text, or (text, style)
Item = tuple[str, str]  # a piece of the title lines: text, style
_GAP = "   "  # between blocks side by side
_SEP = "  "  # between the pieces of a title line


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and the noun that goes with it: "1 block", "3 blocks", "1,000 objects" (``nouns``: a plural
    that is not ``noun`` + "s")."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def _n(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def _short(value: float) -> str:
    """A number in 7 characters at most, for the title line on a narrow console: 9,999.5, 12.3k, 123k, 1.23M."""
    if abs(value) < 10_000:
        return _n(value)
    for unit in ("k", "M", "G"):
        value /= 1000
        if abs(value) < 999.5:
            return f"{value:.3g}{unit}"
    return f"{value:,.0f}G"


def _duration(seconds: float) -> str:
    """Elapsed time in 7 characters or so: 12.3 s, 20m05s, 3h07m."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _rate(value: float) -> str:
    return f"{value:,.1f}/s"


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def _ms_brief(seconds: float) -> str:
    """Milliseconds for the progress line: whole ones, but a tenth under 10 ms (a fast local server's
    0.4 ms is not "0ms")."""
    ms = seconds * 1e3
    return f"{ms:.1f}ms" if ms < 9.95 else f"{ms:,.0f}ms"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024:
            return f"{n:,.0f} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"


def _who(ident: int, name: str | None) -> str:
    return f"#{ident} {name}" if name else f"#{ident}"


def _size(items: list[Item]) -> int:
    """The width of ``items`` on one title line."""
    return sum(len(text) for text, _ in items) + len(_SEP) * max(0, len(items) - 1)


class _Block:
    """A titled block of rows; ``right[i]`` right-aligns column i; widths are the widest cells.

    ``name`` is what the line of blocks left out calls it; an ``alone`` block takes a band of its own
    (the faults, whose messages make it wide); ``compact`` is a smaller stand-in for when the whole
    block does not fit.
    """

    __slots__ = ("name", "title", "header", "rows", "right", "widths", "width", "alone", "compact")

    def __init__(self, title: str, rows: list[tuple[Cell, ...]], *, header: tuple[str, ...] | None = None,
                 right: tuple[bool, ...] = (False, True), name: str | None = None, alone: bool = False,
                 compact: _Block | None = None):
        self.name = name or title
        self.title = title
        self.header = header
        self.rows = rows
        self.right = right
        self.alone = alone
        self.compact = compact
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

    def fitted(self, width: int) -> _Block:
        """The block, or when it is wider than ``width`` a copy with its last column's cells (the faults'
        messages) and its title cut to fit, each with a "…"."""
        excess = self.width - width
        last = len(self.widths) - 1
        room = self.widths[last] - excess
        if excess <= 0 or room < 2:
            return self  # (no narrower than the other columns: rich cuts the lines at the edge)

        def cut(value: str) -> str:
            return value if len(value) <= room else value[:room - 1] + "…"

        def cut_cell(cell: Cell) -> Cell:
            return cut(cell) if type(cell) is str else (cut(cell[0]), cell[1])

        rows = [row[:last] + (cut_cell(row[last]),) if len(row) > last else row for row in self.rows]
        header = self.header[:last] + (cut(self.header[last]),) if self.header else self.header
        title = self.title if len(self.title) <= width else self.title[:width - 1] + "…"
        return _Block(title, rows, header=header, right=self.right, name=self.name, alone=self.alone,
                      compact=self.compact.fitted(width) if self.compact is not None else None)

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
            value, style = (cell, default_style) if isinstance(cell, str) else cell
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

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.spans: list[Span] = []
        self.pos = 0

    def add(self, part: str, style: str = "") -> None:
        end = self.pos + len(part)
        if style:
            self.spans.append(Span(self.pos, end, style))
        self.parts.append(part)
        self.pos = end

    def text(self) -> Text:
        # no_wrap and ellipsis: a line wider than the console (a block wider than it, alone on its
        # band) is cut at the edge with "…", never wrapped onto the next line
        return Text("".join(self.parts), spans=self.spans, no_wrap=True, overflow="ellipsis", end="")


class _Header:
    """The pieces of the title lines, fitted to a width by `lines` (see the notes above)."""

    __slots__ = ("title", "essentials", "short", "status", "alerts", "alerts_short")

    def __init__(self, title: Item, essentials: list[Item], short: list[Item], status: list[Item],
                 alerts: Item | None, alerts_short: Item | None):
        self.title = title
        self.essentials = essentials  # always in the first line (unless the console is narrower than they are)
        self.short = short  # the same with shortened numbers
        self.status = status
        self.alerts = alerts
        self.alerts_short = alerts_short  # only how many, for when the names do not fit

    def lines(self, width: int) -> list[list[Item]]:
        essentials = self.essentials if _size(self.essentials) <= width else self.short
        rest = list(self.status)
        if self.alerts is not None:
            rest.append(self.alerts)
        if _size([self.title, *essentials]) <= width:
            first = [self.title, *essentials]
        else:
            first = essentials
            rest.insert(0, self.title)
        if _size(first + rest) <= width:
            return [first + rest]
        lines = _flow(first, width)  # one line, unless the console is narrower than the shortened essentials
        if rest[0] is self.title and _size(rest) > width:
            # the title gives way first (the alerts' names say more), cut to what is left, or left out
            room = width - _size(rest[1:]) - len(_SEP)
            if room < 12 and self.alerts_short is not None:
                rest[-1] = self.alerts_short
                room = width - _size(rest[1:]) - len(_SEP)
            text, style = self.title
            rest[:1] = [(text if len(text) <= room else text[:room - 1] + "…", style)] if room >= 4 else []
        if self.alerts_short is not None and _size(rest) > width:
            rest[-1] = self.alerts_short
        for item in self.status[::-1]:  # then the dashboard's cost, then the rate window
            if _size(rest) > width and len(rest) > 1:
                rest.remove(item)
        lines.append(rest)  # (still too wide only on a tiny console: rich cuts it there)
        return lines


def _flow(items: list[Item], width: int) -> list[list[Item]]:
    """``items`` on as many lines of ``width`` as they take, none split."""
    lines: list[list[Item]] = [[]]
    for item in items:
        if lines[-1] and _size([*lines[-1], item]) > width:
            lines.append([])
        lines[-1].append(item)
    return lines


def _bands(blocks: list[_Block], width: int) -> list[list[_Block]]:
    """``blocks`` in order, side by side as long as they fit ``width``; an ``alone`` one on its own band."""
    bands: list[list[_Block]] = []
    band: list[_Block] = []
    used = 0
    for block in blocks:
        need = block.width + (len(_GAP) if band else 0)
        if band and (block.alone or band[-1].alone or used + need > width):
            bands.append(band)
            band, used, need = [], 0, block.width
        band.append(block)
        used += need
    if band:
        bands.append(band)
    return bands


def _height(bands: list[list[_Block]]) -> int:
    return sum(max(block.height for block in band) for band in bands)


class DashboardFrame:
    """One frame as a rich renderable: the title lines, then bands of blocks, fitted to the console when drawn."""

    def __init__(self, header: _Header, blocks: list[tuple[float, _Block, float]], *, final: bool = False):
        self.header = header
        # (priority, block, priority of its whole form when it has a compact one), in the order shown;
        # the lowest number is kept first
        self.blocks = blocks
        self.final = final  # the last frame: as tall as it takes

    def fit(self, width: int, height: float) -> tuple[list[list[Item]], list[_Block], list[str]]:
        """The title lines, the blocks shown (in order) and the names of those left out, for a console of
        ``width`` x ``height`` (``math.inf``: no limit)."""
        head = self.header.lines(width)
        if len(head) >= height:
            return head[:int(height)], [], []
        room = height - len(head)
        blocks = [block.fitted(width) for _, block, _ in self.blocks]
        if _height(_bands(blocks, width)) <= room:
            return head, blocks, []
        room -= 1  # the line that says what was left out
        chosen: dict[int, _Block] = {}  # index in the order shown -> the block or its compact stand-in

        def fits() -> bool:
            return _height(_bands([chosen[i] for i in sorted(chosen)], width)) <= room

        # Steps in order of priority: a block comes in (compact if it has a compact form) if it fits; the
        # whole of a compact one comes at its second priority, if it then fits (see `render`).
        steps = sorted([(priority, i, False) for i, (priority, _, _) in enumerate(self.blocks)]
                       + [(grow, i, True) for i, (_, block, grow) in enumerate(self.blocks) if block.compact])
        for _, i, grow in steps:
            whole = blocks[i]
            if grow and i not in chosen:
                continue
            before = chosen.get(i)
            chosen[i] = whole if grow or whole.compact is None else whole.compact
            if not fits():
                if before is None:
                    del chosen[i]
                else:
                    chosen[i] = before
        return head, [chosen[i] for i in sorted(chosen)], [blocks[i].name for i in range(len(blocks))
                                                            if i not in chosen]

    def __rich_console__(self, console: Console, options: Any) -> Any:
        width = options.max_width
        height = math.inf if self.final else (options.height or options.size.height)
        head, shown, left_out = self.fit(width, height)
        out = _Canvas()
        for number, line in enumerate(head):
            if number:
                out.add("\n")
            for i, (text, style) in enumerate(line):
                if i:
                    out.add(_SEP)
                out.add(text, style)
        bands = _bands(shown, width)
        heights = [max(block.height for block in band) for band in bands]
        used = len(head) + sum(heights) + bool(left_out)
        spaced = used + len(bands) - 1 <= height  # a blank line between bands if it all fits
        for number, (band, band_height) in enumerate(zip(bands, heights, strict=True)):
            if number and spaced:
                out.add("\n")
            for index in range(band_height):
                out.add("\n")
                for i, block in enumerate(band):
                    if i:
                        out.add(_GAP)
                    block.line(out, index)
        if left_out:
            more = f"+{plural(len(left_out), 'more block')}"
            named = f"{more} ({', '.join(left_out)}): enlarge the terminal"
            out.add("\n")
            out.add(named if len(named) <= width else f"{more}: enlarge the terminal", "dim")
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
    # a mean batch of 0.0 and latencies of 0 ms are no sizes or times: nothing was batched, nothing answered yet
    return _Block("LLM gateway", [
        ("requests", _n(f.llm_requests)),
        ("HTTP requests", f"{_n(f.http_requests)} ({_rate(f.http_requests_per_s)})"),
        ("mean batch", f"{f.batch_size_mean:,.1f}" if f.batched else "single"),
        ("latency p50", _ms(f.latency_p50_s) if f.has_latency else "-"),
        ("latency p99", _ms(f.latency_p99_s) if f.has_latency else "-"),
        ("cache hits", _pct(f.cache_hit_rate)),
        ("in flight", _n(f.in_flight)),
        ("queued", _n(f.queued)),
    ])


def _memory_block(f: Figures) -> _Block:
    rows: list[tuple[Cell, ...]] = [
        (name, plural(tier["objects"], "object"), _bytes(tier["bytes"])) for name, tier in f.tiers.items()]
    if f.has_store:
        rows.append(("unique", plural(f.unique_objects, "object"), _bytes(f.physical_bytes)))
        rows.append(("dedup", "", f"{f.dedup_ratio:.2f}x"))
        rows.append(("compression", "", f"{f.compression_ratio:.2f}x"))
    rows.append(("process RSS", "", _bytes(f.rss_bytes)))
    return _Block("memory", rows, right=(False, True, True))


def _health_block(f: Figures) -> _Block:
    """Every signal with its level; its compact stand-in: the signals at warn or critical, and how many are ok."""
    rows: list[tuple[Cell, ...]] = []
    alerts: list[tuple[Cell, ...]] = []
    for name, value in f.health().items():
        style = _LEVEL_STYLE[level := health_level(name, value)]
        rows.append((HEALTH_LABELS[name], (_pct(value), style), (level, style)))
        if level != "ok":
            alerts.append(rows[-1])
    ok = len(rows) - len(alerts)
    ok_row: tuple[Cell, ...] = (plural(ok, "other") if alerts else f"all {plural(ok, 'signal')}", "",
                                ("ok", _LEVEL_STYLE["ok"]))
    compact = _Block("health", [*alerts, ok_row] if ok else alerts, right=(False, True, False))
    return _Block("health", rows, header=("signal", "value", "level"), right=(False, True, False), compact=compact)


def _top_block(f: Figures) -> _Block:
    rows: list[tuple[Cell, ...]] = [
        (_who(ident, name), (state, _STATE_STYLE.get(state, "")), _n(float(energy)))
        for ident, name, state, energy in f.top_agents] or [("-", "", "")]
    return _Block("top agents by energy", rows, header=("agent", "state", "energy"), right=(False, False, True),
                  name="top agents")


def _faults_block(f: Figures, keep: int = 5) -> _Block:
    rows: list[tuple[Cell, ...]] = [
        (_who(ident, name), str(line), (message, "red"))
        for ident, name, line, message in f.recent_faults[-keep:][::-1]] or [("-", "", "none")]
    return _Block(f"latest faults ({_n(f.faults)} in all)", rows, header=("agent", "line", "message"),
                  right=(False, True, False), name="faults", alone=True)


def _header(snapshot: Snapshot, f: Figures, title: str, cost_fraction: float | None, final: bool) -> _Header:
    """The title lines' pieces: the essentials (in full and shortened), the rate window and the dashboard's
    cost, and the alerts (by name, and only how many)."""
    rss = _bytes(snapshot.rss_bytes)
    essentials = [(_duration(f.time_s), ""), (f"agents {_n(f.agents)} live {_n(f.live)}", ""),
                  (f"LLM {_rate(f.llm_requests_per_s)}", ""), (f"energy {_n(f.energy_used)}", ""),
                  (f"RSS {rss}", "")]
    short = [essentials[0], (f"agents {_short(f.agents)} live {_short(f.live)}", ""),
             (f"LLM {_short(f.llm_requests_per_s)}/s", ""), (f"energy {_short(f.energy_used)}", ""), (f"RSS {rss}", "")]
    status = [("whole run" if final else f"last {f.window_s:,.1f} s", "dim")]
    if cost_fraction is not None:
        status.append((f"dashboard {_pct(cost_fraction)}", "dim"))
    alerts = alerts_short = None
    if f.alerts:
        levels = list(f.alerts.values())
        style = _LEVEL_STYLE["critical" if "critical" in levels else "warn"]
        alerts = (", ".join(f"{HEALTH_LABELS[n]} {level}" for n, level in f.alerts.items()), style)
        counts = [f"{levels.count(level)} {level}" for level in ("critical", "warn") if level in levels]
        alerts_short = (f"alerts: {', '.join(counts)}", style)
    return _Header((title, "bold"), essentials, short, status, alerts, alerts_short)


def render(snapshot: Snapshot, figs: Figures, *, title: str = "AVM", cost_fraction: float | None = None,
           final: bool = False) -> RenderableType:
    """One frame: the title lines, then agents, throughput, LLM, memory, health, top agents and faults, as
    many as the console has room for (all of them in the ``final`` frame)."""
    f = figs
    # (priority, block, priority of the whole block if it has a compact form), in the order shown: what
    # matters most while a run goes is kept first. Health's alerts come second, its every signal after the
    # LLM gateway; the latest faults before the top agents and memory (the RSS is in the title line),
    # unless there are none to show.
    faults = 4 if f.recent_faults else 7
    blocks: list[tuple[float, _Block, float]] = [
        (0, _states_block(f), 0), (2, _throughput_block(f), 0), (3, _llm_block(f), 0), (6, _memory_block(f), 0),
        (1, _health_block(f), 3.5), (5, _top_block(f), 0), (faults, _faults_block(f), 0)]
    return DashboardFrame(_header(snapshot, f, title, cost_fraction, final), blocks, final=final)


def progress_line(f: Figures) -> str:
    """The plain one-line summary printed every few seconds where there is no terminal."""
    states = " ".join(f"{s} {f.by_state[s]:,}" for s in STATE_ORDER if f.by_state.get(s))
    parts = [
        f"[{f.time_s:7.1f}s] agents {f.agents:,} live {f.live:,}" + (f" ({states})" if states else ""),
        f"spawn {f.spawns_per_s:,.1f}/s done {f.completions_per_s:,.1f}/s",
        f"llm {f.llm_requests_per_s:,.1f}/s",
    ]
    if f.has_gateway:
        # "batch 0.0" and "p50 0ms" would read as sizes and times: say "single", and leave latency out until a reply
        batch = f"{f.batch_size_mean:.1f}" if f.batched else "single"
        gateway = f"http {f.http_requests_per_s:,.1f}/s batch {batch}"
        if f.has_latency:
            gateway += f" p50 {_ms_brief(f.latency_p50_s)} p99 {_ms_brief(f.latency_p99_s)}"
        parts.append(gateway + f" hit {f.cache_hit_rate * 100:.0f}%")
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
            if self.last is None:
                return
            now = self.last
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
        elif live and self._top_agents and is_dataclass(now.vm) and not isinstance(now.vm, type):
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

